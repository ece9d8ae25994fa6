/* SPDX-License-Identifier: BSD-3-Clause */
/* The cluster allocator, and the free lists of clusters whose last
 * reference is gone.
 *
 * All of this runs with the image's meta_lock held.  Refcount blocks
 * (qcow2-refcount.c) live in their own table cache and reach the disk
 * before any L2 entry that points to a cluster they count
 * (qcow2-flush.c).  New refcount
 * blocks describe themselves: they are placed inside the range they
 * count, next to the clusters that needed them.  A full refcount table
 * is replaced by a larger copy written elsewhere, and the header pointer
 * is switched only once the copy is on disk.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"

/* Host offsets must fit in the 56-bit offset field of table entries. */
#define MAX_HOST_OFFSET (1ULL << 56)

/* Missing refcount blocks for clusters [start, end): their count, and
 * the highest table index they need.
 */
static uint64_t
missing_blocks (struct qc_image *img, const uint64_t *table,
                uint64_t entries, uint64_t start, uint64_t end,
                uint64_t *max_index)
{
  uint64_t pb = qc_refcount_per_block (img), b, n = 0;

  *max_index = 0;
  for (b = start / pb; b <= (end - 1) / pb; b++)
    if (b >= entries || table[b] == 0) {
      n++;
      *max_index = b;
    }
  return n;
}

/* First run of len free clusters at or after the cursor. */
static int
find_free_run (struct qc_image *img, uint64_t len, uint64_t *start)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t end_cluster = img->alloc_end / cs;
  uint64_t c = img->free_cursor, run = c, v;
  bool seen_free = false;

  while (c < run + len) {
    if (c >= end_cluster) {     /* everything past the end is free */
      c = run + len;
      break;
    }
    if (qc_refcount_get (img, c, &v) == -1)
      return -1;
    c++;
    if (v != 0) {
      run = c;
      if (!seen_free)           /* [cursor, c) all in use: skip them */
        img->free_cursor = c;
    }
    else
      seen_free = true;
  }
  *start = run;
  /* Free by its refcounts: make sure nothing refers to it all the same. */
  return qc_guard_alloc_check (img, run, len);
}

static bool
have_space (struct qc_image *img, uint64_t end_cluster)
{
  uint64_t end = end_cluster * img->h.cluster_size;

  return end_cluster <= MAX_HOST_OFFSET / img->h.cluster_size &&
    !(img->file->fixed_size && end > blkdev_size (img->file));
}

static int
check_space (struct qc_image *img, uint64_t end_cluster)
{
  if (end_cluster > MAX_HOST_OFFSET / img->h.cluster_size) {
    qc_error ("%s: no space left: qcow2 host offsets end at %" PRIu64
              " bytes", img->name, (uint64_t) MAX_HOST_OFFSET);
    errno = ENOSPC;
    return -1;
  }
  if (!have_space (img, end_cluster)) {
    /* A container cannot grow (nbdkit's file plugin does not extend
     * a file): say how to give it room.
     */
    qc_error ("%s: no space left in the image container (%" PRIu64
              " bytes, all in use): the plugin below cannot grow it; give "
              "it room first (for a file: truncate -s +SIZE FILE), or "
              "serve a qcow2 file with nbdkit-qcow2-plugin, which grows it",
              img->name, blkdev_size (img->file));
    errno = ENOSPC;
    return -1;
  }
  return 0;
}

/* Refcount blocks for [start, start+k) go at the start of the region:
 * create them (empty) and point the table at them.
 */
static int
place_blocks (struct qc_image *img, uint64_t *table, uint64_t entries,
              uint64_t start, uint64_t end, uint64_t *next_free,
              uint64_t *dirty_lo, uint64_t *dirty_hi)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t pb = qc_refcount_per_block (img), b;

  for (b = start / pb; b <= (end - 1) / pb; b++) {
    struct l2cache_entry *pin;
    if (b < entries && table[b] != 0)
      continue;
    if (!l2cache_new_table (img->rcache, *next_free * cs, NULL, &pin))
      return -1;
    l2cache_put (img->rcache, pin);
    table[b] = *next_free * cs;
    if (b < *dirty_lo) *dirty_lo = b;
    if (b + 1 > *dirty_hi) *dirty_hi = b + 1;
    (*next_free)++;
  }
  return 0;
}

/* Replace the refcount table by one with at least min_entries entries,
 * written at the end of the image with its own refcount blocks.
 */
static int
grow_reftable (struct qc_image *img, uint64_t min_entries)
{
  const uint64_t cs = img->h.cluster_size;
  const uint64_t per_cluster = cs / 8;
  uint64_t old_entries = img->reftable_entries;
  uint64_t old_offset = img->h.refcount_table_offset;
  uint64_t old_clusters = img->h.refcount_table_clusters;
  uint64_t entries = old_entries * 2, clusters, start, k = 0, m, maxb;
  uint64_t *table, next = 0, lo = UINT64_MAX, hi = 0, c;
  uint8_t hdr[12];

  if (entries < min_entries)
    entries = min_entries;
  /* A free run for the table and the blocks it needs for itself (in a
   * fixed-size container there may be nothing past the end).
   */
  for (;;) {
    entries = (entries + per_cluster - 1) / per_cluster * per_cluster;
    clusters = entries / per_cluster;
    if (find_free_run (img, clusters + k, &start) == -1)
      return -1;
    m = missing_blocks (img, img->reftable, old_entries, start,
                        start + clusters + k, &maxb);
    if (maxb >= entries) {
      entries = maxb + 1;
      continue;
    }
    if (m <= k)
      break;
    k = m;
  }
  if ((uint64_t) clusters * cs > QCOW2_MAX_REFTABLE_BYTES ||
      clusters > UINT32_MAX) {
    qc_error ("%s: refcount table would grow too large", img->name);
    errno = ENOSPC;
    return -1;
  }
  if (check_space (img, start + clusters + k) == -1)
    return -1;

  table = calloc (entries, sizeof *table);
  if (!table) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  memcpy (table, img->reftable, old_entries * sizeof *table);
  next = start + clusters;
  if (place_blocks (img, table, entries, start, start + clusters + k,
                    &next, &lo, &hi) == -1)
    goto err;

  /* Everything up to the new structures counts as allocated from now
   * on, even if the growth fails below: the allocator treats clusters
   * past alloc_end as free without looking at their refcounts.
   */
  if (next > img->alloc_end / cs)
    __atomic_store_n (&img->alloc_end, next * cs, __ATOMIC_RELEASE);

  /* Count the new table and blocks, through the new table. */
  {
    uint64_t *saved = img->reftable, saved_n = img->reftable_entries;
    int r = 0;
    img->reftable = table;
    img->reftable_entries = entries;
    for (c = start; c < next && r == 0; c++)
      r = qc_refcount_add (img, c, 1);
    if (r == -1) {
      img->reftable = saved;
      img->reftable_entries = saved_n;
      goto err;
    }
    img->reftable = saved;
    img->reftable_entries = saved_n;
  }

  /* Blocks, then the table, durable before the header points to it. */
  if (l2cache_writeback (img->rcache, img->file) == -1 ||
      qc_write_table_range (img, table, entries, 0, entries,
                            start * cs) == -1 ||
      blkdev_flush (img->file) == -1)
    goto err;
  put_be64 (hdr, start * cs);
  put_be32 (hdr + 8, clusters);
  if (qc_write_header_field (img, QCOW2_HDR_REFCOUNT_TABLE, hdr,
                             sizeof hdr) == -1 ||
      blkdev_flush (img->file) == -1) {
    /* The header may or may not point to the new table now: nothing
     * more can be written safely.
     */
    qc_error ("%s: switching to the new refcount table failed; no more "
              "writes until the image is reopened", img->name);
    img->failed = true;
    goto err;
  }

  free (img->reftable);
  img->reftable = table;
  img->reftable_entries = entries;
  img->reftable_dirty_lo = img->reftable_dirty_hi = 0;
  img->h.refcount_table_offset = start * cs;
  img->h.refcount_table_clusters = clusters;
  if (img->free_cursor == start)
    img->free_cursor = next;
  qc_debug ("%s: refcount table grown to %" PRIu64 " clusters at 0x%"
            PRIx64, img->name, clusters, start * cs);

  /* Nothing points to the old table any more. */
  for (c = 0; c < old_clusters; c++)
    if (qc_refcount_add (img, old_offset / cs + c, -1) == -1)
      return -1;
  return 0;

 err:
  /* New blocks never referenced by the table on disk must not be
   * written later over clusters that are still free.
   */
  for (c = start + clusters; c < next; c++)
    l2cache_drop (img->rcache, c * cs);
  free (table);
  return -1;
}

/* Where n clusters (and k new refcount blocks) would go: *start. */
static int
find_place (struct qc_image *img, uint64_t n, uint64_t *start, uint64_t *kp)
{
  uint64_t k = 0, m, maxb;

  for (;;) {
    if (find_free_run (img, n + k, start) == -1)
      return -1;
    m = missing_blocks (img, img->reftable, img->reftable_entries,
                        *start, *start + n + k, &maxb);
    if (m > 0 && maxb >= img->reftable_entries) {
      if (grow_reftable (img, maxb + 1) == -1)
        return -1;
      k = 0;
      continue;
    }
    if (m <= k)
      break;
    k = m;
  }
  *kp = k;
  return 0;
}

int
qc_alloc_clusters (struct qc_image *img, uint64_t n, uint64_t *offset)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t start, k, c, next;
  uint64_t lo, hi;
  int tries;

  /* In a full container, clusters freed earlier may only be waiting for
   * their unreferencing metadata to be written: write it and retry.
   */
  for (tries = 0; ; tries++) {
    if (find_place (img, n, &start, &k) == -1)
      return -1;
    if (have_space (img, start + n + k) || tries == 2 ||
        (img->pending.len + img->waiting[0].len + img->waiting[1].len) == 0)
      break;
    if (qc_flush_locked (img) == -1)
      return -1;
  }
  lo = img->reftable_dirty_lo;
  hi = img->reftable_dirty_hi;
  if (check_space (img, start + n + k) == -1)
    return -1;

  next = start;
  if (lo == hi) {
    lo = UINT64_MAX;
    hi = 0;
  }
  if (place_blocks (img, img->reftable, img->reftable_entries, start,
                    start + n + k, &next, &lo, &hi) == -1)
    return -1;
  if (lo < hi) {
    img->reftable_dirty_lo = lo;
    img->reftable_dirty_hi = hi;
  }
  /* As in grow_reftable: allocated from now on, whatever happens. */
  if (start + n + k > img->alloc_end / cs)
    __atomic_store_n (&img->alloc_end, (start + n + k) * cs,
                      __ATOMIC_RELEASE);
  /* Unused reserved slots (m < k) stay free. */
  for (c = start; c < start + n + k; c++) {
    if (c >= next && c < start + k)
      continue;
    if (qc_refcount_add (img, c, 1) == -1)
      return -1;
  }
  if (img->free_cursor == start)
    img->free_cursor = start + n + k;
  *offset = (start + k) * cs;
  if (qc_debug_alloc)
    qc_debug ("%s: allocated %" PRIu64 " cluster(s) at 0x%" PRIx64
              " (%" PRIu64 " refcount block(s) placed first)",
              img->name, n, *offset, next - start);
  return 0;
}

int
qc_alloc_cluster_at (struct qc_image *img, uint64_t cluster)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t v, b = cluster / qc_refcount_per_block (img);

  /* Only where a refcount block exists already (no layout changes). */
  if (b >= img->reftable_entries || img->reftable[b] == 0)
    return 0;
  if (qc_refcount_get (img, cluster, &v) == -1)
    return -1;
  if (v != 0)
    return 0;
  if (img->file->fixed_size && (cluster + 1) * cs > blkdev_size (img->file))
    return 0;
  if (qc_guard_alloc_check (img, cluster, 1) == -1)
    return -1;
  if (qc_refcount_add (img, cluster, 1) == -1)
    return -1;
  if ((cluster + 1) * cs > img->alloc_end)
    __atomic_store_n (&img->alloc_end, (cluster + 1) * cs, __ATOMIC_RELEASE);
  if (img->free_cursor == cluster)
    img->free_cursor = cluster + 1;
  return 1;
}

int
qc_free_later (struct qc_image *img, uint64_t offset)
{
  return qc_offset_list_add (img->name, &img->pending, offset);
}

int
qc_free_progress (struct qc_image *img)
{
  unsigned e = __atomic_load_n (&img->epoch, __ATOMIC_SEQ_CST);
  struct qc_offset_list *old = &img->waiting[(e + 1) & 1];
  struct qc_offset_list *cur = &img->waiting[e & 1];
  size_t i;

  /* Frees from the previous epoch: safe once its I/O has drained. */
  if (old->len > 0 &&
      __atomic_load_n (&img->io_active[(e + 1) & 1], __ATOMIC_SEQ_CST) == 0) {
    for (i = 0; i < old->len; i++)
      if (qc_refcount_add (img, old->offsets[i] / img->h.cluster_size,
                           -1) == -1)
        return -1;
    if (qc_debug_alloc)
      qc_debug ("%s: freed %zu cluster(s) (their I/O has drained)",
                img->name, old->len);
    old->len = 0;
  }
  /* Pending frees are durable now (callers wrote the metadata). */
  for (i = 0; i < img->pending.len; i++)
    if (qc_offset_list_add (img->name, cur,
                            img->pending.offsets[i]) == -1)
      return -1;
  img->pending.len = 0;
  /* Start a new epoch, so that the current frees can drain. */
  if (old->len == 0 && cur->len > 0 &&
      __atomic_load_n (&img->io_active[(e + 1) & 1], __ATOMIC_SEQ_CST) == 0)
    __atomic_store_n (&img->epoch, e + 1, __ATOMIC_SEQ_CST);
  return 0;
}

int
qc_free_all (struct qc_image *img)
{
  struct qc_offset_list *lists[3] = {
    &img->pending, &img->waiting[0], &img->waiting[1]
  };
  size_t i, j;

  for (j = 0; j < 3; j++) {
    for (i = 0; i < lists[j]->len; i++)
      if (qc_refcount_add (img, lists[j]->offsets[i] / img->h.cluster_size,
                           -1) == -1)
        return -1;
    lists[j]->len = 0;
  }
  return 0;
}

int
qc_write_header_field (struct qc_image *img, uint64_t offset,
                       const void *buf, size_t len)
{
  if (qc_guard_inplace_check (img, offset, len, "updating the header in",
                              true) == -1)
    return -1;
  return blkdev_pwrite (img->file, buf, len, offset, 0);
}
