/* SPDX-License-Identifier: BSD-3-Clause */
/* Changing the set of persistent bitmaps before serving, as qemu-img
 * bitmap does: bitmap-add (with bitmap-granularity= and
 * bitmap-disabled=true for that one), bitmap-remove, bitmap-clear,
 * bitmap-enable, bitmap-disable and bitmap-merge=SRC:DST, in the order
 * given.
 *
 * All of them run first on a model of the directory, reading only, so
 * that a run that would fail changes nothing.  Then, copy-then-switch:
 * new tables and data (added, cleared and merged-into bitmaps) and a
 * new directory are written to new clusters and counted durably, the
 * header is switched to the new directory (its bitmaps extension
 * rewritten, added or dropped) and flushed, and only then are the old
 * directory and the old tables and data given back.  A crash leaks
 * clusters at worst.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-int.h"

#define MAX_BITMAPS 65535

/* One bitmap of the model. */
struct mbm {
  const char *name;
  int orig;                     /* index in the directory, or -1 */
  uint32_t flags;
  unsigned gbits;
  bool renew;                   /* new table needed (bits, or zeros) */
  uint8_t *bits;                /* renew: the data, NULL for zeros */
};

struct model {
  struct qc_bitmap_dir dir;
  struct mbm *b;
  size_t n;
  bool *drop;                   /* per directory entry: give back its
                                 * table and data at the end */
  uint64_t budget;
};

static void
model_free (struct model *m)
{
  size_t i;

  for (i = 0; i < m->n; i++)
    free (m->b[i].bits);
  free (m->b);
  free (m->drop);
  qc_bitmap_dir_free (&m->dir);
}

static int
find (const struct model *m, const char *name)
{
  size_t i;

  for (i = 0; i < m->n; i++)
    if (strcmp (m->b[i].name, name) == 0)
      return i;
  return -1;
}

/* The current bits of model bitmap b (loading them if needed). */
static uint8_t *
model_bits (struct qc_image *img, struct model *m, struct mbm *b)
{
  uint64_t nbytes = qc_bitmap_bytes (img->h.size, b->gbits);
  uint8_t *bits;
  uint64_t *table;
  int r;

  if (b->bits)
    return b->bits;
  if (nbytes > m->budget) {
    qc_error ("%s: bitmap '%s' is too large to be merged in memory",
              img->name, b->name);
    errno = ENOMEM;
    return NULL;
  }
  bits = calloc (nbytes ? nbytes : 1, 1);
  if (!bits) {
    qc_error ("%s: %m", img->name);
    return NULL;
  }
  if (b->renew || b->orig < 0) {
    m->budget -= nbytes;
    return b->bits = bits;
  }
  table = malloc ((size_t) m->dir.e[b->orig].table_size * 8 + 8);
  if (!table) {
    qc_error ("%s: %m", img->name);
    free (bits);
    return NULL;
  }
  r = qc_bitmap_read_data (img, &m->dir.e[b->orig], nbytes, bits, table);
  free (table);
  if (r != 1) {
    if (r == 0) {
      qc_error ("%s: bitmap '%s': its table is inconsistent", img->name,
                b->name);
      errno = EINVAL;
    }
    free (bits);
    return NULL;
  }
  m->budget -= nbytes;
  return b->bits = bits;
}

/* dst |= src, each at its own granularity. */
static void
merge_bits (uint64_t size, const uint8_t *src, unsigned sg, uint8_t *dst,
            unsigned dg)
{
  uint64_t i, n = qc_bitmap_bytes (size, sg) * 8;

  for (i = 0; i < n; i++) {
    uint64_t a, b, j;
    if (src[i / 8] == 0) {
      i |= 7;
      continue;
    }
    if (!(src[i / 8] & (1U << (i % 8))))
      continue;
    a = (i << sg) >> dg;
    b = (((i + 1) << sg) - 1) >> dg;
    if (((i << sg)) >= size)
      break;
    if ((((i + 1) << sg) - 1) >= size)
      b = (size - 1) >> dg;
    for (j = a; j <= b; j++)
      dst[j / 8] |= 1U << (j % 8);
  }
}

static bool
in_use (struct qc_image *img, const struct mbm *b, const char *p,
        enum qc_bitmap_op_kind op, const char *name)
{
  if (!(b->flags & QC_BITMAP_IN_USE))
    return false;
  qc_error ("%s: %s%s=%s: bitmap '%s' is inconsistent (in use): it can only "
            "be removed", img->name, p, qc_bitmap_op_key (op), name, b->name);
  errno = EBUSY;
  return true;
}

/* Bitmaps with what this code does not know how to keep (another
 * type, extra data, unknown flags) are copied as they are, never
 * changed.
 */
static bool
foreign (struct qc_image *img, const struct model *m, const struct mbm *b,
         const char *p, enum qc_bitmap_op_kind op, const char *name)
{
  const struct qc_bitmap_entry *e;

  if (b->orig < 0)
    return false;
  e = &m->dir.e[b->orig];
  if (e->type == 1 && e->extra_size == 0 &&
      !(e->flags & ~(QC_BITMAP_IN_USE | QC_BITMAP_AUTO |
                     QC_BITMAP_EXTRA_COMPAT)) &&
      e->granularity_bits >= 9 && e->granularity_bits <= 31)
    return false;
  qc_error ("%s: %s%s=%s: bitmap '%s' has a type, flags or extra data this "
            "program does not know: it can only be removed", img->name, p,
            qc_bitmap_op_key (op), name, b->name);
  errno = ENOTSUP;
  return true;
}

/* Run the operations on the model (reading only): every error here is
 * before anything is written.
 */
static int
model_run (struct qc_image *img, const struct qc_options *opts,
           struct model *m)
{
  const char *p = qc_prefix (opts);
  size_t i;
  int r;

  memset (m, 0, sizeof *m);
  m->budget = QC_BITMAP_MEM_MAX;
  if (img->h.version < 3) {
    qc_error ("%s: %s%s=: persistent bitmaps need a version 3 image "
              "(compat=1.1; qemu-img amend -o compat=1.1 converts it)",
              img->name, p, qc_bitmap_op_key (opts->bitmap_ops[0].op));
    errno = ENOTSUP;
    return -1;
  }
  if (img->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) {
    r = qc_bitmap_dir_read (img, &m->dir);
    if (r == -1)
      return -1;
    if (r == 1) {
      qc_error ("%s: the bitmap directory is inconsistent: the bitmap "
                "options cannot be used (qemu-img check -r all, or "
                "qemu-img bitmap --remove)", img->name);
      errno = EINVAL;
      return -1;
    }
  }
  m->b = calloc (m->dir.n + opts->nr_bitmap_ops + 1, sizeof *m->b);
  m->drop = calloc (m->dir.n + 1, sizeof *m->drop);
  if (!m->b || !m->drop) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = 0; i < m->dir.n; i++) {
    m->b[i].name = m->dir.e[i].name;
    m->b[i].orig = i;
    m->b[i].flags = m->dir.e[i].flags;
    m->b[i].gbits = m->dir.e[i].granularity_bits;
  }
  m->n = m->dir.n;

  for (i = 0; i < opts->nr_bitmap_ops; i++) {
    const struct qc_bitmap_op *o = &opts->bitmap_ops[i];
    const char *key = qc_bitmap_op_key (o->op);
    const char *what = i > 0 ? " (after the operations before it)" : "";
    int j = find (m, o->name), t;
    struct mbm *b = j >= 0 ? &m->b[j] : NULL;

    if (o->op == QC_BITMAP_ADD) {
      uint64_t g = o->granularity;
      if (b) {
        qc_error ("%s: %s%s=%s: a bitmap named '%s' exists already%s",
                  img->name, p, key, o->name, o->name, what);
        errno = EEXIST;
        return -1;
      }
      if (m->n >= MAX_BITMAPS) {
        qc_error ("%s: %s%s=%s: too many bitmaps", img->name, p, key,
                  o->name);
        errno = ENOSPC;
        return -1;
      }
      if (g == 0) {             /* qemu's default */
        g = img->h.cluster_size;
        g = g < 4096 ? 4096 : g > 65536 ? 65536 : g;
      }
      if (qc_bitmap_bytes (img->h.size, __builtin_ctzll (g)) >
          QC_BITMAP_MEM_MAX) {
        qc_error ("%s: %s%s=%s: at a granularity of %" PRIu64 " bytes the "
                  "bitmap would take more than %llu MiB of memory to keep "
                  "up to date: use a larger %sbitmap-granularity=",
                  img->name, p, key, o->name, g, QC_BITMAP_MEM_MAX >> 20, p);
        errno = EFBIG;
        return -1;
      }
      b = &m->b[m->n++];
      b->name = o->name;
      b->orig = -1;
      b->flags = o->disabled ? 0 : QC_BITMAP_AUTO;
      b->gbits = __builtin_ctzll (g);
      b->renew = true;
      continue;
    }
    if (!b) {
      qc_error ("%s: %s%s=%s: no bitmap named '%s'%s", img->name, p, key,
                o->name, o->name, what);
      errno = ENOENT;
      return -1;
    }
    switch (o->op) {
    case QC_BITMAP_REMOVE:
      if (b->orig >= 0)
        m->drop[b->orig] = true;
      free (b->bits);
      memmove (b, b + 1, (m->n - j - 1) * sizeof *b);
      m->n--;
      break;
    case QC_BITMAP_CLEAR:
      if (in_use (img, b, p, o->op, o->name) ||
          foreign (img, m, b, p, o->op, o->name))
        return -1;
      if (b->orig >= 0)
        m->drop[b->orig] = true;
      free (b->bits);
      b->bits = NULL;
      b->renew = true;
      break;
    case QC_BITMAP_ENABLE:
    case QC_BITMAP_DISABLE:
      if (in_use (img, b, p, o->op, o->name) ||
          foreign (img, m, b, p, o->op, o->name))
        return -1;
      if (o->op == QC_BITMAP_ENABLE)
        b->flags |= QC_BITMAP_AUTO;
      else
        b->flags &= ~QC_BITMAP_AUTO;
      break;
    default: {                  /* merge */
      struct mbm *d;
      uint8_t *sb, *db;

      t = find (m, o->target);
      if (t < 0) {
        qc_error ("%s: %s%s=%s:%s: no bitmap named '%s'%s", img->name, p,
                  key, o->name, o->target, o->target, what);
        errno = ENOENT;
        return -1;
      }
      d = &m->b[t];
      if (in_use (img, b, p, o->op, o->name) ||
          in_use (img, d, p, o->op, o->target) ||
          foreign (img, m, b, p, o->op, o->name) ||
          foreign (img, m, d, p, o->op, o->target))
        return -1;
      if (!(sb = model_bits (img, m, b)) || !(db = model_bits (img, m, d)))
        return -1;
      if (d == b)
        break;
      merge_bits (img->h.size, sb, b->gbits, db, d->gbits);
      if (d->orig >= 0)
        m->drop[d->orig] = true;
      d->renew = true;
    }
    }
  }
  return 0;
}

/* count new clusters for len bytes, or 0 bytes: offset 0. */
static int
new_clusters (struct qc_image *img, uint64_t len, uint64_t *offset)
{
  const uint64_t cs = img->h.cluster_size;

  *offset = 0;
  if (len == 0)
    return 0;
  return qc_alloc_clusters (img, (len + cs - 1) / cs, offset);
}

/* A new table (and data) for model bitmap b: *offset, *size. */
static int
write_bitmap (struct qc_image *img, const struct mbm *b, uint64_t *offset,
              uint32_t *size)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t nbytes = qc_bitmap_bytes (img->h.size, b->gbits);
  uint64_t n = (nbytes + cs - 1) / cs, k, *table;
  uint8_t *buf;
  int r = -1;

  if (n > UINT32_MAX || n * 8 > QCOW2_MAX_L1_BYTES) {
    qc_error ("%s: bitmap '%s' would need a table of %" PRIu64 " entries",
              img->name, b->name, n);
    errno = EFBIG;
    return -1;
  }
  table = calloc (n ? n : 1, 8);
  buf = malloc (cs);
  if (!table || !buf) {
    qc_error ("%s: %m", img->name);
    goto out;
  }
  for (k = 0; b->bits && k < n; k++) {
    uint64_t len = nbytes - k * cs < cs ? nbytes - k * cs : cs;
    const uint8_t *p = b->bits + k * cs;
    if (p[0] == 0 && memcmp (p, p + 1, len - 1) == 0)
      continue;
    memset (buf, 0, cs);
    memcpy (buf, p, len);
    if (qc_alloc_clusters (img, 1, &table[k]) == -1 ||
        blkdev_pwrite (img->file, buf, cs, table[k], 0) == -1)
      goto out;
  }
  if (new_clusters (img, n * 8, offset) == -1 ||
      qc_write_table_range (img, table, n, 0, n, *offset) == -1)
    goto out;
  *size = n;
  r = 0;
 out:
  free (table);
  free (buf);
  return r;
}

/* Rewrite the header's extensions with the bitmaps extension for the
 * new directory (dropped when there are no bitmaps), keeping the others
 * and moving the backing file name after them.  One write of the
 * changed bytes of cluster 0.
 */
static int
switch_header (struct qc_image *img, uint32_t nb, uint64_t dir_offset,
               uint64_t dir_size)
{
  struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  uint64_t pos = h->header_length, out = h->header_length, end, bfo = 0;
  uint8_t *old = malloc (cs), *buf = calloc (1, cs);
  uint64_t autoclear = h->autoclear_features;
  int r = -1;

  if (!old || !buf) {
    qc_error ("%s: %m", img->name);
    goto out;
  }
  if (blkdev_pread (img->file, old, cs, 0) == -1)
    goto out;
  memcpy (buf, old, h->header_length);
  for (;;) {
    uint32_t type, len;
    uint64_t all;

    /* Validated at open: this only guards against our own bugs. */
    if (pos + 8 > cs)
      goto bad;
    type = get_be32 (old + pos);
    len = get_be32 (old + pos + 4);
    all = 8 + (((uint64_t) len + 7) & ~7ULL);
    if (type == QCOW2_EXT_END)
      break;
    if (pos + all > cs)
      goto bad;
    if (type != QCOW2_EXT_BITMAPS) {
      memcpy (buf + out, old + pos, all);
      out += all;
    }
    pos += all;
  }
  end = pos + 8;
  if (nb) {
    put_be32 (buf + out, QCOW2_EXT_BITMAPS);
    put_be32 (buf + out + 4, 24);
    put_be32 (buf + out + 8, nb);
    put_be64 (buf + out + 16, dir_size);
    put_be64 (buf + out + 24, dir_offset);
    out += 32;
    autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
  }
  else
    autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
  out += 8;                     /* the end marker: zeros */
  if (h->backing_file_size) {
    if (h->backing_file_offset < end ||
        out + h->backing_file_size > cs) {
      qc_error ("%s: the backing file name does not leave room for the "
                "bitmaps extension in the header", img->name);
      errno = ENOSPC;
      goto out;
    }
    bfo = out;
    memcpy (buf + out, old + h->backing_file_offset, h->backing_file_size);
    out += h->backing_file_size;
    if (end < h->backing_file_offset + h->backing_file_size)
      end = h->backing_file_offset + h->backing_file_size;
    put_be64 (buf + QCOW2_HDR_BACKING_FILE_OFFSET, bfo);
  }
  if (out > cs) {
    qc_error ("%s: no room for the bitmaps extension in the header",
              img->name);
    errno = ENOSPC;
    goto out;
  }
  put_be64 (buf + QCOW2_HDR_AUTOCLEAR, autoclear);
  if (qc_guard_inplace_check (img, 0, out > end ? out : end,
                              "updating the header in", true) == -1 ||
      blkdev_pwrite (img->file, buf, out > end ? out : end, 0, 0) == -1 ||
      blkdev_flush (img->file) == -1)
    goto out;
  h->autoclear_features = autoclear;
  h->has_bitmaps_ext = nb > 0;
  h->nb_bitmaps = nb;
  h->bitmap_directory_offset = dir_offset;
  h->bitmap_directory_size = dir_size;
  if (h->backing_file_size)
    h->backing_file_offset = bfo;
  r = 0;
 out:
  free (old);
  free (buf);
  return r;
 bad:
  qc_error ("%s: the header extensions run past cluster 0", img->name);
  errno = EINVAL;
  goto out;
}

/* Give back range [offset, offset + len) of clusters once durable. */
static int
drop_range (struct qc_image *img, uint64_t offset, uint64_t len)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t c;

  for (c = offset; len && c < offset + len; c += cs)
    if (qc_free_later (img, c) == -1)
      return -1;
  return 0;
}

static int
drop_bitmap (struct qc_image *img, const struct qc_bitmap_entry *e)
{
  uint64_t *table = malloc ((size_t) e->table_size * 8 + 8), k;
  int r = -1;

  if (!table) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  if (blkdev_pread (img->file, table, (size_t) e->table_size * 8,
                    e->table_offset) == -1)
    goto out;
  for (k = 0; k < e->table_size; k++) {
    uint64_t off = be64toh (table[k]) & QCOW2_OFFSET_MASK;
    if (off && qc_free_later (img, off) == -1)
      goto out;
  }
  r = drop_range (img, e->table_offset, (uint64_t) e->table_size * 8);
 out:
  free (table);
  return r;
}

/* The model written: meta_lock held. */
static int
model_commit (struct qc_image *img, struct model *m)
{
  uint64_t dir_size = 0, dir_offset = 0, pos = 0;
  uint8_t *dir = NULL;
  size_t i;
  int r = -1;

  for (i = 0; i < m->n; i++) {
    const struct mbm *b = &m->b[i];
    uint64_t extra = b->orig >= 0 ? m->dir.e[b->orig].extra_size : 0;
    dir_size += (QC_BITMAP_DIR_FIXED + extra + strlen (b->name) + 7) & ~7ULL;
  }
  dir = calloc (1, dir_size + 8);
  if (!dir) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = 0; i < m->n; i++) {
    const struct mbm *b = &m->b[i];
    const struct qc_bitmap_entry *e = b->orig >= 0 ? &m->dir.e[b->orig] : NULL;
    uint64_t toff = e ? e->table_offset : 0;
    uint32_t tsize = e ? e->table_size : 0, extra = e ? e->extra_size : 0;
    size_t nl = strlen (b->name);

    if (b->renew && write_bitmap (img, b, &toff, &tsize) == -1)
      goto out;
    if (e)
      memcpy (dir + pos, m->dir.buf + e->pos, e->len);
    put_be64 (dir + pos, toff);
    put_be32 (dir + pos + 8, tsize);
    put_be32 (dir + pos + 12, b->flags);
    dir[pos + 16] = e ? e->type : 1;
    dir[pos + 17] = b->gbits;
    put_be16 (dir + pos + 18, nl);
    put_be32 (dir + pos + 20, extra);
    memcpy (dir + pos + QC_BITMAP_DIR_FIXED + extra, b->name, nl);
    pos += (QC_BITMAP_DIR_FIXED + extra + nl + 7) & ~7ULL;
  }
  if (new_clusters (img, dir_size, &dir_offset) == -1 ||
      (dir_size &&
       blkdev_pwrite (img->file, dir, dir_size, dir_offset, 0) == -1))
    goto out;
  /* Everything new is counted and on disk before the header says so. */
  if (qc_flush_locked (img) == -1 || blkdev_flush (img->file) == -1 ||
      switch_header (img, m->n, dir_offset, dir_size) == -1)
    goto out;
  r = 0;
 out:
  free (dir);
  return r;
}

int
qc_bitmap_ops_check (struct qc_image *img, const struct qc_options *opts)
{
  struct model m;
  int r;

  if (!opts->nr_bitmap_ops)
    return 0;
  r = model_run (img, opts, &m);
  model_free (&m);
  return r;
}

int
qc_bitmap_ops_run (struct qc_image *img, const struct qc_options *opts)
{
  const uint64_t old_dir = img->h.bitmap_directory_offset;
  struct model m;
  uint32_t i;
  int r = -1;

  if (!opts->nr_bitmap_ops)
    return 0;
  /* Once written, the tracker holds the directory as it was. */
  if (__atomic_load_n (&img->written, __ATOMIC_ACQUIRE)) {
    qc_error ("%s: the bitmap operations must run before the first write",
              img->name);
    errno = EINVAL;
    return -1;
  }
  pthread_mutex_lock (&img->meta_lock);
  /* The safety net over damaged refcounts, as for any write (the first
   * write builds it again, counting the new directory).
   */
  if (model_run (img, opts, &m) == -1 ||
      (!img->guard && qc_guard_build (img) == -1) ||
      model_commit (img, &m) == -1)
    goto out;
  /* The header points to the new directory: the old one, and what
   * only it pointed to, go back.
   */
  if (m.dir.n && drop_range (img, old_dir, m.dir.size) == -1)
    goto out;
  for (i = 0; i < m.dir.n; i++)
    if (m.drop[i] && drop_bitmap (img, &m.dir.e[i]) == -1)
      goto out;
  if (qc_flush_locked (img) == -1)
    goto out;
  qc_debug ("%s: %zu bitmap operations done", img->name,
            opts->nr_bitmap_ops);
  r = 0;
 out:
  model_free (&m);
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}
