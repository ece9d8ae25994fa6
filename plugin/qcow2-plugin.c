/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit-qcow2-plugin: serve qcow2 and raw image files.  nbdkit glue
 * only: configuration, callbacks and error reporting.  The format lives
 * in common/.
 */
#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <inttypes.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "glue.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"

static struct qc_options opts;
static struct qc_image *img;    /* shared by all connections */

static void
qcow2_load (void)
{
  qc_set_log_handler (glue_log);
  qc_options_init (&opts);
}

static void
qcow2_unload (void)
{
  qc_image_close (img);
  qc_options_free (&opts);
}

static int
qcow2_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0) {
    /* A file to be created does not exist yet: no realpath for it. */
    char *path = access (value, F_OK) == 0 ? nbdkit_realpath (value)
                                           : nbdkit_absolute_path (value);
    int r;
    if (!path)
      return -1;
    r = qc_options_set (&opts, key, path);
    free (path);
    return r;
  }
  if (strcmp (key, "backing") == 0 && strcmp (value, "none") != 0 &&
      !strchr (value, ':')) {
    char *path = nbdkit_realpath (value);
    int r;
    if (!path)
      return -1;
    r = qc_options_set (&opts, key, path);
    free (path);
    return r;
  }
  return glue_set_option (&opts, key, value);
}

static int
qcow2_config_complete (void)
{
  if (qc_options_check (&opts) == -1)
    return -1;
  /* nbdkit -r writes nothing: refuse what would, now, with the reason. */
  if (glue_nbdkit_readonly () == 1) {
    opts.readonly = true;
    if (qc_options_check_readonly (&opts) == -1)
      return -1;
  }
  return 0;
}

static int
qcow2_get_ready (void)
{
  bool created = false, missing, empty;
  struct stat st;

  /* Opened once, before serving: all connections share the image, its
   * metadata cache and its locks.  A new image is complete before it
   * appears under its name (qc_image_create).  An empty file (older
   * versions left one after a failed create=true) holds no image:
   * create=true replaces it.
   */
  missing = stat (opts.file, &st) != 0;
  empty = !missing && S_ISREG (st.st_mode) && st.st_size == 0;
  if (opts.create == QC_CREATE_FORCE ||
      (opts.create == QC_CREATE_IF_MISSING && (missing || empty))) {
    if (qc_image_create (&opts, NULL) == -1)
      return -1;
    created = opts.create == QC_CREATE_IF_MISSING && missing;
    nbdkit_debug ("created %s", opts.file);
  }
  img = qc_image_open (&opts, NULL);
  if (!img)
    goto err;
  /* create=true over an existing image: it must be what was asked for,
   * before maintenance touches it.
   */
  if (opts.create == QC_CREATE_IF_MISSING && !created &&
      qc_image_check_existing (img, &opts, NULL) == -1)
    goto err;
  if (qc_image_maintain (img, &opts) == -1)
    goto err;
  nbdkit_debug ("%s", qc_image_description (img));
  return 0;

 err:
  /* Maintenance is validated before it writes: what fails here is I/O.
   * An image made by this run goes with it.
   */
  qc_image_close (img);
  img = NULL;
  if (created)
    unlink (opts.file);
  return -1;
}

static int
qcow2_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  size_t i, n = qc_image_nr_snapshots (img);

  if (nbdkit_use_default_export (exports) == -1)
    return -1;
  for (i = 0; i < n; i++) {
    const char *name = qc_image_snapshot_name (img, i);
    char desc[256];
    snprintf (desc, sizeof desc, "internal snapshot '%s' (read-only)", name);
    if (*name && nbdkit_add_export (exports, name, desc) == -1)
      return -1;
  }
  return 0;
}

static const char *
qcow2_default_export (int readonly, int is_tls)
{
  return "";
}

struct handle {
  struct blkdev *view;
  const char *export;
};

static void *
qcow2_open (int readonly)
{
  struct handle *h;
  const char *name = nbdkit_export_name ();
  struct blkdev *view;

  if (!name)
    name = "";
  /* The first writable connection to the default export makes the image
   * writable: until then (and always with nbdkit -r) it is open
   * read-only, with read locks only.  Like nbdkit-file-plugin, an image
   * that cannot be written (a read-only file, a corrupt image, qemu
   * holding it) is then served read-only, with the reason in the log.
   */
  if (!readonly && !opts.snapshot && *name == '\0' &&
      qc_image_make_writable (img) == -1)
    nbdkit_debug ("serving %s read-only", qc_image_description (img));
  view = qc_image_view (img, name);
  if (!view)
    return NULL;
  h = malloc (sizeof *h);
  if (!h) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  h->view = view;
  h->export = *name ? nbdkit_strdup_intern (name) : NULL;
  return h;
}

static void
qcow2_close (void *handle)
{
  free (handle);
}

static const char *
qcow2_export_description (void *handle)
{
  struct handle *h = handle;

  if (h->export)
    return nbdkit_printf_intern ("internal snapshot '%s' of %s",
                                 h->export, qc_image_description (img));
  return qc_image_description (img);
}

static int64_t
qcow2_get_size (void *handle)
{
  struct handle *h = handle;

  return h->view->size;
}

static int
qcow2_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                  uint32_t *maximum)
{
  glue_block_size (img, minimum, preferred, maximum);
  return 0;
}

static int
qcow2_can_write (void *handle)
{
  struct handle *h = handle;

  return !h->view->readonly;
}

static int
qcow2_can_multi_conn (void *handle)
{
  /* All connections share one image and its metadata cache, and a flush
   * writes back everything: a flush on one connection makes every
   * connection's writes durable.
   */
  return 1;
}

static int
qcow2_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
qcow2_can_zero (void *handle)
{
  return 1;
}

static int
qcow2_can_fast_zero (void *handle)
{
  return 1;
}

static int
qcow2_can_trim (void *handle)
{
  return 1;
}

static int
qcow2_can_flush (void *handle)
{
  return 1;
}

static int
qcow2_pwrite (void *handle, const void *buf, uint32_t count,
              uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;

  return blkdev_pwrite (h->view, buf, count, offset, glue_blkdev_flags (flags));
}

static int
qcow2_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;

  return blkdev_zero (h->view, count, offset, glue_blkdev_flags (flags));
}

static int
qcow2_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;

  return blkdev_trim (h->view, count, offset, glue_blkdev_flags (flags));
}

static int
qcow2_flush (void *handle, uint32_t flags)
{
  struct handle *h = handle;

  return blkdev_flush (h->view);
}

static int
qcow2_can_extents (void *handle)
{
  return 1;
}

static int
qcow2_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  struct handle *h = handle;

  return blkdev_pread (h->view, buf, count, offset);
}

static int
qcow2_extents (void *handle, uint32_t count, uint64_t offset,
               uint32_t flags, struct nbdkit_extents *extents)
{
  struct handle *h = handle;

  return glue_extents (h->view, count, offset, flags, extents);
}

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static struct nbdkit_plugin plugin = {
  .name = "qcow2",
  .longname = "nbdkit qcow2 plugin",
  .version = PACKAGE_VERSION,
  .load = qcow2_load,
  .unload = qcow2_unload,
  .config = qcow2_config,
  .config_complete = qcow2_config_complete,
  /* From the core's option table, shared with the filters. */
  .config_help =
    "[file=]FILE\n    The image (qcow2 or raw)."
    QC_OPTIONS_HELP (),
  .magic_config_key = "file",
  .get_ready = qcow2_get_ready,
  .list_exports = qcow2_list_exports,
  .default_export = qcow2_default_export,
  .open = qcow2_open,
  .close = qcow2_close,
  .export_description = qcow2_export_description,
  .get_size = qcow2_get_size,
  .can_write = qcow2_can_write,
  .can_multi_conn = qcow2_can_multi_conn,
  .block_size = qcow2_block_size,
  .can_extents = qcow2_can_extents,
  .can_fua = qcow2_can_fua,
  .can_zero = qcow2_can_zero,
  .can_fast_zero = qcow2_can_fast_zero,
  .can_trim = qcow2_can_trim,
  .can_flush = qcow2_can_flush,
  .pread = qcow2_pread,
  .pwrite = qcow2_pwrite,
  .zero = qcow2_zero,
  .trim = qcow2_trim,
  .flush = qcow2_flush,
  .extents = qcow2_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
