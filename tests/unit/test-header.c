/* SPDX-License-Identifier: BSD-3-Clause */
/* Header validation: a table of mutations of a valid image (built in
 * memory by qimg.c), each accepted or refused by qcow2_header_parse with
 * a message naming the problem.  Every row is also shown to qemu-img
 * (info), so the table itself is checked against the oracle: where this
 * project is deliberately stricter than qemu the row says so.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qcow2-header.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)

/* What qemu-img info does with the row's image. */
enum qemu_verdict {
  QEMU_SAME = 0,                /* accepts iff we accept */
  QEMU_ACCEPTS,                 /* accepts although we refuse */
  QEMU_REFUSES,                 /* refuses although we accept */
  QEMU_SKIP,                    /* not meaningful (header-only row) */
};

struct row {
  const char *name;
  void (*spec) (struct qimg_spec *s);
  /* Simple patch of the built image: width 1, 4 or 8 (0 = none). */
  unsigned poff, pw;
  uint64_t pval;
  void (*patch) (uint8_t *img, const struct qimg_info *info,
                 uint64_t *file_size);
  int err;                      /* 0: accepted; else the errno */
  const char *msg, *msg2;       /* in the error message */
  void (*check) (const struct qcow2_header *h);
  enum qemu_verdict qemu;
};

/* ----------------------------------------------------- spec changes */

static void v2 (struct qimg_spec *s) { s->version = 2; }
static void cb9 (struct qimg_spec *s) { s->cluster_bits = 9; }
static void cb21 (struct qimg_spec *s) { s->cluster_bits = 21; s->size = 4 * MiB; }
static void extl2_13 (struct qimg_spec *s)
{ s->cluster_bits = 13; s->incompatible |= 1ULL << 4; }
static void extl2_14 (struct qimg_spec *s)
{ s->cluster_bits = 14; s->incompatible |= 1ULL << 4; }
static void extl2_21 (struct qimg_spec *s)
{ s->cluster_bits = 21; s->size = 4 * MiB; s->incompatible |= 1ULL << 4; }
static void hl104 (struct qimg_spec *s)
{ s->header_length = 104; s->backing_format = "raw"; }
static void hl120 (struct qimg_spec *s) { s->header_length = 120; }
static void hl_cluster (struct qimg_spec *s)
{ s->cluster_bits = 12; s->header_length = 4096; s->feature_table = false; }
static void size1g (struct qimg_spec *s) { s->size = 1024 * MiB; }
static void zstd (struct qimg_spec *s) { s->compression_type = 1; }
static void backing (struct qimg_spec *s)
{ s->backing_file = "base.qcow2"; s->backing_format = "qcow2"; }
static void v2_backing (struct qimg_spec *s) { v2 (s); backing (s); }
static void name1023 (struct qimg_spec *s)
{
  static char n[1024];
  memset (n, 'b', 1023);
  s->backing_file = n;
}
static void name1024 (struct qimg_spec *s)
{
  static char n[1025];
  memset (n, 'b', 1024);
  s->backing_file = n;
}
static void datafile_bit (struct qimg_spec *s) { s->incompatible |= 1ULL << 2; }
static void datafile (struct qimg_spec *s)
{ s->incompatible |= 1ULL << 2; s->data_file = "data.raw"; }
static void datafile_nobit (struct qimg_spec *s) { s->data_file = "data.raw"; }
static void no_table (struct qimg_spec *s) { s->feature_table = false; }
static const struct qimg_feature frob[] = {
  { 0, 5, "frobnication" }, { 0, 63, "the last bit" }, { 1, 6, "compat six" },
};
static void table_frob (struct qimg_spec *s)
{ s->extra_features = frob; s->nr_extra_features = 3; }
static void table_frob_bit6 (struct qimg_spec *s)
{ table_frob (s); s->incompatible |= 1ULL << 6; }
static void bit5_table (struct qimg_spec *s)
{ table_frob (s); s->incompatible |= 1ULL << 5; }
static void bit5_notable (struct qimg_spec *s)
{ no_table (s); s->incompatible |= 1ULL << 5; }
static void bit63_table (struct qimg_spec *s)
{ table_frob (s); s->incompatible |= 1ULL << 63; }
static void bits_5_9 (struct qimg_spec *s)
{ table_frob (s); s->incompatible |= 1ULL << 9 | 1ULL << 5; }
static void dirty_corrupt (struct qimg_spec *s) { s->incompatible |= 3; }
static void compat_unknown (struct qimg_spec *s)
{ s->compatible = 0xfffffffffffffffeULL; }
static void autoclear_unknown (struct qimg_spec *s)
{ s->autoclear = 0xfffffffffffffffcULL; }
#define RO(n) static void ro##n (struct qimg_spec *s) { s->refcount_order = n; }
RO (0) RO (1) RO (2) RO (3) RO (5) RO (6)

/* --------------------------------------------------------- patches */

static void
l1_past_eof (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be64 (b + 40, *fs);
}

static void
l1_straddles_eof (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be64 (b + 40, *fs - i->cluster_size);
  unit_put_be32 (b + 36, i->cluster_size / 8 + 1);
}

static void
l1_in_short_last_cluster (uint8_t *b, const struct qimg_info *i,
                          uint64_t *fs)
{
  /* The file ends 8 bytes into the cluster that holds the L1 table: the
   * rest of the cluster reads as zeros, as in qemu.
   */
  *fs = i->l1 + 8;
}

static void
l1_max (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be32 (b + 36, 4 * MiB);
  *fs = i->l1 + 32 * MiB;
}

static void
reftable_max (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be32 (b + 56, 128);            /* 128 * 64 KiB = 8 MiB */
  *fs = 16 * MiB;
}

static void
reftable_past_eof (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be64 (b + 48, *fs + i->cluster_size);
}

static void
snapshots_max (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  /* 65536 zero entries (40 bytes each, no names) after the image. */
  unit_put_be32 (b + 60, 65536);
  unit_put_be64 (b + 64, *fs);
  *fs += 65536 * 40;
}

static void
snapshot_unaligned (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be32 (b + 60, 1);
  unit_put_be64 (b + 64, *fs - i->cluster_size + 8);
}

static void
snapshot_at_zero (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be32 (b + 60, 1);
  unit_put_be64 (b + 64, 0);
}

static void
snapshot_past_eof (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be32 (b + 60, 1);
  unit_put_be64 (b + 64, *fs + i->cluster_size);
}

static void
clear_bit3 (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be64 (b + 72, unit_get_be64 (b + 72) & ~(1ULL << 3));
}

static void
type2_with_bit3 (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  b[104] = 2;
  unit_put_be64 (b + 72, unit_get_be64 (b + 72) | 1ULL << 3);
}

static void
hl120_junk (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  memset (b + 112, 0xff, 8);    /* unknown header fields: kept, ignored */
}

static void
backing_straddles (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be64 (b + 8, i->cluster_size - 4);
  unit_put_be32 (b + 16, 10);
}

static void
backing_beyond (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be64 (b + 8, i->cluster_size + 512);
  unit_put_be32 (b + 16, 10);
}

static void
backing_nul (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  b[i->backing_name + 4] = 0;   /* "base\0qcow2": would open "base" */
}

static void
backing_len0 (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be32 (b + 16, 0);
}

/* An extension of the given type and length at the end marker. */
static void
ext_at_end (uint8_t *b, const struct qimg_info *i, uint32_t type,
            uint32_t len)
{
  unit_put_be32 (b + i->ext_end, type);
  unit_put_be32 (b + i->ext_end + 4, len);
}

static void
ext_unknown (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  ext_at_end (b, i, 0x12345678, 5);
  memcpy (b + i->ext_end + 8, "hello", 5);
  /* the new end marker, 16 bytes on, is zero already */
}

static void
ext_past_cluster (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  ext_at_end (b, i, 0x12345678, i->cluster_size - i->ext_end - 8 + 1);
}

static void
ext_huge (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  ext_at_end (b, i, 0x12345678, 0xffffffff);
}

static void
ext_unterminated (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  /* Exactly up to the end of cluster 0: no room for an end marker. */
  ext_at_end (b, i, 0x12345678, i->cluster_size - i->ext_end - 8);
}

static void
ext_nonzero_tail (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  /* No end marker: an unknown extension, then garbage types to the end
   * of cluster 0, every one of them in bounds.
   */
  uint64_t off;

  for (off = i->ext_end; off + 8 <= i->cluster_size; off += 8) {
    unit_put_be32 (b + off, 0x7f7f7f7f);
    unit_put_be32 (b + off + 4, 0);
  }
}

static void
ext_backing_fmt_17 (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  ext_at_end (b, i, 0xe2792aca, 17);
  memset (b + i->ext_end + 8, 'q', 17);
}

static void
ext_backing_fmt_twice (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  ext_at_end (b, i, 0xe2792aca, 3);
  memcpy (b + i->ext_end + 8, "raw", 3);
}

static void
ext_bitmaps_short (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  ext_at_end (b, i, 0x23852875, 8);
}

static void
ext_crypto (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  ext_at_end (b, i, 0x0537be77, 16);
  unit_put_be64 (b + i->ext_end + 8, 0x30000);
  unit_put_be64 (b + i->ext_end + 16, 0x1f9000);
}

static void
ext_crypto_luks (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  unit_put_be32 (b + 32, 2);
  ext_crypto (b, i, fs);
}

static void
datafile_name_nul (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  /* The data file extension comes first, at header_length. */
  ck_assert_uint_eq (unit_get_be32 (b + 112), 0x44415441);
  b[112 + 8 + 2] = 0;
}

static void
datafile_name_len0 (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  ck_assert_uint_eq (unit_get_be32 (b + 112), 0x44415441);
  unit_put_be32 (b + 112 + 4, 0);
}

static void
v2_garbage_after_72 (uint8_t *b, const struct qimg_info *i, uint64_t *fs)
{
  /* v3 fields in a v2 header are extension space: an unknown extension
   * type whose length runs past cluster 0.
   */
  unit_put_be32 (b + 72, 0xdeadbeef);
  unit_put_be32 (b + 76, 0x7fffffff);
}

/* ---------------------------------------------------------- checks */

static void
check_v3 (const struct qcow2_header *h)
{
  ck_assert_uint_eq (h->version, 3);
  ck_assert_uint_eq (h->cluster_bits, 16);
  ck_assert_uint_eq (h->cluster_size, 65536);
  ck_assert_uint_eq (h->size, MiB);
  ck_assert_uint_eq (h->l1_size, 1);
  ck_assert_uint_eq (h->l1_table_offset, 3 * 65536);
  ck_assert_uint_eq (h->refcount_table_offset, 65536);
  ck_assert_uint_eq (h->refcount_table_clusters, 1);
  ck_assert_uint_eq (h->header_length, 112);
  ck_assert_uint_eq (h->refcount_order, 4);
  ck_assert_uint_eq (h->compression_type, 0);
  ck_assert (!h->extended_l2);
  ck_assert_uint_eq (h->l2_entry_size, 8);
  ck_assert_uint_eq (h->l2_bits, 13);
  ck_assert_uint_eq (h->subcluster_size, 65536);
  ck_assert_ptr_null (h->backing_file);
  ck_assert_ptr_null (h->backing_format);
  ck_assert_ptr_null (h->data_file);
  ck_assert_uint_eq (h->nr_features, 8);
  ck_assert_str_eq (qcow2_feature_name (h, 0, 4), "extended L2 entries");
  ck_assert_str_eq (qcow2_feature_name (h, 1, 0), "lazy refcounts");
  ck_assert_str_eq (qcow2_feature_name (h, 2, 1), "raw external data");
  ck_assert_ptr_null (qcow2_feature_name (h, 1, 4));
}

static void
check_v2 (const struct qcow2_header *h)
{
  ck_assert_uint_eq (h->version, 2);
  ck_assert_uint_eq (h->header_length, 72);
  ck_assert_uint_eq (h->refcount_order, 4);
  ck_assert_uint_eq (h->incompatible_features, 0);
  ck_assert_uint_eq (h->compatible_features, 0);
  ck_assert_uint_eq (h->autoclear_features, 0);
  ck_assert_uint_eq (h->compression_type, 0);
  ck_assert_uint_eq (h->l2_entry_size, 8);
  /* qemu's feature table extension, starting right at byte 72 */
  ck_assert_uint_eq (h->nr_features, 8);
}

static void check_cb9 (const struct qcow2_header *h)
{
  ck_assert_uint_eq (h->cluster_size, 512);
  ck_assert_uint_eq (h->l2_bits, 6);
}
static void check_cb21 (const struct qcow2_header *h)
{ ck_assert_uint_eq (h->cluster_size, 2 * MiB); }
static void check_extl2_14 (const struct qcow2_header *h)
{
  ck_assert (h->extended_l2);
  ck_assert_uint_eq (h->l2_entry_size, 16);
  ck_assert_uint_eq (h->l2_bits, 10);
  ck_assert_uint_eq (h->subcluster_size, 512);
}
static void check_extl2_21 (const struct qcow2_header *h)
{
  ck_assert (h->extended_l2);
  ck_assert_uint_eq (h->subcluster_size, 64 * KiB);
}
static void check_hl104 (const struct qcow2_header *h)
{
  /* Byte 104 is the first byte of the extension, not a compression type */
  ck_assert_uint_eq (h->header_length, 104);
  ck_assert_uint_eq (h->compression_type, 0);
  ck_assert_str_eq (h->backing_format, "raw");
}
static void check_hl120 (const struct qcow2_header *h)
{
  ck_assert_uint_eq (h->header_length, 120);
  ck_assert_uint_eq (h->nr_features, 8);
}
static void check_zstd (const struct qcow2_header *h)
{ ck_assert_uint_eq (h->compression_type, 1); }
static void check_crypt1 (const struct qcow2_header *h)
{ ck_assert_uint_eq (h->crypt_method, 1); }
static void check_crypt2 (const struct qcow2_header *h)
{ ck_assert_uint_eq (h->crypt_method, 2); }
static void check_backing (const struct qcow2_header *h)
{
  ck_assert_str_eq (h->backing_file, "base.qcow2");
  ck_assert_str_eq (h->backing_format, "qcow2");
}
static void check_name1023 (const struct qcow2_header *h)
{
  ck_assert_uint_eq (strlen (h->backing_file), 1023);
  ck_assert_int_eq (h->backing_file[1022], 'b');
}
static void check_datafile (const struct qcow2_header *h)
{ ck_assert_str_eq (h->data_file, "data.raw"); }
static void check_no_datafile (const struct qcow2_header *h)
{
  ck_assert_ptr_null (h->data_file);
  ck_assert (unit_log_has (QC_LOG_DEBUG, "data file name"));
}
static void check_unknown_ext (const struct qcow2_header *h)
{
  ck_assert (unit_log_has (QC_LOG_DEBUG, "0x12345678"));
  ck_assert_uint_eq (h->nr_features, 8);
}
static void check_crypto_ext (const struct qcow2_header *h)
{
  ck_assert (h->has_crypto_ext);
  ck_assert_uint_eq (h->crypto_offset, 0x30000);
  ck_assert_uint_eq (h->crypto_length, 0x1f9000);
}
static void check_dirty_corrupt (const struct qcow2_header *h)
{ ck_assert_uint_eq (h->incompatible_features, 3); }
static void check_compat (const struct qcow2_header *h)
{ ck_assert_uint_eq (h->compatible_features, 0xfffffffffffffffeULL); }
static void check_autoclear (const struct qcow2_header *h)
{ ck_assert_uint_eq (h->autoclear_features, 0xfffffffffffffffcULL); }
static void check_frob (const struct qcow2_header *h)
{
  ck_assert_str_eq (qcow2_feature_name (h, 0, 5), "frobnication");
  ck_assert_str_eq (qcow2_feature_name (h, 1, 6), "compat six");
}
#define CRO(n) static void check_ro##n (const struct qcow2_header *h) \
  { ck_assert_uint_eq (h->refcount_order, n); }
CRO (0) CRO (1) CRO (2) CRO (3) CRO (4) CRO (5) CRO (6)

/* ----------------------------------------------------------- table */

#define P4(off, v) .poff = (off), .pw = 4, .pval = (v)
#define P8(off, v) .poff = (off), .pw = 8, .pval = (v)
#define P1(off, v) .poff = (off), .pw = 1, .pval = (v)

static const struct row rows[] = {
  { "valid v3", .check = check_v3 },
  { "valid v2", v2, .check = check_v2 },

  { "bad magic", P4 (0, 0x514649fa), .err = EINVAL, .msg = "magic" },
  { "version 0", P4 (4, 0), .err = EINVAL, .msg = "version 0" },
  { "version 1", P4 (4, 1), .err = EINVAL, .msg = "version 1" },
  { "version 4", P4 (4, 4), .err = EINVAL, .msg = "version 4" },

  { "cluster_bits 8", P4 (20, 8), .err = EINVAL, .msg = "cluster_bits 8" },
  { "cluster_bits 9", cb9, .check = check_cb9 },
  { "cluster_bits 21", cb21, .check = check_cb21 },
  { "cluster_bits 22", P4 (20, 22), .err = EINVAL, .msg = "cluster_bits 22" },
  { "cluster_bits 64", P4 (20, 64), .err = EINVAL, .msg = "cluster_bits 64" },
  { "extended L2, cluster_bits 13", extl2_13, .err = EINVAL,
    .msg = "cluster_bits 13", .msg2 = "extended L2" },
  { "extended L2, cluster_bits 14", extl2_14, .check = check_extl2_14 },
  { "extended L2, cluster_bits 21", extl2_21, .check = check_extl2_21 },

  { "header_length 96", P4 (100, 96), .err = EINVAL,
    .msg = "header_length 96" },
  { "header_length 100", P4 (100, 100), .err = EINVAL,
    .msg = "header_length 100" },
  { "header_length 104", hl104, .check = check_hl104 },
  /* The spec requires a multiple of 8; qemu does not check it. */
  { "header_length 108", no_table, P4 (100, 108), .err = EINVAL,
    .msg = "header_length 108", .qemu = QEMU_ACCEPTS },
  { "header_length 112", .check = check_v3 },
  { "header_length 120, unknown fields", hl120, .patch = hl120_junk,
    .check = check_hl120 },
  /* header_length = cluster size: the header fills cluster 0, there is
   * no extension area (qemu accepts this).
   */
  { "header_length = cluster size", .spec = hl_cluster },
  { "header_length = cluster size + 8", P4 (100, 65536 + 8), .err = EINVAL,
    .msg = "header_length 65544" },

  { "crypt_method 0", P4 (32, 0), .check = check_v3 },
  /* (qemu cannot read it without the key) */
  { "crypt_method 1", P4 (32, 1), .check = check_crypt1,
    .qemu = QEMU_REFUSES },
  /* LUKS without its header extension: the header itself is fine, the
   * image (no key material) is not: qemu refuses to open it.
   */
  { "crypt_method 2", P4 (32, 2), .check = check_crypt2,
    .qemu = QEMU_REFUSES },
  { "crypt_method 3", P4 (32, 3), .err = ENOTSUP, .msg = "encryption method 3" },
  { "crypt_method 0xffffffff", P4 (32, 0xffffffff), .err = ENOTSUP,
    .msg = "encryption method" },

  { "l1_size too small", size1g, P4 (36, 1), .err = EINVAL, .msg = "L1",
    .msg2 = "2 needed" },
  { "l1_size 0 for 1 MiB", P4 (36, 0), .err = EINVAL, .msg = "L1" },
  { "l1_size above 32 MiB", P4 (36, 4 * MiB + 1), .err = EINVAL,
    .msg = "L1", .msg2 = "32 MiB" },
  { "l1_size exactly 32 MiB", .patch = l1_max },
  { "virtual size needing a huge L1", P8 (24, 1ULL << 62), .err = EINVAL,
    .msg = "L1", .msg2 = "32 MiB" },
  { "L1 offset unaligned", P8 (40, 3 * 65536 + 512), .err = EINVAL,
    .msg = "L1 table offset", .msg2 = "aligned" },
  /* Tables must lie inside the file (qemu reads zeros past its end and
   * lets tables overlap the header): deliberately stricter.
   */
  { "L1 offset 0", P8 (40, 0), .err = EINVAL, .msg = "L1 table offset" ,
    .qemu = QEMU_ACCEPTS },
  { "L1 beyond EOF", .patch = l1_past_eof, .err = EINVAL,
    .msg = "L1 table", .msg2 = "beyond the end" ,
    .qemu = QEMU_ACCEPTS },
  { "L1 straddling EOF", .patch = l1_straddles_eof, .err = EINVAL,
    .msg = "L1 table", .msg2 = "beyond the end" ,
    .qemu = QEMU_ACCEPTS },
  { "L1 in a short last cluster", .patch = l1_in_short_last_cluster },

  { "refcount table clusters 0", P4 (56, 0), .err = EINVAL,
    .msg = "refcount table", .msg2 = "0 clusters" },
  { "refcount table 8 MiB", .patch = reftable_max },
  { "refcount table > 8 MiB", P4 (56, 129), .err = EINVAL,
    .msg = "refcount table", .msg2 = "8 MiB" },
  { "refcount table offset unaligned", P8 (48, 65536 + 8), .err = EINVAL,
    .msg = "refcount table offset", .msg2 = "aligned" },
  { "refcount table offset 0", P8 (48, 0), .err = EINVAL,
    .msg = "refcount table offset" ,
    .qemu = QEMU_ACCEPTS },
  { "refcount table beyond EOF", .patch = reftable_past_eof, .err = EINVAL,
    .msg = "refcount table", .msg2 = "beyond the end" ,
    .qemu = QEMU_ACCEPTS },

  /* (qemu takes 15 s to load 65536 snapshots) */
  { "nb_snapshots 65536", .patch = snapshots_max, .qemu = QEMU_SKIP },
  { "nb_snapshots 65537", P4 (60, 65537), .err = EINVAL,
    .msg = "65537 snapshots" },
  { "snapshot table unaligned", .patch = snapshot_unaligned, .err = EINVAL,
    .msg = "snapshot table", .msg2 = "aligned" },
  { "snapshot table at 0", .patch = snapshot_at_zero, .err = EINVAL,
    .msg = "snapshot table" ,
    .qemu = QEMU_ACCEPTS },
  { "snapshot table beyond EOF", .patch = snapshot_past_eof, .err = EINVAL,
    .msg = "snapshot table", .msg2 = "beyond the end" ,
    .qemu = QEMU_ACCEPTS },

  { "compression type zstd", zstd, .check = check_zstd },
  { "compression type 1 without bit 3", zstd, .patch = clear_bit3,
    .err = EINVAL, .msg = "compression type", .msg2 = "bit 3" },
  { "bit 3 with compression type 0", P8 (72, 1ULL << 3), .err = EINVAL,
    .msg = "compression type", .msg2 = "bit 3" },
  { "compression type 2", .patch = type2_with_bit3, .err = ENOTSUP,
    .msg = "compression type 2" },
  { "compression type 2 without bit 3", P1 (104, 2), .err = ENOTSUP,
    .msg = "compression type 2" },

  { "refcount_order 0", ro0, .check = check_ro0 },
  { "refcount_order 1", ro1, .check = check_ro1 },
  { "refcount_order 2", ro2, .check = check_ro2 },
  { "refcount_order 3", ro3, .check = check_ro3 },
  { "refcount_order 4", .check = check_ro4 },
  { "refcount_order 5", ro5, .check = check_ro5 },
  { "refcount_order 6", ro6, .check = check_ro6 },
  { "refcount_order 7", P4 (96, 7), .err = EINVAL, .msg = "refcount_order 7" },
  { "refcount_order 0xffffffff", P4 (96, 0xffffffff), .err = EINVAL,
    .msg = "refcount_order" },

  { "backing file", backing, .check = check_backing },
  { "v2 backing file", v2_backing, .check = check_backing },
  { "backing name 1023 bytes", name1023, .check = check_name1023 },
  { "backing name 1024 bytes", name1024, .err = EINVAL,
    .msg = "backing file name" },
  { "backing name straddling cluster 0", backing, .patch = backing_straddles,
    .err = EINVAL, .msg = "backing file name" },
  { "backing name beyond cluster 0", backing, .patch = backing_beyond,
    .err = EINVAL, .msg = "backing file name" },
  /* qemu would open "base", a different file: deliberately refused */
  { "backing name with NUL", backing, .patch = backing_nul, .err = EINVAL,
    .msg = "backing file name", .msg2 = "NUL", .qemu = QEMU_ACCEPTS },
  /* An offset with length 0: qemu reads an empty name (no backing). */
  { "backing name of length 0", backing, .patch = backing_len0,
    .err = EINVAL, .msg = "backing file name", .qemu = QEMU_ACCEPTS },

  { "unknown extension", .patch = ext_unknown, .check = check_unknown_ext },
  { "extension running past cluster 0", .patch = ext_past_cluster,
    .err = EINVAL, .msg = "extension 0x12345678", .msg2 = "past the end" },
  { "extension length 0xffffffff", .patch = ext_huge, .err = EINVAL,
    .msg = "extension 0x12345678" },
  /* Extensions filling cluster 0 exactly without an end marker (qemu
   * stops at the end of the cluster and accepts them).
   */
  { "extensions unterminated at the cluster end", .patch = ext_unterminated,
    .err = EINVAL, .msg = "extensions", .msg2 = "not terminated",
    .qemu = QEMU_ACCEPTS },
  { "extensions of garbage up to the cluster end", .patch = ext_nonzero_tail,
    .err = EINVAL, .msg = "extensions", .msg2 = "not terminated",
    .qemu = QEMU_ACCEPTS },
  { "backing format extension of 17 bytes", .patch = ext_backing_fmt_17,
    .err = EINVAL, .msg = "backing format extension" },
  { "two backing format extensions", backing, .patch = ext_backing_fmt_twice,
    .err = EINVAL, .msg = "more than one backing format" },
  { "bitmaps extension too short", .patch = ext_bitmaps_short,
    .err = EINVAL, .msg = "bitmaps extension" },
  { "crypto extension without LUKS", .patch = ext_crypto, .err = EINVAL,
    .msg = "encryption header extension" },
  { "crypto extension with LUKS", .patch = ext_crypto_luks,
    .check = check_crypto_ext, .qemu = QEMU_SKIP },
  { "v2 extension running past cluster 0", v2, .patch = v2_garbage_after_72,
    .err = EINVAL, .msg = "extension 0xdeadbeef" },

  { "data-file bit without a name", datafile_bit, .err = EINVAL,
    .msg = "external data file" },
  { "data-file bit with a name", datafile, .check = check_datafile,
    .qemu = QEMU_SKIP },
  { "data-file name without the bit", datafile_nobit,
    .check = check_no_datafile },
  { "data-file name with NUL", datafile, .patch = datafile_name_nul,
    .err = EINVAL, .msg = "external data file name", .msg2 = "NUL",
    .qemu = QEMU_SKIP },
  { "data-file name of length 0", datafile, .patch = datafile_name_len0,
    .err = EINVAL, .msg = "external data file name", .qemu = QEMU_SKIP },

  { "incompatible bit 5, named in the table", bit5_table, .err = ENOTSUP,
    .msg = "incompatible feature bit 5", .msg2 = "frobnication" },
  { "incompatible bit 5, no table", bit5_notable, .err = ENOTSUP,
    .msg = "incompatible feature bit 5", .msg2 = "unknown" },
  { "incompatible bit 63, named in the table", bit63_table, .err = ENOTSUP,
    .msg = "incompatible feature bit 63", .msg2 = "the last bit" },
  { "incompatible bit 6, named only as compatible", table_frob_bit6,
    .err = ENOTSUP, .msg = "incompatible feature bit 6", .msg2 = "unknown" },
  { "incompatible bits 5 and 9", bits_5_9, .err = ENOTSUP,
    .msg = "incompatible feature bit 5", .msg2 = "frobnication" },
  { "feature table names", table_frob, .check = check_frob },
  { "dirty and corrupt bits", dirty_corrupt, .check = check_dirty_corrupt,
    .qemu = QEMU_SKIP },
  { "unknown compatible bits", compat_unknown, .check = check_compat },
  { "unknown autoclear bits", autoclear_unknown, .check = check_autoclear },
};

#define NR_ROWS (sizeof rows / sizeof rows[0])

static void
apply (const struct row *r, struct qimg_spec *s, uint8_t **img,
       struct qimg_info *info, size_t *len, uint64_t *file_size)
{
  qimg_spec_init (s);
  if (r->spec)
    r->spec (s);
  *img = qimg_build (s, info, len);
  *file_size = *len;
  switch (r->pw) {
  case 0: break;
  case 1: (*img)[r->poff] = r->pval; break;
  case 4: unit_put_be32 (*img + r->poff, r->pval); break;
  case 8: unit_put_be64 (*img + r->poff, r->pval); break;
  default: ck_abort ();
  }
  if (r->patch)
    r->patch (*img, info, file_size);
}

START_TEST (test_row)
{
  const struct row *r = &rows[_i];
  struct qimg_spec s;
  struct qimg_info info;
  struct qcow2_header h;
  uint8_t *img;
  size_t len;
  uint64_t file_size;
  int ret;

  apply (r, &s, &img, &info, &len, &file_size);
  unit_log_clear ();
  errno = 0;
  ret = qcow2_header_parse (img, info.cluster_size, file_size,
                            "row.qcow2", &h);
  if (r->err == 0) {
    ck_assert_msg (ret == 0, "row '%s' refused: %s", r->name,
                   qc_last_error ());
    ck_assert_msg (unit_log_count (QC_LOG_ERROR) == 0,
                   "row '%s': accepted but reported an error: %s", r->name,
                   unit_log_last (QC_LOG_ERROR));
    if (r->check)
      r->check (&h);
    qcow2_header_free (&h);
    ck_assert_ptr_null (h.features);
  }
  else {
    const char *e = qc_last_error ();
    ck_assert_msg (ret == -1, "row '%s' accepted", r->name);
    ck_assert_msg (errno == r->err, "row '%s': errno %d (%s), expected %d",
                   r->name, errno, strerror (errno), r->err);
    ck_assert_msg (strstr (e, r->msg), "row '%s': message '%s' does not "
                   "mention '%s'", r->name, e, r->msg);
    ck_assert_msg (!r->msg2 || strstr (e, r->msg2), "row '%s': message "
                   "'%s' does not mention '%s'", r->name, e, r->msg2);
    ck_assert_msg (strstr (e, "row.qcow2"), "row '%s': message '%s' does "
                   "not name the image", r->name, e);
    /* Reported through the handler, and only once. */
    ck_assert_uint_eq (unit_log_count (QC_LOG_ERROR), 1);
    ck_assert_str_eq (unit_log_last (QC_LOG_ERROR), e);
    /* Nothing left allocated or half-filled. */
    ck_assert_ptr_null (h.features);
    ck_assert_ptr_null (h.backing_file);
    ck_assert_ptr_null (h.backing_format);
    ck_assert_ptr_null (h.data_file);
  }
  qimg_info_free (&info);
  free (img);
}
END_TEST

/* The same rows through qemu-img convert: the table's verdicts agree with
 * qemu except where a row says otherwise.
 */
START_TEST (test_row_qemu)
{
  const struct row *r = &rows[_i];
  struct qimg_spec s;
  struct qimg_info info;
  uint8_t *img;
  size_t len;
  uint64_t file_size;
  char *dir;
  bool we_accept = r->err == 0, qemu_accepts;
  int status;

  if (r->qemu == QEMU_SKIP)
    return;
  apply (r, &s, &img, &info, &len, &file_size);
  dir = unit_tmpdir_new ();
  unit_write_file (unit_path (dir, "row.qcow2"), img,
                   len < file_size ? len : file_size);
  if (file_size > len)          /* sparse tail, as the row assumes */
    ck_assert (truncate (unit_path (dir, "row.qcow2"), file_size) == 0);
  /* convert, not info: info does not open everything (data file);
   * without the backing file, which the rows do not provide
   */
  status = unit_sh_status ("cd '%s' && qemu-img convert -t unsafe -O raw "
                           "'json:{\"driver\": \"qcow2\", \"backing\": null, "
                           "\"file\": {\"driver\": \"file\", "
                           "\"filename\": \"row.qcow2\"}}' row.raw", dir);
  qemu_accepts = status == 0;
  switch (r->qemu) {
  case QEMU_SAME:
    ck_assert_msg (qemu_accepts == we_accept, "row '%s': qemu %s it",
                   r->name, qemu_accepts ? "accepts" : "refuses");
    break;
  case QEMU_ACCEPTS:
    ck_assert_msg (qemu_accepts && !we_accept,
                   "row '%s': qemu no longer accepts it", r->name);
    break;
  case QEMU_REFUSES:
    ck_assert_msg (!qemu_accepts && we_accept,
                   "row '%s': qemu no longer refuses it", r->name);
    break;
  default:
    break;
  }
  unit_tmpdir_remove (dir);
  free (dir);
  qimg_info_free (&info);
  free (img);
}
END_TEST

/* --------------------------------------------------- outside the table */

START_TEST (test_short_buffers)
{
  struct qimg_spec s;
  struct qimg_info info;
  struct qcow2_header h;
  size_t len;
  uint8_t *img;

  qimg_spec_init (&s);
  img = qimg_build (&s, &info, &len);
  ck_assert_int_eq (qcow2_header_parse (img, 71, len, "x", &h), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "too short"));
  ck_assert_int_eq (qcow2_header_parse (img, 100, len, "x", &h), -1);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "version 3 header"));
  ck_assert_int_eq (qcow2_header_parse (img, 4096, len, "x", &h), -1);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "cluster 0"));
  ck_assert_int_eq (qcow2_header_parse (img, 65536, len, "x", &h), 0);
  qcow2_header_free (&h);
  qimg_info_free (&info);
  free (img);
}
END_TEST

START_TEST (test_has_magic)
{
  static const uint8_t good[4] = { 'Q', 'F', 'I', 0xfb };
  static const uint8_t bad[4] = { 'Q', 'F', 'I', 0xfa };

  ck_assert (qcow2_has_magic (good));
  ck_assert (!qcow2_has_magic (bad));
}
END_TEST

/* qcow2_header_read through a device: the whole image, an image whose
 * file is shorter than cluster 0 (zero-filled, then its tables are
 * beyond the end), a device too short for any header.
 */
START_TEST (test_header_read)
{
  struct qimg_spec s;
  struct qimg_info info;
  struct qcow2_header h;
  struct blkdev *dev;
  size_t len;
  uint8_t *img;

  qimg_spec_init (&s);
  s.backing_file = "base.raw";
  s.backing_format = "raw";
  img = qimg_build (&s, &info, &len);

  dev = blkdev_memory_new (img, len, true);
  ck_assert_ptr_nonnull (dev);
  ck_assert_int_eq (qcow2_header_read (dev, &h), 0);
  ck_assert_uint_eq (h.size, MiB);
  ck_assert_str_eq (h.backing_file, "base.raw");
  ck_assert_str_eq (h.backing_format, "raw");
  qcow2_header_free (&h);
  blkdev_close (dev);

  /* 4 KiB of a 64 KiB-cluster image: cluster 0 reads zero-filled; the
   * header is intact but the tables are gone.
   */
  dev = blkdev_memory_new (img, 4096, true);
  ck_assert_int_eq (qcow2_header_read (dev, &h), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "beyond the end"));
  blkdev_close (dev);

  dev = blkdev_memory_new (img, 50, true);
  ck_assert_int_eq (qcow2_header_read (dev, &h), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "too short"));
  blkdev_close (dev);

  /* cluster_bits out of range is refused before allocating a cluster */
  unit_put_be32 (img + 20, 40);
  dev = blkdev_memory_new (img, len, true);
  ck_assert_int_eq (qcow2_header_read (dev, &h), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_nonnull (strstr (qc_last_error (), "cluster_bits 40"));
  blkdev_close (dev);

  qimg_info_free (&info);
  free (img);
}
END_TEST

/* The builder's images are what qemu makes: qemu-img check finds no
 * error or leak, and info reports the fields the builder wrote.
 */
START_TEST (test_builder_valid)
{
  static const struct {
    uint32_t version, cluster_bits, refcount_order;
    uint64_t incompat;
    uint8_t ctype;
  } v[] = {
    { 3, 16, 4, 0, 0 }, { 2, 16, 4, 0, 0 }, { 3, 9, 4, 0, 0 },
    { 3, 9, 6, 0, 0 }, { 3, 12, 0, 0, 0 }, { 3, 14, 4, 1ULL << 4, 1 },
    { 3, 21, 4, 0, 1 },
  };
  char *dir = unit_tmpdir_new ();
  size_t k;

  for (k = 0; k < sizeof v / sizeof v[0]; k++) {
    struct qimg_spec s;
    uint8_t *img, *guest;
    size_t len;
    char layout[8] = "dduzZc";

    qimg_spec_init (&s);
    s.version = v[k].version;
    s.cluster_bits = v[k].cluster_bits;
    s.refcount_order = v[k].refcount_order;
    s.incompatible = v[k].incompat;
    s.compression_type = v[k].ctype;
    s.size = 8ULL << s.cluster_bits;
    if (s.version == 2) {
      layout[3] = layout[4] = QIMG_UNALLOC;
    }
    guest = malloc (s.size);
    unit_fill_random (guest, s.size, k);
    memset (guest + (5ULL << s.cluster_bits), 'x', 1ULL << s.cluster_bits);
    s.guest = guest;
    s.layout = layout;
    img = qimg_build (&s, NULL, &len);
    unit_write_file (unit_path (dir, "b.qcow2"), img, len);
    unit_sh ("qemu-img check -f qcow2 '%s'", unit_path (dir, "b.qcow2"));
    unit_sh ("qemu-img info -f qcow2 --output=json '%s' | "
             "grep -q '\"cluster-size\": %llu'",
             unit_path (dir, "b.qcow2"), 1ULL << s.cluster_bits);
    free (img);
    free (guest);
  }
  unit_tmpdir_remove (dir);
  free (dir);
}
END_TEST

Suite *
header_suite (void)
{
  Suite *s = suite_create ("header");
  TCase *tc;

  tc = tcase_create ("table");
  tcase_add_loop_test (tc, test_row, 0, NR_ROWS);
  suite_add_tcase (s, tc);

  tc = tcase_create ("table-vs-qemu");
  tcase_set_timeout (tc, UNIT_QEMU_TIMEOUT);
  tcase_add_loop_test (tc, test_row_qemu, 0, NR_ROWS);
  suite_add_tcase (s, tc);

  tc = tcase_create ("misc");
  tcase_set_timeout (tc, UNIT_QEMU_TIMEOUT);
  tcase_add_test (tc, test_short_buffers);
  tcase_add_test (tc, test_has_magic);
  tcase_add_test (tc, test_header_read);
  tcase_add_test (tc, test_builder_valid);
  suite_add_tcase (s, tc);
  return s;
}
