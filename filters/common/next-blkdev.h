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

#endif /* QC_NEXT_BLKDEV_H */
