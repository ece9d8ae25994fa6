/* SPDX-License-Identifier: BSD-3-Clause */
/* The serving layer shared by the plugin and both filters: the module's
 * options, opening its one image, connections (handles), exports and
 * their descriptions, and the one errno rule for requests.  The
 * callbacks here have the plugin's signatures; the filters wrap them in
 * filters/common/filter-glue.c.
 */
#ifndef QC_SERVE_H
#define QC_SERVE_H

#include <stdbool.h>
#include <stdint.h>

#include "blkdev.h"
#include "qcow2.h"

struct nbdkit_exports;
struct nbdkit_extents;

/* What differs between the modules, given once at load. */
struct serve_module {
  const char *prefix;           /* "", "qcow2-", "overlay-" */
  const char *what;             /* starts the export description */
  bool snapshot_exports;        /* export names choose snapshots */
};

/* One connection. */
struct serve_handle {
  struct qc_image *img;
  struct blkdev *view;
  const char *export;           /* the snapshot served, or NULL */
  uint64_t size;                /* served size */
  bool readonly;                /* the connection is read-only */
  bool written;                 /* flushed when the client goes away */
};

/* .load: the log handler, opts initialised with the module's prefix
 * (which every message naming an option then carries).
 */
extern void serve_load (const struct serve_module *m,
                        struct qc_options *opts);

/* nbdkit -r (1, after refusing the options that would write: -1), or
 * not (0).  Sets opts->readonly; check (opts, or a copy of it for the
 * core's checks) is what is checked.
 */
extern int serve_readonly (struct qc_options *opts,
                           const struct qc_options *check);

/* Open the module's image (over dev, which it then owns, or opts->file
 * for NULL).  check_existing: an image that was not created now must
 * be what the creation options describe (hint ends the message).  Then
 * the maintenance options run.  NULL after an error.
 */
extern struct qc_image *serve_image_open (const struct qc_options *opts,
                                          struct blkdev *dev,
                                          bool check_existing,
                                          const char *hint);
/* The same for an image opened already (qc_image_open), for a
 * front-end that checks more first: closes it on failure.
 */
extern struct qc_image *serve_image_ready (struct qc_image *img,
                                           const struct qc_options *opts,
                                           bool check_existing,
                                           const char *hint);

/* Options for opening again an image that was opened once already
 * (by a filter, before nbdkit forked): without creation and
 * maintenance, which ran then.  o is a copy; nothing is freed.
 */
extern void serve_options_reopen (struct qc_options *o);

/* At startup (not nbdkit -r): if the image cannot be made writable
 * (writable false: the plugin below cannot write; or a read-only file,
 * a lock held by qemu or another nbdkit, a corrupt image), say once,
 * as a notice, that it is served read-only, and why.
 */
extern void serve_writable_notice (struct qc_image *img, bool writable);

/* A connection to export name (NULL or "" the default): the first
 * writable connection to the default export makes the image writable,
 * unless writable is false (the image cannot be written at all).
 */
extern struct serve_handle *serve_handle_new (struct qc_image *img,
                                              int readonly, const char *name,
                                              bool writable);

/* The errno of a failed request with these nbdkit flags, the same
 * rule for every request type: the core's errno (EIO if none), and
 * ENOTSUP only for a fast zero.  Sets errno too.
 */
extern int serve_errno (uint32_t flags);

/* Whether export names choose internal snapshots; if not, refuse
 * any name but the default's (-1 after nbdkit_error).
 */
extern bool serve_snapshot_exports (void);
extern int serve_check_export (const char *name);

/* Callbacks, the plugin's signatures. */
extern int serve_list_exports (struct qc_image *img,
                               struct nbdkit_exports *exports);
extern void serve_close (void *handle);
extern const char *serve_export_description (void *handle);
extern int64_t serve_get_size (void *handle);
extern int serve_block_size (void *handle, uint32_t *minimum,
                             uint32_t *preferred, uint32_t *maximum);
extern int serve_can_write (void *handle);
extern int serve_true (void *handle);
extern int serve_can_fua (void *handle);
extern int serve_pread (void *handle, void *buf, uint32_t count,
                        uint64_t offset, uint32_t flags);
extern int serve_pwrite (void *handle, const void *buf, uint32_t count,
                         uint64_t offset, uint32_t flags);
extern int serve_zero (void *handle, uint32_t count, uint64_t offset,
                       uint32_t flags);
extern int serve_trim (void *handle, uint32_t count, uint64_t offset,
                       uint32_t flags);
extern int serve_flush (void *handle, uint32_t flags);
extern int serve_extents (void *handle, uint32_t count, uint64_t offset,
                          uint32_t flags, struct nbdkit_extents *extents);

/* The configuration callbacks of a front-end, named PREFIX_load,
 * PREFIX_unload, PREFIX_config and PREFIX_config_complete, for its
 * struct nbdkit_plugin or nbdkit_filter.
 */
#define SERVE_CONFIG_CALLBACKS(p)                                       \
  .load = p##_load, .unload = p##_unload,                               \
  .config = p##_config, .config_complete = p##_config_complete

#endif /* QC_SERVE_H */
