/* SPDX-License-Identifier: BSD-3-Clause */
/* A memory buffer as a block device: for unit tests and the fuzzer. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "blkdev.h"
#include "qc-error.h"

struct mem_dev {
  struct blkdev dev;
  char *data;
};

static int
mem_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  struct mem_dev *m = (struct mem_dev *) dev;

  memcpy (buf, m->data + offset, count);
  return 0;
}

static int
mem_pwrite (struct blkdev *dev, const void *buf, size_t count,
            uint64_t offset, unsigned flags)
{
  struct mem_dev *m = (struct mem_dev *) dev;

  if (offset > dev->size || count > dev->size - offset) {
    qc_error ("%s: write past the end (offset %" PRIu64 ")",
              dev->name, offset);
    errno = ENOSPC;
    return -1;
  }
  memcpy (m->data + offset, buf, count);
  return 0;
}

static void
mem_close (struct blkdev *dev)
{
  struct mem_dev *m = (struct mem_dev *) dev;

  free (m->data);
  free (dev->name);
  free (m);
}

static const struct blkdev_ops mem_ops = {
  .pread = mem_pread,
  .pwrite = mem_pwrite,
  .close = mem_close,
};

struct blkdev *
blkdev_memory_new (const void *data, size_t len, bool readonly)
{
  struct mem_dev *m = calloc (1, sizeof *m);

  if (!m || !(m->data = calloc (1, len ? len : 1)) ||
      !(m->dev.name = strdup ("memory"))) {
    qc_error ("memory device: %m");
    if (m)
      free (m->data);
    free (m);
    return NULL;
  }
  if (data)
    memcpy (m->data, data, len);
  m->dev.ops = &mem_ops;
  m->dev.size = len;
  m->dev.readonly = readonly;
  m->dev.fixed_size = true;
  return &m->dev;
}
