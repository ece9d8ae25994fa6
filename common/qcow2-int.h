/* Internal structures of an open image, shared by the core's files. */
#ifndef QC_QCOW2_INT_H
#define QC_QCOW2_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "blkdev.h"
#include "l2cache.h"
#include "qcow2.h"
#include "qcow2-header.h"

/* L1 and L2 entry bits. */
#define QCOW2_OFLAG_COPIED     (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW2_OFLAG_ZERO       1ULL
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ULL

struct qc_image;

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
  struct qc_view *view;         /* loaded on first use */
};

struct qc_image {
  char *name;
  bool is_raw;
  struct blkdev *file;          /* the image (owned) */
  struct blkdev *data;          /* external data file (owned), or file */
  struct blkdev *backing;       /* backing device, or NULL */
  struct qc_image *backing_img; /* owner of backing */
  struct qcow2_header h;
  struct l2cache *cache;
  struct qc_view active;
  struct qcow2_snapshot *snapshots;
  uint32_t nr_snapshots;
  bool metadata_prealloc;       /* see qc_detect_metadata_prealloc */
  pthread_mutex_t lock;         /* guards loading snapshot views */
  struct blkdev *default_view;
  char *description;
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

/* Read a compressed cluster (descriptor desc) into out (cluster size). */
extern int qc_read_compressed (struct qc_image *img, uint64_t desc,
                               uint8_t *out);

/* Initialise a view's device over the given L1 table. */
extern void qc_view_init (struct qc_view *v, struct qc_image *img,
                          uint64_t *l1, uint32_t l1_size, uint64_t size,
                          const char *name);

/* Load an L1 table (l1_size entries at offset) into host byte order. */
extern uint64_t *qc_load_l1 (struct qc_image *img, uint64_t offset,
                             uint32_t l1_size, const char *what);

/* Refcounts. */
extern uint64_t qc_refcount_entry_get (const uint8_t *block, uint64_t index,
                                       uint32_t order);
extern int qc_detect_metadata_prealloc (struct qc_image *img, bool *ret);

/* Snapshot table. */
extern int qc_snapshots_read (struct qc_image *img);
extern void qc_snapshots_free (struct qc_image *img);
extern struct qc_view *qc_snapshot_view (struct qc_image *img, uint32_t i);

#endif /* QC_QCOW2_INT_H */
