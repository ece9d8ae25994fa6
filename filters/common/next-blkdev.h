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

/* A context on the default export of the plugin below, shared by all
 * connections, prepared (NULL after nbdkit_error); and its end.
 */
extern nbdkit_next *next_context_open (nbdkit_backend *backend,
                                       int readonly);
extern void next_context_close (nbdkit_next *next);

#endif /* QC_NEXT_BLKDEV_H */
