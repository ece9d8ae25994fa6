/* SPDX-License-Identifier: BSD-3-Clause */
/* The plugin below a filter as a block device: see next-blkdev.h.
 * nbdkit requests carry 32-bit lengths, so long requests are split.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "next-blkdev.h"
#include "qc-error.h"

#define MAX_REQUEST (32U << 20)

struct next_dev {
  struct blkdev dev;
  nbdkit_next *next;
  bool can_fua, can_extents, can_trim, can_flush;
};

static int
fail (struct blkdev *dev, const char *what, uint64_t offset, int err)
{
  errno = err ? err : EIO;
  qc_error ("%s: %s at offset %" PRIu64 " failed: %m", dev->name, what,
            offset);
  return -1;
}

static int
next_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  struct next_dev *d = (struct next_dev *) dev;
  char *p = buf;
  int err = 0;

  while (count > 0) {
    uint32_t n = count < MAX_REQUEST ? count : MAX_REQUEST;
    if (d->next->pread (d->next, p, n, offset, 0, &err) == -1)
      return fail (dev, "read", offset, err);
    p += n;
    offset += n;
    count -= n;
  }
  return 0;
}

static int
next_pwrite (struct blkdev *dev, const void *buf, size_t count,
             uint64_t offset, unsigned flags)
{
  struct next_dev *d = (struct next_dev *) dev;
  const char *p = buf;
  uint32_t f = (flags & BLKDEV_FUA) && d->can_fua ? NBDKIT_FLAG_FUA : 0;

  /* nbdkit asserts on requests the plugin below did not advertise:
   * FUA, trim and flush are only passed on when it can do them.
   */
  int err = 0;

  if (offset > dev->size || count > dev->size - offset) {
    qc_error ("%s: write past the end of the container (offset %" PRIu64
              ")", dev->name, offset);
    errno = ENOSPC;
    return -1;
  }
  while (count > 0) {
    uint32_t n = count < MAX_REQUEST ? count : MAX_REQUEST;
    if (d->next->pwrite (d->next, p, n, offset, f, &err) == -1)
      return fail (dev, "write", offset, err);
    p += n;
    offset += n;
    count -= n;
  }
  if ((flags & BLKDEV_FUA) && !d->can_fua && d->can_flush &&
      d->next->flush (d->next, 0, &err) == -1)
    return fail (dev, "flush", offset, err);
  return 0;
}

static int
next_zero (struct blkdev *dev, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct next_dev *d = (struct next_dev *) dev;
  uint32_t f = (flags & BLKDEV_MAY_TRIM ? NBDKIT_FLAG_MAY_TRIM : 0) |
    (flags & BLKDEV_FAST_ZERO ? NBDKIT_FLAG_FAST_ZERO : 0);
  int err = 0;

  while (count > 0) {
    uint32_t n = count < MAX_REQUEST ? count : MAX_REQUEST;
    if (d->next->zero (d->next, n, offset, f, &err) == -1)
      return fail (dev, "zero", offset, err);
    offset += n;
    count -= n;
  }
  return 0;
}

static int
next_trim (struct blkdev *dev, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct next_dev *d = (struct next_dev *) dev;
  int err = 0;

  if (!d->can_trim)
    return 0;
  while (count > 0) {
    uint32_t n = count < MAX_REQUEST ? count : MAX_REQUEST;
    /* Trim is advisory: a failure is not the client's problem. */
    if (d->next->trim (d->next, n, offset, 0, &err) == -1)
      qc_debug ("%s: trim at offset %" PRIu64 " failed (ignored)",
                dev->name, offset);
    offset += n;
    count -= n;
  }
  return 0;
}

static int
next_flush (struct blkdev *dev)
{
  struct next_dev *d = (struct next_dev *) dev;
  int err = 0;

  if (!d->can_flush)
    return 0;
  if (d->next->flush (d->next, 0, &err) == -1)
    return fail (dev, "flush", 0, err);
  return 0;
}

static int
next_extents (struct blkdev *dev, uint64_t offset, uint64_t count,
              blkdev_extent_fn fn, void *opaque)
{
  struct next_dev *d = (struct next_dev *) dev;
  struct nbdkit_extents *exts;
  uint32_t n = count < MAX_REQUEST ? count : MAX_REQUEST;
  size_t i;
  int err = 0, r = 0;

  if (!d->can_extents)
    return fn (opaque, offset, count, 0);
  exts = nbdkit_extents_new (offset, offset + n);
  if (!exts)
    return -1;
  if (d->next->extents (d->next, n, offset, 0, exts, &err) == -1) {
    nbdkit_extents_free (exts);
    return fail (dev, "block status", offset, err);
  }
  for (i = 0; i < nbdkit_extents_count (exts) && r == 0; i++) {
    struct nbdkit_extent e = nbdkit_get_extent (exts, i);
    uint32_t flags = 0;
    if (e.type & NBDKIT_EXTENT_HOLE) flags |= BLKDEV_EXTENT_HOLE;
    if (e.type & NBDKIT_EXTENT_ZERO) flags |= BLKDEV_EXTENT_ZERO;
    r = fn (opaque, e.offset, e.length, flags);
  }
  nbdkit_extents_free (exts);
  return r;
}

static void
next_close (struct blkdev *dev)
{
  free (dev->name);
  free (dev);
}

static const struct blkdev_ops next_ops_rw = {
  .pread = next_pread,
  .pwrite = next_pwrite,
  .zero = next_zero,
  .trim = next_trim,
  .flush = next_flush,
  .extents = next_extents,
  .close = next_close,
};

static const struct blkdev_ops next_ops_rw_nozero = {
  .pread = next_pread,
  .pwrite = next_pwrite,
  .trim = next_trim,
  .flush = next_flush,
  .extents = next_extents,
  .close = next_close,
};

static const struct blkdev_ops next_ops_ro = {
  .pread = next_pread,
  .extents = next_extents,
  .close = next_close,
};

struct blkdev *
next_blkdev_new (nbdkit_next *next, const char *name, bool readonly)
{
  struct next_dev *d = calloc (1, sizeof *d);
  int64_t size = next->get_size (next);
  int w;

  if (!d || !(d->dev.name = strdup (name))) {
    nbdkit_error ("malloc: %m");
    free (d);
    return NULL;
  }
  if (size == -1) {
    free (d->dev.name);
    free (d);
    return NULL;
  }
  w = readonly ? 0 : next->can_write (next);
  if (w == -1) {
    free (d->dev.name);
    free (d);
    return NULL;
  }
  d->next = next;
  d->dev.size = size;
  d->dev.fixed_size = true;
  d->dev.readonly = !w;
  d->can_fua = w && next->can_fua (next) > NBDKIT_FUA_NONE;
  d->can_flush = w && next->can_flush (next) == 1;
  d->can_trim = w && next->can_trim (next) == 1;
  d->can_extents = next->can_extents (next) == 1;
  if (!w)
    d->dev.ops = &next_ops_ro;
  else if (next->can_zero (next) == 1)
    d->dev.ops = &next_ops_rw;
  else
    d->dev.ops = &next_ops_rw_nozero;
  return &d->dev;
}

/* A plugin (or filter) below that is not fully parallel (the 1.32
 * curl plugin and the xz filter serialize requests per connection) must
 * not see two connections' requests at once in the one context they
 * share: such a device is wrapped in a lock.  nbdkit's own
 * serialization does not cover everything (.finalize flushes, for
 * one).  errno passes through the unlock untouched.
 */
struct serialized_dev {
  struct blkdev dev;
  struct blkdev *inner;
  pthread_mutex_t lock;
};

#define SERIALIZED(d, call)                                     \
  ({                                                            \
    struct serialized_dev *s_ = (struct serialized_dev *) (d);  \
    int r_, err_;                                               \
    pthread_mutex_lock (&s_->lock);                             \
    r_ = (call);                                                \
    err_ = errno;                                               \
    pthread_mutex_unlock (&s_->lock);                           \
    errno = err_;                                               \
    r_;                                                         \
  })
#define INNER(d) (((struct serialized_dev *) (d))->inner)

static int
ser_pread (struct blkdev *d, void *buf, size_t count, uint64_t offset)
{
  return SERIALIZED (d, blkdev_pread (INNER (d), buf, count, offset));
}

static int
ser_pwrite (struct blkdev *d, const void *buf, size_t count,
            uint64_t offset, unsigned flags)
{
  return SERIALIZED (d, blkdev_pwrite (INNER (d), buf, count, offset,
                                       flags));
}

static int
ser_zero (struct blkdev *d, uint64_t count, uint64_t offset, unsigned flags)
{
  return SERIALIZED (d, blkdev_zero (INNER (d), count, offset, flags));
}

static int
ser_trim (struct blkdev *d, uint64_t count, uint64_t offset, unsigned flags)
{
  return SERIALIZED (d, blkdev_trim (INNER (d), count, offset, flags));
}

static int
ser_flush (struct blkdev *d)
{
  return SERIALIZED (d, blkdev_flush (INNER (d)));
}

static int
ser_extents (struct blkdev *d, uint64_t offset, uint64_t count,
             blkdev_extent_fn fn, void *opaque)
{
  return SERIALIZED (d, blkdev_extents (INNER (d), offset, count, fn,
                                        opaque));
}

static void
ser_close (struct blkdev *d)
{
  struct serialized_dev *s = (struct serialized_dev *) d;

  blkdev_close (s->inner);
  pthread_mutex_destroy (&s->lock);
  free (s->dev.name);
  free (s);
}

static const struct blkdev_ops serialized_ops = {
  .pread = ser_pread,
  .pwrite = ser_pwrite,
  .zero = ser_zero,
  .trim = ser_trim,
  .flush = ser_flush,
  .extents = ser_extents,
  .close = ser_close,
};

struct blkdev *
next_blkdev_serialized (struct blkdev *dev)
{
  struct serialized_dev *s = calloc (1, sizeof *s);
  pthread_mutexattr_t attr;

  if (!s || !(s->dev.name = strdup (dev->name))) {
    nbdkit_error ("malloc: %m");
    free (s);
    blkdev_close (dev);
    return NULL;
  }
  /* Recursive: an extents callback may read the same device. */
  pthread_mutexattr_init (&attr);
  pthread_mutexattr_settype (&attr, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init (&s->lock, &attr);
  pthread_mutexattr_destroy (&attr);
  s->inner = dev;
  s->dev.ops = &serialized_ops;
  s->dev.size = dev->size;
  s->dev.readonly = dev->readonly;
  s->dev.fixed_size = dev->fixed_size;
  return &s->dev;
}

/* A pool of contexts below: see next-blkdev.h.  Reads go to the context
 * with the fewest requests in flight until the first change (write,
 * zero, trim); from then on every request goes to the first context.
 * A plugin need not make a write on one context visible to reads on
 * another, nor cover other contexts' writes with a flush, unless it
 * advertises multi-conn; so writes, and the reads that may follow
 * them, all use one context, and a flush there covers every write.
 * Reads done on other contexts before the first change cannot be stale:
 * nothing had been written through any context yet.
 */
struct pool_dev {
  struct blkdev dev;
  unsigned n;
  bool changed;                 /* atomic: a change was sent */
  struct blkdev **devs;         /* devs[0]: the first context's */
  nbdkit_next **nexts;          /* nexts[0] stays the caller's */
  unsigned *busy;               /* atomic: requests in flight */
};

/* Set at unload when .cleanup did not run: the plugin below may be gone,
 * so the pool's contexts are left alone.
 */
static bool contexts_gone;

void
next_blkdev_contexts_gone (void)
{
  contexts_gone = true;
}

#define POOL(d) ((struct pool_dev *) (d))
#define FIRST(d) (POOL (d)->devs[0])

static int
pool_pread (struct blkdev *d, void *buf, size_t count, uint64_t offset)
{
  struct pool_dev *p = POOL (d);
  unsigned i, best = 0, b = UINT32_MAX;
  int r;

  if (!__atomic_load_n (&p->changed, __ATOMIC_ACQUIRE)) {
    for (i = 0; i < p->n; i++) {
      unsigned x = __atomic_load_n (&p->busy[i], __ATOMIC_RELAXED);
      if (x < b) {
        b = x;
        best = i;
      }
    }
  }
  __atomic_add_fetch (&p->busy[best], 1, __ATOMIC_RELAXED);
  r = blkdev_pread (p->devs[best], buf, count, offset);
  __atomic_sub_fetch (&p->busy[best], 1, __ATOMIC_RELAXED);
  return r;
}

static void
pool_changing (struct blkdev *d)
{
  __atomic_store_n (&POOL (d)->changed, true, __ATOMIC_RELEASE);
}

static int
pool_pwrite (struct blkdev *d, const void *buf, size_t count,
             uint64_t offset, unsigned flags)
{
  pool_changing (d);
  return blkdev_pwrite (FIRST (d), buf, count, offset, flags);
}

static int
pool_zero (struct blkdev *d, uint64_t count, uint64_t offset, unsigned flags)
{
  pool_changing (d);
  return blkdev_zero (FIRST (d), count, offset, flags);
}

static int
pool_trim (struct blkdev *d, uint64_t count, uint64_t offset, unsigned flags)
{
  pool_changing (d);
  return blkdev_trim (FIRST (d), count, offset, flags);
}

static int
pool_flush (struct blkdev *d)
{
  return blkdev_flush (FIRST (d));
}

static int
pool_extents (struct blkdev *d, uint64_t offset, uint64_t count,
              blkdev_extent_fn fn, void *opaque)
{
  return blkdev_extents (FIRST (d), offset, count, fn, opaque);
}

static void
pool_close (struct blkdev *d)
{
  struct pool_dev *p = POOL (d);
  unsigned i;

  for (i = 0; i < p->n; i++) {
    blkdev_close (p->devs[i]);
    if (i > 0 && !contexts_gone)
      next_context_close (p->nexts[i]);
  }
  free (p->devs);
  free (p->nexts);
  free (p->busy);
  free (p->dev.name);
  free (p);
}

static const struct blkdev_ops pool_ops = {
  .pread = pool_pread,
  .pwrite = pool_pwrite,
  .zero = pool_zero,
  .trim = pool_trim,
  .flush = pool_flush,
  .extents = pool_extents,
  .close = pool_close,
};

struct blkdev *
next_blkdev_pool (struct blkdev *first, nbdkit_backend *backend,
                  unsigned n, bool serialize)
{
  struct pool_dev *p;
  unsigned i;

  if (n <= 1)
    return first;
  p = calloc (1, sizeof *p);
  if (!p || !(p->dev.name = strdup (first->name)) ||
      !(p->devs = calloc (n, sizeof *p->devs)) ||
      !(p->nexts = calloc (n, sizeof *p->nexts)) ||
      !(p->busy = calloc (n, sizeof *p->busy))) {
    nbdkit_error ("malloc: %m");
    goto err;
  }
  p->devs[0] = first;
  p->n = 1;
  for (i = 1; i < n; i++) {
    /* Only ever read. */
    nbdkit_next *next = next_context_open (backend, 1);
    struct blkdev *dev;

    if (!next)
      goto err;
    dev = next_blkdev_new (next, first->name, true);
    if (dev && serialize)
      dev = next_blkdev_serialized (dev);
    if (!dev) {
      next_context_close (next);
      goto err;
    }
    p->devs[i] = dev;
    p->nexts[i] = next;
    p->n++;
  }
  p->dev.ops = &pool_ops;
  p->dev.size = first->size;
  p->dev.readonly = first->readonly;
  p->dev.fixed_size = first->fixed_size;
  return &p->dev;

 err:
  if (p && p->devs) {
    for (i = 1; i < p->n; i++) {
      blkdev_close (p->devs[i]);
      next_context_close (p->nexts[i]);
    }
  }
  if (p) {
    free (p->devs);
    free (p->nexts);
    free (p->busy);
    free (p->dev.name);
    free (p);
  }
  blkdev_close (first);
  return NULL;
}

nbdkit_next *
next_context_open (nbdkit_backend *backend, int readonly)
{
  nbdkit_next *next = nbdkit_next_context_open (backend, readonly, "", 1);

  if (!next) {
    nbdkit_error ("cannot open the plugin below%s",
                  readonly ? " (read-only)" : "");
    return NULL;
  }
  if (next->prepare (next) == -1) {
    nbdkit_next_context_close (next);
    return NULL;
  }
  return next;
}

void
next_context_close (nbdkit_next *next)
{
  if (next) {
    next->finalize (next);
    nbdkit_next_context_close (next);
  }
}
