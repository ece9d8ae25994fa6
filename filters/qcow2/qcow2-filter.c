/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit-qcow2-filter: the plugin below serves the bytes of a qcow2
 * image (the "container"); this filter serves the guest disk inside it.
 * nbdkit glue only: configuration, one shared image for all
 * connections, callbacks and error reporting.  The format lives in
 * common/.
 *
 * The container is opened once, through a shared context of the plugin
 * below (nbdkit_next_context_open), on the first connection (or export
 * listing), and closed in .cleanup.  Per-connection opens do not open
 * the plugin at all: they only pick a view of the shared image.
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

#include "glue.h"
#include "next-blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-header.h"
#include "qcow2.h"

static struct qc_options opts;
static char *startup_dir;       /* for relative backing file names */
static int thread_model;        /* final thread model, from .get_ready */

/* The shared image and the plugin context holding its container. */
static pthread_mutex_t image_lock = PTHREAD_MUTEX_INITIALIZER;
static nbdkit_next *container_next;
static bool container_readonly; /* opened read-only, or cannot write */
static struct qc_image *img;

static void
qcow2_load (void)
{
  qc_set_log_handler (glue_log);
  qc_options_init (&opts);
  opts.prefix = "qcow2-";
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

#define PREFIX "qcow2-"

static int
qcow2_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
              const char *key, const char *value)
{
  if (strncmp (key, PREFIX, strlen (PREFIX)) != 0)
    return next (nxdata, key, value);
  key += strlen (PREFIX);
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
  if (glue_set_option (&opts, key, value) == -1) {
    /* Never echo a secret. */
    nbdkit_error ("the option was qcow2-%s=%s", key,
                  strstr (key, "passphrase") ? "..." : value);
    return -1;
  }
  return 0;
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
  if (glue_nbdkit_readonly () == 1) {
    opts.readonly = true;
    if (qc_options_check_readonly (&check) == -1)
      return -1;
  }
  if (opts.data_file) {
    nbdkit_error ("qcow2-data-file: an external data file cannot be "
                  "created inside a container");
    return -1;
  }
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

static int
qcow2_get_ready (int model)
{
  thread_model = model;
  return 0;
}

/* A plugin (or filter below) that is not fully parallel (the curl
 * plugin and the xz filter serialize requests per connection) must not
 * see two connections' calls at once in the one context they share:
 * such devices are wrapped in a lock.  (nbdkit's own serialization does
 * not cover everything: .finalize flushes, for example.)
 */
struct locked_dev {
  struct blkdev dev;
  struct blkdev *inner;
  pthread_mutex_t lock;
};

#define LOCKED(d, call)                                 \
  ({                                                    \
    struct locked_dev *l_ = (struct locked_dev *) (d);  \
    int r_;                                             \
    pthread_mutex_lock (&l_->lock);                     \
    r_ = (call);                                        \
    pthread_mutex_unlock (&l_->lock);                   \
    r_;                                                 \
  })
#define INNER(d) (((struct locked_dev *) (d))->inner)

static int
locked_pread (struct blkdev *d, void *buf, size_t count, uint64_t offset)
{
  return LOCKED (d, blkdev_pread (INNER (d), buf, count, offset));
}

static int
locked_pwrite (struct blkdev *d, const void *buf, size_t count,
               uint64_t offset, unsigned flags)
{
  return LOCKED (d, blkdev_pwrite (INNER (d), buf, count, offset, flags));
}

static int
locked_zero (struct blkdev *d, uint64_t count, uint64_t offset,
             unsigned flags)
{
  return LOCKED (d, blkdev_zero (INNER (d), count, offset, flags));
}

static int
locked_trim (struct blkdev *d, uint64_t count, uint64_t offset,
             unsigned flags)
{
  return LOCKED (d, blkdev_trim (INNER (d), count, offset, flags));
}

static int
locked_flush (struct blkdev *d)
{
  return LOCKED (d, blkdev_flush (INNER (d)));
}

static int
locked_extents (struct blkdev *d, uint64_t offset, uint64_t count,
                blkdev_extent_fn fn, void *opaque)
{
  return LOCKED (d, blkdev_extents (INNER (d), offset, count, fn, opaque));
}

static void
locked_close (struct blkdev *d)
{
  struct locked_dev *l = (struct locked_dev *) d;

  blkdev_close (l->inner);
  pthread_mutex_destroy (&l->lock);
  free (l->dev.name);
  free (l);
}

static const struct blkdev_ops locked_ops = {
  .pread = locked_pread,
  .pwrite = locked_pwrite,
  .zero = locked_zero,
  .trim = locked_trim,
  .flush = locked_flush,
  .extents = locked_extents,
  .close = locked_close,
};

/* The plugin below (a prepared shared context) as a device. */
static struct blkdev *
new_device (nbdkit_next *next, const char *name, bool readonly)
{
  struct blkdev *dev = next_blkdev_new (next, name, readonly);
  struct locked_dev *l;
  pthread_mutexattr_t attr;

  if (!dev || thread_model == NBDKIT_THREAD_MODEL_PARALLEL)
    return dev;
  l = calloc (1, sizeof *l);
  if (!l || !(l->dev.name = strdup (name))) {
    nbdkit_error ("malloc: %m");
    free (l);
    blkdev_close (dev);
    return NULL;
  }
  /* Recursive: an extents callback may read the same device. */
  pthread_mutexattr_init (&attr);
  pthread_mutexattr_settype (&attr, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init (&l->lock, &attr);
  pthread_mutexattr_destroy (&attr);
  l->inner = dev;
  l->dev.ops = &locked_ops;
  l->dev.size = dev->size;
  l->dev.readonly = dev->readonly;
  l->dev.fixed_size = dev->fixed_size;
  return &l->dev;
}

static nbdkit_next *
open_context (nbdkit_backend *backend, int readonly, const char *export)
{
  nbdkit_next *next = nbdkit_next_context_open (backend, readonly, export, 1);

  if (!next) {
    nbdkit_error ("cannot open export '%s' of the plugin below", export);
    return NULL;
  }
  if (next->prepare (next) == -1) {
    nbdkit_next_context_close (next);
    return NULL;
  }
  return next;
}

static void
close_context (nbdkit_next *next)
{
  if (next) {
    next->finalize (next);
    nbdkit_next_context_close (next);
  }
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

  if (opts.format && strcmp (opts.format, "raw") == 0)
    return 0;
  if (blkdev_pread (dev, magic, sizeof magic, 0) == -1)
    return -1;
  is_qcow2 = dev->size >= 4 && qcow2_has_magic (magic);
  if (opts.create == QC_CREATE_FORCE ||
      (opts.create == QC_CREATE_IF_MISSING && !is_qcow2)) {
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

/* Open the shared image, once.  readonly: the first connection's. */
static struct qc_image *
get_image (nbdkit_backend *backend, int readonly)
{
  struct qc_options o = opts;
  struct qcow2_header h;
  struct blkdev *dev;
  char *backing = NULL;
  bool have_header = false;
  struct qc_image *ret;
  int created;

  pthread_mutex_lock (&image_lock);
  if (img) {
    ret = img;
    goto out;
  }
  ret = NULL;
  container_next = open_context (backend, readonly, "");
  if (!container_next)
    goto out;
  dev = new_device (container_next, "container", readonly);
  if (!dev)
    goto fail;
  container_readonly = dev->readonly;
  /* referenced-files=same-dir and a new image's backing file: the
   * container has no directory, so the one nbdkit was started in is the
   * image's.
   */
  o.follow_root = startup_dir;
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

  img = qc_image_open (&o, dev);        /* owns dev, even on failure */
  if (!img)
    goto fail;
  /* qcow2-create=true over a qcow2 container: it must hold what was
   * asked for, before maintenance touches it.
   */
  if (opts.create == QC_CREATE_IF_MISSING && !created &&
      qc_image_check_existing (img, &opts, NULL) == -1) {
    qc_image_close (img);
    img = NULL;
    goto fail;
  }
  /* qcow2-check, qcow2-repair and qcow2-snapshot-* run once, here. */
  if (qc_image_maintain (img, &o) == -1) {
    qc_image_close (img);
    img = NULL;
    goto fail;
  }
  nbdkit_debug ("%s", qc_image_description (img));
  ret = img;
  goto out;

 fail_dev:
  blkdev_close (dev);
 fail:
  close_context (container_next);
  container_next = NULL;
 out:
  if (have_header)
    qcow2_header_free (&h);
  free (backing);
  pthread_mutex_unlock (&image_lock);
  return ret;
}

static void
qcow2_cleanup (nbdkit_backend *backend)
{
  /* The metadata is written back through the plugin below, which is
   * still there (.cleanup runs before the plugin's).
   */
  pthread_mutex_lock (&image_lock);
  if (img) {
    qc_image_close (img);
    img = NULL;
    close_context (container_next);
    container_next = NULL;
  }
  pthread_mutex_unlock (&image_lock);
}

static int
qcow2_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                    int readonly, int is_tls,
                    struct nbdkit_exports *exports)
{
  struct qc_image *im = get_image (nxdata, readonly);
  size_t i, n;

  if (!im)
    return -1;
  if (nbdkit_use_default_export (exports) == -1)
    return -1;
  n = qc_image_nr_snapshots (im);
  for (i = 0; i < n; i++) {
    const char *name = qc_image_snapshot_name (im, i);
    char desc[256];
    snprintf (desc, sizeof desc, "internal snapshot '%s' (read-only)", name);
    if (*name && nbdkit_add_export (exports, name, desc) == -1)
      return -1;
  }
  return 0;
}

static const char *
qcow2_default_export (nbdkit_next_default_export *next,
                      nbdkit_backend *nxdata, int readonly, int is_tls)
{
  /* Export names choose snapshots of the image, not exports of the
   * plugin below.
   */
  return "";
}

struct handle {
  struct blkdev *view;
  const char *export;           /* snapshot, or NULL */
  bool written;
};

static void *
qcow2_open (nbdkit_next_open *next, nbdkit_context *context,
            int readonly, const char *exportname, int is_tls)
{
  struct qc_image *im;
  struct blkdev *view;
  struct handle *h;

  /* next is not called: this connection never uses the plugin below
   * directly, only the shared image.
   */
  im = get_image (nbdkit_context_get_backend (context), readonly);
  if (!im)
    return NULL;
  if (!exportname)
    exportname = "";
  /* As in the plugin: the first writable connection to the default
   * export makes the image writable; an image that cannot be written
   * (read-only plugin below, the first connection was read-only,
   * corrupt image) is served read-only.
   */
  if (!readonly && !opts.snapshot && *exportname == '\0') {
    if (container_readonly)
      nbdkit_debug ("the container was opened read-only (the plugin below "
                    "cannot write, or the first connection was read-only): "
                    "serving read-only");
    else if (qc_image_make_writable (im) == -1)
      nbdkit_debug ("serving %s read-only", qc_image_description (im));
  }
  view = qc_image_view (im, exportname);
  if (!view)
    return NULL;
  h = calloc (1, sizeof *h);
  if (!h) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  h->view = view;
  h->export = *exportname ? nbdkit_strdup_intern (exportname) : NULL;
  return h;
}

static void
qcow2_close (void *handle)
{
  free (handle);
}

static int
qcow2_finalize (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  /* A client that wrote and went away without flushing: its writes
   * reach the container now, not only at shutdown.
   */
  if (h->written && blkdev_flush (h->view) == -1)
    return -1;
  return 0;
}

static const char *
qcow2_export_description (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  if (h->export)
    return nbdkit_printf_intern ("internal snapshot '%s' of %s", h->export,
                                 qc_image_description (img));
  return qc_image_description (img);
}

static int64_t
qcow2_get_size (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  return h->view->size;
}

static int
qcow2_block_size (nbdkit_next *next, void *handle,
                  uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  glue_block_size (img, minimum, preferred, maximum);
  return 0;
}

static int
qcow2_can_write (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  return !h->view->readonly;
}

static int
qcow2_is_rotational (nbdkit_next *next, void *handle)
{
  return 0;
}

static int
qcow2_can_multi_conn (nbdkit_next *next, void *handle)
{
  /* One image and metadata cache for all connections; a flush writes
   * back everything.
   */
  return 1;
}

static int
qcow2_can_fua (nbdkit_next *next, void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
qcow2_can_zero (nbdkit_next *next, void *handle)
{
  return NBDKIT_ZERO_NATIVE;
}

static int
qcow2_can_fast_zero (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
qcow2_can_trim (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
qcow2_can_flush (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
qcow2_can_extents (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
qcow2_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_NONE;
}

static int
ret (int r, int *err)
{
  if (r == -1)
    *err = errno ? errno : EIO;
  return r;
}

static int
qcow2_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  return ret (blkdev_pread (h->view, buf, count, offset), err);
}

static int
qcow2_pwrite (nbdkit_next *next, void *handle, const void *buf,
              uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  h->written = true;
  return ret (blkdev_pwrite (h->view, buf, count, offset,
                             glue_blkdev_flags (flags)), err);
}

static int
qcow2_zero (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  h->written = true;
  return ret (blkdev_zero (h->view, count, offset, glue_blkdev_flags (flags)),
              err);
}

static int
qcow2_trim (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  h->written = true;
  return ret (blkdev_trim (h->view, count, offset, glue_blkdev_flags (flags)),
              err);
}

static int
qcow2_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct handle *h = handle;

  return ret (blkdev_flush (h->view), err);
}

static int
qcow2_extents (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;

  return ret (glue_extents (h->view, count, offset, flags, extents), err);
}

static struct nbdkit_filter filter = {
  .name = "qcow2",
  .longname = "nbdkit qcow2 filter",
  .load = qcow2_load,
  .unload = qcow2_unload,
  .config = qcow2_config,
  .config_complete = qcow2_config_complete,
  /* From the core's option table, shared with the plugin. */
  .config_help =
    "qcow2-backing-from=file\n"
    "    Backing files named in the image are local files (relative names\n"
    "    from the directory nbdkit was started in)."
    QC_OPTIONS_HELP (qcow2),
  .get_ready = qcow2_get_ready,
  .cleanup = qcow2_cleanup,
  .list_exports = qcow2_list_exports,
  .default_export = qcow2_default_export,
  .open = qcow2_open,
  .close = qcow2_close,
  .finalize = qcow2_finalize,
  .export_description = qcow2_export_description,
  .get_size = qcow2_get_size,
  .block_size = qcow2_block_size,
  .can_write = qcow2_can_write,
  .can_flush = qcow2_can_flush,
  .is_rotational = qcow2_is_rotational,
  .can_trim = qcow2_can_trim,
  .can_zero = qcow2_can_zero,
  .can_fast_zero = qcow2_can_fast_zero,
  .can_extents = qcow2_can_extents,
  .can_fua = qcow2_can_fua,
  .can_multi_conn = qcow2_can_multi_conn,
  .can_cache = qcow2_can_cache,
  .pread = qcow2_pread,
  .pwrite = qcow2_pwrite,
  .flush = qcow2_flush,
  .trim = qcow2_trim,
  .zero = qcow2_zero,
  .extents = qcow2_extents,
};

NBDKIT_REGISTER_FILTER (filter)
