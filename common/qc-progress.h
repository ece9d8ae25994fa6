/* SPDX-License-Identifier: BSD-3-Clause */
/* Progress of long work before serving (check, repair, snapshot
 * operations, rebuilding a dirty image's refcounts), so that a busy
 * server is not taken for a hung one: a notice (QC_LOG_INFO) at most
 * every qc_progress_interval_ms saying how far the step is, and a
 * debug message (nbdkit -v) with the time each step took.
 */
#ifndef QC_PROGRESS_H
#define QC_PROGRESS_H

#include <stdint.h>

/* Milliseconds between notices; 0 = the default, 5000; negative: a
 * notice whenever the percentage changes (for tests).  The front-ends
 * set it from nbdkit's -D MODULE.progress=MS.
 */
extern int qc_progress_interval_ms;

/* Start a step of this thread: name is the image, what says the work
 * ("checking the refcounts").  Steps do not nest: a new one ends the
 * one before.
 */
extern void qc_step_begin (const char *name, const char *what);
/* done of total units: a notice if the last one (or the start) is
 * longer ago than the interval.  Nothing without a step.
 */
extern void qc_step_progress (uint64_t done, uint64_t total);
/* End the step: the time it took (debug), and a notice that it is done
 * if progress was reported.
 */
extern void qc_step_end (void);

#endif /* QC_PROGRESS_H */
