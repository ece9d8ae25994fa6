/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit-qcow2-filter: the plugin below serves the bytes of a qcow2
 * image (the "container"); this filter serves the guest disk inside it.
 * nbdkit glue only: configuration, one shared image for all
 * connections, callbacks and error reporting.  The format lives in
 * common/.
 *
 * The container is opened once, through a shared context of the plugin
 * below (nbdkit_next_context_open): first in .get_ready, so that a
 * container that cannot be opened stops nbdkit at startup, then again
 * in .after_fork (filters/common/filter-glue.c); closed in .cleanup.
 * Per-connection opens do not open the plugin at all: they only pick a
 * view of the shared image.
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
#include "qcow2-header.h"
#include "qcow2.h"
#include "serve.h"

static struct qc_options opts;
static char *startup_dir;       /* for relative backing file names */

static const struct serve_module module = {
  .prefix = "qcow2-",
  .what = "",
  .snapshot_exports = true,
};

#define PREFIX "qcow2-"

static const struct filter_module filter_module;

/* Engine keys that make no sense in a container, and why: refused when
 * given, and not in --help.
 */
static const char *
refused_reason (const char *key)
{
  if (strcmp (key, "data-file") == 0 || strcmp (key, "data-file-raw") == 0)
    return "an external data file cannot be created inside a container "
      "(an existing image's data file, named with an absolute path, is "
      "used)";
  if (strcmp (key, "zero-detect") == 0 || strcmp (key, "holes") == 0)
    return "it applies only to nbdkit-qcow2enc-filter";
  return NULL;
}

static bool
not_in_help (const char *key)
{
  return refused_reason (key) != NULL;
}

/* config_help: built at .load from the core's option table (shared
 * with the plugin), without the refused keys.
 */
static char help[8192] =
  "qcow2-backing-from=file\n"
  "    Backing files named in the image are local files (relative names\n"
  "    from the directory nbdkit was started in).\n"
  "qcow2-below-connections=N\n"
  "    Contexts opened on the plugin below, for reads in parallel\n"
  "    (default 4; 1: one shared context).";
#define HELP_TEXT(key, type, syntax, def, help) help,
static const char *const qcow2_help[] = {
  QC_OPTIONS (HELP_TEXT, qcow2) QC_ENC_OPTIONS (HELP_TEXT, qcow2)
};

/* -D qcow2.alloc=1, -D qcow2.flush=1 (see glue.h): the plugin has the
 * same names; nbdkit sets the flags of the first module named qcow2,
 * which is the plugin when both are loaded.
 */
GLUE_DEBUG_FLAGS (qcow2);

static void
qcow2_load (void)
{
  glue_debug_flags (qcow2);
  serve_load (&module, &opts);
  filter_glue_init (&filter_module);
  filter_help_append (help, sizeof help, PREFIX, qcow2_help, not_in_help);
}

static void
qcow2_unload (void)
{
  qc_options_free (&opts);
  free (startup_dir);
}

/* A name as qemu would take it for a protocol (json:, http://, nbd:):
 * a ':' before the first '/'.  Left to the core, which refuses it.
 */
static bool
looks_like_protocol (const char *name)
{
  const char *colon = strchr (name, ':');
  const char *slash = strchr (name, '/');

  return colon && (!slash || colon < slash);
}

static int
qcow2_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  if (strncmp (key, PREFIX, strlen (PREFIX)) != 0)
    return next (nxdata, key, value);
  key += strlen (PREFIX);
  if (refused_reason (key)) {
    nbdkit_error (PREFIX "%s=%s: not a qcow2 filter option: %s", key, value,
                  refused_reason (key));
    return -1;
  }
  if (strcmp (key, "below-connections") == 0)
    return filter_set_below_connections (PREFIX, value);
  if (strcmp (key, "backing-from") == 0) {
    if (strcmp (value, "file") == 0)
      return 0;
    if (strcmp (value, "plugin") == 0) {
      /* The container is read through a context shared by all
       * connections, and nbdkit (1.32 and later) gives a plugin no
       * export name there: nbdkit_export_name fails with "no connection
       * in this thread".  A plugin that serves several exports (file
       * dir=, nbd dynamic-export=true, sh, eval) therefore cannot be
       * asked for the backing export by name; one that ignores names
       * would serve the container as its own backing.
       */
      nbdkit_error ("qcow2-backing-from=plugin is not supported: nbdkit "
                    "does not pass export names to a plugin in a context "
                    "shared by all connections, so backing images cannot "
                    "be named exports of the plugin; use local backing "
                    "files (the default, qcow2-backing-from=file), "
                    "qcow2-backing=PATH or qcow2-backing=none");
      return -1;
    }
    nbdkit_error ("qcow2-backing-from=%s: expected file", value);
    return -1;
  }
  /* Messages name the option as typed (qc_prefix), never a secret. */
  return glue_set_option (&opts, key, value);
}

static int
qcow2_config_complete (nbdkit_next_config_complete *next,
                       nbdkit_backend *nxdata)
{
  struct qc_options check = opts;

  /* The core's checks want an image file name: the container is ours. */
  check.file = (char *) "container";
  if (qc_options_check (&check) == -1)
    return -1;
  /* Creation options, now: all but the container's size is known. */
  if (opts.create != QC_CREATE_NO &&
      qc_image_create_validate (&check, NULL) == -1)
    return -1;
  /* nbdkit -r writes nothing, not even to the container: refuse what
   * would, now, with the reason.
   */
  if (serve_readonly (&opts, &check) == -1)
    return -1;
  filter_config_backend (nxdata);
  /* nbdkit changes to / when it forks into the background: relative
   * local names are taken from the directory it was started in.
   */
  startup_dir = getcwd (NULL, 0);
  if (!startup_dir) {
    nbdkit_error ("getcwd: %m");
    return -1;
  }
  if (opts.backing &&
      strcmp (opts.backing, "none") != 0 &&
      !looks_like_protocol (opts.backing)) {
    char *path = nbdkit_realpath (opts.backing);
    if (!path)
      return -1;
    free (opts.backing);
    opts.backing = path;
  }
  return next (nxdata);
}

/* The header of the qcow2 image in dev, for what the filter decides
 * itself: where a relative backing file name points, and refusing a
 * relative external data file name (the core would resolve it against
 * the current directory, / once nbdkit runs in the background).
 */
static int
read_header (struct blkdev *dev, struct qcow2_header *h)
{
  if (qcow2_header_read (dev, h) == -1)
    return -1;
  if (h->data_file && h->data_file[0] != '/') {
    nbdkit_error ("%s: the external data file '%s' has a relative name: "
                  "a container has no directory to resolve it against "
                  "(use an absolute name)", dev->name, h->data_file);
    qcow2_header_free (h);
    return -1;
  }
  return 0;
}

/* Format the container if asked to (1: formatted), check that it is
 * qcow2.  Everything is validated before the first byte is written:
 * the plugin below cannot rename, so a refused creation writes nothing.
 */
static int
create_if_asked (struct blkdev *dev, const struct qc_options *o)
{
  uint8_t magic[4];
  bool is_qcow2;

  if (o->format && strcmp (o->format, "raw") == 0)
    return 0;
  if (blkdev_pread (dev, magic, sizeof magic, 0) == -1)
    return -1;
  is_qcow2 = dev->size >= 4 && qcow2_has_magic (magic);
  if (o->create == QC_CREATE_FORCE ||
      (o->create == QC_CREATE_IF_MISSING && !is_qcow2)) {
    if (dev->readonly) {
      nbdkit_error ("qcow2-create: cannot format the container: the plugin "
                    "below is read-only (or nbdkit -r was used)");
      return -1;
    }
    if (qc_image_create (o, dev) == -1)
      return -1;
    nbdkit_debug ("formatted the container as qcow2 (%" PRIu64 " bytes)",
                  opts.size);
    return 1;
  }
  if (!is_qcow2) {
    nbdkit_error ("%s: not a qcow2 image (no QFI\\xfb magic at offset 0); "
                  "use qcow2-create=true qcow2-size=SIZE to format it as "
                  "a new qcow2 image", dev->name);
    return -1;
  }
  return 0;
}

/* The filter_module's open_image: format the container if asked to
 * (first), resolve the backing file it names, open it.
 */
static struct qc_image *
open_image (struct blkdev *dev, bool readonly, bool first)
{
  struct qc_options o = opts;
  struct qcow2_header h;
  char *backing = NULL;
  bool have_header = false;
  struct qc_image *img = NULL;
  int created;

  /* referenced-files=same-dir and a new image's backing file: the
   * container has no directory, so the one nbdkit was started in is the
   * image's.
   */
  o.follow_root = startup_dir;
  if (!first)
    serve_options_reopen (&o);
  created = create_if_asked (dev, &o);
  if (created == -1)
    goto fail_dev;

  /* The backing file named in the image is a local file.  The
   * container has no directory: a relative name is taken from the
   * directory nbdkit was started in (nbdkit itself changes to / when it
   * forks into the background).  The core checks everything else
   * (protocol names, formats, the rest of the chain).
   */
  if (!(opts.format && strcmp (opts.format, "raw") == 0)) {
    if (read_header (dev, &h) == -1)
      goto fail_dev;
    have_header = true;
  }
  if (have_header && !opts.backing && h.backing_file &&
      h.backing_file[0] != '/' && !looks_like_protocol (h.backing_file) &&
      opts.follow != QC_FOLLOW_NONE) {       /* the core refuses it */
    if (asprintf (&backing, "%s/%s", startup_dir, h.backing_file) == -1) {
      nbdkit_error ("asprintf: %m");
      goto fail_dev;
    }
    if (access (backing, F_OK) == -1) {
      nbdkit_error ("%s: backing file '%s': %s: %m (a relative backing "
                    "name is looked up in the directory nbdkit was started "
                    "in; start it in the image's directory, or use "
                    "qcow2-backing=PATH or qcow2-backing=none)",
                    dev->name, h.backing_file, backing);
      goto fail_dev;
    }
    if (opts.follow == QC_FOLLOW_SAME_DIR) {
      char *real = qc_follow_check (dev->name, startup_dir, h.backing_file,
                                    backing, "backing file");
      if (!real)
        goto fail_dev;
      free (backing);
      backing = real;
    }
    o.backing = backing;
    o.backing_format = h.backing_format;
  }

  /* qcow2-create=true over a qcow2 container: it must hold what was
   * asked for.  The image owns dev, even on failure.
   */
  img = serve_image_open (&o, dev,
                          o.create == QC_CREATE_IF_MISSING && !created,
                          NULL);
  goto out;

 fail_dev:
  blkdev_close (dev);
 out:
  if (have_header)
    qcow2_header_free (&h);
  free (backing);
  return img;
}

/* The plugin below holds the image: if it cannot write, neither can the
 * image.  The image owns the device.
 */
static const struct filter_module filter_module = {
  .name = "qcow2",
  .device_name = "container",
  .image_in_below = true,
  .open_image = open_image, .close_image = qc_image_close,
};

static struct nbdkit_filter filter = {
  .name = "qcow2",
  .longname = "nbdkit qcow2 filter",
  SERVE_CONFIG_CALLBACKS (qcow2),
  .config_help = help,
  FILTER_CALLBACKS,
};

NBDKIT_REGISTER_FILTER (filter)
