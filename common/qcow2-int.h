/* SPDX-License-Identifier: BSD-3-Clause */
/* Internal structures of an open image, shared by the core's files. */
#ifndef QC_QCOW2_INT_H
#define QC_QCOW2_INT_H

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "blkdev.h"
#include "qc-error.h"
#include "byteorder.h"
#include "dcache.h"
#include "rahead.h"
#include "l2cache.h"
#include "qcow2.h"
#include "qcow2-header.h"

/* L1 and L2 entry bits. */
#define QCOW2_OFLAG_COPIED     (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW2_OFLAG_ZERO       1ULL
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ULL

struct qc_image;

/* A growing list of host offsets: clusters whose references were
 * dropped, waiting to be freed (qcow2-alloc.c); the L2 tables of every
 * L1 table, while references are counted (qcow2-refs.c).
 */
struct qc_offset_list {
  uint64_t *offsets;
  size_t len, cap;
};

/* Append offset (-1 after qc_error on allocation failure; name names
 * the image in the message).
 */
static inline int
qc_offset_list_add (const char *name, struct qc_offset_list *l,
                    uint64_t offset)
{
  if (l->len == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    uint64_t *p = realloc (l->offsets, cap * sizeof *p);
    if (!p) {
      qc_error ("%s: %m", name);
      return -1;
    }
    l->offsets = p;
    l->cap = cap;
  }
  l->offsets[l->len++] = offset;
  return 0;
}

/* A guest range whose clusters are being allocated or copied: others
 * touching it wait, so that two writers never allocate the same guest
 * cluster twice.
 */
struct qc_inflight {
  uint64_t start, end;
  struct qc_inflight *next;
};

/* A view is the guest disk as one L1 table sees it: the active image
 * or an internal snapshot.  Its blkdev is what the front-ends serve and
 * what an image above uses as its backing device.
 */
struct qc_view {
  struct blkdev dev;            /* first: a view is a device */
  struct qc_image *img;
  uint64_t *l1;                 /* host byte order */
  uint32_t l1_size;
};

struct qcow2_snapshot {
  uint64_t l1_table_offset;
  uint32_t l1_size;
  char *id;
  char *name;
  uint64_t disk_size;
  uint32_t date_sec, date_nsec;
  uint64_t vm_clock_nsec;
  uint32_t vm_state_size;
  uint32_t extra_size;
  uint8_t *extra;               /* extra data as stored, kept on rewrite */
  uint64_t *l1;                 /* host byte order: loaded on first use */
  struct qc_view *view;         /* made on first use, over l1 */
};

struct qc_image {
  char *name;
  char *follow_root;            /* referenced-files=same-dir: realpath of
                                 * the top image's directory */
  bool is_raw;
  bool locking;
  bool borrowed;                /* file belongs to the caller */
  struct qc_open_file open_file; /* opens the files the image names */
  struct qc_crypto *crypto;     /* encryption, or NULL */
  pthread_rwlock_t rmw_lock;    /* partial-sector writes of encrypted
                                 * images (qcow2-data-io.c) */
  int compress;                 /* -1, or the type full clusters are
                                 * written compressed with */
  int compress_level;
  struct blkdev *file;          /* the image (owned) */
  struct blkdev *data;          /* external data file (owned), or file */
  bool external_data;           /* data is a file of its own */
  struct blkdev *backing;       /* backing device, or NULL */
  struct qc_image *backing_img; /* owner of backing */
  struct qcow2_header h;
  struct l2cache *cache;
  struct dcache *dcache;        /* decompressed clusters, or NULL */
  struct rahead *rahead;        /* windows of the file that compressed
                                 * streams are read from (rahead.h) */
  uint64_t nr_decompressed;     /* atomic: clusters decompressed, for
                                 * tests and debug messages */
  struct qc_view active;
  struct qcow2_snapshot *snapshots;
  uint32_t nr_snapshots;
  uint64_t snapshots_size;      /* bytes of the snapshot table */
  bool metadata_prealloc;       /* see qc_detect_metadata_prealloc */
  pthread_mutex_t lock;         /* guards making the image writable */
  pthread_mutex_t snap_lock;    /* guards loading snapshot views */

  /* Write state (qcow2-write.c, qcow2-refcount.c, qcow2-alloc.c,
   * qcow2-flush.c).  All
   * of it is guarded by meta_lock, except the I/O epoch counters.
   */
  bool writable;                        /* atomic */
  bool force_readonly;                  /* found corrupt by a check */
  bool failed;                          /* metadata state unknown after an
                                         * I/O error: no more writes */
  bool written;                         /* atomic: first write done */
  bool overlap_check;                   /* build the guard (overlap-check=) */
  bool marked_corrupt;                  /* atomic: the guard refused a
                                         * write: no more writes */
  struct qc_guard *guard;               /* qcow2-guard.c, or NULL */
  pthread_mutex_t meta_lock;
  pthread_cond_t inflight_done;
  struct qc_inflight *inflight;
  struct l2cache *rcache;               /* refcount blocks */
  uint64_t *reftable;                   /* host byte order */
  uint64_t reftable_entries;
  uint64_t reftable_dirty_lo, reftable_dirty_hi;  /* entries */
  uint64_t l1_dirty_lo, l1_dirty_hi;    /* entries, lo == hi: clean */
  uint64_t free_cursor;                 /* first cluster that may be free */
  /* Partly filled clusters that compressed streams are packed into:
   * where the free space of each starts (0: none).  Several, so that a
   * cluster allocated for something else next to one does not waste
   * the rest of it.
   */
#define QC_ZOPEN 4
  uint64_t zopen[QC_ZOPEN];
  uint64_t alloc_end;                   /* atomic: end of allocated host
                                         * clusters, may pass the file end */
  uint64_t dirty_limit;                 /* tables before an early writeback */
  struct qc_offset_list pending;          /* unreferenced, not yet durable */
  struct qc_offset_list waiting[2];       /* durable, waiting for old I/O */
  unsigned l2_seq;                      /* atomic: odd while extended L2
                                         * entries change (a seqlock) */
  unsigned epoch;                       /* atomic */
  unsigned io_active[2];                /* atomic: I/O in each epoch */
  struct blkdev *default_view;
  char *description;
  struct qc_bitmap_track *bmt;          /* bitmaps kept up to date, or
                                         * NULL (qcow2-bitmap-track.c) */
};

/* A run of the guest disk with one kind of mapping. */
enum qc_kind {
  QC_UNALLOCATED,               /* read from the backing, or zeros */
  QC_ZERO,                      /* reads as zeros */
  QC_DATA,                      /* at host offset in the data device */
  QC_COMPRESSED,                /* one compressed cluster */
};

struct qc_run {
  enum qc_kind kind;
  bool copied;                  /* DATA with refcount 1: write in place */
  uint64_t length;              /* bytes from the requested offset */
  uint64_t host;                /* DATA: host offset of the first byte;
                                 * COMPRESSED: the descriptor */
};

/* Map the guest run starting at offset (at most count bytes): the
 * longest prefix with one kind (and, for DATA, contiguous host bytes)
 * within one L2 table.  -1 after qc_error (errno EIO) on bad metadata.
 */
extern int qc_map (struct qc_view *v, uint64_t offset, uint64_t count,
                   struct qc_run *run);

/* Guest data at a host offset, decrypted / encrypted if the image is
 * encrypted (qcow2-data-io.c).  guest is the guest offset of the data.
 */
extern int qc_data_read (struct qc_image *img, uint64_t host, uint64_t guest,
                         void *buf, size_t len);
extern int qc_data_write (struct qc_image *img, uint64_t host,
                          uint64_t guest, const void *buf, size_t len);

/* Where the stream of a compressed cluster lies in the image file:
 * bytes [*host, *host + *len) for descriptor desc (the L2 entry without
 * its flags).  The length is the sectors the descriptor counts, so it
 * may include bytes after the stream.
 */
static inline void
qc_compressed_extent (const struct qc_image *img, uint64_t desc,
                      uint64_t *host, uint64_t *len)
{
  const unsigned bits = img->h.cluster_bits - 8;
  const unsigned x = 62 - bits;
  uint64_t nsect = (desc >> x) & ((1ULL << bits) - 1);

  *host = desc & ((1ULL << x) - 1);
  *len = (nsect + 1) * 512 - (*host & 511);
}

/* Bound of one read below for compressed streams (rahead.h), and the
 * number of windows kept.
 */
#define QC_RAHEAD_MAX (2 * 1024 * 1024)
#define QC_RAHEAD_WINDOWS 8

/* Read a compressed cluster (descriptor desc) into out (cluster size).
 * want_end: where in the file the streams the caller needs next end
 * (0 if unknown), so that they are read below with this one.
 */
extern int qc_read_compressed (struct qc_image *img, uint64_t desc,
                               uint8_t *out, uint64_t want_end);

/* Initialise a view's device over the given L1 table. */
extern void qc_view_init (struct qc_view *v, struct qc_image *img,
                          uint64_t *l1, uint32_t l1_size, uint64_t size,
                          const char *name);

/* Load an L1 table (l1_size entries at offset) into host byte order
 * (qcow2-map.c).
 */
extern uint64_t *qc_load_l1 (struct qc_image *img, uint64_t offset,
                             uint32_t l1_size, const char *what);

/* Cluster 0 of a new image (qcow2-create.c), into buf (cs bytes): the
 * header for the options in o (virtual size qc_create_size (o)), with
 * its extensions and backing file name, pointing at the refcount table,
 * L1 table and LUKS area given.  -1 after qc_error if it does not fit
 * in one cluster.  Shared by image creation and the encoder
 * (qcow2-enc-layout.c).
 */
struct qc_options;
extern int qc_create_header (const struct qc_options *o, uint8_t *buf,
                             uint64_t cs, uint64_t reftable_off,
                             uint32_t reftable_clusters, uint64_t l1_off,
                             uint32_t l1_size, uint64_t luks_off,
                             uint64_t luks_len);

/* Refcount entries of any width (1 to 64 bits) in a refcount block:
 * inline, since the allocator, the safety net and the rebuild all read
 * blocks and none of them should depend on another for this.
 */
static inline uint64_t
qc_refcount_entry_get (const uint8_t *block, uint64_t index, uint32_t order)
{
  unsigned bits = 1U << order;

  switch (bits) {
  case 64: return get_be64 (block + index * 8);
  case 32: return get_be32 (block + index * 4);
  case 16: return get_be16 (block + index * 2);
  case 8: return block[index];
  default:
    /* Sub-byte widths are packed least significant bits first. */
    return (block[index * bits / 8] >> (index * bits % 8)) &
      ((1U << bits) - 1);
  }
}

static inline void
qc_refcount_entry_set (uint8_t *block, uint64_t index, uint32_t order,
                       uint64_t v)
{
  unsigned bits = 1U << order;

  switch (bits) {
  case 64: put_be64 (block + index * 8, v); break;
  case 32: put_be32 (block + index * 4, v); break;
  case 16: put_be16 (block + index * 2, v); break;
  case 8: block[index] = v; break;
  default: {
    uint8_t *b = &block[index * bits / 8];
    unsigned shift = index * bits % 8;
    uint8_t mask = ((1U << bits) - 1) << shift;
    *b = (*b & ~mask) | ((v << shift) & mask);
  }
  }
}

/* Refcounts (qcow2-refcount.c). */
extern int qc_detect_metadata_prealloc (struct qc_image *img, bool *ret);

/* Refcount entries per refcount block. */
static inline uint64_t
qc_refcount_per_block (const struct qc_image *img)
{
  return (img->h.cluster_size * 8) >> img->h.refcount_order;
}

/* Writable refcounts (qcow2-refcount.c) and the allocator
 * (qcow2-alloc.c), meta_lock held.
 */
extern int qc_refcount_open (struct qc_image *img);
extern void qc_refcount_close (struct qc_image *img);
extern int qc_refcount_get (struct qc_image *img, uint64_t cluster,
                            uint64_t *value);
extern int qc_refcount_add (struct qc_image *img, uint64_t cluster,
                            int64_t delta);
extern uint64_t qc_refcount_max (const struct qc_image *img);
/* n contiguous new clusters with refcount 1; *offset their host offset. */
extern int qc_alloc_clusters (struct qc_image *img, uint64_t n,
                              uint64_t *offset);
/* Allocate exactly this cluster if it is free (1), or say it is not
 * (0); -1 on error.
 */
extern int qc_alloc_cluster_at (struct qc_image *img, uint64_t cluster);
/* Drop one reference to each host cluster once the metadata that no
 * longer points to it is on disk and no older I/O may still use it.
 */
extern int qc_free_later (struct qc_image *img, uint64_t offset);
/* Move pending frees on (their unreferencing metadata is durable) and
 * apply those whose I/O has drained.
 */
extern int qc_free_progress (struct qc_image *img);
extern int qc_write_header_field (struct qc_image *img, uint64_t offset,
                                  const void *buf, size_t len);

/* I/O epochs: data I/O to host clusters runs between these, so that a
 * freed cluster is not reused while an older I/O to it is in flight.
 */
static inline unsigned
qc_io_begin (struct qc_image *img)
{
  for (;;) {
    unsigned e = __atomic_load_n (&img->epoch, __ATOMIC_SEQ_CST);
    __atomic_fetch_add (&img->io_active[e & 1], 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n (&img->epoch, __ATOMIC_SEQ_CST) == e)
      return e;
    __atomic_fetch_sub (&img->io_active[e & 1], 1, __ATOMIC_SEQ_CST);
  }
}

static inline void
qc_io_end (struct qc_image *img, unsigned e)
{
  __atomic_fetch_sub (&img->io_active[e & 1], 1, __ATOMIC_SEQ_CST);
}

/* Load an L2 entry (and its bitmap with extended L2) consistently. */
static inline void
qc_load_entry (struct qc_image *img, const uint8_t *p, uint64_t *e,
               uint64_t *bm)
{
  unsigned s1, s2;

  if (!img->h.extended_l2) {
    *e = l2cache_load64 (p);
    *bm = 0;
    return;
  }
  do {
    while ((s1 = __atomic_load_n (&img->l2_seq, __ATOMIC_ACQUIRE)) & 1)
      sched_yield ();
    *e = l2cache_load64 (p);
    *bm = l2cache_load64 (p + 8);
    __atomic_thread_fence (__ATOMIC_ACQUIRE);
    s2 = __atomic_load_n (&img->l2_seq, __ATOMIC_RELAXED);
  } while (s1 != s2);
}

/* Writing a view: the entry points (qcow2-write.c, qcow2-zero.c). */
extern int qc_view_write (struct qc_view *v, const void *buf, size_t count,
                          uint64_t offset, unsigned flags);
extern int qc_view_zero (struct qc_view *v, uint64_t count, uint64_t offset,
                         unsigned flags);
extern int qc_view_trim (struct qc_view *v, uint64_t count, uint64_t offset,
                         unsigned flags);
extern int qc_view_flush (struct qc_view *v);
/* qc_view_write without qc_before_first_write (zeroing writes zeros). */
extern int qc_view_write_data (struct qc_view *v, const void *buf,
                               size_t count, uint64_t offset, unsigned flags);

/* Uncompressed writes, in place or allocating (qcow2-write-alloc.c):
 * bytes done (at least one), -1 on error.
 */
extern int64_t qc_write_plain (struct qc_view *v, const uint8_t *p,
                               uint64_t offset, uint64_t count);

/* Compressed writes with compress= (qcow2-write-compressed.c): bytes
 * done, 0 if the request does not start with what it writes
 * compressed, -1 on error.
 */
extern int64_t qc_write_compressed (struct qc_view *v, const uint8_t *p,
                                    uint64_t offset, uint64_t count);

/* Changing L2 entries (qcow2-l2-update.c); meta_lock held. */
static inline uint64_t
qc_l2_span (const struct qc_image *img)
{
  return img->h.cluster_size << img->h.l2_bits;
}

static inline bool
qc_external_data (const struct qc_image *img)
{
  return img->external_data;
}

/* Guest ranges in flight: wait until nothing overlaps [start, end)
 * (dropping the lock while waiting), claim one, release it.
 */
extern void qc_inflight_wait (struct qc_image *img, uint64_t start,
                              uint64_t end);
extern void qc_inflight_claim (struct qc_image *img, struct qc_inflight *f,
                               uint64_t start, uint64_t end);
extern void qc_inflight_release (struct qc_image *img,
                                 struct qc_inflight *f);
/* The L2 table for l1_index, ready to be changed: allocated (if create)
 * or copied away from a snapshot.  *table is NULL when there is none
 * and !create.
 */
extern int qc_l2_for_write (struct qc_image *img, uint64_t l1_index,
                            bool create, uint8_t **table,
                            struct l2cache_entry **pin);
/* The host clusters an old entry referenced, freed once durable. */
extern int qc_drop_host (struct qc_image *img, uint64_t e);
/* Write back early when too many tables are dirty. */
extern int qc_maybe_writeback (struct qc_image *img);
/* Does entry e keep its host cluster for a write (allocated, not
 * compressed, not shared)?  Does (e, bm) read as zeros as a whole?
 */
extern bool qc_has_own_host (const struct qc_image *img, uint64_t e);
extern bool qc_entry_reads_zero (const struct qc_image *img, uint64_t e,
                                 uint64_t bm);

/* Active L1 entry i changed: widen the range that the next writeback
 * writes (meta_lock held).
 */
static inline void
qc_l1_mark_dirty (struct qc_image *img, uint64_t i)
{
  if (img->l1_dirty_lo == img->l1_dirty_hi) {
    img->l1_dirty_lo = i;
    img->l1_dirty_hi = i + 1;
  }
  else {
    if (i < img->l1_dirty_lo)
      img->l1_dirty_lo = i;
    if (i + 1 > img->l1_dirty_hi)
      img->l1_dirty_hi = i + 1;
  }
}

/* Store an L2 entry (and bitmap) in a pinned table, marking it dirty
 * (meta_lock held).
 */
extern void qc_store_entry (struct qc_image *img, uint8_t *table,
                            struct l2cache_entry *pin, uint64_t index,
                            uint64_t e, uint64_t bm);

/* Header changes due before the first write (autoclear bits), and the
 * refusals after a failure (qcow2-write.c): qc_view_write, _zero and
 * _trim call it first.
 */
extern int qc_before_first_write (struct qc_image *img);

/* References to every host cluster (qcow2-refs.c). */
struct qc_refs {
  uint64_t nr_clusters;
  uint32_t *count;              /* references per host cluster */
  uint64_t out_of_range;        /* references past nr_clusters */
  uint64_t past_end;            /* lowest of those, or UINT64_MAX */
  uint64_t *copied;             /* with qc_count_refs_copied: a bit per
                                 * cluster that an entry of the active
                                 * image says is not shared (COPIED) */
};
extern int qc_count_refs (struct qc_image *img, bool refcount_structures,
                          struct qc_refs *refs);
/* The same, also filling refs->copied. */
extern int qc_count_refs_copied (struct qc_image *img, struct qc_refs *refs);
extern void qc_refs_free (struct qc_refs *refs);
/* Write new refcount structures from the references (dirty images;
 * qcow2-writable.c).
 */
extern int qc_rebuild_refcounts (struct qc_image *img);

/* Check and repair (qcow2-check.c).  Set COPIED exactly where the
 * refcount is 1 in the active tree, or (!apply) only count where it is
 * wrong (meta_lock held).
 */
extern int qc_copied_flags (struct qc_image *img, bool apply,
                            uint64_t *fixed);
/* The summaries after a check's and a repair's findings, in qemu-img
 * check's words.
 */
extern void qc_check_report (struct qc_image *img,
                             const struct qc_check_result *res);
extern void qc_check_report_repaired (struct qc_image *img,
                                      const struct qc_check_result *res);

/* Persistent dirty bitmaps (qcow2-bitmaps.c): the directory. */
#define QC_BITMAP_IN_USE       1U
#define QC_BITMAP_AUTO         2U
#define QC_BITMAP_EXTRA_COMPAT 4U
#define QC_BITMAP_NAME_MAX     1023
#define QC_BITMAP_DIR_FIXED    24
/* The bits of all of an image's bitmaps held in memory at most. */
#define QC_BITMAP_MEM_MAX      (256ULL << 20)
struct qc_bitmap_entry {
  uint64_t table_offset;
  uint32_t table_size;          /* entries */
  uint32_t flags;
  uint8_t type;                 /* 1: dirty tracking */
  uint8_t granularity_bits;
  uint16_t name_size;
  uint32_t extra_size;
  char *name;
  uint64_t pos, len;            /* the entry's bytes in the directory */
};
struct qc_bitmap_dir {
  uint8_t *buf;                 /* the directory as stored */
  uint64_t size;
  uint32_t n;
  struct qc_bitmap_entry *e;
};
extern int qc_bitmap_dir_read (struct qc_image *img,
                               struct qc_bitmap_dir *d);
extern void qc_bitmap_dir_free (struct qc_bitmap_dir *d);
extern int qc_bitmap_read_data (struct qc_image *img,
                                const struct qc_bitmap_entry *e,
                                uint64_t nbytes, uint8_t *bits,
                                uint64_t *table);

/* Bytes of bitmap data for a disk of size bytes at granularity bits
 * (one bit per granule, rounded up to whole bytes).
 */
static inline uint64_t
qc_bitmap_bytes (uint64_t size, unsigned bits)
{
  uint64_t granules = (size >> bits) + ((size & ((1ULL << bits) - 1)) != 0);
  return (granules + 7) / 8;
}

/* Keeping enabled bitmaps up to date (qcow2-bitmap-track.c).  Start
 * before the first write (meta_lock held): 0 when the bitmaps are kept
 * (the autoclear bit stays), 1 when they cannot be (the caller clears
 * the bit as a writer that does not maintain them), -1 on error.
 * qc_bitmaps_mark records a change of the active disk (no lock, no
 * I/O); qc_bitmaps_store writes the data back and clears the in-use
 * flags (meta_lock held, at close).
 */
struct qc_bitmap_track;
extern int qc_bitmaps_track_start (struct qc_image *img);
extern void qc_bitmaps_mark_slow (struct qc_bitmap_track *t, uint64_t offset,
                                  uint64_t count);
extern int qc_bitmaps_store (struct qc_image *img);
extern void qc_bitmaps_track_free (struct qc_image *img);

static inline void
qc_bitmaps_mark (struct qc_view *v, uint64_t offset, uint64_t count)
{
  struct qc_bitmap_track *t =
    __atomic_load_n (&v->img->bmt, __ATOMIC_ACQUIRE);

  if (t && count && v == &v->img->active)
    qc_bitmaps_mark_slow (t, offset, count);
}

/* Every cluster range the persistent bitmaps occupy (qcow2-bitmaps.c). */
extern int qc_bitmaps_walk (struct qc_image *img,
                            int (*fn) (struct qc_image *img, uint64_t offset,
                                       uint64_t bytes, void *opaque),
                            void *opaque);

/* The safety net over damaged refcounts (qcow2-guard.c).  Built before
 * the first write (meta_lock held); each check returns -1 with errno
 * EIO after logging which structure the cluster holds and marking the
 * image corrupt.
 */
extern int qc_guard_build (struct qc_image *img);
extern void qc_guard_free (struct qc_image *img);
/* Clusters [c, c + n) are about to be allocated (meta_lock held). */
extern int qc_guard_alloc_check (struct qc_image *img, uint64_t c,
                                 uint64_t n);
/* Cluster c's refcount went from old to nv (meta_lock held). */
extern int qc_guard_refcount_changed (struct qc_image *img, uint64_t c,
                                      uint64_t old, uint64_t nv);
/* May a cluster whose refcount dropped to 0 be discarded? */
extern bool qc_guard_may_discard (struct qc_image *img, uint64_t c);
/* Bytes [offset, offset + bytes) of the image file are about to be
 * written in place; what says how ("writing guest data to").
 */
extern int qc_guard_inplace_check (struct qc_image *img, uint64_t offset,
                                   uint64_t bytes, const char *what,
                                   bool locked);

/* Apply every pending free (no I/O may be in flight: at close). */
extern int qc_free_all (struct qc_image *img);

/* Write entries [lo, hi) of a host-order table of 8-byte entries (whole
 * sectors around them) to the image at offset.
 */
extern int qc_write_table_range (struct qc_image *img, const uint64_t *table,
                                 uint64_t entries, uint64_t lo, uint64_t hi,
                                 uint64_t offset);

/* Metadata writeback in the safe order (meta_lock held). */
extern int qc_flush_locked (struct qc_image *img);

/* Snapshot table. */
extern int qc_snapshots_read (struct qc_image *img);
extern void qc_snapshots_free (struct qc_image *img);
/* Snapshot i's L1 table, loaded on first use (qcow2-snapshot.c). */
extern uint64_t *qc_snapshot_l1 (struct qc_image *img, uint32_t i);
/* Free what was loaded for a snapshot: its L1 table and its view. */
extern void qc_snapshot_free_loaded (struct qcow2_snapshot *s);
/* Snapshot i's view, made on first use (qcow2-view.c). */
extern struct qc_view *qc_snapshot_view (struct qc_image *img, uint32_t i);

#endif /* QC_QCOW2_INT_H */
