/* SPDX-License-Identifier: BSD-3-Clause */
/* A local file as a block device.  Extents come from SEEK_DATA and
 * SEEK_HOLE, so sparse holes read as hole+zero, as qemu reports them.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkdev.h"
#include "qc-error.h"

struct file_dev {
  struct blkdev dev;
  int fd;
  bool rw_fd;                   /* opened read-write */
};

static int
file_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  struct file_dev *f = (struct file_dev *) dev;
  char *p = buf;

  while (count > 0) {
    ssize_t r = pread (f->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      qc_error ("%s: read at offset %" PRIu64 ": %m", dev->name, offset);
      return -1;
    }
    if (r == 0) {               /* shorter than we thought: zeros */
      memset (p, 0, count);
      return 0;
    }
    p += r;
    count -= r;
    offset += r;
  }
  return 0;
}

static int file_flush (struct blkdev *dev);

/* The size only grows, and readers may look at it without a lock. */
static void
grow_to (struct blkdev *dev, uint64_t end)
{
  uint64_t cur = __atomic_load_n (&dev->size, __ATOMIC_RELAXED);

  while (end > cur &&
         !__atomic_compare_exchange_n (&dev->size, &cur, end, false,
                                       __ATOMIC_RELEASE, __ATOMIC_RELAXED))
    ;
}

static int
file_pwrite (struct blkdev *dev, const void *buf, size_t count,
             uint64_t offset, unsigned flags)
{
  struct file_dev *f = (struct file_dev *) dev;
  const char *p = buf;

  while (count > 0) {
    ssize_t r = pwrite (f->fd, p, count, offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      qc_error ("%s: write at offset %" PRIu64 ": %m", dev->name, offset);
      return -1;
    }
    p += r;
    count -= r;
    offset += r;
    grow_to (dev, offset);
  }
  if ((flags & BLKDEV_FUA) && file_flush (dev) == -1)
    return -1;
  return 0;
}

/* Zero with fallocate: punch a hole when trimming is allowed, else zero
 * the range keeping its blocks; fall back to writing zeros.
 */
static int
file_zero (struct blkdev *dev, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct file_dev *f = (struct file_dev *) dev;
  static const char zeros[65536];

  if (!dev->fixed_size && offset + count > dev->size) {
    /* Extending: a hole past the old end reads as zeros already. */
    if (ftruncate (f->fd, offset + count) == 0) {
      uint64_t old = dev->size;
      grow_to (dev, offset + count);
      if (offset >= old)
        return 0;
      count = old - offset;
    }
  }
  if ((flags & BLKDEV_MAY_TRIM) &&
      fallocate (f->fd, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE,
                 offset, count) == 0)
    return 0;
  if (fallocate (f->fd, FALLOC_FL_ZERO_RANGE|FALLOC_FL_KEEP_SIZE,
                 offset, count) == 0)
    return 0;
  if (flags & BLKDEV_FAST_ZERO) {
    errno = ENOTSUP;
    return -1;
  }
  while (count > 0) {
    size_t n = count < sizeof zeros ? count : sizeof zeros;
    if (file_pwrite (dev, zeros, n, offset, 0) == -1)
      return -1;
    count -= n;
    offset += n;
  }
  return 0;
}

/* Trim punches a hole: the blocks go back to the filesystem. */
static int
file_trim (struct blkdev *dev, uint64_t count, uint64_t offset,
           unsigned flags)
{
  struct file_dev *f = (struct file_dev *) dev;

  if (fallocate (f->fd, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE,
                 offset, count) == -1 &&
      errno != EOPNOTSUPP && errno != ENOSYS)
    qc_debug ("%s: punching a hole at offset %" PRIu64 ": %m",
              dev->name, offset);
  return 0;
}

static int
file_flush (struct blkdev *dev)
{
  struct file_dev *f = (struct file_dev *) dev;

  if (fdatasync (f->fd) == -1) {
    qc_error ("%s: flush: %m", dev->name);
    return -1;
  }
  return 0;
}

static int
file_extents (struct blkdev *dev, uint64_t offset, uint64_t count,
              blkdev_extent_fn fn, void *opaque)
{
  struct file_dev *f = (struct file_dev *) dev;
  uint64_t end = offset + count;

  while (offset < end) {
    off_t pos = lseek (f->fd, offset, SEEK_DATA);
    uint64_t next;

    if (pos == -1 && errno == ENXIO)    /* a hole up to the end */
      return fn (opaque, offset, end - offset,
                 BLKDEV_EXTENT_HOLE|BLKDEV_EXTENT_ZERO);
    if (pos == -1)                      /* no SEEK_DATA: all data */
      return fn (opaque, offset, end - offset, 0);
    if ((uint64_t) pos > offset) {
      next = (uint64_t) pos < end ? (uint64_t) pos : end;
      if (fn (opaque, offset, next - offset,
              BLKDEV_EXTENT_HOLE|BLKDEV_EXTENT_ZERO) == -1)
        return -1;
      offset = next;
      continue;
    }
    pos = lseek (f->fd, offset, SEEK_HOLE);
    if (pos == -1)
      return fn (opaque, offset, end - offset, 0);
    next = (uint64_t) pos < end ? (uint64_t) pos : end;
    if (next <= offset)
      next = end;
    if (fn (opaque, offset, next - offset, 0) == -1)
      return -1;
    offset = next;
  }
  return 0;
}

static void
file_close (struct blkdev *dev)
{
  struct file_dev *f = (struct file_dev *) dev;

  close (f->fd);
  free (dev->name);
  free (f);
}

static const struct blkdev_ops file_ops = {
  .pread = file_pread,
  .pwrite = file_pwrite,
  .zero = file_zero,
  .trim = file_trim,
  .flush = file_flush,
  .extents = file_extents,
  .close = file_close,
};

static struct blkdev *
file_open (const char *path, int flags, bool readonly)
{
  struct file_dev *f;
  struct stat st;
  int fd;

  /* O_NONBLOCK: a FIFO named by a hostile image must not hang us; only
   * regular files and block devices are accepted below.
   */
  fd = open (path, flags | O_CLOEXEC | O_NONBLOCK);
  if (fd == -1) {
    qc_error ("%s: %m", path);
    return NULL;
  }
  if (fstat (fd, &st) == -1) {
    qc_error ("%s: stat: %m", path);
    close (fd);
    return NULL;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    qc_error ("%s: not a regular file or block device", path);
    close (fd);
    errno = S_ISDIR (st.st_mode) ? EISDIR : EINVAL;
    return NULL;
  }
  if (fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) & ~O_NONBLOCK) == -1) {
    qc_error ("%s: fcntl: %m", path);
    close (fd);
    return NULL;
  }
  f = calloc (1, sizeof *f);
  if (!f || !(f->dev.name = strdup (path))) {
    qc_error ("%s: %m", path);
    free (f);
    close (fd);
    return NULL;
  }
  f->fd = fd;
  f->rw_fd = (flags & O_ACCMODE) == O_RDWR;
  f->dev.ops = &file_ops;
  f->dev.readonly = readonly;
  if (S_ISBLK (st.st_mode)) {
    off_t end = lseek (fd, 0, SEEK_END);
    f->dev.size = end == -1 ? 0 : end;
    f->dev.fixed_size = true;
  }
  else
    f->dev.size = st.st_size;
  return &f->dev;
}

struct blkdev *
blkdev_file_open (const char *path, bool readonly)
{
  return file_open (path, readonly ? O_RDONLY : O_RDWR, readonly);
}

struct blkdev *
blkdev_file_open_upgradable (const char *path)
{
  int fd = open (path, O_RDWR | O_CLOEXEC | O_NONBLOCK);

  /* Quietly fall back to read-only where the file cannot be written. */
  if (fd >= 0) {
    close (fd);
    return file_open (path, O_RDWR, true);
  }
  return file_open (path, O_RDONLY, true);
}

int
blkdev_make_writable (struct blkdev *dev)
{
  if (!__atomic_load_n (&dev->readonly, __ATOMIC_ACQUIRE))
    return 0;
  if (dev->ops != &file_ops || !((struct file_dev *) dev)->rw_fd) {
    qc_error ("%s: cannot be written (read-only file, filesystem or "
              "device)", dev->name);
    errno = EROFS;
    return -1;
  }
  __atomic_store_n (&dev->readonly, false, __ATOMIC_RELEASE);
  return 0;
}

bool
blkdev_can_write (struct blkdev *dev)
{
  return !__atomic_load_n (&dev->readonly, __ATOMIC_ACQUIRE) ||
    (dev->ops == &file_ops && ((struct file_dev *) dev)->rw_fd);
}

int
blkdev_file_fd (struct blkdev *dev)
{
  if (dev->ops != &file_ops)
    return -1;
  return ((struct file_dev *) dev)->fd;
}

int64_t
blkdev_file_allocated (struct blkdev *dev)
{
  struct stat st;

  if (dev->ops != &file_ops ||
      fstat (((struct file_dev *) dev)->fd, &st) == -1)
    return -1;
  return (int64_t) st.st_blocks * 512;
}
