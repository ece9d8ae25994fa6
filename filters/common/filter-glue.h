/* SPDX-License-Identifier: BSD-3-Clause */
/* What both filters share: the plugin below opened once, in a context
 * shared by all connections, under the one image the filter serves;
 * and the serving layer's callbacks (glue/serve.h) in nbdkit's filter
 * signatures.  Connections never use the plugin below directly.
 */
#ifndef QC_FILTER_GLUE_H
#define QC_FILTER_GLUE_H

#include <stdbool.h>

#include <nbdkit-filter.h>

#include "blkdev.h"
#include "serve.h"

struct filter_module {
  const char *name;             /* the filter's name, as in --filter= */
  const char *device_name;      /* the plugin below, in messages */
  bool below_readonly;          /* the plugin below is only ever read */
  bool image_in_below;          /* it holds the image: if it cannot be
                                 * written, neither can the image */
  bool size_of_below;           /* serve the plugin's size */
  /* Open the image over dev (the plugin below, which open_image owns
   * from then on); readonly: nbdkit -r.  first: the first open, in
   * .get_ready, which also creates the image and runs the maintenance
   * options; later opens (.after_fork) only open it.  NULL after an
   * error.  close_image closes it (and what it owns).
   */
  struct qc_image *(*open_image) (struct blkdev *dev, bool readonly,
                                  bool first);
  void (*close_image) (struct qc_image *img);
};

extern void filter_glue_init (const struct filter_module *m);

/* From .config_complete: the plugin below, which .get_ready opens. */
extern void filter_config_backend (nbdkit_backend *backend);

/* Append to help (size bytes, NUL-terminated) the option table's
 * entries as "\nPREFIXkey=syntax\n    text", texts[i] being row i's
 * help text as it reads for the module, except the keys skip says the
 * module refuses.  nbdkit keeps the config_help pointer and prints it
 * later: .load fills it in before that.
 */
extern void filter_help_append (char *help, size_t size, const char *prefix,
                                const char *const texts[],
                                bool (*skip) (const char *key));

/* PREFIX-below-connections=N: contexts opened on the plugin below, so
 * that reads run in parallel (next_blkdev_pool).  -1 after
 * nbdkit_error.
 */
#define FILTER_BELOW_CONNECTIONS_DEFAULT 4
#define FILTER_BELOW_CONNECTIONS_MAX 64
extern int filter_set_below_connections (const char *prefix,
                                         const char *value);

/* The image, opened on first use (NULL after nbdkit_error). */
extern struct qc_image *filter_image (nbdkit_backend *backend,
                                      int readonly);

/* At .unload, if .cleanup did not run: close the image without
 * touching the plugin below, which may be gone.
 */
extern void filter_unload_image (void);

/* The callbacks. */
extern int filter_get_ready (int thread_model);
extern int filter_after_fork (nbdkit_backend *backend);
extern void filter_cleanup (nbdkit_backend *backend);
extern int filter_list_exports (nbdkit_next_list_exports *next,
                                nbdkit_backend *nxdata, int readonly,
                                int is_tls, struct nbdkit_exports *exports);
extern const char *filter_default_export (nbdkit_next_default_export *next,
                                          nbdkit_backend *nxdata,
                                          int readonly, int is_tls);
extern void *filter_open (nbdkit_next_open *next, nbdkit_context *context,
                          int readonly, const char *exportname, int is_tls);
extern int filter_finalize (nbdkit_next *next, void *handle);
extern const char *filter_export_description (nbdkit_next *next,
                                              void *handle);
extern int64_t filter_get_size (nbdkit_next *next, void *handle);
extern int filter_block_size (nbdkit_next *next, void *handle,
                              uint32_t *minimum, uint32_t *preferred,
                              uint32_t *maximum);
extern int filter_can_write (nbdkit_next *next, void *handle);
extern int filter_true (nbdkit_next *next, void *handle);
extern int filter_false (nbdkit_next *next, void *handle);
extern int filter_can_zero (nbdkit_next *next, void *handle);
extern int filter_can_fua (nbdkit_next *next, void *handle);
extern int filter_can_cache (nbdkit_next *next, void *handle);
extern int filter_pread (nbdkit_next *next, void *handle, void *buf,
                         uint32_t count, uint64_t offset, uint32_t flags,
                         int *err);
extern int filter_pwrite (nbdkit_next *next, void *handle, const void *buf,
                          uint32_t count, uint64_t offset, uint32_t flags,
                          int *err);
extern int filter_zero (nbdkit_next *next, void *handle, uint32_t count,
                        uint64_t offset, uint32_t flags, int *err);
extern int filter_trim (nbdkit_next *next, void *handle, uint32_t count,
                        uint64_t offset, uint32_t flags, int *err);
extern int filter_flush (nbdkit_next *next, void *handle, uint32_t flags,
                         int *err);
extern int filter_extents (nbdkit_next *next, void *handle, uint32_t count,
                           uint64_t offset, uint32_t flags,
                           struct nbdkit_extents *extents, int *err);

/* The shared part of a struct nbdkit_filter. */
#define FILTER_CALLBACKS                                \
  .get_ready = filter_get_ready,                        \
  .after_fork = filter_after_fork,                      \
  .cleanup = filter_cleanup,                            \
  .list_exports = filter_list_exports,                  \
  .default_export = filter_default_export,              \
  .open = filter_open,                                  \
  .close = serve_close,                                 \
  .finalize = filter_finalize,                          \
  .export_description = filter_export_description,      \
  .get_size = filter_get_size,                          \
  .block_size = filter_block_size,                      \
  .can_write = filter_can_write,                        \
  .can_flush = filter_true,                             \
  .is_rotational = filter_false,                        \
  .can_trim = filter_true,                              \
  .can_zero = filter_can_zero,                          \
  .can_fast_zero = filter_true,                         \
  .can_extents = filter_true,                           \
  .can_fua = filter_can_fua,                            \
  .can_multi_conn = filter_true,                        \
  .can_cache = filter_can_cache,                        \
  .pread = filter_pread,                                \
  .pwrite = filter_pwrite,                              \
  .zero = filter_zero,                                  \
  .trim = filter_trim,                                  \
  .flush = filter_flush,                                \
  .extents = filter_extents

#endif /* QC_FILTER_GLUE_H */
