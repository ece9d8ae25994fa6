/* Persistent dirty bitmaps.  We do not maintain them, so before the first
 * write the image's bitmaps autoclear bit is cleared (qemu then knows
 * they are stale and ignores them) and the clusters they occupied are
 * given back, so that the image has no leaked clusters afterwards.
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

/* Drop one reference to a cluster, if it has one. */
static int
release_cluster (struct qc_image *img, uint64_t offset)
{
  uint64_t cluster = offset / img->h.cluster_size, v;

  if (offset == 0 || (offset & (img->h.cluster_size - 1)))
    return -1;
  if (qc_refcount_get (img, cluster, &v) == -1 || v == 0)
    return -1;
  return qc_refcount_add (img, cluster, -1);
}

static int
release_range (struct qc_image *img, uint64_t offset, uint64_t bytes)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t c;

  for (c = 0; c < (bytes + cs - 1) / cs; c++)
    if (release_cluster (img, offset + c * cs) == -1)
      return -1;
  return 0;
}

static int
release_bitmap (struct qc_image *img, uint64_t table_offset,
                uint32_t table_size)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t *table, i;
  int r = 0;

  if ((table_offset & (cs - 1)) || table_offset == 0 ||
      (uint64_t) table_size * 8 > img->file->size)
    return -1;
  table = malloc ((size_t) table_size * 8 + 1);
  if (!table)
    return -1;
  if (blkdev_pread (img->file, table, (size_t) table_size * 8,
                    table_offset) == -1) {
    free (table);
    return -1;
  }
  for (i = 0; i < table_size && r == 0; i++) {
    uint64_t off = be64toh (table[i]) & TABLE_OFFSET_MASK;
    if (off)
      r = release_cluster (img, off);
  }
  free (table);
  if (r == 0)
    r = release_range (img, table_offset, (uint64_t) table_size * 8);
  return r;
}

int
qc_bitmaps_release (struct qc_image *img)
{
  const struct qcow2_header *h = &img->h;
  uint64_t size = h->bitmap_directory_size, pos = 0;
  uint8_t *dir;
  uint32_t i;
  int r = 0;

  if (!h->has_bitmaps_ext || h->nb_bitmaps == 0)
    return 0;
  if (size > MAX_DIRECTORY_BYTES || size > img->file->size ||
      (h->bitmap_directory_offset & (h->cluster_size - 1))) {
    qc_debug ("%s: bitmap directory is invalid; its clusters stay leaked",
              img->name);
    return 0;
  }
  dir = malloc (size + 1);
  if (!dir) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  if (blkdev_pread (img->file, dir, size, h->bitmap_directory_offset) == -1) {
    free (dir);
    return -1;
  }
  for (i = 0; i < h->nb_bitmaps && r == 0; i++) {
    uint64_t entry;
    if (pos + DIR_ENTRY_FIXED > size) {
      r = -1;
      break;
    }
    entry = DIR_ENTRY_FIXED + get_be32 (dir + pos + 20) +
      get_be16 (dir + pos + 18);
    r = release_bitmap (img, get_be64 (dir + pos), get_be32 (dir + pos + 8));
    pos += (entry + 7) & ~7ULL;
  }
  free (dir);
  if (r == 0)
    r = release_range (img, h->bitmap_directory_offset, size);
  if (r == -1)
    qc_debug ("%s: bitmap metadata is inconsistent; some of its clusters "
              "stay leaked", img->name);
  return 0;
}
