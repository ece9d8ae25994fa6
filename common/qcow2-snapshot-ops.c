/* SPDX-License-Identifier: BSD-3-Clause */
/* Image maintenance before serving: internal snapshots (create, apply,
 * delete), and running check and repair (qcow2-check.c) as asked.
 * These run with the image writable and no I/O in flight, under the
 * metadata lock, with the same write ordering as guest writes:
 * references are counted up and made durable before anything points to
 * them, and counted down only once nothing on disk points to them any
 * more.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/statvfs.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qc-progress.h"
#include "qc-options.h"
#include "qcow2-int.h"

#define SNAPSHOT_FIXED 40
#define EXTRA_DATA_SIZE 24      /* what qemu 7.2 writes */

/* Count references of one L1 tree into r (allocated by the caller). */
static int
tree_refs (struct qc_image *img, const uint64_t *l1, uint32_t l1_size,
           struct qc_refs *r)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  bool external = img->external_data;
  uint32_t i;
  uint64_t j;

  for (i = 0; i < l1_size; i++) {
    uint64_t l2off = l1[i] & QCOW2_OFFSET_MASK;
    struct l2cache_entry *pin;
    uint8_t *t;

    qc_step_progress (i, l1_size);
    if (!l2off)
      continue;
    if (l2off / cs >= r->nr_clusters || (l2off & (cs - 1))) {
      r->out_of_range++;
      continue;
    }
    r->count[l2off / cs]++;
    t = l2cache_get (img->cache, img->file, l2off, &pin);
    if (!t)
      return -1;
    for (j = 0; j < (1ULL << h->l2_bits); j++) {
      uint64_t e, bm, first, last, c;
      qc_load_entry (img, t + j * h->l2_entry_size, &e, &bm);
      if (e & QCOW2_OFLAG_COMPRESSED) {
        unsigned x = 62 - (h->cluster_bits - 8);
        uint64_t d = e & ~(QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED);
        uint64_t off = d & ((1ULL << x) - 1);
        uint64_t ns = (d >> x) & ((1ULL << (h->cluster_bits - 8)) - 1);
        first = off / cs;
        last = (off + (ns + 1) * 512 - (off & 511) - 1) / cs;
      }
      else if ((e & QCOW2_OFFSET_MASK) && !external)
        first = last = (e & QCOW2_OFFSET_MASK) / cs;
      else
        continue;
      for (c = first; c <= last; c++) {
        if (c >= r->nr_clusters)
          r->out_of_range++;
        else
          r->count[c]++;
      }
    }
    l2cache_put (img->cache, pin);
  }
  return 0;
}

static int
new_refs (struct qc_image *img, struct qc_refs *r)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t end = img->alloc_end > blkdev_size (img->file) ?
    img->alloc_end : blkdev_size (img->file);

  memset (r, 0, sizeof *r);
  r->nr_clusters = (end + cs - 1) / cs;
  r->count = calloc (r->nr_clusters ? r->nr_clusters : 1, sizeof *r->count);
  if (!r->count) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  return 0;
}

/* Add sign * r to the refcounts; with check, refuse (touching nothing)
 * if any would overflow.
 */
static int
apply_refs (struct qc_image *img, const struct qc_refs *r, int sign,
            bool check)
{
  uint64_t c, v, max = qc_refcount_max (img);

  if (r->out_of_range) {
    qc_error ("%s: the image references clusters past its end; repair it "
              "first (%srepair=all)", img->name, qc_options_prefix ());
    errno = EINVAL;
    return -1;
  }
  if (check && sign > 0)
    for (c = 0; c < r->nr_clusters; c++) {
      if (!r->count[c])
        continue;
      if (qc_refcount_get (img, c, &v) == -1)
        return -1;
      if (v + r->count[c] > max) {
        qc_error ("%s: cluster %" PRIu64 " would need refcount %" PRIu64
                  ", more than the image's %u-bit refcounts hold; widen "
                  "them first (qemu-img amend -o refcount_bits=16) or "
                  "delete a snapshot", img->name, c, v + r->count[c],
                  1U << img->h.refcount_order);
        errno = EOVERFLOW;
        return -1;
      }
    }
  for (c = 0; c < r->nr_clusters; c++)
    if (r->count[c] &&
        qc_refcount_add (img, c, sign * (int64_t) r->count[c]) == -1)
      return -1;
  return 0;
}

/* Write a table of bytes to newly allocated clusters. */
static int
write_new (struct qc_image *img, const void *buf, uint64_t len,
           uint64_t *offset)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t n = (len + cs - 1) / cs;

  if (n == 0)
    n = 1;
  if (qc_alloc_clusters (img, n, offset) == -1)
    return -1;
  return blkdev_pwrite (img->file, buf, len, *offset, 0);
}

static void
free_clusters (struct qc_image *img, uint64_t offset, uint64_t len)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t c;

  for (c = offset / cs; len && c <= (offset + len - 1) / cs; c++)
    qc_refcount_add (img, c, -1);
}

/* Serialize the snapshot table (all entries but skip, if any) and
 * switch the header to it; the old table's clusters are freed.
 */
/* The extra data written for s: at least 16 bytes, so that it records
 * the snapshot's disk size.  Without it the size of a snapshot is the
 * image's size when it is opened: applying another snapshot of another
 * size would change it (qemu writes the disk size into every entry too).
 */
static uint32_t
extra_out_size (const struct qcow2_snapshot *s)
{
  return s->extra_size < 16 ? 16 : s->extra_size;
}

static void
put_extra (uint8_t *p, const struct qcow2_snapshot *s)
{
  memcpy (p, s->extra, s->extra_size);
  if (s->extra_size < 16) {
    memset (p + s->extra_size, 0, 16 - s->extra_size);
    if (s->extra_size < 8)      /* vm_state_size_large */
      put_be64 (p, s->vm_state_size);
    put_be64 (p + 8, s->disk_size);
  }
}

static int
rewrite_snapshot_table (struct qc_image *img, const struct qcow2_snapshot
                        *extra, int64_t skip)
{
  uint64_t n = img->nr_snapshots + (extra ? 1 : 0) - (skip >= 0 ? 1 : 0);
  uint64_t size = 0, pos = 0, i, off = 0;
  uint64_t old_off = img->h.snapshots_offset, old_size = img->snapshots_size;
  uint8_t *buf, hdr[12];
  int r = -1;

  for (i = 0; i <= img->nr_snapshots; i++) {
    const struct qcow2_snapshot *s =
      i < img->nr_snapshots ? &img->snapshots[i] : extra;
    if (!s || (int64_t) i == skip)
      continue;
    size += (SNAPSHOT_FIXED + extra_out_size (s) + strlen (s->id) +
             strlen (s->name) + 7) & ~7ULL;
  }
  buf = calloc (1, size ? size : 1);
  if (!buf) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = 0; i <= img->nr_snapshots; i++) {
    const struct qcow2_snapshot *s =
      i < img->nr_snapshots ? &img->snapshots[i] : extra;
    uint8_t *p = buf + pos;
    size_t il, nl, xl;
    if (!s || (int64_t) i == skip)
      continue;
    il = strlen (s->id);
    nl = strlen (s->name);
    xl = extra_out_size (s);
    put_be64 (p, s->l1_table_offset);
    put_be32 (p + 8, s->l1_size);
    put_be16 (p + 12, il);
    put_be16 (p + 14, nl);
    put_be32 (p + 16, s->date_sec);
    put_be32 (p + 20, s->date_nsec);
    put_be64 (p + 24, s->vm_clock_nsec);
    put_be32 (p + 32, s->vm_state_size);
    put_be32 (p + 36, xl);
    put_extra (p + 40, s);
    memcpy (p + 40 + xl, s->id, il);
    memcpy (p + 40 + xl + il, s->name, nl);
    pos += (SNAPSHOT_FIXED + xl + il + nl + 7) & ~7ULL;
  }
  if (n > 0 && (write_new (img, buf, size, &off) == -1 ||
                qc_flush_locked (img) == -1))
    goto out;
  /* nb_snapshots and snapshots_offset are adjacent: one write. */
  put_be32 (hdr, n);
  put_be64 (hdr + 4, off);
  if (qc_write_header_field (img, QCOW2_HDR_NB_SNAPSHOTS, hdr, 12) == -1 ||
      blkdev_flush (img->file) == -1)
    goto out;
  if (img->h.nb_snapshots)
    free_clusters (img, old_off, old_size);
  img->h.nb_snapshots = n;
  img->h.snapshots_offset = off;
  img->snapshots_size = size;
  r = 0;
 out:
  free (buf);
  return r;
}

static int
find_snapshot (struct qc_image *img, const char *name)
{
  uint32_t i;

  for (i = 0; i < img->nr_snapshots; i++)
    if (strcmp (img->snapshots[i].name, name) == 0)
      return i;
  for (i = 0; i < img->nr_snapshots; i++)
    if (strcmp (img->snapshots[i].id, name) == 0)
      return i;
  return -1;
}

static int
snapshot_create (struct qc_image *img, const char *name)
{
  const struct qcow2_header *h = &img->h;
  struct qcow2_snapshot s, *arr;
  struct qc_refs r;
  uint64_t *l1be = NULL, fixed = 0, max_id = 0;
  struct timespec ts;
  uint32_t i;
  char idbuf[32];
  int ret = -1;

  if (*name == '\0' || strlen (name) > 65535) {
    qc_error ("snapshot-create: invalid snapshot name");
    errno = EINVAL;
    return -1;
  }
  if (find_snapshot (img, name) >= 0 &&
      strcmp (img->snapshots[find_snapshot (img, name)].name, name) == 0) {
    qc_error ("%s: a snapshot named '%s' exists already", img->name, name);
    errno = EEXIST;
    return -1;
  }
  if (img->nr_snapshots >= QCOW2_MAX_SNAPSHOTS) {
    qc_error ("%s: too many snapshots", img->name);
    errno = ENOSPC;
    return -1;
  }
  memset (&s, 0, sizeof s);
  if (qc_flush_locked (img) == -1 || new_refs (img, &r) == -1)
    return -1;
  /* Every cluster of the active tree gains a reference. */
  if (tree_refs (img, img->active.l1, img->active.l1_size, &r) == -1 ||
      apply_refs (img, &r, 1, true) == -1)
    goto out;
  l1be = malloc ((size_t) img->active.l1_size * 8 + 8);
  s.extra = calloc (1, EXTRA_DATA_SIZE);
  if (!l1be || !s.extra) {
    qc_error ("%s: %m", img->name);
    goto out;
  }
  for (i = 0; i < img->active.l1_size; i++)
    l1be[i] = htobe64 (img->active.l1[i] & ~QCOW2_OFLAG_COPIED);
  if (write_new (img, l1be, (uint64_t) img->active.l1_size * 8,
                 &s.l1_table_offset) == -1)
    goto out;
  s.l1_size = img->active.l1_size;
  /* The active tree is shared now: no COPIED flags. */
  if (qc_copied_flags (img, true, &fixed) == -1 || qc_flush_locked (img) == -1)
    goto out;

  for (i = 0; i < img->nr_snapshots; i++) {
    uint64_t id = strtoull (img->snapshots[i].id, NULL, 10);
    if (id > max_id)
      max_id = id;
  }
  snprintf (idbuf, sizeof idbuf, "%" PRIu64, max_id + 1);
  s.id = idbuf;
  s.name = (char *) name;
  clock_gettime (CLOCK_REALTIME, &ts);
  s.date_sec = ts.tv_sec;
  s.date_nsec = ts.tv_nsec;
  s.extra_size = EXTRA_DATA_SIZE;
  s.disk_size = h->size;
  put_be64 (s.extra + 8, h->size);           /* disk size */
  put_be64 (s.extra + 16, 0);                /* icount, as qemu-img */
  if (rewrite_snapshot_table (img, &s, -1) == -1)
    goto out;

  arr = realloc (img->snapshots, (img->nr_snapshots + 1) * sizeof *arr);
  if (!arr) {
    qc_error ("%s: %m", img->name);
    goto out;
  }
  img->snapshots = arr;
  s.id = strdup (idbuf);
  s.name = strdup (name);
  arr[img->nr_snapshots++] = s;
  s.extra = NULL;
  if (qc_flush_locked (img) == -1)
    goto out;
  qc_debug ("%s: created snapshot '%s' (id %s)", img->name, name, idbuf);
  ret = 0;
 out:
  free (s.extra);
  free (l1be);
  qc_refs_free (&r);
  return ret;
}

/* Replace the active L1 table by a new one (entries in host order) of
 * l1_size entries for a disk of size bytes.
 */
static int
switch_active_l1 (struct qc_image *img, uint64_t *l1, uint32_t l1_size,
                  uint64_t size)
{
  uint64_t off, *be, old_off = img->h.l1_table_offset;
  uint64_t old_len = (uint64_t) img->h.l1_size * 8;
  uint8_t hdr[12];
  uint32_t i;
  int r;

  be = malloc ((size_t) l1_size * 8 + 8);
  if (!be) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = 0; i < l1_size; i++)
    be[i] = htobe64 (l1[i]);
  r = write_new (img, be, (uint64_t) l1_size * 8, &off);
  free (be);
  if (r == -1 || qc_flush_locked (img) == -1)
    return -1;
  /* The L1 table always covers the size: grow the table first, shrink
   * the size first.
   */
  if (size < img->h.size) {
    put_be64 (hdr, size);
    if (qc_write_header_field (img, QCOW2_HDR_SIZE, hdr, 8) == -1 ||
        blkdev_flush (img->file) == -1)
      return -1;
  }
  put_be32 (hdr, l1_size);
  put_be64 (hdr + 4, off);
  if (qc_write_header_field (img, QCOW2_HDR_L1_SIZE, hdr, 12) == -1 ||
      blkdev_flush (img->file) == -1)
    return -1;
  if (size > img->h.size) {
    put_be64 (hdr, size);
    if (qc_write_header_field (img, QCOW2_HDR_SIZE, hdr, 8) == -1 ||
        blkdev_flush (img->file) == -1)
      return -1;
  }
  free_clusters (img, old_off, old_len);
  free (img->active.l1);
  img->active.l1 = l1;
  img->active.l1_size = l1_size;
  img->active.dev.size = size;
  img->h.l1_table_offset = off;
  img->h.l1_size = l1_size;
  img->h.size = size;
  img->l1_dirty_lo = img->l1_dirty_hi = 0;
  return 0;
}

static int
snapshot_apply (struct qc_image *img, const char *name)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t span = h->cluster_size << h->l2_bits;
  int i = find_snapshot (img, name);
  struct qcow2_snapshot *s;
  struct qc_view *v;
  struct qc_refs up, down;
  uint64_t *l1, fixed = 0, need;
  uint32_t l1_size, k;
  int ret = -1;

  if (i < 0) {
    qc_error ("%s: snapshot-apply: no snapshot named '%s'", img->name, name);
    errno = ENOENT;
    return -1;
  }
  s = &img->snapshots[i];
  if (s->disk_size != h->size && h->nb_bitmaps &&
      (h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
    qc_error ("%s: snapshot-apply: snapshot '%s' has another disk size and "
              "the image has persistent bitmaps: remove them first",
              img->name, name);
    errno = ENOTSUP;
    return -1;
  }
  v = qc_snapshot_view (img, i);
  if (!v)
    return -1;
  /* In 64 bits: a hostile snapshot's disk size can need more than 2^32
   * L1 entries, which must be refused, not truncated.
   */
  need = s->disk_size / span + (s->disk_size % span != 0);
  if (need < v->l1_size)
    need = v->l1_size;
  if (need > QCOW2_MAX_L1_BYTES / 8) {
    qc_error ("%s: snapshot '%s' is too large (%" PRIu64 " bytes need an "
              "L1 table of %" PRIu64 " entries)", img->name, name,
              s->disk_size, need);
    errno = EINVAL;
    return -1;
  }
  l1_size = need;
  if (qc_flush_locked (img) == -1)
    return -1;
  if (new_refs (img, &up) == -1)
    return -1;
  if (new_refs (img, &down) == -1) {
    qc_refs_free (&up);
    return -1;
  }
  /* The snapshot's tree gains a reference (durable first), the old
   * active tree loses one once the header points to the new table.
   */
  if (tree_refs (img, v->l1, v->l1_size, &up) == -1 ||
      tree_refs (img, img->active.l1, img->active.l1_size, &down) == -1 ||
      apply_refs (img, &up, 1, true) == -1)
    goto out;
  l1 = calloc (l1_size ? l1_size : 1, sizeof *l1);
  if (!l1) {
    qc_error ("%s: %m", img->name);
    goto out;
  }
  for (k = 0; k < v->l1_size; k++)
    l1[k] = v->l1[k] & ~QCOW2_OFLAG_COPIED;
  if (switch_active_l1 (img, l1, l1_size, s->disk_size) == -1) {
    free (l1);
    goto out;
  }
  if (apply_refs (img, &down, -1, false) == -1 ||
      qc_copied_flags (img, true, &fixed) == -1 || qc_flush_locked (img) == -1)
    goto out;
  /* The whole disk changed, as far as a backup can tell. */
  qc_bitmaps_mark (&img->active, 0, img->h.size);
  qc_debug ("%s: applied snapshot '%s'", img->name, name);
  ret = 0;
 out:
  qc_refs_free (&up);
  qc_refs_free (&down);
  return ret;
}

static int
snapshot_delete (struct qc_image *img, const char *name)
{
  int i = find_snapshot (img, name);
  struct qcow2_snapshot s;
  struct qc_view *v;
  struct qc_refs down;
  uint64_t fixed = 0;
  int ret = -1;

  if (i < 0) {
    qc_error ("%s: snapshot-delete: no snapshot named '%s'", img->name,
              name);
    errno = ENOENT;
    return -1;
  }
  v = qc_snapshot_view (img, i);
  if (!v || qc_flush_locked (img) == -1 || new_refs (img, &down) == -1)
    return -1;
  if (tree_refs (img, v->l1, v->l1_size, &down) == -1)
    goto out;
  /* Gone from the table first; then its clusters lose a reference. */
  if (rewrite_snapshot_table (img, NULL, i) == -1)
    goto out;
  s = img->snapshots[i];
  memmove (&img->snapshots[i], &img->snapshots[i + 1],
           (img->nr_snapshots - i - 1) * sizeof s);
  img->nr_snapshots--;
  free_clusters (img, s.l1_table_offset, (uint64_t) s.l1_size * 8);
  if (apply_refs (img, &down, -1, false) == -1 ||
      qc_copied_flags (img, true, &fixed) == -1 || qc_flush_locked (img) == -1)
    goto free_s;
  qc_debug ("%s: deleted snapshot '%s'", img->name, name);
  ret = 0;
 free_s:
  qc_snapshot_free_loaded (&s);
  free (s.id);
  free (s.name);
  free (s.extra);
 out:
  qc_refs_free (&down);
  return ret;
}

int
qc_image_snapshot_op (struct qc_image *img, enum qc_snapshot_op op,
                      const char *name)
{
  int r;

  if (!img->writable) {
    qc_error ("%s: snapshot operations need the image writable",
              img->name);
    errno = EROFS;
    return -1;
  }
  if (qc_before_first_write (img) == -1)
    return -1;
  {
    char what[128];
    snprintf (what, sizeof what, "%s snapshot '%s'",
              op == QC_SNAPSHOT_CREATE ? "creating" :
              op == QC_SNAPSHOT_APPLY ? "applying" : "deleting", name);
    qc_step_begin (img->name, what);
  }
  pthread_mutex_lock (&img->meta_lock);
  switch (op) {
  case QC_SNAPSHOT_CREATE: r = snapshot_create (img, name); break;
  case QC_SNAPSHOT_APPLY: r = snapshot_apply (img, name); break;
  case QC_SNAPSHOT_DELETE: r = snapshot_delete (img, name); break;
  default: errno = EINVAL; r = -1;
  }
  pthread_mutex_unlock (&img->meta_lock);
  qc_step_end ();
  return r;
}

/* The snapshot table as it will be after each step of a maintenance
 * run, and the tree each entry (and the active disk) points to.
 */
struct sim_snap {
  char *id;
  const char *name;
  const uint64_t *l1;
  uint32_t l1_size;
};

struct sim {
  struct sim_snap *s;
  size_t n;
  const uint64_t *active_l1;
  uint32_t active_l1_size;
  uint64_t max_id;
};

static void
sim_free (struct sim *sim)
{
  size_t i;

  for (i = 0; i < sim->n; i++)
    free (sim->s[i].id);
  free (sim->s);
}

static int
sim_find (const struct sim *sim, const char *name)
{
  size_t i;

  for (i = 0; i < sim->n; i++)
    if (strcmp (sim->s[i].name, name) == 0)
      return i;
  for (i = 0; i < sim->n; i++)
    if (strcmp (sim->s[i].id, name) == 0)
      return i;
  return -1;
}

static const char *
op_key (enum qc_snapshot_op op)
{
  return op == QC_SNAPSHOT_CREATE ? "snapshot-create" :
    op == QC_SNAPSHOT_APPLY ? "snapshot-apply" : "snapshot-delete";
}

/* Run the snapshot operations on names only: each name must exist
 * (apply, delete) or be free (create) at its turn, taking the earlier
 * operations into account; every snapshot used has a readable L1
 * table.  Reads only.  sim is filled for the refcount check.
 */
static int
sim_run (struct qc_image *img, const struct qc_options *opts,
         struct sim *sim)
{
  const char *p = qc_prefix (opts);
  const uint64_t span = img->h.cluster_size << img->h.l2_bits;
  size_t i;
  uint32_t k;

  memset (sim, 0, sizeof *sim);
  sim->s = calloc (img->nr_snapshots + opts->nr_ops + 1, sizeof *sim->s);
  if (!sim->s) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (k = 0; k < img->nr_snapshots; k++) {
    uint64_t id = strtoull (img->snapshots[k].id, NULL, 10);
    sim->s[k].id = strdup (img->snapshots[k].id);
    if (!sim->s[k].id) {
      qc_error ("%s: %m", img->name);
      return -1;
    }
    sim->s[k].name = img->snapshots[k].name;
    sim->n++;
    if (id > sim->max_id)
      sim->max_id = id;
  }
  sim->active_l1 = img->active.l1;
  sim->active_l1_size = img->active.l1_size;

  for (i = 0; i < opts->nr_ops; i++) {
    const char *name = opts->ops[i].name;
    const char *key = op_key (opts->ops[i].op);
    struct sim_snap *e;
    int j;

    if (opts->ops[i].op == QC_SNAPSHOT_CREATE) {
      if (*name == '\0' || strlen (name) > 65535) {
        qc_error ("%s%s=: invalid snapshot name", p, key);
        errno = EINVAL;
        return -1;
      }
      j = sim_find (sim, name);
      if (j >= 0 && strcmp (sim->s[j].name, name) == 0) {
        qc_error ("%s: %s%s=%s: a snapshot named '%s' exists already%s",
                  img->name, p, key, name, name,
                  j < (int) img->nr_snapshots ? "" :
                  " (made earlier in this run)");
        errno = EEXIST;
        return -1;
      }
      if (sim->n >= QCOW2_MAX_SNAPSHOTS) {
        qc_error ("%s: %s%s=%s: too many snapshots", img->name, p, key,
                  name);
        errno = ENOSPC;
        return -1;
      }
      e = &sim->s[sim->n];
      if (asprintf (&e->id, "%" PRIu64, ++sim->max_id) == -1) {
        e->id = NULL;
        qc_error ("%s: %m", img->name);
        return -1;
      }
      e->name = name;
      e->l1 = sim->active_l1;
      e->l1_size = sim->active_l1_size;
      sim->n++;
      continue;
    }
    j = sim_find (sim, name);
    if (j < 0) {
      qc_error ("%s: %s%s=%s: no snapshot named '%s'%s", img->name, p,
                key, name, name,
                i > 0 ? " (after the operations before it)" : "");
      errno = ENOENT;
      return -1;
    }
    e = &sim->s[j];
    if (!e->l1) {
      /* A snapshot of the image: its L1 table must be readable. */
      int idx;
      struct qc_view *v;
      for (idx = 0; idx < (int) img->nr_snapshots; idx++)
        if (strcmp (img->snapshots[idx].id, e->id) == 0)
          break;
      v = qc_snapshot_view (img, idx);
      if (!v)
        return -1;
      e->l1 = v->l1;
      e->l1_size = v->l1_size;
      if (opts->ops[i].op == QC_SNAPSHOT_APPLY) {
        uint64_t ds = img->snapshots[idx].disk_size;
        uint64_t need = ds / span + (ds % span != 0);
        if (ds != img->h.size && img->h.nb_bitmaps &&
            (img->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
          qc_error ("%s: %s%s=%s: the snapshot has another disk size and "
                    "the image has persistent bitmaps: remove them first",
                    img->name, p, key, name);
          errno = ENOTSUP;
          return -1;
        }
        if (need > QCOW2_MAX_L1_BYTES / 8) {
          qc_error ("%s: snapshot '%s' is too large (%" PRIu64 " bytes "
                    "need an L1 table of %" PRIu64 " entries)", img->name,
                    name, ds, need);
          errno = EINVAL;
          return -1;
        }
      }
    }
    if (opts->ops[i].op == QC_SNAPSHOT_APPLY) {
      sim->active_l1 = e->l1;
      sim->active_l1_size = e->l1_size;
    }
    else {
      free (e->id);
      memmove (e, e + 1, (sim->n - j - 1) * sizeof *e);
      sim->n--;
    }
  }
  return 0;
}

/* The refcount each operation adds, step by step: a run whose third
 * step would overflow a refcount is refused before the first.  Only
 * for more than one operation: one alone checks this before it writes.
 */
static int
sim_refcounts (struct qc_image *img, const struct qc_options *opts)
{
  const uint64_t max = qc_refcount_max (img);
  struct qc_refs delta, tree;
  const uint64_t *active = img->active.l1;
  uint32_t active_size = img->active.l1_size;
  struct sim names;
  size_t i;
  uint64_t c, v;
  int64_t *sum = NULL;
  int r = -1;

  if (opts->nr_ops < 2)
    return 0;
  memset (&names, 0, sizeof names);
  if (new_refs (img, &delta) == -1)
    return -1;
  sum = calloc (delta.nr_clusters ? delta.nr_clusters : 1, sizeof *sum);
  if (!sum) {
    qc_error ("%s: %m", img->name);
    goto out;
  }
  /* Replay the run: create adds the active tree, apply adds the
   * snapshot's and takes the old active tree's away, delete takes the
   * snapshot's away.  The trees come from a second name replay.
   */
  {
    struct qc_options one = *opts;
    for (i = 0; i < opts->nr_ops; i++) {
      const uint64_t *l1 = NULL;
      uint32_t l1_size = 0;
      int sign = 1, j;

      if (opts->ops[i].op != QC_SNAPSHOT_CREATE) {
        one.nr_ops = i;
        sim_free (&names);
        if (sim_run (img, &one, &names) == -1)
          goto out;
        j = sim_find (&names, opts->ops[i].name);
        l1 = names.s[j].l1;
        l1_size = names.s[j].l1_size;
        if (!l1) {
          int idx;
          for (idx = 0; idx < (int) img->nr_snapshots; idx++)
            if (strcmp (img->snapshots[idx].id, names.s[j].id) == 0)
              break;
          l1 = qc_snapshot_view (img, idx)->l1;
          l1_size = qc_snapshot_view (img, idx)->l1_size;
        }
        sign = opts->ops[i].op == QC_SNAPSHOT_DELETE ? -1 : 1;
      }
      else {
        l1 = active;
        l1_size = active_size;
      }
      if (new_refs (img, &tree) == -1)
        goto out;
      if (tree_refs (img, l1, l1_size, &tree) == -1) {
        qc_refs_free (&tree);
        goto out;
      }
      for (c = 0; c < tree.nr_clusters && c < delta.nr_clusters; c++)
        sum[c] += sign * (int64_t) tree.count[c];
      qc_refs_free (&tree);
      if (opts->ops[i].op == QC_SNAPSHOT_APPLY) {
        /* The old active tree loses its reference after the switch. */
        if (new_refs (img, &tree) == -1)
          goto out;
        if (tree_refs (img, active, active_size, &tree) == -1) {
          qc_refs_free (&tree);
          goto out;
        }
        active = l1;
        active_size = l1_size;
      }
      else
        memset (&tree, 0, sizeof tree);
      /* Check the peak of this step before the old tree is released. */
      if (sign > 0)
        for (c = 0; c < delta.nr_clusters; c++) {
          if (sum[c] <= 0)
            continue;
          if (qc_refcount_get (img, c, &v) == -1) {
            qc_refs_free (&tree);
            goto out;
          }
          if (v + (uint64_t) sum[c] > max) {
            qc_error ("%s: %s%s=%s: cluster %" PRIu64 " would need "
                      "refcount %" PRIu64 ", more than the image's %u-bit "
                      "refcounts hold; widen them first (qemu-img amend -o "
                      "refcount_bits=16) or delete a snapshot", img->name,
                      qc_prefix (opts), op_key (opts->ops[i].op),
                      opts->ops[i].name, c, v + sum[c],
                      1U << img->h.refcount_order);
            qc_refs_free (&tree);
            errno = EOVERFLOW;
            goto out;
          }
        }
      for (c = 0; c < tree.nr_clusters && c < delta.nr_clusters; c++)
        sum[c] -= tree.count[c];
      qc_refs_free (&tree);
    }
  }
  r = 0;
 out:
  sim_free (&names);
  free (sum);
  qc_refs_free (&delta);
  return r;
}

/* New clusters the run needs at most (L1 tables, snapshot tables, a
 * few refcount blocks), against the free space of the file system.
 */
static int
check_space (struct qc_image *img, const struct qc_options *opts)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t need = 0, table = img->snapshots_size, avail = 0;
  size_t i;

  for (i = 0; i < opts->nr_ops; i++) {
    uint64_t l1 = (uint64_t) img->active.l1_size * 8;
    if (opts->ops[i].op == QC_SNAPSHOT_CREATE)
      table += SNAPSHOT_FIXED + EXTRA_DATA_SIZE + 16 +
        strlen (opts->ops[i].name) + 8;
    if (opts->ops[i].op != QC_SNAPSHOT_DELETE)
      need += (l1 + cs - 1) / cs + 1;
    need += (table + cs - 1) / cs + 2;
  }
  need *= cs;
  /* A container (the plugin below a filter) may have free clusters
   * inside: how many is not known without a full count.  A file grows
   * at its end, into the file system.
   */
  if (img->file->fixed_size)
    return 0;
  if (blkdev_file_fd (img->file) >= 0) {
    struct statvfs st;
    if (fstatvfs (blkdev_file_fd (img->file), &st) == 0) {
      avail = (uint64_t) st.f_bavail * st.f_frsize;
      if (need > avail)
        goto nospace;
    }
  }
  return 0;
 nospace:
  qc_error ("%s: the snapshot operations need about %" PRIu64 " bytes "
            "and only %" PRIu64 " are free: nothing was changed",
            img->name, need, avail);
  errno = ENOSPC;
  return -1;
}

int
qc_image_maintain (struct qc_image *img, const struct qc_options *opts)
{
  struct qc_check_result res;
  struct sim names;
  bool writes = opts->repair || opts->nr_ops || opts->nr_bitmap_ops;
  size_t i;
  int r;

  if (img->is_raw || (!opts->check && !opts->repair && !writes))
    return 0;
  /* All or nothing: everything that can be known is checked before
   * the first write, so that a run that fails changes nothing.  First
   * the names, reading only.
   */
  if (!img->reftable && !(img->h.incompatible_features &
                          QCOW2_INCOMPAT_DIRTY) &&
      qc_refcount_open (img) == -1)
    return -1;
  if (sim_run (img, opts, &names) == -1) {
    sim_free (&names);
    return -1;
  }
  sim_free (&names);
  if (qc_bitmap_ops_check (img, opts) == -1)
    return -1;
  if (writes && img->default_view != &img->active.dev) {
    qc_error ("%s: %ssnapshot= serves a read-only snapshot: the snapshot "
              "and bitmap operations and %srepair= cannot be used with it",
              img->name, qc_prefix (opts), qc_prefix (opts));
    errno = EINVAL;
    return -1;
  }
  /* A dirty image's refcounts are stale until rebuilt (which making it
   * writable does); checking them before would only report that.
   */
  if (img->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
    if (opts->readonly) {
      qc_error ("%s: the image is dirty (its refcounts are stale) and "
                "nbdkit -r does not rebuild them: %scheck=on skipped",
                img->name, qc_prefix (opts));
      return 0;
    }
    if (qc_image_make_writable (img) == -1)
      return -1;
  }
  /* The image can be written (file permissions, locks, corrupt bit),
   * before anything is.
   */
  if (writes && qc_image_make_writable (img) == -1)
    return -1;

  if (opts->check || opts->repair) {
    /* First look, changing nothing. */
    qc_step_begin (img->name, "checking the refcounts");
    r = qc_image_check (img, QC_REPAIR_NONE, &res);
    qc_step_end ();
    if (r == -1)
      return -1;
    qc_check_report (img, &res);
    if (res.corruptions && opts->repair != QC_REPAIR_ALL) {
      if (opts->nr_ops || opts->nr_bitmap_ops) {
        qc_error ("%s: check: %" PRIu64 " corruptions: snapshot operations "
                  "refused on a corrupt image (%srepair=all rebuilds its "
                  "refcounts); nothing was changed", img->name,
                  res.corruptions, qc_prefix (opts));
        errno = EROFS;
        return -1;
      }
      qc_error ("%s: check: %" PRIu64 " corruptions and %" PRIu64 " leaked "
                "clusters: the image is served read-only; %srepair=all "
                "rebuilds its refcounts", img->name, res.corruptions,
                res.leaks, qc_prefix (opts));
      img->force_readonly = true;
      __atomic_store_n (&img->active.dev.readonly, true, __ATOMIC_RELEASE);
      return 0;
    }
  }
  /* What the snapshot operations need: refcounts that do not overflow
   * at any step, and space.  (After a repair=all rebuild, refcounts
   * may differ; the operations check again before they write.)
   */
  if (opts->nr_ops &&
      (sim_refcounts (img, opts) == -1 || check_space (img, opts) == -1))
    return -1;
  if (opts->check || opts->repair) {
    if (opts->repair && (res.leaks || res.corruptions)) {
      qc_step_begin (img->name, opts->repair == QC_REPAIR_ALL ?
                     "repairing (rebuilding the refcounts)" :
                     "repairing the leaks");
      r = qc_image_check (img, opts->repair, &res);
      qc_step_end ();
      if (r == -1)
        return -1;
      qc_check_report_repaired (img, &res);
      /* Double check, as qemu-img check -r does. */
      qc_step_begin (img->name, "checking the refcounts again");
      r = qc_image_check (img, QC_REPAIR_NONE, &res);
      qc_step_end ();
      if (r == -1)
        return -1;
      qc_check_report (img, &res);
      if (res.corruptions) {
        qc_error ("%s: check: %" PRIu64 " corruptions left after the "
                  "repair: the image is served read-only", img->name,
                  res.corruptions);
        img->force_readonly = true;
        __atomic_store_n (&img->active.dev.readonly, true,
                          __ATOMIC_RELEASE);
        if (opts->nr_ops) {
          errno = EROFS;
          return -1;
        }
        return 0;
      }
    }
  }
  /* The bitmaps first: before the first write keeps them up to date. */
  if (qc_bitmap_ops_run (img, opts) == -1)
    return -1;
  for (i = 0; i < opts->nr_ops; i++)
    if (qc_image_snapshot_op (img, opts->ops[i].op, opts->ops[i].name) == -1)
      return -1;
  return 0;
}
