/* SPDX-License-Identifier: BSD-3-Clause */
/* Helpers of the fuzz build's core: see fuzz-noopen.h. */
#include <config.h>

#include <errno.h>
#include <stdint.h>

#include "blkdev.h"

extern int fuzz_no_open (const char *path, int flags, ...);
extern int64_t fuzz_real_blkdev_file_allocated (struct blkdev *dev);

int
fuzz_no_open (const char *path, int flags, ...)
{
  errno = ENOENT;
  return -1;
}

/* The core asks how much of its file is allocated (qemu's test for a
 * metadata-preallocated image); memory devices are not files (-1).
 * Pretend, for some inputs (decided by the size), that the device is a
 * sparse file holding a quarter of its size, so that the test (which
 * walks the refcount structures) is fuzzed too.
 */
int64_t
blkdev_file_allocated (struct blkdev *dev)
{
  int64_t r = fuzz_real_blkdev_file_allocated (dev);

  if (r == -1 && (dev->size & 512))
    return dev->size / 4;
  return r;
}
