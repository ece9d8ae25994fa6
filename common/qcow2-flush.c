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
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"

static int
write_l1 (struct qc_image *img)
{
  uint64_t lo = img->l1_dirty_lo & ~63ULL;
  uint64_t hi = (img->l1_dirty_hi + 63) & ~63ULL;
  uint64_t *buf, i;
  int r;

  if (hi > img->active.l1_size)
    hi = img->active.l1_size;
  buf = malloc ((hi - lo) * 8);
  if (!buf) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = lo; i < hi; i++)
    buf[i - lo] = htobe64 (__atomic_load_n (&img->active.l1[i],
                                            __ATOMIC_RELAXED));
  r = blkdev_pwrite (img->file, buf, (hi - lo) * 8,
                     img->h.l1_table_offset + lo * 8, 0);
  free (buf);
  if (r == 0)
    img->l1_dirty_lo = img->l1_dirty_hi = 0;
  return r;
}

static int
write_reftable_entries (struct qc_image *img)
{
  uint64_t lo = img->reftable_dirty_lo & ~63ULL;
  uint64_t hi = (img->reftable_dirty_hi + 63) & ~63ULL;
  uint64_t *buf, i;
  int r;

  if (hi > img->reftable_entries)
    hi = img->reftable_entries;
  buf = malloc ((hi - lo) * 8);
  if (!buf) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = lo; i < hi; i++)
    buf[i - lo] = htobe64 (img->reftable[i]);
  r = blkdev_pwrite (img->file, buf, (hi - lo) * 8,
                     img->h.refcount_table_offset + lo * 8, 0);
  free (buf);
  if (r == 0)
    img->reftable_dirty_lo = img->reftable_dirty_hi = 0;
  return r;
}

int
qc_flush_locked (struct qc_image *img)
{
  bool refs_dirty, tables_dirty;

  if (!img->writable)
    return 0;
  refs_dirty = l2cache_nr_dirty (img->rcache) > 0 ||
    img->reftable_dirty_lo != img->reftable_dirty_hi;
  tables_dirty = l2cache_nr_dirty (img->cache) > 0 ||
    img->l1_dirty_lo != img->l1_dirty_hi;

  /* 1. Data and refcounts. */
  if (img->data != img->file && blkdev_flush (img->data) == -1)
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
