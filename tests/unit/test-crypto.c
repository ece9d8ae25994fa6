/* SPDX-License-Identifier: BSD-3-Clause */
/* Encryption (qcow2-crypto.c) with qemu as the oracle.
 *
 * Images encrypted by qemu-img / qemu-io (LUKS with every cipher, mode,
 * IV generator and hash qemu-img makes; legacy AES) are parsed here
 * minimally (header, L1, L2, the LUKS header extension); their data
 * clusters are decrypted with qc_crypto_decrypt and compared with what
 * qemu-io wrote, and re-encrypted to the same bytes.  Clusters encrypted
 * by qc_crypto_encrypt are read back by qemu-io.  Headers made by
 * qc_crypto_luks_format are opened by us and by qemu (put into a qcow2
 * image made by qemu-img in place of its own header, and as a raw LUKS
 * volume).  Malformed headers are refused quickly.
 *
 * Not covered: aes-192 in cbc mode, which qemu-img 7.2 cannot make (it
 * aborts on key material that is not a whole number of sectors);
 * our side is tested by the format round trip.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qcow2-crypto.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)

#define PASS "abc123"
#define PASS2 "second-passphrase"
#define SECRETS "--object secret,id=sec0,data=" PASS \
  " --object secret,id=sec1,data=" PASS2

#define P(name) unit_path (unit_dir, name)

/* ------------------------------------------------ a minimal qcow2 reader */

struct img {
  uint8_t *data;
  size_t len;
  uint64_t cluster_size;
  uint32_t crypt_method;
  uint64_t luks_off, luks_len;          /* 0 if no extension */
  uint64_t l1_off;
  uint32_t l1_size;
};

static void
img_load (const char *path, struct img *im)
{
  const uint8_t *d;
  uint32_t version, hdr_len, p;

  memset (im, 0, sizeof *im);
  im->data = unit_read_file (path, &im->len);
  d = im->data;
  ck_assert (im->len >= 104);
  ck_assert (memcmp (d, "QFI\xfb", 4) == 0);
  version = unit_get_be32 (d + 4);
  im->cluster_size = 1ULL << unit_get_be32 (d + 20);
  im->crypt_method = unit_get_be32 (d + 32);
  im->l1_size = unit_get_be32 (d + 36);
  im->l1_off = unit_get_be64 (d + 40);
  hdr_len = version >= 3 ? unit_get_be32 (d + 100) : 72;
  for (p = hdr_len; p + 8 <= im->len && p < im->cluster_size;) {
    uint32_t type = unit_get_be32 (d + p), len = unit_get_be32 (d + p + 4);

    if (type == 0)
      break;
    if (type == 0x0537be77) {
      ck_assert (len >= 16);
      im->luks_off = unit_get_be64 (d + p + 8);
      im->luks_len = unit_get_be64 (d + p + 16);
    }
    p += 8 + (len + 7) / 8 * 8;
  }
}

static void
img_free (struct img *im)
{
  free (im->data);
  im->data = NULL;
}

/* Host offset of the cluster of guest offset g (0 if unallocated). */
static uint64_t
img_host (const struct img *im, uint64_t g)
{
  const uint64_t mask = 0x00fffffffffffe00ULL;
  uint64_t cs = im->cluster_size, per_l2 = cs / 8;
  uint64_t c = g / cs, l1i = c / per_l2, l2i = c % per_l2, l2, e;

  ck_assert (l1i < im->l1_size);
  ck_assert (im->l1_off + 8 * (l1i + 1) <= im->len);
  l2 = unit_get_be64 (im->data + im->l1_off + 8 * l1i) & mask;
  if (l2 == 0)
    return 0;
  ck_assert (l2 + 8 * (l2i + 1) <= im->len);
  e = unit_get_be64 (im->data + l2 + 8 * l2i);
  ck_assert_msg ((e & (1ULL << 62)) == 0, "compressed cluster");
  return e & mask;
}

/* ------------------------------------------------------------ helpers */

static struct qc_crypto *
open_luks_file (const char *path, const struct img *im, const char *pass,
                struct blkdev **devp)
{
  struct blkdev *dev = blkdev_file_open (path, true);
  struct qc_crypto *c;

  ck_assert_msg (dev != NULL, "%s", qc_last_error ());
  ck_assert (im->luks_len > 0);
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, im->luks_off, im->luks_len,
                      pass, strlen (pass), path);
  *devp = dev;
  return c;
}

/* Check that the guest range [g, g+len) of the image holds byte v
 * (decrypting every cluster), and that re-encrypting gives the same
 * bytes again.
 */
static void
check_pattern (struct qc_crypto *c, const struct img *im, uint64_t g,
               uint64_t len, int v, bool luks)
{
  uint64_t cs = im->cluster_size, off;
  uint8_t *buf = malloc (cs), *want = malloc (cs);

  ck_assert (buf && want);
  memset (want, v, cs);
  for (off = g; off < g + len; off += cs) {
    uint64_t host = img_host (im, off);

    ck_assert_msg (host != 0, "guest %" PRIu64 " not allocated", off);
    ck_assert (host + cs <= im->len);
    memcpy (buf, im->data + host, cs);
    ck_assert_msg (qc_crypto_decrypt (c, host, off, buf, cs) == 0, "%s",
                   qc_last_error ());
    unit_assert_mem_eq (buf, want, cs, luks ? "LUKS data" : "AES data");
    ck_assert (qc_crypto_encrypt (c, host, off, buf, cs) == 0);
    unit_assert_mem_eq (buf, im->data + host, cs, "re-encrypted data");
  }
  free (buf);
  free (want);
}

/* Encrypt byte v for guest cluster g at its host offset, write it into
 * the file, and have qemu-io read it back.
 */
static void
write_cluster_ours (struct qc_crypto *c, const struct img *im,
                    const char *file, const char *image_opts, uint64_t g,
                    int v)
{
  uint64_t cs = im->cluster_size, host = img_host (im, g);
  uint8_t *buf = malloc (cs);
  FILE *fp;

  ck_assert (buf && host);
  memset (buf, v, cs);
  ck_assert (qc_crypto_encrypt (c, host, g, buf, cs) == 0);
  fp = fopen (P (file), "r+b");
  ck_assert (fp != NULL);
  ck_assert (fseek (fp, host, SEEK_SET) == 0);
  ck_assert (fwrite (buf, 1, cs, fp) == cs);
  ck_assert (fclose (fp) == 0);
  free (buf);
  unit_sh ("cd '%s' && qemu-io " SECRETS " --image-opts '%s' "
           "-c 'read -P %d %" PRIu64 " %" PRIu64 "'",
           unit_dir, image_opts, v, g, cs);
}

#define QCOW2_OPTS(file, sec) \
  "driver=qcow2,file.filename=" file ",encrypt.key-secret=" sec

/* ------------------------------------------------- qemu's LUKS images */

static const struct variant {
  const char *opts;             /* added to qemu-img create -o */
  const char *mode;             /* the LUKS cipher mode it makes */
  const char *hash;
  uint32_t key_bytes;
} variants[] = {
  { "", "xts-plain64", "sha256", 64 },
  { ",encrypt.cipher-alg=aes-128,encrypt.hash-alg=sha512",
    "xts-plain64", "sha512", 32 },
  /* AES-192 XTS is not in GnuTLS: our own XTS. */
  { ",encrypt.cipher-alg=aes-192,encrypt.ivgen-alg=essiv,"
    "encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1",
    "xts-essiv:sha256", "sha1", 48 },
  { ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,"
    "encrypt.hash-alg=sha1", "cbc-plain64", "sha1", 16 },
  { ",encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,"
    "encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,"
    "encrypt.hash-alg=sha512", "cbc-essiv:sha256", "sha512", 32 },
  { ",encrypt.ivgen-alg=plain", "xts-plain", "sha256", 64 },
};

/* qemu-img's PBKDF2 benchmark sometimes fails on a loaded machine
 * ("Unable to get accurate CPU usage"; three tries were not always
 * enough in CI, next to the sanitizer builds): retry, with a pause.
 */
#define QEMU_TRIES 10
#define QEMU_RETRY(...)                                 \
  do {                                                  \
    int try_;                                           \
    for (try_ = 0; try_ < QEMU_TRIES; try_++) {         \
      if (unit_sh_status (__VA_ARGS__) == 0)            \
        break;                                          \
      usleep (200000);                                  \
    }                                                   \
    if (try_ == QEMU_TRIES)                             \
      unit_sh (__VA_ARGS__);                            \
  } while (0)

static void
make_qemu_luks (const char *file, const char *opts)
{
  QEMU_RETRY ("cd '%s' && qemu-img create -q -f qcow2 " SECRETS
              " -o encrypt.format=luks,encrypt.key-secret=sec0,"
              "encrypt.iter-time=10%s %s 4M", unit_dir, opts, file);
}

/* Several key slots (on the image of the first variant): qemu-img
 * amend adds a passphrase in slot 3, then removes slot 0.
 */
static void
check_keyslots (void)
{
  struct img im;
  struct blkdev *dev;
  struct qc_crypto *c;

  QEMU_RETRY ("cd '%s' && qemu-img amend " SECRETS " --image-opts "
              QCOW2_OPTS ("img", "sec0") " -o encrypt.keyslot=3,"
              "encrypt.new-secret=sec1,encrypt.state=active,"
              "encrypt.iter-time=10", unit_dir);
  img_load (P ("img"), &im);

  c = open_luks_file (P ("img"), &im, PASS, &dev);
  ck_assert_msg (c != NULL, "%s", qc_last_error ());
  check_pattern (c, &im, 0, 128 * KiB, 7, true);
  qc_crypto_close (c);
  blkdev_close (dev);

  c = open_luks_file (P ("img"), &im, PASS2, &dev);
  ck_assert_msg (c != NULL, "%s", qc_last_error ());
  ck_assert (unit_log_has (QC_LOG_DEBUG, "key slot 3 opened"));
  check_pattern (c, &im, 0, 128 * KiB, 7, true);
  qc_crypto_close (c);
  blkdev_close (dev);
  img_free (&im);

  /* Remove slot 0: only the second passphrase opens it. */
  unit_sh ("cd '%s' && qemu-img amend " SECRETS " --image-opts "
           QCOW2_OPTS ("img", "sec1") " -o encrypt.keyslot=0,"
           "encrypt.state=inactive", unit_dir);
  img_load (P ("img"), &im);
  errno = 0;
  c = open_luks_file (P ("img"), &im, PASS, &dev);
  ck_assert (c == NULL);
  ck_assert_int_eq (errno, EPERM);
  blkdev_close (dev);
  c = open_luks_file (P ("img"), &im, PASS2, &dev);
  ck_assert_msg (c != NULL, "%s", qc_last_error ());
  check_pattern (c, &im, 0, 128 * KiB, 7, true);
  qc_crypto_close (c);
  blkdev_close (dev);
  img_free (&im);
}

START_TEST (test_qemu_luks)
{
  const struct variant *v = &variants[_i];
  struct img im;
  struct blkdev *dev;
  struct qc_crypto *c;
  const uint8_t *h;

  make_qemu_luks ("img", v->opts);
  unit_sh ("cd '%s' && qemu-io " SECRETS " --image-opts "
           QCOW2_OPTS ("img", "sec0") " -c 'write -P 7 0 1M' "
           "-c 'write -P 0x5a 3M 64k'", unit_dir);
  img_load (P ("img"), &im);
  ck_assert_uint_eq (im.crypt_method, QC_CRYPT_LUKS);
  /* The variant makes what we think it does. */
  h = im.data + im.luks_off;
  ck_assert_str_eq ((const char *) h + 40, v->mode);
  ck_assert_str_eq ((const char *) h + 72, v->hash);
  ck_assert_uint_eq (unit_get_be32 (h + 108), v->key_bytes);

  unit_log_clear ();
  c = open_luks_file (P ("img"), &im, PASS, &dev);
  ck_assert_msg (c != NULL, "open: %s", qc_last_error ());
  check_pattern (c, &im, 0, 1 * MiB, 7, true);
  check_pattern (c, &im, 3 * MiB, 64 * KiB, 0x5a, true);
  /* qemu reads what we write. */
  write_cluster_ours (c, &im, "img", QCOW2_OPTS ("img", "sec0"),
                      2 * 64 * KiB, 0x3c);
  write_cluster_ours (c, &im, "img", QCOW2_OPTS ("img", "sec0"),
                      3 * MiB, 0xc3);
  qc_crypto_close (c);

  /* A wrong passphrase. */
  unit_log_clear ();
  errno = 0;
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, im.luks_off, im.luks_len,
                      "abc124", 6, "img");
  ck_assert (c == NULL);
  ck_assert_int_eq (errno, EPERM);
  ck_assert (unit_log_has (QC_LOG_ERROR,
                           "wrong passphrase (no key slot opens with it)"));
  blkdev_close (dev);
  img_free (&im);

  if (_i == 0)
    check_keyslots ();
}
END_TEST


/* ------------------------------------------------------ legacy AES */

START_TEST (test_qemu_aes)
{
  /* The key is the first 16 bytes of the passphrase: a longer one tests
   * the truncation.
   */
  static const char *const passes[] = { "abc123", "0123456789abcdefXYZ" };
  const char *pass = passes[_i];
  struct img im;
  struct qc_crypto *c;
  char opts[256];

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 "
           "--object secret,id=s,data=%s "
           "-o encrypt.format=aes,encrypt.key-secret=s img 4M", unit_dir, pass);
  snprintf (opts, sizeof opts, "--object secret,id=s,data=%s --image-opts "
            "driver=qcow2,file.filename=img,encrypt.key-secret=s", pass);
  /* Data at guest offsets unlike their host offsets. */
  unit_sh ("cd '%s' && qemu-io %s -c 'write -P 0x5a 3M 64k' "
           "-c 'write -P 7 512k 512k'", unit_dir, opts);
  img_load (P ("img"), &im);
  ck_assert_uint_eq (im.crypt_method, QC_CRYPT_AES);

  c = qc_crypto_open (QC_CRYPT_AES, NULL, 0, 0, pass, strlen (pass), "img");
  ck_assert_msg (c != NULL, "%s", qc_last_error ());
  check_pattern (c, &im, 512 * KiB, 512 * KiB, 7, false);
  check_pattern (c, &im, 3 * MiB, 64 * KiB, 0x5a, false);
  qc_crypto_close (c);

  /* qemu reads what we write. */
  c = qc_crypto_open (QC_CRYPT_AES, NULL, 0, 0, pass, strlen (pass), "img");
  ck_assert (c != NULL);
  {
    uint64_t cs = im.cluster_size, host = img_host (&im, 3 * MiB);
    uint8_t *buf = malloc (cs);
    FILE *fp;

    memset (buf, 0x99, cs);
    ck_assert (qc_crypto_encrypt (c, host, 3 * MiB, buf, cs) == 0);
    fp = fopen (P ("img"), "r+b");
    ck_assert (fp != NULL);
    ck_assert (fseek (fp, host, SEEK_SET) == 0);
    ck_assert (fwrite (buf, 1, cs, fp) == cs);
    ck_assert (fclose (fp) == 0);
    free (buf);
    unit_sh ("cd '%s' && qemu-io %s -c 'read -P 0x99 3M 64k'", unit_dir, opts);
  }
  qc_crypto_close (c);
  img_free (&im);
}
END_TEST

/* ------------------------------------------------------- round trips */

static void
round_trip (struct qc_crypto *c, bool aes)
{
  const size_t len = 64 * KiB;
  uint8_t *orig = malloc (len), *buf = malloc (len), *buf2 = malloc (len);
  size_t i;

  ck_assert (orig && buf && buf2);
  unit_fill_random (orig, len, 42);
  memcpy (buf, orig, len);
  ck_assert (qc_crypto_encrypt (c, 1 * MiB, 5 * MiB, buf, len) == 0);
  ck_assert (memcmp (buf, orig, len) != 0);
  ck_assert (qc_crypto_decrypt (c, 1 * MiB, 5 * MiB, buf, len) == 0);
  unit_assert_mem_eq (buf, orig, len, "round trip");

  /* Same plaintext in every sector: every sector differs encrypted. */
  memset (buf, 0, len);
  ck_assert (qc_crypto_encrypt (c, 1 * MiB, 5 * MiB, buf, len) == 0);
  for (i = 512; i < len; i += 512)
    ck_assert (memcmp (buf, buf + i, 512) != 0);

  /* A sector on its own is the same as inside a bigger request, and the
   * IV base is the host offset (LUKS) or the guest offset (AES).
   */
  memcpy (buf2, buf + 4096, 512);
  memset (buf, 0, 512);
  ck_assert (qc_crypto_encrypt (c, 1 * MiB + (aes ? 0 : 4096),
                                5 * MiB + (aes ? 4096 : 0), buf, 512) == 0);
  unit_assert_mem_eq (buf, buf2, 512, "sector on its own");

  /* Unaligned requests are refused. */
  errno = 0;
  ck_assert (qc_crypto_encrypt (c, 0, 0, buf, 100) == -1);
  ck_assert_int_eq (errno, EINVAL);
  errno = 0;
  ck_assert (qc_crypto_decrypt (c, 256, 0, buf, 512) == -1);
  ck_assert_int_eq (errno, EINVAL);
  free (orig);
  free (buf);
  free (buf2);
}

START_TEST (test_round_trip_aes)
{
  struct qc_crypto *c = qc_crypto_open (QC_CRYPT_AES, NULL, 0, 0, PASS,
                                        strlen (PASS), "aes");

  ck_assert (c != NULL);
  round_trip (c, true);
  qc_crypto_close (c);
}
END_TEST

static const struct fmt {
  const char *alg, *mode, *hash;
  const char *want_mode;        /* in the header */
  uint32_t key_bytes;
  size_t len;                   /* header area */
  bool qemu;                    /* qemu can open it */
} fmts[] = {
  { NULL, NULL, NULL, "xts-plain64", 64, 2068480, true },
  { "aes-128", "xts", "sha1", "xts-plain64", 32, 1052672, true },
  { "aes-192", "xts", "sha512", "xts-plain64", 48, 1544192, true },
  { "aes-128", "cbc", "sha256", "cbc-plain64", 16, 528384, true },
  { "aes-256", "cbc-essiv:sha256", "sha1", "cbc-essiv:sha256", 32, 1052672,
    true },
  { "aes-256", "xts-plain", "sha256", "xts-plain", 64, 2068480, true },
  /* qemu 7.2 aborts on key material that is not whole sectors. */
  { "aes-192", "cbc", "sha256", "cbc-plain64", 24, 790528, false },
};

static void
format (const struct fmt *f, uint8_t **hdr, size_t *len)
{
  ck_assert_msg (qc_crypto_luks_format (PASS, strlen (PASS), 10, f->alg,
                                        f->mode, f->hash, hdr, len) == 0,
                 "format: %s", qc_last_error ());
}

START_TEST (test_format_round_trip)
{
  const struct fmt *f = &fmts[_i];
  uint8_t *hdr;
  size_t len;
  struct blkdev *dev;
  struct qc_crypto *c;

  format (f, &hdr, &len);
  ck_assert_uint_eq (len, f->len);
  ck_assert (memcmp (hdr, "LUKS\xba\xbe\0\1", 8) == 0);
  ck_assert_str_eq ((const char *) hdr + 8, "aes");
  ck_assert_str_eq ((const char *) hdr + 40, f->want_mode);
  ck_assert_str_eq ((const char *) hdr + 72, f->hash ? f->hash : "sha256");
  ck_assert_uint_eq (unit_get_be32 (hdr + 104), len / 512);
  ck_assert_uint_eq (unit_get_be32 (hdr + 108), f->key_bytes);
  ck_assert_uint_ge (unit_get_be32 (hdr + 164), 1000);
  ck_assert_uint_eq (unit_get_be32 (hdr + 208), 0x00AC71F3);
  ck_assert_uint_ge (unit_get_be32 (hdr + 208 + 4), 1000);
  ck_assert_uint_eq (unit_get_be32 (hdr + 208 + 40), 8);
  ck_assert_uint_eq (unit_get_be32 (hdr + 208 + 44), 4000);
  ck_assert_uint_eq (unit_get_be32 (hdr + 208 + 48), 0x0000DEAD);

  /* Somewhere in a bigger device. */
  {
    uint8_t *big = calloc (1, len + 8192);

    memcpy (big + 4096, hdr, len);
    dev = blkdev_memory_new (big, len + 8192, true);
    free (big);
  }
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, 4096, len, PASS, strlen (PASS),
                      "mem");
  ck_assert_msg (c != NULL, "%s", qc_last_error ());
  round_trip (c, false);
  qc_crypto_close (c);

  errno = 0;
  unit_log_clear ();
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, 4096, len, PASS "x",
                      strlen (PASS) + 1, "mem");
  ck_assert (c == NULL);
  ck_assert (errno == EPERM || errno == EACCES);
  ck_assert (unit_log_has (QC_LOG_ERROR, "wrong passphrase"));
  blkdev_close (dev);
  free (hdr);
}
END_TEST

/* A LUKS-encrypted qcow2 image with our header: an empty image made by
 * qemu-img, then (as qemu lays it out) the header area in clusters
 * after the metadata, their refcounts, crypt_method 2 and the full disk
 * encryption header extension.
 */
static void
make_image_with_header (const char *file, const uint8_t *hdr, size_t len)
{
  struct img im;
  uint8_t *d, *out;
  uint64_t cs, rt, rb, first, n, i, off, size;
  uint32_t hl;

  unit_sh ("cd '%s' && qemu-img create -q -f qcow2 %s 4M", unit_dir, file);
  img_load (P (file), &im);
  d = im.data;
  cs = im.cluster_size;
  ck_assert_uint_eq (unit_get_be32 (d + 96), 4);       /* 16-bit refcounts */
  rt = unit_get_be64 (d + 48);
  rb = unit_get_be64 (d + rt);
  ck_assert (rb != 0 && rb + cs <= im.len);
  first = (im.len + cs - 1) / cs;
  n = (len + cs - 1) / cs;
  ck_assert (first + n <= cs / 2);                     /* one refblock */
  off = first * cs;
  size = off + n * cs;
  out = calloc (1, size);
  ck_assert (out != NULL);
  memcpy (out, d, im.len);
  memcpy (out + off, hdr, len);
  for (i = first; i < first + n; i++)
    unit_put_be16 (out + rb + 2 * i, 1);
  unit_put_be32 (out + 32, QC_CRYPT_LUKS);
  hl = unit_get_be32 (d + 100);
  unit_put_be32 (out + hl, 0x0537be77);
  unit_put_be32 (out + hl + 4, 16);
  unit_put_be64 (out + hl + 8, off);
  unit_put_be64 (out + hl + 16, len);
  memset (out + hl + 24, 0, 8);                        /* end */
  unit_write_file (P (file), out, size);
  free (out);
  img_free (&im);
}

/* qemu opens our header in a qcow2 image, writes through it, and we
 * read that.
 */
START_TEST (test_format_qemu_qcow2)
{
  const struct fmt *f = &fmts[_i];
  uint8_t *hdr;
  size_t len;
  struct img im;
  struct blkdev *dev;
  struct qc_crypto *c;

  if (!f->qemu)
    return;
  format (f, &hdr, &len);
  make_image_with_header ("img", hdr, len);
  unit_sh ("cd '%s' && qemu-io " SECRETS " --image-opts "
           QCOW2_OPTS ("img", "sec0") " -c 'write -P 7 0 1M' "
           "-c 'read -P 7 0 1M'", unit_dir);
  unit_sh ("cd '%s' && qemu-img check -q " SECRETS " --image-opts "
           QCOW2_OPTS ("img", "sec0"), unit_dir);
  /* The wrong passphrase is refused by qemu too. */
  ck_assert (unit_sh_status ("cd '%s' && qemu-io " SECRETS " --image-opts "
                             QCOW2_OPTS ("img", "sec1") " -c 'read 0 1M'",
                             unit_dir) != 0);
  img_load (P ("img"), &im);
  c = open_luks_file (P ("img"), &im, PASS, &dev);
  ck_assert_msg (c != NULL, "%s", qc_last_error ());
  check_pattern (c, &im, 0, 1 * MiB, 7, true);
  write_cluster_ours (c, &im, "img", QCOW2_OPTS ("img", "sec0"), 0, 0x42);
  qc_crypto_close (c);
  blkdev_close (dev);
  img_free (&im);
  free (hdr);
}
END_TEST

/* qemu opens our header as a raw LUKS volume (its payload offset is the
 * end of the header area; the IV sector counts from the payload).
 */
START_TEST (test_format_qemu_raw)
{
  uint8_t *hdr, *file, *buf;
  size_t len, flen, i;
  struct qc_crypto *c;
  struct blkdev *dev;

  format (&fmts[0], &hdr, &len);
  flen = len + 1 * MiB;
  file = calloc (1, flen);
  ck_assert (file != NULL);
  memcpy (file, hdr, len);
  unit_write_file (P ("vol.luks"), file, flen);
  free (file);
  unit_sh ("cd '%s' && qemu-img info " SECRETS " --image-opts "
           "driver=luks,file.filename=vol.luks,key-secret=sec0 "
           "| grep -q 'virtual size: 1 MiB'", unit_dir);
  unit_sh ("cd '%s' && qemu-io " SECRETS " --image-opts "
           "driver=luks,file.filename=vol.luks,key-secret=sec0 "
           "-c 'write -P 0x11 64k 64k'", unit_dir);

  file = unit_read_file (P ("vol.luks"), &flen);
  dev = blkdev_memory_new (file, flen, true);
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, 0, len, PASS, strlen (PASS),
                      "vol.luks");
  ck_assert_msg (c != NULL, "%s", qc_last_error ());
  buf = file + len + 64 * KiB;
  ck_assert (qc_crypto_decrypt (c, 64 * KiB, 0, buf, 64 * KiB) == 0);
  for (i = 0; i < 64 * KiB; i++)
    unit_check (buf[i] == 0x11, "byte %zu is %d", i, buf[i]);
  qc_crypto_close (c);
  blkdev_close (dev);
  free (file);
  free (hdr);
}
END_TEST

/* ------------------------------------------------------------ threads */

struct thr {
  struct qc_crypto *c;
  const uint8_t *plain, *cipher;
  size_t len;
  int id;
  int bad;
};

static void *
thread_fn (void *arg)
{
  struct thr *t = arg;
  uint8_t *buf = malloc (t->len);
  int round;

  for (round = 0; round < 50 && buf; round++) {
    size_t off = ((size_t) (t->id + round) * 4096) % t->len;
    size_t n = t->len - off < 16384 ? t->len - off : 16384;

    memcpy (buf, t->plain + off, n);
    if (qc_crypto_encrypt (t->c, off, 0, buf, n) == -1 ||
        memcmp (buf, t->cipher + off, n) != 0)
      t->bad++;
    if (qc_crypto_decrypt (t->c, off, 0, buf, n) == -1 ||
        memcmp (buf, t->plain + off, n) != 0)
      t->bad++;
  }
  free (buf);
  return NULL;
}

START_TEST (test_threads)
{
  const size_t len = 256 * KiB;
  uint8_t *hdr, *plain = malloc (len), *cipher = malloc (len);
  size_t hlen;
  struct blkdev *dev;
  struct qc_crypto *c;
  pthread_t th[8];
  struct thr t[8];
  int i;

  format (&fmts[_i == 0 ? 0 : 2], &hdr, &hlen);   /* XTS, soft XTS */
  dev = blkdev_memory_new (hdr, hlen, true);
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, 0, hlen, PASS, strlen (PASS), "t");
  ck_assert_msg (c != NULL, "%s", qc_last_error ());
  unit_fill_random (plain, len, 7);
  memcpy (cipher, plain, len);
  ck_assert (qc_crypto_encrypt (c, 0, 0, cipher, len) == 0);
  for (i = 0; i < 8; i++) {
    t[i] = (struct thr) { c, plain, cipher, len, i, 0 };
    ck_assert (pthread_create (&th[i], NULL, thread_fn, &t[i]) == 0);
  }
  for (i = 0; i < 8; i++) {
    pthread_join (th[i], NULL);
    ck_assert_int_eq (t[i].bad, 0);
  }
  qc_crypto_close (c);
  blkdev_close (dev);
  free (hdr);
  free (plain);
  free (cipher);
}
END_TEST

/* ---------------------------------------------------- malformed headers */

/* Open a patched copy of a good header: the result and errno. */
static int
open_patched (const uint8_t *hdr, size_t len, size_t off, const void *bytes,
              size_t n, uint64_t hdr_len, int *err)
{
  uint8_t *copy = malloc (len);
  struct blkdev *dev;
  struct qc_crypto *c;

  ck_assert (copy != NULL);
  memcpy (copy, hdr, len);
  memcpy (copy + off, bytes, n);
  dev = blkdev_memory_new (copy, len, true);
  free (copy);
  errno = 0;
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, 0, hdr_len, PASS, strlen (PASS),
                      "bad");
  *err = errno;
  qc_crypto_close (c);
  blkdev_close (dev);
  return c ? 0 : -1;
}

START_TEST (test_malformed)
{
  uint8_t *hdr, be[4];
  size_t len;
  int err;
  struct timespec t0, t1;
  struct blkdev *dev;

  format (&fmts[0], &hdr, &len);
  clock_gettime (CLOCK_MONOTONIC, &t0);

#define REFUSED(off, bytes, n, hdr_len, want)                           \
  do {                                                                  \
    unit_log_clear ();                                                  \
    ck_assert (open_patched (hdr, len, off, bytes, n, hdr_len, &err)    \
               == -1);                                                  \
    ck_assert_msg (err == want, "errno %d, want %d (%s)", err, want,    \
                   qc_last_error ());                                   \
    ck_assert (unit_log_count (QC_LOG_ERROR) > 0);                      \
  } while (0)
#define BE32(v) (unit_put_be32 (be, v), be)

  /* Sanity: unpatched, it opens. */
  ck_assert (open_patched (hdr, len, 0, "L", 1, len, &err) == 0);
  REFUSED (0, "LUKZ", 4, len, EINVAL);                  /* magic */
  REFUSED (6, "\0\2", 2, len, ENOTSUP);                 /* LUKS2 */
  REFUSED (8, "twofish", 8, len, ENOTSUP);              /* cipher */
  REFUSED (40, "ecb\0", 4, len, ENOTSUP);               /* mode */
  REFUSED (40, "xts-benbi\0", 10, len, ENOTSUP);        /* IV generator */
  REFUSED (40, "cbc-essiv:sha1\0", 15, len, ENOTSUP);   /* no AES key */
  REFUSED (72, "md4\0", 4, len, ENOTSUP);               /* hash */
  REFUSED (108, BE32 (0), 4, len, EINVAL);              /* key bytes */
  REFUSED (108, BE32 (40), 4, len, EINVAL);             /* not AES-XTS */
  REFUSED (108, BE32 (1u << 31), 4, len, ENOTSUP);
  REFUSED (164, BE32 (0), 4, len, EINVAL);              /* mk iterations */
  REFUSED (164, BE32 (0xffffffff), 4, len, EINVAL);
  REFUSED (208, BE32 (0x12345678), 4, len, EINVAL);     /* slot state */
  REFUSED (208 + 48, BE32 (0), 4, len, EINVAL);
  REFUSED (208 + 4, BE32 (0), 4, len, EINVAL);          /* slot iterations */
  REFUSED (208 + 4, BE32 (0xffffffff), 4, len, EINVAL);
  REFUSED (208 + 44, BE32 (0), 4, len, EINVAL);         /* stripes */
  REFUSED (208 + 44, BE32 (0xffffffff), 4, len, EINVAL);
  REFUSED (208 + 44, BE32 (40000), 4, len, EINVAL);     /* past the area */
  REFUSED (208 + 40, BE32 (0), 4, len, EINVAL);         /* over the phdr */
  REFUSED (208 + 40, BE32 (0xffffffff), 4, len, EINVAL);
  REFUSED (208 + 40, BE32 (len / 512 - 400), 4, len, EINVAL);
  REFUSED (0, "L", 1, 4096 + 100000, EINVAL);           /* short area */
  REFUSED (0, "L", 1, 100, EINVAL);
  REFUSED (0, "L", 1, len + 1, EINVAL);                 /* past the end */
  REFUSED (0, "L", 1, UINT64_MAX, EINVAL);
  /* An active slot with garbage key material: just the wrong key. */
  REFUSED (4096, "garbage", 7, len, EPERM);
  /* No active slot. */
  REFUSED (208, BE32 (0xdead), 4, len, EPERM);

  /* Header offset overflow. */
  dev = blkdev_memory_new (hdr, len, true);
  errno = 0;
  ck_assert (qc_crypto_open (QC_CRYPT_LUKS, dev, UINT64_MAX - 10, len, PASS,
                             strlen (PASS), "bad") == NULL);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert (qc_crypto_open (QC_CRYPT_LUKS, NULL, 0, len, PASS,
                             strlen (PASS), "bad") == NULL);
  ck_assert (qc_crypto_open (7, dev, 0, len, PASS, strlen (PASS), "bad")
             == NULL);
  ck_assert (qc_crypto_open (QC_CRYPT_LUKS, dev, 0, len, NULL, 0, "bad")
             == NULL);
  blkdev_close (dev);

  /* None of this took long (no PBKDF2 of absurd counts). */
  clock_gettime (CLOCK_MONOTONIC, &t1);
  ck_assert_int_lt (t1.tv_sec - t0.tv_sec, 20);

  free (hdr);

  /* Bad format arguments. */
  ck_assert (qc_crypto_luks_format (PASS, 6, 10, "des", NULL, NULL,
                                    &hdr, &len) == -1);
  ck_assert (qc_crypto_luks_format (PASS, 6, 10, NULL, "ofb", NULL,
                                    &hdr, &len) == -1);
  ck_assert (qc_crypto_luks_format (PASS, 6, 10, NULL, NULL, "md5",
                                    &hdr, &len) == -1);
#undef REFUSED
#undef BE32
}
END_TEST

/* PBKDF2 iterations follow iter_time_ms. */
START_TEST (test_format_iter_time)
{
  uint8_t *h1, *h2;
  size_t len;
  uint32_t i1, i2;

  ck_assert (qc_crypto_luks_format (PASS, 6, 10, NULL, NULL, NULL,
                                    &h1, &len) == 0);
  ck_assert (qc_crypto_luks_format (PASS, 6, 200, NULL, NULL, NULL,
                                    &h2, &len) == 0);
  i1 = unit_get_be32 (h1 + 208 + 4);
  i2 = unit_get_be32 (h2 + 208 + 4);
  ck_assert_msg (i2 > 5 * (uint64_t) i1, "10 ms: %" PRIu32 ", 200 ms: %"
                 PRIu32, i1, i2);
  ck_assert_uint_ge (unit_get_be32 (h2 + 164), i2 / 8 / 2);
  free (h1);
  free (h2);
}
END_TEST

Suite *
crypto_suite (void)
{
  Suite *s = suite_create ("crypto");
  TCase *tc;

#define TC(name) \
  tc = tcase_create (name); \
  tcase_add_checked_fixture (tc, unit_dir_setup, unit_dir_teardown); \
  tcase_set_timeout (tc, UNIT_QEMU_TIMEOUT); \
  suite_add_tcase (s, tc)

  TC ("qemu-luks");
  tcase_add_loop_test (tc, test_qemu_luks, 0,
                       sizeof variants / sizeof variants[0]);

  TC ("qemu-aes");
  tcase_add_loop_test (tc, test_qemu_aes, 0, 2);

  TC ("round-trip");
  tcase_add_test (tc, test_round_trip_aes);
  tcase_add_loop_test (tc, test_format_round_trip, 0,
                       sizeof fmts / sizeof fmts[0]);
  tcase_add_loop_test (tc, test_threads, 0, 2);

  TC ("format-qemu");
  tcase_add_loop_test (tc, test_format_qemu_qcow2, 0,
                       sizeof fmts / sizeof fmts[0]);
  tcase_add_test (tc, test_format_qemu_raw);
  tcase_add_test (tc, test_format_iter_time);

  TC ("malformed");
  tcase_add_test (tc, test_malformed);
#undef TC

  return s;
}
