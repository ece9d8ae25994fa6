/* SPDX-License-Identifier: BSD-3-Clause */
/* Making an image writable: the write locks, the checks that refuse a
 * corrupt image, and the rebuild of a dirty image's refcounts (lazy
 * refcounts, not closed cleanly: its refcounts are stale, so before the
 * first write we rebuild them from the references, which is what
 * qemu-img check -r all does).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qc-progress.h"
#include "qc-lock.h"
#include "qcow2-int.h"

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* Where the new refcount table and blocks go: the first run of clusters
 * that holds them (they cover themselves too) with no reference and no
 * old refcount structure in it.  Never over the old structures: until
 * the header points to the new table, the old one is what a crash
 * leaves.  A fixed-size container has no room past its end.
 */
static int
place_structures (struct qc_image *img, const struct qc_refs *r,
                  uint64_t per_block, uint64_t *startp, uint64_t *tp,
                  uint64_t *nbp)
{
  const uint64_t cs = img->h.cluster_size;
  const uint64_t limit = img->file->fixed_size ?
    blkdev_size (img->file) / cs : UINT64_MAX / cs;
  const uint64_t t0 = img->h.refcount_table_offset / cs;
  uint64_t start = 1, t = 0, nb = 0, c, k, nold = 0, *old;
  int ret = -1;

  old = malloc ((img->h.refcount_table_clusters + img->reftable_entries + 1)
                * sizeof *old);
  if (!old) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (k = 0; k < img->h.refcount_table_clusters; k++)
    old[nold++] = t0 + k;
  for (k = 0; k < img->reftable_entries; k++)
    if (img->reftable[k])
      old[nold++] = img->reftable[k] / cs;
  qsort (old, nold, sizeof *old, cmp_u64);

  for (;;) {
    /* How many blocks and table clusters cover the image and this run. */
    for (;;) {
      uint64_t end = start + t + nb > r->nr_clusters ?
        start + t + nb : r->nr_clusters;
      uint64_t nb2 = (end + per_block - 1) / per_block;
      uint64_t t2 = (nb2 * 8 + cs - 1) / cs;
      if (nb2 == nb && t2 == t)
        break;
      nb = nb2;
      t = t2;
    }
    if (start + t + nb > limit || t * cs > QCOW2_MAX_REFTABLE_BYTES) {
      qc_error ("%s: no room for new refcount structures (%" PRIu64
                " clusters)", img->name, t + nb);
      errno = ENOSPC;
      goto out;
    }
    for (c = start; c < start + t + nb; c++)
      if ((c < r->nr_clusters && r->count[c]) ||
          bsearch (&c, old, nold, sizeof *old, cmp_u64))
        break;
    if (c == start + t + nb)
      break;
    start = c + 1;
  }
  *startp = start;
  *tp = t;
  *nbp = nb;
  ret = 0;
 out:
  free (old);
  return ret;
}

int
qc_rebuild_refcounts (struct qc_image *img)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  const uint64_t per_block = (cs * 8) >> h->refcount_order;
  const uint64_t max = h->refcount_order == 6 ? INT64_MAX :
    (1ULL << (1U << h->refcount_order)) - 1;
  struct qc_refs r;
  uint64_t start, nb = 0, t = 0, b, c, *table = NULL;
  uint8_t *block = NULL, hdr[12];
  int ret = -1;

  /* Clusters are freed here without qc_refcount_add seeing them. */
  dcache_clear (img->dcache);
  rahead_clear (img->rahead);
  /* The old refcount structures are not counted: they become free. */
  if (qc_count_refs (img, false, &r) == -1)
    return -1;
  for (c = 0; c < r.nr_clusters; c++)
    if (r.count[c] > max) {
      qc_error ("%s: cluster %" PRIu64 " has %" PRIu32 " references, more "
                "than the image's refcounts can hold", img->name, c,
                r.count[c]);
      errno = EOVERFLOW;
      goto out;
    }

  /* New table and blocks in the first free run that holds them (they
   * cover themselves), never over the old refcount structures: until the
   * header points to the new table, the old one is what a crash leaves.
   * A fixed-size container has no room past its end.
   */
  if (place_structures (img, &r, per_block, &start, &t, &nb) == -1)
    goto out;
  if (t * cs > QCOW2_MAX_REFTABLE_BYTES) {
    qc_error ("%s: the image is too large for a refcount table", img->name);
    errno = EFBIG;
    goto out;
  }
  table = calloc (t * cs / 8, sizeof *table);
  block = malloc (cs);
  if (!table || !block) {
    qc_error ("%s: %m", img->name);
    goto out;
  }
  for (b = 0; b < nb; b++) {
    memset (block, 0, cs);
    for (c = b * per_block; c < (b + 1) * per_block; c++) {
      uint64_t v = 0;
      if (c >= start && c < start + t + nb)
        v = 1;                  /* the new table and blocks */
      else if (c < r.nr_clusters)
        v = r.count[c];
      if (v)
        qc_refcount_entry_set (block, c - b * per_block, h->refcount_order, v);
    }
    table[b] = htobe64 ((start + t + b) * cs);
    if (blkdev_pwrite (img->file, block, cs, (start + t + b) * cs, 0) == -1)
      goto out;
  }
  if (blkdev_pwrite (img->file, table, t * cs, start * cs, 0) == -1 ||
      blkdev_flush (img->file) == -1)
    goto out;
  put_be64 (hdr, start * cs);
  put_be32 (hdr + 8, t);
  if (qc_write_header_field (img, QCOW2_HDR_REFCOUNT_TABLE, hdr,
                             sizeof hdr) == -1 ||
      blkdev_flush (img->file) == -1)
    goto out;
  img->h.refcount_table_offset = start * cs;
  img->h.refcount_table_clusters = t;
  qc_debug ("%s: refcounts rebuilt: table at 0x%" PRIx64 ", %" PRIu64
            " blocks", img->name, start * cs, nb);
  ret = 0;
 out:
  free (table);
  free (block);
  qc_refs_free (&r);
  return ret;
}

/* A dirty image's refcounts are stale (lazy refcounts, not closed
 * cleanly): rebuild them from the references, then clear the bit.
 */
static int
rebuild_dirty (struct qc_image *img)
{
  uint64_t incompat = img->h.incompatible_features & ~QCOW2_INCOMPAT_DIRTY;
  uint64_t be = htobe64 (incompat);

  int r;

  qc_step_begin (img->name, "the image is dirty: rebuilding its refcounts");
  r = qc_rebuild_refcounts (img);
  qc_step_end ();
  if (r == -1 ||
      qc_write_header_field (img, QCOW2_HDR_INCOMPAT, &be, 8) == -1 ||
      blkdev_flush (img->file) == -1)
    return -1;
  img->h.incompatible_features = incompat;
  return 0;
}

/* Do [a, a + alen) and [b, b + blen) share a cluster? */
static bool
clusters_meet (uint64_t cs, uint64_t a, uint64_t alen, uint64_t b,
               uint64_t blen)
{
  if (alen == 0 || blen == 0)
    return false;
  /* Last clusters computed without overflow: a hostile offset may be
   * anything.
   */
  return a / cs <= b / cs + (b % cs + blen - 1) / cs &&
    b / cs <= a / cs + (a % cs + alen - 1) / cs;
}

/* The structure the active L1 table shares a cluster with, or NULL.
 * Writes update the active L1 table in place: in a corrupt image where
 * it lies in the header, the snapshot table, a snapshot's L1 table, the
 * refcount structures or the encryption header, they would overwrite
 * those (qemu's overlap checks refuse such writes and mark the image
 * corrupt).  Refcounts cannot tell: a repair counts both references.
 */
static const char *
active_l1_overlap (struct qc_image *img)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  const uint64_t a = h->l1_table_offset, alen = (uint64_t) h->l1_size * 8;
  uint64_t k;

  if (clusters_meet (cs, a, alen, 0, cs))
    return "the header";
  if (h->nb_snapshots &&
      clusters_meet (cs, a, alen, h->snapshots_offset, img->snapshots_size))
    return "the snapshot table";
  for (k = 0; k < img->nr_snapshots; k++)
    if (clusters_meet (cs, a, alen, img->snapshots[k].l1_table_offset,
                       (uint64_t) img->snapshots[k].l1_size * 8))
      return "the L1 table of a snapshot";
  if (clusters_meet (cs, a, alen, h->refcount_table_offset,
                     (uint64_t) h->refcount_table_clusters * cs))
    return "the refcount table";
  for (k = 0; k < img->reftable_entries; k++)
    if (img->reftable[k] && clusters_meet (cs, a, alen, img->reftable[k], cs))
      return "a refcount block";
  if (h->has_crypto_ext &&
      clusters_meet (cs, a, alen, h->crypto_offset, h->crypto_length))
    return "the encryption header";
  return NULL;
}

/* After a refused write lock: the read locks alone again, and the
 * device read-only.
 */
static void
relock_readonly (struct blkdev *dev)
{
  int fd = blkdev_file_fd (dev);

  if (fd >= 0) {
    qc_unlock_image (fd);
    qc_lock_image (fd, false, dev->name);
  }
  __atomic_store_n (&dev->readonly, true, __ATOMIC_RELEASE);
}

/* What rules out writing whatever the files allow (-1 after qc_error),
 * under img->lock.
 */
static int
refuse_writing (struct qc_image *img)
{
  if (img->default_view != &img->active.dev && !img->is_raw) {
    qc_error ("%s: a snapshot is served: it is read-only", img->name);
    errno = EROFS;
    return -1;
  }
  if (img->force_readonly) {
    qc_error ("%s: the check found corruptions: serving read-only",
              img->name);
    errno = EROFS;
    return -1;
  }
  if (img->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT) {
    qc_error ("%s: the image is marked corrupt: it can only be served "
              "read-only (nbdkit -r) until it is repaired (qemu-img check "
              "-r all)", img->name);
    errno = EROFS;
    return -1;
  }
  return 0;
}

/* Could dev be written, and locked for writing, now? */
static int
probe_file (struct qc_image *img, struct blkdev *dev, const char *role)
{
  if (dev->readonly && !blkdev_can_write (dev)) {
    qc_error ("%s%s%s: cannot be written (read-only file, filesystem or "
              "device)", role ? role : "", role ? " " : "", dev->name);
    errno = EROFS;
    return -1;
  }
  return img->locking ? qc_lock_probe_file (dev, role) : 0;
}

int
qc_image_writable_probe (struct qc_image *img)
{
  int r = 0;

  pthread_mutex_lock (&img->lock);
  if (!img->writable &&
      (refuse_writing (img) == -1 ||
       probe_file (img, img->file, NULL) == -1 ||
       (img->external_data &&
        probe_file (img, img->data, "external data file") == -1)))
    r = -1;
  pthread_mutex_unlock (&img->lock);
  return r;
}

int
qc_image_make_writable (struct qc_image *img)
{
  const char *overlap;
  int r = -1;

  pthread_mutex_lock (&img->lock);
  if (img->writable) {
    r = 0;
    goto out;
  }
  if (refuse_writing (img) == -1)
    goto out;
  /* The same devices, opened read-write from the start where the files
   * allow it (readers in flight keep using them), and qemu's write locks
   * on the same open file description.
   */
  if ((img->file->readonly && blkdev_make_writable (img->file) == -1) ||
      (img->external_data && img->data->readonly &&
       blkdev_make_writable (img->data) == -1))
    goto out;
  if (img->locking &&
      (qc_lock_file (img->file, true, NULL) == -1 ||
       (img->external_data &&
        qc_lock_file (img->data, true, "external data file") == -1))) {
    /* Back to what we had: read-only, with read locks. */
    relock_readonly (img->file);
    if (img->external_data)
      relock_readonly (img->data);
    goto out;
  }
  if (img->is_raw) {
    __atomic_store_n (&img->writable, true, __ATOMIC_RELEASE);
    r = 0;
    goto out;
  }
  if ((img->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) &&
      rebuild_dirty (img) == -1)
    goto out;
  if (!img->reftable && qc_refcount_open (img) == -1)
    goto out;
  overlap = active_l1_overlap (img);
  if (overlap) {
    qc_error ("%s: the active L1 table shares a cluster with %s (a "
              "corrupt image): it can only be served read-only",
              img->name, overlap);
    errno = EROFS;
    goto out;
  }
  img->dirty_limit = (32ULL << 20) / img->h.cluster_size;
  if (img->dirty_limit < 64)
    img->dirty_limit = 64;

  __atomic_store_n (&img->active.dev.readonly, false, __ATOMIC_RELEASE);
  __atomic_store_n (&img->writable, true, __ATOMIC_RELEASE);
  r = 0;
 out:
  pthread_mutex_unlock (&img->lock);
  return r;
}
