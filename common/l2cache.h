/* A bounded cache of L2 tables, shared by every reader of an image.
 * Tables are pinned while in use, so eviction never frees a table a
 * reader holds; the lock is held only to look up and link entries, never
 * across I/O, so reads of different clusters do not serialize.
 */
#ifndef QC_L2CACHE_H
#define QC_L2CACHE_H

#include <stdint.h>

#include "blkdev.h"

struct l2cache;
struct l2cache_entry;

/* capacity: how many tables of table_bytes each it keeps (at least 1). */
extern struct l2cache *l2cache_new (uint64_t capacity, uint32_t table_bytes);
extern void l2cache_free (struct l2cache *c);

/* The table at host offset in dev, read on a miss.  Returns the table's
 * bytes (on-disk byte order) and sets *pin, to pass to l2cache_put when
 * done; NULL after qc_error on a read error.
 */
extern const uint8_t *l2cache_get (struct l2cache *c, struct blkdev *dev,
                                   uint64_t offset,
                                   struct l2cache_entry **pin);
extern void l2cache_put (struct l2cache *c, struct l2cache_entry *pin);

/* Counters, for tests: tables read from the device, lookups served. */
extern void l2cache_stats (struct l2cache *c, uint64_t *misses,
                           uint64_t *hits);

#endif /* QC_L2CACHE_H */
