/* The L2 table cache: a hash table with an LRU list.  See l2cache.h. */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "l2cache.h"
#include "qc-error.h"

struct l2cache_entry {
  uint64_t offset;
  uint32_t pins;
  struct l2cache_entry *hnext;          /* hash chain */
  struct l2cache_entry *prev, *next;    /* LRU list, most recent first */
  uint8_t data[];
};

struct l2cache {
  pthread_mutex_t lock;
  uint64_t capacity, count;
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
    qc_error ("L2 cache: %m");
    return NULL;
  }
  c->capacity = capacity ? capacity : 1;
  c->table_bytes = table_bytes;
  c->nbuckets = 16;
  while (c->nbuckets < c->capacity * 2 && c->nbuckets < (1U << 20))
    c->nbuckets <<= 1;
  c->buckets = calloc (c->nbuckets, sizeof *c->buckets);
  if (!c->buckets) {
    qc_error ("L2 cache: %m");
    free (c);
    return NULL;
  }
  pthread_mutex_init (&c->lock, NULL);
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
hash_unlink (struct l2cache *c, struct l2cache_entry *e)
{
  struct l2cache_entry **pp = &c->buckets[bucket_of (c, e->offset)];

  while (*pp != e)
    pp = &(*pp)->hnext;
  *pp = e->hnext;
}

/* Drop least recently used unpinned tables until within capacity. */
static void
evict (struct l2cache *c)
{
  struct l2cache_entry *e = c->tail, *prev;

  while (c->count > c->capacity && e) {
    prev = e->prev;
    if (e->pins == 0) {
      lru_unlink (c, e);
      hash_unlink (c, e);
      free (e);
      c->count--;
    }
    e = prev;
  }
}

const uint8_t *
l2cache_get (struct l2cache *c, struct blkdev *dev, uint64_t offset,
             struct l2cache_entry **pin)
{
  struct l2cache_entry *e, *other;

  pthread_mutex_lock (&c->lock);
  e = find (c, offset);
  if (e) {
    e->pins++;
    c->hits++;
    lru_unlink (c, e);
    lru_push_front (c, e);
    pthread_mutex_unlock (&c->lock);
    *pin = e;
    return e->data;
  }
  c->misses++;
  pthread_mutex_unlock (&c->lock);

  /* Read outside the lock. */
  e = malloc (sizeof *e + c->table_bytes);
  if (!e) {
    qc_error ("L2 cache: %m");
    return NULL;
  }
  if (blkdev_pread (dev, e->data, c->table_bytes, offset) == -1) {
    free (e);
    return NULL;
  }
  e->offset = offset;
  e->pins = 1;

  pthread_mutex_lock (&c->lock);
  other = find (c, offset);
  if (other) {                  /* another reader was quicker */
    other->pins++;
    pthread_mutex_unlock (&c->lock);
    free (e);
    *pin = other;
    return other->data;
  }
  e->hnext = c->buckets[bucket_of (c, offset)];
  c->buckets[bucket_of (c, offset)] = e;
  lru_push_front (c, e);
  c->count++;
  evict (c);
  pthread_mutex_unlock (&c->lock);
  *pin = e;
  return e->data;
}

void
l2cache_put (struct l2cache *c, struct l2cache_entry *pin)
{
  pthread_mutex_lock (&c->lock);
  pin->pins--;
  if (c->count > c->capacity)
    evict (c);
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
