/* SPDX-License-Identifier: BSD-3-Clause */
/* make-luks-seeds OUTDIR
 *
 * Seeds of encrypted inputs, made by the core of the fuzz build (`make
 * luks-seeds`), whose PBKDF2 runs capped iterations and whose headers
 * record them: only such headers unlock in the fuzz targets (qemu-img's
 * have 1000 iterations or more).  All use FUZZ_PASSPHRASE.
 *
 * OUTDIR/fuzz-luks/: LUKS1 header areas from qc_crypto_luks_format, one
 * per cipher, mode, IV generator and hash combination, cut after the key
 * material of slot 0 (the other slots are disabled, their material never
 * read: smaller inputs, faster runs).
 *
 * OUTDIR/fuzz-open-read/luks-aes128-cbc.qcow2: a LUKS-encrypted qcow2
 * image (512-byte clusters) with some data.  qc_image_create makes it with
 * an aes-256-xts header area (qemu-img's choice, already a fuzz target
 * seed); that area is replaced by a cut aes-128-cbc one, for another
 * cipher and a smaller file, the clusters it no longer uses are freed in
 * the refcount block, and the data is written through the core.
 *
 * OUTDIR/fuzz-write/luks-aes128-cbc-[01]: that image behind two write
 * scripts (whole sectors, byte ranges, zeroes, a trim, a flush).
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "blkdev.h"
#include "byteorder.h"
#include "fuzz-common.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2-crypto.h"
#include "qcow2.h"

#define CS 512                          /* cluster size of the image */
#define CONTAINER (4 * 1024 * 1024)

static const char pass[] = FUZZ_PASSPHRASE;

static void
die (const char *what)
{
  fprintf (stderr, "make-luks-seeds: %s: %s\n", what, qc_last_error ());
  exit (1);
}

static void
save (const char *dir, const char *name, const uint8_t *p, size_t len)
{
  char path[4096];
  FILE *f;

  snprintf (path, sizeof path, "%s/%s", dir, name);
  f = fopen (path, "wb");
  if (!f || fwrite (p, 1, len, f) != len || fclose (f) != 0) {
    perror (path);
    exit (1);
  }
  printf ("%s (%zu bytes)\n", path, len);
}

/* The length of a header area up to the end of slot 0's key material. */
static size_t
slot0_end (const uint8_t *hdr)
{
  uint32_t key_bytes = get_be32 (hdr + 108);
  uint32_t km = get_be32 (hdr + 208 + 40);
  uint32_t stripes = get_be32 (hdr + 208 + 44);

  return (size_t) km * 512 + ((size_t) key_bytes * stripes + 511) / 512 * 512;
}

static uint8_t *
luks_area (const char *alg, const char *mode, const char *hash,
           size_t *len)
{
  uint8_t *hdr;
  size_t full;

  if (qc_crypto_luks_format (pass, strlen (pass), 1, alg, mode, hash,
                             &hdr, &full) == -1)
    die ("qc_crypto_luks_format");
  *len = slot0_end (hdr);
  return hdr;
}

/* A device over a buffer that outlives the image (which closes it). */
struct keepdev {
  struct blkdev dev;
  uint8_t *data;
};

static int
k_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  memcpy (buf, ((struct keepdev *) dev)->data + offset, count);
  return 0;
}

static int
k_pwrite (struct blkdev *dev, const void *buf, size_t count,
          uint64_t offset, unsigned flags)
{
  if (offset > dev->size || count > dev->size - offset) {
    qc_error ("keepdev: write past the end");
    errno = ENOSPC;
    return -1;
  }
  memcpy (((struct keepdev *) dev)->data + offset, buf, count);
  return 0;
}

static void
k_close (struct blkdev *dev)
{
}

static const struct blkdev_ops keep_ops = {
  .pread = k_pread, .pwrite = k_pwrite, .close = k_close,
};

/* Offset of the data of the encryption header extension in cluster 0. */
static size_t
crypto_ext (const uint8_t *img)
{
  size_t off = get_be32 (img + 100);    /* header_length (v3) */

  while (off + 8 <= CS) {
    uint32_t type = get_be32 (img + off), len = get_be32 (img + off + 4);

    if (type == 0)
      break;
    if (type == 0x0537be77)
      return off + 8;
    off += 8 + ((len + 7) & ~7u);
  }
  fprintf (stderr, "make-luks-seeds: no encryption header extension\n");
  exit (1);
}

/* One operation of a fuzz-write script (see fuzz-write.c). */
static uint8_t *
op (uint8_t *p, uint8_t opcode, uint32_t off, uint16_t len)
{
  p[0] = opcode;
  p[1] = off >> 16; p[2] = off >> 8; p[3] = off;
  p[4] = len >> 8; p[5] = len;
  return p + 6;
}

/* fuzz-write inputs over an encrypted image: [L][config][ops][image]. */
static void
write_seeds (const char *out, const char *name, const uint8_t *img,
             size_t len)
{
  char dir[4096], fname[256];
  uint8_t *buf = malloc (256 + len), *p;
  int v;

  if (!buf)
    abort ();
  snprintf (dir, sizeof dir, "%s/fuzz-write", out);
  mkdir (dir, 0755);
  for (v = 0; v < 2; v++) {
    p = buf + 1;
    *p++ = v == 0 ? 0x30 : 0x14;  /* room past the image; tiny cache */
    /* Whole sectors, then byte ranges (partial sectors: read, decrypt,
     * merge, encrypt), zeroes, a trim, a flush, a read-back.
     */
    p = op (p, 0, 0, 3);
    p = op (p, 0, 17, 8);
    p = op (p, 0 | 8, 1000, 299);
    p = op (p, 1 | 8, 8191, 2);
    p = op (p, 2, 2, 2);
    p = op (p, 3 | 8, 700, 99);
    p = op (p, 4, 16, 7);
    p = op (p, 5, 0, 0);
    p = op (p, 0 | 0x40, 40, 1);
    p = op (p, 7, 0, 63);
    buf[0] = p - buf - 1;
    memcpy (p, img, len);
    snprintf (fname, sizeof fname, "%s-%d", name, v);
    save (dir, fname, buf, p - buf + len);
  }
  free (buf);
}

static void
qcow2_seed (const char *out, const char *dir)
{
  struct keepdev k = { .dev = { .ops = &keep_ops, .name = (char *) "seed",
                                .size = CONTAINER, .fixed_size = true } };
  struct qc_options o;
  struct qc_image *img;
  struct blkdev *view;
  uint8_t *area, buf[3 * CS];
  size_t ext, len, i, end;
  uint64_t area_off, old_len, rb;

  k.data = calloc (1, CONTAINER);
  if (!k.data)
    abort ();
  qc_options_init (&o);
  o.locking = false;
  o.size = 128 * 1024;
  o.cluster_size = CS;
  o.encrypt = true;
  o.encrypt_iter_time = 1;
  o.passphrase = (char *) pass;
  if (qc_image_create (&o, &k.dev) == -1)
    die ("qc_image_create");

  /* The smaller header area, in place of the first bytes of the old. */
  ext = crypto_ext (k.data);
  area_off = get_be64 (k.data + ext);
  old_len = get_be64 (k.data + ext + 8);
  area = luks_area ("aes-128", "cbc", "sha256", &len);
  memset (k.data + area_off, 0, old_len);
  memcpy (k.data + area_off, area, len);
  put_be64 (k.data + ext + 8, len);
  free (area);

  /* Free its clusters past the new end (the area is the last thing
   * allocated; one refcount block of 16-bit entries covers 256
   * clusters, all of this image).
   */
  rb = get_be64 (k.data + get_be64 (k.data + 48));
  if (get_be32 (k.data + 96) != 4 || (area_off + old_len) / CS >= CS / 2) {
    fprintf (stderr, "make-luks-seeds: unexpected image layout\n");
    exit (1);
  }
  for (i = (area_off + len + CS - 1) / CS;
       i < (area_off + old_len + CS - 1) / CS; i++)
    put_be16 (k.data + rb + i * 2, 0);

  /* Some data, through the core (encrypted at host offsets). */
  qc_options_init (&o);
  o.locking = false;
  o.backing = (char *) "none";
  o.passphrase = (char *) pass;
  img = qc_image_open (&o, &k.dev);
  if (!img || qc_image_make_writable (img) == -1)
    die ("qc_image_open");
  view = qc_image_default_view (img);
  for (i = 0; i < sizeof buf; i++)
    buf[i] = 0x11 + i / 512;
  if (blkdev_pwrite (view, buf, CS, 0, 0) == -1 ||
      blkdev_pwrite (view, buf, 1000, 3 * CS + 100, 0) == -1 ||
      blkdev_pwrite (view, buf, 2 * CS, 16 * CS - CS / 2, 0) == -1 ||
      blkdev_zero (view, CS, 8 * CS, 0) == -1 ||
      blkdev_pwrite (view, buf, 512, view->size - 512, 0) == -1 ||
      blkdev_flush (view) == -1)
    die ("write");
  qc_image_close (img);

  /* The file ends with its last allocated cluster. */
  end = 0;
  for (i = 0; i < CS / 2; i++)
    if (get_be16 (k.data + rb + i * 2) != 0)
      end = (i + 1) * CS;
  save (dir, "luks-aes128-cbc.qcow2", k.data, end);
  write_seeds (out, "luks-aes128-cbc", k.data, end);
  free (k.data);
}

int
main (int argc, char *argv[])
{
  static const struct {
    const char *alg, *mode, *hash;
  } areas[] = {
    { "aes-256", "xts", "sha256" },     /* qemu-img's default */
    { "aes-128", "cbc", "sha256" },
    { "aes-128", "cbc-essiv:sha256", "sha1" },
    { "aes-192", "xts", "sha512" },     /* XTS from single AES blocks */
    { "aes-128", "xts", "sha384" },
    { "aes-256", "cbc-plain", "sha224" },
  };
  char dir[4096], name[256];
  const char *out = argc > 1 ? argv[1] : "seeds";
  size_t i, len;

  fuzz_init_log ();
  mkdir (out, 0755);
  snprintf (dir, sizeof dir, "%s/fuzz-luks", out);
  mkdir (dir, 0755);
  for (i = 0; i < sizeof areas / sizeof areas[0]; i++) {
    uint8_t *hdr = luks_area (areas[i].alg, areas[i].mode, areas[i].hash,
                              &len);

    snprintf (name, sizeof name, "%s-%s-%s", areas[i].alg, areas[i].mode,
              areas[i].hash);
    save (dir, name, hdr, len);
    free (hdr);
  }
  snprintf (dir, sizeof dir, "%s/fuzz-open-read", out);
  mkdir (dir, 0755);
  qcow2_seed (out, dir);
  return 0;
}
