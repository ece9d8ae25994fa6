/* SPDX-License-Identifier: BSD-3-Clause */
/* Compressed writes (compress=): whole clusters compressed, in parallel
 * for large requests, packed into host clusters as qemu packs them;
 * parts of clusters merged with what the cluster reads.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "qc-error.h"
#include "parfor.h"
#include "qcow2-int.h"

static int store_compressed (struct qc_view *v, const uint8_t *out,
                             long len, uint64_t offset,
                             struct qc_inflight *held);

/* Reserve len bytes for a compressed stream, packed after the previous
 * one like qemu does: in the current cluster, or crossing into the next
 * cluster when it is free; each host cluster a stream touches gets one
 * more reference.  meta_lock held.
 */
static int
reserve_compressed (struct qc_image *img, uint64_t len, uint64_t *off)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t v, z, least = cs;
  unsigned i, slot = 0, pass;
  int r;

  /* First pass: the stream fits in an open cluster.  Second: it
   * crosses from one into the next cluster, if that is still free.
   */
  for (pass = 0; pass < 2; pass++) {
    for (i = 0; i < QC_ZOPEN; i++) {
      z = img->zopen[i];
      if (!z)
        continue;
      /* The cluster must still be ours and have room for one more
       * reference (narrow refcounts fill up quickly).
       */
      if (qc_refcount_get (img, z / cs, &v) == -1)
        return -1;
      if (v == 0 || v >= qc_refcount_max (img)) {
        img->zopen[i] = 0;
        continue;
      }
      if (pass == 0 && len > cs - z % cs)
        continue;
      if (pass == 1) {
        r = qc_alloc_cluster_at (img, z / cs + 1);
        if (r == -1)
          return -1;
        if (r == 0)
          continue;
      }
      if (qc_refcount_add (img, z / cs, 1) == -1)
        return -1;
      *off = z;
      img->zopen[i] = (z + len) % cs ? z + len : 0;
      return 0;
    }
  }

  /* A new cluster; it replaces the open cluster with least room. */
  if (qc_alloc_clusters (img, 1, off) == -1)
    return -1;
  for (i = 0; i < QC_ZOPEN; i++) {
    uint64_t room = img->zopen[i] ? cs - img->zopen[i] % cs : 0;
    if (room < least) {
      least = room;
      slot = i;
    }
  }
  img->zopen[slot] = *off + len;
  return 0;
}

/* Compress one guest cluster into out (cluster_size bytes), outside
 * any lock.  Returns the stream's length, 0 if it does not compress,
 * -1 on error.
 */
static long
compress_cluster (struct qc_image *img, const uint8_t *data, uint8_t *out)
{
  const uint64_t cs = img->h.cluster_size;
  long len = codec_compress (img->compress, img->compress_level, data, cs,
                             out, cs - 1);

  if (len == -1)
    qc_error ("%s: compressing a cluster: %m", img->name);
  return len;
}

/* Write one whole guest cluster compressed.  Returns 1 if done, 0 if it
 * does not compress (the caller writes it normally), -1 on error.  held:
 * the caller's claim on the cluster, released here in every case.
 */
static int
write_compressed (struct qc_view *v, const uint8_t *data, uint64_t offset,
                  struct qc_inflight *held)
{
  struct qc_image *img = v->img;
  uint8_t *out = malloc (img->h.cluster_size);
  long len;
  int r;

  if (!out) {
    qc_error ("%s: %m", img->name);
    len = -1;
  }
  else
    len = compress_cluster (img, data, out);
  if (len <= 0) {
    free (out);
    if (held) {
      pthread_mutex_lock (&img->meta_lock);
      qc_inflight_release (img, held);
      pthread_mutex_unlock (&img->meta_lock);
    }
    return len == 0 ? 0 : -1;
  }
  r = store_compressed (v, out, len, offset, held);
  free (out);
  return r;
}

/* Store a compressed stream of len bytes as guest cluster offset.
 * Returns 1, or -1 on error.  held as for write_compressed.
 */
static int
store_compressed (struct qc_view *v, const uint8_t *out, long len,
                  uint64_t offset, struct qc_inflight *held)
{
  struct qc_image *img = v->img;
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  const unsigned x = 62 - (h->cluster_bits - 8);
  struct l2cache_entry *pin = NULL;
  struct qc_inflight f;
  uint8_t *table;
  uint64_t idx = (offset % qc_l2_span (img)) / cs, e, bm, off, nsect;
  int r = -1;

  pthread_mutex_lock (&img->meta_lock);
  /* A caller that read the cluster to merge a partial write holds the
   * claim on it already: nobody changed its entry since.
   */
  if (!held)
    qc_inflight_wait (img, offset, offset + cs);
  if (qc_l2_for_write (img, offset / qc_l2_span (img), true, &table,
                       &pin) == -1 ||
      reserve_compressed (img, len, &off) == -1)
    goto out_unlock;
  qc_load_entry (img, table + idx * h->l2_entry_size, &e, &bm);
  if (!held) {
    qc_inflight_claim (img, &f, offset, offset + cs);
    held = &f;
  }
  pthread_mutex_unlock (&img->meta_lock);

  r = blkdev_pwrite (img->file, out, len, off, 0);
  /* Read-ahead windows may hold what these bytes were before. */
  rahead_drop (img->rahead, off, off + len);

  pthread_mutex_lock (&img->meta_lock);
  qc_inflight_release (img, held);
  held = NULL;
  if (r == -1) {
    /* Nothing points to the stream: give its references back now. */
    uint64_t c;
    for (c = off / cs; c <= (off + len - 1) / cs; c++)
      qc_refcount_add (img, c, -1);
    goto out_unlock;
  }
  nsect = (off + len - 1) / 512 - off / 512;
  qc_store_entry (img, table, pin, idx,
               QCOW2_OFLAG_COMPRESSED | off | (nsect << x), 0);
  r = qc_drop_host (img, e);
  if (r == 0)
    r = qc_maybe_writeback (img);
  if (r == 0)
    r = 1;
 out_unlock:
  if (held)
    qc_inflight_release (img, held);
  l2cache_put (img->cache, pin);
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}

/* With compress=, a write of part of a cluster that has no host cluster
 * of its own (it reads as zeros, from the backing file, or it is
 * compressed) is merged with what the cluster reads and the whole
 * cluster is stored compressed again: clients such as nbdcopy split
 * their writes around runs of zeros, and the image must still end up
 * compressed.  A cluster with its own host cluster is written in place
 * (a concurrent in-place write elsewhere in it must not be lost).
 * Not for clusters larger than MERGE_MAX: a client writing one in
 * smaller pieces would have it decompressed and compressed again for
 * each piece (nbdcopy writes 256 KiB requests by default).
 * Returns bytes done, 0 to write it normally, -1 on error.
 */
#define MERGE_MAX (256 * 1024)
static int64_t
merge_compressed (struct qc_view *v, const uint8_t *p, uint64_t offset,
                  uint64_t count)
{
  struct qc_image *img = v->img;
  const uint64_t cs = img->h.cluster_size;
  const uint64_t cstart = offset & ~(cs - 1);
  const uint64_t cend = cstart + cs < v->dev.size ? cstart + cs : v->dev.size;
  struct l2cache_entry *pin;
  struct qc_inflight f;
  uint8_t *table, *buf;
  uint64_t e, bm;
  int r;

  /* (The partial last cluster of the disk, written whole, is fine.) */
  if (cs > MERGE_MAX && !(offset == cstart && offset + count >= cend))
    return 0;
  if (count > cend - offset)
    count = cend - offset;
  pthread_mutex_lock (&img->meta_lock);
  qc_inflight_wait (img, cstart, cstart + cs);
  if (qc_l2_for_write (img, offset / qc_l2_span (img), true, &table,
                       &pin) == -1) {
    pthread_mutex_unlock (&img->meta_lock);
    return -1;
  }
  qc_load_entry (img, table + ((cstart % qc_l2_span (img)) / cs) *
                 img->h.l2_entry_size, &e, &bm);
  l2cache_put (img->cache, pin);
  if (qc_has_own_host (img, e) ||
      (img->h.extended_l2 && (bm & 0xffffffffULL))) {
    pthread_mutex_unlock (&img->meta_lock);
    return 0;
  }
  qc_inflight_claim (img, &f, cstart, cstart + cs);
  pthread_mutex_unlock (&img->meta_lock);

  buf = calloc (1, cs);
  if (!buf) {
    qc_error ("%s: %m", img->name);
    r = -1;
    goto release;
  }
  if (blkdev_pread (&v->dev, buf, cend - cstart, cstart) == -1) {
    free (buf);
    r = -1;
    goto release;
  }
  memcpy (buf + (offset - cstart), p, count);
  r = write_compressed (v, buf, cstart, &f);   /* releases f */
  free (buf);
  return r <= 0 ? r : (int64_t) count;

 release:
  pthread_mutex_lock (&img->meta_lock);
  qc_inflight_release (img, &f);
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}

/* The clusters of one large write are compressed in parallel (the
 * caller's thread and idle pool threads, see parfor.h), then stored in
 * order; those that do not compress are written normally.
 */
#define BATCH_MAX 32

struct batch {
  struct qc_image *img;
  const uint8_t *in;
  uint8_t *out;
  long len[BATCH_MAX];
};

static void
batch_item (void *arg, size_t i)
{
  struct batch *b = arg;
  const uint64_t cs = b->img->h.cluster_size;

  b->len[i] = compress_cluster (b->img, b->in + i * cs, b->out + i * cs);
}

static int64_t
write_compressed_batch (struct qc_view *v, const uint8_t *p,
                        uint64_t offset, uint64_t count)
{
  struct qc_image *img = v->img;
  const uint64_t cs = img->h.cluster_size;
  struct batch b = { .img = img, .in = p };
  size_t n = count / cs, i;
  int64_t done = 0;

  if (n > BATCH_MAX)
    n = BATCH_MAX;
  b.out = malloc (n * cs);
  if (!b.out) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  parfor (batch_item, &b, n);
  for (i = 0; i < n; i++) {
    uint64_t at = offset + i * cs;
    if (b.len[i] == -1)
      goto err;
    if (b.len[i] > 0) {
      if (store_compressed (v, b.out + i * cs, b.len[i], at, NULL) == -1)
        goto err;
    }
    else {
      uint64_t left = cs;
      while (left > 0) {
        int64_t w = qc_write_plain (v, p + (at - offset) + (cs - left),
                                 at + (cs - left), left);
        if (w == -1)
          goto err;
        left -= w;
      }
    }
    done += cs;
  }
  free (b.out);
  return done;
 err:
  free (b.out);
  /* What was written stays written; the request fails as a whole. */
  return -1;
}

/* With compress=, whole clusters are written compressed, and so are
 * parts of clusters (merge_compressed).  Returns bytes done, or 0 if
 * the request does not start with such a cluster.
 */
int64_t
qc_write_compressed (struct qc_view *v, const uint8_t *p, uint64_t offset,
                     uint64_t count)
{
  struct qc_image *img = v->img;
  const uint64_t cs = img->h.cluster_size;
  int r;

  if (img->compress < 0)
    return 0;
  if (offset % cs || count < cs)
    return merge_compressed (v, p, offset, count);
  if (count >= 2 * cs)
    return write_compressed_batch (v, p, offset, count);
  r = write_compressed (v, p, offset, NULL);
  return r <= 0 ? r : (int64_t) cs;
}
