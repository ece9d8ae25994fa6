/* SPDX-License-Identifier: BSD-3-Clause */
/* The encoder's scan at open: which guest clusters the qcow2 file
 * stores, from the source's extents and (zero-detect) its data.  See
 * qcow2-enc.h.
 *
 * A cluster touched by data (an extent without the zero flag, which
 * includes a hole that does not read as zeros) is stored.  With a
 * backing file the rest must still read as zeros, unless holes=backing
 * says the source's holes mean "as in the backing file": in a v3 image
 * the L2 entry says so (the zero flag), a v2 image has no such flag, so
 * it stores those clusters as data (zeros), as qemu does.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "parfor.h"
#include "qc-error.h"
#include "qcow2-enc.h"

/* Zero-detect reads the stored clusters in chunks of this many bytes
 * (at least one cluster), several chunks at once.
 */
#define SCAN_CHUNK (4ULL << 20)

struct walk {
  struct qc_enc_scan *scan;
  uint64_t pos;                 /* where the next extent starts */
  bool backing, v2, holes_backing;
};

static int
extent (void *opaque, uint64_t offset, uint64_t length, uint32_t flags)
{
  struct walk *w = opaque;
  const uint64_t cs = w->scan->cluster_size;
  uint64_t first = offset / cs, end = (offset + length + cs - 1) / cs;

  w->pos = offset + length;
  if (!(flags & BLKDEV_EXTENT_ZERO))
    qc_enc_map_set_range (&w->scan->stored, first, end);
  else if (!w->backing)
    ;                           /* unallocated reads as zeros */
  else if ((flags & BLKDEV_EXTENT_HOLE) && w->holes_backing)
    ;                           /* through to the backing file */
  else if (w->v2)
    qc_enc_map_set_range (&w->scan->stored, first, end);
  else if (w->holes_backing)
    qc_enc_map_set_range (&w->scan->zero, first, end);
  /* else: every cluster not stored gets the zero flag (the layout). */
  return 0;
}

static bool
is_zero (const uint8_t *p, size_t n)
{
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

struct detect {
  struct qc_enc_scan *scan;
  struct blkdev *src;
  uint64_t chunk_clusters;
  bool mark_zero;               /* zero clusters get the zero flag */
  int err;                      /* first errno, 0 = none */
};

/* Read the stored clusters of chunk i and unstore those reading as
 * zeros.
 */
static void
detect_chunk (void *arg, size_t i)
{
  struct detect *d = arg;
  struct qc_enc_map *m = &d->scan->stored;
  const uint64_t cs = d->scan->cluster_size;
  uint64_t c = i * d->chunk_clusters;
  uint64_t end = c + d->chunk_clusters;
  uint8_t *buf = NULL;

  if (end > m->nbits)
    end = m->nbits;
  while (!__atomic_load_n (&d->err, __ATOMIC_RELAXED) &&
         (c = qc_enc_map_next (m, c)) < end) {
    uint64_t run = c + 1, k;

    while (run < end && qc_enc_map_get (m, run))
      run++;
    if (!buf && !(buf = malloc (d->chunk_clusters * cs))) {
      qc_error ("zero-detect: cannot allocate a buffer: %m");
      __atomic_store_n (&d->err, ENOMEM, __ATOMIC_RELAXED);
      break;
    }
    if (blkdev_pread (d->src, buf, (run - c) * cs, c * cs) == -1) {
      __atomic_store_n (&d->err, errno ? errno : EIO, __ATOMIC_RELAXED);
      break;
    }
    for (k = c; k < run; k++)
      if (is_zero (buf + (k - c) * cs, cs)) {
        qc_enc_map_clear (m, k);
        if (d->mark_zero)
          qc_enc_map_set_range (&d->scan->zero, k, k + 1);
      }
    c = run;
  }
  free (buf);
}

int
qc_enc_scan (const struct qc_options *o, struct blkdev *src,
             uint64_t cluster_size, uint64_t nclusters,
             struct qc_enc_scan *scan)
{
  const uint64_t size = blkdev_size (src);
  struct walk w = {
    .scan = scan,
    .backing = o->backing_file != NULL,
    .v2 = o->compat == 2,
    .holes_backing = o->holes_backing,
  };

  memset (scan, 0, sizeof *scan);
  scan->cluster_size = cluster_size;
  if (qc_enc_map_init (&scan->stored, nclusters) == -1)
    return -1;
  if (w.backing && !w.v2 && w.holes_backing &&
      qc_enc_map_init (&scan->zero, nclusters) == -1)
    goto fail;

  while (w.pos < size) {
    uint64_t before = w.pos;
    if (blkdev_extents (src, w.pos, size - w.pos, extent, &w) == -1)
      goto fail;
    if (w.pos <= before) {
      qc_error ("%s: block status at offset %" PRIu64 " made no progress",
                src->name, before);
      errno = EIO;
      goto fail;
    }
  }

  /* v2 with a backing file and holes=zero: nothing can read as zeros
   * except stored zeros.
   */
  if (w.backing && w.v2 && !w.holes_backing)
    qc_enc_map_set_range (&scan->stored, 0, nclusters);
  else if (o->zero_detect && nclusters) {
    struct detect d = {
      .scan = scan, .src = src,
      .chunk_clusters = SCAN_CHUNK > cluster_size ? SCAN_CHUNK / cluster_size
                                                  : 1,
      .mark_zero = scan->zero.words != NULL,
    };
    /* v2 with holes=backing: a zero cluster must stay stored. */
    if (!(w.backing && w.v2))
      parfor (detect_chunk, &d,
              (nclusters + d.chunk_clusters - 1) / d.chunk_clusters);
    if (d.err) {
      errno = d.err;
      goto fail;
    }
  }
  qc_enc_map_finish (&scan->stored);
  qc_enc_map_finish (&scan->zero);
  return 0;

 fail:
  qc_enc_map_free (&scan->stored);
  qc_enc_map_free (&scan->zero);
  return -1;
}
