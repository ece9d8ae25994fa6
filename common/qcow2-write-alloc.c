/* SPDX-License-Identifier: BSD-3-Clause */
/* Uncompressed writes: in place where the guest clusters have host
 * clusters of their own, else allocating (with copy-on-write of the
 * parts of a cluster the request does not cover).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "qcow2-int.h"

/* An allocating write goes in three stages, so that the metadata lock
 * is held only to decide and to publish, never across data I/O:
 *
 *   plan_write (lock held)     the guest clusters are claimed (in
 *                              flight), their old entries saved, new
 *                              host clusters allocated;
 *   write_data (no lock)       copy-on-write reads around the request
 *                              and the data write;
 *   publish (lock held)        the new L2 entries are stored and the old
 *                              host clusters queued for freeing.
 *
 * A new entry is stored only after its data is written, so it never
 * points at garbage; on failure, abandon gives back what plan_write
 * allocated.
 */
struct write_plan {
  uint64_t offset, end;         /* guest bytes of the request */
  uint64_t cstart;              /* first guest cluster */
  uint64_t idx, n;              /* its index in the L2 table; clusters */
  uint64_t wlo, whi, wend;      /* guest bytes written; request's end */
  uint64_t host;                /* first host cluster */
  uint64_t *old_e, *old_bm;     /* the entries before, per cluster */
  bool reuse;                   /* host is the cluster's own */
  bool allocated;               /* host was allocated by plan_write */
  bool fresh;                   /* host reads as zeros: no copy-on-write */
  struct qc_inflight f;         /* the claim on [cstart, cstart + n*cs) */
  struct l2cache_entry *pin;    /* the L2 table, pinned */
  uint8_t *table;
};

/* How many clusters from p->idx on (at most max) need a new host
 * cluster: with standard L2 entries such a run is allocated together
 * and written at once.
 */
static uint64_t
run_to_allocate (struct qc_image *img, const struct write_plan *p,
                 uint64_t max)
{
  uint64_t n = 1;

  if (max > (1ULL << img->h.l2_bits) - p->idx)
    max = (1ULL << img->h.l2_bits) - p->idx;
  while (n < max) {
    uint64_t e, bm;
    qc_load_entry (img, p->table + (p->idx + n) * img->h.l2_entry_size,
                   &e, &bm);
    if (qc_has_own_host (img, e))
      break;
    n++;
  }
  return n;
}

/* Which guest bytes are written: whole clusters, except that with
 * extended L2 entries only the touched subclusters of a cluster with no
 * old host cluster (or of our own cluster) are written.
 */
static void
plan_range (struct qc_image *img, struct write_plan *p)
{
  const uint64_t cs = img->h.cluster_size, scs = img->h.subcluster_size;
  const uint64_t e0 = p->old_e[0], bm0 = p->old_bm[0];

  p->wend = p->end < p->cstart + p->n * cs ? p->end : p->cstart + p->n * cs;
  p->wlo = p->cstart;
  p->whi = p->cstart + p->n * cs;
  if (img->h.extended_l2 &&
      (p->reuse || ((e0 & QCOW2_OFFSET_MASK) == 0 &&
                    !(e0 & QCOW2_OFLAG_COMPRESSED)))) {
    p->wlo = p->offset & ~(scs - 1);
    p->whi = (p->wend + scs - 1) & ~(scs - 1);
    /* Allocated edge subclusters are written in place, never read and
     * written back: a concurrent in-place write there must not be lost.
     */
    if (p->reuse && (bm0 & (1ULL << ((p->offset - p->cstart) / scs))))
      p->wlo = p->offset;
    if (p->reuse && (bm0 & (1ULL << ((p->wend - 1 - p->cstart) / scs))))
      p->whi = p->wend;
  }
}

/* Stage 1, meta_lock held.  Returns 1 planned (the lock stays held, the
 * table pinned), 0 if the first cluster turned out to be writable in
 * place, -1 on error (nothing held but the lock).
 */
static int
plan_write (struct qc_image *img, struct write_plan *p)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  uint64_t e0, bm0, i;

  qc_inflight_wait (img, p->cstart, (p->end + cs - 1) & ~(cs - 1));
  if (qc_l2_for_write (img, p->offset / qc_l2_span (img), true, &p->table,
                       &p->pin) == -1)
    return -1;
  qc_load_entry (img, p->table + p->idx * h->l2_entry_size, &e0, &bm0);

  /* Raced with another writer that allocated it: write in place. */
  if (qc_has_own_host (img, e0) && !h->extended_l2 &&
      !(e0 & QCOW2_OFLAG_ZERO))
    return 0;
  p->reuse = qc_has_own_host (img, e0);
  p->n = 1;
  if (!p->reuse && !h->extended_l2)
    p->n = run_to_allocate (img, p, ((p->end + cs - 1) & ~(cs - 1)) / cs -
                            p->cstart / cs);
  p->old_e = malloc (p->n * sizeof *p->old_e);
  p->old_bm = malloc (p->n * sizeof *p->old_bm);
  if (!p->old_e || !p->old_bm) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = 0; i < p->n; i++)
    qc_load_entry (img, p->table + (p->idx + i) * h->l2_entry_size,
                   &p->old_e[i], &p->old_bm[i]);

  if (p->reuse)
    p->host = e0 & QCOW2_OFFSET_MASK;
  else if (qc_external_data (img))
    p->host = p->cstart;        /* data files map guest offsets 1:1 */
  else {
    if (qc_alloc_clusters (img, p->n, &p->host) == -1)
      return -1;
    p->allocated = true;
  }
  plan_range (img, p);
  /* New clusters past the end of a growable file read as zeros already
   * (a hole, or past EOF): when what surrounds the write reads as zeros
   * too, only the written bytes need to go there, not whole clusters.
   * (Not with encryption: zeros must be stored encrypted.)
   */
  p->fresh = p->allocated && !img->crypto && !h->extended_l2 &&
    !img->data->fixed_size && p->host >= blkdev_size (img->data) &&
    (p->offset == p->cstart ||
     qc_entry_reads_zero (img, p->old_e[0], p->old_bm[0])) &&
    ((p->end & (cs - 1)) == 0 || p->end >= p->cstart + p->n * cs ||
     qc_entry_reads_zero (img, p->old_e[p->n - 1], p->old_bm[p->n - 1]));
  qc_inflight_claim (img, &p->f, p->cstart, p->cstart + p->n * cs);
  return 1;
}

/* Stage 2, no lock: the data, with the old contents around the request
 * read through the view (from the backing file, a compressed or shared
 * cluster, or zeros).
 */
static int
write_data (struct qc_view *v, const struct write_plan *p,
            const uint8_t *buf)
{
  struct qc_image *img = v->img;
  uint8_t *wbuf;
  int r = -1;

  if (p->fresh)
    return qc_data_write (img, p->host + (p->offset - p->cstart), p->offset,
                          buf, p->wend - p->offset);
  wbuf = malloc (p->whi - p->wlo);
  if (!wbuf) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  if (p->offset > p->wlo &&
      blkdev_pread (&v->dev, wbuf, p->offset - p->wlo, p->wlo) == -1)
    goto out;
  if (p->whi > p->wend &&
      blkdev_pread (&v->dev, wbuf + (p->wend - p->wlo), p->whi - p->wend,
                    p->wend) == -1)
    goto out;
  memcpy (wbuf + (p->offset - p->wlo), buf, p->wend - p->offset);
  r = qc_data_write (img, p->host + (p->wlo - p->cstart), p->wlo, wbuf,
                     p->whi - p->wlo);
 out:
  free (wbuf);
  return r;
}

/* The new subcluster bitmap of cluster i of the plan. */
static uint64_t
new_bitmap (const struct qc_image *img, const struct write_plan *p,
            uint64_t i)
{
  const uint64_t cs = img->h.cluster_size, scs = img->h.subcluster_size;
  const uint64_t c = p->cstart + i * cs;
  uint64_t lo = p->wlo > c ? p->wlo : c;
  uint64_t hi = p->whi < c + cs ? p->whi : c + cs;
  uint32_t first = (lo - c) / scs, last = (hi - c + scs - 1) / scs;
  uint64_t touched = (last >= 32 ? 0xffffffffULL : (1ULL << last) - 1) &
    ~((1ULL << first) - 1);

  if (p->old_e[i] & QCOW2_OFLAG_COMPRESSED)
    return 0xffffffffULL;
  return (p->old_bm[i] | touched) & ~(touched << 32);
}

/* Stage 3, meta_lock held: the new entries. */
static int
publish (struct qc_image *img, struct write_plan *p)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t i;
  int r = 0;

  for (i = 0; i < p->n; i++) {
    uint64_t ne = (p->host + i * cs) | QCOW2_OFLAG_COPIED;
    uint64_t nbm = img->h.extended_l2 ? new_bitmap (img, p, i) : 0;

    qc_store_entry (img, p->table, p->pin, p->idx + i, ne, nbm);
    if (!p->reuse && qc_drop_host (img, p->old_e[i]) == -1)
      r = -1;
  }
  qc_inflight_release (img, &p->f);
  if (qc_maybe_writeback (img) == -1)
    r = -1;
  return r;
}

/* After a failed write_data, meta_lock held: nothing points to what
 * plan_write allocated, so it is given back.
 */
static void
abandon (struct qc_image *img, struct write_plan *p)
{
  uint64_t i;

  qc_inflight_release (img, &p->f);
  if (p->allocated)
    for (i = 0; i < p->n; i++)
      qc_refcount_add (img, p->host / img->h.cluster_size + i, -1);
}

/* One allocating write: guest [offset, offset+len) inside one L2 table.
 * Returns bytes written, 0 if the first cluster turned out to be
 * writable in place (the caller retries), -1 on error.
 */
static int64_t
write_allocating (struct qc_view *v, const uint8_t *buf, uint64_t offset,
                  uint64_t len)
{
  struct qc_image *img = v->img;
  const uint64_t cs = img->h.cluster_size;
  struct write_plan p = {
    .offset = offset, .end = offset + len, .cstart = offset & ~(cs - 1),
    .idx = ((offset & ~(cs - 1)) % qc_l2_span (img)) / cs,
  };
  int64_t ret = -1;
  int r;

  pthread_mutex_lock (&img->meta_lock);
  r = plan_write (img, &p);
  if (r <= 0) {
    ret = r;
    goto out;
  }
  pthread_mutex_unlock (&img->meta_lock);

  r = write_data (v, &p, buf);

  pthread_mutex_lock (&img->meta_lock);
  if (r == -1)
    abandon (img, &p);
  else if (publish (img, &p) == 0)
    ret = p.wend - offset;
 out:
  l2cache_put (img->cache, p.pin);
  pthread_mutex_unlock (&img->meta_lock);
  free (p.old_e);
  free (p.old_bm);
  return ret;
}

/* Write uncompressed: in place where the clusters are ours, else
 * allocating.  Returns bytes done (some), -1 on error.
 */
int64_t
qc_write_plain (struct qc_view *v, const uint8_t *p, uint64_t offset,
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

  in_l2 = qc_l2_span (img) - offset % qc_l2_span (img);
  return write_allocating (v, p, offset, count < in_l2 ? count : in_l2);
}
