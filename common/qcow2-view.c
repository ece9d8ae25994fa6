/* SPDX-License-Identifier: BSD-3-Clause */
/* Reading a view (the active image or a snapshot) and describing its
 * extents.  Data I/O and decompression run without any lock held.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "parfor.h"
#include "qc-error.h"
#include "qcow2-int.h"

/* How much work one extents call does before returning early (callers
 * loop): bounded so that one request over a huge disk stays quick.
 */
#define EXTENTS_MAX_RUNS 4096

/* Part of a compressed cluster: from the cache of decompressed
 * clusters, or decompressed and then cached, so that a client reading
 * the cluster in small pieces decompresses it once.  (Whole clusters
 * are decompressed straight into the request's buffer, in parallel: see
 * dbatch below; a sequential reader with large requests gains nothing
 * from the cache, and it saves a copy.)
 *
 * Called inside the I/O epoch in which the cluster was mapped, as
 * dcache_get requires.
 */
static int
read_compressed_part (struct qc_image *img, const struct qc_run *run,
                      uint8_t *buf, uint64_t offset, uint64_t want_end)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t in_cluster = offset % cs;
  struct dcache_entry *slot = NULL;
  uint64_t host, len;
  uint8_t *tmp;
  int r;

  qc_compressed_extent (img, run->host, &host, &len);
  if (img->dcache &&
      dcache_get (img->dcache, host, len, buf, in_cluster, run->length,
                  &slot))
    return 0;
  tmp = malloc (cs);
  if (tmp)
    r = qc_read_compressed (img, run->host, tmp, want_end);
  else {
    qc_error ("%s: %m", img->name);
    r = -1;
  }
  if (r == 0)
    memcpy (buf, tmp + in_cluster, run->length);
  /* The cache takes the cluster; on failure, those waiting for it
   * try themselves.
   */
  if (slot)
    dcache_fill (img->dcache, slot, r == 0 ? tmp : NULL);
  if (r == -1 || !slot)
    free (tmp);
  return r;
}

/* Data clusters up to this size are read through the read-ahead
 * windows when they lie among a request's compressed streams (an
 * image compressed by qemu-img stores the clusters that do not
 * compress in place, between the streams).
 */
#define WINDOW_DATA_MAX (256 * 1024)

/* The host bytes [*lo, *hi) that run (at guest offset) reads, if it can
 * be read from a window: a compressed stream, or a small data cluster
 * run of an unencrypted image without an external data file.
 */
static bool
windowed_bytes (struct qc_image *img, const struct qc_run *run,
                uint64_t *lo, uint64_t *hi)
{
  uint64_t len;

  if (run->kind == QC_COMPRESSED) {
    qc_compressed_extent (img, run->host, lo, &len);
    *hi = *lo + len;
    return true;
  }
  if (run->kind == QC_DATA && !img->crypto && !img->external_data &&
      run->length <= WINDOW_DATA_MAX) {
    *lo = run->host;
    *hi = run->host + run->length;
    return true;
  }
  return false;
}

/* Where the host bytes of the request's runs from the one at offset on
 * end in the file, as long as they lie after the first one's start and
 * within QC_RAHEAD_MAX of it (qemu and we pack compressed streams
 * together, with the clusters that did not compress near them): so that
 * they are read below with one request (rahead.h).  0 unless the span
 * holds a compressed stream: plain data is read straight into the
 * request's buffer, already one request below per run.  *reached: the
 * guest offset where the runs looked at end.  Only a hint: mapping
 * errors are left to the caller's own mapping.
 */
static uint64_t
stream_span (struct qc_view *v, const struct qc_run *run,
             uint64_t offset, uint64_t count, uint64_t *reached)
{
  struct qc_image *img = v->img;
  uint64_t start, end, h, e;
  bool compressed = run->kind == QC_COMPRESSED;

  *reached = offset + run->length;
  if (!windowed_bytes (img, run, &start, &end))
    return 0;
  offset += run->length;
  count -= run->length;
  while (count > 0) {
    struct qc_run next;

    if (qc_map (v, offset, count, &next) == -1 ||
        !windowed_bytes (img, &next, &h, &e))
      break;
    /* Gaps are read too: qemu-img fills a host cluster with streams
     * while the clusters that did not compress go to the end of the
     * file, so the next run may lie a little past this one, or before
     * it (a compressed extent counts whole sectors: inside it, even).
     */
    if (h < start || e - start > QC_RAHEAD_MAX)
      break;
    if (e > end)
      end = e;
    compressed |= next.kind == QC_COMPRESSED;
    offset += next.length;
    count -= next.length;
  }
  *reached = offset;
  return compressed ? end : 0;
}

static int
nothing (void *opaque, const uint8_t *bytes)
{
  return 0;
}

/* The window for a span, loaded now from its start: the request's
 * whole compressed clusters are read later, in a batch, while data
 * runs are read at once, so the first to ask for bytes would otherwise
 * be a data run in the middle of the span.  A failure is left to the
 * reads themselves.
 */
static void
load_span (struct qc_image *img, uint64_t lo, uint64_t hi)
{
  if (hi > lo)
    rahead_use (img->rahead, img->file, 1, lo, hi, nothing, NULL);
}

/* The whole compressed clusters of one request are decompressed in
 * parallel (the caller's thread and idle pool threads, see parfor.h),
 * up to DBATCH at a time, straight into the request's buffer.  Each
 * stays in the I/O epoch in which it was mapped until it is done.
 */
#define DBATCH 32

struct dbatch {
  struct qc_image *img;
  unsigned n;
  uint64_t desc[DBATCH], want_end[DBATCH];
  uint8_t *out[DBATCH];
  unsigned epoch[DBATCH];
  int r[DBATCH], err[DBATCH];
};

static void
dbatch_item (void *arg, size_t i)
{
  struct dbatch *b = arg;

  b->r[i] = qc_read_compressed (b->img, b->desc[i], b->out[i],
                                b->want_end[i]);
  b->err[i] = errno;
}

static int
dbatch_run (struct dbatch *b)
{
  unsigned i;
  int r = 0, err = 0;

  if (b->n == 1)
    dbatch_item (b, 0);
  else if (b->n > 1)
    parfor (dbatch_item, b, b->n);
  for (i = 0; i < b->n; i++) {
    qc_io_end (b->img, b->epoch[i]);
    if (b->r[i] == -1 && r == 0) {
      r = -1;
      err = b->err[i];
    }
  }
  b->n = 0;
  if (r == -1)
    errno = err;
  return r;
}

static int
view_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  struct qc_view *v = (struct qc_view *) dev;
  struct qc_image *img = v->img;
  uint8_t *p = buf;
  /* The host bytes of the streams looked at (stream_span). */
  uint64_t span_start = 0, span_end = 0, reached, plain_until = 0;
  struct dbatch b;

  b.img = img;
  b.n = 0;
  while (count > 0) {
    struct qc_run run;
    int r = 0;
    /* Host clusters we read are not reused before we are done. */
    unsigned epoch = qc_io_begin (img);

    if (qc_map (v, offset, count, &run) == -1) {
      int err = errno;

      qc_io_end (img, epoch);
      dbatch_run (&b);
      errno = err;
      return -1;
    }
    switch (run.kind) {
    case QC_UNALLOCATED:
      if (img->backing)
        r = blkdev_pread (img->backing, p, run.length, offset);
      else
        memset (p, 0, run.length);
      break;
    case QC_ZERO:
      memset (p, 0, run.length);
      break;
    case QC_DATA: {
      uint64_t lo, hi;

      /* Among compressed streams: from their window.  Not looked for
       * before any stream was read through a window (a plain image:
       * no mapping ahead on its reads), nor again over runs already
       * looked at without finding one (linear in the request's runs).
       */
      if (offset >= plain_until && rahead_used (img->rahead) &&
          windowed_bytes (img, &run, &lo, &hi)) {
        if (hi > span_end || lo < span_start) {
          span_start = lo;
          span_end = stream_span (v, &run, offset, count, &reached);
          if (span_end == 0)
            plain_until = reached;
        }
        if (hi <= span_end) {
          r = rahead_read (img->rahead, img->file, p, run.length, lo,
                           span_end);
          break;
        }
      }
      r = qc_data_read (img, run.host, offset, p, run.length);
      break;
    }
    case QC_COMPRESSED: {
      uint64_t h, l;

      qc_compressed_extent (img, run.host, &h, &l);
      if (h + l > span_end || h < span_start) {
        span_start = h;
        span_end = run.length < count ?
          stream_span (v, &run, offset, count, &reached) : h + l;
        /* Data runs further on are read before this batch is. */
        if (span_end > h + l)
          load_span (img, span_start, span_end);
      }
      if (offset % img->h.cluster_size == 0 &&
          run.length == img->h.cluster_size) {
        /* A whole cluster: batched, its epoch held until it is done. */
        b.desc[b.n] = run.host;
        b.out[b.n] = p;
        b.want_end[b.n] = span_end;
        b.epoch[b.n++] = epoch;
        r = b.n == DBATCH ? dbatch_run (&b) : 0;
        goto next;
      }
      r = read_compressed_part (img, &run, p, offset, span_end);
      break;
    }
    }
    qc_io_end (img, epoch);
  next:
    if (r == -1) {
      int err = errno;

      dbatch_run (&b);
      errno = err;
      return -1;
    }
    p += run.length;
    offset += run.length;
    count -= run.length;
  }
  return dbatch_run (&b);
}

/* Forwards extents and remembers how far they reached. */
struct extents_track {
  blkdev_extent_fn fn;
  void *opaque;
  uint64_t reached;
};

static int
track_extent (void *opaque, uint64_t offset, uint64_t length,
              uint32_t flags)
{
  struct extents_track *t = opaque;

  t->reached = offset + length;
  return t->fn (t->opaque, offset, length, flags);
}

/* In a metadata-preallocated image, data clusters that are holes in the
 * host file read as zeros; qemu reports them as zero (not as holes: they
 * are allocated).  This maps the file's extents back to guest offsets.
 */
struct prealloc_map {
  blkdev_extent_fn fn;
  void *opaque;
  uint64_t guest, host;
  uint64_t reached;             /* bytes reported so far */
};

static int
prealloc_extent (void *opaque, uint64_t offset, uint64_t length,
                 uint32_t flags)
{
  struct prealloc_map *m = opaque;
  uint64_t delta = offset - m->host;

  m->reached = delta + length;
  return m->fn (m->opaque, m->guest + delta, length,
                flags & BLKDEV_EXTENT_ZERO ? BLKDEV_EXTENT_ZERO : 0);
}

static int
view_extents (struct blkdev *dev, uint64_t offset, uint64_t count,
              blkdev_extent_fn fn, void *opaque)
{
  struct qc_view *v = (struct qc_view *) dev;
  struct qc_image *img = v->img;
  unsigned runs = 0;

  while (count > 0 && runs++ < EXTENTS_MAX_RUNS) {
    struct qc_run run;
    int r;

    if (qc_map (v, offset, count, &run) == -1)
      return -1;
    switch (run.kind) {
    case QC_UNALLOCATED:
      if (img->backing) {
        struct extents_track t = { fn, opaque, offset };

        if (blkdev_extents (img->backing, offset, run.length,
                            track_extent, &t) == -1)
          return -1;
        /* The backing may stop early; so do we then (callers loop). */
        if (t.reached < offset + run.length)
          return 0;
        r = 0;
        break;
      }
      /* fall through */
    case QC_ZERO:
      r = fn (opaque, offset, run.length,
              BLKDEV_EXTENT_HOLE|BLKDEV_EXTENT_ZERO);
      break;
    case QC_DATA:
      if (img->metadata_prealloc) {
        struct prealloc_map m = { fn, opaque, offset, run.host, 0 };
        if (blkdev_extents (img->data, run.host, run.length,
                            prealloc_extent, &m) == -1)
          return -1;
        if (m.reached < run.length)
          return 0;             /* stopped early: callers loop */
        r = 0;
        break;
      }
      /* fall through */
    case QC_COMPRESSED:
    default:
      r = fn (opaque, offset, run.length, 0);
      break;
    }
    if (r == -1)
      return -1;
    offset += run.length;
    count -= run.length;
  }
  return 0;
}

static void
view_close (struct blkdev *dev)
{
  /* Views belong to their image: closed with it. */
}

/* A change past the end of the disk would index the L1 table past its
 * end (and write there).  nbdkit checks bounds before calling us, but
 * the core's other callers need not: refuse it, as a fixed-size device
 * refuses writes past its end (NBD: ENOSPC, EINVAL for a trim).
 */
static int
inside (struct qc_view *v, uint64_t count, uint64_t offset, int err,
        const char *what)
{
  uint64_t size = blkdev_size (&v->dev);

  if (offset > size || count > size - offset) {
    qc_error ("%s: %s of %" PRIu64 " bytes at offset %" PRIu64 " is past "
              "the end of the disk (%" PRIu64 " bytes)", v->dev.name, what,
              count, offset, size);
    errno = err;
    return 0;
  }
  return 1;
}

static int
view_pwrite (struct blkdev *dev, const void *buf, size_t count,
             uint64_t offset, unsigned flags)
{
  struct qc_view *v = (struct qc_view *) dev;

  if (!inside (v, count, offset, ENOSPC, "write"))
    return -1;
  return qc_view_write (v, buf, count, offset, flags);
}

static int
view_zero (struct blkdev *dev, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct qc_view *v = (struct qc_view *) dev;

  if (!inside (v, count, offset, ENOSPC, "zero"))
    return -1;
  return qc_view_zero (v, count, offset, flags);
}

static int
view_trim (struct blkdev *dev, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct qc_view *v = (struct qc_view *) dev;

  if (!inside (v, count, offset, EINVAL, "trim"))
    return -1;
  return qc_view_trim (v, count, offset, flags);
}

static int
view_flush (struct blkdev *dev)
{
  return qc_view_flush ((struct qc_view *) dev);
}

static const struct blkdev_ops view_ops = {
  .pread = view_pread,
  .pwrite = view_pwrite,
  .zero = view_zero,
  .trim = view_trim,
  .flush = view_flush,
  .extents = view_extents,
  .close = view_close,
};

void
qc_view_init (struct qc_view *v, struct qc_image *img,
              uint64_t *l1, uint32_t l1_size, uint64_t size,
              const char *name)
{
  memset (v, 0, sizeof *v);
  v->dev.ops = &view_ops;
  v->dev.name = (char *) name;
  v->dev.size = size;
  v->dev.readonly = true;
  v->img = img;
  v->l1 = l1;
  v->l1_size = l1_size;
}

/* The view of snapshot i: its L1 table (qcow2-snapshot.c), as a device.
 * The view does not own the table: the snapshot does.
 */
struct qc_view *
qc_snapshot_view (struct qc_image *img, uint32_t i)
{
  struct qcow2_snapshot *s = &img->snapshots[i];
  uint64_t *l1 = qc_snapshot_l1 (img, i);
  struct qc_view *v;
  char *name = NULL;

  if (!l1)
    return NULL;
  pthread_mutex_lock (&img->snap_lock);
  if (!s->view) {
    v = malloc (sizeof *v);
    if (!v || asprintf (&name, "%s (snapshot %s)", img->name,
                        s->name) == -1) {
      qc_error ("%s: %m", img->name);
      free (v);
    }
    else {
      qc_view_init (v, img, l1, s->l1_size, s->disk_size, name);
      s->view = v;
    }
  }
  v = s->view;
  pthread_mutex_unlock (&img->snap_lock);
  return v;
}
