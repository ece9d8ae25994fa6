/* SPDX-License-Identifier: BSD-3-Clause */
/* Reading images through the core's views, with qemu as the oracle:
 * images made by qemu-img / qemu-io in a temporary directory are read
 * with qc_image_open + blkdev_pread and compared byte by byte with
 * `qemu-img convert -O raw`; extents are compared with `qemu-img map`.
 * Images built in memory (qimg.c) cover what qemu cannot make: zero
 * clusters with junk in their host cluster, corrupt metadata.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-int.h"
#include "qcow2.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)
#define HZ (BLKDEV_EXTENT_HOLE | BLKDEV_EXTENT_ZERO)

static char *dir;
#define P(name) unit_path (dir, name)

/* -------------------------------------------------------- fixture */

static void
setup (void)
{
  uint8_t buf[256 * 1024];
  char name[32];
  int i;

  dir = unit_tmpdir_new ();
  /* r1.bin .. r4.bin: distinct random sources for qemu-io write -s */
  for (i = 1; i <= 4; i++) {
    unit_fill_random (buf, sizeof buf, 1000 + i);
    snprintf (name, sizeof name, "r%d.bin", i);
    unit_write_file (P (name), buf, sizeof buf);
  }
}

static void
teardown (void)
{
  unit_tmpdir_remove (dir);
  free (dir);
  dir = NULL;
}

/* ------------------------------------------------------- helpers */

/* A raw source file of size bytes made of units of `unit` bytes, each
 * random, zero or text (compressible) as a hash of its index decides;
 * kinds: "rzt" picks from these letters.
 */
static void
make_src (const char *name, uint64_t size, uint64_t unit, const char *kinds,
          uint64_t seed)
{
  uint8_t *buf = calloc (1, size);
  uint64_t u;
  size_t nk = strlen (kinds);

  ck_assert (buf != NULL);
  for (u = 0; u * unit < size; u++) {
    uint64_t off = u * unit, n = size - off < unit ? size - off : unit, i;
    uint64_t h = (u + seed) * 0x9e3779b97f4a7c15ULL;
    switch (kinds[(h >> 40) % nk]) {
    case 'r':
      unit_fill_random (buf + off, n, seed * 7919 + u);
      break;
    case 't':
      unit_fill_random (buf + off, n, seed * 7919 + u);
      for (i = 0; i < n; i++)
        buf[off + i] = "abcdefgh ijkl\n"[buf[off + i] % 14];
      break;
    default:
      break;
    }
  }
  unit_write_file (P (name), buf, size);
  free (buf);
}

/* qemu-io on an image of dir with commands separated by ';'. */
static void
qio_fmt (const char *fmt, const char *name, const char *cmds)
{
  char args[8192] = "", *copy = strdup (cmds), *tok, *save = NULL;

  for (tok = strtok_r (copy, ";", &save); tok;
       tok = strtok_r (NULL, ";", &save)) {
    while (*tok == ' ')
      tok++;
    strcat (args, " -c '");
    strcat (args, tok);
    strcat (args, "'");
    ck_assert (strlen (args) < sizeof args - 256);
  }
  free (copy);
  unit_sh ("cd '%s' && qemu-io -t unsafe -f %s%s '%s'", dir, fmt, args, name);
}

static void
qio (const char *name, const char *fs, ...)
  __attribute__ ((format (printf, 2, 3)));
static void
qio (const char *name, const char *fs, ...)
{
  va_list args;
  char *cmds;

  va_start (args, fs);
  ck_assert (vasprintf (&cmds, fs, args) > 0);
  va_end (args);
  qio_fmt ("qcow2", name, cmds);
  free (cmds);
}

static uint8_t *qemu_raw (const char *name, const char *extra, size_t *len);

/* qemu's view of a snapshot: a copy of the image reverted to it (qemu-img
 * convert -l keeps the current virtual size, the snapshot has its own).
 */
static uint8_t *
qemu_snapshot_raw (const char *name, const char *snapshot, size_t *len)
{
  unit_sh ("cd '%s' && cp '%s' reverted.qcow2 && "
           "qemu-img snapshot -a '%s' reverted.qcow2", dir, name, snapshot);
  return qemu_raw ("reverted.qcow2", NULL, len);
}

/* qemu's view of an image (qemu-img convert -O raw). */
static uint8_t *
qemu_raw (const char *name, const char *extra, size_t *len)
{
  static unsigned n;
  char out[64];

  snprintf (out, sizeof out, "expected-%u.raw", n++);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -U %s -O raw '%s' '%s'",
           dir, extra ? extra : "", name, out);
  return unit_read_file (P (out), len);
}

/* Open an image of dir (or an absolute path) with options given as
 * key, value pairs, NULL-terminated.  NULL on failure (the test decides).
 */
static struct qc_image *
try_open (const char *name, ...)
{
  struct qc_options o;
  struct qc_image *img;
  const char *k, *v;
  va_list args;

  qc_options_init (&o);
  ck_assert_int_eq (qc_options_set (&o, "file", name[0] == '/' ? name
                                    : P (name)), 0);
  va_start (args, name);
  while ((k = va_arg (args, const char *)) != NULL) {
    v = va_arg (args, const char *);
    ck_assert_msg (qc_options_set (&o, k, v) == 0, "%s=%s: %s", k, v,
                   qc_last_error ());
  }
  va_end (args);
  ck_assert_int_eq (qc_options_check (&o), 0);
  o.readonly = true;
  img = qc_image_open (&o, NULL);
  qc_options_free (&o);
  return img;
}

#define open_ok(...) open_ok_ (__VA_ARGS__, NULL)
#define open_ok_(name, ...) ({                                          \
      struct qc_image *img_ = try_open (name, __VA_ARGS__);             \
      ck_assert_msg (img_ != NULL, "open %s: %s", name, qc_last_error ()); \
      img_; })

/* Read a view in every way a client might and compare with want. */
static void
compare_view (struct blkdev *view, const uint8_t *want, size_t len,
              const char *what)
{
  static const size_t chunks[] = { 1 << 20, 69633 };
  uint8_t *buf;
  uint64_t off, x = 0x1234567;
  size_t c, i;

  ck_assert_msg (view->size == len, "%s: size %" PRIu64 ", qemu says %zu",
                 what, view->size, len);
  buf = malloc (len + 40000);
  ck_assert (buf != NULL);
  for (c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
    memset (buf, 0xee, len);
    for (off = 0; off < len; off += chunks[c]) {
      size_t n = len - off < chunks[c] ? len - off : chunks[c];
      unit_check (blkdev_pread (view, buf + off, n, off) == 0,
                     "%s: read %zu at %" PRIu64 ": %s", what, n, off,
                     qc_last_error ());
    }
    unit_assert_mem_eq (buf, want, len, what);
  }
  /* Small reads at random places, some crossing the end. */
  for (i = 0; i < 150; i++) {
    uint64_t o, n, k;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    o = (x >> 8) % (len + 4096);
    n = 1 + (x >> 40) % 20000;
    memset (buf, 0xee, n);
    unit_check (blkdev_pread (view, buf, n, o) == 0,
                   "%s: read %" PRIu64 " at %" PRIu64 ": %s", what, n, o,
                   qc_last_error ());
    for (k = 0; k < n; k++) {
      uint8_t w = o + k < len ? want[o + k] : 0;
      unit_check (buf[k] == w, "%s: read of %" PRIu64 " at %" PRIu64
                     ": byte %" PRIu64 " is 0x%02x, expected 0x%02x",
                     what, n, o, o + k, buf[k], w);
    }
  }
  free (buf);
}

/* Open an image and compare its default view with qemu's. */
static void
check_image (const char *name)
{
  struct qc_image *img;
  uint8_t *want;
  size_t len;

  want = qemu_raw (name, NULL, &len);
  img = open_ok (name);
  compare_view (qc_image_default_view (img), want, len, name);
  qc_image_close (img);
  free (want);
}

/* qemu-img map of an image as merged extents with NBD flags: data
 * false is HOLE, zero true is ZERO.
 */
static void
qemu_map (const char *name, struct unit_exts *x)
{
  char out[64], *text, *line, *save = NULL;
  static unsigned n;
  size_t len;

  snprintf (out, sizeof out, "map-%u.json", n++);
  unit_sh ("cd '%s' && qemu-img map -U --output=json '%s' > '%s'", dir,
           name, out);
  text = (char *) unit_read_file (P (out), &len);
  text = realloc (text, len + 1);
  text[len] = '\0';
  unit_exts_reset (x);
  for (line = strtok_r (text, "\n", &save); line;
       line = strtok_r (NULL, "\n", &save)) {
    unsigned long long start, length;
    char *p;
    bool zero, data;

    if (!(p = strstr (line, "\"start\": ")))
      continue;
    start = strtoull (p + 9, NULL, 10);
    ck_assert ((p = strstr (line, "\"length\": ")) != NULL);
    length = strtoull (p + 10, NULL, 10);
    ck_assert ((p = strstr (line, "\"zero\": ")) != NULL);
    zero = strncmp (p + 8, "true", 4) == 0;
    ck_assert ((p = strstr (line, "\"data\": ")) != NULL);
    data = strncmp (p + 8, "true", 4) == 0;
    unit_exts_collect (x, start, length,
                       (data ? 0 : BLKDEV_EXTENT_HOLE) |
                       (zero ? BLKDEV_EXTENT_ZERO : 0));
  }
  free (text);
}

static void
assert_same_extents (const struct unit_exts *got, const struct unit_exts *want,
                     const char *what)
{
  size_t i;

  for (i = 0; i < got->n && i < want->n; i++)
    unit_check (got->e[i].off == want->e[i].off &&
                   got->e[i].len == want->e[i].len &&
                   got->e[i].flags == want->e[i].flags,
                   "%s: extent #%zu is (%" PRIu64 ", %" PRIu64 ", %u), "
                   "qemu-img map says (%" PRIu64 ", %" PRIu64 ", %u)",
                   what, i, got->e[i].off, got->e[i].len, got->e[i].flags,
                   want->e[i].off, want->e[i].len, want->e[i].flags);
  ck_assert_msg (got->n == want->n, "%s: %zu extents, qemu-img map has %zu",
                 what, got->n, want->n);
}

/* ------------------------------------------- images made by qemu */

START_TEST (test_v2)
{
  make_src ("src.raw", 4 * MiB, 64 * KiB, "rrzt", 1);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 -o compat=0.10 "
           "src.raw v2.qcow2", dir);
  qio ("v2.qcow2", "write -P 0x22 98304 65536; write -s r1.bin 1049811 5000;"
       "write -z 2097152 131072; discard 3145728 65536;"
       "write -P 0x33 4190208 4096; write -z 720000 3000");
  check_image ("v2.qcow2");
}
END_TEST

static const uint64_t cluster_sizes[] = { 512, 4 * KiB, 64 * KiB, 2 * MiB };

START_TEST (test_cluster_size)
{
  const uint64_t cs = cluster_sizes[_i];
  const uint64_t size = cs == 2 * MiB ? 32 * MiB : 4 * MiB;

  make_src ("src.raw", size, cs > 64 * KiB ? cs / 4 : 64 * KiB, "rrzt", 2);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 -o cluster_size=%"
           PRIu64 " src.raw c.qcow2", dir, cs);
  qio ("c.qcow2",
       "write -P 0x22 %" PRIu64 " %" PRIu64 ";"         /* straddling */
       "write -s r1.bin %" PRIu64 " 5000;"              /* unaligned */
       "write -z %" PRIu64 " %" PRIu64 ";"              /* zero */
       "write -z -u %" PRIu64 " %" PRIu64 ";"           /* zero, unmap */
       "discard %" PRIu64 " %" PRIu64 ";"
       "write -z %" PRIu64 " 3000;"                     /* partial zero */
       "write -P 0x44 %" PRIu64 " 4096",                /* the end */
       cs + cs / 2, cs, size / 2 + 1234, size / 4, 2 * cs,
       size / 4 + 4 * cs, cs, size / 4 + 8 * cs, 2 * cs,
       size / 2 + 100000, size - 4096);
  check_image ("c.qcow2");
}
END_TEST

START_TEST (test_refcount_bits)
{
  const unsigned bits = _i == 0 ? 1 : 64;
  struct qc_image *img;

  make_src ("src.raw", 2 * MiB, 16 * KiB, "rz", 3);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 -o "
           "refcount_bits=%u,cluster_size=4096 src.raw r.qcow2", dir, bits);
  qio ("r.qcow2", "write -P 0x22 5000 10000; write -z 1048576 65536;"
       "discard 65536 8192");
  check_image ("r.qcow2");
  img = open_ok ("r.qcow2");
  ck_assert_uint_eq (1U << img->h.refcount_order, bits);
  qc_image_close (img);
}
END_TEST

/* _i: bit 0 zstd, then the cluster size index 0..2 (512, 64k, 2M) */
START_TEST (test_compressed)
{
  static const uint64_t sizes[] = { 512, 64 * KiB, 2 * MiB };
  const char *type = _i & 1 ? "zstd" : "zlib";
  const uint64_t cs = sizes[_i >> 1];
  /* (qemu compresses 512-byte clusters slowly: fewer of them) */
  const uint64_t size = cs == 2 * MiB ? 8 * MiB : cs == 512 ? 512 * KiB
    : 3 * MiB;
  struct qc_image *img;
  uint8_t *map;
  size_t len;

  make_src ("src.raw", size, cs > 64 * KiB ? cs / 2 : cs * 8, "ttrz", 4);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -c -f raw -O qcow2 -o "
           "compression_type=%s,cluster_size=%" PRIu64 " src.raw z.qcow2",
           dir, type, cs);
  /* A partial overwrite of a compressed cluster (qemu decompresses and
   * copies), and a compressed write.
   */
  qio ("z.qcow2", "write -P 0x22 %" PRIu64 " 100; write -z -u %" PRIu64
       " %" PRIu64, cs / 2, size - cs, cs);
  /* (a new session: qemu 7.2 cannot compress after freeing a compressed
   * cluster in the same session)
   */
  qio ("z.qcow2", "write -c -s r2.bin %" PRIu64 " %" PRIu64, size - cs, cs);
  /* There are compressed clusters: map shows data without an offset. */
  unit_sh ("cd '%s' && qemu-img map --output=json z.qcow2 > z.map", dir);
  map = unit_read_file (P ("z.map"), &len);
  map = realloc (map, len + 1);
  map[len] = 0;
  ck_assert_msg (strstr ((char *) map, "\"data\": true}"),
                 "no compressed cluster in the image");
  free (map);
  check_image ("z.qcow2");
  img = open_ok ("z.qcow2");
  ck_assert_uint_eq (img->h.compression_type, _i & 1);
  qc_image_close (img);
}
END_TEST

/* _i: 0 64k clusters, 1 64k over a qcow2 backing file, 2 32k over a raw
 * backing file, 3 2M over a qcow2 backing file.
 */
START_TEST (test_extended_l2)
{
  const uint64_t cs = _i == 2 ? 32 * KiB : _i == 3 ? 2 * MiB : 64 * KiB;
  const uint64_t sc = cs / 32, size = _i == 3 ? 32 * MiB : 4 * MiB;
  char backing[128] = "";

  if (_i == 1 || _i == 3) {
    make_src ("base.raw", size, sc * 3, "rrz", 5);
    unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 base.raw "
             "base.qcow2", dir);
    strcpy (backing, "-b base.qcow2 -F qcow2");
  }
  else if (_i == 2) {
    make_src ("base.raw", size - 3 * MiB, sc * 3, "rrz", 5);
    strcpy (backing, "-b base.raw -F raw");
  }
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o extended_l2=on,"
           "cluster_size=%" PRIu64 " %s x.qcow2 %" PRIu64, dir, cs, backing,
           size);
  qio ("x.qcow2",
       "write -P 0x11 %" PRIu64 " %" PRIu64 ";"         /* one subcluster */
       "write -P 0x12 %" PRIu64 " 3000;"                /* unaligned */
       "write -z %" PRIu64 " %" PRIu64 ";"              /* zero subclusters */
       "write -P 0x13 %" PRIu64 " %" PRIu64 ";"         /* across clusters */
       "write -c -s r1.bin %" PRIu64 " %" PRIu64 ";"    /* compressed */
       "write -z -u %" PRIu64 " %" PRIu64 ";"
       "discard %" PRIu64 " %" PRIu64 ";"
       "write -s r2.bin %" PRIu64 " %" PRIu64,
       sc, sc, 3 * sc + 100, 6 * sc, 2 * sc, cs - sc, 2 * sc,
       4 * cs, cs, 6 * cs, cs, 8 * cs + sc, sc,
       10 * cs + 5 * sc, 20 * sc);
  check_image ("x.qcow2");
}
END_TEST

/* Zero clusters of all kinds over a backing file: they must hide it.
 * _i: 0 v3, 1 v2 (no zero flag: qemu writes zeros).
 */
START_TEST (test_zero_clusters)
{
  make_src ("base.raw", 2 * MiB, 64 * KiB, "r", 6);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 base.raw "
           "base.qcow2 && qemu-img create -q -f qcow2 -o compat=%s "
           "-b base.qcow2 -F qcow2 top.qcow2 2M", dir,
           _i == 0 ? "1.1" : "0.10");
  qio ("top.qcow2", "write -s r1.bin 0 262144; write -z 0 65536;"
       "write -z -u 65536 65536; discard 131072 65536;"
       "write -z 524288 65536; write -z 720000 1000;"
       "discard 1048576 65536; write -z -u 1179648 131072");
  check_image ("top.qcow2");
}
END_TEST

/* A raw backing file named relative to the image, shorter than it. */
START_TEST (test_backing_raw)
{
  struct qc_image *img;

  make_src ("base.raw", 2 * MiB, 64 * KiB, "rz", 7);
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -b base.raw -F raw "
           "top.qcow2 4M", dir);
  qio ("top.qcow2", "write -P 0x22 65536 65536; write -s r1.bin 1900000 "
       "250000; write -z 3145728 65536");
  check_image ("top.qcow2");
  img = open_ok ("top.qcow2");
  ck_assert_ptr_nonnull (strstr (qc_image_description (img), "backing"));
  ck_assert_ptr_nonnull (strstr (qc_image_description (img), "base.raw"));
  ck_assert_ptr_nonnull (strstr (qc_image_description (img), "(raw)"));
  qc_image_close (img);
}
END_TEST

/* base.raw (1M) <- mid.qcow2 (2M, 4k clusters) <- top.qcow2 (4M, 64k). */
START_TEST (test_backing_chain)
{
  make_src ("base.raw", 1 * MiB, 32 * KiB, "rrz", 8);
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o cluster_size=4096 "
           "-b base.raw -F raw mid.qcow2 2M && qemu-img create -q -f qcow2 "
           "-b mid.qcow2 -F qcow2 top.qcow2 4M", dir);
  qio ("mid.qcow2", "write -s r1.bin 4096 8192; write -P 0x33 1000000 "
       "100000; write -z 200000 50000");
  qio ("top.qcow2", "write -s r2.bin 0 65536; write -P 0x44 1966080 "
       "131072; discard 0 4096");
  check_image ("top.qcow2");
  check_image ("mid.qcow2");
}
END_TEST

/* A backing file without a recorded format is probed (raw here), as
 * qemu does.
 */
START_TEST (test_backing_probed)
{
  struct qimg_spec s;
  uint8_t *guest, *img, *base, *want;
  size_t len, wlen;

  base = malloc (300 * KiB);
  unit_fill_random (base, 300 * KiB, 9);
  unit_write_file (P ("base.raw"), base, 300 * KiB);
  qimg_spec_init (&s);
  s.backing_file = "base.raw";
  guest = calloc (1, s.size);
  unit_fill_random (guest + 64 * KiB, 64 * KiB, 10);
  unit_fill_random (guest + 512 * KiB, 64 * KiB, 11);
  s.guest = guest;
  img = qimg_build (&s, NULL, &len);
  unit_write_file (P ("top.qcow2"), img, len);

  /* qemu, for the record ... */
  want = qemu_raw ("top.qcow2", "-f qcow2", &wlen);
  /* ... and what the content must be */
  memcpy (guest, base, 64 * KiB);
  memcpy (guest + 128 * KiB, base + 128 * KiB, 172 * KiB);
  unit_assert_mem_eq (want, guest, s.size, "qemu vs the built content");
  {
    struct qc_image *q = open_ok ("top.qcow2");
    compare_view (qc_image_default_view (q), want, wlen, "probed backing");
    qc_image_close (q);
  }
  free (base);
  free (guest);
  free (img);
  free (want);
}
END_TEST

/* backing=none and backing=OTHER override the image's backing file. */
START_TEST (test_backing_override)
{
  struct qc_image *img;
  uint8_t *want;
  size_t len;

  make_src ("base.raw", 2 * MiB, 64 * KiB, "r", 12);
  make_src ("other.raw", 3 * MiB, 64 * KiB, "rz", 13);
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -b base.raw -F raw "
           "top.qcow2 2M", dir);
  qio ("top.qcow2", "write -P 0x22 65536 65536");
  unit_sh ("cd '%s' && cp top.qcow2 none.qcow2 && "
           "qemu-img rebase -u -b '' none.qcow2 && "
           "cp top.qcow2 other.qcow2 && "
           "qemu-img rebase -u -b other.raw -F raw other.qcow2 && "
           "qemu-img convert -t unsafe -f raw -O qcow2 other.raw other-q.qcow2", dir);

  want = qemu_raw ("none.qcow2", NULL, &len);
  img = open_ok ("top.qcow2", "backing", "none");
  compare_view (qc_image_default_view (img), want, len, "backing=none");
  qc_image_close (img);
  free (want);

  want = qemu_raw ("other.qcow2", NULL, &len);
  img = open_ok ("top.qcow2", "backing", P ("other.raw"),
                 "backing-format", "raw");
  compare_view (qc_image_default_view (img), want, len, "backing=other");
  qc_image_close (img);
  /* probed, and a qcow2 one with the same content */
  img = open_ok ("top.qcow2", "backing", P ("other.raw"));
  compare_view (qc_image_default_view (img), want, len, "backing probed");
  qc_image_close (img);
  img = open_ok ("top.qcow2", "backing", P ("other-q.qcow2"),
                 "backing-format", "qcow2");
  compare_view (qc_image_default_view (img), want, len, "backing qcow2");
  qc_image_close (img);
  free (want);
}
END_TEST

/* An external data file, raw or not. */
START_TEST (test_data_file)
{
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o data_file=data.raw%s "
           "d.qcow2 2M", dir, _i ? ",data_file_raw=on" : "");
  qio ("d.qcow2", "write -s r1.bin 0 200000; write -P 0x22 1048576 65536;"
       "write -z 65536 65536; discard 1048576 4096");
  check_image ("d.qcow2");
}
END_TEST

/* ------------------------------------------------------ snapshots */

static void
make_snapshots (void)
{
  make_src ("base.raw", 4 * MiB, 64 * KiB, "rz", 14);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 base.raw "
           "base.qcow2 && qemu-img create -q -f qcow2 -b base.qcow2 "
           "-F qcow2 img.qcow2 4M", dir);
  qio ("img.qcow2", "write -s r1.bin 0 200000; write -P 0x11 2097152 65536");
  unit_sh ("cd '%s' && qemu-img snapshot -c s1 img.qcow2", dir);
  qio ("img.qcow2", "write -P 0x22 65536 65536; write -z 2097152 65536;"
       "discard 0 65536; write -s r2.bin 3000000 100000");
  /* named like the first snapshot's ID: names win over IDs */
  unit_sh ("cd '%s' && qemu-img snapshot -c 1 img.qcow2", dir);
  qio ("img.qcow2", "write -P 0x33 131072 65536");
  unit_sh ("cd '%s' && qemu-img resize img.qcow2 6M", dir);
  qio ("img.qcow2", "write -P 0x44 5242880 65536");
}

START_TEST (test_snapshots)
{
  struct qc_image *img;
  struct blkdev *v;
  uint8_t *want;
  size_t len;

  make_snapshots ();
  img = open_ok ("img.qcow2");
  ck_assert_uint_eq (qc_image_nr_snapshots (img), 2);
  ck_assert_str_eq (qc_image_snapshot_name (img, 0), "s1");
  ck_assert_str_eq (qc_image_snapshot_name (img, 1), "1");
  ck_assert_ptr_null (qc_image_snapshot_name (img, 2));
  ck_assert_ptr_nonnull (strstr (qc_image_description (img), "snapshot"));

  /* the active image */
  want = qemu_raw ("img.qcow2", NULL, &len);
  ck_assert_uint_eq (len, 6 * MiB);
  ck_assert_ptr_eq (qc_image_view (img, ""), qc_image_default_view (img));
  ck_assert_ptr_eq (qc_image_view (img, NULL), qc_image_default_view (img));
  compare_view (qc_image_default_view (img), want, len, "active");
  free (want);

  /* s1 by name ("1" is the second snapshot's name, and wins over ID 1) */
  want = qemu_snapshot_raw ("img.qcow2", "s1", &len);
  ck_assert_uint_eq (len, 4 * MiB);
  v = qc_image_view (img, "s1");
  ck_assert_ptr_nonnull (v);
  ck_assert (v->readonly);
  compare_view (v, want, len, "snapshot s1");
  ck_assert_ptr_eq (qc_image_view (img, "s1"), v);      /* loaded once */
  free (want);

  /* qemu-img snapshot -a looks up IDs first: "2" is the ID of the
   * snapshot named "1"
   */
  want = qemu_snapshot_raw ("img.qcow2", "2", &len);
  v = qc_image_view (img, "1");
  ck_assert_ptr_nonnull (v);
  compare_view (v, want, len, "snapshot named 1");
  free (want);

  /* no snapshot is named "2": the ID */
  ck_assert_ptr_eq (qc_image_view (img, "2"), v);

  /* no such snapshot */
  unit_log_clear ();
  errno = 0;
  ck_assert_ptr_null (qc_image_view (img, "s3"));
  ck_assert_int_eq (errno, ENOENT);
  ck_assert (unit_log_has (QC_LOG_ERROR, "'s3'"));
  ck_assert_ptr_null (qc_image_view (img, "3"));
  ck_assert_int_eq (errno, ENOENT);
  qc_image_close (img);
}
END_TEST

/* snapshot= makes a snapshot the default view. */
START_TEST (test_snapshot_option)
{
  struct qc_image *img;
  uint8_t *want;
  size_t len;

  make_snapshots ();
  want = qemu_snapshot_raw ("img.qcow2", "s1", &len);
  img = open_ok ("img.qcow2", "snapshot", "s1");
  compare_view (qc_image_default_view (img), want, len, "snapshot=s1");
  ck_assert_ptr_eq (qc_image_view (img, ""), qc_image_default_view (img));
  qc_image_close (img);
  free (want);

  unit_log_clear ();
  errno = 0;
  ck_assert_ptr_null (try_open ("img.qcow2", "snapshot", "nope", NULL));
  ck_assert_int_eq (errno, ENOENT);
  ck_assert (unit_log_has (QC_LOG_ERROR, "nope"));
}
END_TEST

/* -------------------------------------------------------- extents */

static void
check_extents (const char *name)
{
  struct qc_image *img;
  struct unit_exts got = { 0 }, want = { 0 };
  struct blkdev *v;

  qemu_map (name, &want);
  img = open_ok (name);
  v = qc_image_default_view (img);
  unit_exts_all (v, 0, v->size, &got);
  assert_same_extents (&got, &want, name);
  /* and what is reported as zero reads as zero */
  {
    uint8_t *buf = malloc (v->size);
    size_t k;
    ck_assert_int_eq (blkdev_pread (v, buf, v->size, 0), 0);
    for (k = 0; k < got.n; k++)
      if (got.e[k].flags & BLKDEV_EXTENT_ZERO)
        unit_assert_zero (buf + got.e[k].off, got.e[k].len, name);
    free (buf);
  }
  qc_image_close (img);
  unit_exts_free (&got);
  unit_exts_free (&want);
}

/* _i: 0 simple image, 1 over a sparse raw backing file, 2 a qcow2
 * chain, 3 extended L2 (subcluster granularity), 4 512-byte clusters.
 */
START_TEST (test_extents)
{
  switch (_i) {
  case 0:
    make_src ("src.raw", 4 * MiB, 64 * KiB, "rrz", 15);
    unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 src.raw e.qcow2",
             dir);
    qio ("e.qcow2", "write -z 0 65536; write -z -u 131072 65536;"
         "discard 262144 65536; write -P 0x11 1048576 131072;"
         "write -z -u 3145728 65536");
    qio ("e.qcow2", "write -c -s r1.bin 3145728 65536");
    break;
  case 1:
    make_src ("src.raw", 2 * MiB, 64 * KiB, "rz", 16);
    unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O raw -S 4k src.raw "
             "base.raw && qemu-img create -q -f qcow2 -b base.raw -F raw "
             "e.qcow2 4M", dir);
    qio ("e.qcow2", "write -P 0x11 0 65536; write -z 196608 65536;"
         "write -P 0x12 1966080 131072");
    break;
  case 2:
    make_src ("src.raw", 3 * MiB, 64 * KiB, "rzz", 17);
    unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 src.raw "
             "base.qcow2 && qemu-img create -q -f qcow2 -b base.qcow2 "
             "-F qcow2 e.qcow2 4M", dir);
    qio ("e.qcow2", "write -P 0x11 0 65536; write -z 196608 131072;"
         "write -P 0x12 2883584 262144");
    break;
  case 3:
    unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o extended_l2=on "
             "e.qcow2 4M", dir);
    qio ("e.qcow2", "write -P 0x11 2048 2048; write -P 0x12 8192 6144;"
         "write -z 16384 4096; write -P 0x13 63488 4096;"
         "write -P 0x14 1048576 65536; write -z 1050624 2048");
    break;
  case 4:
    make_src ("src.raw", 1 * MiB, 4 * KiB, "rzz", 18);
    unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 -o "
             "cluster_size=512 src.raw e.qcow2", dir);
    qio ("e.qcow2", "write -z 0 1024; discard 65536 512");
    break;
  }
  check_extents ("e.qcow2");
}
END_TEST

/* Extents stop early on a huge disk (callers loop) and never run past
 * what was asked.
 */
START_TEST (test_extents_partial)
{
  struct qc_image *img;
  struct unit_exts x = { 0 };
  struct blkdev *v;

  /* 512-byte clusters, every other cluster allocated: many runs */
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o cluster_size=512 "
           "e.qcow2 8M", dir);
  {
    char cmds[200 * 40] = "";
    int i;
    for (i = 0; i < 200; i++) {
      char c[40];
      snprintf (c, sizeof c, "%swrite -P 1 %d 512", i ? ";" : "", i * 1024);
      strcat (cmds, c);
    }
    qio ("e.qcow2", "%s", cmds);
  }
  img = open_ok ("e.qcow2");
  v = qc_image_default_view (img);
  unit_exts_all (v, 0, v->size, &x);
  ck_assert_uint_eq (x.n, 400);
  ck_assert_uint_eq (x.e[0].flags, 0);
  ck_assert_uint_eq (x.e[1].flags, HZ);
  unit_assert_ext (&x, 399, 200 * 1024 - 512, 8 * MiB - 200 * 1024 + 512, HZ);
  /* a range inside one run */
  unit_exts_once (v, 1024 + 100, 200, &x);
  ck_assert_uint_eq (x.n, 1);
  unit_assert_ext (&x, 0, 1124, 200, 0);
  /* the callback's error is returned */
  unit_exts_reset (&x);
  x.fail_after = 3;
  ck_assert_int_eq (blkdev_extents (v, 0, v->size, unit_exts_collect, &x), -1);
  qc_image_close (img);

  /* 10000 alternating zero and unallocated clusters: one call may stop
   * early, the loop covers everything, all hole+zero.
   */
  {
    static char layout[10001];
    struct qimg_spec s;
    struct qc_options o;
    uint8_t *image;
    size_t len, i;

    for (i = 0; i < 10000; i++)
      layout[i] = i % 2 ? QIMG_UNALLOC : QIMG_ZERO;
    qimg_spec_init (&s);
    s.cluster_bits = 9;
    s.size = 10000 * 512;
    s.layout = layout;
    image = qimg_build (&s, NULL, &len);
    qc_options_init (&o);
    img = qc_image_open (&o, blkdev_memory_new (image, len, true));
    ck_assert_ptr_nonnull (img);
    v = qc_image_default_view (img);
    unit_exts_once (v, 0, v->size, &x);
    ck_assert_uint_eq (x.n, 1);
    ck_assert_uint_eq (x.e[0].flags, HZ);
    ck_assert_uint_gt (x.calls, 1);
    unit_exts_all (v, 0, v->size, &x);
    ck_assert_uint_eq (x.n, 1);
    unit_assert_ext (&x, 0, 0, v->size, HZ);
    qc_image_close (img);
    free (image);
  }
  unit_exts_free (&x);
}
END_TEST

/* -------------------------------------------------------- L2 cache */

/* Nonzero L1 entries of an image file, from its bytes. */
static uint64_t
count_l2_tables (const char *name)
{
  size_t len;
  uint8_t *f = unit_read_file (P (name), &len);
  uint32_t l1_size = unit_get_be32 (f + 36), i;
  uint64_t l1 = unit_get_be64 (f + 40), n = 0;

  for (i = 0; i < l1_size; i++)
    if (unit_get_be64 (f + l1 + 8 * i) & 0x00fffffffffffe00ULL)
      n++;
  free (f);
  return n;
}

static void
read_pass (struct blkdev *v, uint8_t *buf, size_t chunk)
{
  uint64_t off;

  for (off = 0; off < v->size; off += chunk) {
    size_t n = v->size - off < chunk ? v->size - off : chunk;
    unit_check (blkdev_pread (v, buf + off, n, off) == 0, "read: %s",
                qc_last_error ());
  }
}

/* _i: 0 cache-size=64M, 1 the default */
START_TEST (test_cache_big)
{
  struct qc_image *img;
  uint64_t tables, m1, h1, m2, h2;
  uint8_t *want, *buf;
  size_t len;

  make_src ("src.raw", 1 * MiB, 4 * KiB, "r", 19);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 -o "
           "cluster_size=512 src.raw c.qcow2", dir);
  tables = count_l2_tables ("c.qcow2");
  ck_assert_uint_eq (tables, 32);               /* 32 KiB per table */
  want = qemu_raw ("c.qcow2", NULL, &len);
  buf = malloc (len);
  img = _i == 0 ? open_ok ("c.qcow2", "cache-size", "64M")
    : open_ok ("c.qcow2");
  l2cache_stats (img->cache, &m1, &h1);
  ck_assert_uint_eq (m1, 0);
  read_pass (qc_image_default_view (img), buf, 3000);
  unit_assert_mem_eq (buf, want, len, "first pass");
  l2cache_stats (img->cache, &m1, &h1);
  ck_assert_uint_eq (m1, tables);               /* each table read once */
  read_pass (qc_image_default_view (img), buf, 7000);
  unit_assert_mem_eq (buf, want, len, "second pass");
  l2cache_stats (img->cache, &m2, &h2);
  ck_assert_uint_eq (m2, m1);                   /* all from the cache */
  ck_assert_uint_gt (h2, h1);
  qc_image_close (img);
  free (want);
  free (buf);
}
END_TEST

START_TEST (test_cache_tiny)
{
  struct qc_image *img;
  struct blkdev *v;
  uint64_t m1, h1, m2, h2;
  uint8_t *want, *buf, b[512];
  size_t len;

  make_src ("src.raw", 1 * MiB, 4 * KiB, "r", 20);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 -o "
           "cluster_size=512 src.raw c.qcow2", dir);
  want = qemu_raw ("c.qcow2", NULL, &len);
  buf = malloc (len);

  /* capacity 1: still correct, and tables are read again */
  img = open_ok ("c.qcow2", "cache-size", "1");
  v = qc_image_default_view (img);
  compare_view (v, want, len, "cache of 1 table");
  l2cache_stats (img->cache, &m1, &h1);
  read_pass (v, buf, 65536);
  unit_assert_mem_eq (buf, want, len, "cache of 1 table, pass");
  l2cache_stats (img->cache, &m2, &h2);
  /* (the table last used may still be there) */
  ck_assert_uint_ge (m2 - m1, count_l2_tables ("c.qcow2") - 1);
  qc_image_close (img);

  /* capacity 2 (1k of 512-byte tables): least recently used goes.
   * Tables A, B, C are those of guest offsets 0, 32k, 64k.
   */
  img = open_ok ("c.qcow2", "cache-size", "1k");
  v = qc_image_default_view (img);
#define RD(t) ck_assert_int_eq (blkdev_pread (v, b, 512, (t) * 32768), 0)
  RD (0); RD (1); RD (0); RD (1);       /* 2 misses, 2 hits */
  l2cache_stats (img->cache, &m1, &h1);
  ck_assert_uint_eq (m1, 2);
  ck_assert_uint_eq (h1, 2);
  RD (2);                               /* miss, A goes */
  RD (1);                               /* hit */
  RD (0);                               /* miss, C goes */
  RD (1);                               /* hit */
  l2cache_stats (img->cache, &m2, &h2);
  ck_assert_uint_eq (m2, 4);
  ck_assert_uint_eq (h2, 4);
#undef RD
  qc_image_close (img);
  free (want);
  free (buf);
}
END_TEST

/* Readers in several threads on one image with a tiny cache: tables
 * are evicted while others use them.
 */
struct reader {
  struct blkdev *v;
  const uint8_t *want;
  size_t len;
  unsigned seed;
  unsigned errors;
};

static void *
reader_thread (void *arg)
{
  struct reader *r = arg;
  uint64_t x = r->seed * 0x9e3779b97f4a7c15ULL + 1;
  uint8_t *buf = malloc (70000);
  int i;

  for (i = 0; i < 400; i++) {
    uint64_t off, n;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    off = (x >> 8) % r->len;
    n = 1 + (x >> 40) % 70000;
    if (n > r->len - off)
      n = r->len - off;
    if (blkdev_pread (r->v, buf, n, off) == -1 ||
        memcmp (buf, r->want + off, n) != 0)
      r->errors++;
  }
  free (buf);
  return NULL;
}

START_TEST (test_threads)
{
  struct qc_image *img;
  struct reader r[4];
  pthread_t t[4];
  uint8_t *want;
  size_t len;
  int i;

  make_src ("src.raw", 2 * MiB, 4 * KiB, "rzt", 21);
  unit_sh ("cd '%s' && qemu-img convert -t unsafe -f raw -O qcow2 -o "
           "cluster_size=512 src.raw c.qcow2 && qemu-img create -q -f qcow2 "
           "-o cluster_size=4096 -b c.qcow2 -F qcow2 top.qcow2 2M", dir);
  qio ("top.qcow2", "write -c -s r1.bin 0 65536; write -s r2.bin 524288 "
       "100000");
  want = qemu_raw ("top.qcow2", NULL, &len);
  img = open_ok ("top.qcow2", "cache-size", "8k");
  for (i = 0; i < 4; i++) {
    r[i] = (struct reader) { qc_image_default_view (img), want, len, i + 1,
                             0 };
    ck_assert_int_eq (pthread_create (&t[i], NULL, reader_thread, &r[i]), 0);
  }
  for (i = 0; i < 4; i++) {
    pthread_join (t[i], NULL);
    ck_assert_msg (r[i].errors == 0, "thread %d: %u bad reads", i,
                   r[i].errors);
  }
  qc_image_close (img);
  free (want);
}
END_TEST

/* ------------------------------------------- images built in memory */

struct built {
  const char *name;
  uint32_t version, cluster_bits;
  uint64_t incompat;
  uint8_t ctype;
  const char *layout;
};

static const struct built built[] = {
  { "v3 64k", 3, 16, 0, 0, "dduzZcudcc" },
  { "v2 64k", 2, 16, 0, 0, "ddcudc" },
  { "v3 512", 3, 9, 0, 0, "dcdzuZdcccdzdu" },
  { "extended L2 16k", 3, 14, 1ULL << 4, 0, "dzucZdd" },
  { "zstd 4k", 3, 12, 0, 1, "cdcuczcc" },
};

/* The content of a built image as it must read. */
static uint8_t *
built_expected (const struct qimg_spec *s)
{
  const uint64_t cs = 1ULL << s->cluster_bits;
  uint8_t *e = malloc (s->size);
  uint64_t c;

  memcpy (e, s->guest, s->size);
  for (c = 0; c * cs < s->size; c++) {
    char k = c < strlen (s->layout) ? s->layout[c] : QIMG_UNALLOC;
    if (k != QIMG_DATA && k != QIMG_COMPRESSED)
      memset (e + c * cs, 0, s->size - c * cs < cs ? s->size - c * cs : cs);
  }
  return e;
}

static void
built_spec (const struct built *b, struct qimg_spec *s)
{
  const uint64_t cs = 1ULL << b->cluster_bits;
  uint8_t *guest;
  uint64_t c;

  qimg_spec_init (s);
  s->version = b->version;
  s->cluster_bits = b->cluster_bits;
  s->incompatible = b->incompat;
  s->compression_type = b->ctype;
  s->layout = b->layout;
  /* a partial last cluster (qemu needs whole sectors) */
  s->size = strlen (b->layout) * cs - (cs > 512 ? cs / 2 : 0);
  guest = malloc (s->size);
  unit_fill_random (guest, s->size, b->cluster_bits);
  /* compressible content in compressed clusters */
  for (c = 0; c < strlen (b->layout); c++)
    if (b->layout[c] == QIMG_COMPRESSED) {
      uint64_t n = s->size - c * cs < cs ? s->size - c * cs : cs, i;
      for (i = 0; i < n; i++)
        guest[c * cs + i] = "compress me "[(i + guest[c * cs + i] % 2) % 12];
    }
  s->guest = guest;
}

START_TEST (test_built)
{
  const struct built *b = &built[_i];
  struct qimg_spec s;
  struct qc_image *img;
  struct qc_options o;
  struct blkdev *dev;
  uint8_t *image, *expected, *q;
  size_t len, qlen;

  built_spec (b, &s);
  image = qimg_build (&s, NULL, &len);
  expected = built_expected (&s);

  /* qemu agrees with the builder */
  unit_write_file (P ("built.qcow2"), image, len);
  unit_sh ("qemu-img check -q '%s'", P ("built.qcow2"));
  q = qemu_raw ("built.qcow2", NULL, &qlen);
  ck_assert_uint_eq (qlen, s.size);
  unit_assert_mem_eq (q, expected, s.size, b->name);

  /* the core, from a memory device */
  qc_options_init (&o);
  dev = blkdev_memory_new (image, len, true);
  img = qc_image_open (&o, dev);
  ck_assert_msg (img != NULL, "%s: %s", b->name, qc_last_error ());
  compare_view (qc_image_default_view (img), expected, s.size, b->name);
  qc_image_close (img);
  qc_options_free (&o);

  free (q);
  free (expected);
  free (image);
  free ((void *) s.guest);
}
END_TEST

/* A deflate stream that holds more than a cluster (a damaged or crafted
 * image): qemu reads the stream's first cluster-size bytes.
 */
static size_t
overlong_deflate (const uint8_t *in, size_t cs, uint8_t *out, size_t cap)
{
  uint8_t *big = malloc (cs + 700);
  size_t i, r;

  for (i = 0; i < cs + 700; i++)
    big[i] = in[i % cs];
  r = unit_deflate_raw (big, cs + 700, out, cap);
  free (big);
  return r;
}

START_TEST (test_overlong_stream)
{
  struct qimg_spec s;
  struct qc_options o;
  struct qc_image *img;
  uint8_t *guest, *image, *q, buf[512];
  size_t len, qlen;

  qimg_spec_init (&s);
  s.cluster_bits = 9;
  s.size = 2048;
  s.layout = "cccc";
  s.compress = overlong_deflate;
  guest = malloc (s.size);
  memset (guest, 'A', 512);                     /* long matches */
  unit_fill_random (guest + 512, 512, 22);      /* stored/literal blocks */
  memset (guest + 1024, 0, 512);
  unit_fill_random (guest + 1536, 512, 23);
  memset (guest + 1536, 'q', 300);
  s.guest = guest;
  image = qimg_build (&s, NULL, &len);
  unit_write_file (P ("long.qcow2"), image, len);
  q = qemu_raw ("long.qcow2", NULL, &qlen);
  unit_assert_mem_eq (q, guest, s.size, "qemu reads the first bytes");

  qc_options_init (&o);
  img = qc_image_open (&o, blkdev_memory_new (image, len, true));
  ck_assert_ptr_nonnull (img);
  for (int c = 0; c < 4; c++) {
    memset (buf, 0xee, sizeof buf);
    ck_assert_msg (blkdev_pread (qc_image_default_view (img), buf, 512,
                                 c * 512) == 0,
                   "cluster %d: %s", c, qc_last_error ());
    unit_assert_mem_eq (buf, guest + c * 512, 512, "over-long stream");
  }
  qc_image_close (img);
  qc_options_free (&o);
  free (q);
  free (image);
  free (guest);
}
END_TEST

/* ------------------------------------------------ corrupt metadata */

struct corrupt_ctx {
  struct qimg_spec s;
  struct qimg_info info;
  uint8_t *guest, *image;
  size_t len;
};

static void
corrupt_base (struct corrupt_ctx *c, bool extl2, const char *layout)
{
  qimg_spec_init (&c->s);
  if (extl2) {
    c->s.incompatible = 1ULL << 4;
  }
  c->s.layout = layout;
  c->guest = malloc (c->s.size);
  unit_fill_random (c->guest, c->s.size, 24);
  c->s.guest = c->guest;
  c->image = qimg_build (&c->s, &c->info, &c->len);
}

static struct qc_image *
corrupt_open (struct corrupt_ctx *c)
{
  struct qc_options o;
  struct qc_image *img;

  qc_options_init (&o);
  img = qc_image_open (&o, blkdev_memory_new (c->image, c->len, true));
  ck_assert_msg (img != NULL, "open: %s", qc_last_error ());
  return img;
}

static void
corrupt_free (struct corrupt_ctx *c)
{
  qimg_info_free (&c->info);
  free (c->guest);
  free (c->image);
}

/* A read of [off, off+n) fails with EIO and a message containing msg. */
static void
assert_read_eio (struct qc_image *img, uint64_t off, size_t n,
                 const char *msg)
{
  uint8_t *buf = malloc (n);
  struct blkdev *v = qc_image_default_view (img);

  unit_log_clear ();
  errno = 0;
  ck_assert_msg (blkdev_pread (v, buf, n, off) == -1,
                 "read of corrupt metadata succeeded (%s)", msg);
  ck_assert_int_eq (errno, EIO);
  ck_assert_msg (unit_log_has (QC_LOG_ERROR, msg), "message '%s' lacks '%s'",
                 qc_last_error (), msg);
  free (buf);
}

START_TEST (test_corrupt_l1)
{
  struct corrupt_ctx c;
  struct qc_image *img;
  struct unit_exts x = { 0 };

  /* L1 entry pointing beyond the end of the file */
  corrupt_base (&c, false, "dd");
  unit_put_be64 (c.image + c.info.l1, (1ULL << 63) | (c.len + 65536));
  img = corrupt_open (&c);
  assert_read_eio (img, 0, 4096, "beyond the end of the file");
  errno = 0;
  ck_assert_int_eq (blkdev_extents (qc_image_default_view (img), 0, 65536,
                                    unit_exts_collect, &x), -1);
  ck_assert_int_eq (errno, EIO);
  qc_image_close (img);
  corrupt_free (&c);

  /* unaligned L2 table */
  corrupt_base (&c, false, "dd");
  unit_put_be64 (c.image + c.info.l1, (1ULL << 63) | (c.info.l2[0] + 512));
  img = corrupt_open (&c);
  assert_read_eio (img, 0, 4096, "unaligned L2");
  qc_image_close (img);
  corrupt_free (&c);
  unit_exts_free (&x);
}
END_TEST

START_TEST (test_corrupt_l2)
{
  struct corrupt_ctx c;
  struct qc_image *img;
  uint8_t buf[65536];
  uint64_t e;

  /* unaligned host offset */
  corrupt_base (&c, false, "dd");
  e = qimg_l2_entry (&c.s, &c.info, 1);
  unit_put_be64 (c.image + e, unit_get_be64 (c.image + e) + 512);
  img = corrupt_open (&c);
  assert_read_eio (img, 65536 + 100, 100, "unaligned host offset");
  /* the good cluster still reads */
  ck_assert_int_eq (blkdev_pread (qc_image_default_view (img), buf, 65536,
                                  0), 0);
  unit_assert_mem_eq (buf, c.guest, 65536, "the intact cluster");
  qc_image_close (img);
  corrupt_free (&c);

  /* a data cluster beyond the end of the file reads as zeros (qemu:
   * reads past the end of a file are zeros)
   */
  corrupt_base (&c, false, "dd");
  e = qimg_l2_entry (&c.s, &c.info, 1);
  unit_put_be64 (c.image + e, (1ULL << 63) | (c.len + 10 * 65536));
  img = corrupt_open (&c);
  memset (buf, 0xee, sizeof buf);
  ck_assert_int_eq (blkdev_pread (qc_image_default_view (img), buf, 65536,
                                  65536), 0);
  unit_assert_zero (buf, sizeof buf, "data cluster beyond the end");
  qc_image_close (img);
  corrupt_free (&c);

  /* compressed: descriptor beyond the end, then a damaged stream */
  corrupt_base (&c, false, "dc");
  e = qimg_l2_entry (&c.s, &c.info, 1);
  unit_put_be64 (c.image + e, (1ULL << 62) | (c.len + 1000));
  img = corrupt_open (&c);
  assert_read_eio (img, 65536, 65536, "beyond the end");
  qc_image_close (img);
  corrupt_free (&c);

  corrupt_base (&c, false, "dc");
  memset (c.image + c.info.host[1], 0xff, 64);
  img = corrupt_open (&c);
  assert_read_eio (img, 65536 + 10, 10, "corrupt");
  qc_image_close (img);
  corrupt_free (&c);
}
END_TEST

START_TEST (test_corrupt_extl2)
{
  struct corrupt_ctx c;
  struct qc_image *img;
  const uint64_t sc = 65536 / 32;
  uint8_t buf[3 * 2048];
  uint64_t e;

  /* subcluster 3 of cluster 0 both allocated and zero */
  corrupt_base (&c, true, "dd");
  e = qimg_l2_entry (&c.s, &c.info, 0);
  unit_put_be64 (c.image + e + 8, 0xffffffffULL | (1ULL << (32 + 3)));
  img = corrupt_open (&c);
  assert_read_eio (img, 0, 65536, "both allocated and zero");
  assert_read_eio (img, 3 * sc + 5, 1, "both allocated and zero");
  /* subclusters 0..2 are fine */
  ck_assert_int_eq (blkdev_pread (qc_image_default_view (img), buf,
                                  3 * sc, 0), 0);
  unit_assert_mem_eq (buf, c.guest, 3 * sc, "subclusters 0..2");
  qc_image_close (img);
  corrupt_free (&c);

  /* allocated subcluster in a cluster without a host offset */
  corrupt_base (&c, true, "du");
  e = qimg_l2_entry (&c.s, &c.info, 1);
  unit_put_be64 (c.image + e, 0);
  unit_put_be64 (c.image + e + 8, 1ULL << 7);
  img = corrupt_open (&c);
  assert_read_eio (img, 65536, 65536, "without a host offset");
  qc_image_close (img);
  corrupt_free (&c);
}
END_TEST

/* ---------------------------------------------------- open errors */

START_TEST (test_open_missing)
{
  unit_log_clear ();
  errno = 0;
  ck_assert_ptr_null (try_open ("missing.qcow2", NULL));
  ck_assert_int_eq (errno, ENOENT);
  ck_assert (unit_log_has (QC_LOG_ERROR, "missing.qcow2"));
}
END_TEST

/* The default format is qcow2 (the option table says so): a file that
 * is not qcow2 is refused unless format=raw, never silently served raw.
 */
START_TEST (test_open_not_qcow2)
{
  struct qc_image *img;
  uint8_t data[100000];

  unit_fill_random (data, sizeof data, 25);
  unit_write_file (P ("disk.raw"), data, sizeof data);
  unit_log_clear ();
  errno = 0;
  img = try_open ("disk.raw", NULL);
  if (img)
    qc_image_close (img);
  ck_assert_msg (img == NULL, "a raw file was opened as %s",
                 img ? "raw (format probed at the top level)" : "");
  ck_assert_int_eq (errno, EINVAL);
  ck_assert (unit_log_has (QC_LOG_ERROR, "not a qcow2 image"));
}
END_TEST

START_TEST (test_open_raw)
{
  struct qc_image *img;
  uint8_t data[100000], *f;
  size_t len;

  unit_fill_random (data, sizeof data, 26);
  unit_write_file (P ("disk.raw"), data, sizeof data);
  img = open_ok ("disk.raw", "format", "raw");
  compare_view (qc_image_default_view (img), data, sizeof data, "raw");
  ck_assert_ptr_nonnull (strstr (qc_image_description (img), "raw image"));
  ck_assert_uint_eq (qc_image_nr_snapshots (img), 0);
  ck_assert_ptr_null (qc_image_view (img, "s1"));
  ck_assert_int_eq (errno, ENOENT);
  qc_image_close (img);

  /* a qcow2 image served as raw is its file's bytes */
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 q.qcow2 1M", dir);
  f = unit_read_file (P ("q.qcow2"), &len);
  img = open_ok ("q.qcow2", "format", "raw");
  compare_view (qc_image_default_view (img), f, len, "qcow2 as raw");
  qc_image_close (img);
  free (f);
}
END_TEST

START_TEST (test_open_encrypted)
{
  struct qimg_spec s;
  struct qimg_info info;
  uint8_t *image;
  size_t len;

  qimg_spec_init (&s);
  image = qimg_build (&s, NULL, &len);
  unit_put_be32 (image + 32, 1);
  unit_write_file (P ("aes.qcow2"), image, len);
  unit_log_clear ();
  errno = 0;
  /* Without a passphrase an encrypted image is refused, saying why. */
  ck_assert_ptr_null (try_open ("aes.qcow2", NULL));
  ck_assert_int_eq (errno, EPERM);
  ck_assert (unit_log_has (QC_LOG_ERROR, "encrypted"));
  ck_assert (unit_log_has (QC_LOG_ERROR, "passphrase="));
  free (image);

  /* LUKS: method 2 with its header extension (qemu-img takes seconds
   * to make a real one: without a passphrase the core refuses it from
   * the header alone)
   */
  qimg_spec_init (&s);
  image = qimg_build (&s, &info, &len);
  unit_put_be32 (image + 32, 2);
  unit_put_be32 (image + info.ext_end, 0x0537be77);
  unit_put_be32 (image + info.ext_end + 4, 16);
  unit_put_be64 (image + info.ext_end + 8, 4 * 65536);
  unit_put_be64 (image + info.ext_end + 16, 65536);
  unit_write_file (P ("luks.qcow2"), image, len);
  unit_log_clear ();
  errno = 0;
  ck_assert_ptr_null (try_open ("luks.qcow2", NULL));
  ck_assert_int_eq (errno, EPERM);
  ck_assert (unit_log_has (QC_LOG_ERROR, "LUKS"));
  qimg_info_free (&info);
  free (image);
}
END_TEST

/* Backing files that cannot or must not be opened. */
static void
backing_error (const char *backing, const char *format, int err,
               const char *msg)
{
  struct qimg_spec s;
  uint8_t *image;
  size_t len;

  qimg_spec_init (&s);
  s.backing_file = backing;
  s.backing_format = format;
  image = qimg_build (&s, NULL, &len);
  unit_write_file (P ("b.qcow2"), image, len);
  free (image);
  unit_log_clear ();
  errno = 0;
  ck_assert_msg (try_open ("b.qcow2", NULL) == NULL, "backing '%s' opened",
                 backing);
  ck_assert_msg (errno == err, "backing '%s': errno %d (%s), expected %d",
                 backing, errno, strerror (errno), err);
  ck_assert_msg (unit_log_has (QC_LOG_ERROR, msg), "backing '%s': message "
                 "'%s' lacks '%s'", backing, qc_last_error (), msg);
}

START_TEST (test_open_backing_errors)
{
  backing_error ("missing.raw", "raw", ENOENT, "missing.raw");
  backing_error ("base.vmdk", "vmdk", ENOTSUP, "vmdk");
  /* an image that is its own backing file, with and without a format */
  backing_error ("b.qcow2", "qcow2", ELOOP, "loop");
  backing_error ("b.qcow2", NULL, ELOOP, "loop");
  /* names qemu would take for protocols */
  backing_error ("nbd://localhost/x", NULL, EINVAL, "protocol");
  backing_error ("json:{\"file.driver\":\"file\"}", NULL, EINVAL, "json:");
  backing_error ("http:x", "raw", EINVAL, "protocol");
}
END_TEST

/* A colon after a slash is part of a file name, not a protocol. */
START_TEST (test_open_backing_colon)
{
  struct qimg_spec s;
  uint8_t *image, base[65536], buf[65536];
  struct qc_image *img;
  size_t len;

  unit_sh ("mkdir '%s/sub'", dir);
  unit_fill_random (base, sizeof base, 27);
  unit_write_file (P ("sub/x:y.raw"), base, sizeof base);
  qimg_spec_init (&s);
  s.backing_file = "sub/x:y.raw";
  s.backing_format = "raw";
  image = qimg_build (&s, NULL, &len);
  unit_write_file (P ("c.qcow2"), image, len);
  img = open_ok ("c.qcow2");
  ck_assert_int_eq (blkdev_pread (qc_image_default_view (img), buf,
                                  sizeof buf, 0), 0);
  unit_assert_mem_eq (buf, base, sizeof base, "backing sub/x:y.raw");
  qc_image_close (img);
  free (image);
}
END_TEST

/* A header that names tables beyond the end of the file. */
START_TEST (test_open_truncated)
{
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 t.qcow2 1M && "
           "truncate -s 65536 t.qcow2", dir);
  unit_log_clear ();
  errno = 0;
  ck_assert_ptr_null (try_open ("t.qcow2", NULL));
  ck_assert_int_eq (errno, EINVAL);
  ck_assert (unit_log_has (QC_LOG_ERROR, "beyond the end"));
}
END_TEST

START_TEST (test_description)
{
  struct qc_image *img;
  const char *d;

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o compression_type=zstd "
           "z.qcow2 1M && qemu-img create -q -f qcow2 -o compat=0.10,"
           "cluster_size=512 v2.qcow2 1M", dir);
  img = open_ok ("z.qcow2");
  d = qc_image_description (img);
  ck_assert_msg (strstr (d, "qcow2 v3") && strstr (d, "64 KiB") &&
                 strstr (d, "zstd") && !strstr (d, "backing"), "%s", d);
  qc_image_close (img);
  img = open_ok ("v2.qcow2");
  d = qc_image_description (img);
  ck_assert_msg (strstr (d, "qcow2 v2") && strstr (d, "0.10") &&
                 strstr (d, "512 byte") && strstr (d, "zlib"), "%s", d);
  qc_image_close (img);
}
END_TEST

Suite *
read_suite (void)
{
  Suite *s = suite_create ("read");
  TCase *tc;

#define TC(name) \
  tc = tcase_create (name); \
  tcase_add_checked_fixture (tc, setup, teardown); \
  tcase_set_timeout (tc, UNIT_QEMU_TIMEOUT); \
  suite_add_tcase (s, tc)

  TC ("qemu-images");
  tcase_add_test (tc, test_v2);
  tcase_add_loop_test (tc, test_cluster_size, 0,
                       sizeof cluster_sizes / sizeof cluster_sizes[0]);
  tcase_add_loop_test (tc, test_refcount_bits, 0, 2);
  tcase_add_loop_test (tc, test_compressed, 0, 6);
  tcase_add_loop_test (tc, test_extended_l2, 0, 4);
  tcase_add_loop_test (tc, test_zero_clusters, 0, 2);
  tcase_add_loop_test (tc, test_data_file, 0, 2);

  TC ("backing");
  tcase_add_test (tc, test_backing_raw);
  tcase_add_test (tc, test_backing_chain);
  tcase_add_test (tc, test_backing_probed);
  tcase_add_test (tc, test_backing_override);

  TC ("snapshots");
  tcase_add_test (tc, test_snapshots);
  tcase_add_test (tc, test_snapshot_option);

  TC ("extents");
  tcase_add_loop_test (tc, test_extents, 0, 5);
  tcase_add_test (tc, test_extents_partial);

  TC ("l2cache");
  tcase_add_loop_test (tc, test_cache_big, 0, 2);
  tcase_add_test (tc, test_cache_tiny);
  tcase_add_test (tc, test_threads);

  TC ("built");
  tcase_add_loop_test (tc, test_built, 0, sizeof built / sizeof built[0]);
  tcase_add_test (tc, test_overlong_stream);

  TC ("corrupt");
  tcase_add_test (tc, test_corrupt_l1);
  tcase_add_test (tc, test_corrupt_l2);
  tcase_add_test (tc, test_corrupt_extl2);

  TC ("open");
  tcase_add_test (tc, test_open_missing);
  tcase_add_test (tc, test_open_not_qcow2);
  tcase_add_test (tc, test_open_raw);
  tcase_add_test (tc, test_open_encrypted);
  tcase_add_test (tc, test_open_backing_errors);
  tcase_add_test (tc, test_open_backing_colon);
  tcase_add_test (tc, test_open_truncated);
  tcase_add_test (tc, test_description);
#undef TC
  return s;
}
