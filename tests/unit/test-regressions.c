/* SPDX-License-Identifier: BSD-3-Clause */
/* Regression tests for what fuzzing and fault injection found.
 *
 * 1. Every input saved under tests/fuzz/regressions/<target>/ is replayed
 *    the way its fuzz target runs it (without libFuzzer): it must fail
 *    cleanly (-1 with errno) or work, never crash; with fuzz-write
 *    inputs, a write or zero that succeeded must read back at once.
 * 2. One test per finding, on an image made by qemu-img, asserting what
 *    qemu does or what the core's contract says.
 *
 * The regression inputs are found through $top_srcdir (set by `make
 * check`), else relative to the current directory.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"
#include "qcow2-crypto.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)

#define P(name) unit_path (unit_dir, name)

/* --------------------------------------------- a device that keeps */

/* A fixed-size memory device whose bytes outlive the close (to reopen
 * them), trims zeroing like hole punching.
 */
struct keepdev {
  struct blkdev dev;
  uint8_t *data;
};

static int
k_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  memcpy (buf, ((struct keepdev *) dev)->data + offset, count);
  return 0;
}

static int
k_pwrite (struct blkdev *dev, const void *buf, size_t count,
          uint64_t offset, unsigned flags)
{
  if (offset > dev->size || count > dev->size - offset) {
    qc_error ("keepdev: write past the end");
    errno = ENOSPC;
    return -1;
  }
  memcpy (((struct keepdev *) dev)->data + offset, buf, count);
  return 0;
}

static int
k_trim (struct blkdev *dev, uint64_t count, uint64_t offset, unsigned flags)
{
  if (offset < dev->size)
    memset (((struct keepdev *) dev)->data + offset, 0,
            count < dev->size - offset ? count : dev->size - offset);
  return 0;
}

static void
k_close (struct blkdev *dev)
{
}

static const struct blkdev_ops keep_ops = {
  .pread = k_pread, .pwrite = k_pwrite, .trim = k_trim, .close = k_close,
};

static void
keepdev_init (struct keepdev *k, uint8_t *data, uint64_t size, bool ro)
{
  memset (k, 0, sizeof *k);
  k->dev.ops = &keep_ops;
  k->dev.name = (char *) "keepdev";
  k->dev.size = size;
  k->dev.readonly = ro;
  k->dev.fixed_size = true;
  k->data = data;
}

/* A fixed-size container holding image and then zeros up to size, and
 * k, the device over it: the returned buffer (the caller frees it) is
 * what the device holds, before and after the image is closed.
 */
static uint8_t *
container_new (struct keepdev *k, const uint8_t *image, size_t len,
               size_t size)
{
  uint8_t *cont = calloc (1, size);

  ck_assert (cont != NULL);
  ck_assert_uint_le (len, size);
  memcpy (cont, image, len);
  keepdev_init (k, cont, size, false);
  return cont;
}

/* The image in a new container of size bytes (container_new), opened
 * with default options but no locking; *cont gets the container.
 */
static struct qc_image *
container_open (struct keepdev *k, const uint8_t *image, size_t len,
                size_t size, struct qc_options *opts, uint8_t **cont)
{
  struct qc_image *img;

  *cont = container_new (k, image, len, size);
  qc_options_init (opts);
  opts->locking = false;
  img = qc_image_open (opts, &k->dev);
  ck_assert_msg (img != NULL, "open: %s", qc_last_error ());
  return img;
}

/* A 64 KiB image with 512-byte clusters, 1 KiB of data and one
 * snapshot, "s1" (its table entry's offset in *sno).
 */
static uint8_t *
image_with_snapshot (size_t *len, uint64_t *sno)
{
  uint8_t *image;

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o cluster_size=512 "
           "img.qcow2 64K && qemu-io -f qcow2 -c 'write -P 0x31 0 1024' "
           "img.qcow2 >/dev/null && qemu-img snapshot -c s1 img.qcow2",
           unit_dir);
  image = unit_read_file (P ("img.qcow2"), len);
  *sno = unit_get_be64 (image + 64);
  return image;
}

/* The backing device the fuzz targets give images naming a backing
 * file (fuzz-common.c).
 */
static struct blkdev *
pattern_backing (void)
{
  static uint8_t pattern[256 * 1024];
  size_t i;

  for (i = 0; i < sizeof pattern; i++)
    pattern[i] = (i / 512) * 3 + 1 + (i & 0xf0);
  return blkdev_memory_new (pattern, sizeof pattern, true);
}

static bool
names_backing (const uint8_t *d, size_t n)
{
  size_t i;

  if (n < 20 || memcmp (d, "QFI\xfb", 4) != 0)
    return false;
  for (i = 8; i < 16; i++)
    if (d[i])
      return true;
  return false;
}

/* ------------------------------------------ replaying saved inputs */

static const char *
regressions_dir (void)
{
  static char path[4096];
  const char *top = getenv ("top_srcdir");
  const char *cands[] = { "tests/fuzz/regressions", "../tests/fuzz/regressions",
                          "../../tests/fuzz/regressions" };
  size_t i;

  if (top) {
    snprintf (path, sizeof path, "%s/tests/fuzz/regressions", top);
    if (access (path, R_OK) == 0)
      return path;
  }
  for (i = 0; i < sizeof cands / sizeof cands[0]; i++)
    if (access (cands[i], R_OK) == 0)
      return cands[i];
  return NULL;
}

/* Read [0, min(size, 16 MiB)) of dev in chunks; failures must set errno. */
static void
read_all (struct blkdev *dev, const char *what)
{
  const uint64_t chunk = 65536 + 1536;
  uint64_t lim = dev->size < 16 * MiB ? dev->size : 16 * MiB, off;
  uint8_t *buf = malloc (chunk);

  ck_assert (buf != NULL);
  for (off = 0; off < lim; off += chunk) {
    uint64_t n = lim - off < chunk ? lim - off : chunk;
    errno = 0;
    if (blkdev_pread (dev, buf, n, off) == -1)
      ck_assert_msg (errno != 0, "%s: pread failed without errno", what);
  }
  free (buf);
}

static void
replay_open_read (const uint8_t *d, size_t n, const char *what)
{
  struct qc_options opts;
  struct blkdev *dev, *backing = NULL;
  struct qc_image *img;
  size_t i;

  dev = blkdev_memory_new (d, n, true);
  ck_assert (dev != NULL);
  qc_options_init (&opts);
  opts.locking = false;
  opts.readonly = true;
  /* As fuzz-open-read (FUZZ_PASSPHRASE in tests/fuzz/fuzz-common.h). */
  opts.passphrase = (char *) "fuzz passphrase";
  if (names_backing (d, n))
    opts.backing_dev = backing = pattern_backing ();
  else
    opts.backing = (char *) "none";
  errno = 0;
  img = qc_image_open (&opts, dev);
  if (!img) {
    ck_assert_msg (errno != 0, "%s: open failed without errno", what);
    blkdev_close (backing);
    return;
  }
  read_all (qc_image_default_view (img), what);
  for (i = 0; i < qc_image_nr_snapshots (img); i++) {
    struct blkdev *v = qc_image_view (img, qc_image_snapshot_name (img, i));
    if (v)
      read_all (v, what);
  }
  qc_image_close (img);
  blkdev_close (backing);
}

/* The fuzz-write input format: see tests/fuzz/fuzz-write.c. */
static void
replay_write (const uint8_t *d, size_t n, const char *what)
{
  size_t slen = n ? d[0] : 0, ilen, nops, i;
  const uint8_t *script = d + 1, *image;
  uint8_t cfg, *bytes, *buf, *before = NULL;
  uint64_t devsize;
  bool written = false;
  struct keepdev k;
  struct blkdev *backing = NULL, *view;
  struct qc_options opts;
  struct qc_image *img;

  if (n == 0)
    return;
  if (slen > n - 1)
    slen = n - 1;
  image = d + 1 + slen;
  ilen = n - 1 - slen;
  cfg = slen ? script[0] : 0;
  nops = slen ? (slen - 1) / 6 : 0;
  devsize = ilen + ((cfg >> 4) & 7) * 32768ULL;
  bytes = calloc (1, devsize ? devsize : 1);
  ck_assert (bytes != NULL);
  memcpy (bytes, image, ilen);
  keepdev_init (&k, bytes, devsize, false);

  qc_options_init (&opts);
  opts.locking = false;
  opts.passphrase = (char *) "fuzz passphrase";     /* as fuzz-write */
  opts.compress = (cfg & 3) >= 2 ? (cfg & 3) - 2 : -1;
  if (cfg & 4)
    opts.cache_size = 1;
  if (names_backing (image, ilen) && !(cfg & 8))
    opts.backing_dev = backing = pattern_backing ();
  else
    opts.backing = (char *) "none";

  errno = 0;
  img = qc_image_open (&opts, &k.dev);
  if (!img) {
    ck_assert_msg (errno != 0, "%s: open failed without errno", what);
    goto out;
  }
  /* What the image reads before it is made writable (and repaired):
   * neither may change it.
   */
  view = qc_image_default_view (img);
  if (view->size <= 4 * MiB) {
    before = malloc (view->size + 1);
    ck_assert (before != NULL);
    if (blkdev_pread (view, before, view->size, 0) == -1) {
      free (before);
      before = NULL;
    }
  }
  errno = 0;
  if (qc_image_make_writable (img) == -1) {
    ck_assert_msg (errno != 0, "%s: make_writable failed without errno",
                   what);
    qc_image_close (img);
    goto out;
  }
  if (cfg & 0x80) {
    struct qc_check_result res;
    errno = 0;
    if (qc_image_check (img, QC_REPAIR_ALL, &res) == -1)
      ck_assert_msg (errno != 0, "%s: check failed without errno", what);
  }
  view = qc_image_default_view (img);
  if (before) {
    buf = malloc (view->size + 1);
    ck_assert (buf != NULL);
    if (blkdev_pread (view, buf, view->size, 0) == 0)
      unit_assert_mem_eq (buf, before, view->size, "the guest disk after "
                          "making the image writable and repairing it");
    free (buf);
  }
  for (i = 0; i < nops && view->size > 0; i++) {
    const uint8_t *p = script + 1 + 6 * i;
    unsigned kind = p[0] & 7, flags = 0;
    bool units = p[0] & 8;
    uint64_t off = (uint64_t) p[1] << 16 | p[2] << 8 | p[3];
    uint64_t len = (uint64_t) p[4] << 8 | p[5];
    int r;

    if (kind != 5 && kind != 7)
      written = true;
    off = (units ? off : off * 512) % view->size;
    len = units ? len + 1 : ((len & 0xfff) + 1) * 512;
    if (len > view->size - off)
      len = view->size - off;
    if (kind <= 1 && len > 256 * KiB)
      len = 256 * KiB;
    buf = malloc (len);
    ck_assert (buf != NULL);
    errno = 0;
    switch (kind) {
    case 0: case 1:
      unit_fill_random (buf, len, i + 1);
      r = blkdev_pwrite (view, buf, len, off, kind == 1 ? BLKDEV_FUA : 0);
      break;
    case 2: case 3: case 6:
      flags = kind == 3 ? BLKDEV_MAY_TRIM
        : kind == 6 ? BLKDEV_FAST_ZERO | (p[0] & 0x40 ? BLKDEV_MAY_TRIM : 0)
        : 0;
      r = blkdev_zero (view, len, off, flags);
      memset (buf, 0, len);
      break;
    case 4:
      r = blkdev_trim (view, len, off, 0);
      break;
    case 5:
      if ((p[0] & 0x80) && !written) {
        /* A snapshot operation (see snapshot_op in fuzz-write.c). */
        unsigned sub = (p[0] >> 4) & 3;
        size_t nr = qc_image_nr_snapshots (img);
        char name[32], *target = NULL;

        snprintf (name, sizeof name, "fz%zu", i);
        if (nr > 0 && sub > 0)
          target = strdup (qc_image_snapshot_name (img, p[5] % nr));
        else
          sub = 0;
        r = qc_image_snapshot_op (img, sub == 1 ? QC_SNAPSHOT_DELETE
                                  : sub == 2 ? QC_SNAPSHOT_APPLY
                                  : QC_SNAPSHOT_CREATE,
                                  target ? target : name);
        free (target);
        view = qc_image_default_view (img);
        if (view->size == 0) {
          free (buf);
          goto done;
        }
        break;
      }
      r = blkdev_flush (view);
      break;
    default:
      r = blkdev_pread (view, buf, len, off);
      break;
    }
    if (r == -1)
      ck_assert_msg (errno != 0, "%s: op %zu (kind %u) failed without errno",
                     what, i, kind);
    else if (kind <= 3 || kind == 6) {
      /* What was written or zeroed reads back at once. */
      uint8_t *got = malloc (len);
      ck_assert (got != NULL);
      ck_assert_msg (blkdev_pread (view, got, len, off) == 0,
                     "%s: op %zu: reading back failed: %s", what, i,
                     qc_last_error ());
      unit_assert_mem_eq (got, buf, len, what);
      free (got);
    }
    free (buf);
  }
 done:
  qc_image_close (img);

  /* Reopen read-only and read it all. */
  keepdev_init (&k, bytes, devsize, true);
  opts.compress = -1;
  opts.readonly = true;
  errno = 0;
  img = qc_image_open (&opts, &k.dev);
  if (!img)
    ck_assert_msg (errno != 0, "%s: reopen failed without errno", what);
  else {
    read_all (qc_image_default_view (img), what);
    qc_image_close (img);
  }
 out:
  blkdev_close (backing);
  free (bytes);
  free (before);
}

/* The fuzz-luks input: a LUKS1 header area (see tests/fuzz/fuzz-luks.c).
 * The fuzz build caps PBKDF2 at 4 iterations whatever the header asks;
 * this build does not, so a header asking for more than 100000 (up to
 * 10^8 are allowed) would take minutes here: it is skipped.
 */
static void
replay_luks (const uint8_t *d, size_t n, const char *what)
{
  static const char pass[] = "fuzz passphrase";   /* FUZZ_PASSPHRASE */
  struct blkdev *dev;
  struct qc_crypto *c;
  uint8_t buf[1024], plain[1024];
  size_t i;

  if (n >= 592) {
    bool slow = unit_get_be32 (d + 164) > 100000;
    for (i = 0; i < 8; i++)
      if (unit_get_be32 (d + 208 + 48 * i) == 0x00AC71F3 &&
          unit_get_be32 (d + 208 + 48 * i + 4) > 100000)
        slow = true;
    if (slow) {
      fprintf (stderr, "regressions: %s: PBKDF2 iterations too high to "
               "replay outside the fuzz build, skipped\n", what);
      return;
    }
  }
  dev = blkdev_memory_new (d, n, true);
  ck_assert (dev != NULL);
  errno = 0;
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, 0, n, pass, sizeof pass - 1,
                      what);
  if (!c)
    ck_assert_msg (errno != 0, "%s: open failed without errno", what);
  else {
    for (i = 0; i < sizeof plain; i++)
      plain[i] = i * 7 + 1;
    memcpy (buf, plain, sizeof buf);
    ck_assert_int_eq (qc_crypto_encrypt (c, 1024, 0, buf, sizeof buf), 0);
    ck_assert_int_eq (qc_crypto_decrypt (c, 1024, 0, buf, sizeof buf), 0);
    unit_assert_mem_eq (buf, plain, sizeof buf, "decrypt (encrypt (x))");
    qc_crypto_close (c);
  }
  blkdev_close (dev);
}

static void
replay_dir (const char *target,
            void (*fn) (const uint8_t *, size_t, const char *))
{
  const char *base = regressions_dir ();
  char path[4200];
  struct dirent *e;
  DIR *d;
  size_t n = 0;

  ck_assert_msg (base != NULL, "tests/fuzz/regressions not found (set "
                 "top_srcdir)");
  snprintf (path, sizeof path, "%s/%s", base, target);
  d = opendir (path);
  if (!d)
    return;                     /* nothing saved for this target */
  while ((e = readdir (d)) != NULL) {
    char file[4200 + 300];
    uint8_t *data;
    size_t len;

    if (e->d_name[0] == '.')
      continue;
    snprintf (file, sizeof file, "%s/%s", path, e->d_name);
    data = unit_read_file (file, &len);
    unit_log_clear ();
    fn (data, len, e->d_name);
    free (data);
    n++;
  }
  closedir (d);
  fprintf (stderr, "regressions: %zu %s inputs replayed\n", n, target);
}

START_TEST (test_replay_open_read)
{
  replay_dir ("fuzz-open-read", replay_open_read);
}
END_TEST

START_TEST (test_replay_write)
{
  replay_dir ("fuzz-write", replay_write);
}
END_TEST

START_TEST (test_replay_luks)
{
  replay_dir ("fuzz-luks", replay_luks);
}
END_TEST

/* The size of the snapshot view named name. */
static uint64_t
qc_snapshot_view_size (struct qc_image *img, const char *name)
{
  struct blkdev *v = qc_image_view (img, name);

  ck_assert_msg (v != NULL, "no snapshot %s: %s", name, qc_last_error ());
  return v->size;
}

/* ------------------------------------------------- the findings */

/* Finding (fuzz-write, tests/fuzz/regressions/fuzz-write/
 * zero-l2-enospc-swallowed): zeroing a range whose L2 table must be
 * allocated (an image with a backing file and no L2 table there) in a
 * full container: zero_units() ignores the failure of l2_for_write()
 * and returns 0, so the zero is reported done while the backing data
 * still shows.  The zero must fail with ENOSPC or read as zeros.
 */
START_TEST (test_zero_l2_alloc_failure)
{
  struct qc_options opts;
  struct qc_image *img;
  struct blkdev *dev, *backing, *view;
  uint8_t *image, buf[4096];
  size_t len;
  int r;

  unit_sh ("cd '%s' && qemu-img create -q -f raw base.raw 64K && "
           "qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw "
           "-F raw img.qcow2 64K", unit_dir);
  image = unit_read_file (P ("img.qcow2"), &len);
  /* A container with no room: any allocation fails with ENOSPC. */
  dev = blkdev_memory_new (image, len, false);
  backing = pattern_backing ();
  qc_options_init (&opts);
  opts.locking = false;
  opts.backing_dev = backing;
  img = qc_image_open (&opts, dev);
  ck_assert_msg (img != NULL, "open: %s", qc_last_error ());
  ck_assert_int_eq (qc_image_make_writable (img), 0);
  view = qc_image_default_view (img);

  errno = 0;
  r = blkdev_zero (view, 32768, 0, 0);
  if (r == -1)
    ck_assert_msg (errno == ENOSPC, "zero: errno %d (%s), expected ENOSPC",
                   errno, strerror (errno));
  else {
    ck_assert_int_eq (blkdev_pread (view, buf, sizeof buf, 0), 0);
    unit_assert_zero (buf, sizeof buf,
                      "zero reported success: the range must read as zeros "
                      "(the L2 allocation failed: zero_units ignored it)");
  }
  /* The same with trim's path (zero_range in ZERO_UNMAP mode). */
  errno = 0;
  r = blkdev_zero (view, 16384, 32768, BLKDEV_MAY_TRIM);
  if (r == -1)
    ck_assert_int_eq (errno, ENOSPC);
  else {
    ck_assert_int_eq (blkdev_pread (view, buf, sizeof buf, 32768), 0);
    unit_assert_zero (buf, sizeof buf, "zero (MAY_TRIM) reported success");
  }
  qc_image_close (img);
  blkdev_close (backing);
  free (image);
}
END_TEST

/* Finding (fuzz-write with check+repair): qc_image_check with repair
 * computes (int64_t) r.count[c] - (int64_t) v for a leaked cluster; with
 * 64-bit refcounts a refcount with the top bit set makes that signed
 * overflow (undefined behaviour; UBSan: "signed integer overflow: 0 -
 * -9223372036854775808").  The leak must be repaired to the number of
 * references (0 here) without UB.  (Without UBSan the wrap-around gives
 * the right result by accident: run with a -fsanitize=undefined build to
 * see the bug.)
 */
START_TEST (test_check_refcount64_top_bit)
{
  struct qc_options opts;
  struct qc_image *img;
  struct qc_check_result res;
  uint8_t *image;
  size_t len;
  uint64_t reftable, block;
  struct blkdev *dev;

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o cluster_size=512,"
           "refcount_bits=64 img.qcow2 64K", unit_dir);
  image = unit_read_file (P ("img.qcow2"), &len);
  image = realloc (image, 32 * KiB);
  memset (image + len, 0, 32 * KiB - len);
  /* A leaked cluster (20, unused) with refcount 2^63. */
  reftable = unit_get_be64 (image + 48);
  block = unit_get_be64 (image + reftable) & 0x00fffffffffffe00ULL;
  unit_put_be64 (image + block + 20 * 8, 1ULL << 63);
  unit_write_file (P ("leak.qcow2"), image, 32 * KiB);
  ck_assert_int_eq (unit_sh_status ("qemu-img check '%s' >/dev/null 2>&1",
                                    P ("leak.qcow2")), 3);  /* leaks only */

  dev = blkdev_memory_new (image, 32 * KiB, false);
  qc_options_init (&opts);
  opts.locking = false;
  img = qc_image_open (&opts, dev);
  ck_assert_msg (img != NULL, "open: %s", qc_last_error ());
  ck_assert_int_eq (qc_image_make_writable (img), 0);
  ck_assert_msg (qc_image_check (img, QC_REPAIR_ALL, &res) == 0,
                 "check: %s", qc_last_error ());
  ck_assert_uint_eq (res.corruptions, 0);
  ck_assert_uint_ge (res.leaks, 1);
  ck_assert_uint_eq (res.leaks_fixed, res.leaks);
  ck_assert_msg (qc_image_check (img, QC_REPAIR_NONE, &res) == 0,
                 "check: %s", qc_last_error ());
  ck_assert_uint_eq (res.leaks, 0);
  qc_image_close (img);
  free (image);
}
END_TEST

/* Finding (fuzz-write, tests/fuzz/regressions/fuzz-write/
 * repair-refblock-shared-with-data): the refcount table points to a data
 * cluster as its refcount block (so every refcount reads as 0xd1d1).
 * qemu-img check reports "ERROR refcount block 0 refcount=2" and -r all
 * rebuilds the refcount structures elsewhere, keeping the guest data.
 * qc_image_check counts the shared cluster's 2 references against a
 * refcount of 53713 as a leak (the only corruptions it sees are COPIED
 * flags, which it fixes without rebuilding) and repairs the leaks in
 * place, through the shared cluster: the guest data there is
 * overwritten with refcounts.  A refcount block (or table)
 * cluster with another reference is a corruption; repair must not write
 * guest data.
 */
START_TEST (test_repair_refblock_shared_with_data)
{
  struct qc_options opts;
  struct qc_image *img;
  struct qc_check_result res;
  struct keepdev k;
  struct blkdev *view;
  uint8_t *image, *cont, before[4096], after[4096];
  size_t len;

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o cluster_size=512 "
           "img.qcow2 64K && qemu-io -f qcow2 -c 'write -P 0xd1 0 4096' "
           "img.qcow2 >/dev/null", unit_dir);
  image = unit_read_file (P ("img.qcow2"), &len);
  /* header, refcount table, block, L1, L2, then 8 data clusters: the
   * refcount table's first entry now points at the 4th data cluster.
   */
  ck_assert_uint_eq (unit_get_be64 (image + 48), 512);
  unit_put_be64 (image + 512, 8 * 512);
  unit_write_file (P ("shared.qcow2"), image, len);
  ck_assert_int_eq (unit_sh_status ("qemu-img check '%s' 2>&1 | "
                                    "grep -q 'ERROR refcount block 0'",
                                    P ("shared.qcow2")), 0);

  /* A container with 64 KiB free after the image. */
  img = container_open (&k, image, len, len + 64 * KiB, &opts, &cont);
  view = qc_image_default_view (img);
  ck_assert_int_eq (blkdev_pread (view, before, sizeof before, 0), 0);
  ck_assert_int_eq (qc_image_make_writable (img), 0);
  ck_assert_msg (qc_image_check (img, QC_REPAIR_ALL, &res) == 0,
                 "check: %s", qc_last_error ());
  ck_assert_int_eq (blkdev_pread (view, after, sizeof after, 0), 0);
  unit_assert_mem_eq (after, before, sizeof after,
                      "guest data after repair=all");
  qc_image_close (img);
  free (cont);
  free (image);
}
END_TEST

/* Finding (fuzz-write, ASan heap-buffer-overflow, tests/fuzz/regressions/
 * fuzz-write/snapshot-apply-l1-size-truncated): applying a snapshot
 * whose disk size (from its extra data) needs an L1 table of more than
 * 2^32 entries.  snapshot_apply computes need = disk_size / span + ... in
 * 64 bits and stores max (l1_size, need) in a uint32_t: 2^41 becomes 0,
 * the 32 MiB check passes, and switch_active_l1 installs an L1 table of
 * 0 entries with a virtual size of 2^56 - 1 (in memory and in the
 * header).  The next write reads and writes img->active.l1[l1_index]
 * past the end of the table (ASan: heap-buffer-overflow in l2_for_write,
 * qcow2-write.c:141) and the image no longer opens.  Such a snapshot
 * must be refused and the image left as it was.
 */
START_TEST (test_snapshot_apply_huge_disk_size)
{
  struct qc_options opts;
  struct qc_image *img;
  struct keepdev k;
  struct blkdev *view;
  uint8_t *image, *cont, buf[1024];
  size_t len;
  uint64_t sno;
  const uint64_t cont_size = 256 * KiB;
  int r;

  image = image_with_snapshot (&len, &sno);
  ck_assert_uint_eq (unit_get_be32 (image + sno + 36), 24);  /* extra */
  ck_assert_uint_eq (unit_get_be64 (image + sno + 48), 64 * KiB);
  unit_put_be64 (image + sno + 48, 0x00ffffffffffffffULL);
  img = container_open (&k, image, len, cont_size, &opts, &cont);
  ck_assert_int_eq (qc_image_make_writable (img), 0);
  errno = 0;
  r = qc_image_snapshot_op (img, QC_SNAPSHOT_APPLY, "s1");
  view = qc_image_default_view (img);
  ck_assert_msg (r == -1 && errno != 0,
                 "applying a snapshot of 2^56 - 1 bytes (an L1 table of "
                 "2^41 entries) was not refused: r %d, virtual size now "
                 "%" PRIu64, r, view->size);
  ck_assert_uint_eq (view->size, 64 * KiB);
  ck_assert_int_eq (blkdev_pread (view, buf, sizeof buf, 0), 0);
  qc_image_close (img);
  /* The header still describes a valid image. */
  ck_assert_uint_eq (unit_get_be64 (cont + 24), 64 * KiB);
  free (cont);
  free (image);
}
END_TEST

/* Finding (fuzz-write oracle, then confirmed with qemu): an image whose
 * last cluster, holding an L2 table, is partly past the end of the
 * file (the file ends inside the table; qemu reads the rest as zeros).
 * qemu-img check finds no errors and qemu reads it; the core refuses it
 * read-only ("L1 entry 0 points to an L2 table at ..., beyond the end
 * of the file", EIO) but reads it once the image is writable (the limit
 * then is the file size rounded up to a cluster).  It must read the
 * same either way, as qemu does.
 */
START_TEST (test_l2_in_partial_last_cluster)
{
  struct qc_options opts;
  struct qc_image *img;
  struct blkdev *dev;
  uint8_t *image, *raw, buf[64 * 1024];
  size_t len, rawlen, cut;
  int r;

  /* Layout: header, refcount table, refcount block, L1, L2 (cluster 4,
   * the last: the zero cluster needs no data cluster).
   */
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o cluster_size=512 "
           "img.qcow2 64K && qemu-io -f qcow2 -c 'write -z 0 512' "
           "img.qcow2 >/dev/null", unit_dir);
  image = unit_read_file (P ("img.qcow2"), &len);
  ck_assert_uint_eq (len, 5 * 512);
  cut = 4 * 512 + 100;            /* the file ends inside the L2 table */
  unit_write_file (P ("cut.qcow2"), image, cut);
  unit_sh ("cd '%s' && qemu-img check cut.qcow2 >/dev/null && "
           "qemu-img convert -O raw cut.qcow2 cut.raw", unit_dir);
  raw = unit_read_file (P ("cut.raw"), &rawlen);
  ck_assert_uint_eq (rawlen, sizeof buf);

  dev = blkdev_memory_new (image, cut, true);
  qc_options_init (&opts);
  opts.locking = false;
  opts.readonly = true;
  img = qc_image_open (&opts, dev);
  ck_assert_msg (img != NULL, "open: %s", qc_last_error ());
  r = blkdev_pread (qc_image_default_view (img), buf, sizeof buf, 0);
  ck_assert_msg (r == 0, "read-only read of an image qemu reads failed: %s",
                 qc_last_error ());
  unit_assert_mem_eq (buf, raw, sizeof buf, "as qemu reads it");
  qc_image_close (img);
  free (image);
  free (raw);
}
END_TEST

/* Finding (fault-injection workload on a memory device): the refcount
 * table can never grow on a fixed-size device.  qc_refcount_open sets
 * alloc_end to the device size, and grow_reftable places the new table
 * at alloc_end, i.e. past the end of the container: ENOSPC although the
 * container is mostly free.  (Data clusters are found by refcount and
 * are fine.)  So an image in a fixed-size container (a memory device, a
 * block device, the plugin below the qcow2 filter) cannot use more host
 * clusters than its first refcount table covers: here 512-byte clusters
 * with 64-bit refcounts, one table cluster = 2 MiB.
 */
START_TEST (test_reftable_growth_fixed_container)
{
  struct qc_options opts;
  struct qc_image *img;
  struct keepdev k;
  struct blkdev *view;
  uint8_t *image, *data, *back, *cont;
  size_t len;
  const uint64_t cont_size = 8 * MiB, wlen = 2560 * KiB;
  int r;

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o cluster_size=512,"
           "refcount_bits=64 img.qcow2 4M", unit_dir);
  image = unit_read_file (P ("img.qcow2"), &len);
  img = container_open (&k, image, len, cont_size, &opts, &cont);
  ck_assert_int_eq (qc_image_make_writable (img), 0);
  view = qc_image_default_view (img);
  data = malloc (wlen);
  back = malloc (wlen);
  ck_assert (data && back);
  unit_fill_random (data, wlen, 7);
  errno = 0;
  r = blkdev_pwrite (view, data, wlen, 0, 0);
  ck_assert_msg (r == 0, "writing 2.5 MiB into an 8 MiB container failed "
                 "(errno %d): %s", errno, qc_last_error ());
  ck_assert_int_eq (blkdev_flush (view), 0);
  ck_assert_int_eq (blkdev_pread (view, back, wlen, 0), 0);
  unit_assert_mem_eq (back, data, wlen, "written data");
  qc_image_close (img);
  free (cont);
  free (data);
  free (back);
  free (image);
}
END_TEST


/* Finding (fuzz-write oracle, tests/fuzz/regressions/fuzz-write/
 * active-l1-in-snapshot-table): a corrupt image whose active L1 table
 * lies inside the snapshot table (both past the end of a 96-byte file).
 * repair=all counts the shared cluster's two references and sets its
 * refcount to 2, so refcounts look consistent; the first write then
 * updates an L1 entry in place, in the middle of the snapshot table,
 * and the image no longer opens for checking ("snapshot '' has an
 * invalid L1 table").  qemu refuses such a write (its metadata overlap
 * check) and marks the image corrupt.  Making such an image writable
 * must be refused; it still reads.
 */
START_TEST (test_active_l1_in_snapshot_table)
{
  struct qc_options opts;
  struct qc_image *img;
  struct keepdev k;
  struct blkdev *view;
  uint8_t *image, *cont, buf[1024];
  size_t len;
  uint64_t sno;
  const uint64_t cont_size = 256 * KiB;
  int r;

  image = image_with_snapshot (&len, &sno);
  ck_assert_uint_eq (sno % 512, 0);
  unit_put_be64 (image + 40, sno);      /* l1_table_offset */
  img = container_open (&k, image, len, cont_size, &opts, &cont);
  view = qc_image_default_view (img);
  ck_assert_int_eq (blkdev_pread (view, buf, sizeof buf, 0), 0);
  errno = 0;
  r = qc_image_make_writable (img);
  ck_assert_msg (r == -1 && errno == EROFS,
                 "an image whose active L1 table lies in its snapshot "
                 "table was made writable (r %d, errno %d)", r, errno);
  ck_assert_int_eq (blkdev_pread (view, buf, sizeof buf, 0), 0);
  qc_image_close (img);
  free (cont);
  free (image);
}
END_TEST


/* Found while writing tests/fuzz/make-luks-seeds.c (a write at offset
 * 0 - 512): a write, zero or trim past the end of the disk went through
 * to qc_view_write, which indexes the L1 table with it (ASan: SEGV in
 * l2_for_write, qcow2-write.c:141, reading img->active.l1[2^47]); just
 * past the end it reads and then writes the entry after the table.
 * nbdkit checks bounds first, but the core's contract must not depend
 * on it: such requests fail with ENOSPC (EINVAL for a trim) and change
 * nothing.
 */
START_TEST (test_write_past_end_of_disk)
{
  struct qc_options opts;
  struct qc_image *img;
  struct blkdev *dev, *view;
  uint8_t buf[1024] = { 0 }, back[1024];
  const uint64_t cont_size = 256 * KiB;
  const struct { uint64_t off, len; } bad[] = {
    { 64 * KiB, 512 }, { 64 * KiB - 512, 1024 }, { UINT64_MAX - 511, 512 },
    { 1ULL << 56, 512 },
  };
  size_t i;

  dev = blkdev_memory_new (NULL, cont_size, false);
  ck_assert (dev != NULL);
  qc_options_init (&opts);
  opts.locking = false;
  opts.size = 64 * KiB;
  opts.cluster_size = 512;
  ck_assert_msg (qc_image_create (&opts, dev) == 0, "create: %s",
                 qc_last_error ());
  qc_options_init (&opts);
  opts.locking = false;
  img = qc_image_open (&opts, dev);
  ck_assert_msg (img != NULL, "open: %s", qc_last_error ());
  ck_assert_int_eq (qc_image_make_writable (img), 0);
  view = qc_image_default_view (img);
  ck_assert_uint_eq (view->size, 64 * KiB);
  memset (buf, 0x5a, sizeof buf);
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    errno = 0;
    ck_assert_msg (blkdev_pwrite (view, buf, bad[i].len, bad[i].off, 0) == -1
                   && errno == ENOSPC, "write at %" PRIu64 " not refused",
                   bad[i].off);
    errno = 0;
    ck_assert_msg (blkdev_zero (view, bad[i].len, bad[i].off, 0) == -1 &&
                   errno == ENOSPC, "zero at %" PRIu64 " not refused",
                   bad[i].off);
    errno = 0;
    ck_assert_msg (blkdev_trim (view, bad[i].len, bad[i].off, 0) == -1 &&
                   errno == EINVAL, "trim at %" PRIu64 " not refused",
                   bad[i].off);
  }
  /* Nothing changed; the last sector is still writable. */
  ck_assert_int_eq (blkdev_pread (view, back, sizeof back,
                                  64 * KiB - sizeof back), 0);
  memset (buf, 0, sizeof buf);
  unit_assert_mem_eq (back, buf, sizeof back, "the end of the disk");
  memset (buf, 0x5a, sizeof buf);
  ck_assert_int_eq (blkdev_pwrite (view, buf, 512, 64 * KiB - 512, 0), 0);
  ck_assert_int_eq (blkdev_pread (view, back, 512, 64 * KiB - 512), 0);
  unit_assert_mem_eq (back, buf, 512, "the last sector");
  qc_image_close (img);
}
END_TEST


/* Found while writing tests/fuzz/make-luks-seeds.c (ASan:
 * heap-buffer-overflow in put_ext, qcow2-create.c): creating a LUKS
 * image with 512-byte clusters.  The header (112 bytes), the encryption
 * extension (24) and the feature name table (392) do not fit in the
 * 512-byte header cluster; build_header wrote past it, and the image
 * made had no end of extensions in cluster 0 (it did not open).
 * qemu-img leaves the feature name table out then; so must we.
 */
START_TEST (test_create_luks_512_byte_clusters)
{
  struct qc_options opts;
  struct qc_image *img;
  struct blkdev *dev, *view;
  uint8_t buf[4096], back[4096];
  const uint64_t cont_size = 4 * MiB;
  char *pass = strdup ("secret");
  struct keepdev k;
  uint8_t *cont = calloc (1, cont_size);

  ck_assert (cont != NULL && pass != NULL);
  keepdev_init (&k, cont, cont_size, false);
  qc_options_init (&opts);
  opts.locking = false;
  opts.size = 64 * KiB;
  opts.cluster_size = 512;
  opts.encrypt = true;
  opts.encrypt_iter_time = 10;
  opts.passphrase = pass;
  ck_assert_msg (qc_image_create (&opts, &k.dev) == 0, "create: %s",
                 qc_last_error ());

  qc_options_init (&opts);
  opts.locking = false;
  opts.passphrase = pass;
  dev = &k.dev;
  img = qc_image_open (&opts, dev);
  ck_assert_msg (img != NULL, "open of the new image: %s", qc_last_error ());
  ck_assert_int_eq (qc_image_make_writable (img), 0);
  view = qc_image_default_view (img);
  unit_fill_random (buf, sizeof buf, 3);
  ck_assert_int_eq (blkdev_pwrite (view, buf, sizeof buf, 1024, 0), 0);
  ck_assert_int_eq (blkdev_flush (view), 0);
  qc_image_close (img);

  /* qemu reads it as written. */
  unit_write_file (P ("enc.qcow2"), cont, cont_size);
  unit_sh ("cd '%s' && qemu-img convert --object secret,id=s0,data=secret "
           "--image-opts driver=qcow2,file.filename=enc.qcow2,"
           "encrypt.key-secret=s0 -O raw enc.raw", unit_dir);
  {
    size_t rawlen;
    uint8_t *raw = unit_read_file (P ("enc.raw"), &rawlen);
    ck_assert_uint_eq (rawlen, 64 * KiB);
    memcpy (back, raw + 1024, sizeof back);
    unit_assert_mem_eq (back, buf, sizeof back, "what qemu reads");
    free (raw);
  }
  free (cont);
  free (pass);
}
END_TEST


/* Finding (fuzz-write oracle, after 516 018 executions; its input is
 * tests/fuzz/regressions/fuzz-write/snapshot-without-disk-size): a
 * snapshot whose extra data has no disk size (older writers) takes the
 * image's size at open.  The core rewrote such entries as they were, so
 * after applying another snapshot of another size and reopening, the
 * snapshot had the new size and read differently.  qemu writes the disk
 * size into every entry it rewrites; so must we.
 */
START_TEST (test_snapshot_without_disk_size)
{
  struct qc_options opts;
  struct qc_image *img;
  struct keepdev k;
  struct blkdev *dev;
  uint8_t *image, *cont, *e;
  size_t len, i;
  uint64_t sno;
  uint32_t xl;
  const uint64_t cont_size = 256 * KiB;

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o cluster_size=512 "
           "img.qcow2 32K && qemu-io -f qcow2 -c 'write -P 0x11 0 1024' "
           "img.qcow2 >/dev/null && qemu-img snapshot -c small img.qcow2 && "
           "qemu-img resize -q img.qcow2 64K && "
           "qemu-img snapshot -c big img.qcow2", unit_dir);
  image = unit_read_file (P ("img.qcow2"), &len);
  ck_assert_uint_eq (unit_get_be32 (image + 60), 2);
  /* Drop the extra data of the second entry ("big", 64 KiB): its size
   * is then the image's, 64 KiB.
   */
  sno = unit_get_be64 (image + 64);
  e = image + sno;
  e += (40 + unit_get_be32 (e + 36) + ((e[12] << 8) | e[13]) +
        ((e[14] << 8) | e[15]) + 7) & ~7u;
  xl = unit_get_be32 (e + 36);
  ck_assert_uint_eq (xl, 24);
  memmove (e + 40, e + 40 + xl, ((e[12] << 8) | e[13]) +
           ((e[14] << 8) | e[15]));
  unit_put_be32 (e + 36, 0);
  cont = container_new (&k, image, len, cont_size);

  /* Open, change and close; then open what that left. */
  for (i = 0; i < 2; i++) {
    keepdev_init (&k, cont, cont_size, false);
    dev = &k.dev;
    qc_options_init (&opts);
    opts.locking = false;
    img = qc_image_open (&opts, dev);
    ck_assert_msg (img != NULL, "open: %s", qc_last_error ());
    ck_assert_uint_eq (qc_snapshot_view_size (img, "big"), 64 * KiB);
    if (i == 0) {
      ck_assert_int_eq (qc_image_make_writable (img), 0);
      ck_assert_int_eq (qc_image_snapshot_op (img, QC_SNAPSHOT_CREATE,
                                              "new"), 0);
      ck_assert_int_eq (qc_image_snapshot_op (img, QC_SNAPSHOT_APPLY,
                                              "small"), 0);
      ck_assert_uint_eq (qc_image_default_view (img)->size, 32 * KiB);
      ck_assert_int_eq (blkdev_flush (qc_image_default_view (img)), 0);
    }
    qc_image_close (img);
  }
  free (cont);
  free (image);
}
END_TEST

Suite *
regressions_suite (void)
{
  Suite *s = suite_create ("regressions");
  TCase *tc = tcase_create ("replay");
  TCase *tf = tcase_create ("findings");

  tcase_set_timeout (tc, UNIT_QEMU_TIMEOUT);
  tcase_add_test (tc, test_replay_open_read);
  tcase_add_test (tc, test_replay_write);
  tcase_add_test (tc, test_replay_luks);
  suite_add_tcase (s, tc);

  tcase_add_checked_fixture (tf, unit_dir_setup, unit_dir_teardown);
  tcase_set_timeout (tf, UNIT_QEMU_TIMEOUT);
  tcase_add_test (tf, test_zero_l2_alloc_failure);
  tcase_add_test (tf, test_check_refcount64_top_bit);
  tcase_add_test (tf, test_l2_in_partial_last_cluster);
  tcase_add_test (tf, test_reftable_growth_fixed_container);
  tcase_add_test (tf, test_repair_refblock_shared_with_data);
  tcase_add_test (tf, test_snapshot_apply_huge_disk_size);
  tcase_add_test (tf, test_active_l1_in_snapshot_table);
  tcase_add_test (tf, test_write_past_end_of_disk);
  tcase_add_test (tf, test_create_luks_512_byte_clusters);
  tcase_add_test (tf, test_snapshot_without_disk_size);
  suite_add_tcase (s, tf);
  return s;
}
