/* SPDX-License-Identifier: BSD-3-Clause */
/* A bounded cache of metadata tables (L2 tables, refcount blocks), one
 * cluster each, shared by every user of an image.
 *
 * Readers pin a table while they use it, so eviction never frees a table
 * in use; the cache lock is never held across I/O, so reads of different
 * clusters do not serialize.  A table being loaded is visible as a
 * placeholder that others wait for, so a stale copy read from disk can
 * never replace a newer one.
 *
 * Writers (holding the image's metadata lock) change tables in place
 * with 8-byte atomic stores and mark them dirty; dirty tables stay in
 * memory until l2cache_writeback writes them, so the image's write
 * ordering decides when they reach the disk.
 */
#ifndef QC_L2CACHE_H
#define QC_L2CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "blkdev.h"

struct l2cache;
struct l2cache_entry;

/* capacity: how many tables of table_bytes each it keeps (at least 1). */
extern struct l2cache *l2cache_new (uint64_t capacity, uint32_t table_bytes);
extern void l2cache_free (struct l2cache *c);

/* The table at host offset in dev, read on a miss.  Returns the table's
 * bytes (on-disk byte order, 8-byte aligned) and sets *pin, to pass to
 * l2cache_put when done; NULL after qc_error on a read error.
 */
extern uint8_t *l2cache_get (struct l2cache *c, struct blkdev *dev,
                             uint64_t offset, struct l2cache_entry **pin);
extern void l2cache_put (struct l2cache *c, struct l2cache_entry *pin);

/* A copy of the table at offset into buf: the cached one if there is
 * one (it may be newer than the device's), else read from dev without
 * caching it (a walk over every table would evict the working set).
 */
extern int l2cache_read (struct l2cache *c, struct blkdev *dev,
                         uint64_t offset, void *buf);

/* A new table at offset: zeros, or a copy of src; dirty as a whole.
 * Replaces any entry for the offset.  Pinned like l2cache_get.
 */
extern uint8_t *l2cache_new_table (struct l2cache *c, uint64_t offset,
                                   const uint8_t *src,
                                   struct l2cache_entry **pin);

/* Mark bytes [lo, hi) of a pinned table as changed. */
extern void l2cache_mark_dirty (struct l2cache *c, struct l2cache_entry *pin,
                                uint32_t lo, uint32_t hi);

/* Write every dirty table to dev (no flush).  -1 after qc_error. */
extern int l2cache_writeback (struct l2cache *c, struct blkdev *dev);
extern uint64_t l2cache_nr_dirty (struct l2cache *c);

/* Forget the table at offset (its cluster was freed), dirty or not. */
extern void l2cache_drop (struct l2cache *c, uint64_t offset);

/* Counters, for tests: tables read from the device, lookups served. */
extern void l2cache_stats (struct l2cache *c, uint64_t *misses,
                           uint64_t *hits);

/* 8-byte big-endian entries, read and written atomically so that
 * lock-free readers never see a torn entry.
 */
static inline uint64_t
l2cache_load64 (const uint8_t *p)
{
  return __builtin_bswap64 (__atomic_load_n ((const uint64_t *) p,
                                             __ATOMIC_ACQUIRE));
}

static inline void
l2cache_store64 (uint8_t *p, uint64_t v)
{
  __atomic_store_n ((uint64_t *) p, __builtin_bswap64 (v), __ATOMIC_RELEASE);
}

#endif /* QC_L2CACHE_H */
