/* SPDX-License-Identifier: BSD-3-Clause */
/* Coalesced reads and read-ahead of compressed streams: a few windows of
 * the image file.  See rahead.h for the rules.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "rahead.h"

/* The first window of a reader not known to be sequential: enough for
 * a few streams past the one asked for, small enough that a random
 * reader does not pay much for it.
 */
#define FIRST_WINDOW (64 * 1024)

/* A miss at most this far past a window's end still counts as the same
 * sequential reader (streams are packed; a gap is a cluster that is not
 * compressed).
 */
#define SEQ_GAP (256 * 1024)

/* A window read ahead starts this far before the end of the one its
 * reader is in, so that a stream across the boundary (up to this long)
 * is in it whole.
 */
#define AHEAD_OVERLAP (64 * 1024)

enum wstate { W_EMPTY, W_LOADING, W_READY };

struct window {
  enum wstate state;
  uint64_t start, len;          /* file bytes held (or being loaded) */
  size_t size;                  /* the size chosen for it (doubling) */
  unsigned refs;                /* readers copying out of buf */
  uint64_t tick;                /* last use, for LRU */
  bool ahead;                   /* the next window was claimed */
  uint8_t *buf;
  size_t cap;
};

struct rahead {
  pthread_mutex_t lock;
  pthread_cond_t changed;       /* a load ended, or refs fell to 0 */
  size_t max;
  unsigned nwin;
  uint64_t tick;
  uint64_t gen;                 /* bumped by every drop */
  bool used;                    /* a window was ever claimed (atomic):
                                 * until then drops have nothing to do */
  struct rahead_stats stats;
  struct window win[];
};

struct rahead *
rahead_new (size_t max_bytes, unsigned nwin)
{
  struct rahead *ra;

  if (nwin == 0)
    nwin = 1;
  ra = calloc (1, sizeof *ra + nwin * sizeof ra->win[0]);
  if (!ra) {
    qc_error ("read-ahead windows: %m");
    return NULL;
  }
  pthread_mutex_init (&ra->lock, NULL);
  pthread_cond_init (&ra->changed, NULL);
  ra->max = max_bytes;
  ra->nwin = nwin;
  return ra;
}

void
rahead_free (struct rahead *ra)
{
  unsigned i;

  if (!ra)
    return;
  for (i = 0; i < ra->nwin; i++)
    free (ra->win[i].buf);
  pthread_cond_destroy (&ra->changed);
  pthread_mutex_destroy (&ra->lock);
  free (ra);
}

static int
read_below (struct rahead *ra, struct blkdev *dev, void *buf, size_t len,
            uint64_t off)
{
  __atomic_add_fetch (&ra->stats.reads, 1, __ATOMIC_RELAXED);
  __atomic_add_fetch (&ra->stats.bytes, len, __ATOMIC_RELAXED);
  return blkdev_pread (dev, buf, len, off);
}

/* The size of a new window starting at off: what the caller wants, and
 * twice the window a sequential reader came from.
 */
static size_t
window_size (struct rahead *ra, uint64_t off, size_t len, uint64_t want_end)
{
  size_t n = FIRST_WINDOW;
  unsigned i;

  if (want_end > off && want_end - off > n)
    n = want_end - off < ra->max ? want_end - off : ra->max;
  for (i = 0; i < ra->nwin; i++) {
    const struct window *w = &ra->win[i];

    if (w->state != W_EMPTY && off >= w->start &&
        off <= w->start + w->len + SEQ_GAP && w->size * 2 > n)
      n = w->size * 2;
  }
  if (n > ra->max)
    n = ra->max;
  if (n < len)
    n = len;
  return n;
}

/* An idle window to load into (not but), the least recently used, or
 * NULL.
 */
static struct window *
victim (struct rahead *ra, const struct window *but)
{
  struct window *best = NULL;
  unsigned i;

  for (i = 0; i < ra->nwin; i++) {
    struct window *w = &ra->win[i];

    if (w == but || w->state == W_LOADING || w->refs > 0)
      continue;
    if (w->state == W_EMPTY)
      return w;
    if (!best || w->tick < best->tick)
      best = w;
  }
  return best;
}

/* Reserve window w (idle, lock held) for file bytes [off, off+n). */
static uint64_t
claim (struct rahead *ra, struct window *w, uint64_t off, size_t n)
{
  /* Before the load reads the file: a writer that finds used false
   * wrote before this load began (both sequentially consistent).
   */
  __atomic_store_n (&ra->used, true, __ATOMIC_SEQ_CST);
  w->state = W_LOADING;
  w->start = off;
  w->len = n;
  w->size = n;
  w->ahead = false;
  w->tick = ++ra->tick;
  return ra->gen;
}

/* Fill a claimed window (lock not held), then publish it: kept unless
 * a drop came meanwhile (gen moved: it may have been about these
 * bytes).  hold: the caller copies out of it next (a reference taken,
 * released with unhold), even when it is not kept: the caller's own
 * stream is still good, its epoch holds it.  -1 after qc_error.
 */
static int
load (struct rahead *ra, struct blkdev *dev, struct window *w, uint64_t gen,
      bool hold)
{
  int r = 0;

  if (w->cap < w->len) {
    uint8_t *p = realloc (w->buf, w->len);

    if (!p) {
      qc_error ("read-ahead window: %m");
      r = -1;
    }
    else {
      w->buf = p;
      w->cap = w->len;
    }
  }
  if (r == 0)
    r = read_below (ra, dev, w->buf, w->len, w->start);

  pthread_mutex_lock (&ra->lock);
  w->state = r == 0 && gen == ra->gen ? W_READY : W_EMPTY;
  if (r == 0 && hold)
    w->refs++;
  pthread_cond_broadcast (&ra->changed);
  pthread_mutex_unlock (&ra->lock);
  return r;
}

static void
unhold (struct rahead *ra, struct window *w)
{
  pthread_mutex_lock (&ra->lock);
  if (--w->refs == 0)
    pthread_cond_broadcast (&ra->changed);
  pthread_mutex_unlock (&ra->lock);
}

/* After a hit at [off, off+len) past the middle of w, the reader is
 * sequential: the next window (twice w, from just before w's end, so
 * that a stream across the boundary is in it whole when it is short)
 * is claimed now, once per window, unless one covers that place
 * already.  Lock held; NULL if nothing to load.
 */
static struct window *
next_window (struct rahead *ra, struct blkdev *dev, struct window *w,
             uint64_t off, size_t len, uint64_t *gen)
{
  uint64_t end = w->start + w->len, start, size;
  struct window *v;
  size_t n;
  unsigned i;

  if (w->ahead || w->state != W_READY || off + len - w->start <= w->len / 2)
    return NULL;
  size = blkdev_size (dev);
  if (end >= size)
    return NULL;
  w->ahead = true;
  start = end > AHEAD_OVERLAP ? end - AHEAD_OVERLAP : 0;
  if (start < off + len)
    start = off + len;
  for (i = 0; i < ra->nwin; i++) {
    v = &ra->win[i];
    if (v != w && v->state != W_EMPTY && start >= v->start &&
        start < v->start + v->len)
      return NULL;
  }
  n = w->size * 2 < ra->max ? w->size * 2 : ra->max;
  if (n > size - start)
    n = size - start;
  v = victim (ra, w);
  if (!v)
    return NULL;
  *gen = claim (ra, v, start, n);
  ra->stats.ahead++;
  return v;
}

bool
rahead_used (struct rahead *ra)
{
  return ra && __atomic_load_n (&ra->used, __ATOMIC_SEQ_CST);
}

/* Reads that no window can hold. */
static bool
windowless (const struct rahead *ra, size_t len)
{
  return !ra || ra->max == 0 || len > ra->max;
}

/* The bytes [off, off+len) of dev in a buffer of their own, for the
 * paths that do not use a window.
 */
static int
use_alone (struct rahead *ra, struct blkdev *dev, size_t len, uint64_t off,
           rahead_use_fn fn, void *opaque)
{
  uint8_t *buf = malloc (len ? len : 1);
  int r;

  if (!buf) {
    qc_error ("read-ahead: %m");
    return -1;
  }
  r = ra ? read_below (ra, dev, buf, len, off)
         : blkdev_pread (dev, buf, len, off);
  if (r == 0)
    r = fn (opaque, buf);
  free (buf);
  return r;
}

int
rahead_use (struct rahead *ra, struct blkdev *dev, size_t len, uint64_t off,
            uint64_t want_end, rahead_use_fn fn, void *opaque)
{
  struct window *w = NULL, *ahead;
  bool waited = false;
  uint64_t gen, size;
  size_t n;
  unsigned i;
  int r;

  if (windowless (ra, len))
    return use_alone (ra, dev, len, off, fn, opaque);

  pthread_mutex_lock (&ra->lock);
 again:
  for (i = 0; i < ra->nwin; i++) {
    w = &ra->win[i];
    if (w->state != W_EMPTY && off >= w->start &&
        off + len <= w->start + w->len)
      break;
  }
  if (i < ra->nwin) {
    if (w->state == W_LOADING) {
      pthread_cond_wait (&ra->changed, &ra->lock);
      waited = true;
      goto again;
    }
    w->tick = ++ra->tick;
    w->refs++;
    ra->stats.hits++;
    if (waited)
      ra->stats.waits++;
    ahead = next_window (ra, dev, w, off, len, &gen);
    pthread_mutex_unlock (&ra->lock);
    /* Straight from the window (held: not reused meanwhile). */
    r = fn (opaque, w->buf + (off - w->start));
    unhold (ra, w);
    /* Read ahead on this thread: others go on decompressing from w
     * meanwhile.  A failure is only a missed chance.
     */
    if (ahead)
      load (ra, dev, ahead, gen, false);
    return r;
  }

  /* A miss: load a window from off. */
  n = window_size (ra, off, len, want_end);
  size = blkdev_size (dev);
  if (off < size && n > size - off)
    n = size - off > len ? size - off : len;
  w = victim (ra, NULL);
  if (!w) {
    /* Every window busy: read just this, uncached. */
    pthread_mutex_unlock (&ra->lock);
    return use_alone (ra, dev, len, off, fn, opaque);
  }
  gen = claim (ra, w, off, n);
  pthread_mutex_unlock (&ra->lock);

  r = load (ra, dev, w, gen, true);
  if (r == 0) {
    r = fn (opaque, w->buf);
    unhold (ra, w);
  }
  else if (w->cap < n)
    /* Allocation failed: the stream is still needed, read it alone. */
    r = use_alone (ra, dev, len, off, fn, opaque);
  return r;
}

struct copy_out {
  void *buf;
  size_t len;
};

static int
copy_out (void *opaque, const uint8_t *bytes)
{
  struct copy_out *c = opaque;

  memcpy (c->buf, bytes, c->len);
  return 0;
}

int
rahead_read (struct rahead *ra, struct blkdev *dev, void *buf, size_t len,
             uint64_t off, uint64_t want_end)
{
  struct copy_out c = { .buf = buf, .len = len };

  /* Straight into buf, not through use_alone's buffer. */
  if (windowless (ra, len))
    return ra ? read_below (ra, dev, buf, len, off)
              : blkdev_pread (dev, buf, len, off);
  return rahead_use (ra, dev, len, off, want_end, copy_out, &c);
}

void
rahead_drop (struct rahead *ra, uint64_t lo, uint64_t hi)
{
  unsigned i;

  if (lo >= hi || !rahead_used (ra))
    return;
  pthread_mutex_lock (&ra->lock);
  ra->gen++;
  for (i = 0; i < ra->nwin; i++) {
    struct window *w = &ra->win[i];

    /* A window being copied from is only marked empty: its readers'
     * bytes are theirs; victim() waits for refs to fall to 0.
     */
    if (w->state == W_READY && w->start < hi && lo < w->start + w->len)
      w->state = W_EMPTY;
  }
  pthread_mutex_unlock (&ra->lock);
}

void
rahead_clear (struct rahead *ra)
{
  rahead_drop (ra, 0, UINT64_MAX);
}

void
rahead_get_stats (struct rahead *ra, struct rahead_stats *s)
{
  if (!ra) {
    memset (s, 0, sizeof *s);
    return;
  }
  pthread_mutex_lock (&ra->lock);
  *s = ra->stats;
  s->reads = __atomic_load_n (&ra->stats.reads, __ATOMIC_RELAXED);
  s->bytes = __atomic_load_n (&ra->stats.bytes, __ATOMIC_RELAXED);
  pthread_mutex_unlock (&ra->lock);
}
