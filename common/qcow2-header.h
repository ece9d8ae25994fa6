/* SPDX-License-Identifier: BSD-3-Clause */
/* The qcow2 header and its extensions: parsing with full validation. */
#ifndef QC_QCOW2_HEADER_H
#define QC_QCOW2_HEADER_H

#include <stdbool.h>
#include <stdint.h>

#include "blkdev.h"

#define QCOW2_MAGIC 0x514649fbU          /* "QFI\xfb" */

/* Header extension types (read in qcow2-header.c, written in
 * qcow2-create.c).
 */
#define QCOW2_EXT_END           0x00000000U
#define QCOW2_EXT_BACKING_FMT   0xe2792acaU
#define QCOW2_EXT_FEATURE_NAMES 0x6803f857U
#define QCOW2_EXT_BITMAPS       0x23852875U
#define QCOW2_EXT_CRYPTO        0x0537be77U
#define QCOW2_EXT_DATA_FILE     0x44415441U

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY       (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN       0x1fULL
/* Compatible and autoclear bits. */
/* Header fields (byte offsets in the header).  Some are updated in
 * place, together with the next: L1_SIZE with L1_TABLE_OFFSET,
 * REFCOUNT_TABLE (the offset) with REFCOUNT_TABLE_CLUSTERS, NB_SNAPSHOTS
 * with SNAPSHOTS_OFFSET.
 */
#define QCOW2_HDR_MAGIC                   0
#define QCOW2_HDR_VERSION                 4
#define QCOW2_HDR_BACKING_FILE_OFFSET     8
#define QCOW2_HDR_BACKING_FILE_SIZE      16
#define QCOW2_HDR_CLUSTER_BITS           20
#define QCOW2_HDR_SIZE                   24
#define QCOW2_HDR_CRYPT_METHOD           32
#define QCOW2_HDR_L1_SIZE                36
#define QCOW2_HDR_L1_TABLE_OFFSET        40
#define QCOW2_HDR_REFCOUNT_TABLE         48
#define QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS 56
#define QCOW2_HDR_NB_SNAPSHOTS           60
#define QCOW2_HDR_SNAPSHOTS_OFFSET       64
#define QCOW2_HDR_V2_LENGTH              72   /* version 2 ends here */
#define QCOW2_HDR_INCOMPAT               72   /* version 3 only */
#define QCOW2_HDR_COMPAT                 80
#define QCOW2_HDR_AUTOCLEAR              88
#define QCOW2_HDR_REFCOUNT_ORDER         96
#define QCOW2_HDR_HEADER_LENGTH         100

#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
#define QCOW2_AUTOCLEAR_BITMAPS     (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW    (1ULL << 1)

#define QCOW2_COMPRESS_ZLIB 0
#define QCOW2_COMPRESS_ZSTD 1

/* Limits (qemu's): L1 table 32 MiB, refcount table 8 MiB. */
#define QCOW2_MAX_L1_BYTES       (32ULL << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8ULL << 20)
#define QCOW2_MAX_SNAPSHOTS      65536
#define QCOW2_MAX_BACKING_NAME   1023

struct qcow2_feature_name {
  uint8_t type;                 /* 0 incompatible, 1 compatible, 2 autoclear */
  uint8_t bit;
  char name[47];
};

struct qcow2_header {
  /* Fields as stored (host byte order). */
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t refcount_order;
  uint32_t header_length;
  uint8_t compression_type;

  /* Derived. */
  uint64_t cluster_size;
  bool extended_l2;
  uint32_t l2_entry_size;       /* 8, or 16 with extended L2 */
  uint32_t l2_bits;             /* log2 of entries per L2 table */
  uint64_t subcluster_size;     /* cluster_size, or /32 with extended L2 */

  /* Extensions (NULL / 0 when absent). */
  char *backing_file;
  char *backing_format;
  char *data_file;
  bool has_crypto_ext;
  uint64_t crypto_offset, crypto_length;
  bool has_bitmaps_ext;
  uint32_t nb_bitmaps;
  uint64_t bitmap_directory_size, bitmap_directory_offset;
  struct qcow2_feature_name *features;
  uint32_t nr_features;
};

/* Read and validate the header of the qcow2 image in dev.  Returns 0, or
 * -1 after qc_error naming the field and what is wrong (errno EINVAL for
 * a bad image, ENOTSUP for a feature not supported).
 */
extern int qcow2_header_read (struct blkdev *dev, struct qcow2_header *h);

/* Validate a header from a buffer holding cluster 0 (len bytes, zero
 * padded by the caller up to the cluster size when the file is shorter).
 * file_size bounds the tables.  Used by qcow2_header_read and tests.
 */
extern int qcow2_header_parse (const uint8_t *buf, uint64_t len,
                               uint64_t file_size, const char *name,
                               struct qcow2_header *h);

extern void qcow2_header_free (struct qcow2_header *h);

/* The name of a feature bit from the image's table, or NULL. */
extern const char *qcow2_feature_name (const struct qcow2_header *h,
                                       uint8_t type, uint8_t bit);

/* True if buf (at least 4 bytes) starts with the qcow2 magic. */
extern bool qcow2_has_magic (const uint8_t *buf);

#endif /* QC_QCOW2_HEADER_H */
