/* SPDX-License-Identifier: BSD-3-Clause */
/* qcow2 header parsing and validation.  Every field is checked against
 * the rules of the specification before anything trusts it, and every
 * table the header names must fit in the file, so that what the header
 * merely claims never decides how much memory or time we spend.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-header.h"

static const char *const incompat_names[] = {
  "dirty", "corrupt", "external data file", "compression type",
  "extended L2 entries",
};

#define BAD(...) do { qc_error (__VA_ARGS__); errno = EINVAL; return -1; } \
  while (0)

bool
qcow2_has_magic (const uint8_t *buf)
{
  return get_be32 (buf) == QCOW2_MAGIC;
}

const char *
qcow2_feature_name (const struct qcow2_header *h, uint8_t type, uint8_t bit)
{
  uint32_t i;

  for (i = 0; i < h->nr_features; i++)
    if (h->features[i].type == type && h->features[i].bit == bit)
      return h->features[i].name;
  return NULL;
}

void
qcow2_header_free (struct qcow2_header *h)
{
  free (h->backing_file);
  free (h->backing_format);
  free (h->data_file);
  free (h->features);
  memset (h, 0, sizeof *h);
}

/* Copy an on-disk string (not NUL terminated) of len bytes.  Names with
 * embedded NULs are refused: they would name a different file than the
 * one qemu would open.
 */
static char *
copy_name (const uint8_t *p, uint32_t len, const char *name,
           const char *what)
{
  char *s;

  if (memchr (p, 0, len)) {
    qc_error ("%s: %s contains a NUL byte", name, what);
    errno = EINVAL;
    return NULL;
  }
  s = malloc (len + 1);
  if (!s) {
    qc_error ("%s: %m", name);
    return NULL;
  }
  memcpy (s, p, len);
  s[len] = '\0';
  return s;
}

static int
parse_extensions (const uint8_t *buf, uint64_t cs, const char *name,
                  struct qcow2_header *h)
{
  uint64_t off = h->version == 2 ? 72 : h->header_length;

  /* A header that fills cluster 0 leaves no room for extensions. */
  if (off + 8 > cs)
    return 0;
  /* Each step moves on by at least 8 bytes inside cluster 0, so the loop
   * is bounded by the cluster size.
   */
  while (off + 8 <= cs) {
    uint32_t type = get_be32 (buf + off);
    uint32_t len = get_be32 (buf + off + 4);
    const uint8_t *data = buf + off + 8;

    if (type == QCOW2_EXT_END)
      return 0;
    if (len > cs - off - 8)
      BAD ("%s: header extension 0x%08" PRIx32 " at offset %" PRIu64
           " has length %" PRIu32 ", running past the end of cluster 0",
           name, type, off, len);

    switch (type) {
    case QCOW2_EXT_BACKING_FMT:
      if (h->backing_format)
        BAD ("%s: more than one backing format extension", name);
      if (len == 0 || len > 16)
        BAD ("%s: backing format extension has bad length %" PRIu32,
             name, len);
      h->backing_format = copy_name (data, len, name, "backing format");
      if (!h->backing_format)
        return -1;
      break;

    case QCOW2_EXT_FEATURE_NAMES: {
      uint32_t i, n = len / 48;
      if (h->features)
        BAD ("%s: more than one feature name table", name);
      h->features = calloc (n ? n : 1, sizeof *h->features);
      if (!h->features) {
        qc_error ("%s: %m", name);
        return -1;
      }
      for (i = 0; i < n; i++) {
        const uint8_t *e = data + i * 48;
        h->features[i].type = e[0];
        h->features[i].bit = e[1];
        memcpy (h->features[i].name, e + 2, 46);
        h->features[i].name[46] = '\0';
      }
      h->nr_features = n;
      break;
    }

    case QCOW2_EXT_BITMAPS:
      if (len < 24)
        BAD ("%s: bitmaps extension has bad length %" PRIu32, name, len);
      h->has_bitmaps_ext = true;
      h->nb_bitmaps = get_be32 (data);
      h->bitmap_directory_size = get_be64 (data + 8);
      h->bitmap_directory_offset = get_be64 (data + 16);
      break;

    case QCOW2_EXT_CRYPTO:
      if (len != 16)
        BAD ("%s: encryption header extension has bad length %" PRIu32,
             name, len);
      h->has_crypto_ext = true;
      h->crypto_offset = get_be64 (data);
      h->crypto_length = get_be64 (data + 8);
      break;

    case QCOW2_EXT_DATA_FILE:
      if (h->data_file)
        BAD ("%s: more than one external data file extension", name);
      if (len == 0 || len > 4096)
        BAD ("%s: external data file name has bad length %" PRIu32,
             name, len);
      h->data_file = copy_name (data, len, name, "external data file name");
      if (!h->data_file)
        return -1;
      break;

    default:                    /* unknown: ignored, kept on rewrite */
      qc_debug ("%s: ignoring unknown header extension 0x%08" PRIx32,
                name, type);
    }
    off += 8 + ((len + 7ULL) & ~7ULL);
  }
  BAD ("%s: header extensions are not terminated inside cluster 0", name);
}

/* The name of an incompatible bit: from the image's own feature table
 * if it has one, else ours, else "unknown".
 */
static const char *
incompat_bit_name (const struct qcow2_header *h, unsigned bit)
{
  const char *n = qcow2_feature_name (h, 0, bit);

  if (n && *n)
    return n;
  if (bit < sizeof incompat_names / sizeof incompat_names[0])
    return incompat_names[bit];
  return "unknown feature";
}

static int
check_table (const char *name, const char *what, uint64_t offset,
             uint64_t bytes, uint64_t cs, uint64_t file_size)
{
  uint64_t limit = (file_size + cs - 1) & ~(cs - 1);

  if (offset & (cs - 1))
    BAD ("%s: %s offset 0x%" PRIx64 " is not aligned to the cluster size",
         name, what, offset);
  if (offset == 0 && bytes > 0)
    BAD ("%s: %s offset is 0 (it would overlap the header)", name, what);
  if (offset > limit || bytes > limit - offset)
    BAD ("%s: %s (offset 0x%" PRIx64 ", %" PRIu64 " bytes) lies beyond "
         "the end of the file (%" PRIu64 " bytes)",
         name, what, offset, bytes, file_size);
  return 0;
}

int
qcow2_header_parse (const uint8_t *buf, uint64_t len, uint64_t file_size,
                    const char *name, struct qcow2_header *h)
{
  uint64_t cs, per_l2, needed;
  unsigned bit;

  memset (h, 0, sizeof *h);
  if (len < QCOW2_HDR_V2_LENGTH)
    BAD ("%s: file too short for a qcow2 header", name);
  if (get_be32 (buf) != QCOW2_MAGIC)
    BAD ("%s: not a qcow2 image (no QFI\\xfb magic)", name);
  h->version = get_be32 (buf + QCOW2_HDR_VERSION);
  if (h->version != 2 && h->version != 3)
    BAD ("%s: qcow2 version %" PRIu32 " is not supported (only 2 and 3)",
         name, h->version);
  h->backing_file_offset = get_be64 (buf + QCOW2_HDR_BACKING_FILE_OFFSET);
  h->backing_file_size = get_be32 (buf + QCOW2_HDR_BACKING_FILE_SIZE);
  h->cluster_bits = get_be32 (buf + QCOW2_HDR_CLUSTER_BITS);
  h->size = get_be64 (buf + QCOW2_HDR_SIZE);
  h->crypt_method = get_be32 (buf + QCOW2_HDR_CRYPT_METHOD);
  h->l1_size = get_be32 (buf + QCOW2_HDR_L1_SIZE);
  h->l1_table_offset = get_be64 (buf + QCOW2_HDR_L1_TABLE_OFFSET);
  h->refcount_table_offset = get_be64 (buf + QCOW2_HDR_REFCOUNT_TABLE);
  h->refcount_table_clusters =
    get_be32 (buf + QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS);
  h->nb_snapshots = get_be32 (buf + QCOW2_HDR_NB_SNAPSHOTS);
  h->snapshots_offset = get_be64 (buf + QCOW2_HDR_SNAPSHOTS_OFFSET);
  if (h->version == 2) {
    h->refcount_order = 4;
    h->header_length = 72;
  }
  else {
    if (len < 104)
      BAD ("%s: file too short for a version 3 header", name);
    h->incompatible_features = get_be64 (buf + QCOW2_HDR_INCOMPAT);
    h->compatible_features = get_be64 (buf + QCOW2_HDR_COMPAT);
    h->autoclear_features = get_be64 (buf + QCOW2_HDR_AUTOCLEAR);
    h->refcount_order = get_be32 (buf + QCOW2_HDR_REFCOUNT_ORDER);
    h->header_length = get_be32 (buf + QCOW2_HDR_HEADER_LENGTH);
  }

  if (h->cluster_bits < 9 || h->cluster_bits > 21)
    BAD ("%s: cluster_bits %" PRIu32 " out of range (9 to 21)",
         name, h->cluster_bits);
  cs = h->cluster_size = 1ULL << h->cluster_bits;
  if (len < cs)
    BAD ("%s: file too short for cluster 0", name);

  if (h->version == 3) {
    if (h->header_length < 104 || h->header_length % 8 != 0 ||
        h->header_length > cs)
      BAD ("%s: header_length %" PRIu32 " is invalid (must be at least "
           "104, a multiple of 8 and inside cluster 0)",
           name, h->header_length);
    if (h->header_length > 104)
      h->compression_type = buf[104];
  }

  /* Feature names first, so that the errors below can use them. */
  if (parse_extensions (buf, cs, name, h) == -1)
    goto err;

  if (h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN) {
    for (bit = 0; bit < 64; bit++)
      if ((h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN) &
          (1ULL << bit))
        break;
    qc_error ("%s: image uses incompatible feature bit %u (%s), which "
              "this version does not support", name, bit,
              incompat_bit_name (h, bit));
    errno = ENOTSUP;
    goto err;
  }
  h->extended_l2 = (h->incompatible_features & QCOW2_INCOMPAT_EXTL2) != 0;
  if (h->extended_l2 && h->cluster_bits < 14) {
    qc_error ("%s: extended L2 entries need clusters of at least 16 KiB "
              "(cluster_bits %" PRIu32 ")", name, h->cluster_bits);
    errno = EINVAL;
    goto err;
  }
  h->l2_entry_size = h->extended_l2 ? 16 : 8;
  h->l2_bits = h->cluster_bits - (h->extended_l2 ? 4 : 3);
  h->subcluster_size = h->extended_l2 ? cs / 32 : cs;

  if (h->compression_type > QCOW2_COMPRESS_ZSTD) {
    qc_error ("%s: unknown compression type %u", name, h->compression_type);
    errno = ENOTSUP;
    goto err;
  }
  if ((h->compression_type != 0) !=
      ((h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) != 0)) {
    qc_error ("%s: compression type %u does not agree with incompatible "
              "bit 3 (compression type)", name, h->compression_type);
    errno = EINVAL;
    goto err;
  }
  if (h->refcount_order > 6) {
    qc_error ("%s: refcount_order %" PRIu32 " out of range (0 to 6)",
              name, h->refcount_order);
    errno = EINVAL;
    goto err;
  }
  if (h->crypt_method > 2) {
    qc_error ("%s: unknown encryption method %" PRIu32,
              name, h->crypt_method);
    errno = ENOTSUP;
    goto err;
  }
  if (h->has_crypto_ext && h->crypt_method != 2) {
    qc_error ("%s: encryption header extension without LUKS encryption",
              name);
    errno = EINVAL;
    goto err;
  }

  /* Backing file name: inside cluster 0. */
  if (h->backing_file_offset) {
    if (h->backing_file_size == 0 ||
        h->backing_file_size > QCOW2_MAX_BACKING_NAME ||
        h->backing_file_offset > cs ||
        h->backing_file_size > cs - h->backing_file_offset) {
      qc_error ("%s: backing file name (offset %" PRIu64 ", length %"
                PRIu32 ") must lie inside cluster 0 and be 1 to 1023 "
                "bytes", name, h->backing_file_offset,
                h->backing_file_size);
      errno = EINVAL;
      goto err;
    }
    h->backing_file = copy_name (buf + h->backing_file_offset,
                                 h->backing_file_size, name,
                                 "backing file name");
    if (!h->backing_file)
      goto err;
  }

  if ((h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) &&
      !h->data_file) {
    qc_error ("%s: image needs an external data file but its header "
              "does not name one", name);
    errno = EINVAL;
    goto err;
  }
  if (!(h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) &&
      h->data_file) {
    qc_debug ("%s: ignoring data file name without the data file bit",
              name);
    free (h->data_file);
    h->data_file = NULL;
  }

  /* L1 table: large enough for the virtual size, at most 32 MiB, and
   * inside the file.
   */
  per_l2 = cs << h->l2_bits;
  needed = h->size / per_l2 + (h->size % per_l2 != 0);
  if (needed > QCOW2_MAX_L1_BYTES / 8) {
    qc_error ("%s: virtual size %" PRIu64 " is too large (it needs an "
              "L1 table larger than 32 MiB)", name, h->size);
    errno = EINVAL;
    goto err;
  }
  if (h->l1_size < needed) {
    qc_error ("%s: L1 table has %" PRIu32 " entries, too few for the "
              "virtual size %" PRIu64 " (%" PRIu64 " needed)",
              name, h->l1_size, h->size, needed);
    errno = EINVAL;
    goto err;
  }
  if (h->l1_size > QCOW2_MAX_L1_BYTES / 8) {
    qc_error ("%s: L1 table size %" PRIu32 " exceeds 32 MiB",
              name, h->l1_size);
    errno = EINVAL;
    goto err;
  }
  if (h->l1_size > 0 &&
      check_table (name, "L1 table", h->l1_table_offset,
                   (uint64_t) h->l1_size * 8, cs, file_size) == -1)
    goto err;

  /* Refcount table: not used for reading, but an image with a broken
   * one is broken.
   */
  if (h->refcount_table_clusters == 0) {
    qc_error ("%s: refcount table has 0 clusters", name);
    errno = EINVAL;
    goto err;
  }
  if ((uint64_t) h->refcount_table_clusters * cs >
      QCOW2_MAX_REFTABLE_BYTES) {
    qc_error ("%s: refcount table of %" PRIu32 " clusters exceeds 8 MiB",
              name, h->refcount_table_clusters);
    errno = EINVAL;
    goto err;
  }
  if (check_table (name, "refcount table", h->refcount_table_offset,
                   (uint64_t) h->refcount_table_clusters * cs,
                   cs, file_size) == -1)
    goto err;

  if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
    qc_error ("%s: %" PRIu32 " snapshots exceed the limit of %d",
              name, h->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
    errno = EINVAL;
    goto err;
  }
  if (h->nb_snapshots > 0 &&
      check_table (name, "snapshot table", h->snapshots_offset,
                   (uint64_t) h->nb_snapshots * 40, cs, file_size) == -1)
    goto err;

  return 0;

 err:
  qcow2_header_free (h);
  return -1;
}

int
qcow2_header_read (struct blkdev *dev, struct qcow2_header *h)
{
  uint8_t first[512];
  uint8_t *buf;
  uint64_t cs;
  int r;

  memset (h, 0, sizeof *h);
  if (dev->size < 72)
    BAD ("%s: file too short (%" PRIu64 " bytes) to be a qcow2 image",
         dev->name, dev->size);
  if (blkdev_pread (dev, first, sizeof first, 0) == -1)
    return -1;
  if (get_be32 (first) != QCOW2_MAGIC)
    BAD ("%s: not a qcow2 image (no QFI\\xfb magic)", dev->name);
  cs = get_be32 (first + 20);
  if (cs < 9 || cs > 21)
    BAD ("%s: cluster_bits %" PRIu64 " out of range (9 to 21)",
         dev->name, cs);
  cs = 1ULL << cs;

  /* Cluster 0 holds the header, its extensions and the backing name.
   * Past the end of a short file it reads as zeros.
   */
  buf = malloc (cs);
  if (!buf) {
    qc_error ("%s: %m", dev->name);
    return -1;
  }
  r = blkdev_pread (dev, buf, cs, 0);
  if (r == 0)
    r = qcow2_header_parse (buf, cs, dev->size, dev->name, h);
  free (buf);
  return r;
}
