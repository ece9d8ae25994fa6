/* SPDX-License-Identifier: BSD-3-Clause */
/* The encoder (qcow2-enc-*.c): the cluster map's rank, select and next
 * against a plain count; and encoded files, read in pieces in random
 * order, equal to one read of the whole, opened again by the core's own
 * reader, hold the source's bytes (qemu judges the same files in
 * tests/test-qcow2enc.sh).
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-enc.h"
#include "qcow2.h"
#include "unit.h"

static uint64_t
next_rand (uint64_t *s)
{
  *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
  return *s >> 33;
}

START_TEST (test_map)
{
  const uint64_t nbits = 3000 + _i * 997;
  struct qc_enc_map m;
  bool *plain = calloc (nbits, 1);
  uint64_t seed = 77 + _i, i, r, k;

  ck_assert_ptr_nonnull (plain);
  ck_assert_int_eq (qc_enc_map_init (&m, nbits), 0);
  /* Runs of every length, denser or sparser by _i. */
  for (k = 0; k < 40 * (uint64_t) (_i + 1); k++) {
    uint64_t from = next_rand (&seed) % nbits;
    uint64_t len = next_rand (&seed) % (_i % 2 ? 700 : 5) + 1;
    qc_enc_map_set_range (&m, from, from + len);
    for (i = from; i < from + len && i < nbits; i++)
      plain[i] = true;
  }
  for (k = 0; k < 20; k++) {
    i = next_rand (&seed) % nbits;
    qc_enc_map_clear (&m, i);
    plain[i] = false;
  }
  qc_enc_map_finish (&m);

  r = 0;
  for (i = 0; i < nbits; i++) {
    ck_assert_uint_eq (qc_enc_map_rank (&m, i), r);
    ck_assert (qc_enc_map_get (&m, i) == plain[i]);
    if (plain[i]) {
      ck_assert_uint_eq (qc_enc_map_select (&m, r), i);
      r++;
    }
  }
  ck_assert_uint_eq (m.count, r);
  ck_assert_uint_eq (qc_enc_map_rank (&m, nbits), r);
  for (k = 0; k < 500; k++) {
    uint64_t from = next_rand (&seed) % (nbits + 10);
    uint64_t to = from + next_rand (&seed) % 300, want = nbits;
    bool any = false;
    for (i = from; i < nbits; i++)
      if (plain[i]) {
        want = i;
        break;
      }
    for (i = from; i < to && i < nbits; i++)
      any |= plain[i];
    ck_assert_uint_eq (qc_enc_map_next (&m, from), want);
    ck_assert (qc_enc_map_any (&m, from, to) == any);
  }
  qc_enc_map_free (&m);
  free (plain);
}
END_TEST

/* The source: random data, zero runs, holes (a memory device has no
 * extents, so zero-detect alone finds the zeros); not a multiple of 512.
 */
#define SRC_SIZE (3 * 1024 * 1024 + 333)

static uint8_t *
make_source (void)
{
  uint8_t *p = calloc (1, SRC_SIZE);

  ck_assert_ptr_nonnull (p);
  unit_fill_random (p, 400000, 5);
  unit_fill_random (p + 1000000, 70000, 6);
  p[2000000] = 1;
  /* Compressible: text-like bytes, for the compressed cases. */
  for (size_t i = 1500000; i < 1900000; i++)
    p[i] = "qcow2enc"[i % 8] + (i / 4096) % 7;
  unit_fill_random (p + SRC_SIZE - 100, 100, 7);
  return p;
}

static const struct {
  const char *opts[4][2];
} cases[] = {
  { { { NULL } } },
  { { { "cluster-size", "512" } } },
  { { { "cluster-size", "2M" } } },
  { { { "cluster-size", "4k" }, { "refcount-bits", "1" } } },
  { { { "refcount-bits", "64" }, { "compat", "0.10" } } },
  { { { "extended-l2", "on" }, { "cluster-size", "16k" } } },
  { { { "zero-detect", "off" } } },
  { { { "compress", "zlib" } } },
  { { { "compress", "zstd" }, { "refcount-bits", "2" },
      { "cluster-size", "4k" } } },
  { { { "compress", "zlib" }, { "refcount-bits", "1" },
      { "zero-detect", "off" } } },
  { { { "compress", "zstd" }, { "extended-l2", "on" },
      { "cluster-size", "32k" }, { "compress-level", "1" } } },
  { { { "encrypt", "luks" }, { "passphrase", "pw" },
      { "encrypt-iter-time", "10" }, { "cluster-size", "4k" } } },
};

START_TEST (test_encode)
{
  uint8_t *src = make_source (), *file, *piece, *back;
  struct blkdev *sdev = blkdev_memory_new (src, SRC_SIZE, true);
  struct blkdev *fdev, *view;
  struct qc_options o;
  struct qc_image *img;
  struct qc_enc *e;
  uint64_t size, seed = 99, k;
  bool encrypted;
  size_t i;

  qc_options_init (&o);
  for (i = 0; i < 4 && cases[_i].opts[i][0]; i++)
    ck_assert_int_eq (qc_options_set (&o, cases[_i].opts[i][0],
                                      cases[_i].opts[i][1]), 0);
  e = qc_enc_new (&o, sdev);
  ck_assert_msg (e != NULL, "%s", qc_last_error ());
  size = qc_enc_size (e);
  file = malloc (size);
  piece = malloc (size);
  ck_assert (file && piece);
  ck_assert_int_eq (qc_enc_pread (e, file, size, 0), 0);
  /* Any byte in any order: pieces of random length at random offsets
   * (some past the end, which read as zeros).
   */
  for (k = 0; k < 300; k++) {
    uint64_t off = next_rand (&seed) % (size + 1000);
    size_t len = next_rand (&seed) % 200000 + 1;
    uint8_t *want = calloc (1, len);
    ck_assert_int_eq (qc_enc_pread (e, piece, len < size ? len : size,
                                    off), 0);
    if (off < size)
      memcpy (want, file + off, off + len <= size ? len : size - off);
    ck_assert (memcmp (piece, want, len < size ? len : size) == 0);
    free (want);
  }
  /* zero-detect leaves the zero runs out (the source is mostly zeros),
   * and without it a memory device (no extents) is stored whole.
   */
  if (!o.cluster_size || o.cluster_size <= 65536) {
    uint64_t cs = o.cluster_size ? o.cluster_size : 65536;
    uint64_t all = (SRC_SIZE + cs - 1) / cs;
    if (o.zero_detect)
      ck_assert_uint_lt (qc_enc_data_clusters (e), all / 2);
    else
      ck_assert_uint_eq (qc_enc_data_clusters (e), all);
  }
  qc_enc_free (e);

  /* The core reads it back. */
  fdev = blkdev_memory_new (file, size, true);
  encrypted = o.encrypt;
  qc_options_free (&o);
  qc_options_init (&o);
  if (encrypted)
    ck_assert_int_eq (qc_options_set (&o, "passphrase", "pw"), 0);
  o.readonly = true;
  o.locking = false;
  img = qc_image_open (&o, fdev);
  ck_assert_msg (img != NULL, "%s", qc_last_error ());
  view = qc_image_default_view (img);
  ck_assert_uint_eq (view->size, (SRC_SIZE + 511) & ~511ULL);
  back = calloc (1, view->size);
  ck_assert_int_eq (blkdev_pread (view, back, view->size, 0), 0);
  ck_assert (memcmp (back, src, SRC_SIZE) == 0);
  for (k = SRC_SIZE; k < view->size; k++)
    ck_assert_int_eq (back[k], 0);
  qc_image_close (img);
  blkdev_close (sdev);
  qc_options_free (&o);
  free (back);
  free (file);
  free (piece);
  free (src);
}
END_TEST

/* A source too large for the cluster size: the error names the option. */
START_TEST (test_too_large)
{
  struct blkdev *sdev = blkdev_memory_new (NULL, 4096, true);
  struct qc_options o;

  qc_options_init (&o);
  o.prefix = "qcow2enc-";
  ck_assert_int_eq (qc_options_set (&o, "cluster-size", "512"), 0);
  sdev->size = 1ULL << 40;      /* never read past the first bytes */
  ck_assert_ptr_null (qc_enc_new (&o, sdev));
  ck_assert (strstr (qc_last_error (), "larger qcow2enc-cluster-size="));
  sdev->size = 4096;
  blkdev_close (sdev);
  qc_options_free (&o);
}
END_TEST

Suite *
enc_suite (void)
{
  Suite *s = suite_create ("enc");
  TCase *tc = tcase_create ("enc");

  tcase_set_timeout (tc, 120);
  tcase_add_loop_test (tc, test_map, 0, 6);
  tcase_add_loop_test (tc, test_encode, 0, sizeof cases / sizeof cases[0]);
  tcase_add_test (tc, test_too_large);
  suite_add_tcase (s, tc);
  return s;
}
