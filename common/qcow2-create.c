/* SPDX-License-Identifier: BSD-3-Clause */
/* Creating new qcow2 images: the same defaults and rules as qemu-img
 * create, the same layout (header, refcount table, refcount blocks, L1
 * table), and optionally preallocated metadata.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "byteorder.h"
#include "qc-lock.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-crypto.h"
#include "qcow2-int.h"

#define HEADER_LENGTH     112

#define REFUSE(...) \
  do { qc_error (__VA_ARGS__); errno = EINVAL; return -1; } while (0)

/* Append an extension at *pos of the header cluster (cs bytes): type,
 * length, data padded to 8 bytes.  False, writing nothing, if it and
 * the end marker do not fit: with 512-byte clusters the extensions
 * (the feature name table alone is 392 bytes) may not.
 */
static bool
put_ext (uint8_t *buf, uint64_t cs, size_t *pos, uint32_t type,
         const void *data, uint32_t len)
{
  uint64_t need = 8 + (((uint64_t) len + 7) & ~7ULL);

  if (*pos + need + 8 > cs)
    return false;
  put_be32 (buf + *pos, type);
  put_be32 (buf + *pos + 4, len);
  memcpy (buf + *pos + 8, data, len);
  *pos += need;
  return true;
}

static const struct { uint8_t type, bit; const char *name; } features[] = {
  { 0, 0, "dirty bit" },
  { 0, 1, "corrupt bit" },
  { 0, 2, "external data file" },
  { 0, 3, "compression type" },
  { 0, 4, "extended L2 entries" },
  { 1, 0, "lazy refcounts" },
  { 2, 0, "bitmaps" },
  { 2, 1, "raw external data" },
};

/* Build cluster 0 (see qcow2-int.h). */
int
qc_create_header (const struct qc_options *o, uint8_t *buf, uint64_t cs,
                  uint64_t reftable_off, uint32_t reftable_clusters,
                  uint64_t l1_off, uint32_t l1_size, uint64_t luks_off,
                  uint64_t luks_len)
{
  int compat = o->compat ? o->compat : 3;
  uint32_t refcount_bits = o->refcount_bits ? o->refcount_bits : 16;
  uint64_t incompat = 0, autoclear = 0;
  /* compress=zstd without compression-type= makes a zstd image. */
  int ctype = o->compression_type >= 0 ? o->compression_type :
    o->compress > 0 ? 1 : 0;
  size_t pos;
  unsigned order = 0, i;

  while ((1U << order) < refcount_bits)
    order++;
  memset (buf, 0, cs);
  put_be32 (buf, QCOW2_MAGIC);
  put_be32 (buf + QCOW2_HDR_VERSION, compat);
  put_be32 (buf + QCOW2_HDR_CLUSTER_BITS, __builtin_ctzll (cs));
  put_be64 (buf + QCOW2_HDR_SIZE, qc_create_size (o));
  put_be32 (buf + QCOW2_HDR_L1_SIZE, l1_size);
  put_be64 (buf + QCOW2_HDR_L1_TABLE_OFFSET, l1_off);
  put_be64 (buf + QCOW2_HDR_REFCOUNT_TABLE, reftable_off);
  put_be32 (buf + QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS, reftable_clusters);
  if (compat == 2) {
    pos = 72;
  }
  else {
    if (o->data_file) incompat |= QCOW2_INCOMPAT_DATA_FILE;
    if (ctype) incompat |= QCOW2_INCOMPAT_COMPRESSION;
    if (o->extended_l2) incompat |= QCOW2_INCOMPAT_EXTL2;
    if (o->data_file_raw) autoclear |= QCOW2_AUTOCLEAR_DATA_RAW;
    put_be64 (buf + QCOW2_HDR_INCOMPAT, incompat);
    put_be64 (buf + QCOW2_HDR_COMPAT,
              o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
    put_be64 (buf + QCOW2_HDR_AUTOCLEAR, autoclear);
    put_be32 (buf + QCOW2_HDR_REFCOUNT_ORDER, order);
    put_be32 (buf + QCOW2_HDR_HEADER_LENGTH, HEADER_LENGTH);
    buf[104] = ctype;
    pos = HEADER_LENGTH;
  }

  if (o->backing_file && o->backing_format &&
      !put_ext (buf, cs, &pos, QCOW2_EXT_BACKING_FMT, o->backing_format,
                strlen (o->backing_format)))
    REFUSE ("%sbacking-format= does not fit in the header cluster (%" PRIu64
            " bytes)", qc_prefix (o), cs);
  if (luks_len) {
    uint8_t ext[16];
    put_be32 (buf + QCOW2_HDR_CRYPT_METHOD, 2);           /* LUKS */
    put_be64 (ext, luks_off);
    put_be64 (ext + 8, luks_len);
    if (!put_ext (buf, cs, &pos, QCOW2_EXT_CRYPTO, ext, sizeof ext))
      REFUSE ("the encryption header extension does not fit in the header "
              "cluster (%" PRIu64 " bytes)", cs);
  }
  if (o->data_file) {
    if (strlen (o->data_file) > 1023)
      REFUSE ("data-file name is longer than 1023 bytes");
    if (!put_ext (buf, cs, &pos, QCOW2_EXT_DATA_FILE, o->data_file,
                  strlen (o->data_file)))
      REFUSE ("data-file name does not fit in the header cluster (%" PRIu64
              " bytes)", cs);
  }
  if (compat == 3) {
    uint8_t table[sizeof features / sizeof features[0] * 48];
    memset (table, 0, sizeof table);
    for (i = 0; i < sizeof features / sizeof features[0]; i++) {
      table[i * 48] = features[i].type;
      table[i * 48 + 1] = features[i].bit;
      memcpy (table + i * 48 + 2, features[i].name,
              strlen (features[i].name));
    }
    /* Only names for messages: left out when it does not fit, as
     * qemu-img does (512-byte clusters with any other extension).
     */
    (void) put_ext (buf, cs, &pos, QCOW2_EXT_FEATURE_NAMES, table,
                    sizeof table);
  }
  pos += 8;                     /* end of extensions */
  if (o->backing_file) {
    size_t len = strlen (o->backing_file);
    if (pos + len > cs)
      REFUSE ("backing-file name does not fit in the header cluster");
    memcpy (buf + pos, o->backing_file, len);
    put_be64 (buf + QCOW2_HDR_BACKING_FILE_OFFSET, pos);
    put_be32 (buf + QCOW2_HDR_BACKING_FILE_SIZE, len);
  }
  if (pos > cs)
    REFUSE ("the header does not fit in one cluster");
  return 0;
}

/* The largest virtual size a cluster size allows: an L1 table of at
 * most QCOW2_MAX_L1_BYTES, as qemu.
 */
static uint64_t
max_size (uint64_t cs, bool extended_l2)
{
  uint64_t max = QCOW2_MAX_L1_BYTES / 8 * cs * (cs / (extended_l2 ? 16 : 8));

  /* And a size in whole sectors that fits an off_t. */
  return max > INT64_MAX - 511 ? (INT64_MAX - 511) & ~511ULL : max;
}

/* size= too large for the cluster size: say which cluster size would
 * do, as qemu-img suggests a larger one.
 */
static int
too_large (const struct qc_options *o, uint64_t cs)
{
  const char *p = qc_prefix (o);
  char a[32], b[32], c[32], d[32];
  uint64_t bigger;

  qc_human_size (o->size, a, sizeof a);
  qc_human_size (cs, b, sizeof b);
  qc_human_size (max_size (cs, o->extended_l2), c, sizeof c);
  for (bigger = cs * 2; bigger <= (2 << 20); bigger *= 2)
    if (o->size <= max_size (bigger, o->extended_l2))
      break;
  if (bigger > (2 << 20))
    REFUSE ("%ssize=%s is too large for qcow2: at most %s with the largest "
            "cluster size (%scluster-size=2M)", p, a,
            qc_human_size (max_size (2 << 20, o->extended_l2), d, sizeof d),
            p);
  REFUSE ("%ssize=%s is too large for %scluster-size=%s%s (at most %s): "
          "use a larger cluster size, %scluster-size=%s or more", p, a, p, b,
          o->extended_l2 ? " with extended L2 entries" : "", c, p,
          qc_human_size (bigger, d, sizeof d));
}

/* Lay out and write the metadata of an empty image into dev. */
static int
write_empty_image (const struct qc_options *o, struct blkdev *dev)
{
  const uint64_t cs = o->cluster_size ? o->cluster_size : 65536;
  uint32_t refcount_bits = o->refcount_bits ? o->refcount_bits : 16;
  const uint64_t per_block = cs * 8 / refcount_bits;
  const uint64_t l2_entries = cs / (o->extended_l2 ? 16 : 8);
  const uint64_t size = qc_create_size (o);
  uint64_t l1_size, l1_clusters, t = 1, b = 1, n, i, luks_clusters = 0;
  uint8_t *buf = NULL, *luks = NULL;
  size_t luks_len = 0;
  int r = -1;

  /* Virtual size: as large as a 32 MiB L1 table allows. */
  l1_size = size / (cs * l2_entries) + (size % (cs * l2_entries) != 0);
  if (l1_size > QCOW2_MAX_L1_BYTES / 8)
    return too_large (o, cs);
  /* A 0-byte disk has no L1 table at all, as qemu-img makes it. */
  l1_clusters = (l1_size * 8 + cs - 1) / cs;
  if (o->encrypt) {
    if (qc_crypto_luks_format (o->passphrase, strlen (o->passphrase),
                               o->encrypt_iter_time ? o->encrypt_iter_time
                                                    : 2000,
                               NULL, NULL, NULL, &luks, &luks_len) == -1)
      return -1;
    luks_clusters = (luks_len + cs - 1) / cs;
  }
  /* Header, refcount table (t), refcount blocks (b), L1 table, LUKS
   * header area.
   */
  for (;;) {
    uint64_t b2, t2;
    n = 1 + t + b + l1_clusters + luks_clusters;
    b2 = (n + per_block - 1) / per_block;
    t2 = (b2 * 8 + cs - 1) / cs;
    if (b2 == b && t2 == t)
      break;
    b = b2;
    t = t2;
  }
  if ((uint64_t) n * cs > dev->size && dev->fixed_size) {
    qc_error ("%s: the container (%" PRIu64 " bytes) is too small for the "
              "image's metadata", dev->name, dev->size);
    errno = ENOSPC;
    goto out;
  }
  buf = calloc (1, cs);
  if (!buf) {
    qc_error ("%m");
    goto out;
  }
  if (qc_create_header (o, buf, cs, cs, t, l1_size ? (1 + t + b) * cs : 0,
                    l1_size, (1 + t + b + l1_clusters) * cs,
                    luks_len) == -1 ||
      blkdev_pwrite (dev, buf, cs, 0, 0) == -1)
    goto out;
  if (luks && blkdev_pwrite (dev, luks, luks_len,
                             (1 + t + b + l1_clusters) * cs, 0) == -1)
    goto out;
  /* Refcount table. */
  for (i = 0; i < t; i++) {
    uint64_t k;
    memset (buf, 0, cs);
    for (k = 0; k < cs / 8 && i * (cs / 8) + k < b; k++)
      put_be64 (buf + k * 8, (1 + t + i * (cs / 8) + k) * cs);
    if (blkdev_pwrite (dev, buf, cs, (1 + i) * cs, 0) == -1)
      goto out;
  }
  /* Refcount blocks: every metadata cluster counted once. */
  for (i = 0; i < b; i++) {
    uint64_t k;
    memset (buf, 0, cs);
    for (k = 0; k < per_block && i * per_block + k < n; k++) {
      switch (refcount_bits) {
      case 64: put_be64 (buf + k * 8, 1); break;
      case 32: put_be32 (buf + k * 4, 1); break;
      case 16: put_be16 (buf + k * 2, 1); break;
      case 8: buf[k] = 1; break;
      default: buf[k * refcount_bits / 8] |= 1 << (k * refcount_bits % 8);
      }
    }
    if (blkdev_pwrite (dev, buf, cs, (1 + t + i) * cs, 0) == -1)
      goto out;
  }
  /* An empty L1 table. */
  memset (buf, 0, cs);
  for (i = 0; i < l1_clusters; i++)
    if (blkdev_pwrite (dev, buf, cs, (1 + t + b + i) * cs, 0) == -1)
      goto out;
  r = blkdev_flush (dev);
 out:
  free (buf);
  if (luks) {
    explicit_bzero (luks, luks_len);
    free (luks);
  }
  return r;
}

/* name taken relative to dir (NULL: the current directory), as qemu
 * takes names recorded in an image relative to the image's directory.
 * malloc'ed, NULL after qc_error.
 */
static char *
relative_to (const char *dir, const char *name)
{
  char *path;

  if (name[0] == '/' || !dir)
    path = strdup (name);
  else if (asprintf (&path, "%s/%s", dir, name) == -1)
    path = NULL;
  if (!path)
    qc_error ("%m");
  return path;
}

/* The directory of path ("." if it has none); malloc'ed. */
static char *
dir_of (const char *path)
{
  const char *slash = strrchr (path, '/');
  char *dir;

  if (!slash)
    dir = strdup (".");
  else if (slash == path)
    dir = strdup ("/");
  else
    dir = strndup (path, slash - path);
  if (!dir)
    qc_error ("%m");
  return dir;
}

/* A name qemu would take for a protocol (json:, http://, nbd:): we
 * cannot look at it, qemu may.
 */
static bool
looks_like_protocol (const char *name)
{
  const char *colon = strchr (name, ':');
  const char *slash = strchr (name, '/');

  return colon && (!slash || colon < slash);
}

/* The backing file a new image will name must be there, readable, and
 * of the format backing-format= says.
 */
static int
check_backing_file (const struct qc_options *o, const char *dir)
{
  const char *p = qc_prefix (o);
  uint8_t magic[4] = { 0 };
  char *path;
  ssize_t n;
  int fd, r = -1;

  if (looks_like_protocol (o->backing_file))
    return 0;
  path = relative_to (dir, o->backing_file);
  if (!path)
    return -1;
  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    qc_error ("%sbacking-file=%s: %s: %m (the backing file of a new image "
              "must exist and be readable; a relative name is taken from "
              "the image's directory)", p, o->backing_file, path);
    goto out;
  }
  n = pread (fd, magic, sizeof magic, 0);
  if (n == -1) {
    qc_error ("%sbacking-file=%s: %s: read: %m", p, o->backing_file, path);
    goto out;
  }
  if (o->backing_format && strcmp (o->backing_format, "qcow2") == 0 &&
      !(n == 4 && qcow2_has_magic (magic))) {
    qc_error ("%sbacking-file=%s: %s is not a qcow2 image, but "
              "%sbacking-format=qcow2 says it is", p, o->backing_file, path,
              p);
    errno = EINVAL;
    goto out;
  }
  r = 0;
 out:
  if (fd >= 0)
    close (fd);
  free (path);
  return r;
}

int
qc_image_create_validate (const struct qc_options *o, struct blkdev *dev)
{
  const char *p = qc_prefix (o);
  const uint64_t cs = o->cluster_size ? o->cluster_size : 65536;
  const uint64_t l2_entries = cs / (o->extended_l2 ? 16 : 8);
  uint64_t l1_size;
  uint8_t *buf;
  int r;

  if (qc_create_check (o) == -1)
    return -1;
  if (!qc_create_size_known (o))
    REFUSE ("creating an image needs %ssize=", p);
  if (o->size > max_size (cs, o->extended_l2))
    return too_large (o, cs);
  if (o->passphrase && !o->encrypt)
    REFUSE ("%spassphrase= given, but the new image is not encrypted: add "
            "%sencrypt=luks, or drop %spassphrase=", p, p, p);
  /* The header, with every extension the image will have, fits. */
  buf = calloc (1, cs);
  if (!buf) {
    qc_error ("%m");
    return -1;
  }
  l1_size = qc_create_size (o) / (cs * l2_entries) + 1;
  r = qc_create_header (o, buf, cs, cs, 1, 3 * cs, l1_size, 4 * cs,
                    o->encrypt ? 1 : 0);
  free (buf);
  if (r == -1)
    return -1;
  if (o->backing_file && !o->backing_dev) {
    char *dir = dev ? NULL : dir_of (o->file);
    if (!dev && !dir)
      return -1;
    r = check_backing_file (o, dev ? o->follow_root : dir);
    free (dir);
    if (r == -1)
      return -1;
  }
  /* Preallocated metadata in a container: every data cluster, its L2
   * table and refcounts must fit (the rest is checked before writing).
   */
  if (dev && dev->fixed_size && o->preallocate_metadata) {
    const uint64_t per_block = cs * 8 / (o->refcount_bits ?
                                         o->refcount_bits : 16);
    uint64_t data = (qc_create_size (o) + cs - 1) / cs;
    uint64_t n = 8 + data + data / l2_entries + (l1_size * 8) / cs;
    n += n / per_block + 1 + (n / per_block * 8) / cs + 1;
    if (n > dev->size / cs) {
      qc_error ("%s: the container (%" PRIu64 " bytes) is too small for "
                "%spreallocation=metadata of %ssize=%" PRIu64 " (about %"
                PRIu64 " bytes needed)", dev->name, dev->size, p, p,
                o->size, n * cs);
      errno = ENOSPC;
      return -1;
    }
  }
  return 0;
}

/* A new file next to path, under a name of its own: O_EXCL, with the
 * mode a new file gets (0666 less the umask).  fd, or -1 after qc_error.
 */
static int
create_temp (const char *path, char **tmp)
{
  static unsigned counter;
  char *dir = dir_of (path);
  const char *base = strrchr (path, '/') ? strrchr (path, '/') + 1 : path;
  struct timespec ts;
  int i, fd = -1;

  *tmp = NULL;
  if (!dir)
    return -1;
  for (i = 0; i < 100; i++) {
    clock_gettime (CLOCK_REALTIME, &ts);
    if (asprintf (tmp, "%s/.%s.%ld-%u-%lx.tmp", dir, base, (long) getpid (),
                  __atomic_add_fetch (&counter, 1, __ATOMIC_RELAXED),
                  (unsigned long) ts.tv_nsec) == -1) {
      *tmp = NULL;
      qc_error ("%m");
      break;
    }
    fd = open (*tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) {
      if (fd == -1)
        qc_error ("%s: cannot create a file in %s: %m", path, dir);
      break;
    }
    free (*tmp);
    *tmp = NULL;
  }
  if (fd == -1) {
    free (*tmp);
    *tmp = NULL;
  }
  free (dir);
  return fd;
}

/* The external data file of a new image, under a temporary name next to
 * where it goes (*path).
 */
static int
create_data_file (const struct qc_options *o, char **path, char **tmp)
{
  char *dir = dir_of (o->file);
  int fd, r = -1;

  *tmp = NULL;
  *path = dir ? relative_to (dir, o->data_file) : NULL;
  free (dir);
  if (!*path)
    return -1;
  fd = create_temp (*path, tmp);
  if (fd == -1)
    return -1;
  if (ftruncate (fd, qc_create_size (o)) == -1)
    qc_error ("%s: truncate: %m", *tmp);
  else
    r = 0;
  close (fd);
  return r;
}

/* Allocate every cluster of the disk (preallocation=metadata), table by
 * table, and make the file cover them, as qemu leaves it.
 */
static int
allocate_all (struct qc_image *img)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  const uint64_t per_table = 1ULL << h->l2_bits;
  uint64_t nclusters = (h->size + cs - 1) / cs, c = 0;
  int r = 0;

  pthread_mutex_lock (&img->meta_lock);
  while (c < nclusters && r == 0) {
    uint64_t n = per_table - c % per_table, host, i;
    struct l2cache_entry *pin;
    uint8_t *table;

    if (n > nclusters - c)
      n = nclusters - c;
    if (qc_l2_for_write (img, c / per_table, true, &table, &pin) == -1) {
      r = -1;
      break;
    }
    if (qc_external_data (img))
      host = c * cs;
    else if (qc_alloc_clusters (img, n, &host) == -1) {
      l2cache_put (img->cache, pin);
      r = -1;
      break;
    }
    /* With extended L2 entries the subclusters stay unallocated, so a
     * backing file still shows through; otherwise they read as the
     * (sparse, zero) host clusters.
     */
    for (i = 0; i < n; i++)
      qc_store_entry (img, table, pin, c % per_table + i,
                      (host + i * cs) | QCOW2_OFLAG_COPIED, 0);
    l2cache_put (img->cache, pin);
    c += n;
    r = qc_maybe_writeback (img);
  }
  /* The file covers everything allocated, as qemu leaves it. */
  if (r == 0 && !img->file->fixed_size &&
      img->alloc_end > blkdev_size (img->file))
    r = blkdev_zero (img->file, img->alloc_end - blkdev_size (img->file),
                     blkdev_size (img->file), BLKDEV_MAY_TRIM);
  if (r == 0)
    r = qc_flush_locked (img);
  pthread_mutex_unlock (&img->meta_lock);
  return r;
}

/* Allocate everything in the new image in dev (NULL: the file path). */
static int
preallocate (const struct qc_options *o, const char *path,
             struct blkdev *dev)
{
  struct qc_options oo = *o;
  struct qc_image *img;
  int r;

  oo.file = (char *) path;
  oo.create = QC_CREATE_NO;
  oo.backing = (char *) "none";
  oo.snapshot = NULL;
  oo.format = (char *) "qcow2";
  oo.locking = false;
  img = qc_image_open (&oo, dev);
  r = img ? 0 : -1;
  if (img && dev)
    img->borrowed = true;       /* the caller's device: not closed */
  if (r == 0)
    r = qc_image_make_writable (img);
  if (r == 0)
    r = allocate_all (img);
  qc_image_close (img);
  return r;
}

/* Make the rename of a new file into dir durable. */
static void
sync_dir (const char *path)
{
  char *dir = dir_of (path);
  int fd = dir ? open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;

  if (fd >= 0) {
    fsync (fd);
    close (fd);
  }
  free (dir);
}

/* A new image file: built under a temporary name in the target
 * directory, renamed into place only when complete (over the old image
 * with create=force), removed on any failure.
 */
static int
create_file (const struct qc_options *o)
{
  char *tmp = NULL, *data_path = NULL, *data_tmp = NULL;
  bool data_existed = false, data_renamed = false;
  struct blkdev *dev;
  int fd, r = -1;

  /* Never replace an image that qemu (or another nbdkit) is using. */
  if (o->locking && (fd = open (o->file, O_RDWR | O_CLOEXEC)) >= 0) {
    int l = qc_lock_image (fd, true, o->file);
    qc_unlock_image (fd);
    close (fd);
    if (l == -1)
      return -1;
  }
  fd = create_temp (o->file, &tmp);
  if (fd == -1)
    return -1;
  close (fd);
  dev = blkdev_file_open (tmp, false);
  if (!dev)
    goto out;
  r = write_empty_image (o, dev);
  blkdev_close (dev);
  if (r == 0 && o->data_file) {
    r = create_data_file (o, &data_path, &data_tmp);
    /* The image opened for preallocation opens its data file by the
     * name it records: it must be in place first.
     */
    if (r == 0 && o->preallocate_metadata) {
      data_existed = access (data_path, F_OK) == 0;
      if (rename (data_tmp, data_path) == -1) {
        qc_error ("rename %s to %s: %m", data_tmp, data_path);
        r = -1;
      }
      else
        data_renamed = true;
    }
  }
  if (r == 0 && o->preallocate_metadata)
    r = preallocate (o, tmp, NULL);
  if (r == 0 && data_tmp && !data_renamed) {
    if (rename (data_tmp, data_path) == -1) {
      qc_error ("rename %s to %s: %m", data_tmp, data_path);
      r = -1;
    }
    else
      data_renamed = true;
  }
  if (r == 0 && rename (tmp, o->file) == -1) {
    qc_error ("rename %s to %s: %m", tmp, o->file);
    r = -1;
  }
  if (r == 0)
    sync_dir (o->file);
 out:
  if (r == -1) {
    int saved = errno;
    unlink (tmp);
    if (data_tmp && !data_renamed)
      unlink (data_tmp);
    else if (data_renamed && !data_existed)
      unlink (data_path);
    errno = saved;
  }
  free (tmp);
  free (data_tmp);
  free (data_path);
  return r;
}

int
qc_image_create (const struct qc_options *o, struct blkdev *dev)
{
  int r;

  if (qc_image_create_validate (o, dev) == -1)
    return -1;
  if (!dev)
    return create_file (o);
  if (o->data_file) {
    qc_error ("%sdata-file= is not supported inside a container",
              qc_prefix (o));
    errno = ENOTSUP;
    return -1;
  }
  r = write_empty_image (o, dev);
  if (r == 0 && o->preallocate_metadata)
    r = preallocate (o, o->file, dev);
  return r;
}

int
qc_image_check_existing (struct qc_image *img, const struct qc_options *o,
                         const char *hint)
{
  const struct qcow2_header *h = &img->h;
  const char *p = qc_prefix (o);
  char buf[64], what[160];
  bool differs = false;

#define GIVEN(key) qc_options_given (o, key)
#define DIFFERS(cond, ...)                                      \
  do {                                                          \
    if (!differs && (cond)) {                                   \
      snprintf (what, sizeof what, __VA_ARGS__);                \
      differs = true;                                           \
    }                                                           \
  } while (0)

  if (img->is_raw)
    return 0;
  DIFFERS (GIVEN ("size") && h->size != qc_create_size (o),
           "size %" PRIu64 ", not the %ssize=%" PRIu64 " asked for",
           h->size, p, qc_create_size (o));
  DIFFERS (GIVEN ("cluster-size") && h->cluster_size != o->cluster_size,
           "cluster size %" PRIu64 ", not %scluster-size=%" PRIu64,
           h->cluster_size, p, o->cluster_size);
  DIFFERS (GIVEN ("compat") && (int) h->version != o->compat,
           "compat=%s, not %scompat=%s", h->version == 2 ? "0.10" : "1.1",
           p, o->compat == 2 ? "0.10" : "1.1");
  DIFFERS (GIVEN ("refcount-bits") &&
           (1U << h->refcount_order) != o->refcount_bits,
           "%u-bit refcounts, not %srefcount-bits=%u",
           1U << h->refcount_order, p, o->refcount_bits);
  DIFFERS (GIVEN ("lazy-refcounts") &&
           !!(h->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) !=
           o->lazy_refcounts, "lazy refcounts %s, not %slazy-refcounts=%s",
           o->lazy_refcounts ? "off" : "on", p,
           o->lazy_refcounts ? "on" : "off");
  DIFFERS (GIVEN ("extended-l2") && h->extended_l2 != o->extended_l2,
           "extended L2 entries %s, not %sextended-l2=%s",
           h->extended_l2 ? "on" : "off", p,
           o->extended_l2 ? "on" : "off");
  DIFFERS (GIVEN ("compression-type") &&
           h->compression_type != o->compression_type,
           "compression type %s, not %scompression-type=%s",
           h->compression_type ? "zstd" : "zlib", p,
           o->compression_type ? "zstd" : "zlib");
  DIFFERS (GIVEN ("encrypt") && (h->crypt_method == 2) != o->encrypt,
           "%s, not %sencrypt=%s",
           h->crypt_method == 2 ? "LUKS encryption" :
           h->crypt_method == 1 ? "legacy AES encryption" : "no encryption",
           p, o->encrypt ? "luks" : "off");
  DIFFERS (GIVEN ("backing-file") &&
           (!h->backing_file || strcmp (h->backing_file, o->backing_file)),
           "%s%s%s, not %sbacking-file=%s",
           h->backing_file ? "backing file " : "no backing file",
           h->backing_file ? h->backing_file : "", "", p, o->backing_file);
  DIFFERS (GIVEN ("backing-file") && GIVEN ("backing-format") &&
           (!h->backing_format ||
            strcmp (h->backing_format, o->backing_format)),
           "backing format %s, not %sbacking-format=%s",
           h->backing_format ? h->backing_format : "(none)", p,
           o->backing_format);
  DIFFERS (GIVEN ("data-file") &&
           (!h->data_file || strcmp (h->data_file, o->data_file)),
           "%s%s, not %sdata-file=%s",
           h->data_file ? "data file " : "no external data file",
           h->data_file ? h->data_file : "", p, o->data_file);
  DIFFERS (GIVEN ("data-file-raw") &&
           !!(h->autoclear_features & QCOW2_AUTOCLEAR_DATA_RAW) !=
           o->data_file_raw, "data-file-raw %s, not %sdata-file-raw=%s",
           o->data_file_raw ? "off" : "on", p,
           o->data_file_raw ? "on" : "off");
#undef GIVEN
#undef DIFFERS
  if (!differs)
    return 0;
  if (!hint) {
    snprintf (buf, sizeof buf, "use %screate=force to replace it", p);
    hint = buf;
  }
  qc_error ("%s exists with %s; %s", img->name, what, hint);
  errno = EEXIST;
  return -1;
}
