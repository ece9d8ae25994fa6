/* SPDX-License-Identifier: BSD-3-Clause */
/* The encoder: the bytes of a qcow2 file holding the guest bytes of a
 * source device, computed on demand (nbdkit-qcow2enc-filter).
 *
 * At open, the source's extents (and, with zero-detect, its data) give
 * one bit per guest cluster: stored or not.  The layout follows from
 * the bits alone: header, refcount table, refcount blocks, L1 table,
 * the L2 tables that map something, then the stored clusters in guest
 * order.  Any byte of the file is computed from the bits (with a rank
 * index, so that the host offset of a guest cluster is a popcount) or
 * read from the source: memory is a bit per cluster plus a small
 * index, and the same source always gives the same bytes.
 */
#ifndef QC_QCOW2_ENC_H
#define QC_QCOW2_ENC_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkdev.h"
#include "qcow2.h"

/* A bit per cluster with a rank index (qcow2-enc-map.c). */
struct qc_enc_map {
  uint64_t nbits;
  uint64_t *words;
  uint64_t *rank;               /* set bits before each block of words */
  uint64_t count;               /* set bits in all */
};

extern int qc_enc_map_init (struct qc_enc_map *m, uint64_t nbits);
extern void qc_enc_map_free (struct qc_enc_map *m);
/* Setting and clearing are atomic: the scan's threads share words. */
extern void qc_enc_map_set_range (struct qc_enc_map *m, uint64_t from,
                                  uint64_t to);
extern void qc_enc_map_clear (struct qc_enc_map *m, uint64_t i);
/* After the last change: build the rank index. */
extern void qc_enc_map_finish (struct qc_enc_map *m);

/* Loads are atomic too (relaxed: plain loads on common hardware): the
 * scan's threads read their own bits in words whose other bits another
 * thread may be clearing.
 */
static inline uint64_t
qc_enc_map_word (const struct qc_enc_map *m, uint64_t w)
{
  return __atomic_load_n (&m->words[w], __ATOMIC_RELAXED);
}

static inline bool
qc_enc_map_get (const struct qc_enc_map *m, uint64_t i)
{
  return m->words && ((qc_enc_map_word (m, i / 64) >> (i % 64)) & 1);
}

/* In a[0..n) (n >= 1, ascending, a[0] <= v): the last index whose
 * value is <= v.  The rank index and the stream samples are both such
 * prefix sums.
 */
static inline uint64_t
qc_enc_last_le (const uint64_t *a, uint64_t n, uint64_t v)
{
  uint64_t lo = 0, hi = n;

  while (hi - lo > 1) {
    uint64_t mid = lo + (hi - lo) / 2;
    if (a[mid] <= v)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* Set bits in [0, i), after qc_enc_map_finish. */
extern uint64_t qc_enc_map_rank (const struct qc_enc_map *m, uint64_t i);
/* The index of the set bit of rank r (r < count). */
extern uint64_t qc_enc_map_select (const struct qc_enc_map *m, uint64_t r);
/* The first set bit at or after i, or nbits. */
extern uint64_t qc_enc_map_next (const struct qc_enc_map *m, uint64_t i);
/* Whether any bit in [from, to) is set. */
extern bool qc_enc_map_any (const struct qc_enc_map *m, uint64_t from,
                            uint64_t to);

/* What the scan found (qcow2-enc-scan.c): clusters to store, and (with
 * a backing file, holes=backing) clusters to mark as reading zeros.
 */
struct qc_enc_scan {
  uint64_t cluster_size;
  struct qc_enc_map stored;
  struct qc_enc_map zero;       /* empty (no words) unless needed */
};

/* Fill scan (nclusters bits) from src's extents and, with
 * o->zero_detect, its data.  -1 after qc_error.
 */
extern int qc_enc_scan (const struct qc_options *o, struct blkdev *src,
                        uint64_t cluster_size, uint64_t nclusters,
                        struct qc_enc_scan *scan);

/* Compressed clusters (qcow2-enc-compress.c): the streams' lengths,
 * packed after the uncompressed clusters, and a cache of streams.
 */
struct cache_slot;
struct qc_enc_streams {
  int type, level;              /* codec_compress's */
  uint64_t cs;
  struct qc_enc_map comp;       /* guest clusters stored compressed */
  uint64_t count;               /* streams (= comp.count) */
  uint8_t *len;                 /* stream lengths, in guest order,
                                 * len_bytes each (qc_enc_stream_len) */
  unsigned len_bytes;           /* 2 up to 64 KiB clusters, else 3 */
  uint64_t *sample;             /* slot start of every 64th stream */
  uint64_t min_slot;            /* see qcow2-enc-compress.c */
  uint64_t bytes;               /* all slots */
  pthread_mutex_t lock;         /* the cache */
  struct cache_slot *cache;
  size_t nr_cache;
  uint64_t recompressed;        /* clusters compressed again to serve */
};

/* Compress every stored cluster once; keep the lengths.  Clusters that
 * do not compress stay in stored, the others move to s->comp.  -1 after
 * qc_error.
 */
extern int qc_enc_compress_all (const struct qc_options *o,
                                struct blkdev *src,
                                struct qc_enc_map *stored,
                                uint64_t cluster_size,
                                unsigned refcount_order,
                                struct qc_enc_streams *s);
extern void qc_enc_streams_free (struct qc_enc_streams *s);

/* Stream k's slot: where it starts in the region, how long it is. */
extern uint64_t qc_enc_stream_start (const struct qc_enc_streams *s,
                                     uint64_t k);
/* A stream is shorter than its cluster (or the cluster is stored as
 * it is): 16 bits hold it up to 64 KiB clusters, 24 bits up to 2 MiB.
 */
static inline uint32_t
qc_enc_len_get (const uint8_t *len, unsigned width, uint64_t k)
{
  const uint8_t *p = len + k * width;
  uint32_t v = p[0] | (uint32_t) p[1] << 8;

  if (width == 3)
    v |= (uint32_t) p[2] << 16;
  return v;
}

static inline uint32_t
qc_enc_stream_len (const struct qc_enc_streams *s, uint64_t k)
{
  return qc_enc_len_get (s->len, s->len_bytes, k);
}

static inline uint64_t
qc_enc_stream_slot (const struct qc_enc_streams *s, uint64_t k)
{
  uint64_t len = qc_enc_stream_len (s, k);

  return len > s->min_slot ? len : s->min_slot;
}

/* Bytes [pos, pos+count) of the region of streams (compressing the
 * clusters again, from src).  -1 after qc_error.
 */
extern int qc_enc_streams_read (struct qc_enc_streams *s,
                                struct blkdev *src, uint8_t *buf,
                                size_t count, uint64_t pos);

/* Add, to the refcount entries of a block, the streams touching region
 * clusters [from, to); region cluster from is entry 'entry'.
 */
extern void qc_enc_streams_refcounts (const struct qc_enc_streams *s,
                                      uint8_t *block, unsigned order,
                                      uint64_t from, uint64_t to,
                                      uint64_t entry);

/* The encoder (qcow2-enc-layout.c).  src stays the caller's, and must
 * outlive the encoder.  NULL after qc_error.
 */
struct qc_enc;
extern struct qc_enc *qc_enc_new (const struct qc_options *o,
                                  struct blkdev *src);
extern void qc_enc_free (struct qc_enc *e);
/* The size of the qcow2 file. */
extern uint64_t qc_enc_size (const struct qc_enc *e);
/* Bytes [offset, offset+count) of the qcow2 file (past its end: zeros). */
extern int qc_enc_pread (struct qc_enc *e, void *buf, size_t count,
                         uint64_t offset);
/* How many clusters the file stores, for messages and tests. */
extern uint64_t qc_enc_data_clusters (const struct qc_enc *e);

#endif /* QC_QCOW2_ENC_H */
