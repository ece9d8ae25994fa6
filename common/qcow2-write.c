/* SPDX-License-Identifier: BSD-3-Clause */
/* Writing a view: the entry point of every change (qc_before_first_write),
 * writes dispatched to compressed or uncompressed writing, flush.
 *
 * Writes to clusters that are allocated and not shared (COPIED) go
 * straight to the host cluster without the metadata lock.  Anything else
 * takes the lock only to decide and to publish: the guest clusters are
 * marked in flight, the lock is dropped for the copy-on-write reads and
 * the data write, and the new L2 entries are stored afterwards, so a new
 * entry never points at data that has not been written
 * (qcow2-write-alloc.c).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"

/* Giving back the clusters of bitmaps nobody trusts any more, when
 * they cannot be kept up to date (see qcow2-bitmap-track.c).  Drop one
 * reference to each cluster of a range, if it has one.
 */
static int
release_range (struct qc_image *img, uint64_t offset, uint64_t bytes,
               void *opaque)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t c, v;

  if (offset == 0 || (offset & (cs - 1)))
    return -1;
  for (c = offset / cs; bytes && c <= (offset + bytes - 1) / cs; c++) {
    if (qc_refcount_get (img, c, &v) == -1 || v == 0)
      return -1;
    if (qc_refcount_add (img, c, -1) == -1)
      return -1;
  }
  return 0;
}

static int
release_bitmaps (struct qc_image *img)
{
  int r = qc_bitmaps_walk (img, release_range, NULL);

  if (r == -1)
    return -1;
  if (r == 1)
    qc_debug ("%s: bitmap metadata is inconsistent; some of its clusters "
              "stay leaked", img->name);
  return 0;
}

/* Every write, zero and trim of a view starts here (the view's device
 * checks only bounds): the header changes due before the first change
 * of the image, and the refusals once it failed or was marked corrupt.
 * It belongs to the write path, not to opening: the view below the
 * image must not call back up into qcow2-image.c.
 */
int
qc_before_first_write (struct qc_image *img)
{
  uint64_t keep;
  int r = 0;

  if (__atomic_load_n (&img->failed, __ATOMIC_ACQUIRE)) {
    qc_error ("%s: an earlier I/O error left the image's metadata in an "
              "unknown state: reopen it", img->name);
    errno = EIO;
    return -1;
  }
  if (__atomic_load_n (&img->marked_corrupt, __ATOMIC_ACQUIRE)) {
    qc_error ("%s: the image was marked corrupt (see the first error): no "
              "more writes; repair it with qemu-img check -r all",
              img->name);
    errno = EIO;
    return -1;
  }
  if (__atomic_load_n (&img->written, __ATOMIC_ACQUIRE))
    return 0;
  pthread_mutex_lock (&img->meta_lock);
  if (img->written)
    goto out;
  /* Enabled persistent bitmaps are kept up to date (marked in use
   * first), unless their directory is inconsistent.  Unknown autoclear
   * features, and bitmaps we cannot keep: clearing their bits before the
   * first write tells qemu they are stale.
   */
  keep = img->h.autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW;
  if (!img->external_data)
    keep = 0;
  /* What the refcounts cannot be trusted with, from here on: built
   * first, so that even the bitmap directory's in-use mark is checked.
   */
  if (qc_guard_build (img) == -1) {
    r = -1;
    goto out;
  }
  r = qc_bitmaps_track_start (img);
  if (r == -1)
    goto out;
  if (r == 0)
    keep |= QCOW2_AUTOCLEAR_BITMAPS;
  r = 0;
  if (keep != img->h.autoclear_features) {
    uint64_t be = htobe64 (keep);
    bool had_bitmaps =
      img->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS;

    if (qc_write_header_field (img, QCOW2_HDR_AUTOCLEAR, &be, 8) == -1 ||
        blkdev_flush (img->file) == -1) {
      r = -1;
      goto out;
    }
    img->h.autoclear_features = keep;
    /* The bit is durable: nobody trusts the bitmaps any more, so their
     * clusters can be given back, and the guard counts again without
     * them (no longer written in place, they may be handed out).
     */
    if (had_bitmaps &&
        (release_bitmaps (img) == -1 || qc_guard_build (img) == -1)) {
      r = -1;
      goto out;
    }
  }
  __atomic_store_n (&img->written, true, __ATOMIC_RELEASE);
 out:
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}

int
qc_view_write_data (struct qc_view *v, const void *buf, size_t count,
                    uint64_t offset, unsigned flags)
{
  struct qc_image *img = v->img;
  const uint8_t *p = buf;

  while (count > 0) {
    uint64_t piece;
    int64_t n = qc_write_compressed (v, p, offset, count);

    if (n == -1)
      return -1;
    if (n > 0) {
      p += n;
      offset += n;
      count -= n;
      continue;
    }
    /* With compression, whole clusters must come back here. */
    piece = count;
    if (img->compress >= 0) {
      uint64_t cs = img->h.cluster_size;
      if (piece > cs - offset % cs)
        piece = cs - offset % cs;
    }
    n = qc_write_plain (v, p, offset, piece);
    if (n == -1)
      return -1;
    p += n;
    offset += n;
    count -= n;
  }
  if (flags & BLKDEV_FUA)
    return qc_view_flush (v);
  return 0;
}

int
qc_view_write (struct qc_view *v, const void *buf, size_t count,
               uint64_t offset, unsigned flags)
{
  if (qc_before_first_write (v->img) == -1)
    return -1;
  qc_bitmaps_mark (v, offset, count);
  return qc_view_write_data (v, buf, count, offset, flags);
}

int
qc_view_flush (struct qc_view *v)
{
  struct qc_image *img = v->img;
  int r;

  pthread_mutex_lock (&img->meta_lock);
  r = qc_flush_locked (img);
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}
