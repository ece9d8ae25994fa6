/* SPDX-License-Identifier: BSD-3-Clause */
/* A bounded cache of decompressed clusters, so that a client reading a
 * compressed cluster in pieces smaller than the cluster (4 KiB reads of
 * 64 KiB clusters, 256 KiB reads of 2 MiB clusters) decompresses it once
 * rather than once per piece.
 *
 * One cache per image.  A cluster is known by where its compressed
 * stream lies in the image file (host offset and length).  Those host
 * bytes keep their meaning as long as some L2 entry points to them; the
 * write path calls dcache_drop for every host cluster it frees, before
 * the cluster can be allocated again, so a stream written later at the
 * same place can never be answered with the old cluster's bytes.
 *
 * Thread-safe.  The lock is held only to look up, link and unlink:
 * never while decompressing nor while copying out (an entry being
 * copied from holds a reference, so eviction or a drop only unlinks it).
 * The first thread to miss a cluster decompresses it; others asking for
 * it meanwhile wait for that rather than decompress it again (clients
 * such as nbdcopy have neighbouring pieces of a cluster in flight at
 * once).
 */
#ifndef QC_DCACHE_H
#define QC_DCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dcache;

/* A cache of at most max_bytes of clusters of cluster_size bytes.  NULL
 * (no error) if not even one cluster fits: caching is off.  NULL after
 * qc_error if out of memory.
 */
extern struct dcache *dcache_new (uint64_t max_bytes, uint32_t cluster_size);
extern void dcache_free (struct dcache *c);

struct dcache_entry;

/* Look for the cluster whose stream is the host bytes [host, host+len):
 *
 *  - cached (or being decompressed by another thread: waited for):
 *    count bytes from offset in_cluster of it are copied to buf, and
 *    the result is true;
 *  - not cached: false, and *slot is set to a place reserved for it.
 *    The caller decompresses the cluster and must then call
 *    dcache_fill (others asking for it wait until then).  *slot is NULL
 *    when nothing could be reserved (out of memory): decompress without
 *    caching.
 *
 * The caller must be in the I/O epoch in which it found the stream
 * referenced (see qc_io_begin) until dcache_fill: the stream cannot be
 * freed meanwhile, so dcache_drop cannot run for it.
 */
extern bool dcache_get (struct dcache *c, uint64_t host, uint64_t len,
                        void *buf, size_t in_cluster, size_t count,
                        struct dcache_entry **slot);

/* Give the reserved slot its cluster: data (cluster_size bytes, a
 * malloc'd buffer which the cache takes), or NULL if decompressing
 * failed (the slot is given up; those waiting try themselves).
 */
extern void dcache_fill (struct dcache *c, struct dcache_entry *slot,
                         uint8_t *data);

/* Forget every cluster whose stream overlaps host bytes [lo, hi). */
extern void dcache_drop (struct dcache *c, uint64_t lo, uint64_t hi);

/* Forget everything (metadata rewritten wholesale). */
extern void dcache_clear (struct dcache *c);

/* Counters, for tests and debug messages. */
struct dcache_stats {
  uint64_t hits, misses;        /* dcache_get answers */
  uint64_t waits;               /* hits that waited for a decompression */
  uint64_t inserts, evictions, drops;
};
extern void dcache_get_stats (struct dcache *c, struct dcache_stats *s);

#endif /* QC_DCACHE_H */
