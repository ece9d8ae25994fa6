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

  if (offset >= dev->size)
    n = 0;
  else if (count > dev->size - offset)
    n = dev->size - offset;
  if (n < count)
    memset ((char *) buf + n, 0, count - n);
  if (n == 0)
    return 0;
  return dev->ops->pread (dev, buf, n, offset);
}

int
blkdev_pwrite (struct blkdev *dev, const void *buf, size_t count,
               uint64_t offset)
{
  if (dev->readonly || !dev->ops->pwrite) {
    qc_error ("%s: device is read-only", dev->name);
    errno = EROFS;
    return -1;
  }
  return dev->ops->pwrite (dev, buf, count, offset);
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
  uint64_t end = offset + count;

  if (count == 0)
    return 0;
  /* The part past the end of a (shorter) device reads as zeros. */
  if (offset >= dev->size)
    return fn (opaque, offset, count, BLKDEV_EXTENT_HOLE|BLKDEV_EXTENT_ZERO);
  if (end > dev->size)
    end = dev->size;
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
