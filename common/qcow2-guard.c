/* SPDX-License-Identifier: BSD-3-Clause */
/* The safety net: what the image's refcounts cannot be trusted with.
 *
 * An image may come with damaged refcounts (a careless writer's crash,
 * a bad tool, a bit flip, a hostile author).  The allocator hands out
 * clusters whose refcount is 0 and writes go in place where an entry
 * says its cluster is not shared (the COPIED flag), so one wrong
 * refcount is enough to write guest data over a snapshot's L1 table,
 * or a new L2 table over the header.
 *
 * Before the first write we count every reference in the image once
 * (header, L1 tables, L2 tables, data and compressed clusters of the
 * active image and of every snapshot, the snapshot table, refcount
 * structures, bitmaps, the encryption header: cost proportional to the
 * metadata) and keep three sets of host clusters:
 *
 *   used     every cluster something refers to, and every cluster
 *            allocated since; the allocator never hands out one of
 *            these, whatever its refcount says;
 *   sticky   clusters with fewer refcounts than references: they stay
 *            in "used" (and are never discarded) even when their
 *            refcount drops to 0;
 *   inplace  clusters that we would write in place (a COPIED entry of
 *            the active image, a refcount block, the refcount table,
 *            the active L1 table, the header) but that something else
 *            refers to as well.
 *
 * A valid image has no sticky or inplace clusters (those sets are then
 * NULL and cost nothing on the write path), and a correct allocator
 * never reaches a used cluster: each check is a guard against damage
 * (or our own bugs), not part of normal operation.
 *
 * When a check fails the write is refused with EIO, the image is marked
 * corrupt as qemu does (so qemu-img check -r all is the way out) and no
 * more writes are accepted; the log says which structure the cluster
 * holds.  Clusters referenced past the end of the file (a corrupt
 * image) make the allocator stop before the lowest of them.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"

struct qc_guard {
  uint64_t *used;               /* grows with allocations */
  uint64_t used_clusters;       /* clusters "used" can hold */
  uint64_t *sticky, *inplace;   /* fixed size nr, or NULL */
  uint64_t nr;                  /* clusters counted at build */
  uint64_t past_end;            /* lowest cluster referenced at or past
                                 * the end of the file, or UINT64_MAX */
};

static bool
bit_get (const uint64_t *map, uint64_t nbits, uint64_t i)
{
  return map && i < nbits && (map[i / 64] >> (i % 64)) & 1;
}

static void
bit_set (uint64_t *map, uint64_t i)
{
  map[i / 64] |= 1ULL << (i % 64);
}

static void
bit_clear (uint64_t *map, uint64_t i)
{
  map[i / 64] &= ~(1ULL << (i % 64));
}

static uint64_t *
bitmap_new (struct qc_image *img, uint64_t nbits)
{
  uint64_t *m = calloc (nbits / 64 + 1, sizeof *m);

  if (!m)
    qc_error ("%s: %m", img->name);
  return m;
}

/* Room in "used" for cluster c (meta_lock held). */
static int
used_grow (struct qc_image *img, uint64_t c)
{
  struct qc_guard *g = img->guard;
  uint64_t words, old = g->used_clusters / 64, *p;

  if (c < g->used_clusters)
    return 0;
  /* Geometric, so that a growing file costs few copies. */
  words = old * 2;
  if (words < c / 64 + 1)
    words = c / 64 + 1;
  p = realloc (g->used, words * sizeof *p);
  if (!p) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  memset (p + old, 0, (words - old) * sizeof *p);
  g->used = p;
  g->used_clusters = words * 64;
  return 0;
}

/* Refcounts of every cluster below nr, compared with the references:
 * fewer refcounts than references makes a cluster sticky.
 */
static int
find_undercounted (struct qc_image *img, const struct qc_refs *r,
                   uint64_t **sticky, uint64_t *nr_sticky)
{
  const uint64_t cs = img->h.cluster_size;
  const uint32_t order = img->h.refcount_order;
  const uint64_t per_block = (cs * 8) >> order;
  uint64_t c = 0, k;
  uint8_t *block;
  int ret = -1;

  /* Read past the cache, as the reference count reads L2 tables: a walk
   * over every block would evict the allocator's working set.
   */
  block = malloc (cs);
  if (!block) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  *nr_sticky = 0;
  for (k = 0; c < r->nr_clusters; k++) {
    bool have = k < img->reftable_entries && img->reftable[k];
    uint64_t i;

    if (have &&
        l2cache_read (img->rcache, img->file, img->reftable[k], block) == -1)
      goto out;
    for (i = 0; i < per_block && c < r->nr_clusters; i++, c++) {
      uint64_t v = have ? qc_refcount_entry_get (block, i, order) : 0;
      if (v >= r->count[c])
        continue;
      if (!*sticky && !(*sticky = bitmap_new (img, r->nr_clusters)))
        goto out;
      bit_set (*sticky, c);
      (*nr_sticky)++;
    }
  }
  ret = 0;
 out:
  free (block);
  return ret;
}

/* Mark cluster range [offset, offset + bytes) as written in place if
 * anything else refers to it too.
 */
static int
check_inplace (struct qc_image *img, const struct qc_refs *r,
               uint64_t **inplace, uint64_t *n, uint64_t offset,
               uint64_t bytes)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t c;

  if (bytes == 0)
    return 0;
  for (c = offset / cs; c <= (offset + bytes - 1) / cs; c++) {
    if (c >= r->nr_clusters || r->count[c] <= 1)
      continue;
    if (!*inplace && !(*inplace = bitmap_new (img, r->nr_clusters)))
      return -1;
    if (!bit_get (*inplace, r->nr_clusters, c))
      (*n)++;
    bit_set (*inplace, c);
  }
  return 0;
}

struct bitmap_inplace {
  const struct qc_refs *r;
  uint64_t **inplace;
  uint64_t *n;
  bool failed;
};

static int
bitmap_inplace (struct qc_image *img, uint64_t offset, uint64_t bytes,
                void *opaque)
{
  struct bitmap_inplace *w = opaque;

  if (check_inplace (img, w->r, w->inplace, w->n, offset, bytes) == -1) {
    w->failed = true;
    return -1;
  }
  return 0;
}

/* Everything of the active image that writes change in place. */
static int
find_shared_inplace (struct qc_image *img, const struct qc_refs *r,
                     uint64_t **inplace, uint64_t *n)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  uint64_t i, c;

  *n = 0;
  if (check_inplace (img, r, inplace, n, 0, cs) == -1 ||
      check_inplace (img, r, inplace, n, h->l1_table_offset,
                     (uint64_t) h->l1_size * 8) == -1 ||
      check_inplace (img, r, inplace, n, h->refcount_table_offset,
                     (uint64_t) h->refcount_table_clusters * cs) == -1)
    return -1;
  /* Persistent bitmaps, while kept, are written in place: the
   * directory at the first write, their tables and bits at close.
   */
  if (h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) {
    struct bitmap_inplace w = { .r = r, .inplace = inplace, .n = n };

    if (qc_bitmaps_walk (img, bitmap_inplace, &w) == -1 || w.failed)
      return -1;
  }
  for (i = 0; i < img->reftable_entries; i++)
    if (img->reftable[i] &&
        check_inplace (img, r, inplace, n, img->reftable[i], cs) == -1)
      return -1;
  /* L2 tables the active L1 table says are not shared. */
  for (i = 0; i < img->active.l1_size; i++) {
    uint64_t l1e = img->active.l1[i];
    uint64_t off = l1e & QCOW2_OFFSET_MASK;

    if (off && (l1e & QCOW2_OFLAG_COPIED) &&
        check_inplace (img, r, inplace, n, off, cs) == -1)
      return -1;
  }
  /* Data clusters an entry of the active image says are not shared
   * (in any of its tables: a copied table keeps its entries' flags).
   */
  for (c = 0; c < r->nr_clusters; c++) {
    if (c % 64 == 0 && r->copied[c / 64] == 0) {
      c += 63;                  /* a word with no bit set */
      continue;
    }
    if (bit_get (r->copied, r->nr_clusters, c) &&
        check_inplace (img, r, inplace, n, c * cs, cs) == -1)
      return -1;
  }
  return 0;
}

void
qc_guard_free (struct qc_image *img)
{
  struct qc_guard *g = img->guard;

  if (!g)
    return;
  free (g->used);
  free (g->sticky);
  free (g->inplace);
  free (g);
  img->guard = NULL;
}

int
qc_guard_build (struct qc_image *img)
{
  struct qc_guard *g;
  struct qc_refs r;
  uint64_t c, nr_sticky = 0, nr_inplace = 0;

  qc_guard_free (img);
  if (!img->overlap_check || img->is_raw)
    return 0;
  if (qc_count_refs_copied (img, &r) == -1)
    return -1;
  g = calloc (1, sizeof *g);
  if (!g) {
    qc_error ("%s: %m", img->name);
    goto err;
  }
  img->guard = g;
  g->nr = r.nr_clusters;
  g->past_end = r.past_end;
  g->used_clusters = (r.nr_clusters / 64 + 1) * 64;
  g->used = bitmap_new (img, r.nr_clusters);
  if (!g->used)
    goto err;
  for (c = 0; c < r.nr_clusters; c++)
    if (r.count[c])
      bit_set (g->used, c);
  if (find_undercounted (img, &r, &g->sticky, &nr_sticky) == -1 ||
      find_shared_inplace (img, &r, &g->inplace, &nr_inplace) == -1)
    goto err;
  if (nr_sticky || nr_inplace || g->past_end != UINT64_MAX)
    qc_info ("%s: the image's refcounts are damaged: %" PRIu64 " clusters "
             "with fewer refcounts than references, %" PRIu64 " clusters "
             "written in place but referenced elsewhere too%s; writes "
             "that would reach them will be refused (qemu-img check -r "
             "all repairs the image)", img->name, nr_sticky, nr_inplace,
             g->past_end != UINT64_MAX ?
             ", references past the end of the file" : "");
  qc_refs_free (&r);
  return 0;
 err:
  qc_refs_free (&r);
  qc_guard_free (img);
  return -1;
}

/* What cluster c holds, in words, appended to buf (a slow walk over
 * the metadata: only after a check failed).
 */
struct describe {
  char buf[512];
  size_t len;
  unsigned found;
};

static void
say (struct describe *d, const char *fs, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
say (struct describe *d, const char *fs, ...)
{
  va_list ap;
  int n;

  if (d->found >= 3 || d->len >= sizeof d->buf - 1)
    return;
  if (d->found > 0) {
    n = snprintf (d->buf + d->len, sizeof d->buf - d->len, "; ");
    d->len += n > 0 ? n : 0;
  }
  va_start (ap, fs);
  n = vsnprintf (d->buf + d->len, sizeof d->buf - d->len, fs, ap);
  va_end (ap);
  if (n > 0)
    d->len += n;
  if (d->len >= sizeof d->buf)
    d->len = sizeof d->buf - 1;
  d->found++;
}

static bool
in_range (uint64_t cs, uint64_t c, uint64_t offset, uint64_t bytes)
{
  return bytes > 0 && c >= offset / cs && c <= (offset + bytes - 1) / cs;
}

struct bitmap_probe {
  uint64_t cluster;
  bool hit;
};

static int
probe_bitmap_range (struct qc_image *img, uint64_t offset, uint64_t bytes,
                    void *opaque)
{
  struct bitmap_probe *p = opaque;

  if (in_range (img->h.cluster_size, p->cluster, offset, bytes))
    p->hit = true;
  return 0;
}

/* The L2 tables and data of one L1 table. */
static int
describe_l1 (struct qc_image *img, struct describe *d, uint64_t c,
             const uint64_t *l1, uint32_t l1_size, const char *who)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  const uint64_t entries = 1ULL << h->l2_bits;
  uint32_t i;
  uint64_t j;

  for (i = 0; i < l1_size && d->found < 3; i++) {
    uint64_t off = l1[i] & QCOW2_OFFSET_MASK;
    struct l2cache_entry *pin;
    const uint8_t *t;

    if (!off || (off & (cs - 1)))
      continue;
    if (off / cs == c)
      say (d, "an L2 table of %s (guest offset 0x%" PRIx64 ")", who,
           (uint64_t) i << (h->l2_bits + h->cluster_bits));
    if (off + cs > blkdev_size (img->file) || img->external_data)
      continue;
    t = l2cache_get (img->cache, img->file, off, &pin);
    if (!t)
      return -1;
    for (j = 0; j < entries && d->found < 3; j++) {
      uint64_t e, bm, guest;
      qc_load_entry (img, t + j * h->l2_entry_size, &e, &bm);
      guest = ((uint64_t) i << (h->l2_bits + h->cluster_bits)) +
        (j << h->cluster_bits);
      if (e & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff, clen;
        qc_compressed_extent (img, e & ~(QCOW2_OFLAG_COPIED |
                                         QCOW2_OFLAG_COMPRESSED),
                              &coff, &clen);
        if (in_range (cs, c, coff, clen))
          say (d, "compressed guest data of %s (guest offset 0x%" PRIx64
               ")", who, guest);
      }
      else if ((e & QCOW2_OFFSET_MASK) / cs == c && (e & QCOW2_OFFSET_MASK))
        say (d, "guest data of %s (guest offset 0x%" PRIx64 ")", who, guest);
    }
    l2cache_put (img->cache, pin);
  }
  return 0;
}

static void
describe (struct qc_image *img, uint64_t c, struct describe *d)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  uint32_t i;
  uint64_t k;
  char who[128];

  memset (d, 0, sizeof *d);
  if (c == 0)
    say (d, "the image header");
  if (in_range (cs, c, h->l1_table_offset, (uint64_t) h->l1_size * 8))
    say (d, "the active L1 table");
  if (in_range (cs, c, h->refcount_table_offset,
                (uint64_t) h->refcount_table_clusters * cs))
    say (d, "the refcount table");
  for (k = 0; img->reftable && k < img->reftable_entries; k++)
    if (img->reftable[k] && img->reftable[k] / cs == c)
      say (d, "refcount block %" PRIu64, k);
  if (h->nb_snapshots &&
      in_range (cs, c, h->snapshots_offset, img->snapshots_size))
    say (d, "the snapshot table");
  if (h->has_crypto_ext &&
      in_range (cs, c, h->crypto_offset, h->crypto_length))
    say (d, "the encryption header");
  for (i = 0; i < img->nr_snapshots; i++)
    if (in_range (cs, c, img->snapshots[i].l1_table_offset,
                  (uint64_t) img->snapshots[i].l1_size * 8))
      say (d, "the L1 table of snapshot '%s'", img->snapshots[i].name);
  if (img->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) {
    struct bitmap_probe p = { .cluster = c };
    if (qc_bitmaps_walk (img, probe_bitmap_range, &p) >= 0 && p.hit)
      say (d, "a persistent bitmap's directory, table or data");
  }
  if (describe_l1 (img, d, c, img->active.l1, img->active.l1_size,
                   "the active image") == -1)
    return;
  for (i = 0; i < img->nr_snapshots && d->found < 3; i++) {
    const uint64_t *l1 = qc_snapshot_l1 (img, i);
    if (!l1)
      return;
    snprintf (who, sizeof who, "snapshot '%s'", img->snapshots[i].name);
    if (describe_l1 (img, d, c, l1, img->snapshots[i].l1_size, who) == -1)
      return;
  }
  if (d->found == 0)
    say (d, "something the image refers to");
}

/* Refuse: log, mark the image corrupt, no more writes (meta_lock held
 * or not, as locked says).
 */
static int
violation (struct qc_image *img, uint64_t c, const char *action,
           bool locked)
{
  struct describe d;
  uint64_t incompat;

  if (!locked)
    pthread_mutex_lock (&img->meta_lock);
  describe (img, c, &d);
  qc_error ("%s: preventing a write that would damage the image: %s "
            "cluster 0x%" PRIx64 ", which holds %s (its refcount is "
            "wrong); the image is marked corrupt: repair it with qemu-img "
            "check -r all", img->name, action, c * img->h.cluster_size,
            d.buf);
  /* Version 2 headers have no room for the bit: qemu, too, keeps it in
   * memory only.
   */
  if (!img->marked_corrupt && img->h.version >= 3) {
    incompat = img->h.incompatible_features | QCOW2_INCOMPAT_CORRUPT;
    {
      uint64_t be = htobe64 (incompat);
      /* Whatever shares the header cluster, qemu marks it the same way:
       * the bit is what sends the user to a repair.
       */
      if (blkdev_pwrite (img->file, &be, 8, QCOW2_HDR_INCOMPAT, 0) == 0 &&
          blkdev_flush (img->file) == 0)
        img->h.incompatible_features = incompat;
    }
  }
  __atomic_store_n (&img->marked_corrupt, true, __ATOMIC_RELEASE);
  if (!locked)
    pthread_mutex_unlock (&img->meta_lock);
  errno = EIO;
  return -1;
}

int
qc_guard_alloc_check (struct qc_image *img, uint64_t c, uint64_t n)
{
  struct qc_guard *g = img->guard;
  uint64_t i;

  if (!g)
    return 0;
  if (c + n > g->past_end)
    return violation (img, g->past_end, "allocating", true);
  for (i = c; i < c + n; i++)
    if (bit_get (g->used, g->used_clusters, i))
      return violation (img, i, "allocating", true);
  return 0;
}

int
qc_guard_refcount_changed (struct qc_image *img, uint64_t c, uint64_t old,
                           uint64_t nv)
{
  struct qc_guard *g = img->guard;

  if (!g)
    return 0;
  if (old == 0 && nv > 0) {
    if (used_grow (img, c) == -1)
      return -1;
    bit_set (g->used, c);
  }
  else if (nv == 0 && !bit_get (g->sticky, g->nr, c) &&
           c < g->used_clusters)
    bit_clear (g->used, c);
  return 0;
}

bool
qc_guard_may_discard (struct qc_image *img, uint64_t c)
{
  struct qc_guard *g = img->guard;

  return !g || !bit_get (g->sticky, g->nr, c);
}

int
qc_guard_inplace_check (struct qc_image *img, uint64_t offset,
                        uint64_t bytes, const char *what, bool locked)
{
  struct qc_guard *g = img->guard;
  const uint64_t cs = img->h.cluster_size;
  uint64_t c;

  if (!g || !g->inplace || bytes == 0)
    return 0;
  for (c = offset / cs; c <= (offset + bytes - 1) / cs; c++)
    if (bit_get (g->inplace, g->nr, c))
      return violation (img, c, what, locked);
  return 0;
}
