/* SPDX-License-Identifier: BSD-3-Clause */
/* Coalesced reads and read-ahead of compressed streams.
 *
 * A compressed cluster's stream is small (a few KiB to tens of KiB) and
 * the streams of neighbouring clusters lie next to each other in the
 * image file.  Read one by one, each is a request to the device below:
 * over a remote device (the qcow2 filter above nbdkit's curl plugin)
 * every request costs a round trip.  This module reads a window of the
 * file around the stream asked for instead, and answers the following
 * streams from it:
 *
 *  - the window covers at least what the caller says it will need
 *    (the streams of one request's clusters: one read below);
 *  - a miss just past (or inside) an earlier window is a sequential
 *    reader: its window is twice the previous one, up to the bound;
 *  - a hit past the middle of a window is a sequential reader too: the
 *    thread reads the next window (twice as large) then, while the
 *    others decompress from this one;
 *  - a caller waiting for bytes another thread is loading waits for it
 *    rather than read them again.
 *
 * Compressed streams are read through it, and the small data clusters
 * that lie among them (those that did not compress); other data is
 * read straight into the request's buffer (already one request below
 * per run).  Coherence: host bytes read through a window change when
 * the write path writes a compressed stream or guest data there, or
 * frees the cluster; all three call rahead_drop after the write, which
 * forgets the windows over those bytes and stops windows being loaded
 * at that moment from being kept (a generation count).  A caller reads
 * a stream inside the I/O epoch in which it found it referenced, so the
 * cluster cannot be freed and reused meanwhile (a data cluster written
 * in place meanwhile is a write concurrent with the read: either bytes
 * will do).
 *
 * Thread-safe; the lock is never held during I/O or copies.
 */
#ifndef QC_RAHEAD_H
#define QC_RAHEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkdev.h"

struct rahead;

/* Windows of at most max_bytes (0: off, every read goes straight to the
 * device), nwin of them.  Buffers are allocated on first use.  NULL
 * after qc_error if out of memory.
 */
extern struct rahead *rahead_new (size_t max_bytes, unsigned nwin);
extern void rahead_free (struct rahead *ra);

/* Read [off, off+len) of dev into buf.  want_end (>= off+len, or 0) is
 * where the bytes the caller will ask for next end: the window covers
 * them when they fit in the bound.
 */
extern int rahead_read (struct rahead *ra, struct blkdev *dev, void *buf,
                        size_t len, uint64_t off, uint64_t want_end);

/* Call fn (opaque, bytes) with bytes pointing to [off, off+len) of dev:
 * inside a window when it can (no copy; the window is held until fn
 * returns), else in a buffer of their own.  fn's result is returned;
 * -1 without calling fn if the bytes could not be read.
 */
typedef int (*rahead_use_fn) (void *opaque, const uint8_t *bytes);
extern int rahead_use (struct rahead *ra, struct blkdev *dev, size_t len,
                       uint64_t off, uint64_t want_end, rahead_use_fn fn,
                       void *opaque);

/* Was a window ever loaded?  Until then nothing was read through one
 * (a plain image never is).
 */
extern bool rahead_used (struct rahead *ra);

/* Forget the windows overlapping host bytes [lo, hi). */
extern void rahead_drop (struct rahead *ra, uint64_t lo, uint64_t hi);
extern void rahead_clear (struct rahead *ra);

struct rahead_stats {
  uint64_t reads;               /* reads below (windows and direct) */
  uint64_t bytes;               /* bytes read below */
  uint64_t hits;                /* answered from a window */
  uint64_t waits;               /* hits that waited for a load */
  uint64_t ahead;               /* windows read ahead */
};
extern void rahead_get_stats (struct rahead *ra, struct rahead_stats *s);

#endif /* QC_RAHEAD_H */
