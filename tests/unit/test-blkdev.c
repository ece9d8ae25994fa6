/* SPDX-License-Identifier: BSD-3-Clause */
/* Block devices: memory and file devices and the generic wrappers
 * (bounds, zero fill past the end, read-only, extents and clipping).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkdev.h"
#include "qc-error.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)
#define HZ (BLKDEV_EXTENT_HOLE | BLKDEV_EXTENT_ZERO)

/* ------------------------------------------------------------ memory */

START_TEST (test_memory_rw)
{
  uint8_t data[10000], buf[10000], w[100];
  struct blkdev *dev;

  unit_fill_random (data, sizeof data, 1);
  dev = blkdev_memory_new (data, sizeof data, false);
  ck_assert_ptr_nonnull (dev);
  ck_assert_uint_eq (dev->size, sizeof data);
  ck_assert (!dev->readonly);

  /* a copy: changing the source changes nothing */
  data[0] ^= 0xff;
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  data[0] ^= 0xff;
  unit_assert_mem_eq (buf, data, sizeof data, "memory device content");

  memset (w, 0x5a, sizeof w);
  ck_assert_int_eq (blkdev_pwrite (dev, w, sizeof w, 5000, 0), 0);
  memcpy (data + 5000, w, sizeof w);
  ck_assert_int_eq (blkdev_pwrite (dev, w, 10, sizeof data - 10, 0), 0);
  memcpy (data + sizeof data - 10, w, 10);
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  unit_assert_mem_eq (buf, data, sizeof data, "after writes");

  /* Writes past the end are refused and change nothing. */
  unit_log_clear ();
  memset (w, 0xee, sizeof w);
  ck_assert_int_eq (blkdev_pwrite (dev, w, 10, sizeof data - 5, 0), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert (unit_log_has (QC_LOG_ERROR, "past the end"));
  ck_assert_int_eq (blkdev_pwrite (dev, w, 1, sizeof data + 1, 0), -1);
  ck_assert_int_eq (blkdev_pwrite (dev, w, 1, UINT64_MAX, 0), -1);
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  unit_assert_mem_eq (buf, data, sizeof data, "after refused writes");

  ck_assert_int_eq (blkdev_flush (dev), 0);
  ck_assert_int_eq (blkdev_file_fd (dev), -1);
  blkdev_close (dev);
  blkdev_close (NULL);          /* allowed */
}
END_TEST

START_TEST (test_memory_zero_and_empty)
{
  uint8_t buf[4096];
  struct blkdev *dev = blkdev_memory_new (NULL, 4096, true);

  memset (buf, 0xaa, sizeof buf);
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  unit_assert_zero (buf, sizeof buf, "new memory device");
  blkdev_close (dev);

  dev = blkdev_memory_new (NULL, 0, false);
  ck_assert_ptr_nonnull (dev);
  ck_assert_uint_eq (dev->size, 0);
  memset (buf, 0xaa, sizeof buf);
  ck_assert_int_eq (blkdev_pread (dev, buf, 10, 0), 0);
  unit_assert_zero (buf, 10, "empty device");
  ck_assert_uint_eq (buf[10], 0xaa);
  ck_assert_int_eq (blkdev_pwrite (dev, buf, 1, 0, 0), -1);
  ck_assert_int_eq (errno, ENOSPC);
  blkdev_close (dev);
}
END_TEST

START_TEST (test_read_past_end)
{
  uint8_t data[1000], buf[300];
  struct blkdev *dev;

  unit_fill_random (data, sizeof data, 2);
  dev = blkdev_memory_new (data, sizeof data, true);

  /* half inside, half outside */
  memset (buf, 0xaa, sizeof buf);
  ck_assert_int_eq (blkdev_pread (dev, buf, 100, 950), 0);
  unit_assert_mem_eq (buf, data + 950, 50, "the part inside");
  unit_assert_zero (buf + 50, 50, "past the end");
  ck_assert_uint_eq (buf[100], 0xaa);   /* nothing beyond count */

  /* entirely outside, exactly at the end, and near UINT64_MAX */
  memset (buf, 0xaa, sizeof buf);
  ck_assert_int_eq (blkdev_pread (dev, buf, 300, 1000), 0);
  unit_assert_zero (buf, 300, "at the end");
  memset (buf, 0xaa, sizeof buf);
  ck_assert_int_eq (blkdev_pread (dev, buf, 300, UINT64_MAX - 10), 0);
  unit_assert_zero (buf, 300, "near UINT64_MAX");

  /* count 0 */
  ck_assert_int_eq (blkdev_pread (dev, buf, 0, 0), 0);
  blkdev_close (dev);
}
END_TEST

START_TEST (test_readonly)
{
  uint8_t data[512], buf[512];
  struct blkdev *dev;

  unit_fill_random (data, sizeof data, 3);
  dev = blkdev_memory_new (data, sizeof data, true);
  ck_assert (dev->readonly);
  unit_log_clear ();
  memset (buf, 0, sizeof buf);
  errno = 0;
  ck_assert_int_eq (blkdev_pwrite (dev, buf, sizeof buf, 0, 0), -1);
  ck_assert_int_eq (errno, EROFS);
  ck_assert (unit_log_has (QC_LOG_ERROR, "read-only"));
  ck_assert (unit_log_has (QC_LOG_ERROR, "memory"));
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  unit_assert_mem_eq (buf, data, sizeof data, "after a refused write");
  blkdev_close (dev);
}
END_TEST

/* Zero falls back to writing zeros, trim does nothing; neither on a
 * read-only device.
 */
START_TEST (test_memory_zero_trim)
{
  uint8_t data[8192], buf[8192];
  struct blkdev *dev;

  unit_fill_random (data, sizeof data, 9);
  dev = blkdev_memory_new (data, sizeof data, false);
  ck_assert_int_eq (blkdev_zero (dev, 3000, 1000, 0), 0);
  memset (data + 1000, 0, 3000);
  ck_assert_int_eq (blkdev_trim (dev, 4096, 4096, 0), 0);
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  unit_assert_mem_eq (buf, data, sizeof data, "after zero and trim");
  errno = 0;
  ck_assert_int_eq (blkdev_zero (dev, 100, 0, BLKDEV_FAST_ZERO), -1);
  ck_assert_int_eq (errno, ENOTSUP);
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  unit_assert_mem_eq (buf, data, sizeof data, "after a refused fast zero");
  ck_assert_int_eq (blkdev_zero (dev, 100, sizeof data - 50, 0), -1);
  ck_assert_int_eq (errno, ENOSPC);
  blkdev_close (dev);

  dev = blkdev_memory_new (data, sizeof data, true);
  errno = 0;
  ck_assert_int_eq (blkdev_zero (dev, 100, 0, 0), -1);
  ck_assert_int_eq (errno, EROFS);
  errno = 0;
  ck_assert_int_eq (blkdev_trim (dev, 100, 0, 0), -1);
  ck_assert_int_eq (errno, EROFS);
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  unit_assert_mem_eq (buf, data, sizeof data, "read-only");
  blkdev_close (dev);
}
END_TEST

START_TEST (test_memory_extents)
{
  struct blkdev *dev = blkdev_memory_new (NULL, 10000, true);
  struct unit_exts x = { 0 };

  /* no extents method: all data, clipped to the size */
  unit_exts_once (dev, 100, 1000, &x);
  ck_assert_uint_eq (x.n, 1);
  unit_assert_ext (&x, 0, 100, 1000, 0);

  unit_exts_once (dev, 9900, 500, &x);
  ck_assert_uint_eq (x.n, 1);
  unit_assert_ext (&x, 0, 9900, 100, 0);

  /* past the end: hole+zero, as long as asked */
  unit_exts_once (dev, 10000, 500, &x);
  ck_assert_uint_eq (x.n, 1);
  unit_assert_ext (&x, 0, 10000, 500, HZ);
  unit_exts_once (dev, 123456, 7, &x);
  unit_assert_ext (&x, 0, 123456, 7, HZ);

  /* straddling the end, looping as callers do */
  unit_exts_all (dev, 9000, 3000, &x);
  ck_assert_uint_eq (x.n, 2);
  unit_assert_ext (&x, 0, 9000, 1000, 0);
  unit_assert_ext (&x, 1, 10000, 2000, HZ);

  /* nothing asked: no call */
  unit_exts_once (dev, 0, 0, &x);
  ck_assert_uint_eq (x.calls, 0);

  /* a callback error stops the walk with -1 */
  unit_exts_reset (&x);
  x.fail_after = 1;
  ck_assert_int_eq (blkdev_extents (dev, 0, 100, unit_exts_collect, &x), -1);
  unit_exts_free (&x);
  blkdev_close (dev);
}
END_TEST

/* -------------------------------------------------------------- file */

struct file_fixture {
  char *dir;
};
static struct file_fixture ff;

static void
file_setup (void)
{
  ff.dir = unit_tmpdir_new ();
}

static void
file_teardown (void)
{
  unit_tmpdir_remove (ff.dir);
  free (ff.dir);
  ff.dir = NULL;
}

/* A 4 MiB sparse file with 64 KiB of data at 1 MiB and at 3 MiB+64 KiB. */
static uint8_t *
make_sparse (const char *path)
{
  uint8_t *want = calloc (1, 4 * MiB);
  int fd = open (path, O_RDWR | O_CREAT | O_TRUNC, 0644);

  ck_assert (want && fd >= 0);
  ck_assert (ftruncate (fd, 4 * MiB) == 0);
  unit_fill_random (want + 1 * MiB, 64 * KiB, 4);
  unit_fill_random (want + 3 * MiB + 64 * KiB, 64 * KiB, 5);
  ck_assert (pwrite (fd, want + MiB, 64 * KiB, MiB) == 64 * KiB);
  ck_assert (pwrite (fd, want + 3 * MiB + 64 * KiB, 64 * KiB,
                     3 * MiB + 64 * KiB) == 64 * KiB);
  ck_assert (fsync (fd) == 0);
  close (fd);
  return want;
}

START_TEST (test_file_read_extents)
{
  const char *path = unit_path (ff.dir, "sparse.img");
  uint8_t *want = make_sparse (path), *buf = malloc (4 * MiB + 100);
  struct blkdev *dev;
  struct unit_exts x = { 0 };
  size_t k;

  dev = blkdev_file_open (path, true);
  ck_assert_ptr_nonnull (dev);
  ck_assert_uint_eq (dev->size, 4 * MiB);
  ck_assert (dev->readonly);
  ck_assert_str_eq (dev->name, path);
  ck_assert_int_ge (blkdev_file_fd (dev), 0);

  memset (buf, 0xaa, 4 * MiB + 100);
  ck_assert_int_eq (blkdev_pread (dev, buf, 4 * MiB + 100, 0), 0);
  unit_assert_mem_eq (buf, want, 4 * MiB, "sparse file content");
  unit_assert_zero (buf + 4 * MiB, 100, "past the end");

  /* A file system that does not report holes (SEEK_DATA finds data at
   * 0) makes everything data: nothing more to check then.
   */
  if (lseek (blkdev_file_fd (dev), 0, SEEK_DATA) == 0) {
    unit_exts_all (dev, 0, 4 * MiB, &x);
    ck_assert_uint_eq (x.n, 1);
    unit_assert_ext (&x, 0, 0, 4 * MiB, 0);
    fprintf (stderr, "%s: no holes reported by this file system\n", path);
    goto out;
  }

  unit_exts_all (dev, 0, 4 * MiB, &x);
  ck_assert_msg (x.n == 5, "%zu extents", x.n);
  unit_assert_ext (&x, 0, 0, MiB, HZ);
  unit_assert_ext (&x, 1, MiB, 64 * KiB, 0);
  unit_assert_ext (&x, 2, MiB + 64 * KiB, 2 * MiB, HZ);
  unit_assert_ext (&x, 3, 3 * MiB + 64 * KiB, 64 * KiB, 0);
  unit_assert_ext (&x, 4, 3 * MiB + 128 * KiB, 4 * MiB - 3 * MiB - 128 * KiB, HZ);
  /* what is reported as zero reads as zero */
  for (k = 0; k < x.n; k++)
    if (x.e[k].flags & BLKDEV_EXTENT_ZERO)
      unit_assert_zero (buf + x.e[k].off, x.e[k].len, "a zero extent");

  /* starting inside data and inside a hole */
  unit_exts_once (dev, MiB + 4 * KiB, 8 * KiB, &x);
  ck_assert_uint_eq (x.n, 1);
  unit_assert_ext (&x, 0, MiB + 4 * KiB, 8 * KiB, 0);
  unit_exts_once (dev, 512, 1000, &x);
  ck_assert_uint_eq (x.n, 1);
  unit_assert_ext (&x, 0, 512, 1000, HZ);
  unit_exts_all (dev, MiB - 4 * KiB, 72 * KiB, &x);
  ck_assert_uint_eq (x.n, 3);
  unit_assert_ext (&x, 0, MiB - 4 * KiB, 4 * KiB, HZ);
  unit_assert_ext (&x, 1, MiB, 64 * KiB, 0);
  unit_assert_ext (&x, 2, MiB + 64 * KiB, 4 * KiB, HZ);

  /* past the end and straddling it */
  unit_exts_once (dev, 4 * MiB, 1000, &x);
  ck_assert_uint_eq (x.n, 1);
  unit_assert_ext (&x, 0, 4 * MiB, 1000, HZ);
  unit_exts_once (dev, 3 * MiB + 64 * KiB, MiB, &x);  /* one call: clipped */
  ck_assert_uint_eq (x.e[x.n - 1].off + x.e[x.n - 1].len, 4 * MiB);
  unit_exts_all (dev, 4 * MiB - 4 * KiB, 8 * KiB, &x);
  ck_assert_uint_eq (x.n, 1);             /* merged: hole, then past end */
  unit_assert_ext (&x, 0, 4 * MiB - 4 * KiB, 8 * KiB, HZ);

 out:
  unit_exts_free (&x);
  blkdev_close (dev);
  free (want);
  free (buf);
}
END_TEST

/* Data up to an end that is not block aligned. */
START_TEST (test_file_data_at_end)
{
  const char *path = unit_path (ff.dir, "short.img");
  uint8_t data[10000];
  struct blkdev *dev;
  struct unit_exts x = { 0 };

  unit_fill_random (data, sizeof data, 6);
  unit_write_file (path, data, sizeof data);
  dev = blkdev_file_open (path, true);
  ck_assert_uint_eq (dev->size, 10000);
  unit_exts_all (dev, 0, 20000, &x);
  ck_assert_uint_eq (x.n, 2);
  unit_assert_ext (&x, 0, 0, 10000, 0);
  unit_assert_ext (&x, 1, 10000, 10000, HZ);
  unit_exts_free (&x);
  blkdev_close (dev);
}
END_TEST

START_TEST (test_file_write)
{
  const char *path = unit_path (ff.dir, "rw.img");
  uint8_t data[8192], buf[8192 + 512];
  struct blkdev *dev;

  unit_fill_random (data, sizeof data, 7);
  unit_write_file (path, data, sizeof data);

  /* read-only: refused with EROFS, file unchanged */
  dev = blkdev_file_open (path, true);
  unit_log_clear ();
  ck_assert_int_eq (blkdev_pwrite (dev, buf, 512, 0, 0), -1);
  ck_assert_int_eq (errno, EROFS);
  ck_assert (unit_log_has (QC_LOG_ERROR, path));
  blkdev_close (dev);

  /* read-write: in place and extending the file */
  dev = blkdev_file_open (path, false);
  ck_assert (!dev->readonly);
  memset (buf, 0x77, 512);
  ck_assert_int_eq (blkdev_pwrite (dev, buf, 512, 1024, 0), 0);
  memcpy (data + 1024, buf, 512);
  ck_assert_int_eq (blkdev_pwrite (dev, buf, 512, 8192, 0), 0);
  ck_assert_uint_eq (dev->size, 8192 + 512);
  ck_assert_int_eq (blkdev_flush (dev), 0);
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  unit_assert_mem_eq (buf, data, sizeof data, "after writes");
  blkdev_close (dev);

  {
    size_t len;
    uint8_t *f = unit_read_file (path, &len);
    ck_assert_uint_eq (len, 8192 + 512);
    unit_assert_mem_eq (f, data, sizeof data, "file after writes");
    free (f);
  }
}
END_TEST

/* A file that shrinks while open reads as zeros past its new end. */
START_TEST (test_file_shrunk)
{
  const char *path = unit_path (ff.dir, "shrink.img");
  uint8_t data[8192], buf[8192];
  struct blkdev *dev;

  unit_fill_random (data, sizeof data, 8);
  unit_write_file (path, data, sizeof data);
  dev = blkdev_file_open (path, true);
  ck_assert (truncate (path, 4096) == 0);
  memset (buf, 0xaa, sizeof buf);
  ck_assert_int_eq (blkdev_pread (dev, buf, sizeof buf, 0), 0);
  unit_assert_mem_eq (buf, data, 4096, "the part still there");
  unit_assert_zero (buf + 4096, sizeof buf - 4096, "past the new end");
  blkdev_close (dev);
}
END_TEST

START_TEST (test_file_open_errors)
{
  const char *missing = unit_path (ff.dir, "missing.img");

  unit_log_clear ();
  errno = 0;
  ck_assert_ptr_null (blkdev_file_open (missing, true));
  ck_assert_int_eq (errno, ENOENT);
  ck_assert (unit_log_has (QC_LOG_ERROR, missing));

  errno = 0;
  ck_assert_ptr_null (blkdev_file_open (ff.dir, true));
  ck_assert_int_eq (errno, EISDIR);
  ck_assert (unit_log_has (QC_LOG_ERROR, ff.dir));

  /* a FIFO (which a hostile image could name) is refused, not waited on */
  {
    const char *fifo = unit_path (ff.dir, "fifo");
    ck_assert (mkfifo (fifo, 0600) == 0);
    unit_log_clear ();
    errno = 0;
    ck_assert_ptr_null (blkdev_file_open (fifo, true));
    ck_assert_int_eq (errno, EINVAL);
    ck_assert (unit_log_has (QC_LOG_ERROR, fifo));
  }
}
END_TEST

Suite *
blkdev_suite (void)
{
  Suite *s = suite_create ("blkdev");
  TCase *tc;

  tc = tcase_create ("memory");
  tcase_add_test (tc, test_memory_rw);
  tcase_add_test (tc, test_memory_zero_and_empty);
  tcase_add_test (tc, test_read_past_end);
  tcase_add_test (tc, test_readonly);
  tcase_add_test (tc, test_memory_zero_trim);
  tcase_add_test (tc, test_memory_extents);
  suite_add_tcase (s, tc);

  tc = tcase_create ("file");
  tcase_add_checked_fixture (tc, file_setup, file_teardown);
  tcase_add_test (tc, test_file_read_extents);
  tcase_add_test (tc, test_file_data_at_end);
  tcase_add_test (tc, test_file_write);
  tcase_add_test (tc, test_file_shrunk);
  tcase_add_test (tc, test_file_open_errors);
  suite_add_tcase (s, tc);
  return s;
}
