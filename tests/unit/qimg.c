/* SPDX-License-Identifier: BSD-3-Clause */
/* A small, independent qcow2 writer for the tests: it lays out a valid
 * image in memory (header, extensions, refcount table and block, L1, L2
 * tables, data and compressed clusters) from the specification, so that
 * tests know what every byte means and can mutate it.  The tests check
 * its images with qemu-img (check, convert) before trusting them.
 */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>

#include "unit.h"

#define OFLAG_COPIED     (1ULL << 63)
#define OFLAG_COMPRESSED (1ULL << 62)
#define OFLAG_ZERO       1ULL

void
qimg_spec_init (struct qimg_spec *s)
{
  memset (s, 0, sizeof *s);
  s->version = 3;
  s->cluster_bits = 16;
  s->size = 1 << 20;
  s->header_length = 112;
  s->refcount_order = 4;
  s->feature_table = true;
}

void
qimg_info_free (struct qimg_info *info)
{
  if (info) {
    free (info->l2);
    free (info->host);
    memset (info, 0, sizeof *info);
  }
}

static bool
extl2 (const struct qimg_spec *s)
{
  return s->version == 3 && (s->incompatible & (1ULL << 4));
}

static uint64_t
entries_per_l2 (const struct qimg_spec *s)
{
  return (1ULL << s->cluster_bits) / (extl2 (s) ? 16 : 8);
}

uint64_t
qimg_l2_entry (const struct qimg_spec *s, const struct qimg_info *info,
               uint64_t c)
{
  uint64_t n = entries_per_l2 (s);

  if (c / n >= info->l1_size || info->l2[c / n] == 0)
    return 0;
  return info->l2[c / n] + (c % n) * (extl2 (s) ? 16 : 8);
}

static char
kind_of (const struct qimg_spec *s, uint64_t c, uint64_t cs)
{
  uint64_t i, n;

  if (s->layout)
    return c < strlen (s->layout) ? s->layout[c] : QIMG_UNALLOC;
  if (!s->guest)
    return QIMG_UNALLOC;
  n = s->size - c * cs < cs ? s->size - c * cs : cs;
  for (i = 0; i < n; i++)
    if (s->guest[c * cs + i])
      return QIMG_DATA;
  return QIMG_UNALLOC;
}

size_t
unit_deflate_raw (const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
  z_stream z;

  memset (&z, 0, sizeof z);
  ck_assert (deflateInit2 (&z, 6, Z_DEFLATED, -12, 9,
                           Z_DEFAULT_STRATEGY) == Z_OK);
  z.next_in = (uint8_t *) in;
  z.avail_in = len;
  z.next_out = out;
  z.avail_out = cap;
  ck_assert (deflate (&z, Z_FINISH) == Z_STREAM_END);
  deflateEnd (&z);
  return cap - z.avail_out;
}

/* Compress one cluster as qemu would (raw deflate, 4 KiB window, or a
 * plain zstd frame).  Returns the length.
 */
static size_t
compress_cluster (const struct qimg_spec *s, const uint8_t *in, size_t cs,
                  uint8_t *out, size_t cap)
{
  if (s->compress)
    return s->compress (in, cs, out, cap);
  if (s->compression_type == 1) {
    size_t r = ZSTD_compress (out, cap, in, cs, 3);
    ck_assert (!ZSTD_isError (r));
    return r;
  }
  return unit_deflate_raw (in, cs, out, cap);
}

static void
set_refcount (uint8_t *block, uint32_t order, uint64_t i, uint64_t v)
{
  uint32_t bits = 1U << order;

  if (bits < 8) {
    uint64_t bit = i * bits;
    block[bit / 8] |= (uint8_t) (v << (bit % 8));
  }
  else {
    uint32_t bytes = bits / 8, k;
    for (k = 0; k < bytes; k++)
      block[i * bytes + k] = (uint8_t) (v >> (8 * (bytes - 1 - k)));
  }
}

uint8_t *
qimg_build (const struct qimg_spec *s, struct qimg_info *info_ret,
            size_t *len)
{
  const uint64_t cs = 1ULL << s->cluster_bits;
  const bool ext = extl2 (s);
  const uint64_t per_l2 = entries_per_l2 (s);
  const uint64_t l2_span = per_l2 * cs;
  const uint32_t esize = ext ? 16 : 8;
  struct qimg_info info;
  uint64_t next, c, i, total, max_clusters;
  uint64_t incompat = s->incompatible;
  uint8_t *img, *h, **streams = NULL;
  size_t *stream_len = NULL;
  uint32_t hl = s->version == 2 ? 72 : s->header_length;

  ck_assert (s->version == 2 || s->version == 3);
  ck_assert (s->version == 3 || s->refcount_order == 4);
  memset (&info, 0, sizeof info);
  info.cluster_size = cs;
  info.nr_clusters = (s->size + cs - 1) / cs;
  info.l1_size = (s->size + l2_span - 1) / l2_span;
  info.l2 = calloc (info.l1_size + 1, sizeof *info.l2);
  info.host = calloc (info.nr_clusters + 1, sizeof *info.host);
  ck_assert (info.l2 && info.host);
  if (s->compression_type)
    incompat |= 1ULL << 3;

  /* Host layout: header, refcount table, refcount block, L1, then each
   * L2 table followed by the clusters it maps.
   */
  info.reftable = cs;
  info.refblock = 2 * cs;
  info.l1 = 3 * cs;
  next = 3 + ((uint64_t) info.l1_size * 8 + cs - 1) / cs;
  if (info.l1_size == 0)
    next++;
  streams = calloc (info.nr_clusters + 1, sizeof *streams);
  stream_len = calloc (info.nr_clusters + 1, sizeof *stream_len);
  ck_assert (streams && stream_len);
  for (i = 0; i < info.l1_size; i++) {
    uint64_t first = i * per_l2, last = first + per_l2;
    bool any = false;

    if (last > info.nr_clusters)
      last = info.nr_clusters;
    for (c = first; c < last; c++)
      if (kind_of (s, c, cs) != QIMG_UNALLOC)
        any = true;
    if (!any)
      continue;
    info.l2[i] = next++ * cs;
    for (c = first; c < last; c++) {
      switch (kind_of (s, c, cs)) {
      case QIMG_DATA:
      case QIMG_ZERO_ALLOC:
        info.host[c] = next++ * cs;
        break;
      case QIMG_COMPRESSED: {
        uint8_t *src = calloc (1, cs);
        size_t cap = 2 * cs + 1024;
        ck_assert (src != NULL);
        if (s->guest)
          memcpy (src, s->guest + c * cs,
                  s->size - c * cs < cs ? s->size - c * cs : cs);
        streams[c] = malloc (cap);
        ck_assert (streams[c] != NULL);
        stream_len[c] = compress_cluster (s, src, cs, streams[c], cap);
        ck_assert (stream_len[c] > 0 && stream_len[c] <= 2 * cs);
        free (src);
        info.host[c] = next * cs;
        next += (stream_len[c] + cs - 1) / cs;
        break;
      }
      case QIMG_UNALLOC:
      case QIMG_ZERO:
        break;
      default:
        ck_abort_msg ("qimg: bad layout character");
      }
    }
  }
  total = next;
  max_clusters = cs * 8 / (1U << s->refcount_order);
  ck_assert_msg (total <= max_clusters,
                 "qimg: %lu clusters do not fit one refcount block",
                 (unsigned long) total);

  img = calloc (total, cs);
  ck_assert (img != NULL);
  h = img;

  /* Header. */
  unit_put_be32 (h, 0x514649fb);
  unit_put_be32 (h + 4, s->version);
  unit_put_be32 (h + 20, s->cluster_bits);
  unit_put_be64 (h + 24, s->size);
  unit_put_be32 (h + 36, info.l1_size);
  unit_put_be64 (h + 40, info.l1);
  unit_put_be64 (h + 48, info.reftable);
  unit_put_be32 (h + 56, 1);
  if (s->version == 3) {
    unit_put_be64 (h + 72, incompat);
    unit_put_be64 (h + 80, s->compatible);
    unit_put_be64 (h + 88, s->autoclear);
    unit_put_be32 (h + 96, s->refcount_order);
    unit_put_be32 (h + 100, hl);
    if (hl > 104)
      h[104] = s->compression_type;
  }

  /* Extensions. */
  {
    uint64_t off = hl;
#define EXT(type, data, n) do {                                 \
      ck_assert (off + 8 + (((n) + 7) & ~7ULL) + 8 <= cs);       \
      unit_put_be32 (h + off, type);                            \
      unit_put_be32 (h + off + 4, n);                           \
      memcpy (h + off + 8, data, n);                            \
      off += 8 + (((n) + 7) & ~7ULL);                           \
    } while (0)
    if (hl + 8 <= cs) {
      if (s->backing_format)
        EXT (0xe2792acaU, s->backing_format, strlen (s->backing_format));
      if (s->data_file)
        EXT (0x44415441U, s->data_file, strlen (s->data_file));
      if (s->feature_table || s->nr_extra_features) {
        static const struct qimg_feature qemu_features[] = {
          { 0, 0, "dirty bit" }, { 0, 1, "corrupt bit" },
          { 0, 2, "external data file" }, { 0, 3, "compression type" },
          { 0, 4, "extended L2 entries" }, { 1, 0, "lazy refcounts" },
          { 2, 0, "bitmaps" }, { 2, 1, "raw external data" },
        };
        size_t nq = s->feature_table ? 8 : 0;
        size_t n = nq + s->nr_extra_features, k;
        uint8_t *t = calloc (n, 48);
        ck_assert (t != NULL);
        for (k = 0; k < n; k++) {
          const struct qimg_feature *f =
            k < nq ? &qemu_features[k] : &s->extra_features[k - nq];
          t[k * 48] = f->type;
          t[k * 48 + 1] = f->bit;
          strncpy ((char *) t + k * 48 + 2, f->name, 46);
        }
        EXT (0x6803f857U, t, n * 48);
        free (t);
      }
#undef EXT
      info.ext_end = off;       /* END: 8 zero bytes, already there */
      off += 8;
      if (s->backing_file) {
        size_t n = strlen (s->backing_file);
        ck_assert (off + n <= cs);
        memcpy (h + off, s->backing_file, n);
        unit_put_be64 (h + 8, off);
        unit_put_be32 (h + 16, n);
        info.backing_name = off;
      }
    }
    else {
      ck_assert (!s->backing_file && !s->backing_format && !s->data_file);
      info.ext_end = cs;
    }
  }

  /* Refcounts: every cluster in use once. */
  unit_put_be64 (img + info.reftable, info.refblock);
  for (c = 0; c < total; c++)
    set_refcount (img + info.refblock, s->refcount_order, c, 1);

  /* L1, L2 and data. */
  for (i = 0; i < info.l1_size; i++) {
    uint64_t first = i * per_l2, last = first + per_l2;

    if (!info.l2[i])
      continue;
    unit_put_be64 (img + info.l1 + i * 8, OFLAG_COPIED | info.l2[i]);
    if (last > info.nr_clusters)
      last = info.nr_clusters;
    for (c = first; c < last; c++) {
      uint8_t *e = img + info.l2[i] + (c - first) * esize;
      uint64_t w = 0, bm = 0;
      uint64_t n = s->size - c * cs < cs ? s->size - c * cs : cs;

      switch (kind_of (s, c, cs)) {
      case QIMG_DATA:
        w = OFLAG_COPIED | info.host[c];
        bm = 0xffffffffULL;
        if (s->guest)
          memcpy (img + info.host[c], s->guest + c * cs, n);
        break;
      case QIMG_ZERO:
        if (ext)
          bm = 0xffffffff00000000ULL;
        else
          w = OFLAG_ZERO;
        break;
      case QIMG_ZERO_ALLOC:
        w = OFLAG_COPIED | info.host[c];
        if (ext)
          bm = 0xffffffff00000000ULL;
        else
          w |= OFLAG_ZERO;
        /* Junk in the host cluster: it must never be read. */
        memset (img + info.host[c], 0xa5, cs);
        break;
      case QIMG_COMPRESSED: {
        unsigned x = 62 - (s->cluster_bits - 8);
        uint64_t nsect = (stream_len[c] + 511) / 512 - 1;
        memcpy (img + info.host[c], streams[c], stream_len[c]);
        w = OFLAG_COMPRESSED | (nsect << x) | info.host[c];
        break;
      }
      default:
        break;
      }
      unit_put_be64 (e, w);
      if (ext)
        unit_put_be64 (e + 8, bm);
    }
  }

  for (c = 0; c < info.nr_clusters; c++)
    free (streams[c]);
  free (streams);
  free (stream_len);
  *len = total * cs;
  if (info_ret)
    *info_ret = info;
  else
    qimg_info_free (&info);
  return img;
}
