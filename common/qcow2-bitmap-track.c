/* SPDX-License-Identifier: BSD-3-Clause */
/* Keeping enabled persistent bitmaps up to date while the image is
 * written, the way qemu does:
 *
 *   - before the first change of the disk, every enabled ("auto")
 *     bitmap is marked in use in the directory (written in place: only
 *     flags change, so any mix of old and new sectors is valid), and
 *     that is flushed;
 *   - the bits are kept in memory (loaded then), and every write, zero
 *     and trim of the active disk sets the bits it touches at each
 *     bitmap's granularity (an atomic OR: no lock, no I/O);
 *   - at a clean close the data goes back into the bitmap's clusters
 *     (in place: the in-use flag on disk says the data is not to be
 *     trusted meanwhile; new clusters, counted and flushed first, where
 *     a table entry said "all zeros" or "all ones"), the table is
 *     written, flushed, and only then is the in-use flag cleared.
 *
 * A kill therefore leaves the bitmaps in use, which qemu reports as
 * inconsistent: never a bitmap that claims to be complete and is not.
 * An enabled bitmap that cannot be kept (unknown type or flags, extra
 * data, a size that does not match the disk, clusters shared with
 * anything, too large to hold in memory) is marked in use and left so.
 * Disabled bitmaps and those already in use are not touched.  The
 * flags are not cleared at flush: the next write would have to set
 * them again, a synchronous directory write on the write path.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"


struct tracked {
  uint32_t idx;                 /* in the directory */
  unsigned gbits;
  uint64_t nbytes;
  uint8_t *bits;                /* LSB first, as stored */
  uint64_t *table;              /* host byte order */
  uint32_t table_size;
  uint64_t table_offset;
  bool changed;                 /* atomic */
};

struct qc_bitmap_track {
  struct qc_bitmap_dir dir;
  struct tracked *t;
  uint32_t nt;
};

static void
track_free (struct qc_bitmap_track *t)
{
  uint32_t i;

  if (!t)
    return;
  for (i = 0; i < t->nt; i++) {
    free (t->t[i].bits);
    free (t->t[i].table);
  }
  free (t->t);
  qc_bitmap_dir_free (&t->dir);
  free (t);
}

void
qc_bitmaps_track_free (struct qc_image *img)
{
  track_free (img->bmt);
  img->bmt = NULL;
}

/* Is host cluster range [offset, offset + bytes) ours alone? */
static int
owned (struct qc_image *img, uint64_t offset, uint64_t bytes)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t c, v;

  if (bytes == 0)
    return 1;
  for (c = offset / cs; c <= (offset + bytes - 1) / cs; c++) {
    if (qc_refcount_get (img, c, &v) == -1)
      return -1;
    if (v != 1)
      return 0;
  }
  return 1;
}

/* Load bitmap e into tr: 1 when it can be kept, 0 when not (said in a
 * debug message), -1 on error.
 */
static int
load (struct qc_image *img, const struct qc_bitmap_entry *e,
      struct tracked *tr, uint64_t *budget)
{
  const uint64_t cs = img->h.cluster_size;
  const char *why = NULL;
  uint64_t nbytes, k;
  int r;

  if (e->type != 1)
    why = "its type is not dirty tracking";
  else if (e->flags & ~(QC_BITMAP_IN_USE | QC_BITMAP_AUTO |
                        QC_BITMAP_EXTRA_COMPAT))
    why = "it has unknown flags";
  else if (e->extra_size)
    why = "it has extra data";
  else if (e->granularity_bits < 9 || e->granularity_bits > 31)
    why = "its granularity is out of range";
  if (why)
    goto cannot;
  nbytes = qc_bitmap_bytes (img->h.size, e->granularity_bits);
  if (e->table_size != (nbytes + cs - 1) / cs) {
    why = "its size does not match the disk";
    goto cannot;
  }
  if (nbytes > *budget) {
    why = "it is too large to be held in memory";
    goto cannot;
  }
  r = owned (img, e->table_offset, (uint64_t) e->table_size * 8);
  if (r <= 0) {
    why = "its table is shared";
    goto out;
  }
  tr->gbits = e->granularity_bits;
  tr->nbytes = nbytes;
  tr->table_size = e->table_size;
  tr->table_offset = e->table_offset;
  tr->bits = calloc (nbytes ? nbytes : 1, 1);
  tr->table = malloc ((size_t) e->table_size * 8 + 8);
  if (!tr->bits || !tr->table) {
    qc_error ("%s: %m", img->name);
    r = -1;
    goto out;
  }
  r = qc_bitmap_read_data (img, e, nbytes, tr->bits, tr->table);
  if (r <= 0) {
    why = "its table is inconsistent";
    goto out;
  }
  for (k = 0; k < e->table_size; k++) {
    uint64_t off = tr->table[k] & QCOW2_OFFSET_MASK;
    r = off ? owned (img, off, cs) : 1;
    if (r <= 0) {
      why = "a data cluster is shared";
      goto out;
    }
  }
  *budget -= nbytes;
  return 1;

 out:
  free (tr->bits);
  free (tr->table);
  tr->bits = NULL;
  tr->table = NULL;
  if (r == -1)
    return -1;
 cannot:
  qc_info ("%s: persistent bitmap '%s' cannot be kept up to date (%s): it "
           "is marked in use (inconsistent)", img->name, e->name, why);
  return 0;
}

int
qc_bitmaps_track_start (struct qc_image *img)
{
  const struct qcow2_header *h = &img->h;
  uint64_t budget = QC_BITMAP_MEM_MAX;
  struct qc_bitmap_track *t;
  bool rewrite = false;
  uint32_t i;
  int r;

  if (!(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
    return 1;
  t = calloc (1, sizeof *t);
  if (!t) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  r = qc_bitmap_dir_read (img, &t->dir);
  if (r != 0)
    goto out;
  if (t->dir.n == 0) {
    track_free (t);
    return 0;
  }
  /* The directory is rewritten in place: it must be ours alone. */
  r = owned (img, h->bitmap_directory_offset, t->dir.size);
  if (r <= 0) {
    r = r == 0 ? 1 : -1;
    goto out;
  }
  t->t = calloc (t->dir.n, sizeof *t->t);
  if (!t->t) {
    qc_error ("%s: %m", img->name);
    r = -1;
    goto out;
  }
  for (i = 0; i < t->dir.n; i++) {
    struct qc_bitmap_entry *e = &t->dir.e[i];

    if (!(e->flags & QC_BITMAP_AUTO) || (e->flags & QC_BITMAP_IN_USE))
      continue;
    r = load (img, e, &t->t[t->nt], &budget);
    if (r == -1)
      goto out;
    if (r == 1)
      t->t[t->nt++].idx = i;
    e->flags |= QC_BITMAP_IN_USE;
    put_be32 (t->dir.buf + e->pos + 12, e->flags);
    rewrite = true;
  }
  if (rewrite &&
      (qc_guard_inplace_check (img, h->bitmap_directory_offset,
                               t->dir.size, "marking bitmaps in use in",
                               true) == -1 ||
       blkdev_pwrite (img->file, t->dir.buf, t->dir.size,
                      h->bitmap_directory_offset, 0) == -1 ||
       blkdev_flush (img->file) == -1)) {
    r = -1;
    goto out;
  }
  if (t->nt == 0) {
    track_free (t);
    return 0;
  }
  qc_debug ("%s: keeping %" PRIu32 " persistent bitmaps up to date",
            img->name, t->nt);
  __atomic_store_n (&img->bmt, t, __ATOMIC_RELEASE);
  return 0;
 out:
  track_free (t);
  return r;
}

/* Set bits [first, last] of b. */
static void
set_bits (uint8_t *b, uint64_t first, uint64_t last)
{
  uint64_t i = first;

  while (i <= last) {
    uint8_t m;
    uint64_t byte = i / 8;

    if (i % 8 == 0 && last - i >= 7)
      m = 0xff;
    else {
      unsigned hi = byte == last / 8 ? last % 8 : 7;
      m = (uint8_t) ((0xffU << (i % 8)) & (0xffU >> (7 - hi)));
    }
    if ((__atomic_load_n (&b[byte], __ATOMIC_RELAXED) & m) != m)
      __atomic_fetch_or (&b[byte], m, __ATOMIC_RELAXED);
    i = (byte + 1) * 8;
  }
}

void
qc_bitmaps_mark_slow (struct qc_bitmap_track *t, uint64_t offset,
                      uint64_t count)
{
  uint32_t i;

  for (i = 0; i < t->nt; i++) {
    struct tracked *tr = &t->t[i];
    uint64_t first = offset >> tr->gbits;
    uint64_t last = (offset + count - 1) >> tr->gbits;

    if (first / 8 >= tr->nbytes)
      continue;
    if (last / 8 >= tr->nbytes)
      last = tr->nbytes * 8 - 1;
    set_bits (tr->bits, first, last);
    if (!__atomic_load_n (&tr->changed, __ATOMIC_RELAXED))
      __atomic_store_n (&tr->changed, true, __ATOMIC_RELAXED);
  }
}

/* Is every byte of p[0, n) equal to c? */
static bool
all_bytes (const uint8_t *p, uint64_t n, uint8_t c)
{
  return n == 0 || (p[0] == c && memcmp (p, p + 1, n - 1) == 0);
}

/* New table entries for tr (into table) and the clusters they need,
 * allocated: what all-zeros and all-ones entries no longer describe.
 */
static int
plan_store (struct qc_image *img, const struct tracked *tr, uint64_t *table)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t k;

  for (k = 0; k < tr->table_size; k++) {
    const uint8_t *p = tr->bits + k * cs;
    uint64_t n = tr->nbytes - k * cs < cs ? tr->nbytes - k * cs : cs;
    uint64_t off = tr->table[k] & QCOW2_OFFSET_MASK;

    table[k] = tr->table[k];
    if (off)
      continue;
    if (all_bytes (p, n, 0))
      table[k] = 0;
    else if ((tr->table[k] & 1) && all_bytes (p, n, 0xff))
      continue;                 /* still all ones as loaded */
    else if (qc_alloc_clusters (img, 1, &table[k]) == -1)
      return -1;
  }
  return 0;
}

static int
write_data (struct qc_image *img, const struct tracked *tr,
            const uint64_t *table, uint8_t *buf)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t k;

  for (k = 0; k < tr->table_size; k++) {
    uint64_t n = tr->nbytes - k * cs < cs ? tr->nbytes - k * cs : cs;
    uint64_t off = table[k] & QCOW2_OFFSET_MASK;

    if (!off)
      continue;
    memset (buf, 0, cs);
    memcpy (buf, tr->bits + k * cs, n);
    if (qc_guard_inplace_check (img, off, cs, "writing a bitmap to",
                                true) == -1 ||
        blkdev_pwrite (img->file, buf, cs, off, 0) == -1)
      return -1;
  }
  return 0;
}

int
qc_bitmaps_store (struct qc_image *img)
{
  struct qc_bitmap_track *t = img->bmt;
  const uint64_t cs = img->h.cluster_size;
  uint64_t **tables = NULL;
  uint8_t *buf = NULL;
  bool allocated = false;
  uint32_t i, k;
  int r = -1;

  if (!t)
    return 0;
  /* After a failure the image's state is unknown: the bitmaps stay in
   * use (inconsistent), which is true.
   */
  if (img->failed ||
      __atomic_load_n (&img->marked_corrupt, __ATOMIC_ACQUIRE)) {
    qc_debug ("%s: the persistent bitmaps stay marked in use", img->name);
    return 0;
  }
  tables = calloc (t->nt, sizeof *tables);
  buf = malloc (cs);
  if (!tables || !buf) {
    qc_error ("%s: %m", img->name);
    goto out;
  }
  /* 1. Clusters for what the tables do not describe, counted durably
   * before any table points to them.
   */
  for (i = 0; i < t->nt; i++) {
    struct tracked *tr = &t->t[i];
    if (!__atomic_load_n (&tr->changed, __ATOMIC_RELAXED))
      continue;
    tables[i] = malloc ((size_t) tr->table_size * 8 + 8);
    if (!tables[i]) {
      qc_error ("%s: %m", img->name);
      goto out;
    }
    if (plan_store (img, tr, tables[i]) == -1)
      goto out;
    for (k = 0; k < tr->table_size; k++)
      if (tables[i][k] != tr->table[k])
        allocated = true;
  }
  if (allocated && qc_flush_locked (img) == -1)
    goto out;
  /* 2. The data, then the tables, flushed. */
  for (i = 0; i < t->nt; i++) {
    struct tracked *tr = &t->t[i];
    if (!tables[i])
      continue;
    if (write_data (img, tr, tables[i], buf) == -1)
      goto out;
    if (memcmp (tables[i], tr->table, (size_t) tr->table_size * 8) != 0) {
      if (qc_guard_inplace_check (img, tr->table_offset,
                                  (uint64_t) tr->table_size * 8,
                                  "updating a bitmap table in", true) == -1 ||
          qc_write_table_range (img, tables[i], tr->table_size, 0,
                                tr->table_size, tr->table_offset) == -1)
        goto out;
      memcpy (tr->table, tables[i], (size_t) tr->table_size * 8);
    }
    __atomic_store_n (&tr->changed, false, __ATOMIC_RELAXED);
  }
  if (blkdev_flush (img->file) == -1)
    goto out;
  /* 3. Only now do the bitmaps say they are complete. */
  for (i = 0; i < t->nt; i++) {
    struct qc_bitmap_entry *e = &t->dir.e[t->t[i].idx];
    e->flags &= ~QC_BITMAP_IN_USE;
    put_be32 (t->dir.buf + e->pos + 12, e->flags);
  }
  if (qc_guard_inplace_check (img, img->h.bitmap_directory_offset,
                              t->dir.size, "updating the bitmap directory in",
                              true) == -1 ||
      blkdev_pwrite (img->file, t->dir.buf, t->dir.size,
                     img->h.bitmap_directory_offset, 0) == -1 ||
      blkdev_flush (img->file) == -1)
    goto out;
  qc_debug ("%s: %" PRIu32 " persistent bitmaps written back", img->name,
            t->nt);
  r = 0;
 out:
  if (tables)
    for (i = 0; i < t->nt; i++)
      free (tables[i]);
  free (tables);
  free (buf);
  return r;
}
