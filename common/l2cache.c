/* SPDX-License-Identifier: BSD-3-Clause */
/* The metadata table cache: a hash table with an LRU list.  See
 * l2cache.h for the rules.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "l2cache.h"
#include "qc-error.h"

struct l2cache_entry {
  uint64_t offset;
  uint32_t pins;
  bool loading;                         /* placeholder: being read */
  bool dirty;
  uint32_t dirty_lo, dirty_hi;          /* changed bytes */
  struct l2cache_entry *hnext;          /* hash chain */
  struct l2cache_entry *prev, *next;    /* LRU list, most recent first */
  uint64_t data[];                      /* 8-byte aligned table */
};

struct l2cache {
  pthread_mutex_t lock;
  pthread_cond_t loaded;
  uint64_t capacity, count, nr_dirty;
  uint32_t table_bytes;
  uint64_t nbuckets;                    /* a power of 2 */
  struct l2cache_entry **buckets;
  struct l2cache_entry *head, *tail;
  uint64_t misses, hits;
};

struct l2cache *
l2cache_new (uint64_t capacity, uint32_t table_bytes)
{
  struct l2cache *c = calloc (1, sizeof *c);

  if (!c) {
    qc_error ("metadata cache: %m");
    return NULL;
  }
  c->capacity = capacity ? capacity : 1;
  c->table_bytes = table_bytes;
  c->nbuckets = 16;
  while (c->nbuckets < c->capacity * 2 && c->nbuckets < (1U << 20))
    c->nbuckets <<= 1;
  c->buckets = calloc (c->nbuckets, sizeof *c->buckets);
  if (!c->buckets) {
    qc_error ("metadata cache: %m");
    free (c);
    return NULL;
  }
  pthread_mutex_init (&c->lock, NULL);
  pthread_cond_init (&c->loaded, NULL);
  return c;
}

void
l2cache_free (struct l2cache *c)
{
  struct l2cache_entry *e, *next;

  if (!c)
    return;
  for (e = c->head; e; e = next) {
    next = e->next;
    free (e);
  }
  free (c->buckets);
  pthread_cond_destroy (&c->loaded);
  pthread_mutex_destroy (&c->lock);
  free (c);
}

static uint64_t
bucket_of (const struct l2cache *c, uint64_t offset)
{
  return ((offset >> 9) * 0x9e3779b97f4a7c15ULL >> 20) & (c->nbuckets - 1);
}

static struct l2cache_entry *
find (struct l2cache *c, uint64_t offset)
{
  struct l2cache_entry *e;

  for (e = c->buckets[bucket_of (c, offset)]; e; e = e->hnext)
    if (e->offset == offset)
      return e;
  return NULL;
}

static void
lru_unlink (struct l2cache *c, struct l2cache_entry *e)
{
  if (e->prev) e->prev->next = e->next; else c->head = e->next;
  if (e->next) e->next->prev = e->prev; else c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void
lru_push_front (struct l2cache *c, struct l2cache_entry *e)
{
  e->prev = NULL;
  e->next = c->head;
  if (c->head) c->head->prev = e; else c->tail = e;
  c->head = e;
}

static void
link_entry (struct l2cache *c, struct l2cache_entry *e)
{
  uint64_t b = bucket_of (c, e->offset);

  e->hnext = c->buckets[b];
  c->buckets[b] = e;
  lru_push_front (c, e);
  c->count++;
}

static void
unlink_entry (struct l2cache *c, struct l2cache_entry *e)
{
  struct l2cache_entry **pp = &c->buckets[bucket_of (c, e->offset)];

  while (*pp != e)
    pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink (c, e);
  c->count--;
  if (e->dirty)
    c->nr_dirty--;
}

/* Drop least recently used clean, unpinned tables down to capacity. */
static void
evict (struct l2cache *c)
{
  struct l2cache_entry *e = c->tail, *prev;

  while (c->count > c->capacity && e) {
    prev = e->prev;
    if (e->pins == 0 && !e->dirty && !e->loading) {
      unlink_entry (c, e);
      free (e);
    }
    e = prev;
  }
}

static struct l2cache_entry *
alloc_entry (struct l2cache *c, uint64_t offset)
{
  struct l2cache_entry *e = malloc (sizeof *e + c->table_bytes);

  if (!e) {
    qc_error ("metadata cache: %m");
    return NULL;
  }
  memset (e, 0, sizeof *e);
  e->offset = offset;
  e->pins = 1;
  return e;
}

uint8_t *
l2cache_get (struct l2cache *c, struct blkdev *dev, uint64_t offset,
             struct l2cache_entry **pin)
{
  struct l2cache_entry *e;
  int r;

  pthread_mutex_lock (&c->lock);
 again:
  e = find (c, offset);
  if (e) {
    if (e->loading) {           /* wait for the reader, then retry */
      pthread_cond_wait (&c->loaded, &c->lock);
      goto again;
    }
    e->pins++;
    c->hits++;
    lru_unlink (c, e);
    lru_push_front (c, e);
    pthread_mutex_unlock (&c->lock);
    *pin = e;
    return (uint8_t *) e->data;
  }
  c->misses++;
  e = alloc_entry (c, offset);
  if (!e) {
    pthread_mutex_unlock (&c->lock);
    return NULL;
  }
  e->loading = true;
  link_entry (c, e);
  pthread_mutex_unlock (&c->lock);

  /* Read outside the lock; others asking for it wait. */
  r = blkdev_pread (dev, e->data, c->table_bytes, offset);

  pthread_mutex_lock (&c->lock);
  e->loading = false;
  if (r == -1) {
    unlink_entry (c, e);
    free (e);
    e = NULL;
  }
  else
    evict (c);
  pthread_cond_broadcast (&c->loaded);
  pthread_mutex_unlock (&c->lock);
  *pin = e;
  return e ? (uint8_t *) e->data : NULL;
}

int
l2cache_read (struct l2cache *c, struct blkdev *dev, uint64_t offset,
              void *buf)
{
  struct l2cache_entry *e;

  pthread_mutex_lock (&c->lock);
  for (;;) {
    e = find (c, offset);
    if (!e || !e->loading)
      break;
    pthread_cond_wait (&c->loaded, &c->lock);
  }
  if (e) {
    memcpy (buf, e->data, c->table_bytes);
    pthread_mutex_unlock (&c->lock);
    return 0;
  }
  pthread_mutex_unlock (&c->lock);
  return blkdev_pread (dev, buf, c->table_bytes, offset);
}

uint8_t *
l2cache_new_table (struct l2cache *c, uint64_t offset, const uint8_t *src,
                   struct l2cache_entry **pin)
{
  struct l2cache_entry *e, *old;

  e = alloc_entry (c, offset);
  if (!e)
    return NULL;
  if (src)
    memcpy (e->data, src, c->table_bytes);
  else
    memset (e->data, 0, c->table_bytes);
  e->dirty = true;
  e->dirty_lo = 0;
  e->dirty_hi = c->table_bytes;

  pthread_mutex_lock (&c->lock);
  while ((old = find (c, offset)) && old->loading)
    pthread_cond_wait (&c->loaded, &c->lock);
  if (old) {
    /* A stale table of a freed cluster: nobody can be using it, since
     * nothing points to the cluster any more.
     */
    unlink_entry (c, old);
    if (old->pins == 0)
      free (old);
    else
      old->pins |= 0x80000000;  /* orphaned: freed by the last put */
  }
  link_entry (c, e);
  c->nr_dirty++;
  evict (c);
  pthread_mutex_unlock (&c->lock);
  *pin = e;
  return (uint8_t *) e->data;
}

void
l2cache_put (struct l2cache *c, struct l2cache_entry *pin)
{
  if (!pin)
    return;
  pthread_mutex_lock (&c->lock);
  pin->pins--;
  if (pin->pins == 0x80000000)
    free (pin);
  else if (c->count > c->capacity)
    evict (c);
  pthread_mutex_unlock (&c->lock);
}

void
l2cache_mark_dirty (struct l2cache *c, struct l2cache_entry *pin,
                    uint32_t lo, uint32_t hi)
{
  pthread_mutex_lock (&c->lock);
  if (!pin->dirty) {
    pin->dirty = true;
    pin->dirty_lo = lo;
    pin->dirty_hi = hi;
    c->nr_dirty++;
  }
  else {
    if (lo < pin->dirty_lo) pin->dirty_lo = lo;
    if (hi > pin->dirty_hi) pin->dirty_hi = hi;
  }
  pthread_mutex_unlock (&c->lock);
}

uint64_t
l2cache_nr_dirty (struct l2cache *c)
{
  uint64_t n;

  pthread_mutex_lock (&c->lock);
  n = c->nr_dirty;
  pthread_mutex_unlock (&c->lock);
  return n;
}

int
l2cache_writeback (struct l2cache *c, struct blkdev *dev)
{
  struct l2cache_entry *e;
  int r = 0;

  /* Callers hold the image's metadata lock, so no table changes under
   * us; the cache lock is dropped around each write.
   */
  pthread_mutex_lock (&c->lock);
 restart:
  for (e = c->head; e && c->nr_dirty > 0; e = e->next) {
    uint32_t lo, hi;

    if (!e->dirty)
      continue;
    /* Whole 512-byte sectors around the changed bytes. */
    lo = e->dirty_lo & ~511U;
    hi = (e->dirty_hi + 511) & ~511U;
    if (hi > c->table_bytes)
      hi = c->table_bytes;
    e->pins++;
    pthread_mutex_unlock (&c->lock);
    r = blkdev_pwrite (dev, (uint8_t *) e->data + lo, hi - lo,
                       e->offset + lo, 0);
    pthread_mutex_lock (&c->lock);
    e->pins--;
    if (r == -1)
      break;
    e->dirty = false;
    c->nr_dirty--;
    /* Readers may have reordered the list while the lock was dropped:
     * start again from the head until nothing is dirty.
     */
    goto restart;
  }
  evict (c);
  pthread_mutex_unlock (&c->lock);
  return r;
}

void
l2cache_drop (struct l2cache *c, uint64_t offset)
{
  struct l2cache_entry *e;

  pthread_mutex_lock (&c->lock);
  e = find (c, offset);
  if (e && !e->loading) {
    unlink_entry (c, e);
    if (e->pins == 0)
      free (e);
    else
      e->pins |= 0x80000000;
  }
  pthread_mutex_unlock (&c->lock);
}

void
l2cache_stats (struct l2cache *c, uint64_t *misses, uint64_t *hits)
{
  pthread_mutex_lock (&c->lock);
  *misses = c->misses;
  *hits = c->hits;
  pthread_mutex_unlock (&c->lock);
}
