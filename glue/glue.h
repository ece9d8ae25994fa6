/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit glue shared by the plugin and the filters: logging, request
 * flags and extents between nbdkit and the format core.  (The core itself
 * has no nbdkit types; this is the thin layer on top of it.)
 */
#ifndef QC_GLUE_H
#define QC_GLUE_H

#include <stdint.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qc-progress.h"

struct nbdkit_extents;
struct qc_options;

/* Send the core's messages to nbdkit_error / nbdkit_debug, and its
 * notices (QC_LOG_INFO) to stderr (syslog once nbdkit has forked into
 * the background), shown without -v.
 */
extern void glue_log (enum qc_log_level level, const char *msg);

/* NBDKIT_FLAG_FUA / MAY_TRIM / FAST_ZERO as BLKDEV_* flags. */
extern unsigned glue_blkdev_flags (uint32_t flags);

/* Extents of a view for an nbdkit extents request (flags may hold
 * NBDKIT_FLAG_REQ_ONE).  -1 with errno set on error.
 */
extern int glue_extents (struct blkdev *view, uint32_t count,
                         uint64_t offset, uint32_t flags,
                         struct nbdkit_extents *extents);

/* qc_options_set, but the passphrases take nbdkit's forms (literal,
 * "-" to prompt, "+FILE", "-FD"), read with nbdkit_read_password and
 * wiped after use.  key has no module prefix.
 */
/* nbdkit's .block_size for an image (NULL: no constraints): the
 * core's preferred request size, if any.
 */
struct qc_image;
extern void glue_block_size (struct qc_image *img, uint32_t *minimum,
                             uint32_t *preferred, uint32_t *maximum);

extern int glue_set_option (struct qc_options *opts, const char *key,
                            const char *value);

/* Whether nbdkit was started with -r (--readonly, --read-only): 1 or
 * 0, -1 if it cannot be told.  nbdkit 1.32 tells plugins and filters
 * only per connection (the readonly flag of .open), so this reads
 * nbdkit's command line (/proc/self/cmdline) the way nbdkit parses it.
 */
extern int glue_nbdkit_readonly (void);

/* Whether other filters sit below the filter called name (between it
 * and the plugin), from the same command line: 1 or 0, -1 if it cannot
 * be told.
 */
extern int glue_nbdkit_filters_below (const char *name);

/* nbdkit's debug flags (-D NAME.alloc=1 sets NAME_debug_alloc, in
 * the first module named NAME), for a front-end file to define:
 * GLUE_DEBUG_FLAGS (qcow2) defines qcow2_debug_alloc,
 * qcow2_debug_flush and qcow2_debug_progress (milliseconds between
 * progress notices), exported by the .so's version script, and
 * glue_debug_flags (qcow2) hands them to the core, in .load (nbdkit
 * sets them before .load).
 */
#define GLUE_DEBUG_FLAGS(name)                                          \
  NBDKIT_DLL_PUBLIC int name##_debug_alloc;                             \
  NBDKIT_DLL_PUBLIC int name##_debug_flush;                             \
  NBDKIT_DLL_PUBLIC int name##_debug_progress
#define glue_debug_flags(name)                                          \
  do {                                                                  \
    qc_debug_alloc = name##_debug_alloc;                                \
    qc_debug_flush = name##_debug_flush;                                \
    qc_progress_interval_ms = name##_debug_progress;                    \
  } while (0)

#endif /* QC_GLUE_H */
