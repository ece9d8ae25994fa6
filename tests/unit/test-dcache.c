/* SPDX-License-Identifier: BSD-3-Clause */
/* The cache of decompressed clusters (common/dcache.c): its own rules,
 * then through the core: a client reading compressed images made by
 * qemu-img in pieces smaller than a cluster gets qemu's bytes and
 * decompresses each cluster once; compressed clusters overwritten,
 * trimmed and their host bytes reused by new compressed streams are
 * never answered from the cache; readers in several threads with a tiny
 * cache.
 */
#include <config.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkdev.h"
#include "dcache.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-int.h"
#include "qcow2.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)

#define P(name) unit_path (unit_dir, name)

/* ------------------------------------------------------- helpers */

/* Compressible text, with some zero and some random (incompressible:
 * stored uncompressed by qemu-img) stretches of `unit` bytes.
 */
static void
make_src (const char *name, uint64_t size, uint64_t unit, uint64_t seed)
{
  uint8_t *buf = calloc (1, size);
  uint64_t u, i;

  ck_assert (buf != NULL);
  for (u = 0; u * unit < size; u++) {
    uint8_t *p = buf + u * unit;
    switch ((u * 7 + seed) % 8) {
    case 0:
      break;                                    /* zeros */
    case 1:
      unit_fill_random (p, unit, seed * 131 + u);
      break;
    default:
      unit_fill_random (p, unit, seed * 131 + u);
      for (i = 0; i < unit; i++)
        p[i] = "abcdefgh ijkl\n"[p[i] % 14];
      break;
    }
  }
  unit_write_file (P (name), buf, size);
  free (buf);
}

static uint8_t *
qemu_raw (const char *name, size_t *len)
{
  static unsigned n;
  char out[64];

  snprintf (out, sizeof out, "expected-%u.raw", n++);
  unit_sh ("cd '%s' && qemu-img convert -U -O raw '%s' '%s'", unit_dir, name,
           out);
  return unit_read_file (P (out), len);
}

/* Open an image of unit_dir, option pairs NULL-terminated; writable makes it
 * writable.
 */
static struct qc_image *
open_img (const char *name, bool writable, ...)
{
  struct qc_options o;
  struct qc_image *img;
  const char *k, *v;
  va_list args;

  qc_options_init (&o);
  ck_assert_int_eq (qc_options_set (&o, "file", P (name)), 0);
  o.locking = false;
  va_start (args, writable);
  while ((k = va_arg (args, const char *)) != NULL) {
    v = va_arg (args, const char *);
    ck_assert_msg (qc_options_set (&o, k, v) == 0, "%s=%s: %s", k, v,
                   qc_last_error ());
  }
  va_end (args);
  ck_assert_int_eq (qc_options_check (&o), 0);
  o.readonly = !writable;
  img = qc_image_open (&o, NULL);
  qc_options_free (&o);
  ck_assert_msg (img != NULL, "open %s: %s", name, qc_last_error ());
  if (writable)
    ck_assert_msg (qc_image_make_writable (img) == 0, "make writable: %s",
                   qc_last_error ());
  return img;
}

static uint64_t
decompressed (struct qc_image *img)
{
  return __atomic_load_n (&img->nr_decompressed, __ATOMIC_RELAXED);
}

/* Compressed clusters of the active image. */
static uint64_t
count_compressed (struct qc_image *img)
{
  uint64_t off = 0, n = 0, size = img->active.dev.size;

  while (off < size) {
    struct qc_run run;
    ck_assert_int_eq (qc_map (&img->active, off, size - off, &run), 0);
    if (run.kind == QC_COMPRESSED)
      n++;
    off += run.length;
  }
  return n;
}

/* The compressed cluster descriptor at guest offset, or 0. */
static uint64_t
descriptor (struct qc_image *img, uint64_t off)
{
  struct qc_run run;

  ck_assert_int_eq (qc_map (&img->active, off, 1, &run), 0);
  return run.kind == QC_COMPRESSED ? run.host : 0;
}

static void
read_pass (struct blkdev *v, uint8_t *buf, uint64_t chunk)
{
  uint64_t off;

  for (off = 0; off < v->size; off += chunk) {
    size_t n = v->size - off < chunk ? v->size - off : chunk;
    unit_check (blkdev_pread (v, buf + off, n, off) == 0, "read %zu at %"
                PRIu64 ": %s", n, off, qc_last_error ());
  }
}

/* ------------------------------------------------ the cache alone */

static uint8_t *
filled (uint32_t cs, uint8_t byte)
{
  uint8_t *p = malloc (cs);

  ck_assert (p != NULL);
  memset (p, byte, cs);
  return p;
}

static bool
has (struct dcache *c, uint64_t host, uint64_t len, uint8_t byte)
{
  struct dcache_entry *slot;
  uint8_t b[16];

  if (!dcache_get (c, host, len, b, 100, sizeof b, &slot)) {
    ck_assert_ptr_nonnull (slot);
    dcache_fill (c, slot, NULL);                /* leave it uncached */
    return false;
  }
  ck_assert_uint_eq (b[0], byte);
  ck_assert_uint_eq (b[15], byte);
  return true;
}

/* What a reader does on a miss. */
static void
insert (struct dcache *c, uint64_t host, uint64_t len, uint8_t *data)
{
  struct dcache_entry *slot;
  uint8_t b[1];

  ck_assert (!dcache_get (c, host, len, b, 0, 1, &slot));
  ck_assert_ptr_nonnull (slot);
  dcache_fill (c, slot, data);
}

START_TEST (test_api)
{
  const uint32_t cs = 64 * KiB;
  struct dcache *c;
  struct dcache_entry *slot, *slot2;
  struct dcache_stats st;
  uint8_t b[1];

  /* Less than a cluster: off. */
  ck_assert_ptr_null (dcache_new (0, cs));
  ck_assert_ptr_null (dcache_new (cs - 1, cs));

  /* Two clusters: least recently used goes.  (A miss reserves a
   * place, which evicts too: B is looked for last.)
   */
  c = dcache_new (2 * cs + 100, cs);
  ck_assert_ptr_nonnull (c);
  insert (c, 0x30000, 1000, filled (cs, 'A'));
  insert (c, 0x30400, 1000, filled (cs, 'B'));
  ck_assert (has (c, 0x30000, 1000, 'A'));
  insert (c, 0x40000, 1000, filled (cs, 'C'));  /* B goes */
  ck_assert (has (c, 0x30000, 1000, 'A'));
  ck_assert (has (c, 0x40000, 1000, 'C'));
  ck_assert (!has (c, 0x30400, 1000, 'B'));
  dcache_get_stats (c, &st);
  ck_assert_uint_eq (st.inserts, 3);
  ck_assert_uint_eq (st.hits, 3);
  ck_assert_uint_eq (st.misses, 4);
  ck_assert_uint_eq (st.evictions, 2);
  dcache_free (c);

  /* Drops: by overlap with the stream's bytes, ends exclusive. */
  c = dcache_new (8 * cs, cs);
  insert (c, 0x30000, 1000, filled (cs, 'A'));
  insert (c, 0x40000, 1000, filled (cs, 'C'));
  ck_assert (!has (c, 0x30000, 999, 'A'));      /* same start, other length */
  dcache_drop (c, 0x30000 + 1000, 0x40000);     /* touches neither */
  ck_assert (has (c, 0x30000, 1000, 'A'));
  ck_assert (has (c, 0x40000, 1000, 'C'));
  dcache_drop (c, 0x30000 + 999, 0x30000 + 1000);
  ck_assert (!has (c, 0x30000, 1000, 'A'));
  ck_assert (has (c, 0x40000, 1000, 'C'));

  /* A stream crossing into the next host cluster goes when that
   * cluster is freed.
   */
  insert (c, 0x50000 - 300, 1000, filled (cs, 'E'));
  dcache_drop (c, 0x50000, 0x60000);
  ck_assert (!has (c, 0x50000 - 300, 1000, 'E'));
  ck_assert (has (c, 0x40000, 1000, 'C'));

  /* A range wider than the hash table. */
  insert (c, 0x7000000, 5000, filled (cs, 'F'));
  dcache_drop (c, 0, 1ULL << 40);
  ck_assert (!has (c, 0x40000, 1000, 'C'));
  ck_assert (!has (c, 0x7000000, 5000, 'F'));

  /* Given up: not cached. */
  ck_assert (!dcache_get (c, 0x90000, 1000, b, 0, 1, &slot));
  dcache_fill (c, slot, NULL);
  ck_assert (!has (c, 0x90000, 1000, 0));

  /* Dropped (or evicted) while being decompressed: not cached, its
   * data freed (see ASan).
   */
  ck_assert (!dcache_get (c, 0xa0000, 1000, b, 0, 1, &slot));
  dcache_drop (c, 0xa0000, 0xa0001);
  dcache_fill (c, slot, filled (cs, 'H'));
  ck_assert (!has (c, 0xa0000, 1000, 'H'));
  dcache_free (c);
  c = dcache_new (2 * cs, cs);
  ck_assert (!dcache_get (c, 0xb0000, 1000, b, 0, 1, &slot));
  ck_assert (!dcache_get (c, 0xc0000, 1000, b, 0, 1, &slot2));
  insert (c, 0xd0000, 1000, filled (cs, 'J'));  /* the first slot goes */
  dcache_fill (c, slot, filled (cs, 'I'));
  dcache_fill (c, slot2, filled (cs, 'K'));
  ck_assert (has (c, 0xd0000, 1000, 'J'));
  ck_assert (has (c, 0xc0000, 1000, 'K'));
  ck_assert (!has (c, 0xb0000, 1000, 'I'));
  dcache_free (c);
  c = dcache_new (8 * cs, cs);

  insert (c, 0x80000, 1000, filled (cs, 'G'));
  dcache_clear (c);
  ck_assert (!has (c, 0x80000, 1000, 'G'));
  dcache_get_stats (c, &st);
  ck_assert_uint_eq (st.drops, 1);
  dcache_free (c);
  dcache_drop (NULL, 0, 1);                     /* caching off */
}
END_TEST

/* A reader asking for a cluster another is decompressing waits for it
 * (and then has it), rather than decompressing it too.
 */
struct waiter {
  struct dcache *c;
  uint8_t byte;
  bool hit;
};

static void *
wait_thread (void *arg)
{
  struct waiter *w = arg;
  struct dcache_entry *slot;
  uint8_t b[8];

  w->hit = dcache_get (w->c, 0x10000, 4000, b, 8, sizeof b, &slot);
  if (!w->hit)
    dcache_fill (w->c, slot, NULL);
  w->byte = b[0];
  return NULL;
}

START_TEST (test_wait)
{
  const uint32_t cs = 4 * KiB;
  struct dcache *c = dcache_new (16 * cs, cs);
  struct dcache_entry *slot;
  struct dcache_stats st;
  struct waiter w[3];
  pthread_t t[3];
  uint8_t b[1];
  int i;

  ck_assert (!dcache_get (c, 0x10000, 4000, b, 0, 1, &slot));
  for (i = 0; i < 3; i++) {
    w[i] = (struct waiter) { c, 0, false };
    ck_assert_int_eq (pthread_create (&t[i], NULL, wait_thread, &w[i]), 0);
  }
  /* Most likely they all wait by then; those that come later hit. */
  usleep (20000);
  dcache_fill (c, slot, filled (cs, 'W'));
  for (i = 0; i < 3; i++) {
    pthread_join (t[i], NULL);
    ck_assert (w[i].hit);
    ck_assert_uint_eq (w[i].byte, 'W');
  }
  dcache_get_stats (c, &st);
  ck_assert_uint_eq (st.misses, 1);
  ck_assert_uint_eq (st.hits, 3);
  dcache_free (c);
}
END_TEST

/* ------------------------------------- sequential reads in pieces */

static const struct {
  const char *type;
  uint64_t cluster, chunk, size;
} seq[] = {
  { "zlib", 64 * KiB, 4 * KiB, 8 * MiB },
  { "zstd", 64 * KiB, 4 * KiB, 8 * MiB },
  { "zlib", 64 * KiB, 24 * KiB, 8 * MiB },     /* pieces across clusters */
  { "zlib", 2 * MiB, 256 * KiB, 32 * MiB },
  { "zstd", 2 * MiB, 256 * KiB, 32 * MiB },
  { "zlib", 512, 4 * KiB, 1 * MiB },           /* no piece is partial */
};

START_TEST (test_sequential)
{
  const uint64_t cs = seq[_i].cluster, chunk = seq[_i].chunk;
  struct qc_image *img;
  struct blkdev *v;
  struct dcache_stats st;
  uint8_t *want, *buf;
  uint64_t n, d0, pieces;
  size_t len;

  make_src ("src.raw", seq[_i].size, cs < 64 * KiB ? 64 * KiB : cs, _i);
  unit_sh ("cd '%s' && qemu-img convert -f raw -O qcow2 -c -o "
           "compression_type=%s,cluster_size=%" PRIu64 " src.raw c.qcow2",
           unit_dir, seq[_i].type, cs);
  want = qemu_raw ("c.qcow2", &len);
  buf = malloc (len);
  ck_assert (buf != NULL);

  img = open_img ("c.qcow2", false, NULL);
  v = qc_image_default_view (img);
  n = count_compressed (img);
  ck_assert_uint_ge (n, seq[_i].size / cs / 2);

  /* Each compressed cluster is decompressed once. */
  read_pass (v, buf, chunk);
  unit_assert_mem_eq (buf, want, len, "reads in pieces");
  ck_assert_uint_eq (decompressed (img), n);

  /* Whole clusters go straight to the caller, not through the cache. */
  dcache_get_stats (img->dcache, &st);
  d0 = st.hits + st.misses;
  if (cs <= 2 * MiB) {
    read_pass (v, buf, cs);
    unit_assert_mem_eq (buf, want, len, "reads of whole clusters");
    ck_assert_uint_eq (decompressed (img), 2 * n);
    dcache_get_stats (img->dcache, &st);
    ck_assert_uint_eq (st.hits + st.misses, d0);
  }
  qc_image_close (img);

  /* Without the cache, once per piece: what the cache saves. */
  img = open_img ("c.qcow2", false, "compressed-cache", "0", NULL);
  ck_assert_ptr_null (img->dcache);
  v = qc_image_default_view (img);
  read_pass (v, buf, chunk);
  unit_assert_mem_eq (buf, want, len, "reads in pieces, no cache");
  pieces = chunk < cs ? cs / chunk : 1;
  if (cs % chunk == 0 || chunk % cs == 0)
    ck_assert_uint_eq (decompressed (img), n * pieces);
  else
    ck_assert_uint_gt (decompressed (img), n);
  qc_image_close (img);
  free (want);
  free (buf);
}
END_TEST

/* A cache of one cluster, reading two clusters alternately: misses,
 * and still right.
 */
START_TEST (test_one_cluster)
{
  struct qc_image *img;
  struct blkdev *v;
  uint8_t *want, b[4096];
  size_t len;
  uint64_t i;

  make_src ("src.raw", 1 * MiB, 64 * KiB, 3);
  unit_sh ("cd '%s' && qemu-img convert -f raw -O qcow2 -c src.raw c.qcow2",
           unit_dir);
  want = qemu_raw ("c.qcow2", &len);
  img = open_img ("c.qcow2", false, "compressed-cache", "64k", NULL);
  v = qc_image_default_view (img);
  ck_assert_uint_ne (descriptor (img, 5 * 64 * KiB), 0);
  ck_assert_uint_ne (descriptor (img, 4 * 64 * KiB), 0);
  for (i = 0; i < 16; i++) {
    uint64_t off = (4 + i % 2) * 64 * KiB + (i / 2) * 4096;
    ck_assert_int_eq (blkdev_pread (v, b, sizeof b, off), 0);
    unit_assert_mem_eq (b, want + off, sizeof b, "alternating");
  }
  ck_assert_uint_eq (decompressed (img), 16);
  qc_image_close (img);
  free (want);
}
END_TEST

/* ------------------------------------ writes under a cached cluster */

/* Half random (stored by the codec: the same compressed length for any
 * seed), half zeros.
 */
static void
half_random (uint8_t *p, uint64_t cs, uint64_t seed)
{
  memset (p, 0, cs);
  unit_fill_random (p, cs / 2, seed);
}

static void
flush_ok (struct blkdev *v)
{
  ck_assert_msg (blkdev_flush (v) == 0, "flush: %s", qc_last_error ());
}

/* Read all of the disk in 4 KiB pieces (through the cache) and compare
 * with the model.
 */
static void
check_pieces (struct blkdev *v, const uint8_t *model, const char *what)
{
  uint8_t b[4096];
  uint64_t off;

  for (off = 0; off < v->size; off += sizeof b) {
    unit_check (blkdev_pread (v, b, sizeof b, off) == 0, "%s: read at %"
                PRIu64 ": %s", what, off, qc_last_error ());
    if (memcmp (b, model + off, sizeof b) != 0)
      unit_assert_mem_eq (b, model + off, sizeof b, what);
  }
}

/* _i: 0 zlib, 1 zstd */
START_TEST (test_reuse)
{
  const char *type = _i ? "zstd" : "zlib";
  const uint64_t cs = 64 * KiB, size = 8 * cs;
  struct qc_image *img;
  struct blkdev *v;
  struct dcache_stats st;
  uint8_t *model, b[4096];
  uint64_t d1, d2, seed = 100;
  unsigned i;
  size_t len;

  model = calloc (1, size);
  ck_assert (model != NULL);
  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 -o compression_type=%s "
           "r.qcow2 %" PRIu64, unit_dir, type, size);
  img = open_img ("r.qcow2", true, "compress", type, NULL);
  v = qc_image_default_view (img);

  /* Cluster 0 compressed, read in pieces: cached. */
  half_random (model, cs, seed++);
  ck_assert_int_eq (blkdev_pwrite (v, model, cs, 0, 0), 0);
  d1 = descriptor (img, 0);
  ck_assert_uint_ne (d1, 0);
  check_pieces (v, model, "first cluster");

  /* Trimmed, its host cluster freed (two flushes: the free waits for
   * the metadata, then for older I/O), and a new stream of the same
   * length written to it: the same descriptor, other bytes.
   */
  ck_assert_int_eq (blkdev_trim (v, cs, 0, 0), 0);
  memset (model, 0, cs);
  flush_ok (v);
  flush_ok (v);
  check_pieces (v, model, "after trim");
  half_random (model, cs, seed++);
  ck_assert_int_eq (blkdev_pwrite (v, model, cs, 0, 0), 0);
  d2 = descriptor (img, 0);
  ck_assert_msg (d2 == d1, "the new stream is elsewhere (0x%" PRIx64
                 " then 0x%" PRIx64 "): the test no longer reuses a "
                 "descriptor", d1, d2);
  check_pieces (v, model, "reused descriptor");
  dcache_get_stats (img->dcache, &st);
  ck_assert_uint_ge (st.drops, 1);

  /* Overwritten by another compressed cluster, by a partial write
   * (merged with the cached cluster), trimmed: every step checked in
   * pieces.  (Where new streams land is the allocator's business: the
   * reuse of a descriptor is forced above.)
   */
  for (i = 0; i < 60; i++) {
    uint64_t k = (i * 5 + i / 8) % 8, off = k * cs;

    switch (i % 4) {
    case 0: case 1:             /* whole cluster, compressed */
      half_random (model + off, cs, seed++);
      ck_assert_int_eq (blkdev_pwrite (v, model + off, cs, off, 0), 0);
      break;
    case 2:                     /* a piece: merged, maybe compressed */
      unit_fill_random (b, sizeof b, seed++);
      memcpy (model + off + 8192, b, sizeof b);
      ck_assert_int_eq (blkdev_pwrite (v, b, sizeof b, off + 8192, 0), 0);
      break;
    case 3:
      ck_assert_int_eq (blkdev_trim (v, cs, off, 0), 0);
      memset (model + off, 0, cs);
      break;
    }
    flush_ok (v);
    check_pieces (v, model, "overwrites");
  }
  qc_image_close (img);

  /* qemu agrees. */
  {
    uint8_t *want = qemu_raw ("r.qcow2", &len);
    ck_assert_uint_eq (len, size);
    unit_assert_mem_eq (want, model, size, "qemu-img convert");
    free (want);
  }
  free (model);
}
END_TEST

/* ----------------------------------------------- several readers */

struct reader {
  struct blkdev *v;
  const uint8_t *want;
  size_t len;
  unsigned seed, errors;
};

static void *
reader_thread (void *arg)
{
  struct reader *r = arg;
  uint64_t x = r->seed * 0x9e3779b97f4a7c15ULL + 1;
  uint8_t b[8192];
  int i;

  for (i = 0; i < 3000; i++) {
    uint64_t off, n;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    n = 512 + (x >> 50) % (sizeof b - 512);
    off = (x >> 8) % (r->len - n);
    if (blkdev_pread (r->v, b, n, off) == -1 ||
        memcmp (b, r->want + off, n) != 0)
      r->errors++;
  }
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

  make_src ("src.raw", 2 * MiB, 64 * KiB, 5);
  unit_sh ("cd '%s' && qemu-img convert -f raw -O qcow2 -c "
           "-o cluster_size=16k src.raw c.qcow2", unit_dir);
  want = qemu_raw ("c.qcow2", &len);
  /* Two clusters: entries are evicted while others copy from them. */
  img = open_img ("c.qcow2", false, "compressed-cache", "32k", NULL);
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

Suite *
dcache_suite (void)
{
  Suite *s = suite_create ("dcache");
  TCase *tc;

  tc = tcase_create ("api");
  tcase_add_test (tc, test_api);
  tcase_add_test (tc, test_wait);
  suite_add_tcase (s, tc);

  tc = tcase_create ("images");
  tcase_add_checked_fixture (tc, unit_dir_setup, unit_dir_teardown);
  tcase_set_timeout (tc, UNIT_QEMU_TIMEOUT);
  tcase_add_loop_test (tc, test_sequential, 0, sizeof seq / sizeof seq[0]);
  tcase_add_test (tc, test_one_cluster);
  tcase_add_loop_test (tc, test_reuse, 0, 2);
  tcase_add_test (tc, test_threads);
  suite_add_tcase (s, tc);
  return s;
}
