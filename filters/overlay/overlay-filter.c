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
 *     and shared by all connections.  This is tried in .after_fork, so
 *     that a bad overlay (wrong size, locked by qemu, not qcow2) is
 *     reported at startup, and if that failed again in each .open.  A
 *     failure in .after_fork is not fatal: nbdkit has forked already,
 *     and with --run the command would wait on the socket forever.
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

#include "glue.h"
#include "next-blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"

#define PREFIX "overlay-"
#define PREFIX_LEN (sizeof PREFIX - 1)

static struct qc_options opts;
static bool extended_l2_set;    /* overlay-extended-l2= given */
static int thread_model = NBDKIT_THREAD_MODEL_PARALLEL;

/* Set up by open_overlay, torn down in .cleanup. */
static nbdkit_next *base_next;        /* shared read-only plugin context */
static struct blkdev *base_dev;       /* next_blkdev over base_next */
static struct blkdev *backing_dev;    /* base_dev, or a serializing
                                       * wrapper around it */
static struct qc_image *img;          /* shared by all connections */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static char *description;             /* export description */
static uint64_t served_size;          /* the plugin's size */

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

static void
build_help (void)
{
  size_t i, len = strlen (help);
  int n;

  n = snprintf (help + len, sizeof help - len,
                "\n" PREFIX "backing-name=NAME\n"
                "    Backing file name recorded in a new overlay, for qemu."
                "\n" PREFIX "backing-format=raw|qcow2\n"
                "    Format recorded with overlay-backing-name "
                "(default raw).");
  if (n < 0 || (size_t) n >= sizeof help - len)
    return;
  len += n;
  for (i = 0; i < qc_option_table_len; i++) {
    const struct qc_option *o = &qc_option_table[i];

    if (refused_reason (o->key) || strcmp (o->key, "backing-format") == 0)
      continue;
    n = snprintf (help + len, sizeof help - len, "\n" PREFIX "%s=%s\n    %s",
                  o->key, o->syntax, o->help);
    if (n < 0 || (size_t) n >= sizeof help - len) {
      help[len] = '\0';
      return;
    }
    len += n;
  }
}

static void
overlay_load (void)
{
  qc_set_log_handler (glue_log);
  qc_options_init (&opts);
  /* Overlay defaults: small copy-on-write writes copy a 2K subcluster,
   * not a 64K cluster.
   */
  opts.extended_l2 = true;
  opts.prefix = PREFIX;
  build_help ();
}

static void
teardown (void)
{
  /* The image first: closing writes its metadata back (to the overlay
   * file only; the backing device is never written).
   */
  qc_image_close (img);
  img = NULL;
  free (description);
  description = NULL;
  if (backing_dev && backing_dev != base_dev)
    blkdev_close (backing_dev);
  backing_dev = NULL;
  opts.backing_dev = NULL;
  blkdev_close (base_dev);
  base_dev = NULL;
  if (base_next) {
    base_next->finalize (base_next);
    nbdkit_next_context_close (base_next);
    base_next = NULL;
  }
}

static void
overlay_cleanup (nbdkit_backend *backend)
{
  teardown ();
}

static void
overlay_unload (void)
{
  /* Normally .cleanup has run.  If not, still write the overlay's
   * metadata back, but leave the plugin context alone: the plugin may be
   * gone already.
   */
  qc_image_close (img);
  img = NULL;
  free (description);
  description = NULL;
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
  if (glue_nbdkit_readonly () == 1) {
    opts.readonly = true;
    if (qc_options_check_readonly (&opts) == -1)
      return -1;
    if (access (opts.file, F_OK) != 0) {
      nbdkit_error ("overlay=%s: %m: with nbdkit -r (read-only) the overlay "
                    "is not created (start once without -r to create it)",
                    opts.file);
      return -1;
    }
  }
  return next (nxdata);
}

static int
overlay_get_ready (int final_thread_model)
{
  thread_model = final_thread_model;
  return 0;
}

/* A block device that serializes calls to the one in it.  Used for the
 * shared plugin context when the plugin does not allow parallel requests
 * on one handle (nbdkit-curl-plugin in 1.32: serialize_requests), since
 * every connection reads the backing through that one handle.
 */
struct locked_dev {
  struct blkdev dev;
  struct blkdev *below;
  pthread_mutex_t lock;
};

static int
locked_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  struct locked_dev *d = (struct locked_dev *) dev;
  int r, err;

  pthread_mutex_lock (&d->lock);
  r = blkdev_pread (d->below, buf, count, offset);
  err = errno;
  pthread_mutex_unlock (&d->lock);
  errno = err;
  return r;
}

static int
locked_extents (struct blkdev *dev, uint64_t offset, uint64_t count,
                blkdev_extent_fn fn, void *opaque)
{
  struct locked_dev *d = (struct locked_dev *) dev;
  int r, err;

  pthread_mutex_lock (&d->lock);
  r = blkdev_extents (d->below, offset, count, fn, opaque);
  err = errno;
  pthread_mutex_unlock (&d->lock);
  errno = err;
  return r;
}

static void
locked_close (struct blkdev *dev)
{
  struct locked_dev *d = (struct locked_dev *) dev;

  pthread_mutex_destroy (&d->lock);
  free (d->dev.name);
  free (d);
}

static const struct blkdev_ops locked_ops = {
  .pread = locked_pread,
  .extents = locked_extents,
  .close = locked_close,
};

static struct blkdev *
locked_new (struct blkdev *below)
{
  struct locked_dev *d = calloc (1, sizeof *d);
  pthread_mutexattr_t attr;

  if (!d || !(d->dev.name = strdup (below->name))) {
    nbdkit_error ("malloc: %m");
    free (d);
    return NULL;
  }
  /* Recursive: an extents callback of the core never reads the backing,
   * but a deadlock would be the wrong way to find out.
   */
  pthread_mutexattr_init (&attr);
  pthread_mutexattr_settype (&attr, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init (&d->lock, &attr);
  pthread_mutexattr_destroy (&attr);
  d->below = below;
  d->dev.ops = &locked_ops;
  d->dev.size = below->size;
  d->dev.readonly = true;
  d->dev.fixed_size = true;
  return &d->dev;
}

/* Open the plugin below and the overlay over it, once.  Called from
 * .after_fork (so that a bad overlay is reported at startup) and, if
 * that failed, again from each .open until it works.  Caller holds
 * open_lock.
 */
static int
open_overlay (nbdkit_backend *backend, bool may_create)
{
  struct blkdev *view;
  bool created = false;

  if (img)
    return 0;

  /* The plugin's default export, read-only, shared by all connections. */
  base_next = nbdkit_next_context_open (backend, 1, "", 1);
  if (!base_next) {
    nbdkit_error ("overlay: could not open the plugin below (read-only)");
    return -1;
  }
  if (base_next->prepare (base_next) == -1) {
    nbdkit_next_context_close (base_next);
    base_next = NULL;
    return -1;
  }
  base_dev = next_blkdev_new (base_next, "the plugin below the overlay",
                              true);
  if (!base_dev)
    goto err;
  backing_dev = base_dev;
  if (thread_model < NBDKIT_THREAD_MODEL_PARALLEL) {
    backing_dev = locked_new (base_dev);
    if (!backing_dev)
      goto err;
  }
  opts.backing_dev = backing_dev;

  if (access (opts.file, F_OK) != 0) {
    if (errno != ENOENT) {
      nbdkit_error ("overlay=%s: %m", opts.file);
      goto err;
    }
    if (!may_create) {
      nbdkit_error ("overlay=%s does not exist, and a read-only connection "
                    "(nbdkit -r) does not create it", opts.file);
      goto err;
    }
    if (base_dev->size == 0) {
      nbdkit_error ("overlay=%s: the plugin below serves 0 bytes: there "
                    "is nothing to overlay", opts.file);
      goto err;
    }
    opts.size = base_dev->size;
    created = true;
    if (qc_image_create (&opts, NULL) == -1)
      goto err;
    nbdkit_debug ("overlay: created %s, %" PRIu64 " bytes%s%s",
                  opts.file, opts.size,
                  opts.backing_file ? ", backing file name " : "",
                  opts.backing_file ? opts.backing_file : "");
  }
  img = qc_image_open (&opts, NULL);
  if (!img)
    goto err;
  view = qc_image_default_view (img);
  /* qcow2 sizes are whole sectors (qemu-img rounds a backing file's
   * size up the same way): over a plugin whose size is not, the overlay
   * is up to 511 bytes longer, and the plugin's size is served.
   */
  if (view->size != base_dev->size &&
      !(base_dev->size % 512 != 0 &&
        view->size == (base_dev->size + 511) / 512 * 512)) {
    nbdkit_error ("overlay=%s has a virtual size of %" PRIu64 " bytes, but "
                  "the plugin below serves %" PRIu64 " bytes: the overlay "
                  "belongs to another disk (use a new overlay file, or "
                  "resize it with qemu-img resize)", opts.file, view->size,
                  base_dev->size);
    goto err;
  }
  /* An existing overlay: the creation options given must describe it. */
  if (!created &&
      qc_image_check_existing (img, &opts, "remove it (or use another "
                               "overlay= file) to create a new overlay")
      == -1)
    goto err;
  /* overlay-check, overlay-repair and overlay-snapshot-* run once. */
  if (qc_image_maintain (img, &opts) == -1)
    goto err;
  /* Not interned: this may run inside a connection, whose interned
   * strings go away with it.
   */
  if (asprintf (&description, "copy-on-write overlay over the plugin "
                "below: %s", qc_image_description (img)) == -1) {
    description = NULL;
    nbdkit_error ("asprintf: %m");
    goto err;
  }
  nbdkit_debug ("%s", description);
  served_size = base_dev->size;
  return 0;

 err:
  teardown ();
  /* Do not leave a half-made or unusable new overlay behind. */
  if (created)
    unlink (opts.file);
  return -1;
}

static int
overlay_after_fork (nbdkit_backend *backend)
{
  pthread_mutex_lock (&open_lock);
  /* Not fatal: nbdkit has forked already, and with --run a server that
   * exits here leaves the command waiting on the socket forever.  Each
   * connection tries again and fails with the reason.
   */
  /* Created here only when nbdkit is known to run without -r. */
  if (open_overlay (backend, glue_nbdkit_readonly () == 0) == -1)
    nbdkit_error ("overlay: the overlay could not be opened; every "
                  "connection will try again and fail until this is fixed");
  pthread_mutex_unlock (&open_lock);
  return 0;
}

/* Only the default export: the overlay covers the plugin's default. */
static int
overlay_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                      int readonly, int is_tls,
                      struct nbdkit_exports *exports)
{
  return nbdkit_use_default_export (exports);
}

static const char *
overlay_default_export (nbdkit_next_default_export *next,
                        nbdkit_backend *nxdata, int readonly, int is_tls)
{
  return "";
}

struct handle {
  struct blkdev *view;
  bool readonly;
  bool written;                 /* flushed in .finalize */
};

static void *
overlay_open (nbdkit_next_open *next, nbdkit_context *context,
              int readonly, const char *exportname, int is_tls)
{
  struct handle *h;

  /* next is not called: see the comment at the top. */
  if (*exportname) {
    nbdkit_error ("export '%s': the overlay serves only the default "
                  "export (\"\")", exportname);
    return NULL;
  }
  pthread_mutex_lock (&open_lock);
  if (open_overlay (nbdkit_context_get_backend (context), !readonly) == -1) {
    pthread_mutex_unlock (&open_lock);
    return NULL;
  }
  pthread_mutex_unlock (&open_lock);
  /* The first writable connection makes the overlay writable (until
   * then it is open read-only, with read locks only).  If it cannot be
   * (a read-only file, qemu holding it), it is served read-only, with
   * the reason in the log.
   */
  if (!readonly && qc_image_make_writable (img) == -1)
    nbdkit_debug ("serving %s read-only", qc_image_description (img));
  h = calloc (1, sizeof *h);
  if (!h) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->view = qc_image_default_view (img);
  h->readonly = readonly;
  return h;
}

static void
overlay_close (void *handle)
{
  free (handle);
}

static int
overlay_finalize (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  /* A client that wrote and went away: make its writes durable, so that
   * a later crash of nbdkit does not lose them.
   */
  if (h->written && blkdev_flush (h->view) == -1)
    return -1;
  return 0;
}

static const char *
overlay_export_description (nbdkit_next *next, void *handle)
{
  return description;
}

static int64_t
overlay_get_size (nbdkit_next *next, void *handle)
{
  return served_size;
}

static int
overlay_block_size (nbdkit_next *next, void *handle,
                    uint32_t *minimum, uint32_t *preferred,
                    uint32_t *maximum)
{
  glue_block_size (img, minimum, preferred, maximum);
  return 0;
}

static int
overlay_can_write (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  /* Writes go to the overlay: the plugin below may well be read-only. */
  return !h->readonly && !h->view->readonly;
}

static int
overlay_can_flush (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
overlay_is_rotational (nbdkit_next *next, void *handle)
{
  return 0;
}

static int
overlay_can_trim (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
overlay_can_zero (nbdkit_next *next, void *handle)
{
  return NBDKIT_ZERO_NATIVE;
}

static int
overlay_can_fast_zero (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
overlay_can_extents (nbdkit_next *next, void *handle)
{
  return 1;
}

static int
overlay_can_fua (nbdkit_next *next, void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

static int
overlay_can_multi_conn (nbdkit_next *next, void *handle)
{
  /* One image for all connections; a flush writes back everything. */
  return 1;
}

static int
overlay_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_NONE;
}

/* nbdkit needs a positive errno for every failure. */
static int
failed (int *err)
{
  *err = errno ? errno : EIO;
  return -1;
}

static int
overlay_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (blkdev_pread (h->view, buf, count, offset) == -1)
    return failed (err);
  return 0;
}

static int
overlay_pwrite (nbdkit_next *next, void *handle, const void *buf,
                uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  h->written = true;
  if (blkdev_pwrite (h->view, buf, count, offset,
                     glue_blkdev_flags (flags)) == -1)
    return failed (err);
  return 0;
}

static int
overlay_zero (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  h->written = true;
  if (blkdev_zero (h->view, count, offset, glue_blkdev_flags (flags)) == -1) {
    failed (err);
    /* nbdkit asserts that only a fast zero fails with ENOTSUP. */
    if (!(flags & NBDKIT_FLAG_FAST_ZERO) &&
        (*err == ENOTSUP || *err == EOPNOTSUPP))
      *err = EIO;
    return -1;
  }
  return 0;
}

static int
overlay_trim (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  h->written = true;
  if (blkdev_trim (h->view, count, offset, glue_blkdev_flags (flags)) == -1)
    return failed (err);
  return 0;
}

static int
overlay_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (blkdev_flush (h->view) == -1)
    return failed (err);
  return 0;
}

static int
overlay_extents (nbdkit_next *next, void *handle, uint32_t count,
                 uint64_t offset, uint32_t flags,
                 struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;

  if (glue_extents (h->view, count, offset, flags, extents) == -1)
    return failed (err);
  return 0;
}

static int
overlay_cache (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  /* Not advertised (can_cache is NONE), so never called. */
  *err = EOPNOTSUPP;
  return -1;
}

static struct nbdkit_filter filter = {
  .name = "overlay",
  .longname = "nbdkit qcow2 overlay filter",
  .description = "A persistent qcow2 copy-on-write overlay over the plugin",
  .load = overlay_load,
  .unload = overlay_unload,
  .config = overlay_config,
  .config_complete = overlay_config_complete,
  .config_help = help,
  .get_ready = overlay_get_ready,
  .after_fork = overlay_after_fork,
  .cleanup = overlay_cleanup,
  .list_exports = overlay_list_exports,
  .default_export = overlay_default_export,
  .open = overlay_open,
  .close = overlay_close,
  .finalize = overlay_finalize,
  .export_description = overlay_export_description,
  .get_size = overlay_get_size,
  .block_size = overlay_block_size,
  .can_write = overlay_can_write,
  .can_flush = overlay_can_flush,
  .is_rotational = overlay_is_rotational,
  .can_trim = overlay_can_trim,
  .can_zero = overlay_can_zero,
  .can_fast_zero = overlay_can_fast_zero,
  .can_extents = overlay_can_extents,
  .can_fua = overlay_can_fua,
  .can_multi_conn = overlay_can_multi_conn,
  .can_cache = overlay_can_cache,
  .pread = overlay_pread,
  .pwrite = overlay_pwrite,
  .zero = overlay_zero,
  .trim = overlay_trim,
  .flush = overlay_flush,
  .extents = overlay_extents,
  .cache = overlay_cache,
};

NBDKIT_REGISTER_FILTER (filter)
