/* SPDX-License-Identifier: BSD-3-Clause */
/* Refcounts: the writable refcount table and blocks (read, updated,
 * a cluster whose count drops to 0 let go), and qemu's test for a
 * metadata-preallocated image, which decides how extents of data
 * clusters that are holes in the host file are reported.
 *
 * Updates run with the image's meta_lock held.  Refcount blocks live in
 * their own table cache and reach the disk before any L2 entry that
 * points to a cluster they count (qcow2-flush.c); the allocator
 * (qcow2-alloc.c) adds blocks and grows the table.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"

uint64_t
qc_refcount_max (const struct qc_image *img)
{
  unsigned bits = 1U << img->h.refcount_order;

  return bits == 64 ? INT64_MAX : (1ULL << bits) - 1;
}

/* Byte range of an entry inside its block, for dirty tracking. */
static void
entry_bytes (uint64_t index, uint32_t order, uint32_t *lo, uint32_t *hi)
{
  unsigned bits = 1U << order;

  *lo = index * bits / 8;
  *hi = *lo + (bits >= 8 ? bits / 8 : 1);
}

int
qc_refcount_open (struct qc_image *img)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  uint64_t i, n = (uint64_t) h->refcount_table_clusters * cs / 8;
  uint64_t limit = (blkdev_size (img->file) + cs - 1) & ~(cs - 1);
  uint64_t capacity;

  img->reftable = calloc (n, sizeof *img->reftable);
  if (!img->reftable) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  if (blkdev_pread (img->file, img->reftable, n * 8,
                    h->refcount_table_offset) == -1)
    return -1;
  for (i = 0; i < n; i++) {
    uint64_t e = be64toh (img->reftable[i]);
    uint64_t off = e & QCOW2_OFFSET_MASK;
    if ((off & (cs - 1)) || off >= limit || (e & ~QCOW2_OFFSET_MASK)) {
      qc_error ("%s: refcount table entry %" PRIu64 " is invalid (0x%"
                PRIx64 "); repair the image with qemu-img check -r all",
                img->name, i, e);
      errno = EINVAL;
      return -1;
    }
    img->reftable[i] = off;
  }
  img->reftable_entries = n;
  capacity = (4ULL << 20) / cs;
  img->rcache = l2cache_new (capacity < 4 ? 4 : capacity, cs);
  if (!img->rcache)
    return -1;
  img->free_cursor = 0;
  __atomic_store_n (&img->alloc_end, limit, __ATOMIC_RELEASE);
  return 0;
}

void
qc_refcount_close (struct qc_image *img)
{
  l2cache_free (img->rcache);
  img->rcache = NULL;
  free (img->reftable);
  img->reftable = NULL;
  free (img->pending.offsets);
  free (img->waiting[0].offsets);
  free (img->waiting[1].offsets);
}

/* The refcount block counting cluster, or NULL (*pin NULL) if none. */
static int
get_block (struct qc_image *img, uint64_t cluster, uint8_t **block,
           struct l2cache_entry **pin)
{
  uint64_t i = cluster / qc_refcount_per_block (img);

  *block = NULL;
  *pin = NULL;
  if (i >= img->reftable_entries || img->reftable[i] == 0)
    return 0;
  *block = l2cache_get (img->rcache, img->file, img->reftable[i], pin);
  return *block ? 0 : -1;
}

int
qc_refcount_get (struct qc_image *img, uint64_t cluster, uint64_t *value)
{
  uint8_t *block;
  struct l2cache_entry *pin;

  if (get_block (img, cluster, &block, &pin) == -1)
    return -1;
  *value = block ?
    qc_refcount_entry_get (block, cluster % qc_refcount_per_block (img),
                           img->h.refcount_order) : 0;
  l2cache_put (img->rcache, pin);
  return 0;
}

int
qc_refcount_add (struct qc_image *img, uint64_t cluster, int64_t delta)
{
  const uint32_t order = img->h.refcount_order;
  uint64_t index = cluster % qc_refcount_per_block (img);
  uint8_t *block;
  struct l2cache_entry *pin;
  uint64_t v, nv;
  unsigned i;
  uint32_t lo, hi;

  if (get_block (img, cluster, &block, &pin) == -1)
    return -1;
  if (block &&
      qc_guard_inplace_check (img,
                              img->reftable[cluster /
                                            qc_refcount_per_block (img)],
                              img->h.cluster_size,
                              "updating a refcount in", true) == -1) {
    l2cache_put (img->rcache, pin);
    return -1;
  }
  if (!block) {
    qc_error ("%s: cluster %" PRIu64 " has no refcount block (internal "
              "error or corrupt image)", img->name, cluster);
    errno = EIO;
    return -1;
  }
  v = qc_refcount_entry_get (block, index, order);
  if (delta < 0 && v < (uint64_t) -delta) {
    qc_error ("%s: refcount of cluster %" PRIu64 " would drop below 0 "
              "(the image's refcounts are wrong; repair it with qemu-img "
              "check -r all)", img->name, cluster);
    l2cache_put (img->rcache, pin);
    errno = EIO;
    return -1;
  }
  nv = v + delta;
  if (delta > 0 && (nv < v || nv > qc_refcount_max (img))) {
    qc_error ("%s: refcount of cluster %" PRIu64 " would overflow the "
              "image's %u-bit refcounts", img->name, cluster, 1U << order);
    l2cache_put (img->rcache, pin);
    errno = EOVERFLOW;
    return -1;
  }
  if (qc_guard_refcount_changed (img, cluster, v, nv) == -1) {
    l2cache_put (img->rcache, pin);
    return -1;
  }
  qc_refcount_entry_set (block, index, order, nv);
  entry_bytes (index, order, &lo, &hi);
  l2cache_mark_dirty (img->rcache, pin, lo, hi);
  l2cache_put (img->rcache, pin);

  if (nv == 0) {
    uint64_t off = cluster * img->h.cluster_size;
    /* Whatever table this cluster held is gone. */
    l2cache_drop (img->cache, off);
    l2cache_drop (img->rcache, off);
    /* Compressed streams in it may be followed by new ones at the
     * same place.
     */
    dcache_drop (img->dcache, off, off + img->h.cluster_size);
    rahead_drop (img->rahead, off, off + img->h.cluster_size);
    if (cluster < img->free_cursor)
      img->free_cursor = cluster;
    /* Never pack compressed streams into a freed cluster (qemu 7.2 did,
     * and corrupted its images).
     */
    for (i = 0; i < QC_ZOPEN; i++)
      if (img->zopen[i] && img->zopen[i] / img->h.cluster_size == cluster)
        img->zopen[i] = 0;
    /* Unless something still refers to it (damaged refcounts). */
    if (qc_guard_may_discard (img, cluster))
      blkdev_trim (img->file, img->h.cluster_size, off, 0);
  }
  return 0;
}

/* Count clusters of the file with a non-zero refcount, stopping at
 * limit.  Reads the refcount table and blocks one at a time.
 */
static int
count_used_clusters (struct qc_image *img, uint64_t nr_clusters,
                     uint64_t limit, uint64_t *count)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  const uint64_t per_block = (cs * 8) >> h->refcount_order;
  const uint64_t table_entries =
    (uint64_t) h->refcount_table_clusters * cs / 8;
  uint8_t *block = malloc (cs);
  uint64_t i, j, n = 0;

  if (!block) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = 0; i * per_block < nr_clusters && i < table_entries && n < limit;
       i++) {
    uint8_t e[8];
    uint64_t boff;

    if (blkdev_pread (img->file, e, 8,
                      h->refcount_table_offset + i * 8) == -1)
      goto err;
    boff = get_be64 (e) & QCOW2_OFFSET_MASK;
    if (boff == 0)
      continue;
    if ((boff & (cs - 1)) || boff >= blkdev_size (img->file)) {
      qc_error ("%s: refcount table entry %" PRIu64 " points to a bad "
                "refcount block offset 0x%" PRIx64, img->name, i, boff);
      errno = EIO;
      goto err;
    }
    if (blkdev_pread (img->file, block, cs, boff) == -1)
      goto err;
    for (j = 0; j < per_block && i * per_block + j < nr_clusters &&
           n < limit; j++)
      n += qc_refcount_entry_get (block, j, h->refcount_order) != 0;
  }
  free (block);
  *count = n;
  return 0;
 err:
  free (block);
  return -1;
}

/* qemu treats an image as metadata-preallocated when it has clearly
 * more clusters in use than blocks allocated in the host file; then it
 * reports data clusters that are holes in the file as zero.  We do the
 * same, so that our extents agree with qemu's.
 */
int
qc_detect_metadata_prealloc (struct qc_image *img, bool *ret)
{
  const uint64_t cs = img->h.cluster_size;
  int64_t allocated = blkdev_file_allocated (img->file);
  uint64_t real_clusters, threshold, count;

  *ret = false;
  /* Holes in an encrypted image's clusters do not read as zeros. */
  if (allocated < 0 || img->external_data || img->crypto)
    return 0;
  real_clusters = allocated / cs;
  threshold = real_clusters * 10 / 9;
  if (threshold < real_clusters + 2)
    threshold = real_clusters + 2;
  if (count_used_clusters (img, (blkdev_size (img->file) + cs - 1) / cs,
                           threshold, &count) == -1)
    return -1;
  *ret = count >= threshold;
  return 0;
}
