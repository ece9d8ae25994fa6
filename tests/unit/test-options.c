/* SPDX-License-Identifier: BSD-3-Clause */
/* The option table and its parser. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "qc-options.h"
#include "blkdev.h"
#include "qcow2.h"
#include "unit.h"

START_TEST (test_init_free)
{
  struct qc_options o;

  qc_options_init (&o);
  ck_assert_ptr_null (o.file);
  ck_assert_ptr_null (o.format);
  ck_assert_ptr_null (o.backing);
  ck_assert_ptr_null (o.snapshot);
  ck_assert_uint_eq (o.cache_size, 0);
  ck_assert_uint_eq (o.compressed_cache, QC_COMPRESSED_CACHE_DEFAULT);
  ck_assert_uint_eq (qc_compressed_cache_bytes (o.compressed_cache, 65536),
                     8 << 20);
  ck_assert_uint_eq (qc_compressed_cache_bytes (o.compressed_cache,
                                                2 << 20), 32 << 20);
  ck_assert_uint_eq (qc_compressed_cache_bytes (1 << 20, 2 << 20), 1 << 20);
  ck_assert (o.locking);
  ck_assert (!o.readonly);

  ck_assert_int_eq (qc_options_set (&o, "file", "/x/disk.qcow2"), 0);
  ck_assert_int_eq (qc_options_set (&o, "format", "raw"), 0);
  ck_assert_int_eq (qc_options_set (&o, "backing", "none"), 0);
  ck_assert_int_eq (qc_options_set (&o, "backing-format", "qcow2"), 0);
  ck_assert_int_eq (qc_options_set (&o, "snapshot", "s1"), 0);
  ck_assert_int_eq (qc_options_set (&o, "cache-size", "1M"), 0);
  ck_assert_int_eq (qc_options_set (&o, "compressed-cache", "0"), 0);
  ck_assert_int_eq (qc_options_set (&o, "locking", "off"), 0);
  ck_assert_str_eq (o.file, "/x/disk.qcow2");
  ck_assert_str_eq (o.format, "raw");
  ck_assert_str_eq (o.backing, "none");
  ck_assert_str_eq (o.backing_format, "qcow2");
  ck_assert_str_eq (o.snapshot, "s1");
  ck_assert_uint_eq (o.cache_size, 1 << 20);
  ck_assert_uint_eq (o.compressed_cache, 0);
  ck_assert (!o.locking);

  /* set twice: the last one wins (and nothing leaks, see ASan) */
  ck_assert_int_eq (qc_options_set (&o, "snapshot", "s2"), 0);
  ck_assert_str_eq (o.snapshot, "s2");

  qc_options_free (&o);
  ck_assert_ptr_null (o.file);
  ck_assert_ptr_null (o.snapshot);
  ck_assert (o.locking);
}
END_TEST

START_TEST (test_unknown_key)
{
  static const char *const keys[] = {
    "frobnicate", "File", "qcow2-file", "cache_size", "", "format ",
  };
  struct qc_options o;
  size_t i;

  qc_options_init (&o);
  for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    unit_log_clear ();
    errno = 0;
    ck_assert_msg (qc_options_set (&o, keys[i], "x") == -1,
                   "key '%s' accepted", keys[i]);
    ck_assert_int_eq (errno, EINVAL);
    ck_assert_uint_eq (unit_log_count (QC_LOG_ERROR), 1);
    ck_assert_msg (strstr (qc_last_error (), "unknown parameter"),
                   "message: %s", qc_last_error ());
    if (*keys[i])
      ck_assert_ptr_nonnull (strstr (qc_last_error (), keys[i]));
  }
  qc_options_free (&o);
}
END_TEST

static const struct { const char *s; uint64_t v; } good_sizes[] = {
  { "0", 0 }, { "512", 512 }, { "1k", 1024 }, { "1K", 1024 },
  { "64M", 64ULL << 20 }, { "64m", 64ULL << 20 }, { "64MB", 64ULL << 20 },
  { "2G", 2ULL << 30 }, { "1T", 1ULL << 40 },
  { "16777215T", 16777215ULL << 40 },
  { "18446744073709551615", UINT64_MAX },
  /* The rest of nbdkit_parse_size's suffixes (and qemu-img's). */
  { "3s", 1536 }, { "3S", 1536 }, { "1P", 1ULL << 50 }, { "2p", 2ULL << 50 },
  { "15E", 15ULL << 60 }, { "100b", 100 }, { "16383P", 16383ULL << 50 },
};

START_TEST (test_good_size)
{
  struct qc_options o;

  qc_options_init (&o);
  o.cache_size = 12345;
  ck_assert_msg (qc_options_set (&o, "cache-size", good_sizes[_i].s) == 0,
                 "cache-size=%s refused: %s", good_sizes[_i].s,
                 qc_last_error ());
  ck_assert_uint_eq (o.cache_size, good_sizes[_i].v);
  qc_options_free (&o);
}
END_TEST

static const char *const bad_sizes[] = {
  "", "abc", "M", "-1", "+5", " 1", "1 ", "1x", "1kk", "1.5M", "0x10",
  "1KiB", "1MBB", "18446744073709551616", "16777216T", "17179869184G",
  "99999999999999999999999", "16E", "16384P", "1sB", "1e3", "s",
};

START_TEST (test_bad_size)
{
  struct qc_options o;

  qc_options_init (&o);
  o.cache_size = 12345;
  unit_log_clear ();
  errno = 0;
  ck_assert_msg (qc_options_set (&o, "cache-size", bad_sizes[_i]) == -1,
                 "cache-size='%s' accepted as %llu", bad_sizes[_i],
                 (unsigned long long) o.cache_size);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_uint_eq (o.cache_size, 12345);      /* unchanged */
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "cache-size"));
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "size"));
  ck_assert_uint_eq (unit_log_count (QC_LOG_ERROR), 1);
  qc_options_free (&o);
}
END_TEST

START_TEST (test_bools)
{
  static const char *const on[] = { "on", "ON", "true", "yes", "1", "True" };
  static const char *const off[] = { "off", "Off", "false", "no", "0" };
  static const char *const bad[] = { "", "maybe", "2", "onn", "of", " on" };
  struct qc_options o;
  size_t i;

  qc_options_init (&o);
  for (i = 0; i < sizeof on / sizeof on[0]; i++) {
    o.locking = false;
    ck_assert_int_eq (qc_options_set (&o, "locking", on[i]), 0);
    ck_assert_msg (o.locking, "locking=%s", on[i]);
  }
  for (i = 0; i < sizeof off / sizeof off[0]; i++) {
    o.locking = true;
    ck_assert_int_eq (qc_options_set (&o, "locking", off[i]), 0);
    ck_assert_msg (!o.locking, "locking=%s", off[i]);
  }
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    o.locking = true;
    errno = 0;
    ck_assert_msg (qc_options_set (&o, "locking", bad[i]) == -1,
                   "locking='%s' accepted", bad[i]);
    ck_assert_int_eq (errno, EINVAL);
    ck_assert (o.locking);
    ck_assert_ptr_nonnull (strstr (qc_last_error (), "locking"));
  }
  qc_options_free (&o);
}
END_TEST

START_TEST (test_bad_values)
{
  struct qc_options o;

  qc_options_init (&o);
  ck_assert_int_eq (qc_options_set (&o, "format", "vmdk"), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "vmdk"));
  ck_assert_ptr_null (o.format);
  ck_assert_int_eq (qc_options_set (&o, "backing-format", "vpc"), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_int_eq (qc_options_set (&o, "backing", ""), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "backing"));
  ck_assert_ptr_null (o.backing);
  qc_options_free (&o);
}
END_TEST

START_TEST (test_check)
{
  struct qc_options o;

  qc_options_init (&o);
  ck_assert_int_eq (qc_options_check (&o), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "file"));
  ck_assert_int_eq (qc_options_set (&o, "file", "a.qcow2"), 0);
  ck_assert_int_eq (qc_options_check (&o), 0);

  ck_assert_int_eq (qc_options_set (&o, "backing-format", "raw"), 0);
  ck_assert_int_eq (qc_options_check (&o), -1);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "backing-format"));
  ck_assert_int_eq (qc_options_set (&o, "backing", "b.raw"), 0);
  ck_assert_int_eq (qc_options_check (&o), 0);

  ck_assert_int_eq (qc_options_set (&o, "format", "raw"), 0);
  ck_assert_int_eq (qc_options_check (&o), -1);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "format=qcow2"));
  qc_options_free (&o);

  qc_options_init (&o);
  ck_assert_int_eq (qc_options_set (&o, "file", "a.raw"), 0);
  ck_assert_int_eq (qc_options_set (&o, "format", "raw"), 0);
  ck_assert_int_eq (qc_options_check (&o), 0);
  ck_assert_int_eq (qc_options_set (&o, "snapshot", "s1"), 0);
  ck_assert_int_eq (qc_options_check (&o), -1);
  qc_options_free (&o);
}
END_TEST

/* Nothing given is silently ignored (issue 14): creation options need
 * create=, compress= is refused with snapshot=, and messages name the
 * option with the front-end's prefix.
 */
START_TEST (test_not_ignored)
{
  static const char *const creation[][2] = {
    { "size", "1G" }, { "cluster-size", "4k" }, { "compat", "0.10" },
    { "refcount-bits", "8" }, { "lazy-refcounts", "on" },
    { "extended-l2", "on" }, { "compression-type", "zstd" },
    { "preallocation", "metadata" }, { "backing-file", "b.raw" },
    { "data-file", "d.raw" }, { "data-file-raw", "on" },
    { "encrypt", "luks" }, { "encrypt-iter-time", "10" },
  };
  struct qc_options o;
  size_t i;

  for (i = 0; i < sizeof creation / sizeof creation[0]; i++) {
    qc_options_init (&o);
    ck_assert_int_eq (qc_options_set (&o, "file", "a.qcow2"), 0);
    ck_assert (!qc_options_given (&o, creation[i][0]));
    ck_assert_int_eq (qc_options_set (&o, creation[i][0], creation[i][1]),
                      0);
    ck_assert (qc_options_given (&o, creation[i][0]));
    ck_assert_int_eq (qc_options_check (&o), -1);
    ck_assert_int_eq (errno, EINVAL);
    ck_assert_msg (strstr (qc_last_error (), creation[i][0]) &&
                   strstr (qc_last_error (), "create="),
                   "%s: %s", creation[i][0], qc_last_error ());
    qc_options_free (&o);
  }

  /* With the filter's prefix. */
  qc_options_init (&o);
  o.prefix = "qcow2-";
  ck_assert_int_eq (qc_options_set (&o, "file", "container"), 0);
  ck_assert_int_eq (qc_options_set (&o, "size", "1G"), 0);
  ck_assert_int_eq (qc_options_check (&o), -1);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "qcow2-size="));
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "qcow2-create="));
  ck_assert_int_eq (qc_options_set (&o, "create", "true"), 0);
  ck_assert_int_eq (qc_options_check (&o), 0);
  ck_assert_int_eq (qc_options_set (&o, "compress-level", "3"), 0);
  ck_assert_int_eq (qc_options_check (&o), -1);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "qcow2-compress-level="));
  qc_options_free (&o);

  qc_options_init (&o);
  ck_assert_int_eq (qc_options_set (&o, "file", "a.qcow2"), 0);
  ck_assert_int_eq (qc_options_set (&o, "compress", "zlib"), 0);
  ck_assert_int_eq (qc_options_check (&o), 0);
  ck_assert_int_eq (qc_options_set (&o, "snapshot", "s1"), 0);
  ck_assert_int_eq (qc_options_check (&o), -1);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "compress="));
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "snapshot="));
  qc_options_free (&o);

  /* A refused value is not recorded as given. */
  qc_options_init (&o);
  ck_assert_int_eq (qc_options_set (&o, "size", "huge"), -1);
  ck_assert (!qc_options_given (&o, "size"));
  qc_options_free (&o);
}
END_TEST

/* nbdkit -r: every option that would write is refused, named. */
START_TEST (test_readonly)
{
  static const char *const writers[][3] = {
    { "create", "true", "create=" }, { "create", "force", "create=" },
    { "snapshot-create", "x", "snapshot-create=" },
    { "snapshot-apply", "x", "snapshot-apply=" },
    { "snapshot-delete", "x", "snapshot-delete=" },
    { "repair", "leaks", "repair=" }, { "compress", "zstd", "compress=" },
  };
  struct qc_options o;
  size_t i;

  qc_options_init (&o);
  ck_assert_int_eq (qc_options_set (&o, "check", "on"), 0);
  ck_assert_int_eq (qc_options_set (&o, "compress", "off"), 0);
  ck_assert_int_eq (qc_options_check_readonly (&o), 0);
  qc_options_free (&o);
  for (i = 0; i < sizeof writers / sizeof writers[0]; i++) {
    qc_options_init (&o);
    o.prefix = "overlay-";
    ck_assert_int_eq (qc_options_set (&o, writers[i][0], writers[i][1]), 0);
    errno = 0;
    ck_assert_int_eq (qc_options_check_readonly (&o), -1);
    ck_assert_int_eq (errno, EROFS);
    ck_assert_msg (strstr (qc_last_error (), writers[i][2]) &&
                   strstr (qc_last_error (), "overlay-") &&
                   strstr (qc_last_error (), "-r"),
                   "%s: %s", writers[i][0], qc_last_error ());
    qc_options_free (&o);
  }
}
END_TEST

/* A refused creation writes nothing, even into a container. */
START_TEST (test_create_writes_nothing)
{
  static const char *const bad[][2] = {
    { "size", "9000T" }, { "passphrase", "secret" },
    { "backing-file", "/nonexistent/base.raw" },
    { "encrypt-iter-time", "10" }, { "cluster-size", "3000" },
  };
  uint8_t *orig = malloc (1 << 20);
  struct blkdev *dev;
  struct qc_options o;
  size_t i;
  uint8_t *buf;

  ck_assert_ptr_nonnull (orig);
  memset (orig, 0x5a, 1 << 20);
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    dev = blkdev_memory_new (orig, 1 << 20, false);
    ck_assert_ptr_nonnull (dev);
    qc_options_init (&o);
    ck_assert_int_eq (qc_options_set (&o, "create", "true"), 0);
    ck_assert_int_eq (qc_options_set (&o, "size", "16M"), 0);
    ck_assert_int_eq (qc_options_set (&o, bad[i][0], bad[i][1]), 0);
    ck_assert_msg (qc_image_create (&o, dev) == -1, "%s=%s accepted",
                   bad[i][0], bad[i][1]);
    ck_assert_ptr_nonnull (strstr (qc_last_error (), bad[i][0]));
    buf = malloc (1 << 20);
    ck_assert_ptr_nonnull (buf);
    ck_assert_int_eq (blkdev_pread (dev, buf, 1 << 20, 0), 0);
    ck_assert_msg (memcmp (buf, orig, 1 << 20) == 0, "%s=%s wrote",
                   bad[i][0], bad[i][1]);
    free (buf);
    blkdev_close (dev);
    qc_options_free (&o);
  }
  /* Too small a container for preallocated metadata. */
  dev = blkdev_memory_new (orig, 1 << 20, false);
  qc_options_init (&o);
  ck_assert_int_eq (qc_options_set (&o, "create", "true"), 0);
  ck_assert_int_eq (qc_options_set (&o, "size", "16M"), 0);
  ck_assert_int_eq (qc_options_set (&o, "preallocation", "metadata"), 0);
  ck_assert_int_eq (qc_image_create (&o, dev), -1);
  ck_assert_int_eq (errno, ENOSPC);
  buf = malloc (1 << 20);
  ck_assert_int_eq (blkdev_pread (dev, buf, 1 << 20, 0), 0);
  ck_assert (memcmp (buf, orig, 1 << 20) == 0);
  free (buf);
  blkdev_close (dev);
  qc_options_free (&o);
  free (orig);
}
END_TEST

/* Every key of the table is one the parser knows, with a value of its
 * type, and the help text names it: the front-ends cannot drift apart.
 */
START_TEST (test_table_consistent)
{
  static const char help[] = QC_OPTIONS_HELP (plugin);
  struct qc_options o;
  size_t i, j;

  ck_assert_uint_ge (qc_option_table_len, 6);
  for (i = 0; i < qc_option_table_len; i++) {
    const struct qc_option *opt = &qc_option_table[i];
    const char *p = opt->syntax;
    char needle[64];
    bool free_form = false;

    ck_assert_ptr_nonnull (opt->help);
    ck_assert_ptr_nonnull (opt->syntax);
    for (j = 0; j < i; j++)
      ck_assert_str_ne (qc_option_table[j].key, opt->key);
    if (opt->type == QC_OPT_BOOL)
      ck_assert_str_eq (opt->syntax, "on|off");

    /* Every alternative of the syntax is accepted, with placeholders
     * (PATH, NAME, SECRET, SIZE, N) replaced by an example.
     */
    while (*p) {
      size_t n = strcspn (p, "|");
      char value[64];

      snprintf (value, sizeof value, "%.*s", (int) n, p);
      if (strcmp (value, "SIZE") == 0)
        strcpy (value, "1M");
      else if (strcmp (value, "N") == 0)
        strcpy (value, "1");
      else if (strcmp (value, "PATH") == 0 || strcmp (value, "NAME") == 0 ||
               strcmp (value, "SECRET") == 0) {
        strcpy (value, "something");
        free_form = true;
      }
      qc_options_init (&o);
      ck_assert_msg (qc_options_set (&o, opt->key, value) == 0,
                     "table key %s=%s refused: %s", opt->key, value,
                     qc_last_error ());
      qc_options_free (&o);
      p += n + (p[n] == '|');
    }
    /* and anything else is not, unless the value is free-form */
    if (!free_form) {
      qc_options_init (&o);
      ck_assert_msg (qc_options_set (&o, opt->key, "bogus") == -1,
                     "%s=bogus accepted", opt->key);
      qc_options_free (&o);
    }

    /* The encoder's own keys are refused by, and not shown in the help
     * of, the other modules.
     */
    if (strcmp (opt->key, "zero-detect") == 0 ||
        strcmp (opt->key, "holes") == 0) {
      qc_options_init (&o);
      o.file = strdup ("x");
      ck_assert_int_eq (qc_options_set (&o, opt->key,
                                        opt->type == QC_OPT_BOOL ? "off"
                                        : "backing"), 0);
      ck_assert_int_eq (qc_options_check (&o), -1);
      ck_assert (strstr (qc_last_error (), "qcow2enc"));
      qc_options_free (&o);
      continue;
    }
    snprintf (needle, sizeof needle, "\n%s=", opt->key);
    ck_assert_msg (strstr (help, needle), "help lacks %s", opt->key);
    /* The filters' --help (built at load): tests/test-option-docs.sh. */
  }
}
END_TEST

Suite *
options_suite (void)
{
  Suite *s = suite_create ("options");
  TCase *tc = tcase_create ("options");

  tcase_add_test (tc, test_init_free);
  tcase_add_test (tc, test_unknown_key);
  tcase_add_loop_test (tc, test_good_size, 0,
                       sizeof good_sizes / sizeof good_sizes[0]);
  tcase_add_loop_test (tc, test_bad_size, 0,
                       sizeof bad_sizes / sizeof bad_sizes[0]);
  tcase_add_test (tc, test_bools);
  tcase_add_test (tc, test_bad_values);
  tcase_add_test (tc, test_check);
  tcase_add_test (tc, test_not_ignored);
  tcase_add_test (tc, test_readonly);
  tcase_add_test (tc, test_create_writes_nothing);
  tcase_add_test (tc, test_table_consistent);
  suite_add_tcase (s, tc);
  return s;
}
