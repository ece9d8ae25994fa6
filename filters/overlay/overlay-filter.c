/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit-overlay-filter: a persistent qcow2 copy-on-write overlay over
 * whatever the plugin below serves.  The plugin is only ever read: its
 * guest bytes are the backing of a local qcow2 file (overlay=FILE), which
 * receives every write and which qemu can open afterwards.  nbdkit glue
 * only: the format lives in common/.
 *
 * Shape:
 *   - One shared, read-only context on the plugin's default export
 *     (nbdkit_next_context_open), wrapped as a block device, is the
 *     backing of the overlay, which is opened (created if missing) once
 *     and shared by all connections.  It is opened (created, checked)
 *     in .get_ready, so that a bad overlay (wrong size, locked by qemu,
 *     not qcow2, bad passphrase) stops nbdkit at startup, then closed
 *     and opened again in .after_fork (filters/common/filter-glue.c).
 *   - Connections do not open a context of their own on the plugin
 *     (nbdkit-filter(3) allows not calling next in .open when no
 *     callback of the connection uses it): every callback is
 *     implemented here and none touches the per-connection next.
 *   - .cleanup closes the image (writing its metadata back), then
 *     finalizes and closes the shared context.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-filter.h>

#include "filter-glue.h"
#include "glue.h"
#include "next-blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"
#include "serve.h"

#define PREFIX "overlay-"
#define PREFIX_LEN (sizeof PREFIX - 1)

static struct qc_options opts;
static bool extended_l2_set;    /* overlay-extended-l2= given */
static struct blkdev *backing;  /* the plugin below, while open */

static const struct serve_module module = {
  .prefix = PREFIX,
  .what = "copy-on-write overlay over the plugin below: ",
  .snapshot_exports = false,
};

/* Engine keys that make no sense for an overlay, and why. */
static const struct {
  const char *key;
  const char *why;
} refused[] = {
  { "file", "the overlay file is overlay=FILE" },
  { "create", "the overlay is created when it does not exist, "
    "and reused when it does" },
  { "size", "the overlay always has the size of the plugin below" },
  { "format", "the overlay is always qcow2" },
  { "backing", "the backing of the overlay is always the plugin below" },
  { "backing-file", "use overlay-backing-name= to record a backing file "
    "name for qemu" },
  { "snapshot", "the overlay serves its active layer; open it with "
    "nbdkit-qcow2-plugin to read its snapshots" },
  { "data-file-raw", "a raw external data file cannot have a backing, "
    "and an overlay always has one" },
  { "zero-detect", "it applies only to nbdkit-qcow2enc-filter" },
  { "holes", "it applies only to nbdkit-qcow2enc-filter" },
  { "backing-passphrase", "the backing of the overlay is the plugin "
    "below, which qcow2 does not encrypt" },
};

static const char *
refused_reason (const char *key)
{
  size_t i;

  for (i = 0; i < sizeof refused / sizeof refused[0]; i++)
    if (strcmp (refused[i].key, key) == 0)
      return refused[i].why;
  return NULL;
}

static bool
is_engine_key (const char *key)
{
  size_t i;

  for (i = 0; i < qc_option_table_len; i++)
    if (strcmp (qc_option_table[i].key, key) == 0)
      return true;
  return false;
}

/* config_help, built from the core's option table without the refused
 * keys (so --help lists only what works).  nbdkit keeps the pointer and
 * prints the text later; .load fills it in before that.
 */
static char help[8192] =
  "overlay=FILE\n    (required) The qcow2 overlay file (created if missing).";

/* The table's help texts as they read for the overlay. */
#define HELP_TEXT(key, type, syntax, def, help) help,
static const char *const overlay_help[] = {
  QC_OPTIONS (HELP_TEXT, overlay) QC_ENC_OPTIONS (HELP_TEXT, overlay)
};

/* Not in --help: the refused keys, and backing-format=, which reads
 * differently here (listed with overlay-backing-name= above).
 */
static bool
not_in_help (const char *key)
{
  return refused_reason (key) || strcmp (key, "backing-format") == 0;
}

static void
build_help (void)
{
  size_t len = strlen (help);

  snprintf (help + len, sizeof help - len,
            "\n" PREFIX "backing-name=NAME\n"
            "    Backing file name recorded in a new overlay, for qemu."
            "\n" PREFIX "backing-format=raw|qcow2\n"
            "    Format recorded with overlay-backing-name (default raw)."
            "\n" PREFIX "below-connections=N\n"
            "    Contexts opened on the plugin below, for reads in "
            "parallel (default 4).");
  filter_help_append (help, sizeof help, PREFIX, overlay_help, not_in_help);
}

static const struct filter_module filter_module;

/* -D overlay.alloc=1, -D overlay.flush=1 (see glue.h). */
GLUE_DEBUG_FLAGS (overlay);

static void
overlay_load (void)
{
  glue_debug_flags (overlay);
  serve_load (&module, &opts);
  filter_glue_init (&filter_module);
  /* Overlay defaults: small copy-on-write writes copy a 2K subcluster,
   * not a 64K cluster.
   */
  opts.extended_l2 = true;
  build_help ();
}

static void
overlay_unload (void)
{
  /* Normally .cleanup has run.  If not, still write the overlay's
   * metadata back (to the overlay file only).
   */
  filter_unload_image ();
  qc_options_free (&opts);
}

static int
overlay_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                const char *key, const char *value)
{
  const char *k;
  const char *why;

  if (strcmp (key, "overlay") == 0) {
    /* nbdkit changes to / when it forks into the background. */
    char *path = nbdkit_absolute_path (value);
    int r;

    if (!path)
      return -1;
    if (opts.file) {
      nbdkit_error ("overlay=%s: overlay= given twice", value);
      free (path);
      return -1;
    }
    r = qc_options_set (&opts, "file", path);
    free (path);
    return r;
  }
  if (strncmp (key, PREFIX, PREFIX_LEN) != 0)
    return next (nxdata, key, value);

  k = key + PREFIX_LEN;
  if (strcmp (k, "below-connections") == 0)
    return filter_set_below_connections (PREFIX, value);
  if (strcmp (k, "backing-name") == 0) {
    if (*value == '\0') {
      nbdkit_error ("%s=: empty backing file name", key);
      return -1;
    }
    return qc_options_set (&opts, "backing-file", value);
  }
  if ((why = refused_reason (k)) != NULL) {
    nbdkit_error ("%s=%s: not an overlay option: %s", key, value, why);
    return -1;
  }
  if (!is_engine_key (k)) {
    nbdkit_error ("%s=%s: unknown overlay option (see nbdkit "
                  "--filter=overlay null --help)", key, value);
    return -1;
  }
  if (strcmp (k, "extended-l2") == 0)
    extended_l2_set = true;
  return glue_set_option (&opts, k, value);
}

static int
overlay_config_complete (nbdkit_next_config_complete *next,
                         nbdkit_backend *nxdata)
{
  uint64_t cs = opts.cluster_size ? opts.cluster_size : 65536;
  int r;

  if (!opts.file) {
    nbdkit_error ("the overlay file is missing: add overlay=FILE");
    return -1;
  }
  if (opts.backing_format && !opts.backing_file) {
    nbdkit_error (PREFIX "backing-format=%s needs " PREFIX "backing-name=",
                  opts.backing_format);
    return -1;
  }
  if (opts.backing_file && !opts.backing_format &&
      qc_options_set (&opts, "backing-format", "raw") == -1)
    return -1;
  /* Extended L2 is our default, not the user's choice: drop it quietly
   * where the other creation options rule it out.
   */
  if (!extended_l2_set && (opts.compat == 2 || cs < 16384))
    opts.extended_l2 = false;
  /* Preallocated clusters without subclusters would hide the plugin's
   * data behind zeros: only with extended L2 do they stay transparent.
   */
  if (opts.preallocate_metadata && !opts.extended_l2) {
    nbdkit_error (PREFIX "preallocation=metadata needs extended L2 "
                  "entries (" PREFIX "extended-l2=on): without them the "
                  "preallocated clusters would hide the plugin's data");
    return -1;
  }
  if (opts.bitmap_orphan) {
    nbdkit_error (PREFIX "%s= applies to the " PREFIX "bitmap-add= just "
                  "before it, and there is none", opts.bitmap_orphan);
    return -1;
  }
  /* Check the creation options now, not when the overlay is created. */
  if (qc_create_check (&opts) == -1)
    return -1;
  if (opts.compress_level != 0 && opts.compress < 0) {
    nbdkit_error (PREFIX "compress-level= does nothing without "
                  "compression: it needs " PREFIX "compress=zlib or "
                  PREFIX "compress=zstd");
    return -1;
  }
  if (opts.passphrase && !opts.encrypt && access (opts.file, F_OK) != 0) {
    nbdkit_error (PREFIX "passphrase= given, but the new overlay %s would "
                  "not be encrypted: add " PREFIX "encrypt=luks",
                  opts.file);
    return -1;
  }
  /* nbdkit -r writes nothing: no maintenance, no compression, and no
   * new overlay file.
   */
  filter_config_backend (nxdata);
  r = serve_readonly (&opts, &opts);
  if (r == -1)
    return -1;
  if (r == 1 && access (opts.file, F_OK) != 0) {
    nbdkit_error ("overlay=%s: %m: with nbdkit -r (read-only) the overlay "
                  "is not created (start once without -r to create it)",
                  opts.file);
    return -1;
  }
  return next (nxdata);
}


static void
close_image (struct qc_image *img)
{
  /* The image first: closing writes its metadata back (to the overlay
   * file only; the plugin below is never written).
   */
  qc_image_close (img);
  blkdev_close (backing);
  backing = NULL;
  opts.backing_dev = NULL;
}

/* The filter_module's open_image: the overlay over dev (the plugin's
 * default export, read-only), created if missing (first).  Called
 * from .get_ready (so that a bad overlay stops nbdkit at startup), then
 * again from .after_fork and, if that failed, from each .open.
 */
static struct qc_image *
open_image (struct blkdev *dev, bool readonly, bool first)
{
  struct qc_image *img = NULL;
  struct blkdev *view;
  bool created = false;
  struct qc_options o;

  backing = opts.backing_dev = dev;
  if (access (opts.file, F_OK) != 0) {
    if (errno != ENOENT) {
      nbdkit_error ("overlay=%s: %m", opts.file);
      goto err;
    }
    if (readonly) {
      nbdkit_error ("overlay=%s does not exist, and a read-only connection "
                    "(nbdkit -r) does not create it", opts.file);
      goto err;
    }
    /* A 0-byte plugin too: nbdkit-cow-filter serves it as well. */
    qc_options_set_size (&opts, dev->size);
    created = true;
    if (qc_image_create (&opts, NULL) == -1)
      goto err;
    nbdkit_debug ("overlay: created %s, %" PRIu64 " bytes%s%s",
                  opts.file, opts.size,
                  opts.backing_file ? ", backing file name " : "",
                  opts.backing_file ? opts.backing_file : "");
  }
  o = opts;
  if (!first)
    serve_options_reopen (&o);
  img = qc_image_open (&o, NULL);
  if (!img)
    goto err;
  view = qc_image_default_view (img);
  /* qcow2 sizes are whole sectors (qemu-img rounds a backing file's
   * size up the same way): over a plugin whose size is not, the overlay
   * is up to 511 bytes longer, and the plugin's size is served.
   */
  if (view->size != dev->size &&
      !(dev->size % 512 != 0 &&
        view->size == (dev->size + 511) / 512 * 512)) {
    nbdkit_error ("overlay=%s has a virtual size of %" PRIu64 " bytes, but "
                  "the plugin below serves %" PRIu64 " bytes: the overlay "
                  "belongs to another disk (use a new overlay file, or "
                  "resize it with qemu-img resize)", opts.file, view->size,
                  dev->size);
    goto err;
  }
  /* An existing overlay: the creation options given must describe it.
   * overlay-check, overlay-repair and overlay-snapshot-* run once.
   */
  img = serve_image_ready (img, &o, !created, "remove it (or use "
                           "another overlay= file) to create a new overlay");
  if (img)
    return img;

 err:
  close_image (img);
  /* Do not leave a half-made or unusable new overlay behind. */
  if (created)
    unlink (opts.file);
  return NULL;
}

/* The plugin below is only read, and the overlay serves its size. */
static const struct filter_module filter_module = {
  .name = "overlay",
  .device_name = "the plugin below the overlay",
  .below_readonly = true,
  .size_of_below = true,
  .open_image = open_image, .close_image = close_image,
};

static struct nbdkit_filter filter = {
  .name = "overlay",
  .longname = "nbdkit qcow2 overlay filter",
  .description = "A persistent qcow2 copy-on-write overlay over the plugin",
  SERVE_CONFIG_CALLBACKS (overlay),
  .config_help = help,
  FILTER_CALLBACKS,
};

NBDKIT_REGISTER_FILTER (filter)
