/* SPDX-License-Identifier: BSD-3-Clause */
/* The cache of decompressed clusters: a hash table with an LRU list.
 * See dcache.h for the rules.
 *
 * Entries are hashed by the host cluster their stream starts in, so that
 * dropping a freed host cluster looks at a few buckets rather than at
 * every entry (a large trim frees clusters one by one).
 */
#include <config.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dcache.h"
#include "qc-error.h"

/* An entry; reserved ("loading") from a miss until dcache_fill. */
struct dcache_entry {
  uint64_t host, len;                   /* the compressed stream */
  unsigned refs;                        /* atomic: 1 while linked, plus
                                         * one per reader copying out and
                                         * one for the thread loading it */
  bool loading;                         /* reserved, no data yet */
  bool linked;                          /* in the table (else dropped) */
  struct dcache_entry *hnext;           /* hash chain */
  struct dcache_entry *prev, *next;     /* LRU list, most recent first */
  uint8_t *data;                        /* cluster_size bytes */
};

struct dcache {
  pthread_mutex_t lock;
  pthread_cond_t loaded;                /* a slot was filled or given up */
  uint64_t capacity;                    /* entries */
  uint64_t count;                       /* atomic (read unlocked) */
  unsigned cluster_bits;
  uint64_t max_len;                     /* longest stream seen */
  uint64_t nbuckets;                    /* a power of 2 */
  struct dcache_entry **buckets;
  struct dcache_entry *head, *tail;
  struct dcache_stats stats;
};

struct dcache *
dcache_new (uint64_t max_bytes, uint32_t cluster_size)
{
  struct dcache *c;

  if (max_bytes / cluster_size == 0)
    return NULL;
  c = calloc (1, sizeof *c);
  if (!c) {
    qc_error ("compressed cluster cache: %m");
    return NULL;
  }
  c->capacity = max_bytes / cluster_size;
  while ((1U << c->cluster_bits) < cluster_size)
    c->cluster_bits++;
  c->nbuckets = 16;
  while (c->nbuckets < c->capacity * 2 && c->nbuckets < (1U << 20))
    c->nbuckets <<= 1;
  c->buckets = calloc (c->nbuckets, sizeof *c->buckets);
  if (!c->buckets) {
    qc_error ("compressed cluster cache: %m");
    free (c);
    return NULL;
  }
  pthread_mutex_init (&c->lock, NULL);
  pthread_cond_init (&c->loaded, NULL);
  return c;
}

static void
put (struct dcache_entry *e)
{
  if (__atomic_sub_fetch (&e->refs, 1, __ATOMIC_ACQ_REL) == 0) {
    free (e->data);
    free (e);
  }
}

void
dcache_free (struct dcache *c)
{
  struct dcache_entry *e, *next;

  if (!c)
    return;
  for (e = c->head; e; e = next) {
    next = e->next;
    put (e);
  }
  free (c->buckets);
  pthread_cond_destroy (&c->loaded);
  pthread_mutex_destroy (&c->lock);
  free (c);
}

static uint64_t
bucket_of_cluster (const struct dcache *c, uint64_t cluster)
{
  return (cluster * 0x9e3779b97f4a7c15ULL >> 20) & (c->nbuckets - 1);
}

static uint64_t
bucket_of (const struct dcache *c, uint64_t host)
{
  return bucket_of_cluster (c, host >> c->cluster_bits);
}

static struct dcache_entry *
find (struct dcache *c, uint64_t host, uint64_t len)
{
  struct dcache_entry *e;

  for (e = c->buckets[bucket_of (c, host)]; e; e = e->hnext)
    if (e->host == host && e->len == len)
      return e;
  return NULL;
}

static void
lru_unlink (struct dcache *c, struct dcache_entry *e)
{
  if (e->prev) e->prev->next = e->next; else c->head = e->next;
  if (e->next) e->next->prev = e->prev; else c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void
lru_push_front (struct dcache *c, struct dcache_entry *e)
{
  e->prev = NULL;
  e->next = c->head;
  if (c->head) c->head->prev = e; else c->tail = e;
  c->head = e;
}

/* Unlink e and chain it on *gone (through next) for a put after the
 * lock is dropped: freeing a large buffer may be a munmap.  Threads
 * waiting for a reserved slot look again.
 */
static void
unlink_entry (struct dcache *c, struct dcache_entry *e,
              struct dcache_entry **gone)
{
  struct dcache_entry **pp = &c->buckets[bucket_of (c, e->host)];

  while (*pp != e)
    pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink (c, e);
  __atomic_store_n (&c->count, c->count - 1, __ATOMIC_RELEASE);
  e->linked = false;
  if (e->loading)
    pthread_cond_broadcast (&c->loaded);
  e->next = *gone;
  *gone = e;
}

static void
put_all (struct dcache_entry *gone)
{
  struct dcache_entry *next;

  for (; gone; gone = next) {
    next = gone->next;
    put (gone);
  }
}

bool
dcache_get (struct dcache *c, uint64_t host, uint64_t len, void *buf,
            size_t in_cluster, size_t count, struct dcache_entry **slot)
{
  struct dcache_entry *e, *gone = NULL;
  bool waited = false;

  *slot = NULL;
  pthread_mutex_lock (&c->lock);
  while ((e = find (c, host, len)) != NULL && e->loading) {
    pthread_cond_wait (&c->loaded, &c->lock);
    waited = true;
  }
  if (e) {
    c->stats.hits++;
    if (waited)
      c->stats.waits++;
    lru_unlink (c, e);
    lru_push_front (c, e);
    __atomic_add_fetch (&e->refs, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_unlock (&c->lock);

    memcpy (buf, e->data + in_cluster, count);
    put (e);
    return true;
  }

  /* A miss: reserve the slot, so that others wait for this thread. */
  c->stats.misses++;
  e = calloc (1, sizeof *e);
  if (!e) {
    pthread_mutex_unlock (&c->lock);
    return false;
  }
  e->host = host;
  e->len = len;
  e->refs = 2;                  /* the table's and the loader's */
  e->loading = true;
  e->linked = true;
  while (c->count >= c->capacity) {
    unlink_entry (c, c->tail, &gone);
    c->stats.evictions++;
  }
  {
    uint64_t b = bucket_of (c, host);
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
  }
  lru_push_front (c, e);
  __atomic_store_n (&c->count, c->count + 1, __ATOMIC_RELEASE);
  if (len > c->max_len)
    c->max_len = len;
  pthread_mutex_unlock (&c->lock);
  put_all (gone);
  *slot = e;
  return false;
}

void
dcache_fill (struct dcache *c, struct dcache_entry *e, uint8_t *data)
{
  struct dcache_entry *gone = NULL;

  pthread_mutex_lock (&c->lock);
  e->data = data;               /* freed with the entry in any case */
  if (e->linked && !data)
    unlink_entry (c, e, &gone); /* given up: wakes those waiting */
  else if (e->linked) {
    e->loading = false;
    c->stats.inserts++;
    pthread_cond_broadcast (&c->loaded);
  }
  /* (Dropped or evicted while loading: nobody waits for it any more.) */
  pthread_mutex_unlock (&c->lock);
  put_all (gone);
  put (e);
}

void
dcache_drop (struct dcache *c, uint64_t lo, uint64_t hi)
{
  struct dcache_entry *e, *next, *gone = NULL;
  uint64_t first, last, cl;

  /* The write path frees clusters one by one: keep that cheap for
   * images nobody reads compressed clusters of.
   */
  if (!c || lo >= hi || __atomic_load_n (&c->count, __ATOMIC_ACQUIRE) == 0)
    return;

  pthread_mutex_lock (&c->lock);
  /* A stream overlapping [lo, hi) starts after lo - max_len. */
  first = (lo > c->max_len ? lo - c->max_len + 1 : 0) >> c->cluster_bits;
  last = (hi - 1) >> c->cluster_bits;
  if (last - first >= c->nbuckets) {
    /* A wide range: every entry. */
    for (e = c->head; e; e = next) {
      next = e->next;
      if (e->host < hi && lo < e->host + e->len) {
        unlink_entry (c, e, &gone);
        c->stats.drops++;
      }
    }
  }
  else {
    for (cl = first; cl <= last; cl++) {
      for (e = c->buckets[bucket_of_cluster (c, cl)]; e; e = next) {
        next = e->hnext;
        if (e->host < hi && lo < e->host + e->len) {
          unlink_entry (c, e, &gone);
          c->stats.drops++;
        }
      }
    }
  }
  pthread_mutex_unlock (&c->lock);
  put_all (gone);
}

void
dcache_clear (struct dcache *c)
{
  struct dcache_entry *gone = NULL;

  if (!c)
    return;
  pthread_mutex_lock (&c->lock);
  while (c->head) {
    unlink_entry (c, c->head, &gone);
    c->stats.drops++;
  }
  pthread_mutex_unlock (&c->lock);
  put_all (gone);
}

void
dcache_get_stats (struct dcache *c, struct dcache_stats *s)
{
  if (!c) {
    memset (s, 0, sizeof *s);
    return;
  }
  pthread_mutex_lock (&c->lock);
  *s = c->stats;
  pthread_mutex_unlock (&c->lock);
}
