/* Creating new qcow2 images: the same defaults and rules as qemu-img
 * create, the same layout (header, refcount table, refcount blocks, L1
 * table), and optionally preallocated metadata.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-crypto.h"
#include "qcow2-int.h"

#define EXT_BACKING_FMT   0xe2792acaU
#define EXT_FEATURE_NAMES 0x6803f857U
#define EXT_DATA_FILE     0x44415441U
#define EXT_CRYPTO        0x0537be77U
#define HEADER_LENGTH     112

#define REFUSE(...) \
  do { qc_error (__VA_ARGS__); errno = EINVAL; return -1; } while (0)

/* qemu-img rounds the virtual size up to whole 512-byte sectors (and
 * qemu reads only whole sectors): so do we.
 */
uint64_t
qc_create_size (const struct qc_options *o)
{
  return (o->size + 511) & ~511ULL;
}

int
qc_create_check (const struct qc_options *o)
{
  uint64_t cs = o->cluster_size ? o->cluster_size : 65536;
  int compat = o->compat ? o->compat : 3;

  if (o->compress >= 0 && o->compression_type >= 0 &&
      o->compress != o->compression_type)
    REFUSE ("compress=%s needs compression-type=%s",
            o->compress ? "zstd" : "zlib", o->compress ? "zstd" : "zlib");
  if (o->compress >= 0 && o->data_file)
    REFUSE ("compress= cannot be used with an external data file");
  if (o->format && strcmp (o->format, "raw") == 0)
    REFUSE ("create= makes qcow2 images only (not format=raw)");
  if (o->encrypt) {
    if (!o->passphrase)
      REFUSE ("encrypt=luks needs passphrase=");
    if (o->compress >= 0)
      REFUSE ("compress= cannot be used with encryption");
    if (o->data_file)
      REFUSE ("data-file= cannot be used with encryption");
    if (o->preallocate_metadata)
      REFUSE ("preallocation=metadata cannot be used with encryption");
  }
  if (o->size == 0 && o->create == QC_CREATE_FORCE)
    REFUSE ("create=force needs size=");
  if (cs < 512 || cs > (2 << 20) || (cs & (cs - 1)))
    REFUSE ("cluster-size=%" PRIu64 ": must be a power of two between 512 "
            "and 2M", cs);
  if (compat == 2) {
    if (o->lazy_refcounts)
      REFUSE ("lazy-refcounts needs compat=1.1");
    if (o->refcount_bits && o->refcount_bits != 16)
      REFUSE ("refcount widths other than 16 bits need compat=1.1");
    if (o->compression_type > 0 || o->compress > 0)
      REFUSE ("compression-type=zstd needs compat=1.1");
    if (o->data_file)
      REFUSE ("data-file needs compat=1.1");
    if (o->extended_l2)
      REFUSE ("extended-l2 needs compat=1.1");
  }
  if (o->extended_l2 && cs < 16384)
    REFUSE ("extended-l2 needs a cluster size of at least 16k");
  if (o->data_file_raw && !o->data_file)
    REFUSE ("data-file-raw needs data-file=");
  if (o->data_file_raw && o->backing_file)
    REFUSE ("backing-file= and data-file-raw cannot be used together");
  if (o->preallocate_metadata && o->backing_file && !o->extended_l2)
    REFUSE ("preallocation=metadata with a backing file needs "
            "extended-l2=on");
  if (o->backing_file && strlen (o->backing_file) > QCOW2_MAX_BACKING_NAME)
    REFUSE ("backing-file name is longer than 1023 bytes");
  if (o->backing_format && strcmp (o->backing_format, "qcow2") != 0 &&
      strcmp (o->backing_format, "raw") != 0)
    REFUSE ("backing-format=%s: only qcow2 and raw", o->backing_format);
  return 0;
}

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

/* Build cluster 0. */
static int
build_header (const struct qc_options *o, uint8_t *buf, uint64_t cs,
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
  put_be32 (buf + 4, compat);
  put_be32 (buf + 20, __builtin_ctzll (cs));
  put_be64 (buf + 24, qc_create_size (o));
  put_be32 (buf + 36, l1_size);
  put_be64 (buf + 40, l1_off);
  put_be64 (buf + 48, reftable_off);
  put_be32 (buf + 56, reftable_clusters);
  if (compat == 2) {
    pos = 72;
  }
  else {
    if (o->data_file) incompat |= QCOW2_INCOMPAT_DATA_FILE;
    if (ctype) incompat |= QCOW2_INCOMPAT_COMPRESSION;
    if (o->extended_l2) incompat |= QCOW2_INCOMPAT_EXTL2;
    if (o->data_file_raw) autoclear |= QCOW2_AUTOCLEAR_DATA_RAW;
    put_be64 (buf + 72, incompat);
    put_be64 (buf + 80, o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
    put_be64 (buf + 88, autoclear);
    put_be32 (buf + 96, order);
    put_be32 (buf + 100, HEADER_LENGTH);
    buf[104] = ctype;
    pos = HEADER_LENGTH;
  }

  if (o->backing_file && o->backing_format &&
      !put_ext (buf, cs, &pos, EXT_BACKING_FMT, o->backing_format,
                strlen (o->backing_format)))
    REFUSE ("backing-format= does not fit in the header cluster (%" PRIu64
            " bytes)", cs);
  if (luks_len) {
    uint8_t ext[16];
    put_be32 (buf + 32, 2);                     /* crypt_method: LUKS */
    put_be64 (ext, luks_off);
    put_be64 (ext + 8, luks_len);
    if (!put_ext (buf, cs, &pos, EXT_CRYPTO, ext, sizeof ext))
      REFUSE ("the encryption header extension does not fit in the header "
              "cluster (%" PRIu64 " bytes)", cs);
  }
  if (o->data_file) {
    if (strlen (o->data_file) > 1023)
      REFUSE ("data-file name is longer than 1023 bytes");
    if (!put_ext (buf, cs, &pos, EXT_DATA_FILE, o->data_file,
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
    (void) put_ext (buf, cs, &pos, EXT_FEATURE_NAMES, table, sizeof table);
  }
  pos += 8;                     /* end of extensions */
  if (o->backing_file) {
    size_t len = strlen (o->backing_file);
    if (pos + len > cs)
      REFUSE ("backing-file name does not fit in the header cluster");
    memcpy (buf + pos, o->backing_file, len);
    put_be64 (buf + 8, pos);
    put_be32 (buf + 16, len);
  }
  if (pos > cs)
    REFUSE ("the header does not fit in one cluster");
  return 0;
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
    REFUSE ("size=%" PRIu64 " is too large for cluster-size=%" PRIu64,
            o->size, cs);
  l1_clusters = (l1_size * 8 + cs - 1) / cs;
  if (l1_clusters == 0)
    l1_clusters = 1;
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
  if (build_header (o, buf, cs, cs, t, (1 + t + b) * cs, l1_size,
                    (1 + t + b + l1_clusters) * cs, luks_len) == -1 ||
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

static int
create_data_file (const struct qc_options *o)
{
  char *path = NULL, *copy;
  int fd, r = -1;

  if (o->data_file[0] == '/' || !strchr (o->file, '/'))
    path = strdup (o->data_file);
  else {
    copy = strdup (o->file);
    if (copy && asprintf (&path, "%.*s/%s",
                          (int) (strrchr (copy, '/') - copy), copy,
                          o->data_file) == -1)
      path = NULL;
    free (copy);
  }
  if (!path) {
    qc_error ("%m");
    return -1;
  }
  fd = open (path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd == -1)
    qc_error ("%s: %m", path);
  else if (ftruncate (fd, qc_create_size (o)) == -1)
    qc_error ("%s: truncate: %m", path);
  else
    r = 0;
  if (fd >= 0)
    close (fd);
  free (path);
  return r;
}

int
qc_image_create (const struct qc_options *o, struct blkdev *dev)
{
  struct blkdev *own = NULL;
  int r;

  if (qc_create_check (o) == -1)
    return -1;
  if (o->size == 0)
    REFUSE ("creating an image needs size=");
  if (o->size > INT64_MAX - 511)
    REFUSE ("size=%" PRIu64 " is too large", o->size);
  if (!dev) {
    int fd = open (o->file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) {
      qc_error ("%s: %m", o->file);
      return -1;
    }
    close (fd);
    own = dev = blkdev_file_open (o->file, false);
    if (!dev)
      return -1;
  }
  r = write_empty_image (o, dev);
  if (r == 0 && o->data_file && !own) {
    qc_error ("data-file= is not supported inside a container");
    errno = ENOTSUP;
    r = -1;
  }
  if (r == 0 && o->data_file)
    r = create_data_file (o);
  blkdev_close (own);
  if (r == 0 && o->preallocate_metadata) {
    struct qc_options oo = *o;
    struct qc_image *img;

    /* Open the new image and allocate everything. */
    oo.create = QC_CREATE_NO;
    oo.backing = (char *) "none";
    oo.snapshot = NULL;
    oo.format = (char *) "qcow2";
    oo.locking = false;
    img = qc_image_open (&oo, own ? NULL : dev);
    r = img ? 0 : -1;
    if (img && !own)
      img->borrowed = true;     /* the caller's device: not closed */
    if (r == 0)
      r = qc_image_make_writable (img);
    if (r == 0)
      r = qc_preallocate (img);
    qc_image_close (img);
  }
  return r;
}
