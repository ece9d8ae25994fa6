/* SPDX-License-Identifier: BSD-3-Clause */
/* Refcounts: qemu's test for a metadata-preallocated image, which
 * decides how extents of data clusters that are holes in the host file
 * are reported.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"

/* Count clusters of the file with a non-zero refcount, stopping at
 * limit.  Reads the refcount table and blocks one at a time.
 */
static int
count_used_clusters (struct qc_image *img, uint64_t nr_clusters,
                     uint64_t limit, uint64_t *count)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  const uint64_t per_block = (cs * 8) >> h->refcount_order;
  const uint64_t table_entries =
    (uint64_t) h->refcount_table_clusters * cs / 8;
  uint8_t *block = malloc (cs);
  uint64_t i, j, n = 0;

  if (!block) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = 0; i * per_block < nr_clusters && i < table_entries && n < limit;
       i++) {
    uint8_t e[8];
    uint64_t boff;

    if (blkdev_pread (img->file, e, 8,
                      h->refcount_table_offset + i * 8) == -1)
      goto err;
    boff = get_be64 (e) & QCOW2_OFFSET_MASK;
    if (boff == 0)
      continue;
    if ((boff & (cs - 1)) || boff >= blkdev_size (img->file)) {
      qc_error ("%s: refcount table entry %" PRIu64 " points to a bad "
                "refcount block offset 0x%" PRIx64, img->name, i, boff);
      errno = EIO;
      goto err;
    }
    if (blkdev_pread (img->file, block, cs, boff) == -1)
      goto err;
    for (j = 0; j < per_block && i * per_block + j < nr_clusters &&
           n < limit; j++)
      n += qc_refcount_entry_get (block, j, h->refcount_order) != 0;
  }
  free (block);
  *count = n;
  return 0;
 err:
  free (block);
  return -1;
}

/* qemu treats an image as metadata-preallocated when it has clearly
 * more clusters in use than blocks allocated in the host file; then it
 * reports data clusters that are holes in the file as zero.  We do the
 * same, so that our extents agree with qemu's.
 */
int
qc_detect_metadata_prealloc (struct qc_image *img, bool *ret)
{
  const uint64_t cs = img->h.cluster_size;
  int64_t allocated = blkdev_file_allocated (img->file);
  uint64_t real_clusters, threshold, count;

  *ret = false;
  /* Holes in an encrypted image's clusters do not read as zeros. */
  if (allocated < 0 || img->external_data || img->crypto)
    return 0;
  real_clusters = allocated / cs;
  threshold = real_clusters * 10 / 9;
  if (threshold < real_clusters + 2)
    threshold = real_clusters + 2;
  if (count_used_clusters (img, (blkdev_size (img->file) + cs - 1) / cs,
                           threshold, &count) == -1)
    return -1;
  *ret = count >= threshold;
  return 0;
}
