/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit-qcow2enc-filter: the export is the bytes of a qcow2 file
 * holding the guest bytes of the plugin below, computed on demand.
 * nbdkit glue only: the options, one encoder for all connections, the
 * read callback.  The format lives in common/ (qcow2-enc.h).
 *
 * The plugin below is opened once, in a context shared by all
 * connections (nbdkit_next_context_open), when nbdkit is ready to serve
 * (.after_fork): the encoder scans it then, so the export's size is
 * known before the first client connects.  The filter is read-only: nothing is ever written,
 * neither to the plugin below nor anywhere else.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-filter.h>

#include "glue.h"
#include "next-blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-enc.h"

#define PREFIX "qcow2enc-"
#define PREFIX_LEN (sizeof PREFIX - 1)

static struct qc_options opts;
static int thread_model = NBDKIT_THREAD_MODEL_PARALLEL;

/* The encoder and the context of the plugin below it reads. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static nbdkit_next *below;
static struct blkdev *source;
static struct qc_enc *enc;

/* The engine's keys that describe the qcow2 file the filter makes. */
static const char *const accepted[] = {
  "cluster-size", "compat", "refcount-bits", "lazy-refcounts",
  "extended-l2", "compression-type", "backing-file", "backing-format",
  "data-file", "zero-detect", "holes", "compress", "compress-level",
  "encrypt", "passphrase", "encrypt-iter-time",
};

static bool
in (const char *const *list, size_t n, const char *key)
{
  size_t i;

  for (i = 0; i < n; i++)
    if (strcmp (list[i], key) == 0)
      return true;
  return false;
}
#define IN(list, key) in (list, sizeof list / sizeof list[0], key)

/* config_help from the core's option table, for the accepted keys
 * only.  nbdkit keeps the pointer and prints the text later: .load
 * fills it in before that.
 */
static char help[8192];

#define HELP_TEXT(key, type, syntax, def, help) help,
static const char *const enc_help[] = {
  QC_OPTIONS (HELP_TEXT, qcow2enc) QC_ENC_OPTIONS (HELP_TEXT, qcow2enc)
};

static void
build_help (void)
{
  size_t i, len = 0;
  int n;

  for (i = 0; i < qc_option_table_len; i++) {
    const struct qc_option *o = &qc_option_table[i];

    const char *text = enc_help[i];

    if (!IN (accepted, o->key))
      continue;
    if (strcmp (o->key, "backing-format") == 0)
      text = "Format of the " PREFIX "backing-file= (recorded in the image).";
    else if (strcmp (o->key, "compress") == 0)
      text = "Store the clusters compressed (those that get smaller).";
    n = snprintf (help + len, sizeof help - len, "%s" PREFIX "%s=%s\n    %s",
                  len ? "\n" : "", o->key, o->syntax, text);
    if (n < 0 || (size_t) n >= sizeof help - len) {
      help[len] = '\0';
      return;
    }
    len += n;
  }
}

static void
qcow2enc_load (void)
{
  qc_set_log_handler (glue_log);
  qc_options_init (&opts);
  opts.prefix = PREFIX;
  qc_options_set_prefix (PREFIX);
  build_help ();
}

static void
qcow2enc_unload (void)
{
  qc_enc_free (enc);
  enc = NULL;
  qc_options_free (&opts);
}

static int
qcow2enc_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  if (strncmp (key, PREFIX, PREFIX_LEN) != 0)
    return next (nxdata, key, value);
  key += PREFIX_LEN;
  if (!IN (accepted, key)) {
    nbdkit_error ("unknown parameter '" PREFIX "%s' (see nbdkit "
                  "--filter=qcow2enc --help)", key);
    return -1;
  }
  /* glue_set_option: the passphrase forms of nbdkit (-, +FILE, -FD). */
  if (glue_set_option (&opts, key, value) == -1) {
    nbdkit_error ("the option was " PREFIX "%s=%s", key,
                  strcmp (key, "passphrase") == 0 ? "..." : value);
    return -1;
  }
  return 0;
}

static int
qcow2enc_config_complete (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata)
{
  /* qemu-img create's rules between the options. */
  if (qc_create_check (&opts) == -1)
    return -1;
  if (opts.compress_level != 0 && opts.compress < 0) {
    nbdkit_error (PREFIX "compress-level= needs " PREFIX "compress=zlib "
                  "or " PREFIX "compress=zstd");
    return -1;
  }
  if (opts.compress == 0 && opts.compress_level > 9) {
    nbdkit_error (PREFIX "compress-level=%d: zlib levels are 1 to 9",
                  opts.compress_level);
    return -1;
  }
  if (opts.passphrase && !opts.encrypt) {
    nbdkit_error (PREFIX "passphrase= given, but the image is not "
                  "encrypted: add " PREFIX "encrypt=luks, or drop "
                  PREFIX "passphrase=");
    return -1;
  }
  if (opts.backing_format && !opts.backing_file) {
    nbdkit_error (PREFIX "backing-format= needs " PREFIX "backing-file=");
    return -1;
  }
  if (opts.holes_backing && !opts.backing_file) {
    nbdkit_error (PREFIX "holes=backing needs " PREFIX "backing-file= "
                  "(the holes read through to it)");
    return -1;
  }
  if (opts.backing_file && opts.data_file) {
    /* Stored clusters are the source's own: its holes would have to
     * read through to the backing file and its data at the same offsets.
     */
    nbdkit_error (PREFIX "backing-file= and " PREFIX "data-file= cannot "
                  "be used together");
    return -1;
  }
  return next (nxdata);
}

static int
qcow2enc_get_ready (int model)
{
  thread_model = model;
  return 0;
}

/* The encoder, made on first use (NULL after nbdkit_error). */
static struct qc_enc *
get_enc (nbdkit_backend *backend)
{
  struct qc_enc *ret;

  pthread_mutex_lock (&lock);
  if (!enc) {
    below = next_context_open (backend, 1);
    if (below) {
      source = next_blkdev_new (below, "the plugin below", true);
      if (source && thread_model < NBDKIT_THREAD_MODEL_PARALLEL)
        source = next_blkdev_serialized (source);
      if (source)
        enc = qc_enc_new (&opts, source);
      if (!enc) {
        blkdev_close (source);
        source = NULL;
        next_context_close (below);
        below = NULL;
      }
    }
  }
  ret = enc;
  pthread_mutex_unlock (&lock);
  return ret;
}

/* Before serving: connections made meanwhile wait in the socket's
 * backlog.  A failure is logged and does not stop nbdkit: with --run,
 * nbdkit 1.32 would leave the captive command waiting on a socket that
 * nobody serves.  Every connection then tries again, and fails with the
 * reason.
 */
static int
qcow2enc_after_fork (nbdkit_backend *backend)
{
  get_enc (backend);
  return 0;
}

static void
qcow2enc_cleanup (nbdkit_backend *backend)
{
  pthread_mutex_lock (&lock);
  qc_enc_free (enc);
  enc = NULL;
  blkdev_close (source);
  source = NULL;
  next_context_close (below);
  below = NULL;
  pthread_mutex_unlock (&lock);
}

/* Every connection shares the encoder: nothing per connection. */
static int handle;

static void *
qcow2enc_open (nbdkit_next_open *next, nbdkit_context *context,
               int readonly, const char *exportname, int is_tls)
{
  /* next is not called: connections read through the shared context
   * only (nbdkit-filter(3) allows that when no callback of the
   * connection calls next).
   */
  if (!get_enc (nbdkit_context_get_backend (context)))
    return NULL;
  return &handle;
}

static void
qcow2enc_close (void *h)
{
}

/* The connection has no context of the plugin below, so every callback
 * nbdkit would pass down to it is answered here.
 */
static int
qcow2enc_prepare (nbdkit_next *next, void *h, int readonly)
{
  return 0;
}

static int
qcow2enc_finalize (nbdkit_next *next, void *h)
{
  return 0;
}

static int
qcow2enc_list_exports (nbdkit_next_list_exports *next,
                       nbdkit_backend *nxdata, int readonly, int is_tls,
                       struct nbdkit_exports *exports)
{
  return nbdkit_add_export (exports, "", NULL);
}

static const char *
qcow2enc_default_export (nbdkit_next_default_export *next,
                         nbdkit_backend *nxdata, int readonly, int is_tls)
{
  return "";
}

static const char *
qcow2enc_export_description (nbdkit_next *next, void *h)
{
  return "qcow2 image of the plugin below";
}

static int
qcow2enc_block_size (nbdkit_next *next, void *h, uint32_t *minimum,
                     uint32_t *preferred, uint32_t *maximum)
{
  /* Any byte range; whole clusters are what the encoder does best. */
  *minimum = 1;
  *preferred = opts.cluster_size ? opts.cluster_size : 65536;
  if (*preferred < 4096)
    *preferred = 4096;
  *maximum = 0xffffffff;
  return 0;
}

static int64_t
qcow2enc_get_size (nbdkit_next *next, void *h)
{
  return qc_enc_size (enc);
}

static int
qcow2enc_false (nbdkit_next *next, void *h)
{
  return 0;
}

static int
qcow2enc_true (nbdkit_next *next, void *h)
{
  return 1;
}

static int
qcow2enc_can_fua (nbdkit_next *next, void *h)
{
  return NBDKIT_FUA_NONE;
}

static int
qcow2enc_can_cache (nbdkit_next *next, void *h)
{
  return NBDKIT_CACHE_NONE;
}

static int
qcow2enc_pread (nbdkit_next *next, void *h, void *buf, uint32_t count,
                uint64_t offset, uint32_t flags, int *err)
{
  if (qc_enc_pread (enc, buf, count, offset) == -1) {
    *err = errno ? errno : EIO;
    return -1;
  }
  return 0;
}

static struct nbdkit_filter filter = {
  .name = "qcow2enc",
  .longname = "nbdkit qcow2 encoding filter",
  .load = qcow2enc_load,
  .unload = qcow2enc_unload,
  .config = qcow2enc_config,
  .config_complete = qcow2enc_config_complete,
  .config_help = help,
  .get_ready = qcow2enc_get_ready,
  .after_fork = qcow2enc_after_fork,
  .cleanup = qcow2enc_cleanup,
  .open = qcow2enc_open,
  .close = qcow2enc_close,
  .prepare = qcow2enc_prepare,
  .finalize = qcow2enc_finalize,
  .list_exports = qcow2enc_list_exports,
  .default_export = qcow2enc_default_export,
  .export_description = qcow2enc_export_description,
  .block_size = qcow2enc_block_size,
  .get_size = qcow2enc_get_size,
  /* Read-only, and the same bytes for every connection. */
  .can_write = qcow2enc_false,
  .can_flush = qcow2enc_false,
  .is_rotational = qcow2enc_false,
  .can_trim = qcow2enc_false,
  .can_zero = qcow2enc_false,
  .can_fast_zero = qcow2enc_false,
  .can_extents = qcow2enc_false,
  .can_fua = qcow2enc_can_fua,
  .can_multi_conn = qcow2enc_true,
  .can_cache = qcow2enc_can_cache,
  .pread = qcow2enc_pread,
};

NBDKIT_REGISTER_FILTER (filter)
