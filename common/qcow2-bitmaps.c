/* SPDX-License-Identifier: BSD-3-Clause */
/* Persistent dirty bitmaps: finding every cluster they occupy.  We do
 * not maintain them, so before the first write the image's bitmaps
 * autoclear bit is cleared (qemu then knows they are stale and ignores
 * them) and the clusters they occupied are given back (qcow2-write.c),
 * so that the image has no leaked clusters afterwards.  Counting
 * references and the safety net read them through this file too, so
 * it only reads: giving back lives with the write path.
 *
 * A hostile image could make the directory point at live clusters; we
 * never drop a reference below zero and stop at the first inconsistency,
 * leaking rather than freeing what might be in use.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"

#define MAX_DIRECTORY_BYTES (64ULL << 20)
#define DIR_ENTRY_FIXED 24
#define TABLE_OFFSET_MASK 0x00fffffffffffe00ULL

/* Call fn for every range of clusters the bitmaps occupy: the
 * directory, each bitmap table and each bitmap data cluster.  Stops at
 * the first fn error or inconsistency (returns 1 then, -1 on an I/O or
 * memory error, 0 when done).  Bounded by the file: the directory and
 * the tables must fit in it.
 */
int
qc_bitmaps_walk (struct qc_image *img,
                 int (*fn) (struct qc_image *img, uint64_t offset,
                            uint64_t bytes, void *opaque),
                 void *opaque)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  uint64_t size = h->bitmap_directory_size, pos = 0;
  uint8_t *dir;
  uint32_t i;
  int r = 0;

  if (!h->has_bitmaps_ext || h->nb_bitmaps == 0)
    return 0;
  if (size > MAX_DIRECTORY_BYTES || size > blkdev_size (img->file) ||
      (h->bitmap_directory_offset & (cs - 1)))
    return 1;
  dir = malloc (size + 1);
  if (!dir) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  if (blkdev_pread (img->file, dir, size, h->bitmap_directory_offset) == -1) {
    free (dir);
    return -1;
  }
  if (fn (img, h->bitmap_directory_offset, size, opaque) != 0)
    r = 1;
  for (i = 0; i < h->nb_bitmaps && r == 0; i++) {
    uint64_t toff, k, *table;
    uint32_t tsize;

    if (pos + DIR_ENTRY_FIXED > size) {
      r = 1;
      break;
    }
    toff = get_be64 (dir + pos);
    tsize = get_be32 (dir + pos + 8);
    pos += (DIR_ENTRY_FIXED + get_be32 (dir + pos + 20) +
            get_be16 (dir + pos + 18) + 7) & ~7ULL;
    if ((toff & (cs - 1)) || toff == 0 ||
        (uint64_t) tsize * 8 > blkdev_size (img->file)) {
      r = 1;
      break;
    }
    table = malloc ((size_t) tsize * 8 + 1);
    if (!table) {
      qc_error ("%s: %m", img->name);
      r = -1;
      break;
    }
    if (blkdev_pread (img->file, table, (size_t) tsize * 8, toff) == -1)
      r = -1;
    for (k = 0; k < tsize && r == 0; k++) {
      uint64_t off = be64toh (table[k]) & TABLE_OFFSET_MASK;
      if (off && fn (img, off, cs, opaque) != 0)
        r = 1;
    }
    free (table);
    if (r == 0 && fn (img, toff, (uint64_t) tsize * 8, opaque) != 0)
      r = 1;
  }
  free (dir);
  return r;
}
