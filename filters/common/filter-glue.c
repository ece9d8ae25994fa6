/* SPDX-License-Identifier: BSD-3-Clause */
/* What both filters share: see filter-glue.h.  Each filter (.so) links
 * its own copy, so the state below is the filter's own.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "filter-glue.h"
#include "glue.h"
#include "next-blkdev.h"
#include "qc-options.h"
#include "serve.h"

static const struct filter_module *module;
static int thread_model = NBDKIT_THREAD_MODEL_PARALLEL;

/* The image and the context of the plugin below holding it. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static nbdkit_next *below;
static struct qc_image *img;
static bool writable;           /* the image may be made writable */
static uint64_t below_size;
/* The plugin below, as .config_complete saw it: .get_ready has no
 * backend argument in nbdkit 1.32.
 */
static nbdkit_backend *config_backend;
static bool opened_once;        /* creation and maintenance have run */
static bool open_at_start;      /* .get_ready opened the image */
static unsigned below_connections = FILTER_BELOW_CONNECTIONS_DEFAULT;

int
filter_set_below_connections (const char *prefix, const char *value)
{
  char *end;
  unsigned long n;

  errno = 0;
  n = strtoul (value, &end, 10);
  if (errno || end == value || *end || value[0] == '-' || n < 1 ||
      n > FILTER_BELOW_CONNECTIONS_MAX) {
    nbdkit_error ("%sbelow-connections=%s: expected a number from 1 to %d",
                  prefix, value, FILTER_BELOW_CONNECTIONS_MAX);
    return -1;
  }
  below_connections = n;
  return 0;
}

void
filter_glue_init (const struct filter_module *m)
{
  module = m;
}

void
filter_config_backend (nbdkit_backend *backend)
{
  config_backend = backend;
}

/* The plugin below as a device: a prepared context of its own. */
static struct blkdev *
open_below (nbdkit_backend *backend, int readonly)
{
  struct blkdev *dev;

  readonly = readonly || module->below_readonly;
  below = next_context_open (backend, readonly);
  if (!below)
    return NULL;
  dev = next_blkdev_new (below, module->device_name, readonly);
  if (dev && thread_model < NBDKIT_THREAD_MODEL_PARALLEL)
    dev = next_blkdev_serialized (dev);
  /* More contexts for reads in parallel: when the plugin below takes
   * requests on different connections at once (per-connection
   * serialization at most, as the 1.32 curl plugin does).
   */
  if (dev && thread_model >= NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS)
    dev = next_blkdev_pool (dev, backend, below_connections,
                            thread_model < NBDKIT_THREAD_MODEL_PARALLEL);
  if (!dev) {
    next_context_close (below);
    below = NULL;
  }
  return dev;
}

void
filter_help_append (char *help, size_t size, const char *prefix,
                    const char *const texts[], bool (*skip) (const char *))
{
  size_t i, len = strlen (help);
  int n;

  for (i = 0; i < qc_option_table_len; i++) {
    const struct qc_option *o = &qc_option_table[i];

    if (skip (o->key))
      continue;
    n = snprintf (help + len, size - len, "\n%s%s=%s\n    %s",
                  prefix, o->key, o->syntax, texts[i]);
    if (n < 0 || (size_t) n >= size - len) {
      help[len] = '\0';
      return;
    }
    len += n;
  }
}

struct qc_image *
filter_image (nbdkit_backend *backend, int readonly)
{
  struct qc_image *ret;
  struct blkdev *dev;

  pthread_mutex_lock (&lock);
  if (!img && (dev = open_below (backend, readonly)) != NULL) {
    writable = !(module->image_in_below && dev->readonly);
    below_size = dev->size;
    img = module->open_image (dev, readonly, !opened_once);
    if (!img) {
      next_context_close (below);
      below = NULL;
    }
    else
      opened_once = true;
  }
  ret = img;
  pthread_mutex_unlock (&lock);
  return ret;
}

/* The image first: closing it writes its metadata back, through the
 * plugin below, which is still there.
 */
static void
close_image (void)
{
  pthread_mutex_lock (&lock);
  if (img) {
    module->close_image (img);
    img = NULL;
    next_context_close (below);
    below = NULL;
  }
  pthread_mutex_unlock (&lock);
}

/* Errors at startup, as nbdkit's own modules give them: the image is
 * opened (created, checked, repaired, its snapshot operations run)
 * before nbdkit forks and before a --run command starts, so that a
 * container or overlay that cannot be opened makes nbdkit exit with an
 * error.  A failure later, in .after_fork, could not: nbdkit has told
 * its parent it started, and a --run command would wait on the socket.
 * Then everything is closed again: no thread, lock or plugin context
 * of ours crosses the fork (plugins get their .after_fork first), and
 * .after_fork opens the image again, without the creation and
 * maintenance that ran here.
 *
 * Not when other filters sit between us and the plugin: outside a
 * connection, nbdkit 1.32 aborts in filters that wait (delay, retry,
 * rate: nbdkit_nanosleep asserts a connection).  Then the first
 * connection opens the image, and an image that cannot be opened is
 * an error of each connection, as before.
 */
int
filter_get_ready (int model)
{
  thread_model = model;
  if (glue_nbdkit_filters_below (module->name) != 0) {
    nbdkit_debug ("%s: other filters below this one (or a command line "
                  "that cannot be read): the image is opened by the first "
                  "connection, not at startup", module->name);
    return 0;
  }
  open_at_start = true;
  if (!filter_image (config_backend, glue_nbdkit_readonly () != 0))
    return -1;
  serve_writable_notice (img, writable);
  close_image ();
  return 0;
}

int
filter_after_fork (nbdkit_backend *backend)
{
  /* Not fatal: it worked a moment ago in .get_ready, so this is rare
   * (a file removed meanwhile); each connection tries again and fails
   * with the reason.
   */
  if (open_at_start && !filter_image (backend, glue_nbdkit_readonly () != 0))
    nbdkit_error ("%s: could not be opened again after nbdkit forked; "
                  "each connection will try again", module->device_name);
  return 0;
}

void
filter_cleanup (nbdkit_backend *backend)
{
  /* .cleanup runs before the plugin's: it is still there. */
  close_image ();
}

void
filter_unload_image (void)
{
  next_blkdev_contexts_gone ();
  if (img)
    module->close_image (img);
  img = NULL;
}

int
filter_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                     int readonly, int is_tls, struct nbdkit_exports *exports)
{
  struct qc_image *im = filter_image (nxdata, readonly);

  return im ? serve_list_exports (im, exports) : -1;
}

const char *
filter_default_export (nbdkit_next_default_export *next,
                       nbdkit_backend *nxdata, int readonly, int is_tls)
{
  /* Export names choose snapshots of the image, not exports of the
   * plugin below.
   */
  return "";
}

void *
filter_open (nbdkit_next_open *next, nbdkit_context *context,
             int readonly, const char *exportname, int is_tls)
{
  struct qc_image *im;
  struct serve_handle *h;

  /* next is not called: this connection never uses the plugin below
   * directly, only the shared image (nbdkit-filter(3) allows that when
   * no callback of the connection calls next).
   */
  if (serve_check_export (exportname) == -1)
    return NULL;
  im = filter_image (nbdkit_context_get_backend (context), readonly);
  if (!im)
    return NULL;
  h = serve_handle_new (im, readonly, exportname, writable);
  if (h && module->size_of_below)
    h->size = below_size;
  return h;
}

int
filter_finalize (nbdkit_next *next, void *handle)
{
  struct serve_handle *h = handle;

  /* A client that wrote and went away without flushing: its writes
   * become durable now, not only at shutdown.
   */
  if (__atomic_load_n (&h->written, __ATOMIC_RELAXED) &&
      blkdev_flush (h->view) == -1)
    return -1;
  return 0;
}

const char *
filter_export_description (nbdkit_next *next, void *handle)
{
  return serve_export_description (handle);
}

int64_t
filter_get_size (nbdkit_next *next, void *handle)
{
  return serve_get_size (handle);
}

int
filter_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                   uint32_t *preferred, uint32_t *maximum)
{
  return serve_block_size (handle, minimum, preferred, maximum);
}

int
filter_can_write (nbdkit_next *next, void *handle)
{
  return serve_can_write (handle);
}

/* can_flush, can_trim, can_fast_zero, can_extents, can_multi_conn. */
int
filter_true (nbdkit_next *next, void *handle)
{
  return serve_true (handle);
}

/* is_rotational */
int
filter_false (nbdkit_next *next, void *handle)
{
  return 0;
}

int
filter_can_zero (nbdkit_next *next, void *handle)
{
  return NBDKIT_ZERO_NATIVE;
}

int
filter_can_fua (nbdkit_next *next, void *handle)
{
  return serve_can_fua (handle);
}

int
filter_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_NONE;
}

/* serve_* set errno by the one rule (serve_errno). */
static int
result (int r, int *err)
{
  if (r == -1)
    *err = errno;
  return r;
}

int
filter_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  return result (serve_pread (handle, buf, count, offset, flags), err);
}

int
filter_pwrite (nbdkit_next *next, void *handle, const void *buf,
               uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  return result (serve_pwrite (handle, buf, count, offset, flags), err);
}

int
filter_zero (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  return result (serve_zero (handle, count, offset, flags), err);
}

int
filter_trim (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  return result (serve_trim (handle, count, offset, flags), err);
}

int
filter_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  return result (serve_flush (handle, flags), err);
}

int
filter_extents (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents, int *err)
{
  return result (serve_extents (handle, count, offset, flags, extents),
                 err);
}
