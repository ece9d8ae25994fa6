/* SPDX-License-Identifier: BSD-3-Clause */
/* Persistent dirty bitmaps: the bitmap-* options' rules, and images
 * whose bitmaps cannot be kept (a hostile granularity, an inconsistent
 * directory): the write still works, nothing claims to be complete
 * that is not, and qemu-img check stays clean.  The end-to-end
 * behaviour against qemu is tests/test-bitmaps.sh.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"
#include "qcow2-int.h"
#include "unit.h"

static void
setup (void)
{
  unit_log_install ();
  unit_dir_setup ();
}

#define P(name) unit_path (unit_dir, name)

START_TEST (test_bitmap_options)
{
  struct qc_options o;

  qc_options_init (&o);
  /* granularity and disabled belong to an add just before: refused by
   * qc_options_check.
   */
  ck_assert_int_eq (qc_options_set (&o, "bitmap-granularity", "64k"), 0);
  ck_assert_int_eq (qc_options_check (&o), -1);
  ck_assert (unit_log_has (QC_LOG_ERROR, "just before"));
  qc_options_free (&o);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-remove", "x"), 0);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-disabled", "true"), 0);
  ck_assert_int_eq (qc_options_check (&o), -1);
  qc_options_free (&o);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-remove", "x"), 0);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-add", "a"), 0);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-granularity", "1000"), -1);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-granularity", "256"), -1);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-granularity", "4G"), -1);
  /* (2^54 + 512) KiB wraps to 512 KiB in 64 bits: refused, not taken. */
  ck_assert_int_eq (qc_options_set (&o, "bitmap-granularity",
                                    "18014398509482496k"), -1);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-granularity", "8k"), 0);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-disabled", "maybe"), -1);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-disabled", "true"), 0);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-merge", "a"), -1);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-merge", "a:"), -1);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-merge", ":a"), -1);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-merge", "a:b"), 0);
  ck_assert_int_eq (qc_options_set (&o, "bitmap-clear", ""), -1);
  ck_assert_uint_eq (o.nr_bitmap_ops, 3);
  ck_assert_int_eq (qc_options_set (&o, "file", "disk.qcow2"), 0);
  ck_assert_msg (qc_options_check (&o) == 0, "check: %s", qc_last_error ());
  ck_assert_int_eq (o.bitmap_ops[1].op, QC_BITMAP_ADD);
  ck_assert_uint_eq (o.bitmap_ops[1].granularity, 8192);
  ck_assert (o.bitmap_ops[1].disabled);
  ck_assert_int_eq (o.bitmap_ops[2].op, QC_BITMAP_MERGE);
  ck_assert_str_eq (o.bitmap_ops[2].name, "a");
  ck_assert_str_eq (o.bitmap_ops[2].target, "b");
  o.readonly = true;
  ck_assert_int_eq (qc_options_check_readonly (&o), -1);
  ck_assert (unit_log_has (QC_LOG_ERROR, "bitmap-remove="));
  qc_options_free (&o);
}
END_TEST

/* Offset in the file of the directory entry of the bitmap named name,
 * from the header's bitmaps extension (64 KiB clusters: cluster 0).
 */
static uint64_t
dir_entry (const uint8_t *image, const char *name)
{
  uint64_t pos = unit_get_be32 (image + 100), d = 0, size = 0, i;
  uint32_t nb = 0;

  for (;;) {
    uint32_t type = unit_get_be32 (image + pos);
    uint32_t len = unit_get_be32 (image + pos + 4);
    if (type == 0)
      break;
    if (type == 0x23852875) {
      nb = unit_get_be32 (image + pos + 8);
      size = unit_get_be64 (image + pos + 16);
      d = unit_get_be64 (image + pos + 24);
    }
    pos += 8 + ((len + 7) & ~7U);
  }
  ck_assert_msg (d != 0, "no bitmaps extension");
  for (i = 0, pos = d; i < nb && pos < d + size; i++) {
    uint32_t nl = (image[pos + 18] << 8) | image[pos + 19];
    uint32_t extra = unit_get_be32 (image + pos + 20);
    if (nl == strlen (name) &&
        memcmp (image + pos + 24 + extra, name, nl) == 0)
      return pos;
    pos += (24 + extra + nl + 7) & ~7ULL;
  }
  ck_abort_msg ("no bitmap named %s", name);
  return 0;
}

/* Open img.qcow2, write 4 KiB at 1 MiB through the active view, close. */
static void
write_once (void)
{
  struct qc_options opts;
  struct qc_image *img;
  uint8_t buf[4096];

  qc_options_init (&opts);
  opts.locking = false;
  ck_assert_int_eq (qc_options_set (&opts, "file", P ("img.qcow2")), 0);
  img = qc_image_open (&opts, NULL);
  ck_assert_msg (img != NULL, "open: %s", qc_last_error ());
  ck_assert_int_eq (qc_image_make_writable (img), 0);
  memset (buf, 0x5a, sizeof buf);
  ck_assert_int_eq (blkdev_pwrite (qc_image_default_view (img), buf,
                                   sizeof buf, 1 << 20, 0), 0);
  qc_image_close (img);
  qc_options_free (&opts);
}

/* A bitmap with a granularity of 2^40 (beyond what qemu allows) next to
 * a good one: the good one is kept (bit set, not in use), the other is
 * marked in use (inconsistent), never left looking complete.
 */
START_TEST (test_bitmap_hostile_granularity)
{
  uint8_t *image;
  size_t len;
  uint64_t a, b;

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 img.qcow2 4M && "
           "qemu-img bitmap --add img.qcow2 a && "
           "qemu-img bitmap --add img.qcow2 b", unit_dir);
  image = unit_read_file (P ("img.qcow2"), &len);
  b = dir_entry (image, "b");
  image[b + 17] = 40;
  unit_write_file (P ("img.qcow2"), image, len);
  free (image);

  unit_log_clear ();
  write_once ();
  ck_assert (unit_log_has (UNIT_LOG_ANY, "'b' cannot be kept up to date"));
  image = unit_read_file (P ("img.qcow2"), &len);
  a = dir_entry (image, "a");
  b = dir_entry (image, "b");
  ck_assert_uint_eq (unit_get_be32 (image + a + 12), QC_BITMAP_AUTO);
  ck_assert_uint_eq (unit_get_be32 (image + b + 12),
                     QC_BITMAP_AUTO | QC_BITMAP_IN_USE);
  /* The bits bitmap a now has: its table's one entry names a cluster
   * whose bit 16 (1 MiB / 64 KiB) is set.
   */
  {
    uint64_t t = unit_get_be64 (image + a);
    uint64_t c = unit_get_be64 (image + t) & QCOW2_OFFSET_MASK;
    ck_assert_uint_ne (c, 0);
    ck_assert_uint_eq (image[c + 2], 1);
  }
  free (image);
}
END_TEST

/* An inconsistent directory (a name of size 0): the bitmaps are treated
 * as stale, as before: autoclear bit cleared, clusters given back, so
 * qemu-img check is clean.
 */
START_TEST (test_bitmap_bad_directory)
{
  uint8_t *image;
  size_t len;
  uint64_t a;

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 img.qcow2 4M && "
           "qemu-img bitmap --add img.qcow2 a && "
           "qemu-io -f qcow2 -c 'write 0 64k' img.qcow2 >/dev/null", unit_dir);
  image = unit_read_file (P ("img.qcow2"), &len);
  a = dir_entry (image, "a");
  image[a + 18] = image[a + 19] = 0;
  unit_write_file (P ("img.qcow2"), image, len);
  free (image);

  write_once ();
  image = unit_read_file (P ("img.qcow2"), &len);
  ck_assert_uint_eq (image[95] & 1, 0);
  free (image);
  ck_assert_int_eq (unit_sh_status ("qemu-img check -q '%s'",
                                    P ("img.qcow2")), 0);
}
END_TEST

Suite *
bitmaps_suite (void)
{
  Suite *s = suite_create ("bitmaps");
  TCase *tc = tcase_create ("bitmaps");

  tcase_add_checked_fixture (tc, setup, unit_dir_teardown);
  tcase_set_timeout (tc, UNIT_QEMU_TIMEOUT);
  tcase_add_test (tc, test_bitmap_options);
  tcase_add_test (tc, test_bitmap_hostile_granularity);
  tcase_add_test (tc, test_bitmap_bad_directory);
  suite_add_tcase (s, tc);
  return s;
}
