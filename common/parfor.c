/* SPDX-License-Identifier: BSD-3-Clause */
/* A shared pool of helper threads for parfor (see parfor.h).
 *
 * Jobs sit in a queue while they have unclaimed items.  Items are
 * claimed under the pool's mutex (items are milliseconds of work, so
 * the mutex is cheap), which is what makes the job's memory safe to
 * free: the owner takes the job off the queue under the mutex, after
 * which no helper can claim from it, and then waits for the items
 * already claimed to finish.
 */
#include <config.h>

#include <pthread.h>
#include <stdbool.h>
#include <unistd.h>

#include "parfor.h"

#define MAX_HELPERS 8

struct job {
  void (*fn) (void *arg, size_t i);
  void *arg;
  size_t n, next, done;
  struct job *qnext;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;   /* queue grew */
static pthread_cond_t finished = PTHREAD_COND_INITIALIZER; /* item done */
static struct job *queue;
static unsigned nr_helpers;
static bool started;
static unsigned active;         /* atomic: callers inside parfor */
static long nr_cpus;            /* set once, on first use */

/* Claim the next item of the first job with one left; lock held. */
static struct job *
claim (size_t *i)
{
  struct job *j;

  for (j = queue; j; j = j->qnext)
    if (j->next < j->n) {
      *i = j->next++;
      return j;
    }
  return NULL;
}

static void
item_done (struct job *j)
{
  pthread_mutex_lock (&lock);
  if (++j->done == j->n)
    pthread_cond_broadcast (&finished);
  pthread_mutex_unlock (&lock);
}

static void *
helper (void *unused)
{
  struct job *j;
  size_t i;

  pthread_mutex_lock (&lock);
  for (;;) {
    while (!(j = claim (&i)))
      pthread_cond_wait (&work, &lock);
    pthread_mutex_unlock (&lock);
    j->fn (j->arg, i);
    item_done (j);
    pthread_mutex_lock (&lock);
  }
  return NULL;
}

/* One helper per CPU but the caller's, started on first use.  If none
 * can be started the caller does all the work.  lock held.
 */
static void
start_helpers (void)
{
  long cpus = sysconf (_SC_NPROCESSORS_ONLN);
  pthread_attr_t attr;
  pthread_t t;

  started = true;
  if (cpus < 2)
    return;
  if (cpus - 1 > MAX_HELPERS)
    cpus = MAX_HELPERS + 1;
  pthread_attr_init (&attr);
  pthread_attr_setdetachstate (&attr, PTHREAD_CREATE_DETACHED);
  while (nr_helpers < cpus - 1 &&
         pthread_create (&t, &attr, helper, NULL) == 0)
    nr_helpers++;
  pthread_attr_destroy (&attr);
}

void
parfor (void (*fn) (void *arg, size_t i), void *arg, size_t n)
{
  struct job j = { .fn = fn, .arg = arg, .n = n };
  struct job **pp;
  size_t i;

  if (n <= 1) {
    if (n == 1)
      fn (arg, 0);
    return;
  }
  /* As many callers as CPUs (a server busy with requests): the CPUs
   * are taken already; waking helpers would only add switches and
   * contention on the lock.
   */
  if (!__atomic_load_n (&nr_cpus, __ATOMIC_RELAXED))
    __atomic_store_n (&nr_cpus, sysconf (_SC_NPROCESSORS_ONLN),
                      __ATOMIC_RELAXED);
  if (__atomic_add_fetch (&active, 1, __ATOMIC_ACQ_REL) >=
      (unsigned long) __atomic_load_n (&nr_cpus, __ATOMIC_RELAXED)) {
    for (i = 0; i < n; i++)
      fn (arg, i);
    __atomic_sub_fetch (&active, 1, __ATOMIC_ACQ_REL);
    return;
  }
  pthread_mutex_lock (&lock);
  if (!started)
    start_helpers ();
  j.qnext = queue;
  queue = &j;
  pthread_cond_broadcast (&work);
  /* Our own items first: claim() sees ours at the head of the queue. */
  while (j.next < j.n) {
    i = j.next++;
    pthread_mutex_unlock (&lock);
    fn (arg, i);
    pthread_mutex_lock (&lock);
    j.done++;
  }
  for (pp = &queue; *pp != &j; pp = &(*pp)->qnext)
    ;
  *pp = j.qnext;
  while (j.done < j.n)
    pthread_cond_wait (&finished, &lock);
  pthread_mutex_unlock (&lock);
  __atomic_sub_fetch (&active, 1, __ATOMIC_ACQ_REL);
}
