/* SPDX-License-Identifier: BSD-3-Clause */
/* Coalesced reads of compressed streams (common/rahead.c), through the
 * core, with a device below that counts the reads it gets: one request
 * over many compressed clusters made by qemu-img reads their streams
 * with one request below; a sequential reader in cluster-sized requests
 * gets read-ahead (few reads below); a random reader reads no more than
 * a small window per miss; the data clusters among the streams come
 * from the same windows; compressed rewrites and writes of data in place
 * are never answered from a stale window; readers in several threads
 * get qemu's bytes.
 */
#include <config.h>

#include <inttypes.h>
#include <pthread.h>
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
#define CS (64 * KiB)

#define P(name) unit_path (unit_dir, name)

/* ------------------------------------------------ a counting device */

struct countdev {
  struct blkdev dev;
  struct blkdev *inner;
  unsigned reads;               /* atomic */
  uint64_t bytes;               /* atomic */
  pthread_mutex_t lock;
  uint64_t log_off[64], log_len[64]; /* the last 64 reads */
};

static int
c_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  struct countdev *c = (struct countdev *) dev;

  unsigned n = __atomic_fetch_add (&c->reads, 1, __ATOMIC_RELAXED);

  __atomic_add_fetch (&c->bytes, count, __ATOMIC_RELAXED);
  pthread_mutex_lock (&c->lock);
  c->log_off[n % 64] = offset;
  c->log_len[n % 64] = count;
  pthread_mutex_unlock (&c->lock);
  return blkdev_pread (c->inner, buf, count, offset);
}

static int
c_pwrite (struct blkdev *dev, const void *buf, size_t count,
          uint64_t offset, unsigned flags)
{
  struct countdev *c = (struct countdev *) dev;
  int r = blkdev_pwrite (c->inner, buf, count, offset, flags);

  __atomic_store_n (&dev->size, blkdev_size (c->inner), __ATOMIC_RELEASE);
  return r;
}

static int
c_flush (struct blkdev *dev)
{
  return blkdev_flush (((struct countdev *) dev)->inner);
}

static void
c_close (struct blkdev *dev)
{
  struct countdev *c = (struct countdev *) dev;

  blkdev_close (c->inner);
  pthread_mutex_destroy (&c->lock);
  free (c);
}

static const struct blkdev_ops count_ops = {
  .pread = c_pread,
  .pwrite = c_pwrite,
  .flush = c_flush,
  .close = c_close,
};

/* The file name of unit_dir behind a counting device. */
static struct countdev *
countdev_new (const char *name, bool readonly)
{
  struct countdev *c = calloc (1, sizeof *c);

  ck_assert (c != NULL);
  pthread_mutex_init (&c->lock, NULL);
  c->inner = blkdev_file_open (P (name), readonly);
  ck_assert_msg (c->inner != NULL, "open %s: %s", name, qc_last_error ());
  c->dev.ops = &count_ops;
  c->dev.name = (char *) "counting device";
  c->dev.size = blkdev_size (c->inner);
  c->dev.readonly = readonly;
  return c;
}

static unsigned
reads (struct countdev *c)
{
  return __atomic_load_n (&c->reads, __ATOMIC_RELAXED);
}

static struct qc_image *
open_counted (struct countdev *c, bool writable)
{
  struct qc_options o;
  struct qc_image *img;

  qc_options_init (&o);
  ck_assert_int_eq (qc_options_set (&o, "file", "counted.qcow2"), 0);
  /* Whole-cluster reads skip this cache anyway; partial ones must not
   * be answered from it here.
   */
  ck_assert_int_eq (qc_options_set (&o, "compressed-cache", "0"), 0);
  if (writable)
    ck_assert_int_eq (qc_options_set (&o, "compress", "zlib"), 0);
  o.locking = false;
  ck_assert_int_eq (qc_options_check (&o), 0);
  o.readonly = !writable;
  img = qc_image_open (&o, &c->dev);
  qc_options_free (&o);
  ck_assert_msg (img != NULL, "open: %s", qc_last_error ());
  if (writable)
    ck_assert_msg (qc_image_make_writable (img) == 0, "make writable: %s",
                   qc_last_error ());
  return img;
}

/* 4 MiB of compressible text, every cluster compressed by qemu-img
 * but, with mixed, every third one: random bytes (qemu-img convert -c
 * stores them as they are, between the compressed streams of the
 * others); and its bytes as qemu reads them.
 */
static uint8_t *
make_image_of (size_t *len, bool mixed)
{
  uint64_t size = 4 * MiB, i;
  uint8_t *buf = malloc (size);

  ck_assert (buf != NULL);
  unit_fill_random (buf, size, mixed ? 9 : 7);
  for (i = 0; i < size; i++)
    if (!mixed || (i / CS) % 3 != 1)
      buf[i] = "qcow2 read-ahead\n"[buf[i] % 17];
  unit_write_file (P ("src.raw"), buf, size);
  free (buf);
  unit_sh ("cd '%s' && qemu-img convert -f raw -O qcow2 -c src.raw c.qcow2"
           " && qemu-img convert -O raw c.qcow2 want.raw", unit_dir);
  return unit_read_file (P ("want.raw"), len);
}

static uint8_t *
make_image (size_t *len)
{
  return make_image_of (len, false);
}

static void
read_ok (struct blkdev *v, uint8_t *buf, size_t n, uint64_t off,
         const uint8_t *want)
{
  ck_assert_msg (blkdev_pread (v, buf, n, off) == 0, "read %zu at %" PRIu64
                 ": %s", n, off, qc_last_error ());
  unit_assert_mem_eq (buf, want + off, n, "data read");
}

/* The L2 table in the cache, so that only stream reads are counted. */
static void
warm_l2 (struct qc_image *img)
{
  struct qc_run run;

  ck_assert_int_eq (qc_map (&img->active, 0, CS, &run), 0);
  ck_assert_int_eq (run.kind, QC_COMPRESSED);
}

/* Where the stream of the compressed cluster at guest offset lies. */
static void
stream (struct qc_image *img, uint64_t guest, uint64_t *host, uint64_t *len)
{
  struct qc_run run;

  ck_assert_int_eq (qc_map (&img->active, guest, CS, &run), 0);
  ck_assert_int_eq (run.kind, QC_COMPRESSED);
  qc_compressed_extent (img, run.host, host, len);
}

/* ------------------------------------------------------------ tests */

START_TEST (test_one_request)
{
  struct countdev *c;
  struct qc_image *img;
  uint8_t *want, *buf;
  size_t len;
  uint64_t lo, hi, len0, len15;
  unsigned r0;

  want = make_image (&len);
  buf = malloc (len);
  c = countdev_new ("c.qcow2", true);
  img = open_counted (c, false);
  warm_l2 (img);

  /* 16 clusters in one request: their streams in one read below (the
   * first), and at most one more: the window after it, read ahead.
   */
  stream (img, 0, &lo, &len0);
  stream (img, 15 * CS, &hi, &len15);
  hi += len15;
  r0 = reads (c);
  read_ok (qc_image_default_view (img), buf, 16 * CS, 0, want);
  ck_assert_msg (reads (c) - r0 >= 1 && reads (c) - r0 <= 2,
                 "%u reads below", reads (c) - r0);
  ck_assert_msg (c->log_off[r0 % 64] == lo &&
                 c->log_len[r0 % 64] >= hi - lo,
                 "first read below: %" PRIu64 " bytes at %" PRIu64 ", the "
                 "streams are [%" PRIu64 ", %" PRIu64 ")",
                 c->log_len[r0 % 64], c->log_off[r0 % 64], lo, hi);
  ck_assert_uint_eq (img->nr_decompressed, 16);

  /* Within it again: no read below at all. */
  r0 = reads (c);
  read_ok (qc_image_default_view (img), buf, 4 * CS, 8 * CS, want);
  ck_assert_uint_eq (reads (c) - r0, 0);
  qc_image_close (img);
  free (buf);
  free (want);
}
END_TEST

START_TEST (test_sequential)
{
  struct countdev *c;
  struct qc_image *img;
  uint8_t *want, *buf;
  size_t len;
  uint64_t off;
  unsigned r0, n;

  want = make_image (&len);
  buf = malloc (CS);
  c = countdev_new ("c.qcow2", true);
  img = open_counted (c, false);
  warm_l2 (img);

  /* 64 cluster-sized requests, in order: the windows double (64 KiB,
   * 128 KiB, ...), so a handful of reads below, not one per cluster.
   */
  r0 = reads (c);
  for (off = 0; off < len; off += CS)
    read_ok (qc_image_default_view (img), buf, CS, off, want);
  n = reads (c) - r0;
  ck_assert_msg (n >= 2 && n <= 8, "%u reads below for 64 clusters", n);
  qc_image_close (img);

  /* A random reader (every 7th cluster, backwards): one read per miss,
   * each at most the first window (64 KiB), not 2 MiB.
   */
  c = countdev_new ("c.qcow2", true);
  img = open_counted (c, false);
  warm_l2 (img);
  r0 = reads (c);
  c->bytes = 0;
  for (n = 0, off = 63 * CS; n < 9; n++, off -= 7 * CS)
    read_ok (qc_image_default_view (img), buf, 4096, off + 1000, want);
  ck_assert_uint_eq (reads (c) - r0, 9);
  ck_assert_msg (c->bytes <= 9 * 64 * KiB, "%" PRIu64 " bytes read below",
                 c->bytes);
  qc_image_close (img);
  free (buf);
  free (want);
}
END_TEST

/* Compressed rewrites of clusters inside a loaded window: the new
 * streams are read, not the window's old bytes.
 */
START_TEST (test_rewrite)
{
  struct countdev *c;
  struct qc_image *img;
  struct blkdev *v;
  uint8_t *want, *buf;
  size_t len;
  uint64_t i, k;

  want = make_image (&len);
  buf = malloc (len);
  c = countdev_new ("c.qcow2", false);
  img = open_counted (c, true);
  v = qc_image_default_view (img);
  for (k = 0; k < 3; k++) {
    read_ok (v, buf, len, 0, want);
    /* New text in clusters 3 + k and 20 + k, written compressed; then
     * trimmed and rewritten, so freed clusters are reused too.
     */
    for (i = 0; i < CS; i++)
      want[(3 + k) * CS + i] = want[(20 + k) * CS + i] = "xyz \n"[(i * 7 + k) % 5];
    ck_assert_int_eq (blkdev_pwrite (v, want + (3 + k) * CS, CS,
                                     (3 + k) * CS, 0), 0);
    ck_assert_int_eq (blkdev_trim (v, CS, (20 + k) * CS, 0), 0);
    ck_assert_int_eq (blkdev_flush (v), 0);
    ck_assert_int_eq (blkdev_pwrite (v, want + (20 + k) * CS, CS,
                                     (20 + k) * CS, 0), 0);
    read_ok (v, buf, len, 0, want);
  }
  qc_image_close (img);
  free (buf);
  free (want);
}
END_TEST

/* The data clusters among the streams come from the same windows (one
 * read below for a request over both kinds), and a write of guest data
 * in place into one of them is read back, not the window's old bytes.
 */
START_TEST (test_data_among_streams)
{
  struct countdev *c;
  struct qc_image *img;
  struct blkdev *v;
  struct qc_run run;
  uint8_t *want, *buf;
  size_t len;
  uint64_t i, k;
  unsigned r0;

  want = make_image_of (&len, true);
  buf = malloc (len);
  c = countdev_new ("c.qcow2", true);
  img = open_counted (c, false);
  warm_l2 (img);
  ck_assert_int_eq (qc_map (&img->active, CS, CS, &run), 0);
  ck_assert_int_eq (run.kind, QC_DATA);
  r0 = reads (c);
  read_ok (qc_image_default_view (img), buf, 16 * CS, 0, want);
  ck_assert_msg (reads (c) - r0 >= 1 && reads (c) - r0 <= 2,
                 "%u reads below for 16 clusters, 5 of them data",
                 reads (c) - r0);
  qc_image_close (img);

  c = countdev_new ("c.qcow2", false);
  img = open_counted (c, true);
  v = qc_image_default_view (img);
  for (k = 0; k < 3; k++) {
    uint64_t off = (1 + 3 * (k + 2)) * CS + 4096 * (k + 1);

    read_ok (v, buf, len, 0, want);
    /* 4 KiB inside a data cluster: written in place. */
    for (i = 0; i < 4096; i++)
      want[off + i] = (uint8_t) (i * 13 + k);
    ck_assert_int_eq (blkdev_pwrite (v, want + off, 4096, off, 0), 0);
    read_ok (v, buf, len, 0, want);
  }
  qc_image_close (img);
  free (buf);
  free (want);
}
END_TEST

struct reader {
  struct blkdev *v;
  const uint8_t *want;
  uint64_t len;
  unsigned seed;
};

static void *
reader_run (void *arg)
{
  struct reader *r = arg;
  uint8_t *buf = malloc (4 * CS);
  unsigned i;

  for (i = 0; i < 200 && buf; i++) {
    uint64_t x = (uint64_t) (r->seed + i) * 2654435761u;
    size_t n = 4096 + x % (4 * CS - 4096);
    uint64_t off = (x >> 8) % (r->len - n);

    if (i % 3 == 0)             /* a sequential stretch */
      off = (uint64_t) i * CS % (r->len - n);
    if (blkdev_pread (r->v, buf, n, off) != 0 ||
        memcmp (buf, r->want + off, n) != 0) {
      free (buf);
      return (void *) 1;
    }
  }
  free (buf);
  return NULL;
}

START_TEST (test_threads)
{
  struct countdev *c;
  struct qc_image *img;
  uint8_t *want;
  size_t len;
  pthread_t t[6];
  struct reader rd[6];
  unsigned i;

  want = make_image (&len);
  c = countdev_new ("c.qcow2", true);
  img = open_counted (c, false);
  for (i = 0; i < 6; i++) {
    rd[i] = (struct reader) { qc_image_default_view (img), want, len, i * 977 };
    ck_assert_int_eq (pthread_create (&t[i], NULL, reader_run, &rd[i]), 0);
  }
  for (i = 0; i < 6; i++) {
    void *ret;
    ck_assert_int_eq (pthread_join (t[i], &ret), 0);
    ck_assert_msg (ret == NULL, "reader %u read wrong bytes", i);
  }
  qc_image_close (img);
  free (want);
}
END_TEST

Suite *
rahead_suite (void)
{
  Suite *s = suite_create ("rahead");
  TCase *tc = tcase_create ("core");

  tcase_set_timeout (tc, UNIT_QEMU_TIMEOUT);
  tcase_add_checked_fixture (tc, unit_dir_setup, unit_dir_teardown);
  tcase_add_test (tc, test_one_request);
  tcase_add_test (tc, test_sequential);
  tcase_add_test (tc, test_rewrite);
  tcase_add_test (tc, test_data_among_streams);
  tcase_add_test (tc, test_threads);
  suite_add_tcase (s, tc);
  return s;
}
