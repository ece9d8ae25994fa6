/* SPDX-License-Identifier: BSD-3-Clause */
/* The serving layer shared by the plugin and both filters: see serve.h.
 * Each module (.so) links its own copy, so the module description below
 * is the module's own.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "glue.h"
#include "qc-error.h"
#include "qc-options.h"
#include "serve.h"

static const struct serve_module *module;
static const struct qc_options *options;  /* the module's */
static bool readonly_said;      /* the read-only fallback was logged */

void
serve_load (const struct serve_module *m, struct qc_options *opts)
{
  module = m;
  options = opts;
  qc_set_log_handler (glue_log);
  qc_options_init (opts);
  qc_options_set_prefix (m->prefix);
  opts->prefix = m->prefix;
}

int
serve_readonly (struct qc_options *opts, const struct qc_options *check)
{
  if (glue_nbdkit_readonly () != 1)
    return 0;
  opts->readonly = true;
  return qc_options_check_readonly (check) == -1 ? -1 : 1;
}

struct qc_image *
serve_image_ready (struct qc_image *img, const struct qc_options *opts,
                   bool check_existing, const char *hint)
{
  /* An existing image where one was to be created if missing: it must
   * be what was asked for (its size by qc_create_size, the rule a new
   * image follows), before maintenance touches it.  check=, repair=
   * and the snapshot operations run once, here.
   */
  if ((check_existing && qc_image_check_existing (img, opts, hint) == -1) ||
      qc_image_maintain (img, opts) == -1) {
    qc_image_close (img);
    return NULL;
  }
  nbdkit_debug ("%s%s", module->what, qc_image_description (img));
  return img;
}

struct qc_image *
serve_image_open (const struct qc_options *opts, struct blkdev *dev,
                  bool check_existing, const char *hint)
{
  struct qc_image *img = qc_image_open (opts, dev);

  return img ? serve_image_ready (img, opts, check_existing, hint) : NULL;
}

void
serve_options_reopen (struct qc_options *o)
{
  o->create = QC_CREATE_NO;
  o->check = false;
  o->repair = QC_REPAIR_NONE;
  o->nr_ops = 0;
  o->nr_bitmap_ops = 0;
}

/* The read-only fallback, said once, as a notice (not an error: the
 * image is served, read-only, as nbdkit-file-plugin serves a read-only
 * file).  reason: the core's last error, or NULL.
 */
static void
say_readonly (struct qc_image *img, const char *reason)
{
  if (readonly_said) {
    nbdkit_debug ("serving %s read-only: %s", qc_image_description (img),
                  reason);
    return;
  }
  readonly_said = true;
  qc_info ("serving read-only, as nbdkit -r would: %s", reason);
}

void
serve_writable_notice (struct qc_image *img, bool writable)
{
  int quiet;

  if (options->readonly || options->snapshot)
    return;             /* read-only as asked: nothing to say */
  if (!writable) {
    say_readonly (img, "the plugin below cannot be written");
    return;
  }
  quiet = qc_errors_quiet (1);
  if (qc_image_writable_probe (img) == -1)
    say_readonly (img, qc_last_error ());
  qc_errors_quiet (quiet);
}

/* The description of export name ("" the default) of img: the same in
 * export lists and in each export's own description.  A snapshot asked
 * for by ID is described by its name.
 */
static const char *
describe (struct qc_image *img, const char *name)
{
  const char *d = qc_image_description (img);
  const char *snap = *name ? qc_image_snapshot_lookup (img, name) : NULL;

  if (snap && strcmp (snap, name) != 0)
    return nbdkit_printf_intern ("internal snapshot '%s' (asked for as "
                                 "'%s'), read-only, of %s", snap, name, d);
  if (snap)
    return nbdkit_printf_intern ("internal snapshot '%s', read-only, of %s",
                                 snap, d);
  return *module->what ? nbdkit_printf_intern ("%s%s", module->what, d) : d;
}

int
serve_list_exports (struct qc_image *img, struct nbdkit_exports *exports)
{
  size_t i, n;

  /* Without the image (not open yet) nbdkit lists the default export
   * alone, undescribed.  Otherwise the default export first, then the
   * snapshots in table order, each described.
   */
  if (!img)
    return nbdkit_use_default_export (exports);
  n = module->snapshot_exports ? qc_image_nr_snapshots (img) : 0;
  if (nbdkit_add_export (exports, "", describe (img, "")) == -1)
    return -1;
  for (i = 0; i < n; i++) {
    const char *name = qc_image_snapshot_name (img, i);
    if (*name && nbdkit_add_export (exports, name, describe (img, name)) == -1)
      return -1;
  }
  return 0;
}

bool
serve_snapshot_exports (void)
{
  return module->snapshot_exports;
}

int
serve_check_export (const char *name)
{
  if (name && *name && !module->snapshot_exports) {
    nbdkit_error ("export '%s': the overlay serves only the default "
                  "export (\"\")", name);
    return -1;
  }
  return 0;
}

struct serve_handle *
serve_handle_new (struct qc_image *img, int readonly, const char *name,
                  bool writable)
{
  struct serve_handle *h;
  struct blkdev *view;

  if (!name)
    name = "";
  if (serve_check_export (name) == -1)
    return NULL;
  /* Until the first writable connection to the default export, the
   * image is open read-only, with read locks only (always with nbdkit
   * -r).  Like nbdkit-file-plugin, an image that cannot be written (a
   * read-only file or plugin below, a corrupt image, qemu holding it)
   * is then served read-only, with the reason in the log.
   */
  if (!readonly && !options->snapshot && *name == '\0') {
    if (!writable)
      say_readonly (img, "the plugin below cannot be written");
    else {
      int quiet = qc_errors_quiet (1);
      if (qc_image_make_writable (img) == -1)
        say_readonly (img, qc_last_error ());
      qc_errors_quiet (quiet);
    }
  }
  view = qc_image_view (img, name);
  if (!view)
    return NULL;
  h = calloc (1, sizeof *h);
  if (!h) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->img = img;
  h->view = view;
  h->export = *name ? nbdkit_strdup_intern (name) : NULL;
  h->size = view->size;
  h->readonly = readonly;
  return h;
}

void
serve_close (void *handle)
{
  free (handle);
}

const char *
serve_export_description (void *handle)
{
  struct serve_handle *h = handle;

  return describe (h->img, h->export ? h->export : "");
}

int64_t
serve_get_size (void *handle)
{
  struct serve_handle *h = handle;

  return h->size;
}

int
serve_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                  uint32_t *maximum)
{
  struct serve_handle *h = handle;

  glue_block_size (h->img, minimum, preferred, maximum);
  return 0;
}

int
serve_can_write (void *handle)
{
  struct serve_handle *h = handle;

  /* Writes go to the image: the plugin below an overlay may well be
   * read-only.
   */
  return !h->readonly && !h->view->readonly;
}

/* can_zero, can_fast_zero, can_trim, can_flush, can_extents, and
 * can_multi_conn: all connections share one image and its metadata
 * cache, and a flush writes back everything.
 */
int
serve_true (void *handle)
{
  return 1;
}

int
serve_can_fua (void *handle)
{
  return NBDKIT_FUA_NATIVE;
}

/* ENOTSUP (EOPNOTSUPP) tells a client that a fast zero would not be
 * fast, and nbdkit asserts that no other request of a filter fails
 * with it.  A plain zero that fails with it has failed for good: the
 * core already falls back to writing zeros where it cannot deallocate,
 * so nbdkit's own fallback (for a plugin) would only do that again.
 */
int
serve_errno (uint32_t flags)
{
  int err = errno ? errno : EIO;

  if ((err == ENOTSUP || err == EOPNOTSUPP) &&
      !(flags & NBDKIT_FLAG_FAST_ZERO))
    err = EIO;
  errno = err;
  return err;
}

/* A request's result: 0, or -1 with errno by the one rule. */
static int
done (int r, uint32_t flags)
{
  if (r == -1)
    serve_errno (flags);
  return r == -1 ? -1 : 0;
}

int
serve_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
             uint32_t flags)
{
  struct serve_handle *h = handle;

  return done (blkdev_pread (h->view, buf, count, offset), flags);
}

int
serve_pwrite (void *handle, const void *buf, uint32_t count,
              uint64_t offset, uint32_t flags)
{
  struct serve_handle *h = handle;

  /* Requests of one connection run in parallel. */
  __atomic_store_n (&h->written, true, __ATOMIC_RELAXED);
  return done (blkdev_pwrite (h->view, buf, count, offset,
                              glue_blkdev_flags (flags)), flags);
}

int
serve_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct serve_handle *h = handle;

  /* Requests of one connection run in parallel. */
  __atomic_store_n (&h->written, true, __ATOMIC_RELAXED);
  return done (blkdev_zero (h->view, count, offset,
                            glue_blkdev_flags (flags)), flags);
}

int
serve_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct serve_handle *h = handle;

  /* Requests of one connection run in parallel. */
  __atomic_store_n (&h->written, true, __ATOMIC_RELAXED);
  return done (blkdev_trim (h->view, count, offset,
                            glue_blkdev_flags (flags)), flags);
}

int
serve_flush (void *handle, uint32_t flags)
{
  struct serve_handle *h = handle;

  return done (blkdev_flush (h->view), flags);
}

int
serve_extents (void *handle, uint32_t count, uint64_t offset,
               uint32_t flags, struct nbdkit_extents *extents)
{
  struct serve_handle *h = handle;

  return done (glue_extents (h->view, count, offset, flags, extents),
               flags);
}
