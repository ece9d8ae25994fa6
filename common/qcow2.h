/* SPDX-License-Identifier: BSD-3-Clause */
/* The format core's public interface: open an image (qcow2 or raw),
 * read it through views (the active image and each internal snapshot),
 * describe its extents.  No nbdkit types here.
 */
#ifndef QC_QCOW2_H
#define QC_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkdev.h"

enum qc_snapshot_op { QC_SNAPSHOT_CREATE, QC_SNAPSHOT_APPLY,
                      QC_SNAPSHOT_DELETE };
enum qc_repair { QC_REPAIR_NONE, QC_REPAIR_LEAKS, QC_REPAIR_ALL };

struct qc_maint_op {
  enum qc_snapshot_op op;
  char *name;
};

enum qc_bitmap_op_kind { QC_BITMAP_ADD, QC_BITMAP_REMOVE, QC_BITMAP_CLEAR,
                         QC_BITMAP_ENABLE, QC_BITMAP_DISABLE,
                         QC_BITMAP_MERGE };

struct qc_bitmap_op {
  enum qc_bitmap_op_kind op;
  char *name;                   /* merge: the source */
  const char *target;           /* merge: inside name's allocation */
  uint64_t granularity;         /* add: 0 = qemu's default */
  bool disabled;                /* add */
};

/* Engine options, filled from the option table (qc-options.h). */
struct qc_options {
  char *file;                   /* image path (plugin) */
  char *format;                 /* "qcow2" (default) or "raw" */
  char *backing;                /* NULL: from the image; "none": no
                                 * backing; else a path overriding it */
  char *backing_format;         /* format of an overriding backing file */
  /* Which files named inside images (backing files, external data
   * files) may be opened: any plain path, only those inside the top
   * image's directory (follow_root, found by the core; symlinks
   * resolved), or none.
   */
  enum qc_follow { QC_FOLLOW_ANY, QC_FOLLOW_SAME_DIR, QC_FOLLOW_NONE } follow;
  const char *follow_root;      /* internal (backing files): not owned */
  char *snapshot;               /* serve this snapshot by default */
  struct blkdev *backing_dev;   /* if set: the backing device (raw guest
                                 * bytes), instead of any backing file;
                                 * stays the caller's (overlay filter) */
  uint64_t cache_size;          /* L2 cache bytes, 0 = default */
  uint64_t compressed_cache;    /* bytes of decompressed clusters cached
                                 * per image, 0 = none, UINT64_MAX = the
                                 * default (qc_compressed_cache_bytes) */
  bool locking;                 /* qemu-compatible image locks */
  bool overlap_check;           /* the safety net over bad refcounts */
  bool readonly;
  bool full_description;        /* export descriptions with full paths */
  int compress;                 /* -1 off, else store full-cluster
                                 * writes compressed: 0 zlib, 1 zstd */
  int compress_level;           /* 0 = the codec's default */
  char *passphrase;             /* of an encrypted image (wiped on free) */
  char *backing_passphrase;     /* of an encrypted backing file */
  bool encrypt;                 /* create: LUKS-encrypt the new image */
  unsigned encrypt_iter_time;   /* create: PBKDF2 time in ms, 0 = 2000 */

  /* Maintenance before serving, in this order: check/repair, then the
   * snapshot operations as given.
   */
  bool check;
  enum qc_repair repair;
  struct qc_maint_op *ops;
  size_t nr_ops;
  /* Persistent bitmap operations, as given (qcow2-bitmap-ops.c); they
   * run before the snapshot operations.
   */
  struct qc_bitmap_op *bitmap_ops;
  size_t nr_bitmap_ops;
  const char *bitmap_orphan;     /* a bitmap-granularity= or
                                 * bitmap-disabled= with no bitmap-add=
                                 * just before (refused by
                                 * qc_options_check) */

  /* Creation: create=true makes the image if it does not exist,
   * create=force replaces it.
   */
  enum { QC_CREATE_NO, QC_CREATE_IF_MISSING, QC_CREATE_FORCE } create;
  uint64_t size;                /* virtual size (required to create) */
  uint64_t cluster_size;        /* 0 = 64 KiB */
  int compat;                   /* 2 (0.10) or 3 (1.1, default) */
  uint32_t refcount_bits;       /* 0 = 16 */
  bool lazy_refcounts;
  bool extended_l2;
  int compression_type;         /* 0 zlib, 1 zstd, -1 unset (zlib, or
                                 * zstd if compress=zstd) */
  bool preallocate_metadata;
  char *backing_file;           /* recorded in the new image */
  char *data_file;              /* external data file of the new image */
  bool data_file_raw;

  /* The encoder (nbdkit-qcow2enc-filter) only. */
  bool zero_detect;             /* leave clusters reading as zeros out */
  bool holes_backing;           /* the source's holes read through to
                                 * the backing file */

  /* Which keys the user gave (bit i: qc_option_table[i]), so that an
   * option given is never silently ignored, and how the front-end
   * spells them ("", "qcow2-", "overlay-"; NULL = "") in messages.
   */
  uint64_t given;
  const char *prefix;
};

struct qc_image;

/* Open the image named by opts->file (dev NULL) or the image held in
 * dev (which the image then owns; name is used for relative backing
 * paths and messages).  Returns NULL after qc_error on failure.
 */
extern struct qc_image *qc_image_open (const struct qc_options *opts,
                                       struct blkdev *dev);

/* The block-device seam for the files an image names: opening the
 * image file itself (dev NULL), its backing files and its external data
 * file goes through open, so that tests can put each of them on a
 * memory, fault-injecting or crash-recording device.  Kept apart from
 * the options, which are what the user gives.  path is the name as
 * resolved (referenced-files= rules already applied); role names the
 * file in messages ("backing file", "external data file", NULL for the
 * image).  An upgradable device is opened read-only and must support
 * blkdev_make_writable; a read-only one is never written.  Returns a
 * device the image then owns (closed with it), or NULL after qc_error.
 */
enum qc_open_mode { QC_OPEN_READONLY, QC_OPEN_UPGRADABLE };
struct qc_open_file {
  struct blkdev *(*open) (void *opaque, const char *path,
                          enum qc_open_mode mode, const char *role);
  void *opaque;
};

/* qc_image_open with the files opened through of (NULL: local files,
 * what qc_image_open does).  The hook is used for the whole backing
 * chain.
 */
extern struct qc_image *qc_image_open_with (const struct qc_options *opts,
                                            struct blkdev *dev,
                                            const struct qc_open_file *of);
extern void qc_image_close (struct qc_image *img);

/* referenced-files=same-dir: path (name as the image gives it) resolved
 * with realpath, if it lies inside the directory root (a realpath);
 * else NULL after qc_error (errno EPERM outside, or realpath's).
 */
extern char *qc_follow_check (const char *image_name, const char *root,
                              const char *name, const char *path,
                              const char *what);

/* Create a new qcow2 image as opts say (size, cluster size, ...): in
 * the file opts->file (dev NULL), or over the start of dev (a fixed-size
 * container; dev stays the caller's).  qemu-img's defaults and rules.
 * -1 after qc_error.
 */
extern int qc_image_create (const struct qc_options *opts,
                            struct blkdev *dev);

/* Everything qc_image_create checks before it writes the first byte:
 * the options' rules, the size limits, that the header fits, that the
 * backing file exists and is readable, that a fixed-size dev is large
 * enough.  dev may be NULL (a new file).  -1 after qc_error.
 */
extern int qc_image_create_validate (const struct qc_options *opts,
                                     struct blkdev *dev);

/* An existing image opened where opts ask to create one if missing:
 * refuse (-1 after qc_error, ending with hint) if a creation option
 * the user gave does not describe it (size, cluster size, compat,
 * encryption, ...).
 */
extern int qc_image_check_existing (struct qc_image *img,
                                    const struct qc_options *opts,
                                    const char *hint);

/* Make the image writable (reopening its files read-write and taking
 * qemu's write locks), once; later calls do nothing.  Refused for images
 * marked corrupt or dirty.  -1 after qc_error.
 */
extern int qc_image_make_writable (struct qc_image *img);

/* Whether qc_image_make_writable would get past the files and their
 * locks now, changing nothing: 0, or -1 after qc_error with the
 * reason (for saying once, at startup, that the image will be served
 * read-only).
 */
extern int qc_image_writable_probe (struct qc_image *img);

/* Internal snapshot operations (the image must be writable and not yet
 * serving): -1 after qc_error, without touching the image when refused
 * (unknown name, refcount overflow).
 */
extern int qc_image_snapshot_op (struct qc_image *img,
                                 enum qc_snapshot_op op, const char *name);

/* Check the image as qemu-img check does (references against
 * refcounts, COPIED flags), optionally repairing; each finding (each
 * repair when repairing) is reported through qc_info, in qemu-img
 * check's words.
 */
struct qc_check_result {
  uint64_t leaks, leaks_fixed;
  uint64_t corruptions, corruptions_fixed;
  uint64_t copied_fixed;
};
extern int qc_image_check (struct qc_image *img, enum qc_repair repair,
                           struct qc_check_result *res);

/* A bitmap-* option into opts->bitmap_ops (qc-bitmap-options.c; p is
 * the module's key prefix), its key for messages; the operations
 * validated without writing, and run (qcow2-bitmap-ops.c).
 */
extern int qc_bitmap_option (struct qc_options *opts, const char *key,
                             const char *value, const char *p);
extern const char *qc_bitmap_op_key (enum qc_bitmap_op_kind op);
extern int qc_bitmap_ops_check (struct qc_image *img,
                                const struct qc_options *opts);
extern int qc_bitmap_ops_run (struct qc_image *img,
                              const struct qc_options *opts);

/* Run the maintenance opts asks for (check, repair, snapshot
 * operations), reporting what check and repair found and did through
 * qc_info (one line per finding, at most 100, then a summary) and
 * failures through qc_error.  An image found
 * corrupt and not repaired is kept read-only.  -1 after qc_error.
 */
extern int qc_image_maintain (struct qc_image *img,
                              const struct qc_options *opts);

/* The export served by default: the active image, or the snapshot
 * chosen with opts->snapshot.
 */
extern struct blkdev *qc_image_default_view (struct qc_image *img);

/* Internal snapshots, in table order.  Each is a read-only view. */
extern size_t qc_image_nr_snapshots (struct qc_image *img);
extern const char *qc_image_snapshot_name (struct qc_image *img, size_t i);
/* The name of the snapshot an export name chooses (a name, or an ID),
 * NULL if none.
 */
extern const char *qc_image_snapshot_lookup (struct qc_image *img,
                                             const char *name);

/* A view by export name: "" is the default view, otherwise a snapshot
 * name (or, failing that, a snapshot ID).  NULL with qc_error if there is
 * no such snapshot.  Views live as long as the image.
 */
extern struct blkdev *qc_image_view (struct qc_image *img, const char *name);

/* A one-line description for users: format, version, cluster size,
 * compression, backing.
 */
extern const char *qc_image_description (struct qc_image *img);

/* The request size clients should use, 0 for no preference: with
 * compress=, whole clusters (a smaller write into a cluster costs a
 * decompression and a compression, or is stored uncompressed).
 */
extern uint32_t qc_image_preferred_block (struct qc_image *img);

#endif /* QC_QCOW2_H */
