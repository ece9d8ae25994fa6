/* SPDX-License-Identifier: BSD-3-Clause */
/* Error, notice and debug reporting for the core: see qc-error.h. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "qc-error.h"

int qc_debug_alloc;
int qc_debug_flush;

static qc_log_fn log_handler;
static __thread char last_error[512];
static __thread int quiet;

int
qc_errors_quiet (int q)
{
  int old = quiet;

  quiet = q;
  return old;
}

void
qc_set_log_handler (qc_log_fn fn)
{
  log_handler = fn;
}

static void
qc_vlog (enum qc_log_level level, const char *fs, va_list args)
{
  char msg[512];
  int saved_errno = errno;  /* callers set errno after reporting */

  vsnprintf (msg, sizeof msg, fs, args);
  if (level == QC_LOG_ERROR) {
    snprintf (last_error, sizeof last_error, "%s", msg);
    if (quiet)
      level = QC_LOG_DEBUG;
  }
  if (log_handler)
    log_handler (level, msg);
  errno = saved_errno;
}

void
qc_error (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  qc_vlog (QC_LOG_ERROR, fs, args);
  va_end (args);
}

void
qc_debug (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  qc_vlog (QC_LOG_DEBUG, fs, args);
  va_end (args);
}

void
qc_info (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  qc_vlog (QC_LOG_INFO, fs, args);
  va_end (args);
}

const char *
qc_last_error (void)
{
  return last_error;
}
