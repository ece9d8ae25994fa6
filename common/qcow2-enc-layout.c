/* SPDX-License-Identifier: BSD-3-Clause */
/* The encoder's layout and its bytes: see qcow2-enc.h.
 *
 * The file, in clusters: the header (cluster 0, built by the same code
 * as a created image's), the refcount table, the refcount blocks, the
 * L1 table, the L2 tables that map something (in L1 order), then the
 * stored guest clusters (in guest order).  Every cluster of the file is
 * in use once, so every refcount is 1 and every entry COPIED.  With
 * compression, the clusters that compress follow as byte-packed streams
 * (qcow2-enc-compress.c) whose host clusters count every stream
 * touching them.  With LUKS encryption, the LUKS header area follows
 * the L1 table (a new master key per encoder: the bytes are the same
 * only within one run), and data clusters are encrypted when read, with
 * their host offset as IV.  The host
 * offset of a stored guest cluster is its rank among the stored ones,
 * and that of an L2 table its rank among the needed ones: nothing else
 * is kept.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-crypto.h"
#include "qcow2-enc.h"
#include "qcow2-int.h"

struct qc_enc {
  struct blkdev *src;
  uint64_t cs;                  /* cluster size */
  uint64_t nclusters;           /* guest clusters */
  uint64_t l2_entries;
  bool extended_l2;
  bool data_file;               /* stored clusters stay in the source */
  bool all_zero;                /* clusters not stored read as zeros
                                 * (zero flag): backing file, holes=zero */
  uint32_t refcount_order;
  uint64_t per_block;           /* refcount entries per block */
  uint64_t l1_size, l1_clusters, reftable_clusters, refblocks;
  uint64_t nr_l2, nr_data, total;
  /* First cluster of each region. */
  uint64_t refblock_c, l1_c, luks_c, l2_c, data_c;
  struct qc_crypto *crypto;     /* LUKS, or NULL */
  uint8_t *luks;                /* the LUKS header area */
  size_t luks_len;
  uint32_t *l2_rank;            /* needed L2 tables before L1 entry j;
                                 * l1_size + 1 entries */
  struct qc_enc_scan scan;       /* stored: the uncompressed ones */
  bool compressed;
  struct qc_enc_streams streams;
  uint64_t comp_c;              /* first cluster of the streams (total
                                 * without compression) */
  uint8_t *header;              /* cluster 0 */
};

uint64_t
qc_enc_size (const struct qc_enc *e)
{
  return e->total * e->cs;
}

uint64_t
qc_enc_data_clusters (const struct qc_enc *e)
{
  return e->scan.stored.count + (e->compressed ? e->streams.count : 0);
}

void
qc_enc_free (struct qc_enc *e)
{
  if (!e)
    return;
  qc_enc_map_free (&e->scan.stored);
  qc_enc_map_free (&e->scan.zero);
  if (e->compressed)
    qc_enc_streams_free (&e->streams);
  free (e->l2_rank);
  free (e->header);
  qc_crypto_close (e->crypto);
  if (e->luks) {
    explicit_bzero (e->luks, e->luks_len);
    free (e->luks);
  }
  free (e);
}

#define REFUSE(...) \
  do { qc_error (__VA_ARGS__); errno = EINVAL; goto fail; } while (0)

/* Whether L1 entry j needs an L2 table. */
static bool
l2_needed (const struct qc_enc *e, uint64_t j)
{
  uint64_t from = j * e->l2_entries, to = from + e->l2_entries;

  return e->all_zero || qc_enc_map_any (&e->scan.stored, from, to) ||
    qc_enc_map_any (&e->scan.zero, from, to) ||
    (e->compressed && qc_enc_map_any (&e->streams.comp, from, to));
}

/* Refcount table and blocks for everything else: blocks cover the whole
 * file, themselves and the table included.
 */
static void
size_refcounts (struct qc_enc *e, uint64_t others)
{
  uint64_t t = 1, b = 1;

  for (;;) {
    uint64_t n = others + t + b;
    uint64_t b2 = (n + e->per_block - 1) / e->per_block;
    uint64_t t2 = (b2 * 8 + e->cs - 1) / e->cs;
    if (b2 == b && t2 == t)
      break;
    b = b2;
    t = t2;
  }
  e->reftable_clusters = t;
  e->refblocks = b;
  e->total = others + t + b;
}

struct qc_enc *
qc_enc_new (const struct qc_options *o, struct blkdev *src)
{
  const char *p = qc_prefix (o);
  struct qc_enc *e = calloc (1, sizeof *e);
  struct qc_options ho = *o;
  uint64_t vsize, j, max_l1 = QCOW2_MAX_L1_BYTES / 8;

  if (!e) {
    qc_error ("%m");
    return NULL;
  }
  e->src = src;
  e->cs = o->cluster_size ? o->cluster_size : 65536;
  e->extended_l2 = o->extended_l2;
  e->data_file = o->data_file != NULL;
  e->all_zero = o->backing_file && !o->holes_backing && o->compat != 2;
  e->l2_entries = e->cs / (o->extended_l2 ? 16 : 8);
  e->refcount_order = __builtin_ctz (o->refcount_bits ? o->refcount_bits
                                                      : 16);
  e->per_block = (e->cs * 8) >> e->refcount_order;
  if (o->encrypt) {
    struct blkdev *hdr;
    if (!o->passphrase)
      REFUSE ("%sencrypt=luks needs %spassphrase=", p, p);
    if (qc_crypto_luks_format (o->passphrase, strlen (o->passphrase),
                               o->encrypt_iter_time ? o->encrypt_iter_time
                                                    : 2000,
                               NULL, NULL, NULL, &e->luks,
                               &e->luks_len) == -1)
      goto fail;
    /* The master key, as any reader gets it. */
    hdr = blkdev_memory_new (e->luks, e->luks_len, true);
    if (!hdr)
      goto fail;
    e->crypto = qc_crypto_open (QC_CRYPT_LUKS, hdr, 0, e->luks_len,
                                o->passphrase, strlen (o->passphrase),
                                "the new LUKS header");
    blkdev_close (hdr);
    if (!e->crypto)
      goto fail;
  }

  /* The virtual size: the source's, in whole sectors as qemu-img. */
  ho.size = blkdev_size (src);
  vsize = qc_create_size (&ho);
  e->nclusters = (vsize + e->cs - 1) / e->cs;
  e->l1_size = (e->nclusters + e->l2_entries - 1) / e->l2_entries;
  if (e->l1_size > max_l1)
    REFUSE ("%s (%" PRIu64 " bytes) is too large for "
            "%scluster-size=%" PRIu64 "%s: a qcow2 image holds at most %"
            PRIu64 " bytes with it; use a larger %scluster-size=",
            src->name, ho.size, p, e->cs,
            o->extended_l2 ? " and extended L2 entries" : "",
            max_l1 * e->l2_entries * e->cs, p);
  e->l1_clusters = (e->l1_size * 8 + e->cs - 1) / e->cs;

  if (qc_enc_scan (o, src, e->cs, e->nclusters, &e->scan) == -1)
    goto fail;
  if (o->compress >= 0) {
    if (qc_enc_compress_all (o, src, &e->scan.stored, e->cs,
                             e->refcount_order, &e->streams) == -1)
      goto fail;
    e->compressed = true;
  }

  e->l2_rank = malloc ((e->l1_size + 1) * sizeof *e->l2_rank);
  if (!e->l2_rank) {
    qc_error ("%m");
    goto fail;
  }
  for (j = 0; j < e->l1_size; j++) {
    e->l2_rank[j] = e->nr_l2;
    e->nr_l2 += l2_needed (e, j);
  }
  e->l2_rank[e->l1_size] = e->nr_l2;
  e->nr_data = e->data_file ? 0 : e->scan.stored.count;

  {
    uint64_t comp = e->compressed ? (e->streams.bytes + e->cs - 1) / e->cs
                                  : 0;
    uint64_t luks = (e->luks_len + e->cs - 1) / e->cs;
    size_refcounts (e, 1 + e->l1_clusters + luks + e->nr_l2 + e->nr_data +
                    comp);
  }
  if (e->reftable_clusters * e->cs > QCOW2_MAX_REFTABLE_BYTES)
    REFUSE ("%s (%" PRIu64 " bytes) needs a refcount table "
            "larger than qemu reads (%llu bytes) with %scluster-size=%"
            PRIu64 "; use a larger %scluster-size= or smaller "
            "%srefcount-bits=", src->name, ho.size,
            QCOW2_MAX_REFTABLE_BYTES, p, e->cs, p, p);
  e->refblock_c = 1 + e->reftable_clusters;
  e->l1_c = e->refblock_c + e->refblocks;
  e->luks_c = e->l1_c + e->l1_clusters;
  e->l2_c = e->luks_c + (e->luks_len + e->cs - 1) / e->cs;
  e->data_c = e->l2_c + e->nr_l2;
  e->comp_c = e->data_c + e->nr_data;

  e->header = malloc (e->cs);
  if (!e->header) {
    qc_error ("%m");
    goto fail;
  }
  if (qc_create_header (&ho, e->header, e->cs, e->cs, e->reftable_clusters,
                        e->l1_size ? e->l1_c * e->cs : 0, e->l1_size,
                        e->luks_c * e->cs, e->luks_len) == -1)
    goto fail;
  qc_debug ("qcow2enc: %" PRIu64 " guest clusters, %" PRIu64 " stored, %"
            PRIu64 " L2 tables, file of %" PRIu64 " bytes", e->nclusters,
            e->scan.stored.count, e->nr_l2, qc_enc_size (e));
  return e;

 fail:
  qc_enc_free (e);
  return NULL;
}

/* The L1 entry whose table is the r-th needed one. */
static uint64_t
l2_owner (const struct qc_enc *e, uint64_t r)
{
  uint64_t lo = 0, hi = e->l1_size;

  /* The smallest j with l2_rank[j + 1] > r. */
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (e->l2_rank[mid + 1] > r)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

static void
fill_l2 (const struct qc_enc *e, uint64_t r, uint8_t *buf)
{
  const struct qc_enc_map *stored = &e->scan.stored;
  const unsigned esize = e->extended_l2 ? 16 : 8;
  const struct qc_enc_streams *s = &e->streams;
  const unsigned x = 62 - (__builtin_ctzll (e->cs) - 8);
  uint64_t g = l2_owner (e, r) * e->l2_entries, k;
  uint64_t rank = qc_enc_map_rank (stored, g);
  uint64_t sk = 0, spos = 0;    /* the next stream, where its slot is */

  if (e->compressed) {
    sk = qc_enc_map_rank (&s->comp, g);
    spos = sk < s->count ? qc_enc_stream_start (s, sk) : 0;
  }

  for (k = 0; k < e->l2_entries && g < e->nclusters; k++, g++) {
    uint64_t entry = 0, bitmap = 0;

    if (qc_enc_map_get (stored, g)) {
      uint64_t host = e->data_file ? g : e->data_c + rank;
      rank++;
      entry = host * e->cs | QCOW2_OFLAG_COPIED;
      bitmap = 0xffffffffULL;           /* every subcluster allocated */
    }
    else if (e->compressed && qc_enc_map_get (&s->comp, g)) {
      /* Byte offset, and the 512-byte sectors after the first. */
      uint64_t off = e->comp_c * e->cs + spos;
      uint64_t more = ((off + qc_enc_stream_len (s, sk) - 1) >> 9) -
        (off >> 9);
      entry = QCOW2_OFLAG_COMPRESSED | more << x | off;
      spos += qc_enc_stream_slot (s, sk);
      sk++;
    }
    else if (e->all_zero || qc_enc_map_get (&e->scan.zero, g)) {
      entry = e->extended_l2 ? 0 : QCOW2_OFLAG_ZERO;
      bitmap = 0xffffffffULL << 32;     /* every subcluster zero */
    }
    put_be64 (buf + k * esize, entry);
    if (e->extended_l2)
      put_be64 (buf + k * esize + 8, bitmap);
  }
}

/* Metadata cluster c (c < data_c) into buf (cs bytes). */
static void
fill_meta (const struct qc_enc *e, uint64_t c, uint8_t *buf)
{
  const uint64_t per_cluster = e->cs / 8;
  uint64_t k;

  if (c == 0) {
    memcpy (buf, e->header, e->cs);
    return;
  }
  memset (buf, 0, e->cs);
  if (c < e->refblock_c) {                      /* refcount table */
    uint64_t first = (c - 1) * per_cluster;
    for (k = 0; k < per_cluster && first + k < e->refblocks; k++)
      put_be64 (buf + k * 8, (e->refblock_c + first + k) * e->cs);
  }
  else if (c < e->l1_c) {                       /* refcount block */
    uint64_t first = (c - e->refblock_c) * e->per_block;
    uint64_t end = first + e->per_block < e->total ? first + e->per_block
                                                   : e->total;
    for (k = 0; k < e->per_block && first + k < e->comp_c; k++)
      qc_refcount_entry_set (buf, k, e->refcount_order, 1);
    if (e->compressed && end > e->comp_c) {
      uint64_t from = first > e->comp_c ? first - e->comp_c : 0;
      qc_enc_streams_refcounts (&e->streams, buf, e->refcount_order, from,
                                end - e->comp_c, from + e->comp_c - first);
    }
  }
  else if (c < e->luks_c) {                     /* L1 table */
    uint64_t first = (c - e->l1_c) * per_cluster, j;
    for (k = 0; k < per_cluster && (j = first + k) < e->l1_size; k++)
      if (e->l2_rank[j + 1] > e->l2_rank[j])
        put_be64 (buf + k * 8, (e->l2_c + e->l2_rank[j]) * e->cs |
                  QCOW2_OFLAG_COPIED);
  }
  else if (c < e->l2_c) {                       /* LUKS header area */
    uint64_t from = (c - e->luks_c) * e->cs;
    memcpy (buf, e->luks + from,
            e->luks_len - from < e->cs ? e->luks_len - from : e->cs);
  }
  else                                          /* L2 table */
    fill_l2 (e, c - e->l2_c, buf);
}

/* n bytes of data clusters at host offset host, guest bytes from
 * guest: encrypted (whole sectors) with LUKS, else read as they are.
 */
static int
read_data (struct qc_enc *e, uint8_t *buf, size_t n, uint64_t host,
           uint64_t guest)
{
  uint64_t lo = host & ~511ULL, hi = (host + n + 511) & ~511ULL;
  uint8_t *tmp = buf;
  int r = -1;

  if (!e->crypto)
    return blkdev_pread (e->src, buf, n, guest);
  /* Sectors never cross clusters: the rounded range is the same run. */
  if (lo != host || hi != host + n) {
    tmp = malloc (hi - lo);
    if (!tmp) {
      qc_error ("%m");
      return -1;
    }
  }
  if (blkdev_pread (e->src, tmp, hi - lo, guest - (host - lo)) == 0 &&
      qc_crypto_encrypt (e->crypto, lo, 0, tmp, hi - lo) == 0)
    r = 0;
  if (tmp != buf) {
    if (r == 0)
      memcpy (buf, tmp + (host - lo), n);
    free (tmp);
  }
  return r;
}

int
qc_enc_pread (struct qc_enc *e, void *buf, size_t count, uint64_t offset)
{
  const uint64_t cs = e->cs;
  uint8_t *p = buf, *tmp = NULL;
  int r = -1;

  while (count > 0) {
    uint64_t c = offset / cs, within = offset % cs;
    size_t n = cs - within < count ? cs - within : count;

    if (c >= e->total) {
      memset (p, 0, count);
      break;
    }
    if (c >= e->comp_c) {
      /* The streams, to the end of the request. */
      n = count;
      if (n > e->total * cs - offset)
        n = e->total * cs - offset;
      if (qc_enc_streams_read (&e->streams, e->src, p, n,
                               offset - e->comp_c * cs) == -1)
        goto out;
    }
    else if (c >= e->data_c) {
      /* Stored clusters: one read for a run of guest clusters that
       * follow each other in the source too.
       */
      uint64_t g = qc_enc_map_select (&e->scan.stored, c - e->data_c);
      uint64_t last = g;

      while (n < count && c + 1 < e->comp_c &&
             qc_enc_map_next (&e->scan.stored, last + 1) == last + 1) {
        size_t more = count - n < cs ? count - n : cs;
        n += more;
        last++;
        c++;
      }
      if (read_data (e, p, n, offset, g * cs + within) == -1)
        goto out;
    }
    else if (within == 0 && n == cs)
      fill_meta (e, c, p);
    else {
      if (!tmp && !(tmp = malloc (cs))) {
        qc_error ("%m");
        goto out;
      }
      fill_meta (e, c, tmp);
      memcpy (p, tmp + within, n);
    }
    p += n;
    offset += n;
    count -= n;
  }
  r = 0;
 out:
  free (tmp);
  return r;
}
