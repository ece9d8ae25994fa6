/* SPDX-License-Identifier: BSD-3-Clause */
/* The engine's option table and its parser: see qc-options.h. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-header.h"

#define TABLE_ROW(key, type, syntax, def, help) { key, type, syntax, def, help },
const struct qc_option qc_option_table[] = {
  QC_OPTIONS (TABLE_ROW, plugin)
  QC_ENC_OPTIONS (TABLE_ROW, plugin)
};
const size_t qc_option_table_len =
  sizeof qc_option_table / sizeof qc_option_table[0];

static const char *module_prefix = "";

void
qc_options_set_prefix (const char *prefix)
{
  module_prefix = prefix ? prefix : "";
}

const char *
qc_options_prefix (void)
{
  return module_prefix;
}

/* qc_options.given has one bit per option. */
#define COUNT_ROW(...) + 1
_Static_assert (0 QC_OPTIONS (COUNT_ROW, plugin)
                QC_ENC_OPTIONS (COUNT_ROW, plugin) <= 64,
                "too many options for given");

void
qc_options_init (struct qc_options *opts)
{
  memset (opts, 0, sizeof *opts);
  opts->locking = true;
  opts->overlap_check = true;
  opts->compress = -1;
  opts->compression_type = -1;
  opts->compressed_cache = QC_COMPRESSED_CACHE_DEFAULT;
  opts->zero_detect = true;
}

/* Secrets do not stay in freed memory. */
static void
wipe_string (char *s)
{
  if (s) {
    explicit_bzero (s, strlen (s));
    free (s);
  }
}

void
qc_options_free (struct qc_options *opts)
{
  free (opts->file);
  free (opts->format);
  free (opts->backing);
  free (opts->backing_format);
  free (opts->snapshot);
  free (opts->backing_file);
  free (opts->data_file);
  wipe_string (opts->passphrase);
  wipe_string (opts->backing_passphrase);
  {
    size_t i;
    for (i = 0; i < opts->nr_ops; i++)
      free (opts->ops[i].name);
    free (opts->ops);
    for (i = 0; i < opts->nr_bitmap_ops; i++)
      free (opts->bitmap_ops[i].name);
    free (opts->bitmap_ops);
  }
  qc_options_init (opts);
}

/* Messages about a value name the option as the user typed it: with
 * the module's prefix, and the value as given.
 */
#define BAD_VALUE(opts, key, value, fmt, ...)                           \
  do {                                                                  \
    qc_error ("%s%s=%s: " fmt, qc_prefix (opts), key, value,            \
              ##__VA_ARGS__);                                           \
    errno = EINVAL;                                                     \
    return -1;                                                          \
  } while (0)

/* on/off and the other spellings nbdkit_parse_bool takes: 1, 0, -1
 * (not a boolean).
 */
static int
bool_value (const char *value)
{
  static const char *const yes[] = { "on", "true", "yes", "1" };
  static const char *const no[] = { "off", "false", "no", "0" };
  size_t i;

  for (i = 0; i < 4; i++) {
    if (strcasecmp (value, yes[i]) == 0) return 1;
    if (strcasecmp (value, no[i]) == 0) return 0;
  }
  return -1;
}

static int
parse_bool (const struct qc_options *opts, const char *key,
            const char *value, bool *ret)
{
  int b = bool_value (value);

  if (b == -1)
    BAD_VALUE (opts, key, value, "expected on or off");
  *ret = b;
  return 0;
}

int
qc_parse_size (const char *value, uint64_t *ret)
{
  char *end;
  unsigned long long v;
  unsigned shift = 0;

  /* The suffixes nbdkit_parse_size and qemu-img take: b (bytes), s
   * (512-byte sectors), k, M, G, T, P, E (powers of 1024), either
   * case, and a B after a power ("64kB") as qemu-img allows.
   */
  errno = 0;
  if (!isdigit ((unsigned char) *value))
    return -1;
  v = strtoull (value, &end, 10);
  if (errno == ERANGE)
    return -2;
  if (errno)
    return -1;
  switch (*end) {
  case '\0': break;
  case 'b': case 'B': end++; break;
  case 's': case 'S': shift = 9; end++; break;
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  case 't': case 'T': shift = 40; end++; break;
  case 'p': case 'P': shift = 50; end++; break;
  case 'e': case 'E': shift = 60; end++; break;
  default: return -1;
  }
  if (shift >= 10 && (*end == 'b' || *end == 'B'))
    end++;
  if (*end != '\0')
    return -1;
  if (shift && v > (UINT64_MAX >> shift))
    return -2;
  *ret = (uint64_t) v << shift;
  return 0;
}

static int
parse_size (const struct qc_options *opts, const char *key,
            const char *value, uint64_t *ret)
{
  switch (qc_parse_size (value, ret)) {
  case 0:
    return 0;
  case -2:
    BAD_VALUE (opts, key, value, "too large (at most 16E - 1 bytes)");
  default:
    BAD_VALUE (opts, key, value, "expected a size: a number of bytes, "
               "optionally with a suffix s (512-byte sectors), k, M, G, "
               "T, P or E");
  }
}

/* A whole number in [min, max] (no size suffixes: a level or a count
 * is not a size).
 */
static int
parse_number (const char *value, uint64_t min, uint64_t max,
              uint64_t *ret)
{
  char *end;
  unsigned long long v;

  errno = 0;
  if (!isdigit ((unsigned char) *value))
    return -1;
  v = strtoull (value, &end, 10);
  if (errno || *end != '\0' || v < min || v > max)
    return -1;
  *ret = v;
  return 0;
}

const char *
qc_human_size (uint64_t v, char *buf, size_t len)
{
  static const char units[] = "kMGTPE";
  int i;

  for (i = 5; i >= 0; i--) {
    unsigned shift = 10 * (i + 1);
    if (v && v % (1ULL << shift) == 0) {
      snprintf (buf, len, "%" PRIu64 "%c", v >> shift, units[i]);
      return buf;
    }
  }
  snprintf (buf, len, "%" PRIu64, v);
  return buf;
}

static int
set_string (char **field, const char *value)
{
  char *s = strdup (value);

  if (!s) {
    qc_error ("%m");
    return -1;
  }
  free (*field);
  *field = s;
  return 0;
}

static bool
is_format (const char *s)
{
  return strcmp (s, "qcow2") == 0 || strcmp (s, "raw") == 0;
}

static int
option_index (const char *key)
{
  size_t i;

  for (i = 0; i < qc_option_table_len; i++)
    if (strcmp (qc_option_table[i].key, key) == 0)
      return i;
  return -1;
}

bool
qc_options_given (const struct qc_options *opts, const char *key)
{
  int i = option_index (key);

  return i >= 0 && (opts->given & (1ULL << i));
}

void
qc_options_set_size (struct qc_options *opts, uint64_t size)
{
  opts->size = size;
  opts->given |= 1ULL << option_index ("size");
}

bool
qc_create_size_known (const struct qc_options *opts)
{
  return opts->size != 0 || qc_options_given (opts, "size");
}

static int set_option (struct qc_options *opts, const char *key,
                       const char *value);

int
qc_options_set (struct qc_options *opts, const char *key, const char *value)
{
  int i = option_index (key);

  if (set_option (opts, key, value) == -1)
    return -1;
  if (i >= 0)
    opts->given |= 1ULL << i;
  return 0;
}

static int
set_option (struct qc_options *opts, const char *key, const char *value)
{
  if (strcmp (key, "file") == 0)
    return set_string (&opts->file, value);
  if (strcmp (key, "format") == 0 || strcmp (key, "backing-format") == 0) {
    if (!is_format (value)) {
      BAD_VALUE (opts, key, value, "unsupported format (use qcow2 or raw)");
    }
    return set_string (strcmp (key, "format") == 0 ?
                       &opts->format : &opts->backing_format, value);
  }
  if (strcmp (key, "backing") == 0) {
    if (*value == '\0') {
      qc_error ("%sbacking=: empty name (use %sbacking=none for no "
                "backing)", qc_prefix (opts), qc_prefix (opts));
      errno = EINVAL;
      return -1;
    }
    return set_string (&opts->backing, value);
  }
  if (strcmp (key, "snapshot") == 0)
    return set_string (&opts->snapshot, value);
  if (strcmp (key, "description") == 0) {
    if (strcmp (value, "short") == 0)
      opts->full_description = false;
    else if (strcmp (value, "full") == 0)
      opts->full_description = true;
    else
      BAD_VALUE (opts, key, value, "expected short or full");
    return 0;
  }
  if (strcmp (key, "cache-size") == 0)
    return parse_size (opts, key, value, &opts->cache_size);
  if (strcmp (key, "compressed-cache") == 0)
    return parse_size (opts, key, value, &opts->compressed_cache);
  if (strcmp (key, "locking") == 0)
    return parse_bool (opts, key, value, &opts->locking);
  if (strcmp (key, "overlap-check") == 0)
    return parse_bool (opts, key, value, &opts->overlap_check);

  if (strcmp (key, "create") == 0) {
    int b = bool_value (value);
    if (strcmp (value, "force") == 0) {
      opts->create = QC_CREATE_FORCE;
      return 0;
    }
    if (b == -1)
      BAD_VALUE (opts, key, value, "expected true, false or force");
    opts->create = b ? QC_CREATE_IF_MISSING : QC_CREATE_NO;
    return 0;
  }
  if (strcmp (key, "size") == 0)
    return parse_size (opts, key, value, &opts->size);
  if (strcmp (key, "cluster-size") == 0)
    return parse_size (opts, key, value, &opts->cluster_size);
  if (strcmp (key, "refcount-bits") == 0) {
    uint64_t v;
    if (parse_number (value, 1, 64, &v) == -1 || (v & (v - 1)))
      BAD_VALUE (opts, key, value, "expected 1, 2, 4, 8, 16, 32 or 64");
    opts->refcount_bits = v;
    return 0;
  }
  if (strcmp (key, "compat") == 0) {
    if (strcmp (value, "0.10") == 0 || strcmp (value, "v2") == 0)
      opts->compat = 2;
    else if (strcmp (value, "1.1") == 0 || strcmp (value, "v3") == 0)
      opts->compat = 3;
    else {
      BAD_VALUE (opts, key, value, "expected 0.10 or 1.1");
    }
    return 0;
  }
  if (strcmp (key, "lazy-refcounts") == 0)
    return parse_bool (opts, key, value, &opts->lazy_refcounts);
  if (strcmp (key, "extended-l2") == 0)
    return parse_bool (opts, key, value, &opts->extended_l2);
  if (strcmp (key, "data-file-raw") == 0)
    return parse_bool (opts, key, value, &opts->data_file_raw);
  if (strcmp (key, "compression-type") == 0) {
    if (strcmp (value, "zlib") == 0)
      opts->compression_type = 0;
    else if (strcmp (value, "zstd") == 0)
      opts->compression_type = 1;
    else {
      BAD_VALUE (opts, key, value, "expected zlib or zstd");
    }
    return 0;
  }
  if (strcmp (key, "preallocation") == 0) {
    if (strcmp (value, "off") == 0)
      opts->preallocate_metadata = false;
    else if (strcmp (value, "metadata") == 0)
      opts->preallocate_metadata = true;
    else {
      BAD_VALUE (opts, key, value, "expected off or metadata (falloc and "
                 "full are not supported)");
    }
    return 0;
  }
  if (strcmp (key, "passphrase") == 0 ||
      strcmp (key, "backing-passphrase") == 0) {
    char **field = key[0] == 'p' ? &opts->passphrase
                                 : &opts->backing_passphrase;
    char *copy = strdup (value);
    if (!copy) {
      qc_error ("%m");
      return -1;
    }
    wipe_string (*field);
    *field = copy;
    return 0;
  }
  if (strcmp (key, "encrypt") == 0) {
    if (strcmp (value, "luks") == 0)
      opts->encrypt = true;
    else if (strcmp (value, "off") == 0 || strcmp (value, "none") == 0)
      opts->encrypt = false;
    else {
      BAD_VALUE (opts, key, value, "expected luks or off (legacy AES "
                 "images can be read and written, not created)");
    }
    return 0;
  }
  if (strcmp (key, "encrypt-iter-time") == 0) {
    uint64_t v;
    if (parse_number (value, 1, 600000, &v) == -1)
      BAD_VALUE (opts, key, value, "expected 1 to 600000 (milliseconds)");
    opts->encrypt_iter_time = v;
    return 0;
  }
  if (strcmp (key, "snapshot-create") == 0 ||
      strcmp (key, "snapshot-apply") == 0 ||
      strcmp (key, "snapshot-delete") == 0) {
    struct qc_maint_op *ops;
    if (*value == '\0') {
      BAD_VALUE (opts, key, value, "empty snapshot name");
    }
    ops = realloc (opts->ops, (opts->nr_ops + 1) * sizeof *ops);
    if (!ops) {
      qc_error ("%m");
      return -1;
    }
    opts->ops = ops;
    ops[opts->nr_ops].op = key[9] == 'c' ? QC_SNAPSHOT_CREATE :
      key[9] == 'a' ? QC_SNAPSHOT_APPLY : QC_SNAPSHOT_DELETE;
    ops[opts->nr_ops].name = strdup (value);
    if (!ops[opts->nr_ops].name) {
      qc_error ("%m");
      return -1;
    }
    opts->nr_ops++;
    return 0;
  }
  if (strncmp (key, "bitmap-", 7) == 0)
    return qc_bitmap_option (opts, key, value, qc_prefix (opts));
  if (strcmp (key, "check") == 0)
    return parse_bool (opts, key, value, &opts->check);
  if (strcmp (key, "referenced-files") == 0) {
    if (strcmp (value, "any") == 0)
      opts->follow = QC_FOLLOW_ANY;
    else if (strcmp (value, "same-dir") == 0)
      opts->follow = QC_FOLLOW_SAME_DIR;
    else if (strcmp (value, "none") == 0)
      opts->follow = QC_FOLLOW_NONE;
    else {
      BAD_VALUE (opts, key, value, "expected any, same-dir or none");
    }
    return 0;
  }
  if (strcmp (key, "repair") == 0) {
    if (strcmp (value, "leaks") == 0)
      opts->repair = QC_REPAIR_LEAKS;
    else if (strcmp (value, "all") == 0)
      opts->repair = QC_REPAIR_ALL;
    else if (strcmp (value, "off") == 0 || strcmp (value, "none") == 0)
      opts->repair = QC_REPAIR_NONE;
    else {
      BAD_VALUE (opts, key, value, "expected leaks or all");
    }
    return 0;
  }
  if (strcmp (key, "compress") == 0) {
    if (strcmp (value, "zlib") == 0)
      opts->compress = 0;
    else if (strcmp (value, "zstd") == 0)
      opts->compress = 1;
    else if (strcmp (value, "off") == 0 || strcmp (value, "none") == 0)
      opts->compress = -1;
    else {
      BAD_VALUE (opts, key, value, "expected zlib, zstd or off");
    }
    return 0;
  }
  if (strcmp (key, "compress-level") == 0) {
    uint64_t v;
    if (strcmp (value, "fast") == 0) {
      opts->compress_level = -1;
      return 0;
    }
    if (parse_number (value, 1, 22, &v) == -1)
      BAD_VALUE (opts, key, value, "expected a level (1 to 9 for zlib, 1 "
                 "to 22 for zstd) or fast");
    opts->compress_level = v;
    return 0;
  }
  if (strcmp (key, "backing-file") == 0)
    return set_string (&opts->backing_file, value);
  if (strcmp (key, "data-file") == 0)
    return set_string (&opts->data_file, value);
  if (strcmp (key, "zero-detect") == 0)
    return parse_bool (opts, key, value, &opts->zero_detect);
  if (strcmp (key, "holes") == 0) {
    if (strcmp (value, "zero") == 0)
      opts->holes_backing = false;
    else if (strcmp (value, "backing") == 0)
      opts->holes_backing = true;
    else
      BAD_VALUE (opts, key, value, "expected zero or backing");
    return 0;
  }

  qc_error ("unknown parameter '%s%s'", qc_prefix (opts), key);
  errno = EINVAL;
  return -1;
}

#define REFUSE(...) \
  do { qc_error (__VA_ARGS__); errno = EINVAL; return -1; } while (0)

/* qemu-img rounds the virtual size up to whole 512-byte sectors (and
 * qemu reads only whole sectors): so do we.
 */
uint64_t
qc_create_size (const struct qc_options *o)
{
  return (o->size + 511) & ~511ULL;
}

int
qc_create_check (const struct qc_options *o)
{
  uint64_t cs = o->cluster_size ? o->cluster_size : 65536;
  int compat = o->compat ? o->compat : 3;
  const char *p = qc_prefix (o);
  char buf[32];

  if (o->encrypt_iter_time && !o->encrypt)
    REFUSE ("%sencrypt-iter-time= does nothing without %sencrypt=luks",
            p, p);
  if (o->compress >= 0 && o->compression_type >= 0 &&
      o->compress != o->compression_type)
    REFUSE ("%scompress=%s needs %scompression-type=%s", p,
            o->compress ? "zstd" : "zlib", p, o->compress ? "zstd" : "zlib");
  if (o->compress >= 0 && o->data_file)
    REFUSE ("%scompress= cannot be used with an external data file", p);
  if (o->format && strcmp (o->format, "raw") == 0)
    REFUSE ("%screate= makes qcow2 images only (not %sformat=raw)", p, p);
  if (o->encrypt) {
    if (!o->passphrase)
      REFUSE ("%sencrypt=luks needs %spassphrase=", p, p);
    if (o->compress >= 0)
      REFUSE ("%scompress= cannot be used with encryption", p);
    if (o->data_file)
      REFUSE ("%sdata-file= cannot be used with encryption", p);
    if (o->preallocate_metadata)
      REFUSE ("%spreallocation=metadata cannot be used with encryption", p);
  }
  if (!qc_create_size_known (o) && o->create == QC_CREATE_FORCE)
    REFUSE ("%screate=force needs %ssize=", p, p);
  if (cs < 512 || cs > (2 << 20) || (cs & (cs - 1)))
    REFUSE ("%scluster-size=%s: must be a power of two between 512 and 2M",
            p, qc_human_size (cs, buf, sizeof buf));
  if (compat == 2) {
    if (o->lazy_refcounts)
      REFUSE ("%slazy-refcounts needs %scompat=1.1", p, p);
    if (o->refcount_bits && o->refcount_bits != 16)
      REFUSE ("%srefcount-bits other than 16 need %scompat=1.1", p, p);
    if (o->compression_type > 0 || o->compress > 0)
      REFUSE ("%scompression-type=zstd needs %scompat=1.1", p, p);
    if (o->data_file)
      REFUSE ("%sdata-file needs %scompat=1.1", p, p);
    if (o->extended_l2)
      REFUSE ("%sextended-l2 needs %scompat=1.1", p, p);
  }
  if (o->extended_l2 && cs < 16384)
    REFUSE ("%sextended-l2 needs a cluster size of at least 16k", p);
  if (o->data_file_raw && !o->data_file)
    REFUSE ("%sdata-file-raw needs %sdata-file=", p, p);
  if (o->data_file_raw && o->backing_file)
    REFUSE ("%sbacking-file= and %sdata-file-raw cannot be used together",
            p, p);
  if (o->preallocate_metadata && o->backing_file && !o->extended_l2)
    REFUSE ("%spreallocation=metadata with a backing file needs "
            "%sextended-l2=on", p, p);
  if (o->backing_file && strlen (o->backing_file) > QCOW2_MAX_BACKING_NAME)
    REFUSE ("%sbacking-file name is longer than 1023 bytes", p);
  if (o->backing_format && strcmp (o->backing_format, "qcow2") != 0 &&
      strcmp (o->backing_format, "raw") != 0)
    REFUSE ("%sbacking-format=%s: only qcow2 and raw", p, o->backing_format);
  return 0;
}

/* Keys that only say how to create an image. */
static const char *const creation_keys[] = {
  "size", "cluster-size", "compat", "refcount-bits", "lazy-refcounts",
  "extended-l2", "compression-type", "preallocation", "backing-file",
  "data-file", "data-file-raw", "encrypt", "encrypt-iter-time",
};

#define KEY_ROW(key, ...) key,
static const char *const enc_keys[] = { QC_ENC_OPTIONS (KEY_ROW, plugin) };

int
qc_options_check (const struct qc_options *opts)
{
  const char *p = qc_prefix (opts);
  size_t i;

  /* The encoder's options: nbdkit-qcow2enc-filter has its own checks. */
  for (i = 0; i < sizeof enc_keys / sizeof enc_keys[0]; i++)
    if (qc_options_given (opts, enc_keys[i])) {
      qc_error ("%s%s= applies only to nbdkit-qcow2enc-filter "
                "(as qcow2enc-%s=)", p, enc_keys[i], enc_keys[i]);
      errno = EINVAL;
      return -1;
    }
  if (opts->bitmap_orphan) {
    qc_error ("%s%s= applies to the %sbitmap-add= just before it, and "
              "there is none", p, opts->bitmap_orphan, p);
    errno = EINVAL;
    return -1;
  }
  /* Nothing given is silently ignored. */
  if (opts->create == QC_CREATE_NO)
    for (i = 0; i < sizeof creation_keys / sizeof creation_keys[0]; i++)
      if (qc_options_given (opts, creation_keys[i])) {
        qc_error ("%s%s= applies only when an image is created: add "
                  "%screate=true (create if missing) or %screate=force",
                  p, creation_keys[i], p, p);
        errno = EINVAL;
        return -1;
      }
  if (opts->compress >= 0 && opts->snapshot) {
    qc_error ("%scompress= has nothing to compress: %ssnapshot= serves a "
              "read-only internal snapshot", p, p);
    errno = EINVAL;
    return -1;
  }
  if (!opts->file) {
    qc_error ("missing the image file name (file=FILE)");
    errno = EINVAL;
    return -1;
  }
  if (opts->backing_format && !opts->backing && !opts->backing_file) {
    qc_error ("%sbacking-format= needs %sbacking= or %sbacking-file=",
              p, p, p);
    errno = EINVAL;
    return -1;
  }
  if (opts->create != QC_CREATE_NO && qc_create_check (opts) == -1)
    return -1;
  if (opts->compress == 0 && opts->compress_level > 9) {
    qc_error ("%scompress-level=%d: zlib levels are 1 to 9", p,
              opts->compress_level);
    errno = EINVAL;
    return -1;
  }
  if (opts->compress_level != 0 && opts->compress < 0) {
    qc_error ("%scompress-level= does nothing without compression: it "
              "needs %scompress=zlib or %scompress=zstd", p, p, p);
    errno = EINVAL;
    return -1;
  }
  if (opts->format && strcmp (opts->format, "raw") == 0 &&
      (opts->nr_ops || opts->nr_bitmap_ops || opts->check || opts->repair ||
       opts->compress >= 0)) {
    qc_error ("snapshot, bitmap, check, repair and compress options apply "
              "only to "
              "%sformat=qcow2", p);
    errno = EINVAL;
    return -1;
  }
  if (opts->format && strcmp (opts->format, "raw") == 0 &&
      (opts->backing || opts->snapshot)) {
    qc_error ("%sbacking= and %ssnapshot= apply only to %sformat=qcow2",
              p, p, p);
    errno = EINVAL;
    return -1;
  }
  return 0;
}

int
qc_options_check_readonly (const struct qc_options *opts)
{
  const char *p = qc_prefix (opts);
  const char *why = NULL;
  char what[64], check[80];

  if (opts->create != QC_CREATE_NO) {
    snprintf (what, sizeof what, "%screate=", p);
    why = "an image cannot be created";
  }
  else if (opts->nr_ops) {
    snprintf (what, sizeof what, "%ssnapshot-%s=", p,
              opts->ops[0].op == QC_SNAPSHOT_CREATE ? "create" :
              opts->ops[0].op == QC_SNAPSHOT_APPLY ? "apply" : "delete");
    why = "snapshots cannot be created, applied or deleted";
  }
  else if (opts->nr_bitmap_ops) {
    snprintf (what, sizeof what, "%s%s=", p,
              qc_bitmap_op_key (opts->bitmap_ops[0].op));
    why = "persistent bitmaps cannot be changed";
  }
  else if (opts->repair != QC_REPAIR_NONE) {
    snprintf (what, sizeof what, "%srepair=", p);
    snprintf (check, sizeof check, "nothing can be repaired (%scheck=on "
              "only reports)", p);
    why = check;
  }
  else if (opts->compress >= 0) {
    snprintf (what, sizeof what, "%scompress=", p);
    why = "nothing is written, so nothing is compressed";
  }
  if (!why)
    return 0;
  qc_error ("%s refused: nbdkit -r (read-only) never modifies the image: "
            "%s (drop -r, or the option)", what, why);
  errno = EROFS;
  return -1;
}
