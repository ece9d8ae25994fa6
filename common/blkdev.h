/* SPDX-License-Identifier: BSD-3-Clause */
/* The block-device seam: the format core reads and writes storage only
 * through this interface.  A local file, a memory buffer, the plugin
 * below a filter and an opened image (qcow2 or raw) are all devices, so
 * a backing chain is devices stacked on devices.
 *
 * Conventions: every call returns 0 on success or -1 with errno set,
 * after reporting what went wrong through qc_error (see qc-error.h).
 * Reads past the end of a device return zeros for the part beyond the
 * end, as a host file does in qemu: callers that need metadata inside
 * the device check the bounds themselves.
 */
#ifndef QC_BLKDEV_H
#define QC_BLKDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Extent flags, equal to NBD's NBD_STATE_HOLE and NBD_STATE_ZERO. */
#define BLKDEV_EXTENT_HOLE 1
#define BLKDEV_EXTENT_ZERO 2

/* Request flags. */
#define BLKDEV_FUA       1      /* durable before returning */
#define BLKDEV_MAY_TRIM  2      /* zero: may deallocate */
#define BLKDEV_FAST_ZERO 4      /* zero: fail with ENOTSUP if it is slow */

struct blkdev;

/* Called for each extent, in order, without gaps.  Returns 0 to go on,
 * -1 (errno set) to stop with an error.
 */
typedef int (*blkdev_extent_fn) (void *opaque, uint64_t offset,
                                 uint64_t length, uint32_t flags);

struct blkdev_ops {
  int (*pread) (struct blkdev *dev, void *buf, size_t count,
                uint64_t offset);
  int (*pwrite) (struct blkdev *dev, const void *buf, size_t count,
                 uint64_t offset, unsigned flags);
  /* Make the range read as zeros / discard it (advisory). */
  int (*zero) (struct blkdev *dev, uint64_t count, uint64_t offset,
               unsigned flags);
  int (*trim) (struct blkdev *dev, uint64_t count, uint64_t offset,
               unsigned flags);
  int (*flush) (struct blkdev *dev);
  /* Describe [offset, offset+count) (already clipped to the size).  May
   * stop early after at least one extent; callers loop.
   */
  int (*extents) (struct blkdev *dev, uint64_t offset, uint64_t count,
                  blkdev_extent_fn fn, void *opaque);
  void (*close) (struct blkdev *dev);
};

struct blkdev {
  const struct blkdev_ops *ops;
  char *name;                   /* for messages: a path or a description */
  uint64_t size;                /* current size in bytes */
  bool readonly;
  bool fixed_size;              /* cannot grow: allocation past the end
                                 * fails with ENOSPC */
};

/* The size, which a writer may grow while others read it. */
static inline uint64_t
blkdev_size (const struct blkdev *dev)
{
  return __atomic_load_n (&dev->size, __ATOMIC_ACQUIRE);
}

/* Generic wrappers: bounds handling and zero fill past the end. */
extern int blkdev_pread (struct blkdev *dev, void *buf, size_t count,
                         uint64_t offset);
extern int blkdev_pwrite (struct blkdev *dev, const void *buf, size_t count,
                          uint64_t offset, unsigned flags);
/* Zero falls back to writing zeros; trim to doing nothing. */
extern int blkdev_zero (struct blkdev *dev, uint64_t count, uint64_t offset,
                        unsigned flags);
extern int blkdev_trim (struct blkdev *dev, uint64_t count, uint64_t offset,
                        unsigned flags);
extern int blkdev_flush (struct blkdev *dev);
/* Extents of [offset, offset+count), clipped to the size.  A range past
 * the end of the device is reported as hole+zero (a shorter backing file
 * reads as zeros).  Devices without an extents method are all data.
 */
extern int blkdev_extents (struct blkdev *dev, uint64_t offset,
                           uint64_t count, blkdev_extent_fn fn,
                           void *opaque);
extern void blkdev_close (struct blkdev *dev);

/* Local files.  fd is owned by the device afterwards. */
extern struct blkdev *blkdev_file_open (const char *path, bool readonly);
/* Read-only for now, but opened read-write where the file allows, so
 * that blkdev_make_writable can turn it writable without a new device.
 */
extern struct blkdev *blkdev_file_open_upgradable (const char *path);
extern int blkdev_make_writable (struct blkdev *dev);
/* Whether blkdev_make_writable would succeed (changing nothing). */
extern bool blkdev_can_write (struct blkdev *dev);
extern int blkdev_file_fd (struct blkdev *dev);
/* Bytes the file occupies on its filesystem, or -1 if not a file. */
extern int64_t blkdev_file_allocated (struct blkdev *dev);

/* Memory: a copy of len bytes of data (data may be NULL for zeros). */
extern struct blkdev *blkdev_memory_new (const void *data, size_t len,
                                         bool readonly);

#endif /* QC_BLKDEV_H */
