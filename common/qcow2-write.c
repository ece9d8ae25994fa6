/* SPDX-License-Identifier: BSD-3-Clause */
/* Writing a view: in-place writes, allocating writes with copy-on-write,
 * zeroing and discarding.
 *
 * Writes to clusters that are allocated and not shared (COPIED) go
 * straight to the host cluster without the metadata lock.  Anything else
 * takes the lock only to decide and to publish: the guest clusters are
 * marked in flight, the lock is dropped for the copy-on-write reads and
 * the data write, and the new L2 entries are stored afterwards, so a new
 * entry never points at data that has not been written.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "codec.h"
#include "qc-error.h"
#include "parfor.h"
#include "qcow2-int.h"

#define ALL_ZERO_BITS 0xffffffff00000000ULL

static bool entry_reads_zero (const struct qc_image *img, uint64_t e,
                              uint64_t bm);
static int store_compressed (struct qc_view *v, const uint8_t *out,
                             long len, uint64_t offset,
                             struct qc_inflight *held);
static int64_t write_plain (struct qc_view *v, const uint8_t *p,
                            uint64_t offset, uint64_t count);
static int reads_as_zero (struct qc_view *v, uint64_t offset, uint64_t len,
                          bool *ret);

static uint64_t
l2_span (const struct qc_image *img)
{
  return img->h.cluster_size << img->h.l2_bits;
}

static bool
external_data (const struct qc_image *img)
{
  return img->external_data;
}

/* In-flight guest ranges: wait for overlaps, then claim. */
static void
wait_inflight (struct qc_image *img, uint64_t start, uint64_t end)
{
  struct qc_inflight *f;

 again:
  for (f = img->inflight; f; f = f->next)
    if (f->start < end && start < f->end) {
      pthread_cond_wait (&img->inflight_done, &img->meta_lock);
      goto again;
    }
}

static void
claim (struct qc_image *img, struct qc_inflight *f, uint64_t start,
       uint64_t end)
{
  f->start = start;
  f->end = end;
  f->next = img->inflight;
  img->inflight = f;
}

static void
release (struct qc_image *img, struct qc_inflight *f)
{
  struct qc_inflight **pp = &img->inflight;

  while (*pp != f)
    pp = &(*pp)->next;
  *pp = f->next;
  pthread_cond_broadcast (&img->inflight_done);
}

/* Begin/end a change of extended L2 entries (see qc_load_entry). */
static void
seq_begin (struct qc_image *img)
{
  __atomic_fetch_add (&img->l2_seq, 1, __ATOMIC_ACQ_REL);
}

static void
seq_end (struct qc_image *img)
{
  __atomic_fetch_add (&img->l2_seq, 1, __ATOMIC_RELEASE);
}

/* Store an entry (and bitmap) and mark it dirty. */
void
qc_store_entry (struct qc_image *img, uint8_t *table,
             struct l2cache_entry *pin, uint64_t index, uint64_t e,
             uint64_t bm)
{
  uint8_t *p = table + index * img->h.l2_entry_size;

  if (img->h.extended_l2) {
    seq_begin (img);
    l2cache_store64 (p, e);
    l2cache_store64 (p + 8, bm);
    seq_end (img);
  }
  else
    l2cache_store64 (p, e);
  l2cache_mark_dirty (img->cache, pin, index * img->h.l2_entry_size,
                      (index + 1) * img->h.l2_entry_size);
}

/* Drop the host clusters an entry referenced (freed once durable). */
static int
drop_host (struct qc_image *img, uint64_t e)
{
  const uint64_t cs = img->h.cluster_size;

  if (e & QCOW2_OFLAG_COMPRESSED) {
    uint64_t desc = e & ~(QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED);
    uint64_t coff, clen, last, c;

    qc_compressed_extent (img, desc, &coff, &clen);
    last = coff + clen - 1;
    for (c = coff & ~(cs - 1); c <= (last & ~(cs - 1)); c += cs)
      if (qc_free_later (img, c) == -1)
        return -1;
    return 0;
  }
  if ((e & QCOW2_OFFSET_MASK) == 0 || external_data (img))
    return 0;
  return qc_free_later (img, e & QCOW2_OFFSET_MASK);
}

/* The L2 table for l1_index, ready to be changed: allocated if there is
 * none (when create), copied if it is shared with a snapshot.  *table is
 * NULL when there is none and !create.
 */
static int
l2_for_write (struct qc_image *img, uint64_t l1_index, bool create,
              uint8_t **table, struct l2cache_entry **pin)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t l1e = img->active.l1[l1_index];
  uint64_t off = l1e & QCOW2_OFFSET_MASK, new_off;
  struct l2cache_entry *old_pin = NULL;
  uint8_t *old = NULL;

  *table = NULL;
  *pin = NULL;
  if (off && (off & (cs - 1))) {
    qc_error ("%s: L1 entry %" PRIu64 " points to unaligned L2 table "
              "offset 0x%" PRIx64, img->name, l1_index, off);
    errno = EIO;
    return -1;
  }
  if (off && (l1e & QCOW2_OFLAG_COPIED)) {
    if (qc_guard_inplace_check (img, off, cs, "updating the L2 table in",
                                true) == -1)
      return -1;
    *table = l2cache_get (img->cache, img->file, off, pin);
    return *table ? 0 : -1;
  }
  if (!off && !create)
    return 0;
  if (off) {                    /* shared with a snapshot: copy it */
    old = l2cache_get (img->cache, img->file, off, &old_pin);
    if (!old)
      return -1;
  }
  if (qc_alloc_clusters (img, 1, &new_off) == -1) {
    l2cache_put (img->cache, old_pin);
    return -1;
  }
  *table = l2cache_new_table (img->cache, new_off, old, pin);
  l2cache_put (img->cache, old_pin);
  if (!*table)
    return -1;
  if (off && qc_free_later (img, off) == -1)
    return -1;
  __atomic_store_n (&img->active.l1[l1_index], new_off | QCOW2_OFLAG_COPIED,
                    __ATOMIC_RELEASE);
  qc_l1_mark_dirty (img, l1_index);
  return 0;
}

/* Write back early when too many tables are dirty (meta_lock held). */
static int
maybe_writeback (struct qc_image *img)
{
  if (l2cache_nr_dirty (img->cache) + l2cache_nr_dirty (img->rcache) >
      img->dirty_limit)
    return qc_flush_locked (img);
  return 0;
}

/* Does the cluster described by e keep its host cluster for a write?
 * (Allocated, not compressed, not shared.)
 */
static bool
has_own_host (const struct qc_image *img, uint64_t e)
{
  if (e & QCOW2_OFLAG_COMPRESSED)
    return false;
  if (external_data (img))
    return (e & QCOW2_OFFSET_MASK) != 0 || (e & QCOW2_OFLAG_COPIED);
  return (e & QCOW2_OFFSET_MASK) != 0 && (e & QCOW2_OFLAG_COPIED);
}

/* One step of an allocating write: guest [offset, offset+len) inside
 * one L2 table.  Returns bytes written, 0 if the first cluster turned
 * out to be writable in place (the caller retries), -1 on error.
 */
static int64_t
write_slow (struct qc_view *v, const uint8_t *buf, uint64_t offset,
            uint64_t len)
{
  struct qc_image *img = v->img;
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size, scs = h->subcluster_size;
  const uint64_t cstart = offset & ~(cs - 1);
  const uint64_t end = offset + len;
  const uint64_t l1_index = offset / l2_span (img);
  uint64_t idx = (cstart % l2_span (img)) / cs;
  uint64_t n, i, host, wlo, whi, wend, e0, bm0, *old_e = NULL;
  uint64_t *old_bm = NULL;
  bool reuse, allocated = false, fresh;
  struct qc_inflight f;
  struct l2cache_entry *pin;
  uint8_t *table, *wbuf = NULL;
  int64_t ret = -1;

  pthread_mutex_lock (&img->meta_lock);
  wait_inflight (img, cstart, (end + cs - 1) & ~(cs - 1));
  if (l2_for_write (img, l1_index, true, &table, &pin) == -1)
    goto out_unlock;
  qc_load_entry (img, table + idx * h->l2_entry_size, &e0, &bm0);

  /* Raced with another writer that allocated it: write in place. */
  if (has_own_host (img, e0) && !h->extended_l2 && !(e0 & QCOW2_OFLAG_ZERO)) {
    ret = 0;
    goto out_put;
  }
  reuse = has_own_host (img, e0);

  /* With standard L2 entries, a run of clusters that all need a new host
   * cluster is allocated together and written at once.
   */
  n = 1;
  if (!reuse && !h->extended_l2) {
    uint64_t max = ((end + cs - 1) & ~(cs - 1)) / cs - cstart / cs;
    if (max > (1ULL << h->l2_bits) - idx)
      max = (1ULL << h->l2_bits) - idx;
    while (n < max) {
      uint64_t e, bm;
      qc_load_entry (img, table + (idx + n) * h->l2_entry_size, &e, &bm);
      if (has_own_host (img, e))
        break;
      n++;
    }
  }
  old_e = malloc (n * sizeof *old_e);
  old_bm = malloc (n * sizeof *old_bm);
  if (!old_e || !old_bm) {
    qc_error ("%s: %m", img->name);
    goto out_put;
  }
  for (i = 0; i < n; i++)
    qc_load_entry (img, table + (idx + i) * h->l2_entry_size,
                   &old_e[i], &old_bm[i]);

  if (reuse)
    host = e0 & QCOW2_OFFSET_MASK;
  else if (external_data (img))
    host = cstart;              /* data files map guest offsets 1:1 */
  else {
    if (qc_alloc_clusters (img, n, &host) == -1)
      goto out_put;
    allocated = true;
  }
  /* New clusters past the end of a growable file read as zeros already
   * (a hole, or past EOF): when what surrounds the write reads as zeros
   * too, only the written bytes need to go there, not whole clusters.
   * (Not with encryption: zeros must be stored encrypted.)
   */
  fresh = allocated && !img->crypto && !h->extended_l2 &&
    !img->data->fixed_size && host >= blkdev_size (img->data) &&
    (offset == cstart || entry_reads_zero (img, old_e[0], old_bm[0])) &&
    ((end & (cs - 1)) == 0 || end >= cstart + n * cs ||
     entry_reads_zero (img, old_e[n - 1], old_bm[n - 1]));
  claim (img, &f, cstart, cstart + n * cs);
  pthread_mutex_unlock (&img->meta_lock);

  /* What to write: whole clusters, except that with extended L2 entries
   * only the touched subclusters of a cluster with no old host cluster
   * (or of our own cluster) are written.
   */
  wend = end < cstart + n * cs ? end : cstart + n * cs;
  wlo = cstart;
  whi = cstart + n * cs;
  if (h->extended_l2 &&
      (reuse || ((e0 & QCOW2_OFFSET_MASK) == 0 &&
                 !(e0 & QCOW2_OFLAG_COMPRESSED)))) {
    wlo = offset & ~(scs - 1);
    whi = (wend + scs - 1) & ~(scs - 1);
    /* Allocated edge subclusters are written in place, never read and
     * written back: a concurrent in-place write there must not be lost.
     */
    if (reuse && (bm0 & (1ULL << ((offset - cstart) / scs))))
      wlo = offset;
    if (reuse && (bm0 & (1ULL << ((wend - 1 - cstart) / scs))))
      whi = wend;
  }
  if (fresh) {
    if (qc_data_write (img, host + (offset - cstart), offset, buf,
                       wend - offset) == -1)
      goto out_release;
    goto publish;
  }
  wbuf = malloc (whi - wlo);
  if (!wbuf) {
    qc_error ("%s: %m", img->name);
    goto out_release;
  }
  /* Copy-on-write: the old contents around the write, read through the
   * view (from the backing file, a compressed or shared cluster, or
   * zeros).
   */
  if (offset > wlo &&
      blkdev_pread (&v->dev, wbuf, offset - wlo, wlo) == -1)
    goto out_release;
  if (whi > wend &&
      blkdev_pread (&v->dev, wbuf + (wend - wlo), whi - wend, wend) == -1)
    goto out_release;
  memcpy (wbuf + (offset - wlo), buf, wend - offset);
  if (qc_data_write (img, host + (wlo - cstart), wlo, wbuf,
                     whi - wlo) == -1)
    goto out_release;

  /* Publish the new entries. */
 publish:
  pthread_mutex_lock (&img->meta_lock);
  ret = 0;
  for (i = 0; i < n; i++) {
    uint64_t c = cstart + i * cs;
    uint64_t ne = (host + i * cs) | QCOW2_OFLAG_COPIED;
    uint64_t nbm = 0;

    if (h->extended_l2) {
      uint64_t lo = wlo > c ? wlo : c, hi = whi < c + cs ? whi : c + cs;
      uint32_t first = (lo - c) / scs, last = (hi - c + scs - 1) / scs;
      uint64_t touched = (last >= 32 ? 0xffffffffULL : (1ULL << last) - 1) &
        ~((1ULL << first) - 1);

      if (old_e[i] & QCOW2_OFLAG_COMPRESSED)
        nbm = 0xffffffffULL;
      else
        nbm = (old_bm[i] | touched) & ~(touched << 32);
    }
    qc_store_entry (img, table, pin, idx + i, ne, nbm);
    if (!reuse && drop_host (img, old_e[i]) == -1)
      ret = -1;
  }
  if (ret != -1)
    ret = wend - offset;
  release (img, &f);
  if (maybe_writeback (img) == -1)
    ret = -1;
  goto out_put;

 out_release:
  pthread_mutex_lock (&img->meta_lock);
  release (img, &f);
  if (allocated)                /* nothing points to them: give back */
    for (i = 0; i < n; i++)
      qc_refcount_add (img, host / cs + i, -1);
 out_put:
  l2cache_put (img->cache, pin);
 out_unlock:
  pthread_mutex_unlock (&img->meta_lock);
  free (old_e);
  free (old_bm);
  free (wbuf);
  return ret;
}

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

/* Does the cluster entry (e, bm) read as zeros as a whole? */
static bool
entry_reads_zero (const struct qc_image *img, uint64_t e, uint64_t bm)
{
  if (e & QCOW2_OFLAG_COMPRESSED)
    return false;
  if (!img->h.extended_l2)
    return (e & QCOW2_OFLAG_ZERO) ||
      ((e & QCOW2_OFFSET_MASK) == 0 && !img->backing &&
       !(img->external_data && (e & QCOW2_OFLAG_COPIED)));
  return (bm & 0xffffffffULL) == 0 &&
    (!img->backing || (bm >> 32) == 0xffffffffULL);
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
      release (img, held);
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
  uint64_t idx = (offset % l2_span (img)) / cs, e, bm, off, nsect;
  int r = -1;

  pthread_mutex_lock (&img->meta_lock);
  /* A caller that read the cluster to merge a partial write holds the
   * claim on it already: nobody changed its entry since.
   */
  if (!held)
    wait_inflight (img, offset, offset + cs);
  if (l2_for_write (img, offset / l2_span (img), true, &table, &pin) == -1 ||
      reserve_compressed (img, len, &off) == -1)
    goto out_unlock;
  qc_load_entry (img, table + idx * h->l2_entry_size, &e, &bm);
  if (!held) {
    claim (img, &f, offset, offset + cs);
    held = &f;
  }
  pthread_mutex_unlock (&img->meta_lock);

  r = blkdev_pwrite (img->file, out, len, off, 0);

  pthread_mutex_lock (&img->meta_lock);
  release (img, held);
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
  r = drop_host (img, e);
  if (r == 0)
    r = maybe_writeback (img);
  if (r == 0)
    r = 1;
 out_unlock:
  if (held)
    release (img, held);
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
  wait_inflight (img, cstart, cstart + cs);
  if (l2_for_write (img, offset / l2_span (img), true, &table, &pin) == -1) {
    pthread_mutex_unlock (&img->meta_lock);
    return -1;
  }
  qc_load_entry (img, table + ((cstart % l2_span (img)) / cs) *
                 img->h.l2_entry_size, &e, &bm);
  l2cache_put (img->cache, pin);
  if (has_own_host (img, e) ||
      (img->h.extended_l2 && (bm & 0xffffffffULL))) {
    pthread_mutex_unlock (&img->meta_lock);
    return 0;
  }
  claim (img, &f, cstart, cstart + cs);
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
  release (img, &f);
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
        int64_t w = write_plain (v, p + (at - offset) + (cs - left),
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
static int64_t
try_compressed (struct qc_view *v, const uint8_t *p, uint64_t offset,
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

/* Write uncompressed: in place where the clusters are ours, else
 * through write_slow.  Returns bytes done (some), -1 on error.
 */
static int64_t
write_plain (struct qc_view *v, const uint8_t *p, uint64_t offset,
             uint64_t count)
{
  struct qc_image *img = v->img;
  struct qc_run run;
  unsigned epoch;
  uint64_t in_l2;
  int r;

  epoch = qc_io_begin (img);
  if (qc_map (v, offset, count, &run) == -1) {
    qc_io_end (img, epoch);
    return -1;
  }
  if (run.kind == QC_DATA && run.copied) {
    r = qc_data_write (img, run.host, offset, p, run.length);
    qc_io_end (img, epoch);
    return r == -1 ? -1 : (int64_t) run.length;
  }
  qc_io_end (img, epoch);

  in_l2 = l2_span (img) - offset % l2_span (img);
  return write_slow (v, p, offset, count < in_l2 ? count : in_l2);
}

/* Giving back the clusters of bitmaps nobody trusts any more (see
 * qcow2-bitmaps.c).  Drop one reference to each cluster of a range, if
 * it has one.
 */
static int
release_range (struct qc_image *img, uint64_t offset, uint64_t bytes,
               void *opaque)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t c, v;

  if (offset == 0 || (offset & (cs - 1)))
    return -1;
  for (c = offset / cs; bytes && c <= (offset + bytes - 1) / cs; c++) {
    if (qc_refcount_get (img, c, &v) == -1 || v == 0)
      return -1;
    if (qc_refcount_add (img, c, -1) == -1)
      return -1;
  }
  return 0;
}

static int
release_bitmaps (struct qc_image *img)
{
  int r = qc_bitmaps_walk (img, release_range, NULL);

  if (r == -1)
    return -1;
  if (r == 1)
    qc_debug ("%s: bitmap metadata is inconsistent; some of its clusters "
              "stay leaked", img->name);
  return 0;
}

/* Every write, zero and trim of a view starts here (the view's device
 * checks only bounds): the header changes due before the first change
 * of the image, and the refusals once it failed or was marked corrupt.
 * It belongs to the write path, not to opening: the view below the
 * image must not call back up into qcow2-image.c.
 */
int
qc_before_first_write (struct qc_image *img)
{
  uint64_t keep;
  int r = 0;

  if (__atomic_load_n (&img->failed, __ATOMIC_ACQUIRE)) {
    qc_error ("%s: an earlier I/O error left the image's metadata in an "
              "unknown state: reopen it", img->name);
    errno = EIO;
    return -1;
  }
  if (__atomic_load_n (&img->marked_corrupt, __ATOMIC_ACQUIRE)) {
    qc_error ("%s: the image was marked corrupt (see the first error): no "
              "more writes; repair it with qemu-img check -r all",
              img->name);
    errno = EIO;
    return -1;
  }
  if (__atomic_load_n (&img->written, __ATOMIC_ACQUIRE))
    return 0;
  pthread_mutex_lock (&img->meta_lock);
  if (img->written)
    goto out;
  /* We do not maintain persistent bitmaps or unknown autoclear features:
   * clearing their bits before the first write tells qemu they are stale.
   */
  keep = img->h.autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW;
  if (!img->external_data)
    keep = 0;
  if (keep != img->h.autoclear_features) {
    uint64_t be = htobe64 (keep);
    bool had_bitmaps =
      img->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS;

    if (qc_write_header_field (img, QCOW2_HDR_AUTOCLEAR, &be, 8) == -1 ||
        blkdev_flush (img->file) == -1) {
      r = -1;
      goto out;
    }
    img->h.autoclear_features = keep;
    /* The bit is durable: nobody trusts the bitmaps any more, so their
     * clusters can be given back.
     */
    if (had_bitmaps && release_bitmaps (img) == -1) {
      r = -1;
      goto out;
    }
  }
  /* What the refcounts cannot be trusted with, from here on. */
  if (qc_guard_build (img) == -1) {
    r = -1;
    goto out;
  }
  __atomic_store_n (&img->written, true, __ATOMIC_RELEASE);
 out:
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}

static int
view_write (struct qc_view *v, const void *buf, size_t count,
            uint64_t offset, unsigned flags)
{
  struct qc_image *img = v->img;
  const uint8_t *p = buf;

  while (count > 0) {
    uint64_t piece;
    int64_t n = try_compressed (v, p, offset, count);

    if (n == -1)
      return -1;
    if (n > 0) {
      p += n;
      offset += n;
      count -= n;
      continue;
    }
    /* With compression, whole clusters must come back here. */
    piece = count;
    if (img->compress >= 0) {
      uint64_t cs = img->h.cluster_size;
      if (piece > cs - offset % cs)
        piece = cs - offset % cs;
    }
    n = write_plain (v, p, offset, piece);
    if (n == -1)
      return -1;
    p += n;
    offset += n;
    count -= n;
  }
  if (flags & BLKDEV_FUA)
    return qc_view_flush (v);
  return 0;
}

int
qc_view_write (struct qc_view *v, const void *buf, size_t count,
               uint64_t offset, unsigned flags)
{
  if (qc_before_first_write (v->img) == -1)
    return -1;
  return view_write (v, buf, count, offset, flags);
}

int
qc_view_flush (struct qc_view *v)
{
  struct qc_image *img = v->img;
  int r;

  pthread_mutex_lock (&img->meta_lock);
  r = qc_flush_locked (img);
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}

/* Does guest [offset, offset+len) already read as zeros? */
static int
reads_as_zero (struct qc_view *v, uint64_t offset, uint64_t len, bool *ret)
{
  struct qc_image *img = v->img;

  *ret = true;
  while (len > 0) {
    struct qc_run run;
    if (qc_map (v, offset, len, &run) == -1)
      return -1;
    if (run.kind == QC_COMPRESSED && img->compress >= 0) {
      /* Rewriting it would decompress and compress it again: see
       * whether that part holds zeros already (nbdcopy zeroes the
       * holes of clusters it has written).
       */
      uint8_t *buf;
      bool zero;

      /* A cluster at a time: the run may be long. */
      if (run.length > img->h.cluster_size - offset % img->h.cluster_size)
        run.length = img->h.cluster_size - offset % img->h.cluster_size;
      buf = malloc (run.length);

      if (!buf) {
        qc_error ("%s: %m", img->name);
        return -1;
      }
      if (blkdev_pread (&v->dev, buf, run.length, offset) == -1) {
        free (buf);
        return -1;
      }
      zero = buf[0] == 0 && memcmp (buf, buf + 1, run.length - 1) == 0;
      free (buf);
      if (!zero) {
        *ret = false;
        return 0;
      }
    }
    else if (run.kind == QC_DATA || run.kind == QC_COMPRESSED ||
        (run.kind == QC_UNALLOCATED && img->backing)) {
      *ret = false;
      return 0;
    }
    offset += run.length;
    len -= run.length;
  }
  return 0;
}

/* Write explicit zeros over a partial unit (cluster or subcluster). */
static int
write_zeros (struct qc_view *v, uint64_t offset, uint64_t len,
             unsigned flags)
{
  uint8_t *zeros;
  bool already;
  int r;

  if (len == 0)
    return 0;
  if (reads_as_zero (v, offset, len, &already) == -1)
    return -1;
  if (already)
    return 0;
  if (flags & BLKDEV_FAST_ZERO) {
    errno = ENOTSUP;
    return -1;
  }
  zeros = calloc (1, len);
  if (!zeros) {
    qc_error ("%s: %m", v->img->name);
    return -1;
  }
  r = view_write (v, zeros, len, offset, 0);
  free (zeros);
  return r;
}

enum zero_mode {
  ZERO_KEEP,                    /* reads as zero, host kept if own */
  ZERO_UNMAP,                   /* reads as zero, host freed */
  DEALLOCATE,                   /* unallocated (v2: backing shows) */
};

/* Metadata-only zeroing of whole units [offset, end) in one L2 table. */
static int
zero_units (struct qc_view *v, uint64_t offset, uint64_t end,
            enum zero_mode mode)
{
  struct qc_image *img = v->img;
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size, scs = h->subcluster_size;
  const uint64_t l1_index = offset / l2_span (img);
  struct l2cache_entry *pin;
  uint8_t *table;
  uint64_t c;
  int r = 0;

  pthread_mutex_lock (&img->meta_lock);
  wait_inflight (img, offset & ~(cs - 1), (end + cs - 1) & ~(cs - 1));
  /* No table and nothing underneath: already reads as zeros. */
  if (l2_for_write (img, l1_index, img->backing != NULL, &table, &pin) == -1) {
    r = -1;
    goto out;
  }
  if (!table)
    goto out;

  for (c = offset & ~(cs - 1); c < end && r == 0; c += cs) {
    uint64_t idx = (c % l2_span (img)) / cs;
    uint64_t lo = offset > c ? offset : c, hi = end < c + cs ? end : c + cs;
    uint64_t e, bm, ne, nbm = 0;
    bool whole = lo == c && hi == c + cs;

    qc_load_entry (img, table + idx * h->l2_entry_size, &e, &bm);
    if (!h->extended_l2) {
      if (mode == DEALLOCATE)
        ne = 0;
      else if (mode == ZERO_KEEP && has_own_host (img, e))
        ne = (e & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED)) | QCOW2_OFLAG_ZERO;
      else
        ne = QCOW2_OFLAG_ZERO;
    }
    else if (whole) {
      if (mode == ZERO_KEEP && has_own_host (img, e)) {
        ne = e;
        nbm = ALL_ZERO_BITS;
      }
      else {
        ne = 0;
        nbm = mode == DEALLOCATE ? 0 : ALL_ZERO_BITS;
      }
    }
    else {
      uint32_t first = (lo - c) / scs, last = (hi - c) / scs;
      uint64_t mask = (last >= 32 ? 0xffffffffULL : (1ULL << last) - 1) &
        ~((1ULL << first) - 1);

      if (e & QCOW2_OFLAG_COMPRESSED) {
        /* Part of a compressed cluster: needs real zeros. */
        pthread_mutex_unlock (&img->meta_lock);
        l2cache_put (img->cache, pin);
        return -2;
      }
      ne = e;
      nbm = mode == DEALLOCATE ? bm & ~(mask | (mask << 32))
                               : (bm & ~mask) | (mask << 32);
    }
    if (ne == e && nbm == bm)
      continue;
    if ((ne & QCOW2_OFFSET_MASK) != (e & QCOW2_OFFSET_MASK) ||
        (e & QCOW2_OFLAG_COMPRESSED))
      r = drop_host (img, e);
    qc_store_entry (img, table, pin, idx, ne, nbm);
  }
  if (r == 0)
    r = maybe_writeback (img);
  l2cache_put (img->cache, pin);
 out:
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}

/* Zero or deallocate whole units in [offset, end), table by table. */
static int
zero_range (struct qc_view *v, uint64_t offset, uint64_t end,
            enum zero_mode mode)
{
  struct qc_image *img = v->img;

  while (offset < end) {
    uint64_t in_l2 = l2_span (img) - offset % l2_span (img);
    uint64_t stop = end - offset < in_l2 ? end : offset + in_l2;
    int r = zero_units (v, offset, stop, mode);

    if (r == -2) {              /* compressed: write real zeros */
      uint64_t cs = img->h.cluster_size;
      uint64_t cend = (offset & ~(cs - 1)) + cs;
      stop = cend < stop ? cend : stop;
      r = write_zeros (v, offset, stop - offset, 0);
    }
    if (r == -1)
      return -1;
    offset = stop;
  }
  return 0;
}

int
qc_view_zero (struct qc_view *v, uint64_t count, uint64_t offset,
              unsigned flags)
{
  struct qc_image *img = v->img;
  const struct qcow2_header *h = &img->h;
  const uint64_t unit = h->subcluster_size;
  uint64_t end = offset + count;
  uint64_t a = (offset + unit - 1) & ~(unit - 1), b = end & ~(unit - 1);
  enum zero_mode mode = (flags & BLKDEV_MAY_TRIM) ? ZERO_UNMAP : ZERO_KEEP;

  if (qc_before_first_write (img) == -1)
    return -1;

  /* The last partial unit at the end of the disk counts as whole. */
  if (end == v->dev.size)
    b = (end + unit - 1) & ~(unit - 1);
  if (a >= b) {
    a = b = offset;
    b = offset;
  }
  if (h->version == 2) {
    /* No zero flag: deallocate if nothing shows through, else write. */
    if (img->backing || a >= b) {
      if (flags & BLKDEV_FAST_ZERO) {
        bool already;
        if (reads_as_zero (v, offset, count, &already) == -1)
          return -1;
        if (!already) {
          errno = ENOTSUP;
          return -1;
        }
      }
      return write_zeros (v, offset, count, flags);
    }
    mode = DEALLOCATE;
  }
  if (a < b) {
    if (write_zeros (v, offset, a - offset, flags) == -1 ||
        zero_range (v, a, b, mode) == -1 ||
        (b < end && write_zeros (v, b, end - b, flags) == -1))
      return -1;
  }
  else if (write_zeros (v, offset, count, flags) == -1)
    return -1;
  /* A raw external data file must read as the guest does. */
  if (external_data (img) &&
      (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW) && a < b &&
      blkdev_zero (img->data, (b < end ? b : end) - a, a,
                   flags & BLKDEV_MAY_TRIM) == -1)
    return -1;
  if (flags & BLKDEV_FUA)
    return qc_view_flush (v);
  return 0;
}

int
qc_view_trim (struct qc_view *v, uint64_t count, uint64_t offset,
              unsigned flags)
{
  struct qc_image *img = v->img;
  const uint64_t cs = img->h.cluster_size;
  uint64_t end = offset + count;
  uint64_t a = (offset + cs - 1) & ~(cs - 1), b = end & ~(cs - 1);

  if (qc_before_first_write (img) == -1)
    return -1;

  /* A v2 image cannot make a cluster read as zeros without writing, and
   * deallocating would let the backing file show through: like qemu, do
   * nothing (a discard is advisory).
   */
  if (img->h.version == 2 && img->backing)
    goto out;
  /* Only whole clusters are discarded (and the partial last one). */
  if (end == v->dev.size)
    b = (end + cs - 1) & ~(cs - 1);
  if (a < b) {
    enum zero_mode mode = img->h.version == 2 ? DEALLOCATE : ZERO_UNMAP;
    if (zero_range (v, a, b, mode) == -1)
      return -1;
    if (external_data (img) &&
        (img->h.autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW) &&
        blkdev_zero (img->data, (b < end ? b : end) - a, a,
                     BLKDEV_MAY_TRIM) == -1)
      return -1;
  }
 out:
  if (flags & BLKDEV_FUA)
    return qc_view_flush (v);
  return 0;
}

int
qc_preallocate (struct qc_image *img)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  const uint64_t per_table = 1ULL << h->l2_bits;
  uint64_t nclusters = (h->size + cs - 1) / cs, c = 0;
  int r = 0;

  pthread_mutex_lock (&img->meta_lock);
  while (c < nclusters && r == 0) {
    uint64_t n = per_table - c % per_table, host, i;
    struct l2cache_entry *pin;
    uint8_t *table;

    if (n > nclusters - c)
      n = nclusters - c;
    if (l2_for_write (img, c / per_table, true, &table, &pin) == -1) {
      r = -1;
      break;
    }
    if (external_data (img))
      host = c * cs;
    else if (qc_alloc_clusters (img, n, &host) == -1) {
      l2cache_put (img->cache, pin);
      r = -1;
      break;
    }
    /* With extended L2 entries the subclusters stay unallocated, so a
     * backing file still shows through; otherwise they read as the
     * (sparse, zero) host clusters.
     */
    for (i = 0; i < n; i++)
      qc_store_entry (img, table, pin, c % per_table + i,
                   (host + i * cs) |
                   QCOW2_OFLAG_COPIED, 0);
    l2cache_put (img->cache, pin);
    c += n;
    r = maybe_writeback (img);
  }
  /* The file covers everything allocated, as qemu leaves it. */
  if (r == 0 && !img->file->fixed_size && img->alloc_end > blkdev_size (img->file))
    r = blkdev_zero (img->file, img->alloc_end - blkdev_size (img->file),
                     blkdev_size (img->file), BLKDEV_MAY_TRIM);
  if (r == 0)
    r = qc_flush_locked (img);
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}
