/* SPDX-License-Identifier: BSD-3-Clause */
/* The plugin below a filter as a block device for the format core. */
#ifndef QC_NEXT_BLKDEV_H
#define QC_NEXT_BLKDEV_H

#include <stdbool.h>

#include <nbdkit-filter.h>

#include "blkdev.h"

/* A device over next (which must be prepared, and stays the caller's to
 * finalize and close).  Its size is next's size and cannot grow.  NULL
 * after nbdkit_error.
 */
extern struct blkdev *next_blkdev_new (nbdkit_next *next, const char *name,
                                       bool readonly);

/* The same behind a lock, for a plugin below that is not fully
 * parallel (see next-blkdev.c).  The new device owns dev (and closes
 * it on failure).  NULL after nbdkit_error.
 */
extern struct blkdev *next_blkdev_serialized (struct blkdev *dev);

/* Reads spread over n contexts below (first, and n - 1 more opened
 * read-only on backend, each behind its own lock if serialize), until
 * the first
 * change; changes and everything after them on first's context (see
 * next-blkdev.c).  n <= 1: first itself.  The pool owns first (and
 * closes it on failure) but not first's context, which stays the
 * caller's; it closes the contexts it opened, unless
 * next_blkdev_contexts_gone was called.  NULL after nbdkit_error.
 */
extern struct blkdev *next_blkdev_pool (struct blkdev *first,
                                        nbdkit_backend *backend,
                                        unsigned n, bool serialize);
extern void next_blkdev_contexts_gone (void);

/* A context on the default export of the plugin below, shared by all
 * connections, prepared (NULL after nbdkit_error); and its end.
 */
extern nbdkit_next *next_context_open (nbdkit_backend *backend,
                                       int readonly);
extern void next_context_close (nbdkit_next *next);

#endif /* QC_NEXT_BLKDEV_H */
