/* SPDX-License-Identifier: BSD-3-Clause */
/* Progress of long work before serving: see qc-progress.h. */
#include <config.h>

#include <stdbool.h>
#include <stdio.h>
#include <time.h>

#include "qc-error.h"
#include "qc-progress.h"

#define DEFAULT_INTERVAL_MS 5000

int qc_progress_interval_ms;

static __thread struct {
  bool active;
  bool said;                    /* a progress notice was given */
  const char *name;
  char what[128];
  struct timespec start, last;
  int last_pct;                 /* of the last notice, -1: none yet */
} step;

static double
seconds_since (const struct timespec *t)
{
  struct timespec now;

  clock_gettime (CLOCK_MONOTONIC, &now);
  return (now.tv_sec - t->tv_sec) + (now.tv_nsec - t->tv_nsec) / 1e9;
}

void
qc_step_begin (const char *name, const char *what)
{
  if (step.active)
    qc_step_end ();
  step.active = true;
  step.said = false;
  step.name = name;
  snprintf (step.what, sizeof step.what, "%s", what);
  clock_gettime (CLOCK_MONOTONIC, &step.start);
  step.last = step.start;
  step.last_pct = -1;
  qc_debug ("%s: %s", name, step.what);
}

void
qc_step_progress (uint64_t done, uint64_t total)
{
  int ms = qc_progress_interval_ms > 0 ? qc_progress_interval_ms
                                       : DEFAULT_INTERVAL_MS;
  int pct;

  if (!step.active || total == 0)
    return;
  pct = done * 100 / total;
  /* A negative interval (for tests): a notice whenever the percentage
   * changes, however fast the step, so that the notices do not depend
   * on the machine's speed.
   */
  if (qc_progress_interval_ms < 0 ? pct == step.last_pct
                                  : seconds_since (&step.last) * 1000 < ms)
    return;
  clock_gettime (CLOCK_MONOTONIC, &step.last);
  step.last_pct = pct;
  step.said = true;
  qc_info ("%s: %s: %d%% (%.1f s so far)", step.name, step.what, pct,
           seconds_since (&step.start));
}

void
qc_step_end (void)
{
  double s;

  if (!step.active)
    return;
  step.active = false;
  s = seconds_since (&step.start);
  qc_debug ("%s: %s took %.3f s", step.name, step.what, s);
  if (step.said)
    qc_info ("%s: %s: done in %.1f s", step.name, step.what, s);
}
