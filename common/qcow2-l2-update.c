/* SPDX-License-Identifier: BSD-3-Clause */
/* Changing L2 entries, shared by every kind of write: guest ranges in
 * flight, an L2 table made ready for change (allocated, or copied away
 * from a snapshot), storing an entry, dropping the host clusters an old
 * entry referenced, and writing back early when too much is dirty.
 * All of it with the metadata lock held.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "qcow2-int.h"

/* In-flight guest ranges: wait for overlaps, then claim. */
void
qc_inflight_wait (struct qc_image *img, uint64_t start, uint64_t end)
{
  struct qc_inflight *f;

 again:
  for (f = img->inflight; f; f = f->next)
    if (f->start < end && start < f->end) {
      pthread_cond_wait (&img->inflight_done, &img->meta_lock);
      goto again;
    }
}

void
qc_inflight_claim (struct qc_image *img, struct qc_inflight *f,
                   uint64_t start, uint64_t end)
{
  f->start = start;
  f->end = end;
  f->next = img->inflight;
  img->inflight = f;
}

void
qc_inflight_release (struct qc_image *img, struct qc_inflight *f)
{
  struct qc_inflight **pp = &img->inflight;

  while (*pp != f)
    pp = &(*pp)->next;
  *pp = f->next;
  pthread_cond_broadcast (&img->inflight_done);
}

/* Begin/end a change of extended L2 entries (see qc_load_entry). */
static void
seq_begin (struct qc_image *img)
{
  __atomic_fetch_add (&img->l2_seq, 1, __ATOMIC_ACQ_REL);
}

static void
seq_end (struct qc_image *img)
{
  __atomic_fetch_add (&img->l2_seq, 1, __ATOMIC_RELEASE);
}

/* Store an entry (and bitmap) and mark it dirty. */
void
qc_store_entry (struct qc_image *img, uint8_t *table,
                struct l2cache_entry *pin, uint64_t index, uint64_t e,
                uint64_t bm)
{
  uint8_t *p = table + index * img->h.l2_entry_size;

  if (img->h.extended_l2) {
    seq_begin (img);
    l2cache_store64 (p, e);
    l2cache_store64 (p + 8, bm);
    seq_end (img);
  }
  else
    l2cache_store64 (p, e);
  l2cache_mark_dirty (img->cache, pin, index * img->h.l2_entry_size,
                      (index + 1) * img->h.l2_entry_size);
}

/* Drop the host clusters an entry referenced (freed once durable). */
int
qc_drop_host (struct qc_image *img, uint64_t e)
{
  const uint64_t cs = img->h.cluster_size;

  if (e & QCOW2_OFLAG_COMPRESSED) {
    uint64_t desc = e & ~(QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED);
    uint64_t coff, clen, last, c;

    qc_compressed_extent (img, desc, &coff, &clen);
    last = coff + clen - 1;
    for (c = coff & ~(cs - 1); c <= (last & ~(cs - 1)); c += cs)
      if (qc_free_later (img, c) == -1)
        return -1;
    return 0;
  }
  if ((e & QCOW2_OFFSET_MASK) == 0 || qc_external_data (img))
    return 0;
  return qc_free_later (img, e & QCOW2_OFFSET_MASK);
}

/* The L2 table for l1_index, ready to be changed: allocated if there is
 * none (when create), copied if it is shared with a snapshot.  *table is
 * NULL when there is none and !create.
 */
int
qc_l2_for_write (struct qc_image *img, uint64_t l1_index, bool create,
                 uint8_t **table, struct l2cache_entry **pin)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t l1e = img->active.l1[l1_index];
  uint64_t off = l1e & QCOW2_OFFSET_MASK, new_off;
  struct l2cache_entry *old_pin = NULL;
  uint8_t *old = NULL;

  *table = NULL;
  *pin = NULL;
  if (off && (off & (cs - 1))) {
    qc_error ("%s: L1 entry %" PRIu64 " points to unaligned L2 table "
              "offset 0x%" PRIx64, img->name, l1_index, off);
    errno = EIO;
    return -1;
  }
  if (off && (l1e & QCOW2_OFLAG_COPIED)) {
    if (qc_guard_inplace_check (img, off, cs, "updating the L2 table in",
                                true) == -1)
      return -1;
    *table = l2cache_get (img->cache, img->file, off, pin);
    return *table ? 0 : -1;
  }
  if (!off && !create)
    return 0;
  if (off) {                    /* shared with a snapshot: copy it */
    old = l2cache_get (img->cache, img->file, off, &old_pin);
    if (!old)
      return -1;
  }
  if (qc_alloc_clusters (img, 1, &new_off) == -1) {
    l2cache_put (img->cache, old_pin);
    return -1;
  }
  *table = l2cache_new_table (img->cache, new_off, old, pin);
  l2cache_put (img->cache, old_pin);
  if (!*table)
    return -1;
  if (off && qc_free_later (img, off) == -1)
    return -1;
  __atomic_store_n (&img->active.l1[l1_index], new_off | QCOW2_OFLAG_COPIED,
                    __ATOMIC_RELEASE);
  qc_l1_mark_dirty (img, l1_index);
  return 0;
}

/* Write back early when too many tables are dirty (meta_lock held). */
int
qc_maybe_writeback (struct qc_image *img)
{
  if (l2cache_nr_dirty (img->cache) + l2cache_nr_dirty (img->rcache) >
      img->dirty_limit)
    return qc_flush_locked (img);
  return 0;
}

/* Does the cluster described by e keep its host cluster for a write?
 * (Allocated, not compressed, not shared.)
 */
bool
qc_has_own_host (const struct qc_image *img, uint64_t e)
{
  if (e & QCOW2_OFLAG_COMPRESSED)
    return false;
  if (qc_external_data (img))
    return (e & QCOW2_OFFSET_MASK) != 0 || (e & QCOW2_OFLAG_COPIED);
  return (e & QCOW2_OFFSET_MASK) != 0 && (e & QCOW2_OFLAG_COPIED);
}

/* Does the cluster entry (e, bm) read as zeros as a whole? */
bool
qc_entry_reads_zero (const struct qc_image *img, uint64_t e, uint64_t bm)
{
  if (e & QCOW2_OFLAG_COMPRESSED)
    return false;
  if (!img->h.extended_l2)
    return (e & QCOW2_OFLAG_ZERO) ||
      ((e & QCOW2_OFFSET_MASK) == 0 && !img->backing &&
       !(img->external_data && (e & QCOW2_OFLAG_COPIED)));
  return (bm & 0xffffffffULL) == 0 &&
    (!img->backing || (bm >> 32) == 0xffffffffULL);
}
