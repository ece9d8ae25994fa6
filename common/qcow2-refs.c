/* SPDX-License-Identifier: BSD-3-Clause */
/* Counting references to host clusters: what every L1 and L2 table
 * (the active image's and each snapshot's), the header structures and
 * the bitmaps point at.  Rebuilding refcounts, checking and repairing,
 * and the safety net all start from this count.
 *
 * Memory is one counter per cluster of the file: bounded by the file's
 * real size, not by what the header claims.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qc-progress.h"
#include "qcow2-int.h"

/* Count n references to every cluster in [offset, offset+bytes). */
static void
ref_range_n (const struct qc_image *img, struct qc_refs *r, uint64_t offset,
             uint64_t bytes, uint32_t n)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t c, first, last;

  if (bytes == 0)
    return;
  first = offset / cs;
  last = (offset + bytes - 1) / cs;
  for (c = first; c <= last; c++) {
    if (c >= r->nr_clusters) {
      r->out_of_range += n;
      if (c < r->past_end)
        r->past_end = c;
    }
    else
      r->count[c] = r->count[c] > UINT32_MAX - n ? UINT32_MAX
                                                 : r->count[c] + n;
  }
}

static void
ref_range (const struct qc_image *img, struct qc_refs *r, uint64_t offset,
           uint64_t bytes)
{
  ref_range_n (img, r, offset, bytes, 1);
}

/* The L2 tables of every L1 table, each with how many L1 entries point
 * at it: a table shared by the active image and 20 snapshots is read
 * once, its entries counted 21 times.
 */
static int
l2_list_add (struct qc_image *img, struct qc_offset_list *l,
             const uint64_t *l1, uint32_t l1_size, bool active)
{
  uint32_t i;

  for (i = 0; i < l1_size; i++) {
    uint64_t off = __atomic_load_n (&l1[i], __ATOMIC_RELAXED) &
      QCOW2_OFFSET_MASK;

    if (off && qc_offset_list_add (img->name, l, off | active) == -1)
      return -1;
  }
  return 0;
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}

/* The tables themselves, then what each distinct table points to.  An
 * offset with bit 0 set came from the active L1 table (offsets are
 * sector-aligned, so the bit is free).
 */
static int
ref_l2_tables (struct qc_image *img, struct qc_refs *r,
               struct qc_offset_list *l)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  const uint64_t entries = 1ULL << h->l2_bits;
  bool external = img->external_data;
  uint8_t *t;
  size_t i, k;
  uint64_t j;

  t = malloc (cs);
  if (!t) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  if (l->len > 1)
    qsort (l->offsets, l->len, sizeof *l->offsets, cmp_u64);
  for (i = 0; i < l->len; i = k) {
    uint64_t l2off = l->offsets[i] & ~1ULL;
    bool active = false;
    uint32_t n;

    qc_step_progress (i, l->len);

    for (k = i; k < l->len && (l->offsets[k] & ~1ULL) == l2off; k++)
      active |= l->offsets[k] & 1;
    n = k - i > UINT32_MAX ? UINT32_MAX : k - i;
    ref_range_n (img, r, l2off, cs, n);
    if ((l2off & (cs - 1)) || l2off / cs >= r->nr_clusters)
      continue;                 /* counted as out of range or unaligned */
    if (l2cache_read (img->cache, img->file, l2off, t) == -1) {
      free (t);
      return -1;
    }
    for (j = 0; j < entries; j++) {
      uint64_t e, bm, host;
      qc_load_entry (img, t + j * h->l2_entry_size, &e, &bm);
      if (e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff, clen;
        qc_compressed_extent (img, e & ~(QCOW2_OFLAG_COPIED |
                                         QCOW2_OFLAG_COMPRESSED),
                              &coff, &clen);
        ref_range_n (img, r, coff, clen, n);
        continue;
      }
      host = e & QCOW2_OFFSET_MASK;
      if (!host || external)
        continue;
      ref_range_n (img, r, host, cs, n);
      if (r->copied && active && (e & QCOW2_OFLAG_COPIED) &&
          host / cs < r->nr_clusters)
        r->copied[host / cs / 64] |= 1ULL << (host / cs % 64);
    }
  }
  free (t);
  return 0;
}

static int
ref_bitmap_range (struct qc_image *img, uint64_t offset, uint64_t bytes,
                  void *opaque)
{
  ref_range (img, opaque, offset, bytes);
  return 0;
}

/* Bitmap clusters count only while the bitmaps bit says they are valid
 * (we clear it, and give them back, before our first write).
 */
static int
ref_bitmaps (struct qc_image *img, struct qc_refs *r)
{
  if (!(img->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
    return 0;
  return qc_bitmaps_walk (img, ref_bitmap_range, r) == -1 ? -1 : 0;
}

static int
count_refs (struct qc_image *img, bool refcount_structures, bool copied,
            struct qc_refs *r)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  uint64_t end = blkdev_size (img->file) > img->alloc_end ?
    blkdev_size (img->file) : img->alloc_end;
  struct qc_offset_list l2s = { 0 };
  uint32_t i;

  memset (r, 0, sizeof *r);
  r->past_end = UINT64_MAX;
  r->nr_clusters = (end + cs - 1) / cs;
  r->count = calloc (r->nr_clusters ? r->nr_clusters : 1, sizeof *r->count);
  if (copied)
    r->copied = calloc (r->nr_clusters / 64 + 1, sizeof *r->copied);
  if (!r->count || (copied && !r->copied)) {
    qc_error ("%s: %m", img->name);
    qc_refs_free (r);
    return -1;
  }
  ref_range (img, r, 0, cs);                    /* header */
  ref_range (img, r, h->l1_table_offset, (uint64_t) h->l1_size * 8);
  if (l2_list_add (img, &l2s, img->active.l1, img->active.l1_size,
                   true) == -1)
    goto err;
  if (h->nb_snapshots)
    ref_range (img, r, h->snapshots_offset, img->snapshots_size);
  for (i = 0; i < img->nr_snapshots; i++) {
    const uint64_t *l1 = qc_snapshot_l1 (img, i);
    if (!l1)
      goto err;
    ref_range (img, r, img->snapshots[i].l1_table_offset,
               (uint64_t) img->snapshots[i].l1_size * 8);
    if (l2_list_add (img, &l2s, l1, img->snapshots[i].l1_size,
                     false) == -1)
      goto err;
  }
  if (ref_l2_tables (img, r, &l2s) == -1)
    goto err;
  if (h->has_crypto_ext)
    ref_range (img, r, h->crypto_offset, h->crypto_length);
  if (ref_bitmaps (img, r) == -1)
    goto err;
  if (refcount_structures) {
    uint64_t k;
    ref_range (img, r, h->refcount_table_offset,
               (uint64_t) h->refcount_table_clusters * cs);
    for (k = 0; k < img->reftable_entries; k++)
      if (img->reftable[k])
        ref_range (img, r, img->reftable[k], cs);
  }
  free (l2s.offsets);
  return 0;
 err:
  free (l2s.offsets);
  qc_refs_free (r);
  return -1;
}

int
qc_count_refs (struct qc_image *img, bool refcount_structures,
               struct qc_refs *r)
{
  return count_refs (img, refcount_structures, false, r);
}

int
qc_count_refs_copied (struct qc_image *img, struct qc_refs *r)
{
  return count_refs (img, true, true, r);
}

void
qc_refs_free (struct qc_refs *r)
{
  free (r->count);
  r->count = NULL;
  free (r->copied);
  r->copied = NULL;
}
