/* SPDX-License-Identifier: BSD-3-Clause */
/* Metadata writeback in the order that keeps the image consistent after
 * a crash at any moment:
 *
 *   1. refcount blocks (and the data they count) reach the disk before
 *      any L2 or L1 entry points to a newly counted cluster; new blocks
 *      are durable before the refcount table points to them;
 *   2. then the L2 tables, and once they are durable the L1 table;
 *   3. only then are clusters they no longer reference freed.
 *
 * A crash between the steps can leak clusters, never corrupt the image.
 *
 * This file and the allocator (qcow2-alloc.c) call each other, the one
 * cycle between the core's files (tests/check-core-cycles.sh allows no
 * other).  It is inherent: step 3 is the allocator's (qc_free_progress
 * moves frees on once the metadata that unreferenced them is durable),
 * and the allocator needs writeback in turn: in a full container the
 * only free clusters may be those waiting for it (qc_alloc_clusters
 * calls qc_flush_locked and retries), and a grown refcount table is
 * written with qc_write_table_range.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"

int
qc_write_table_range (struct qc_image *img, const uint64_t *table,
                      uint64_t entries, uint64_t lo, uint64_t hi,
                      uint64_t offset)
{
  uint64_t *buf, i;
  int r;

  /* Whole 512-byte sectors of the table. */
  lo &= ~63ULL;
  hi = (hi + 63) & ~63ULL;
  if (hi > entries)
    hi = entries;
  if (lo >= hi)
    return 0;
  buf = malloc ((hi - lo) * 8);
  if (!buf) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = lo; i < hi; i++)
    buf[i - lo] = htobe64 (__atomic_load_n (&table[i], __ATOMIC_RELAXED));
  r = blkdev_pwrite (img->file, buf, (hi - lo) * 8, offset + lo * 8, 0);
  free (buf);
  return r;
}

static int
write_l1 (struct qc_image *img)
{
  if (qc_guard_inplace_check (img, img->h.l1_table_offset,
                              (uint64_t) img->active.l1_size * 8,
                              "updating the L1 table in", true) == -1 ||
      qc_write_table_range (img, img->active.l1, img->active.l1_size,
                            img->l1_dirty_lo, img->l1_dirty_hi,
                            img->h.l1_table_offset) == -1)
    return -1;
  img->l1_dirty_lo = img->l1_dirty_hi = 0;
  return 0;
}

static int
write_reftable_entries (struct qc_image *img)
{
  if (qc_guard_inplace_check (img, img->h.refcount_table_offset,
                              img->reftable_entries * 8,
                              "updating the refcount table in", true) == -1 ||
      qc_write_table_range (img, img->reftable, img->reftable_entries,
                            img->reftable_dirty_lo, img->reftable_dirty_hi,
                            img->h.refcount_table_offset) == -1)
    return -1;
  img->reftable_dirty_lo = img->reftable_dirty_hi = 0;
  return 0;
}

int
qc_flush_locked (struct qc_image *img)
{
  bool refs_dirty, tables_dirty;

  if (!__atomic_load_n (&img->writable, __ATOMIC_ACQUIRE))
    return 0;
  /* After a failed header switch the on-disk layout is unknown: writing
   * the in-memory state back could only make it worse.
   */
  if (img->failed) {
    errno = EIO;
    return -1;
  }
  refs_dirty = l2cache_nr_dirty (img->rcache) > 0 ||
    img->reftable_dirty_lo != img->reftable_dirty_hi;
  tables_dirty = l2cache_nr_dirty (img->cache) > 0 ||
    img->l1_dirty_lo != img->l1_dirty_hi;

  if (qc_debug_flush && (refs_dirty || tables_dirty))
    qc_debug ("%s: writeback: %zu refcount block(s), %zu L2 table(s)%s%s",
              img->name, l2cache_nr_dirty (img->rcache),
              l2cache_nr_dirty (img->cache),
              img->reftable_dirty_lo != img->reftable_dirty_hi ?
              ", refcount table" : "",
              img->l1_dirty_lo != img->l1_dirty_hi ? ", L1 table" : "");

  /* 1. Data and refcounts. */
  if (img->external_data && blkdev_flush (img->data) == -1)
    return -1;
  if (refs_dirty) {
    if (l2cache_writeback (img->rcache, img->file) == -1)
      return -1;
    if (img->reftable_dirty_lo != img->reftable_dirty_hi &&
        (blkdev_flush (img->file) == -1 ||
         write_reftable_entries (img) == -1))
      return -1;
  }
  if (blkdev_flush (img->file) == -1)
    return -1;

  /* 2. Tables that point to clusters. */
  if (tables_dirty) {
    if (l2cache_writeback (img->cache, img->file) == -1)
      return -1;
    /* New L2 tables are durable before the L1 table points to them. */
    if (img->l1_dirty_lo != img->l1_dirty_hi &&
        (blkdev_flush (img->file) == -1 || write_l1 (img) == -1))
      return -1;
    if (blkdev_flush (img->file) == -1)
      return -1;
  }

  /* 3. What they stopped pointing to can be freed. */
  return qc_free_progress (img);
}
