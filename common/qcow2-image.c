/* SPDX-License-Identifier: BSD-3-Clause */
/* Opening an image: the header, the external data file, the backing
 * chain, the L1 table, the snapshot table and the L2 cache.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "qc-lock.h"
#include "qc-options.h"
#include "qcow2-crypto.h"
#include "byteorder.h"
#include "qcow2-int.h"

/* Backing chains longer than this are refused: a chain that loops back
 * on itself would otherwise open files until memory runs out.
 */
#define MAX_CHAIN_DEPTH 64

#define DEFAULT_CACHE_MAX (32ULL << 20)

static struct qc_image *image_open (const struct qc_options *opts,
                                    struct blkdev *dev, unsigned depth,
                                    const struct qc_open_file *of);

/* The default seam: local files. */
static struct blkdev *
open_local_file (void *opaque, const char *path, enum qc_open_mode mode,
                 const char *role)
{
  return mode == QC_OPEN_READONLY ? blkdev_file_open (path, true)
                                  : blkdev_file_open_upgradable (path);
}

static const struct qc_open_file local_files = { open_local_file, NULL };

/* A name from an image that qemu would take for a protocol (json:,
 * http://, nbd:...): a ':' before the first '/'.  We never interpret
 * those: they could make us open network resources or host devices.
 */
static bool
looks_like_protocol (const char *name)
{
  const char *colon = strchr (name, ':');
  const char *slash = strchr (name, '/');

  return colon && (!slash || colon < slash);
}

/* Resolve a file name stored in an image as qemu does for plain file
 * names: relative to the directory of the image that names it.  Then
 * apply referenced-files=: a hostile image can name any file the server
 * may read (/etc/shadow as a raw backing file, a device) and so expose
 * it to the client; same-dir allows only files inside the top image's
 * directory (after resolving symlinks and "..", so neither escapes),
 * none allows no file at all.
 */
static char *
resolve_name (struct qc_image *img, const struct qc_options *opts,
              const char *name, const char *what)
{
  const char *image_name = img->name;
  char *dir, *copy, *ret, *real;

  if (looks_like_protocol (name)) {
    qc_error ("%s: %s '%s' looks like a protocol or json: name; only plain "
              "file names are supported", image_name, what, name);
    errno = EINVAL;
    return NULL;
  }
  if (opts->follow == QC_FOLLOW_NONE) {
    qc_error ("%s: the image names its %s ('%s'): %sreferenced-files=none "
              "opens no file an image names", image_name, what, name,
              qc_prefix (opts));
    errno = EPERM;
    return NULL;
  }
  if (name[0] == '/' || !strchr (image_name, '/'))
    ret = strdup (name);
  else {
    copy = strdup (image_name);
    if (!copy) {
      qc_error ("%m");
      return NULL;
    }
    dir = dirname (copy);
    if (asprintf (&ret, "%s/%s", dir, name) == -1)
      ret = NULL;
    free (copy);
  }
  if (!ret) {
    qc_error ("%m");
    return NULL;
  }
  if (opts->follow != QC_FOLLOW_SAME_DIR)
    return ret;

  real = qc_follow_check (image_name, img->follow_root, name, ret, what);
  free (ret);
  return real;
}

char *
qc_follow_check (const char *image_name, const char *root, const char *name,
                 const char *path, const char *what)
{
  char *real;
  size_t n = strlen (root);

  /* The file is opened by its resolved path, the one checked. */
  real = realpath (path, NULL);
  if (!real) {
    qc_error ("%s: %s '%s': %s: %m", image_name, what, name, path);
    return NULL;
  }
  if (strncmp (real, root, n) != 0 ||
      (real[n] != '/' && !(n == 1 && root[0] == '/'))) {
    qc_error ("%s: the image's %s '%s' is %s, outside the image's "
              "directory %s (%sreferenced-files=same-dir)",
              image_name, what, name, real, root, qc_options_prefix ());
    free (real);
    errno = EPERM;
    return NULL;
  }
  return real;
}

/* referenced-files=same-dir: the directory every file named by the
 * chain must be in, that of the top image (the process's current
 * directory if the image's name has no directory, as relative names
 * are then resolved against it).
 */
static int
set_follow_root (struct qc_image *img, const struct qc_options *opts)
{
  char *copy;

  if (opts->follow != QC_FOLLOW_SAME_DIR)
    return 0;
  if (opts->follow_root)
    img->follow_root = strdup (opts->follow_root);
  else {
    copy = strdup (img->name);
    if (!copy) {
      qc_error ("%m");
      return -1;
    }
    img->follow_root = realpath (strchr (copy, '/') ? dirname (copy) : ".",
                                 NULL);
    if (!img->follow_root)
      qc_error ("%s: the directory of the image: %m", img->name);
    free (copy);
    return img->follow_root ? 0 : -1;
  }
  if (!img->follow_root) {
    qc_error ("%m");
    return -1;
  }
  return 0;
}

/* Unlock an encrypted image with the passphrase. */
static int
open_crypto (struct qc_image *img, const struct qc_options *opts,
             unsigned depth)
{
  const char *kind = img->h.crypt_method == 1 ? "legacy AES" : "LUKS";

  if (!opts->passphrase) {
    /* A backing file's passphrase comes from backing-passphrase=
     * (open_backing): name that option, not the top image's.
     */
    qc_error ("%s: the %s is encrypted (%s): give its passphrase with "
              "%s%spassphrase=", img->name,
              depth > 0 ? "backing file" : "image", kind, qc_prefix (opts),
              depth > 0 ? "backing-" : "");
    errno = EPERM;
    return -1;
  }
  if (img->h.crypt_method == 2 && !img->h.has_crypto_ext) {
    qc_error ("%s: LUKS-encrypted image without its encryption header "
              "extension", img->name);
    errno = EINVAL;
    return -1;
  }
  if (img->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
    qc_error ("%s: encrypted images with an external data file are not "
              "supported", img->name);
    errno = ENOTSUP;
    return -1;
  }
  if (opts->compress >= 0) {
    qc_error ("%s: %scompress= cannot be used with an encrypted image",
              img->name, qc_prefix (opts));
    errno = EINVAL;
    return -1;
  }
  img->crypto = qc_crypto_open (img->h.crypt_method, img->file,
                                img->h.crypto_offset, img->h.crypto_length,
                                opts->passphrase, strlen (opts->passphrase),
                                img->name);
  return img->crypto ? 0 : -1;
}

static int
open_data_file (struct qc_image *img, const struct qc_options *opts)
{
  char *path;

  if (!(img->h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)) {
    img->data = img->file;
    return 0;
  }
  path = resolve_name (img, opts, img->h.data_file, "external data file");
  if (!path)
    return -1;
  img->data = img->open_file.open (img->open_file.opaque, path,
                                   QC_OPEN_UPGRADABLE, "external data file");
  free (path);
  if (!img->data)
    return -1;
  img->external_data = true;
  /* Read locks until the image is made writable. */
  if (opts->locking && qc_lock_file (img->data, false, "external data file"))
    return -1;
  return 0;
}

static int
open_backing (struct qc_image *img, const struct qc_options *opts,
              unsigned depth)
{
  struct qc_options bopts;
  const char *name, *format;
  char *path;

  if (opts->backing_dev) {
    img->backing = opts->backing_dev;
    return 0;
  }
  if (opts->backing && strcmp (opts->backing, "none") == 0)
    return 0;
  if (opts->backing) {          /* given by the user: taken as it is */
    name = opts->backing;
    format = opts->backing_format;
    if (looks_like_protocol (name)) {
      qc_error ("%sbacking=%s: looks like a protocol or json: name; only "
                "plain file names are supported", qc_prefix (opts), name);
      errno = EINVAL;
      return -1;
    }
    path = strdup (name);
  }
  else {
    if (!img->h.backing_file)
      return 0;
    name = img->h.backing_file;
    format = img->h.backing_format;
    path = resolve_name (img, opts, name, "backing file");
  }
  if (!path)
    return -1;
  if (format && strcmp (format, "qcow2") != 0 && strcmp (format, "raw") != 0) {
    qc_error ("%s: backing file '%s' has format '%s'; only qcow2 and raw "
              "are supported", img->name, name, format);
    free (path);
    errno = ENOTSUP;
    return -1;
  }
  if (depth + 1 >= MAX_CHAIN_DEPTH) {
    qc_error ("%s: backing chain is deeper than %d images (does it loop?)",
              img->name, MAX_CHAIN_DEPTH);
    free (path);
    errno = ELOOP;
    return -1;
  }

  qc_options_init (&bopts);
  bopts.file = path;
  bopts.format = (char *) format;   /* NULL: probe */
  bopts.readonly = true;
  bopts.cache_size = opts->cache_size;
  bopts.compressed_cache = opts->compressed_cache;
  /* Read locks on every level, as qemu takes them on a backing file
   * whose user does not share write: qemu cannot write or resize it
   * while we serve an image over it, and we refuse one it writes.
   */
  bopts.locking = opts->locking;
  bopts.passphrase = opts->backing_passphrase;
  /* ...and for the files below it: backing-passphrase= is the one
   * passphrase of every encrypted file of the backing chain.  Without
   * this, a chain of three encrypted images could not be opened at all.
   */
  bopts.backing_passphrase = opts->backing_passphrase;
  bopts.follow = opts->follow;
  bopts.follow_root = img->follow_root;
  img->backing_img = image_open (&bopts, NULL, depth + 1, &img->open_file);
  free (path);
  if (!img->backing_img)
    return -1;
  img->backing = img->backing_img->default_view;
  return 0;
}

/* A file name in the description: clients see it, so by default only
 * its last component (the server's directories are its own business);
 * description=full shows the whole path.
 */
static const char *
shown_name (const char *name, bool full)
{
  const char *slash = strrchr (name, '/');

  return full || !slash || !slash[1] ? name : slash + 1;
}

static int
make_description (struct qc_image *img, bool full)
{
  const struct qcow2_header *h = &img->h;
  const char *name = shown_name (img->name, full);
  const char *bname =
    img->backing_img ? shown_name (img->backing_img->name, full) : "";
  char *s;
  int r;

  if (img->is_raw)
    r = asprintf (&s, "raw image %s", name);
  else if (img->compress >= 0)
    r = asprintf (&s, "qcow2 v%" PRIu32 " %s, %" PRIu64 " KiB clusters, "
                  "writing %s-compressed clusters", h->version, name,
                  h->cluster_size / 1024, img->compress ? "zstd" : "zlib");
  else {
    uint64_t cs = h->cluster_size;
    r = asprintf (&s, "qcow2 v%" PRIu32 " (compat %s) %s, %" PRIu64 " %s "
                  "clusters%s%s, %s compression%s%s%s%s%s%s",
                  h->version, h->version == 2 ? "0.10" : "1.1", name,
                  cs >= 1024 ? cs / 1024 : cs, cs >= 1024 ? "KiB" : "byte",
                  h->extended_l2 ? ", extended L2" : "",
                  h->data_file ? ", external data file" : "",
                  h->compression_type == 1 ? "zstd" : "zlib",
                  img->backing_img ? ", backing " : "",
                  bname,
                  img->backing_img ? " (" : "",
                  img->backing_img ?
                  (img->backing_img->is_raw ? "raw" : "qcow2") : "",
                  img->backing_img ? ")" : "",
                  img->nr_snapshots ? ", with internal snapshots" : "");
  }
  if (r == -1) {
    qc_error ("%m");
    return -1;
  }
  img->description = s;
  return 0;
}

static uint64_t
cache_capacity (const struct qc_image *img, uint64_t bytes)
{
  const struct qcow2_header *h = &img->h;
  uint64_t per_table = h->cluster_size;
  uint64_t needed = (uint64_t) img->active.l1_size;

  if (bytes == 0) {
    /* Enough tables for the whole disk, at most 32 MiB (qemu's default). */
    bytes = needed * per_table;
    if (bytes > DEFAULT_CACHE_MAX)
      bytes = DEFAULT_CACHE_MAX;
  }
  return bytes / per_table ? bytes / per_table : 1;
}

static struct qc_image *
image_open (const struct qc_options *opts, struct blkdev *dev,
            unsigned depth, const struct qc_open_file *of)
{
  struct qc_image *img = calloc (1, sizeof *img);
  uint8_t magic[4];
  bool probe_raw;
  uint64_t *l1;

  if (!img) {
    qc_error ("%m");
    blkdev_close (dev);
    return NULL;
  }
  pthread_mutex_init (&img->lock, NULL);
  pthread_mutex_init (&img->snap_lock, NULL);
  pthread_mutex_init (&img->meta_lock, NULL);
  pthread_rwlock_init (&img->rmw_lock, NULL);
  pthread_cond_init (&img->inflight_done, NULL);
  img->open_file = *of;
  if (!dev)
    dev = of->open (of->opaque, opts->file,
                    depth > 0 ? QC_OPEN_READONLY : QC_OPEN_UPGRADABLE,
                    depth > 0 ? "backing file" : NULL);
  if (!dev)
    goto err;
  img->file = dev;
  img->name = strdup (dev->name);
  if (!img->name) {
    qc_error ("%m");
    goto err;
  }
  img->locking = opts->locking;
  img->overlap_check = opts->overlap_check;
  if (opts->locking &&
      qc_lock_file (dev, false, depth > 0 ? "backing file" : NULL) == -1)
    goto err;

  /* Format: as given, else (for backing files without a recorded
   * format) probed from the magic.
   */
  if (blkdev_pread (dev, magic, sizeof magic, 0) == -1)
    goto err;
  /* Only backing files are probed: the image itself is qcow2 unless
   * format=raw says otherwise.
   */
  probe_raw = depth > 0 && !opts->format &&
    !(dev->size >= 4 && qcow2_has_magic (magic));
  if ((opts->format && strcmp (opts->format, "raw") == 0) || probe_raw) {
    if (depth == 0 && opts->passphrase) {
      qc_error ("%s: %spassphrase= given, but a raw image is not "
                "encrypted", img->name, qc_prefix (opts));
      errno = EINVAL;
      goto err;
    }
    img->is_raw = true;
    img->data = dev;
    img->default_view = dev;
    if (make_description (img, opts->full_description) == -1)
      goto err;
    return img;
  }
  if (dev->size < 4 || !qcow2_has_magic (magic)) {
    if (opts->backing_dev)      /* an overlay: always qcow2 */
      qc_error ("%s: not a qcow2 image (no QFI\\xfb magic)", img->name);
    else
      qc_error ("%s: not a qcow2 image (no QFI\\xfb magic); use %sformat=raw "
                "to serve it as a raw image", img->name, qc_prefix (opts));
    errno = EINVAL;
    goto err;
  }
  if (qcow2_header_read (dev, &img->h) == -1)
    goto err;
  if (img->h.crypt_method != 0 && open_crypto (img, opts, depth) == -1)
    goto err;
  /* (With encrypt=luks the passphrase is the new image's, and
   * create=true reports an existing image without encryption.)
   */
  if (img->h.crypt_method == 0 && depth == 0 && opts->passphrase &&
      !opts->encrypt) {
    qc_error ("%s: %spassphrase= given, but the image is not encrypted",
              img->name, qc_prefix (opts));
    errno = EINVAL;
    goto err;
  }
  if (img->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT)
    qc_debug ("%s: image is marked corrupt: serving it read-only",
              img->name);
  if (img->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)
    qc_debug ("%s: image is dirty (refcounts may be stale): serving it "
              "read-only", img->name);

  if (set_follow_root (img, opts) == -1 || open_data_file (img, opts) == -1)
    goto err;
  img->compress = opts->compress;
  img->compress_level = opts->compress_level;
  if (img->compress >= 0 && img->compress != img->h.compression_type) {
    qc_error ("%s: the image's compression type is %s: %scompress=%s "
              "needs an image created with compression-type=%s", img->name,
              img->h.compression_type ? "zstd" : "zlib", qc_prefix (opts),
              img->compress ? "zstd" : "zlib",
              img->compress ? "zstd" : "zlib");
    errno = EINVAL;
    goto err;
  }
  if (img->compress >= 0 && img->external_data) {
    qc_error ("%s: %scompress= cannot be used with an external data file",
              img->name, qc_prefix (opts));
    errno = EINVAL;
    goto err;
  }
  if (open_backing (img, opts, depth) == -1)
    goto err;
  l1 = qc_load_l1 (img, img->h.l1_table_offset, img->h.l1_size, "L1 table");
  if (!l1)
    goto err;
  qc_view_init (&img->active, img, l1, img->h.l1_size, img->h.size,
                img->name);
  if (qc_snapshots_read (img) == -1)
    goto err;
  img->cache = l2cache_new (cache_capacity (img, opts->cache_size),
                            img->h.cluster_size);
  if (!img->cache)
    goto err;
  {
    uint64_t bytes = qc_compressed_cache_bytes (opts->compressed_cache,
                                                img->h.cluster_size);

    /* NULL when smaller than a cluster: off. */
    img->dcache = dcache_new (bytes, img->h.cluster_size);
    if (!img->dcache && bytes >= img->h.cluster_size)
      goto err;
  }
  img->rahead = rahead_new (QC_RAHEAD_MAX, QC_RAHEAD_WINDOWS);
  if (!img->rahead)
    goto err;
  if (qc_detect_metadata_prealloc (img, &img->metadata_prealloc) == -1)
    goto err;
  img->default_view = &img->active.dev;
  if (opts->snapshot) {
    img->default_view = qc_image_view (img, opts->snapshot);
    if (!img->default_view)
      goto err;
  }
  if (make_description (img, opts->full_description) == -1)
    goto err;
  return img;

 err:
  qc_image_close (img);
  return NULL;
}

struct qc_image *
qc_image_open (const struct qc_options *opts, struct blkdev *dev)
{
  return image_open (opts, dev, 0, &local_files);
}

struct qc_image *
qc_image_open_with (const struct qc_options *opts, struct blkdev *dev,
                    const struct qc_open_file *of)
{
  return image_open (opts, dev, 0, of ? of : &local_files);
}

void
qc_image_close (struct qc_image *img)
{
  int saved_errno = errno;

  if (!img)
    return;
  if (img->writable && !img->is_raw) {
    /* Clean shutdown: everything on disk, every free applied. */
    pthread_mutex_lock (&img->meta_lock);
    if (qc_bitmaps_store (img) == -1)
      qc_error ("%s: the persistent bitmaps could not be written back: "
                "they stay marked in use", img->name);
    if (qc_flush_locked (img) == 0 && qc_free_all (img) == 0)
      qc_flush_locked (img);
    pthread_mutex_unlock (&img->meta_lock);
  }
  qc_bitmaps_track_free (img);
  qc_guard_free (img);
  qc_refcount_close (img);
  qc_crypto_close (img->crypto);
  qc_snapshots_free (img);
  free (img->active.l1);
  if (img->nr_decompressed) {
    struct dcache_stats st;

    dcache_get_stats (img->dcache, &st);
    qc_debug ("%s: %" PRIu64 " compressed clusters decompressed; cache of "
              "decompressed clusters: %" PRIu64 " hits, %" PRIu64 " misses, "
              "%" PRIu64 " evictions, %" PRIu64 " invalidations",
              img->name, img->nr_decompressed, st.hits, st.misses,
              st.evictions, st.drops);
  }
  if (img->rahead) {
    struct rahead_stats rs;

    rahead_get_stats (img->rahead, &rs);
    if (rs.reads)
      qc_debug ("%s: compressed streams: %" PRIu64 " reads below (%"
                PRIu64 " bytes), %" PRIu64 " answered from read-ahead "
                "windows (%" PRIu64 " after waiting), %" PRIu64 " windows "
                "read ahead", img->name, rs.reads, rs.bytes, rs.hits,
                rs.waits, rs.ahead);
  }
  dcache_free (img->dcache);
  rahead_free (img->rahead);
  l2cache_free (img->cache);
  if (img->backing_img)
    qc_image_close (img->backing_img);
  if (img->external_data)
    blkdev_close (img->data);
  if (!img->borrowed)
    blkdev_close (img->file);
  qcow2_header_free (&img->h);
  pthread_mutex_destroy (&img->lock);
  pthread_mutex_destroy (&img->snap_lock);
  pthread_mutex_destroy (&img->meta_lock);
  pthread_rwlock_destroy (&img->rmw_lock);
  pthread_cond_destroy (&img->inflight_done);
  free (img->description);
  free (img->name);
  free (img->follow_root);
  free (img);
  errno = saved_errno;
}

struct blkdev *
qc_image_default_view (struct qc_image *img)
{
  return img->default_view;
}

size_t
qc_image_nr_snapshots (struct qc_image *img)
{
  return img->nr_snapshots;
}

const char *
qc_image_snapshot_name (struct qc_image *img, size_t i)
{
  return i < img->nr_snapshots ? img->snapshots[i].name : NULL;
}

/* The snapshot an export name chooses: by name first (export names
 * are names), then by ID; -1 if none.
 */
static int
find_snapshot (struct qc_image *img, const char *name)
{
  uint32_t i;

  for (i = 0; i < img->nr_snapshots; i++)
    if (strcmp (img->snapshots[i].name, name) == 0)
      return i;
  for (i = 0; i < img->nr_snapshots; i++)
    if (strcmp (img->snapshots[i].id, name) == 0)
      return i;
  return -1;
}

const char *
qc_image_snapshot_lookup (struct qc_image *img, const char *name)
{
  int i = find_snapshot (img, name);

  return i >= 0 ? img->snapshots[i].name : NULL;
}

struct blkdev *
qc_image_view (struct qc_image *img, const char *name)
{
  struct qc_view *v;
  int i;

  if (!name || *name == '\0')
    return img->default_view;
  i = find_snapshot (img, name);
  if (i < 0) {
    qc_error ("%s: no snapshot named '%s'", img->name, name);
    errno = ENOENT;
    return NULL;
  }
  v = qc_snapshot_view (img, i);
  return v ? &v->dev : NULL;
}

const char *
qc_image_description (struct qc_image *img)
{
  return img->description;
}

uint32_t
qc_image_preferred_block (struct qc_image *img)
{
  if (img->is_raw || img->compress < 0)
    return 0;
  return img->h.cluster_size;
}
