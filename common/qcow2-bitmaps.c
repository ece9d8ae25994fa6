/* SPDX-License-Identifier: BSD-3-Clause */
/* Persistent dirty bitmaps, reading only: the directory parsed, and
 * every cluster the bitmaps occupy.  Keeping enabled bitmaps up to date
 * is qcow2-bitmap-track.c's; changing the set of bitmaps is
 * qcow2-bitmap-ops.c's.  Counting references and the safety net read
 * them through this file too, so it only reads.
 *
 * A hostile image could make the directory point at live clusters; we
 * never drop a reference below zero and stop at the first inconsistency,
 * leaking rather than freeing what might be in use.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

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

void
qc_bitmap_dir_free (struct qc_bitmap_dir *d)
{
  uint32_t i;

  for (i = 0; i < d->n; i++)
    free (d->e[i].name);
  free (d->e);
  free (d->buf);
  memset (d, 0, sizeof *d);
}

/* The directory bytes and one parsed entry per bitmap, each bounded by
 * the directory; reasons to give up name the entry.  0, 1 when the
 * directory is inconsistent (after qc_debug), -1 on an I/O or memory
 * error.
 */
int
qc_bitmap_dir_read (struct qc_image *img, struct qc_bitmap_dir *d)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  uint64_t size = h->bitmap_directory_size, pos = 0;
  uint32_t i;

  memset (d, 0, sizeof *d);
  if (!h->has_bitmaps_ext || h->nb_bitmaps == 0)
    return 0;
  if (size > MAX_DIRECTORY_BYTES || size > blkdev_size (img->file) ||
      h->nb_bitmaps > size / DIR_ENTRY_FIXED ||
      (h->bitmap_directory_offset & (cs - 1)) ||
      h->bitmap_directory_offset == 0) {
    qc_debug ("%s: bitmap directory: bad size or offset", img->name);
    return 1;
  }
  d->buf = malloc (size + 1);
  d->e = calloc (h->nb_bitmaps, sizeof *d->e);
  if (!d->buf || !d->e) {
    qc_error ("%s: %m", img->name);
    qc_bitmap_dir_free (d);
    return -1;
  }
  if (blkdev_pread (img->file, d->buf, size,
                    h->bitmap_directory_offset) == -1) {
    qc_bitmap_dir_free (d);
    return -1;
  }
  d->size = size;
  for (i = 0; i < h->nb_bitmaps; i++) {
    struct qc_bitmap_entry *e = &d->e[i];
    const uint8_t *p = d->buf + pos;
    uint64_t len;

    if (pos + DIR_ENTRY_FIXED > size)
      goto bad;
    e->table_offset = get_be64 (p);
    e->table_size = get_be32 (p + 8);
    e->flags = get_be32 (p + 12);
    e->type = p[16];
    e->granularity_bits = p[17];
    e->name_size = get_be16 (p + 18);
    e->extra_size = get_be32 (p + 20);
    len = (DIR_ENTRY_FIXED + (uint64_t) e->extra_size + e->name_size + 7) &
      ~7ULL;
    if (pos + len > size || e->name_size == 0 ||
        e->name_size > QC_BITMAP_NAME_MAX ||
        (e->table_offset & (cs - 1)) || e->table_offset == 0 ||
        (uint64_t) e->table_size * 8 > blkdev_size (img->file))
      goto bad;
    e->name = strndup ((const char *) p + DIR_ENTRY_FIXED + e->extra_size,
                       e->name_size);
    if (!e->name) {
      qc_error ("%s: %m", img->name);
      qc_bitmap_dir_free (d);
      return -1;
    }
    e->pos = pos;
    e->len = len;
    d->n++;
    pos += len;
  }
  if (pos != size)
    goto bad;
  return 0;
 bad:
  qc_debug ("%s: bitmap directory entry %" PRIu32 " is inconsistent",
            img->name, i);
  qc_bitmap_dir_free (d);
  return 1;
}

/* Bitmap e's table (host byte order, e->table_size entries) and its
 * nbytes of data into bits (zeroed by the caller), tail bits past the
 * disk cleared: 1, or 0 when the table is inconsistent, -1 on error.
 */
int
qc_bitmap_read_data (struct qc_image *img, const struct qc_bitmap_entry *e,
                     uint64_t nbytes, uint8_t *bits, uint64_t *table)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t k, granules = (img->h.size >> e->granularity_bits) +
    ((img->h.size & ((1ULL << e->granularity_bits) - 1)) != 0);
  uint8_t *raw;

  if (e->table_size != (nbytes + cs - 1) / cs ||
      blkdev_pread (img->file, table, (size_t) e->table_size * 8,
                    e->table_offset) == -1)
    return e->table_size != (nbytes + cs - 1) / cs ? 0 : -1;
  raw = malloc (cs);
  if (!raw) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (k = 0; k < e->table_size; k++) {
    uint64_t ent = be64toh (table[k]), off = ent & TABLE_OFFSET_MASK;
    uint64_t n = nbytes - k * cs < cs ? nbytes - k * cs : cs;

    table[k] = ent;
    if ((ent & ~(TABLE_OFFSET_MASK | 1)) || (off && (ent & 1)) ||
        off + cs > blkdev_size (img->file)) {
      free (raw);
      return 0;
    }
    if (off == 0) {
      if (ent & 1)
        memset (bits + k * cs, 0xff, n);
      continue;
    }
    if (blkdev_pread (img->file, raw, cs, off) == -1) {
      free (raw);
      return -1;
    }
    memcpy (bits + k * cs, raw, n);
  }
  free (raw);
  if (granules % 8)
    bits[nbytes - 1] &= (1U << (granules % 8)) - 1;
  return 1;
}
