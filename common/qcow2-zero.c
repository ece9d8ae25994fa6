/* SPDX-License-Identifier: BSD-3-Clause */
/* Zeroing and discarding: whole units (clusters or subclusters) by
 * their L2 entries alone, the parts at the edges by writing zeros.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "qcow2-int.h"

#define ALL_ZERO_BITS 0xffffffff00000000ULL

/* Does guest [offset, offset+len) already read as zeros? */
static int
reads_as_zero (struct qc_view *v, uint64_t offset, uint64_t len, bool *ret)
{
  struct qc_image *img = v->img;

  *ret = true;
  while (len > 0) {
    struct qc_run run;
    if (qc_map (v, offset, len, &run) == -1)
      return -1;
    if (run.kind == QC_COMPRESSED && img->compress >= 0) {
      /* Rewriting it would decompress and compress it again: see
       * whether that part holds zeros already (nbdcopy zeroes the
       * holes of clusters it has written).
       */
      uint8_t *buf;
      bool zero;

      /* A cluster at a time: the run may be long. */
      if (run.length > img->h.cluster_size - offset % img->h.cluster_size)
        run.length = img->h.cluster_size - offset % img->h.cluster_size;
      buf = malloc (run.length);

      if (!buf) {
        qc_error ("%s: %m", img->name);
        return -1;
      }
      if (blkdev_pread (&v->dev, buf, run.length, offset) == -1) {
        free (buf);
        return -1;
      }
      zero = buf[0] == 0 && memcmp (buf, buf + 1, run.length - 1) == 0;
      free (buf);
      if (!zero) {
        *ret = false;
        return 0;
      }
    }
    else if (run.kind == QC_DATA || run.kind == QC_COMPRESSED ||
        (run.kind == QC_UNALLOCATED && img->backing)) {
      *ret = false;
      return 0;
    }
    offset += run.length;
    len -= run.length;
  }
  return 0;
}

/* Write explicit zeros over a partial unit (cluster or subcluster). */
static int
write_zeros (struct qc_view *v, uint64_t offset, uint64_t len,
             unsigned flags)
{
  uint8_t *zeros;
  bool already;
  int r;

  if (len == 0)
    return 0;
  if (reads_as_zero (v, offset, len, &already) == -1)
    return -1;
  if (already)
    return 0;
  if (flags & BLKDEV_FAST_ZERO) {
    errno = ENOTSUP;
    return -1;
  }
  zeros = calloc (1, len);
  if (!zeros) {
    qc_error ("%s: %m", v->img->name);
    return -1;
  }
  r = qc_view_write_data (v, zeros, len, offset, 0);
  free (zeros);
  return r;
}

enum zero_mode {
  ZERO_KEEP,                    /* reads as zero, host kept if own */
  ZERO_UNMAP,                   /* reads as zero, host freed */
  DEALLOCATE,                   /* unallocated (v2: backing shows) */
};

/* Metadata-only zeroing of whole units [offset, end) in one L2 table. */
static int
zero_units (struct qc_view *v, uint64_t offset, uint64_t end,
            enum zero_mode mode)
{
  struct qc_image *img = v->img;
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size, scs = h->subcluster_size;
  const uint64_t l1_index = offset / qc_l2_span (img);
  struct l2cache_entry *pin;
  uint8_t *table;
  uint64_t c;
  int r = 0;

  pthread_mutex_lock (&img->meta_lock);
  qc_inflight_wait (img, offset & ~(cs - 1), (end + cs - 1) & ~(cs - 1));
  /* No table and nothing underneath: already reads as zeros. */
  if (qc_l2_for_write (img, l1_index, img->backing != NULL, &table,
                       &pin) == -1) {
    r = -1;
    goto out;
  }
  if (!table)
    goto out;

  for (c = offset & ~(cs - 1); c < end && r == 0; c += cs) {
    uint64_t idx = (c % qc_l2_span (img)) / cs;
    uint64_t lo = offset > c ? offset : c, hi = end < c + cs ? end : c + cs;
    uint64_t e, bm, ne, nbm = 0;
    bool whole = lo == c && hi == c + cs;

    qc_load_entry (img, table + idx * h->l2_entry_size, &e, &bm);
    if (!h->extended_l2) {
      if (mode == DEALLOCATE)
        ne = 0;
      else if (mode == ZERO_KEEP && qc_has_own_host (img, e))
        ne = (e & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED)) | QCOW2_OFLAG_ZERO;
      else
        ne = QCOW2_OFLAG_ZERO;
    }
    else if (whole) {
      if (mode == ZERO_KEEP && qc_has_own_host (img, e)) {
        ne = e;
        nbm = ALL_ZERO_BITS;
      }
      else {
        ne = 0;
        nbm = mode == DEALLOCATE ? 0 : ALL_ZERO_BITS;
      }
    }
    else {
      uint32_t first = (lo - c) / scs, last = (hi - c) / scs;
      uint64_t mask = (last >= 32 ? 0xffffffffULL : (1ULL << last) - 1) &
        ~((1ULL << first) - 1);

      if (e & QCOW2_OFLAG_COMPRESSED) {
        /* Part of a compressed cluster: needs real zeros. */
        pthread_mutex_unlock (&img->meta_lock);
        l2cache_put (img->cache, pin);
        return -2;
      }
      ne = e;
      nbm = mode == DEALLOCATE ? bm & ~(mask | (mask << 32))
                               : (bm & ~mask) | (mask << 32);
    }
    if (ne == e && nbm == bm)
      continue;
    if ((ne & QCOW2_OFFSET_MASK) != (e & QCOW2_OFFSET_MASK) ||
        (e & QCOW2_OFLAG_COMPRESSED))
      r = qc_drop_host (img, e);
    qc_store_entry (img, table, pin, idx, ne, nbm);
  }
  if (r == 0)
    r = qc_maybe_writeback (img);
  l2cache_put (img->cache, pin);
 out:
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}

/* Zero or deallocate whole units in [offset, end), table by table. */
static int
zero_range (struct qc_view *v, uint64_t offset, uint64_t end,
            enum zero_mode mode)
{
  struct qc_image *img = v->img;

  while (offset < end) {
    uint64_t in_l2 = qc_l2_span (img) - offset % qc_l2_span (img);
    uint64_t stop = end - offset < in_l2 ? end : offset + in_l2;
    int r = zero_units (v, offset, stop, mode);

    if (r == -2) {              /* compressed: write real zeros */
      uint64_t cs = img->h.cluster_size;
      uint64_t cend = (offset & ~(cs - 1)) + cs;
      stop = cend < stop ? cend : stop;
      r = write_zeros (v, offset, stop - offset, 0);
    }
    if (r == -1)
      return -1;
    offset = stop;
  }
  return 0;
}

int
qc_view_zero (struct qc_view *v, uint64_t count, uint64_t offset,
              unsigned flags)
{
  struct qc_image *img = v->img;
  const struct qcow2_header *h = &img->h;
  const uint64_t unit = h->subcluster_size;
  uint64_t end = offset + count;
  uint64_t a = (offset + unit - 1) & ~(unit - 1), b = end & ~(unit - 1);
  enum zero_mode mode = (flags & BLKDEV_MAY_TRIM) ? ZERO_UNMAP : ZERO_KEEP;

  if (qc_before_first_write (img) == -1)
    return -1;
  qc_bitmaps_mark (v, offset, count);

  /* The last partial unit at the end of the disk counts as whole. */
  if (end == v->dev.size)
    b = (end + unit - 1) & ~(unit - 1);
  if (a >= b) {
    a = b = offset;
    b = offset;
  }
  if (h->version == 2) {
    /* No zero flag: deallocate if nothing shows through, else write. */
    if (img->backing || a >= b) {
      if (flags & BLKDEV_FAST_ZERO) {
        bool already;
        if (reads_as_zero (v, offset, count, &already) == -1)
          return -1;
        if (!already) {
          errno = ENOTSUP;
          return -1;
        }
      }
      return write_zeros (v, offset, count, flags);
    }
    mode = DEALLOCATE;
  }
  if (a < b) {
    if (write_zeros (v, offset, a - offset, flags) == -1 ||
        zero_range (v, a, b, mode) == -1 ||
        (b < end && write_zeros (v, b, end - b, flags) == -1))
      return -1;
  }
  else if (write_zeros (v, offset, count, flags) == -1)
    return -1;
  /* A raw external data file must read as the guest does. */
  if (qc_external_data (img) &&
      (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW) && a < b &&
      blkdev_zero (img->data, (b < end ? b : end) - a, a,
                   flags & BLKDEV_MAY_TRIM) == -1)
    return -1;
  if (flags & BLKDEV_FUA)
    return qc_view_flush (v);
  return 0;
}

int
qc_view_trim (struct qc_view *v, uint64_t count, uint64_t offset,
              unsigned flags)
{
  struct qc_image *img = v->img;
  const uint64_t cs = img->h.cluster_size;
  uint64_t end = offset + count;
  uint64_t a = (offset + cs - 1) & ~(cs - 1), b = end & ~(cs - 1);

  if (qc_before_first_write (img) == -1)
    return -1;
  qc_bitmaps_mark (v, offset, count);

  /* A v2 image cannot make a cluster read as zeros without writing, and
   * deallocating would let the backing file show through: like qemu, do
   * nothing (a discard is advisory).
   */
  if (img->h.version == 2 && img->backing)
    goto out;
  /* Only whole clusters are discarded (and the partial last one). */
  if (end == v->dev.size)
    b = (end + cs - 1) & ~(cs - 1);
  if (a < b) {
    enum zero_mode mode = img->h.version == 2 ? DEALLOCATE : ZERO_UNMAP;
    if (zero_range (v, a, b, mode) == -1)
      return -1;
    if (qc_external_data (img) &&
        (img->h.autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW) &&
        blkdev_zero (img->data, (b < end ? b : end) - a, a,
                     BLKDEV_MAY_TRIM) == -1)
      return -1;
  }
 out:
  if (flags & BLKDEV_FUA)
    return qc_view_flush (v);
  return 0;
}
