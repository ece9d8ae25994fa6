/* SPDX-License-Identifier: BSD-3-Clause */
/* Generic block-device wrappers: bounds, zero fill, extents past the end. */
#include <config.h>

#include <errno.h>
#include <string.h>

#include "blkdev.h"
#include "qc-error.h"

int
blkdev_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  size_t n = count;
  uint64_t size = blkdev_size (dev);

  if (offset >= size)
    n = 0;
  else if (count > size - offset)
    n = size - offset;
  if (n < count)
    memset ((char *) buf + n, 0, count - n);
  if (n == 0)
    return 0;
  return dev->ops->pread (dev, buf, n, offset);
}

static int
check_writable (struct blkdev *dev)
{
  if (__atomic_load_n (&dev->readonly, __ATOMIC_ACQUIRE) ||
      !dev->ops->pwrite) {
    qc_error ("%s: device is read-only", dev->name);
    errno = EROFS;
    return -1;
  }
  return 0;
}

int
blkdev_pwrite (struct blkdev *dev, const void *buf, size_t count,
               uint64_t offset, unsigned flags)
{
  if (check_writable (dev) == -1)
    return -1;
  return dev->ops->pwrite (dev, buf, count, offset, flags);
}

int
blkdev_zero (struct blkdev *dev, uint64_t count, uint64_t offset,
             unsigned flags)
{
  static const char zeros[65536];

  if (check_writable (dev) == -1)
    return -1;
  if (dev->ops->zero)
    return dev->ops->zero (dev, count, offset, flags);
  if (flags & BLKDEV_FAST_ZERO) {
    errno = ENOTSUP;
    return -1;
  }
  while (count > 0) {
    size_t n = count < sizeof zeros ? count : sizeof zeros;
    if (dev->ops->pwrite (dev, zeros, n, offset, flags) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

int
blkdev_trim (struct blkdev *dev, uint64_t count, uint64_t offset,
             unsigned flags)
{
  if (check_writable (dev) == -1)
    return -1;
  if (!dev->ops->trim)
    return 0;
  return dev->ops->trim (dev, count, offset, flags);
}

int
blkdev_flush (struct blkdev *dev)
{
  if (!dev->ops->flush)
    return 0;
  return dev->ops->flush (dev);
}

int
blkdev_extents (struct blkdev *dev, uint64_t offset, uint64_t count,
                blkdev_extent_fn fn, void *opaque)
{
  uint64_t end = offset + count, size = blkdev_size (dev);

  if (count == 0)
    return 0;
  /* The part past the end of a (shorter) device reads as zeros. */
  if (offset >= size)
    return fn (opaque, offset, count, BLKDEV_EXTENT_HOLE|BLKDEV_EXTENT_ZERO);
  if (end > size)
    end = size;
  if (!dev->ops->extents)
    return fn (opaque, offset, end - offset, 0);
  return dev->ops->extents (dev, offset, end - offset, fn, opaque);
}

void
blkdev_close (struct blkdev *dev)
{
  if (dev)
    dev->ops->close (dev);
}
