/* SPDX-License-Identifier: BSD-3-Clause */
/* Error, notice and debug reporting for the format core.  The
 * front-end sets a handler (nbdkit_error / stderr / nbdkit_debug in the
 * modules, a buffer in the unit tests); the core never prints, exits or
 * aborts on bad input.
 */
#ifndef QC_ERROR_H
#define QC_ERROR_H

/* QC_LOG_INFO: a result the user asked for (what check=on found),
 * shown without -v.
 */
enum qc_log_level { QC_LOG_ERROR, QC_LOG_DEBUG, QC_LOG_INFO };

typedef void (*qc_log_fn) (enum qc_log_level level, const char *msg);

extern void qc_set_log_handler (qc_log_fn fn);

extern void qc_error (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));
extern void qc_debug (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));
extern void qc_info (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));

/* Errors of this thread go out as debug messages while quiet is set
 * (still kept for qc_last_error): for a failure the caller reports
 * itself, in its own words, or only once.  Returns the previous state.
 */
extern int qc_errors_quiet (int quiet);

/* Debug flags, off by default: the front-ends set them at load from
 * nbdkit's -D MODULE.FLAG=N (glue.h, GLUE_DEBUG_FLAGS), the tests as
 * they like.  alloc: every cluster allocation and free; flush: every
 * metadata writeback.  Their messages are debug messages (nbdkit -v).
 */
extern int qc_debug_alloc;
extern int qc_debug_flush;

/* The most recent error message of this thread, for tests. */
extern const char *qc_last_error (void);

#endif /* QC_ERROR_H */
