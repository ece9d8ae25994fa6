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
 * Two threads missing the same cluster both decompress it; the second
 * insert is dropped.
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

/* If the cluster whose stream is the host bytes [host, host+len) is
 * cached, copy count bytes from offset in_cluster of it to buf and
 * return true.
 */
extern bool dcache_read (struct dcache *c, uint64_t host, uint64_t len,
                         void *buf, size_t in_cluster, size_t count);

/* Add the cluster (cluster_size bytes at data, a malloc'd buffer which
 * the cache takes) decompressed from host bytes [host, host+len).  The
 * caller must still be in the I/O epoch in which it found the stream
 * referenced (see qc_io_begin): the stream cannot have been freed, so
 * dcache_drop cannot have run for it yet.
 */
extern void dcache_insert (struct dcache *c, uint64_t host, uint64_t len,
                           uint8_t *data);

/* Forget every cluster whose stream overlaps host bytes [lo, hi). */
extern void dcache_drop (struct dcache *c, uint64_t lo, uint64_t hi);

/* Forget everything (metadata rewritten wholesale). */
extern void dcache_clear (struct dcache *c);

/* Counters, for tests and debug messages. */
struct dcache_stats {
  uint64_t hits, misses;        /* dcache_read answers */
  uint64_t inserts, evictions, drops;
};
extern void dcache_get_stats (struct dcache *c, struct dcache_stats *s);

#endif /* QC_DCACHE_H */
