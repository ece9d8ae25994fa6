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
#include "serve.h"

static struct qc_options opts;
static struct qc_image *img;    /* shared by all connections */

static const struct serve_module module = {
  .prefix = "",
  .what = "",
  .snapshot_exports = true,
};

/* -D qcow2.alloc=1, -D qcow2.flush=1, -D qcow2.progress=MS (glue.h). */
GLUE_DEBUG_FLAGS (qcow2);

static void
qcow2_load (void)
{
  glue_debug_flags (qcow2);
  serve_load (&module, &opts);
}

static void
qcow2_unload (void)
{
  qc_image_close (img);
  qc_options_free (&opts);
}

/* --dump-plugin: what this build can do, as nbdkit's file and curl
 * plugins print theirs (KEY=VALUE, prefixed by the plugin's name).
 * zlib, zstd and GnuTLS (LUKS) are required at build time; ISA-L
 * (fast zlib writes) and libdeflate (fast zlib reads) are optional.
 */
static void
qcow2_dump_plugin (void)
{
  printf ("qcow2_core_version=%s\n", PACKAGE_VERSION);
  printf ("qcow2_formats=qcow2,raw\n");
  printf ("qcow2_zlib=yes\n");
  printf ("qcow2_zstd=yes\n");
#ifdef HAVE_ISAL
  printf ("qcow2_isal=yes\n");
#else
  printf ("qcow2_isal=no\n");
#endif
#ifdef HAVE_LIBDEFLATE
  printf ("qcow2_libdeflate=yes\n");
#else
  printf ("qcow2_libdeflate=no\n");
#endif
  printf ("qcow2_luks=yes\n");
  printf ("qcow2_legacy_aes=yes\n");
  printf ("qcow2_debug_flags=alloc,flush,progress\n");
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
  return serve_readonly (&opts, &opts) == -1 ? -1 : 0;
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
  /* create=true over an existing image: it must be what was asked for. */
  img = serve_image_open (&opts, NULL,
                          opts.create == QC_CREATE_IF_MISSING && !created,
                          NULL);
  if (img) {
    serve_writable_notice (img, true);
    return 0;
  }
  /* Maintenance is validated before it writes: what fails here is I/O.
   * An image made by this run goes with it.
   */
  if (created)
    unlink (opts.file);
  return -1;
}

static int
qcow2_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  return serve_list_exports (img, exports);
}

static const char *
qcow2_default_export (int readonly, int is_tls)
{
  return "";
}

/* Whether this thread serves a client: nbdkit calls .preconnect in a
 * connection's thread before .open.  A filter above (the overlay) opens
 * a context of its own outside any connection, where
 * nbdkit_export_name fails with "no connection in this thread": that
 * context gets the default export.
 */
static __thread bool in_connection;

static int
qcow2_preconnect (int readonly)
{
  in_connection = true;
  return 0;
}

static void *
qcow2_open (int readonly)
{
  const char *name = in_connection ? nbdkit_export_name () : "";

  if (!name)
    return NULL;
  return serve_handle_new (img, readonly, name, true);
}

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static struct nbdkit_plugin plugin = {
  .name = "qcow2",
  .longname = "nbdkit qcow2 plugin",
  .version = PACKAGE_VERSION,
  SERVE_CONFIG_CALLBACKS (qcow2),
  /* From the core's option table, shared with the filters. */
  .config_help =
    "[file=]FILE\n    The image (qcow2 or raw)."
    QC_OPTIONS_HELP (plugin),
  .magic_config_key = "file",
  .dump_plugin = qcow2_dump_plugin,
  .get_ready = qcow2_get_ready,
  .preconnect = qcow2_preconnect,
  .list_exports = qcow2_list_exports,
  .default_export = qcow2_default_export,
  .open = qcow2_open,
  .close = serve_close,
  .export_description = serve_export_description,
  .get_size = serve_get_size,
  .can_write = serve_can_write,
  .can_multi_conn = serve_true,
  .block_size = serve_block_size,
  .can_extents = serve_true,
  .can_fua = serve_can_fua,
  .can_zero = serve_true,
  .can_fast_zero = serve_true,
  .can_trim = serve_true,
  .can_flush = serve_true,
  .pread = serve_pread,
  .pwrite = serve_pwrite,
  .zero = serve_zero,
  .trim = serve_trim,
  .flush = serve_flush,
  .extents = serve_extents,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
