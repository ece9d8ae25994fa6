/* SPDX-License-Identifier: BSD-3-Clause */
/* Encryption of qcow2 guest data: legacy AES and LUKS1 (see
 * qcow2-crypto.h).  Written from the qcow2 specification and the LUKS1
 * on-disk format specification (version 1.2.3).
 *
 * The ciphers come from GnuTLS.  A GnuTLS cipher handle keeps state (the
 * IV, the CBC chain), so a handle serves one request at a time: each
 * cipher keeps a pool of idle handles, a request takes one (or makes
 * one) and gives it back, so keys are scheduled once per handle, not
 * once per sector or per request.
 *
 * GnuTLS has XTS only for AES-128 and AES-256; AES-192 XTS (qemu-img
 * makes it) is done here from single AES blocks, each a one-block CBC
 * operation whose IV is the XTS tweak: CBC-encrypting P with IV T gives
 * E(P ^ T), CBC-decrypting X with IV T gives D(X) ^ T.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>

#include "blkdev.h"
#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-crypto.h"

#define SECTOR QC_CRYPTO_SECTOR_SIZE
#define AES_BLOCK 16
#define MAX_KEY 64                      /* AES-256-XTS */
#define MAX_DIGEST 64                   /* sha512 */

/* LUKS1 partition header (all integers big-endian). */
#define LUKS_MAGIC "LUKS\xba\xbe"
#define LUKS_MAGIC_LEN 6
#define LUKS_OFF_VERSION 6
#define LUKS_OFF_CIPHER_NAME 8
#define LUKS_OFF_CIPHER_MODE 40
#define LUKS_OFF_HASH_SPEC 72
#define LUKS_OFF_PAYLOAD 104
#define LUKS_OFF_KEY_BYTES 108
#define LUKS_OFF_MK_DIGEST 112
#define LUKS_OFF_MK_SALT 132
#define LUKS_OFF_MK_ITER 164
#define LUKS_OFF_UUID 168
#define LUKS_OFF_SLOTS 208
#define LUKS_NAME_LEN 32
#define LUKS_UUID_LEN 40
#define LUKS_DIGEST_LEN 20
#define LUKS_SALT_LEN 32
#define LUKS_SLOT_SIZE 48
#define LUKS_NR_SLOTS 8
#define LUKS_PHDR_SIZE (LUKS_OFF_SLOTS + LUKS_NR_SLOTS * LUKS_SLOT_SIZE)
/* In a key slot. */
#define LUKS_SLOT_OFF_ACTIVE 0
#define LUKS_SLOT_OFF_ITER 4
#define LUKS_SLOT_OFF_SALT 8
#define LUKS_SLOT_OFF_KM 40
#define LUKS_SLOT_OFF_STRIPES 44
#define LUKS_KEY_ENABLED 0x00AC71F3
#define LUKS_KEY_DISABLED 0x0000DEAD

/* Creation defaults (qemu-img's). */
#define LUKS_STRIPES 4000
#define LUKS_ALIGN_SECTORS 8            /* key material on 4096 bytes */
#define LUKS_MIN_ITER 1000
#define LUKS_DEFAULT_ITER_MS 2000

/* Key material of one slot we are willing to read: 4000 stripes of a
 * 64-byte key are 250 KiB.
 */
#define MAX_KEY_MATERIAL (16u * 1024 * 1024)

/* The fuzz build (tests/fuzz defines libFuzzer's conventional macro;
 * never a normal build) runs every PBKDF2 with at most FUZZ_ITERATIONS
 * iterations, and the headers it creates record exactly that: an input
 * asking for 100 million iterations would otherwise take minutes, and
 * a seed made with the usual thousands would make every run slow.
 * Headers made by the fuzz build open there; others (qemu-img's, with
 * 1000 iterations or more) are parsed and tried, but do not open.
 * Its headers also split the master key in 64 stripes, not
 * 4000: merging 4000 stripes costs some 8000 hash calls, milliseconds
 * per run, and makes a header area 2 MB, past the fuzzers' max_len
 * (inputs still choose any number of stripes their size holds).
 */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define FUZZ_ITERATIONS 4u
#undef LUKS_STRIPES
#define LUKS_STRIPES 64
#endif

/* ----------------------------------------------------------- ciphers */

enum chain_mode { MODE_CBC, MODE_XTS };
enum ivgen { IV_PLAIN, IV_PLAIN64, IV_ESSIV };

struct cipher_spec {
  enum chain_mode mode;
  enum ivgen ivgen;
  size_t key_len;                       /* both halves for XTS */
  /* The GnuTLS cipher of the whole key, or for soft XTS the CBC cipher
   * of each half.
   */
  gnutls_cipher_algorithm_t alg;
  bool soft_xts;
  gnutls_digest_algorithm_t essiv_hash;
  gnutls_cipher_algorithm_t essiv_alg;  /* CBC, used one block at a time */
  size_t essiv_key_len;
};

/* One set of handles, used by one request at a time. */
struct cipher_ctx {
  struct cipher_ctx *next;
  gnutls_cipher_hd_t h;                 /* data (soft XTS: key 1) */
  gnutls_cipher_hd_t tweak;             /* soft XTS: key 2, or NULL */
  gnutls_cipher_hd_t essiv;             /* or NULL */
};

/* A keyed cipher with its pool of idle handles. */
struct cipher {
  struct cipher_spec spec;
  uint8_t key[MAX_KEY];
  uint8_t essiv_key[MAX_DIGEST];
  pthread_mutex_t lock;
  struct cipher_ctx *idle;
};

struct qc_crypto {
  int method;
  struct cipher *cipher;
  char *name;
};

static const uint8_t zero_iv[AES_BLOCK];

static void
put_le32 (uint8_t *p, uint32_t v)
{
  v = htole32 (v);
  memcpy (p, &v, sizeof v);
}

static void
put_le64 (uint8_t *p, uint64_t v)
{
  v = htole64 (v);
  memcpy (p, &v, sizeof v);
}

static void
wipe (void *p, size_t len)
{
  if (p)
    gnutls_memset (p, 0, len);
}

static gnutls_cipher_algorithm_t
aes_cbc_alg (size_t key_len)
{
  switch (key_len) {
  case 16: return GNUTLS_CIPHER_AES_128_CBC;
  case 24: return GNUTLS_CIPHER_AES_192_CBC;
  case 32: return GNUTLS_CIPHER_AES_256_CBC;
  default: return GNUTLS_CIPHER_UNKNOWN;
  }
}

/* Hashes by their LUKS names. */
static const struct {
  const char *name;
  gnutls_digest_algorithm_t dig;
  gnutls_mac_algorithm_t mac;
} hashes[] = {
  { "sha1", GNUTLS_DIG_SHA1, GNUTLS_MAC_SHA1 },
  { "sha224", GNUTLS_DIG_SHA224, GNUTLS_MAC_SHA224 },
  { "sha256", GNUTLS_DIG_SHA256, GNUTLS_MAC_SHA256 },
  { "sha384", GNUTLS_DIG_SHA384, GNUTLS_MAC_SHA384 },
  { "sha512", GNUTLS_DIG_SHA512, GNUTLS_MAC_SHA512 },
};

static int
find_hash (const char *name)
{
  size_t i;

  for (i = 0; i < sizeof hashes / sizeof hashes[0]; i++)
    if (strcmp (hashes[i].name, name) == 0)
      return i;
  return -1;
}

/* Parse a LUKS cipher name and mode ("xts-plain64", "cbc-essiv:sha256")
 * for a key of key_len bytes.
 */
static int
parse_cipher (const char *cipher_name, const char *mode, size_t key_len,
              struct cipher_spec *s, const char *name)
{
  const char *dash = strchr (mode, '-');
  const char *iv;
  size_t aes_len;

  memset (s, 0, sizeof *s);
  if (strcmp (cipher_name, "aes") != 0) {
    qc_error ("%s: unsupported LUKS cipher \"%s\" (only aes)",
              name, cipher_name);
    errno = ENOTSUP;
    return -1;
  }
  if (dash == NULL) {
    qc_error ("%s: unsupported LUKS cipher mode \"%s\"", name, mode);
    errno = ENOTSUP;
    return -1;
  }
  if ((size_t) (dash - mode) == 3 && strncmp (mode, "xts", 3) == 0)
    s->mode = MODE_XTS;
  else if ((size_t) (dash - mode) == 3 && strncmp (mode, "cbc", 3) == 0)
    s->mode = MODE_CBC;
  else {
    qc_error ("%s: unsupported LUKS cipher mode \"%s\" (only xts, cbc)",
              name, mode);
    errno = ENOTSUP;
    return -1;
  }

  iv = dash + 1;
  if (strcmp (iv, "plain64") == 0)
    s->ivgen = IV_PLAIN64;
  else if (strcmp (iv, "plain") == 0)
    s->ivgen = IV_PLAIN;
  else if (strncmp (iv, "essiv:", 6) == 0) {
    int h = find_hash (iv + 6);

    if (h == -1) {
      qc_error ("%s: unsupported ESSIV hash in LUKS cipher mode \"%s\"",
                name, mode);
      errno = ENOTSUP;
      return -1;
    }
    s->ivgen = IV_ESSIV;
    s->essiv_hash = hashes[h].dig;
    s->essiv_key_len = gnutls_hash_get_len (s->essiv_hash);
    s->essiv_alg = aes_cbc_alg (s->essiv_key_len);
    if (s->essiv_alg == GNUTLS_CIPHER_UNKNOWN) {
      qc_error ("%s: LUKS cipher mode \"%s\": the ESSIV hash makes no "
                "AES key", name, mode);
      errno = ENOTSUP;
      return -1;
    }
  }
  else {
    qc_error ("%s: unsupported IV generator in LUKS cipher mode \"%s\" "
              "(only plain, plain64, essiv)", name, mode);
    errno = ENOTSUP;
    return -1;
  }

  s->key_len = key_len;
  aes_len = s->mode == MODE_XTS ? key_len / 2 : key_len;
  if ((s->mode == MODE_XTS && key_len % 2 != 0) ||
      aes_cbc_alg (aes_len) == GNUTLS_CIPHER_UNKNOWN) {
    qc_error ("%s: LUKS key of %zu bytes does not fit aes-%s",
              name, key_len, s->mode == MODE_XTS ? "xts" : "cbc");
    errno = EINVAL;
    return -1;
  }
  if (s->mode == MODE_CBC)
    s->alg = aes_cbc_alg (aes_len);
  else if (aes_len == 16)
    s->alg = GNUTLS_CIPHER_AES_128_XTS;
  else if (aes_len == 32)
    s->alg = GNUTLS_CIPHER_AES_256_XTS;
  else {
    s->alg = aes_cbc_alg (aes_len);
    s->soft_xts = true;
  }
  return 0;
}

static int
gnutls_fail (int r, const char *name, const char *what)
{
  qc_error ("%s: %s: %s", name, what, gnutls_strerror (r));
  errno = r == GNUTLS_E_MEMORY_ERROR ? ENOMEM : EIO;
  return -1;
}

/* A keyed cipher (the key is copied). */
static struct cipher *
cipher_new (const struct cipher_spec *spec, const uint8_t *key,
            const char *name)
{
  struct cipher *c = calloc (1, sizeof *c);
  int r;

  if (c == NULL) {
    qc_error ("%s: calloc: %m", name);
    return NULL;
  }
  c->spec = *spec;
  memcpy (c->key, key, spec->key_len);
  if (spec->ivgen == IV_ESSIV) {
    r = gnutls_hash_fast (spec->essiv_hash, key, spec->key_len,
                          c->essiv_key);
    if (r < 0) {
      gnutls_fail (r, name, "ESSIV key");
      wipe (c, sizeof *c);
      free (c);
      return NULL;
    }
  }
  pthread_mutex_init (&c->lock, NULL);
  return c;
}

static void
ctx_free (struct cipher_ctx *x)
{
  if (x == NULL)
    return;
  if (x->h)
    gnutls_cipher_deinit (x->h);
  if (x->tweak)
    gnutls_cipher_deinit (x->tweak);
  if (x->essiv)
    gnutls_cipher_deinit (x->essiv);
  free (x);
}

static void
cipher_free (struct cipher *c)
{
  struct cipher_ctx *x, *next;

  if (c == NULL)
    return;
  for (x = c->idle; x; x = next) {
    next = x->next;
    ctx_free (x);
  }
  pthread_mutex_destroy (&c->lock);
  wipe (c, sizeof *c);
  free (c);
}

static struct cipher_ctx *
ctx_new (struct cipher *c, const char *name)
{
  const struct cipher_spec *s = &c->spec;
  struct cipher_ctx *x = calloc (1, sizeof *x);
  gnutls_datum_t k;
  int r;

  if (x == NULL) {
    qc_error ("%s: calloc: %m", name);
    return NULL;
  }
  k.data = c->key;
  k.size = s->soft_xts ? s->key_len / 2 : s->key_len;
  r = gnutls_cipher_init (&x->h, s->alg, &k, NULL);
  if (r < 0)
    goto fail;
  if (s->soft_xts) {
    k.data = c->key + s->key_len / 2;
    r = gnutls_cipher_init (&x->tweak, s->alg, &k, NULL);
    if (r < 0)
      goto fail;
  }
  if (s->ivgen == IV_ESSIV) {
    k.data = c->essiv_key;
    k.size = s->essiv_key_len;
    r = gnutls_cipher_init (&x->essiv, s->essiv_alg, &k, NULL);
    if (r < 0)
      goto fail;
  }
  return x;

 fail:
  ctx_free (x);
  gnutls_fail (r, name, "cipher initialization");
  return NULL;
}

static struct cipher_ctx *
ctx_get (struct cipher *c, const char *name)
{
  struct cipher_ctx *x;

  pthread_mutex_lock (&c->lock);
  x = c->idle;
  if (x)
    c->idle = x->next;
  pthread_mutex_unlock (&c->lock);
  return x ? x : ctx_new (c, name);
}

static void
ctx_put (struct cipher *c, struct cipher_ctx *x)
{
  pthread_mutex_lock (&c->lock);
  x->next = c->idle;
  c->idle = x;
  pthread_mutex_unlock (&c->lock);
}

/* E(block) in place with a CBC handle: one block with a zero IV. */
static int
ecb_encrypt_block (gnutls_cipher_hd_t h, uint8_t *block)
{
  gnutls_cipher_set_iv (h, (void *) zero_iv, AES_BLOCK);
  return gnutls_cipher_encrypt (h, block, AES_BLOCK);
}

static int
make_iv (const struct cipher *c, struct cipher_ctx *x, uint64_t sector,
         uint8_t iv[AES_BLOCK])
{
  memset (iv, 0, AES_BLOCK);
  switch (c->spec.ivgen) {
  case IV_PLAIN:
    put_le32 (iv, (uint32_t) sector);
    return 0;
  case IV_PLAIN64:
    put_le64 (iv, sector);
    return 0;
  case IV_ESSIV:
    put_le64 (iv, sector);
    return ecb_encrypt_block (x->essiv, iv);
  }
  return 0;
}

/* Multiply the XTS tweak by x in GF(2^128) (little-endian). */
static void
xts_next_tweak (uint8_t t[AES_BLOCK])
{
  unsigned carry = 0, i;

  for (i = 0; i < AES_BLOCK; i++) {
    unsigned b = t[i];
    t[i] = (uint8_t) ((b << 1) | carry);
    carry = b >> 7;
  }
  if (carry)
    t[0] ^= 0x87;
}

static void
xor_block (uint8_t *dst, const uint8_t *src)
{
  size_t i;

  for (i = 0; i < AES_BLOCK; i++)
    dst[i] ^= src[i];
}

/* One sector of XTS from AES blocks.  Encryption is one block at a
 * time; decryption of the whole sector is one CBC call: with X_j =
 * C_j ^ T_j, CBC-decrypting X (IV 0) gives D(X_j) ^ X_(j-1), and
 * P_j = D(X_j) ^ T_j.
 */
static int
soft_xts_sector (struct cipher_ctx *x, bool enc, const uint8_t iv[AES_BLOCK],
                 uint8_t *p)
{
  uint8_t t[SECTOR], xs[SECTOR];
  size_t i;
  int r;

  /* The tweaks of the 32 blocks. */
  memcpy (t, iv, AES_BLOCK);
  r = ecb_encrypt_block (x->tweak, t);
  for (i = AES_BLOCK; i < SECTOR; i += AES_BLOCK) {
    memcpy (t + i, t + i - AES_BLOCK, AES_BLOCK);
    xts_next_tweak (t + i);
  }
  if (r < 0)
    goto out;

  if (enc) {
    for (i = 0; r >= 0 && i < SECTOR; i += AES_BLOCK) {
      gnutls_cipher_set_iv (x->h, t + i, AES_BLOCK);
      r = gnutls_cipher_encrypt (x->h, p + i, AES_BLOCK);   /* E(P ^ T) */
      xor_block (p + i, t + i);
    }
  }
  else {
    for (i = 0; i < SECTOR; i += AES_BLOCK)
      xor_block (p + i, t + i);
    memcpy (xs, p, SECTOR);
    gnutls_cipher_set_iv (x->h, (void *) zero_iv, AES_BLOCK);
    r = gnutls_cipher_decrypt (x->h, p, SECTOR);
    for (i = 0; i < SECTOR; i += AES_BLOCK) {
      if (i > 0)
        xor_block (p + i, xs + i - AES_BLOCK);
      xor_block (p + i, t + i);
    }
  }

 out:
  wipe (t, sizeof t);
  wipe (xs, sizeof xs);
  return r;
}

/* En/decrypt len bytes (whole sectors) in place; the first sector has IV
 * sector number sector.
 */
static int
cipher_run (struct cipher *c, bool enc, uint64_t sector, uint8_t *buf,
            size_t len, const char *name)
{
  struct cipher_ctx *x = ctx_get (c, name);
  uint8_t iv[AES_BLOCK];
  size_t off;
  int r = 0;

  if (x == NULL)
    return -1;
  for (off = 0; off < len; off += SECTOR, sector++) {
    uint8_t *p = buf + off;

    r = make_iv (c, x, sector, iv);
    if (r < 0)
      break;
    if (c->spec.soft_xts)
      r = soft_xts_sector (x, enc, iv, p);
    else {
      gnutls_cipher_set_iv (x->h, iv, AES_BLOCK);
      r = enc ? gnutls_cipher_encrypt (x->h, p, SECTOR)
        : gnutls_cipher_decrypt (x->h, p, SECTOR);
    }
    if (r < 0)
      break;
  }
  ctx_put (c, x);
  wipe (iv, sizeof iv);
  if (r < 0)
    return gnutls_fail (r, name, enc ? "encryption" : "decryption");
  return 0;
}

/* -------------------------------------------------------------- LUKS */

static int
pbkdf2 (int hash, const void *pass, size_t passlen, const uint8_t *salt,
        size_t saltlen, unsigned iter, uint8_t *out, size_t outlen,
        const char *name)
{
  /* GnuTLS wants a non-NULL key even when it is empty. */
  static uint8_t empty[1];
  gnutls_datum_t k = { passlen ? (uint8_t *) pass : empty, passlen };
  gnutls_datum_t s = { (uint8_t *) salt, saltlen };
  int r;

#ifdef FUZZ_ITERATIONS
  if (iter > FUZZ_ITERATIONS)
    iter = FUZZ_ITERATIONS;
#endif
  r = gnutls_pbkdf2 (hashes[hash].mac, &k, &s, iter, out, outlen);

  if (r < 0)
    return gnutls_fail (r, name, "PBKDF2");
  return 0;
}

/* The AF diffusion: each digest-sized piece j of buf (the last one may
 * be shorter) becomes the first bytes of hash (be32 (j) || piece).
 */
static int
af_diffuse (int hash, uint8_t *buf, size_t len, const char *name)
{
  gnutls_digest_algorithm_t dig = hashes[hash].dig;
  size_t dlen = gnutls_hash_get_len (dig), off, n;
  uint8_t in[4 + MAX_DIGEST], out[MAX_DIGEST];
  uint32_t j;
  int r = 0;

  for (j = 0, off = 0; off < len; j++, off += n) {
    n = len - off < dlen ? len - off : dlen;
    put_be32 (in, j);
    memcpy (in + 4, buf + off, n);
    r = gnutls_hash_fast (dig, in, 4 + n, out);
    if (r < 0)
      break;
    memcpy (buf + off, out, n);
  }
  wipe (in, sizeof in);
  wipe (out, sizeof out);
  if (r < 0)
    return gnutls_fail (r, name, "hash");
  return 0;
}

static void
xor_bytes (uint8_t *dst, const uint8_t *src, size_t len)
{
  size_t i;

  for (i = 0; i < len; i++)
    dst[i] ^= src[i];
}

/* Merge stripes blocks of len bytes at src into key. */
static int
af_merge (int hash, const uint8_t *src, size_t len, uint32_t stripes,
          uint8_t *key, const char *name)
{
  uint8_t d[MAX_KEY] = { 0 };
  uint32_t i;
  int r = 0;

  for (i = 0; i + 1 < stripes; i++) {
    xor_bytes (d, src + (size_t) i * len, len);
    r = af_diffuse (hash, d, len, name);
    if (r < 0)
      break;
  }
  if (r == 0) {
    memcpy (key, src + (size_t) (stripes - 1) * len, len);
    xor_bytes (key, d, len);
  }
  wipe (d, sizeof d);
  return r;
}

/* Split key (len bytes) into stripes blocks at dst. */
static int
af_split (int hash, const uint8_t *key, size_t len, uint32_t stripes,
          uint8_t *dst, const char *name)
{
  uint8_t d[MAX_KEY] = { 0 };
  uint32_t i;
  int r;

  r = gnutls_rnd (GNUTLS_RND_RANDOM, dst, (size_t) (stripes - 1) * len);
  if (r < 0)
    return gnutls_fail (r, name, "random numbers");
  for (i = 0; i + 1 < stripes; i++) {
    xor_bytes (d, dst + (size_t) i * len, len);
    r = af_diffuse (hash, d, len, name);
    if (r < 0)
      break;
  }
  if (r == 0) {
    memcpy (dst + (size_t) (stripes - 1) * len, key, len);
    xor_bytes (dst + (size_t) (stripes - 1) * len, d, len);
  }
  wipe (d, sizeof d);
  return r;
}

static bool
equal_ct (const uint8_t *a, const uint8_t *b, size_t len)
{
  uint8_t diff = 0;
  size_t i;

  for (i = 0; i < len; i++)
    diff |= a[i] ^ b[i];
  return diff == 0;
}

/* A NUL-terminated copy of a fixed-size header string. */
static void
get_str (char *dst, const uint8_t *src, size_t len)
{
  memcpy (dst, src, len);
  dst[len] = '\0';
}

/* Bytes of key material of a slot, rounded up to whole sectors. */
static size_t
km_sectors_bytes (size_t key_len, uint32_t stripes)
{
  return ((size_t) key_len * stripes + SECTOR - 1) / SECTOR * SECTOR;
}

struct luks_hdr {
  struct cipher_spec spec;
  int hash;
  size_t key_len;
  uint8_t mk_digest[LUKS_DIGEST_LEN];
  uint8_t mk_salt[LUKS_SALT_LEN];
  uint32_t mk_iter;
  struct {
    bool active;
    uint32_t iter;
    uint8_t salt[LUKS_SALT_LEN];
    uint64_t km_offset;                 /* bytes, in the header area */
    uint32_t stripes;
  } slot[LUKS_NR_SLOTS];
};

/* Parse and check the phdr of a header area of hdr_length bytes. */
static int
luks_parse (const uint8_t *p, uint64_t hdr_length, struct luks_hdr *h,
            const char *name)
{
  char cipher_name[LUKS_NAME_LEN + 1], mode[LUKS_NAME_LEN + 1];
  char hash[LUKS_NAME_LEN + 1];
  uint16_t version;
  int i;

  memset (h, 0, sizeof *h);
  if (memcmp (p, LUKS_MAGIC, LUKS_MAGIC_LEN) != 0) {
    qc_error ("%s: the encryption header is not a LUKS header (bad magic)",
              name);
    errno = EINVAL;
    return -1;
  }
  version = get_be16 (p + LUKS_OFF_VERSION);
  if (version != 1) {
    qc_error ("%s: unsupported LUKS version %" PRIu16 " (only LUKS1)",
              name, version);
    errno = ENOTSUP;
    return -1;
  }
  get_str (cipher_name, p + LUKS_OFF_CIPHER_NAME, LUKS_NAME_LEN);
  get_str (mode, p + LUKS_OFF_CIPHER_MODE, LUKS_NAME_LEN);
  get_str (hash, p + LUKS_OFF_HASH_SPEC, LUKS_NAME_LEN);
  h->key_len = get_be32 (p + LUKS_OFF_KEY_BYTES);
  if (h->key_len == 0 || h->key_len > MAX_KEY) {
    qc_error ("%s: LUKS key size %zu is not supported", name, h->key_len);
    errno = h->key_len == 0 ? EINVAL : ENOTSUP;
    return -1;
  }
  if (parse_cipher (cipher_name, mode, h->key_len, &h->spec, name) == -1)
    return -1;
  h->hash = find_hash (hash);
  if (h->hash == -1) {
    qc_error ("%s: unsupported LUKS hash \"%s\"", name, hash);
    errno = ENOTSUP;
    return -1;
  }
  memcpy (h->mk_digest, p + LUKS_OFF_MK_DIGEST, LUKS_DIGEST_LEN);
  memcpy (h->mk_salt, p + LUKS_OFF_MK_SALT, LUKS_SALT_LEN);
  h->mk_iter = get_be32 (p + LUKS_OFF_MK_ITER);
  if (h->mk_iter == 0 || h->mk_iter > QC_CRYPTO_MAX_ITERATIONS) {
    qc_error ("%s: LUKS master key digest iterations %" PRIu32
              " out of range (1 to %u)", name, h->mk_iter,
              QC_CRYPTO_MAX_ITERATIONS);
    errno = EINVAL;
    return -1;
  }

  for (i = 0; i < LUKS_NR_SLOTS; i++) {
    const uint8_t *s = p + LUKS_OFF_SLOTS + i * LUKS_SLOT_SIZE;
    uint32_t active = get_be32 (s + LUKS_SLOT_OFF_ACTIVE);
    uint64_t km, km_len;

    if (active == LUKS_KEY_DISABLED)
      continue;
    if (active != LUKS_KEY_ENABLED) {
      qc_error ("%s: LUKS key slot %d: bad state 0x%08" PRIx32,
                name, i, active);
      errno = EINVAL;
      return -1;
    }
    h->slot[i].active = true;
    h->slot[i].iter = get_be32 (s + LUKS_SLOT_OFF_ITER);
    memcpy (h->slot[i].salt, s + LUKS_SLOT_OFF_SALT, LUKS_SALT_LEN);
    h->slot[i].stripes = get_be32 (s + LUKS_SLOT_OFF_STRIPES);
    km = (uint64_t) get_be32 (s + LUKS_SLOT_OFF_KM) * SECTOR;
    h->slot[i].km_offset = km;
    if (h->slot[i].iter == 0 ||
        h->slot[i].iter > QC_CRYPTO_MAX_ITERATIONS) {
      qc_error ("%s: LUKS key slot %d: iterations %" PRIu32
                " out of range (1 to %u)", name, i, h->slot[i].iter,
                QC_CRYPTO_MAX_ITERATIONS);
      errno = EINVAL;
      return -1;
    }
    if (h->slot[i].stripes == 0 ||
        (uint64_t) h->slot[i].stripes * h->key_len > MAX_KEY_MATERIAL) {
      qc_error ("%s: LUKS key slot %d: %" PRIu32 " stripes out of range",
                name, i, h->slot[i].stripes);
      errno = EINVAL;
      return -1;
    }
    km_len = km_sectors_bytes (h->key_len, h->slot[i].stripes);
    if (km < LUKS_PHDR_SIZE || km > hdr_length ||
        km_len > hdr_length - km) {
      qc_error ("%s: LUKS key slot %d: key material [%" PRIu64 ", +%"
                PRIu64 ") outside the header area (%" PRIu64 " bytes)",
                name, i, km, km_len, hdr_length);
      errno = EINVAL;
      return -1;
    }
  }
  return 0;
}

/* Try the passphrase on slot i: 1 and the master key in mk if it opens
 * the slot, 0 if not, -1 on error.
 */
static int
luks_try_slot (struct blkdev *dev, uint64_t hdr_offset,
               const struct luks_hdr *h, int i, const char *pass,
               size_t passlen, uint8_t *mk, const char *name)
{
  size_t km_len = km_sectors_bytes (h->key_len, h->slot[i].stripes);
  uint8_t *km = malloc (km_len);
  uint8_t key[MAX_KEY], digest[LUKS_DIGEST_LEN];
  struct cipher *c = NULL;
  int r = -1;

  if (km == NULL) {
    qc_error ("%s: malloc: %m", name);
    return -1;
  }
  if (blkdev_pread (dev, km, km_len, hdr_offset + h->slot[i].km_offset) == -1)
    goto out;
  if (pbkdf2 (h->hash, pass, passlen, h->slot[i].salt, LUKS_SALT_LEN,
              h->slot[i].iter, key, h->key_len, name) == -1)
    goto out;
  c = cipher_new (&h->spec, key, name);
  if (c == NULL)
    goto out;
  /* The key material is encrypted as sectors numbered from 0. */
  if (cipher_run (c, false, 0, km, km_len, name) == -1)
    goto out;
  if (af_merge (h->hash, km, h->key_len, h->slot[i].stripes, mk, name) == -1)
    goto out;
  if (pbkdf2 (h->hash, mk, h->key_len, h->mk_salt, LUKS_SALT_LEN,
              h->mk_iter, digest, LUKS_DIGEST_LEN, name) == -1)
    goto out;
  r = equal_ct (digest, h->mk_digest, LUKS_DIGEST_LEN);
  if (r == 1)
    qc_debug ("%s: LUKS key slot %d opened", name, i);

 out:
  cipher_free (c);
  wipe (km, km_len);
  free (km);
  wipe (key, sizeof key);
  wipe (digest, sizeof digest);
  if (r != 1)
    wipe (mk, MAX_KEY);
  return r;
}

static struct cipher *
luks_open (struct blkdev *dev, uint64_t hdr_offset, uint64_t hdr_length,
           const char *pass, size_t passlen, const char *name)
{
  uint8_t phdr[LUKS_PHDR_SIZE];
  uint8_t mk[MAX_KEY];
  struct luks_hdr h;
  struct cipher *c = NULL;
  int i, r = 0;

  if (dev == NULL) {
    qc_error ("%s: LUKS: no device", name);
    errno = EINVAL;
    return NULL;
  }
  if (hdr_length < LUKS_PHDR_SIZE || hdr_offset > UINT64_MAX - hdr_length ||
      hdr_offset + hdr_length > dev->size) {
    qc_error ("%s: LUKS header area [%" PRIu64 ", +%" PRIu64 ") is too "
              "small or past the end of the file (%" PRIu64 " bytes)",
              name, hdr_offset, hdr_length, dev->size);
    errno = EINVAL;
    return NULL;
  }
  if (blkdev_pread (dev, phdr, sizeof phdr, hdr_offset) == -1)
    return NULL;
  if (luks_parse (phdr, hdr_length, &h, name) == -1)
    return NULL;

  for (i = 0; i < LUKS_NR_SLOTS; i++) {
    if (!h.slot[i].active)
      continue;
    r = luks_try_slot (dev, hdr_offset, &h, i, pass, passlen, mk, name);
    if (r != 0)
      break;
  }
  if (r == 1)
    c = cipher_new (&h.spec, mk, name);
  else if (r == 0) {
    qc_error ("%s: wrong passphrase (no key slot opens with it)", name);
    errno = EPERM;
  }
  wipe (mk, sizeof mk);
  wipe (&h, sizeof h);
  return c;
}

/* ------------------------------------------------------------ public */

struct qc_crypto *
qc_crypto_open (int method, struct blkdev *dev, uint64_t hdr_offset,
                uint64_t hdr_length, const char *passphrase, size_t passlen,
                const char *name)
{
  struct qc_crypto *c;
  int saved;

  if (name == NULL)
    name = "image";
  if (passphrase == NULL) {
    qc_error ("%s: the image is encrypted: a passphrase is needed", name);
    errno = EINVAL;
    return NULL;
  }
  c = calloc (1, sizeof *c);
  if (c == NULL || (c->name = strdup (name)) == NULL) {
    qc_error ("%s: calloc: %m", name);
    free (c);
    return NULL;
  }
  c->method = method;

  switch (method) {
  case QC_CRYPT_AES: {
    struct cipher_spec s;
    uint8_t key[16] = { 0 };

    memset (&s, 0, sizeof s);
    s.mode = MODE_CBC;
    s.ivgen = IV_PLAIN64;
    s.key_len = 16;
    s.alg = GNUTLS_CIPHER_AES_128_CBC;
    memcpy (key, passphrase, passlen < 16 ? passlen : 16);
    c->cipher = cipher_new (&s, key, name);
    wipe (key, sizeof key);
    break;
  }
  case QC_CRYPT_LUKS:
    c->cipher = luks_open (dev, hdr_offset, hdr_length, passphrase, passlen,
                           name);
    break;
  default:
    qc_error ("%s: unknown encryption method %d", name, method);
    errno = ENOTSUP;
    break;
  }

  if (c->cipher == NULL) {
    saved = errno;
    free (c->name);
    free (c);
    errno = saved;
    return NULL;
  }
  return c;
}

void
qc_crypto_close (struct qc_crypto *c)
{
  if (c == NULL)
    return;
  cipher_free (c->cipher);
  free (c->name);
  free (c);
}

static int
crypto_run (struct qc_crypto *c, bool enc, uint64_t host_offset,
            uint64_t guest_offset, uint8_t *buf, size_t len)
{
  uint64_t base = c->method == QC_CRYPT_AES ? guest_offset : host_offset;

  if (len % SECTOR != 0 || host_offset % SECTOR != 0 ||
      guest_offset % SECTOR != 0) {
    qc_error ("%s: %s of %zu bytes at host offset %" PRIu64 " (guest %"
              PRIu64 ") is not sector-aligned", c->name,
              enc ? "encryption" : "decryption", len, host_offset,
              guest_offset);
    errno = EINVAL;
    return -1;
  }
  return cipher_run (c->cipher, enc, base / SECTOR, buf, len, c->name);
}

int
qc_crypto_decrypt (struct qc_crypto *c, uint64_t host_offset,
                   uint64_t guest_offset, uint8_t *buf, size_t len)
{
  return crypto_run (c, false, host_offset, guest_offset, buf, len);
}

int
qc_crypto_encrypt (struct qc_crypto *c, uint64_t host_offset,
                   uint64_t guest_offset, uint8_t *buf, size_t len)
{
  return crypto_run (c, true, host_offset, guest_offset, buf, len);
}

/* ------------------------------------------------------ LUKS format */

static uint64_t
thread_cpu_ns (void)
{
  struct timespec ts;

  if (clock_gettime (CLOCK_THREAD_CPUTIME_ID, &ts) == -1 &&
      clock_gettime (CLOCK_MONOTONIC, &ts) == -1)
    return 0;
  return (uint64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* PBKDF2 iterations per second of hash, for an output of one digest. */
static int
pbkdf2_rate (int hash, const char *pass, size_t passlen, uint64_t *rate,
             const char *name)
{
  const uint64_t min_ns = 25000000;     /* measure at least 25 ms */
  uint8_t salt[LUKS_SALT_LEN] = { 0 }, out[MAX_DIGEST];
  size_t dlen = gnutls_hash_get_len (hashes[hash].dig);
  uint64_t iter = 1024, t0, ns;

  for (;;) {
    t0 = thread_cpu_ns ();
    if (pbkdf2 (hash, pass, passlen, salt, sizeof salt, iter, out, dlen,
                name) == -1)
      return -1;
    ns = thread_cpu_ns () - t0;
    if (ns >= min_ns || iter >= (1u << 30))
      break;
    /* Aim a little past the minimum at once when far below it. */
    if (ns < min_ns / 16)
      iter *= 16;
    else
      iter *= 2;
  }
  wipe (out, sizeof out);
  if (ns == 0)
    ns = 1;
  *rate = iter * 1000000000 / ns;
  if (*rate == 0)
    *rate = 1;
  return 0;
}

static uint32_t
clamp_iter (uint64_t n)
{
#ifdef FUZZ_ITERATIONS
  return FUZZ_ITERATIONS;       /* what pbkdf2 () really runs there */
#endif
  if (n < LUKS_MIN_ITER)
    return LUKS_MIN_ITER;
  if (n > QC_CRYPTO_MAX_ITERATIONS)
    return QC_CRYPTO_MAX_ITERATIONS;
  return n;
}

/* A random (version 4) UUID in its text form. */
static int
make_uuid (char out[37], const char *name)
{
  uint8_t u[16];
  int r = gnutls_rnd (GNUTLS_RND_NONCE, u, sizeof u);

  if (r < 0)
    return gnutls_fail (r, name, "random numbers");
  u[6] = (u[6] & 0x0f) | 0x40;
  u[8] = (u[8] & 0x3f) | 0x80;
  snprintf (out, 37,
            "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
            "%02x%02x%02x%02x%02x%02x",
            u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9],
            u[10], u[11], u[12], u[13], u[14], u[15]);
  return 0;
}

int
qc_crypto_luks_format (const char *passphrase, size_t passlen,
                       unsigned iter_time_ms, const char *cipher_alg,
                       const char *cipher_mode, const char *hash,
                       uint8_t **hdr, size_t *len)
{
  const char *name = "LUKS format";
  char mode[LUKS_NAME_LEN + 1], uuid[37];
  struct cipher_spec spec;
  struct cipher *c = NULL;
  uint8_t mk[MAX_KEY], key[MAX_KEY], salt[LUKS_SALT_LEN];
  uint8_t digest[LUKS_DIGEST_LEN];
  uint8_t *buf = NULL, *p;
  size_t aes_len, key_len, km_len, stride, total, dlen, blocks;
  uint64_t rate;
  uint32_t slot_iter, mk_iter;
  int h, i, r;

  *hdr = NULL;
  *len = 0;
  if (passphrase == NULL) {
    qc_error ("%s: a passphrase is needed", name);
    errno = EINVAL;
    return -1;
  }
  if (cipher_alg == NULL)
    cipher_alg = "aes-256";
  if (cipher_mode == NULL)
    cipher_mode = "xts";
  if (hash == NULL)
    hash = "sha256";
  if (iter_time_ms == 0)
    iter_time_ms = LUKS_DEFAULT_ITER_MS;

  if (strcmp (cipher_alg, "aes-128") == 0)
    aes_len = 16;
  else if (strcmp (cipher_alg, "aes-192") == 0)
    aes_len = 24;
  else if (strcmp (cipher_alg, "aes-256") == 0 ||
           strcmp (cipher_alg, "aes") == 0)
    aes_len = 32;
  else {
    qc_error ("%s: unsupported cipher \"%s\" (aes-128, aes-192, aes-256)",
              name, cipher_alg);
    errno = ENOTSUP;
    return -1;
  }
  if (strchr (cipher_mode, '-') == NULL) {
    if (strlen (cipher_mode) > LUKS_NAME_LEN - 8) {
      qc_error ("%s: unsupported cipher mode \"%s\"", name, cipher_mode);
      errno = ENOTSUP;
      return -1;
    }
    snprintf (mode, sizeof mode, "%s-plain64", cipher_mode);
  }
  else if (strlen (cipher_mode) < sizeof mode)
    strcpy (mode, cipher_mode);
  else {
    qc_error ("%s: cipher mode \"%s\" is too long", name, cipher_mode);
    errno = EINVAL;
    return -1;
  }
  key_len = strncmp (mode, "xts-", 4) == 0 ? 2 * aes_len : aes_len;
  if (parse_cipher ("aes", mode, key_len, &spec, name) == -1)
    return -1;
  h = find_hash (hash);
  if (h == -1) {
    qc_error ("%s: unsupported hash \"%s\"", name, hash);
    errno = ENOTSUP;
    return -1;
  }
  dlen = gnutls_hash_get_len (hashes[h].dig);

  /* Iterations: an output of key_len bytes costs this many blocks. */
  if (pbkdf2_rate (h, passphrase, passlen, &rate, name) == -1)
    return -1;
  blocks = (key_len + dlen - 1) / dlen;
  slot_iter = clamp_iter (rate * iter_time_ms / 1000 / blocks);
  mk_iter = clamp_iter (rate * iter_time_ms / 1000 / 8);

  /* Layout: the phdr, then the key material of each slot on 4096-byte
   * boundaries.
   */
  km_len = km_sectors_bytes (key_len, LUKS_STRIPES);
  stride = (km_len / SECTOR + LUKS_ALIGN_SECTORS - 1)
    / LUKS_ALIGN_SECTORS * LUKS_ALIGN_SECTORS;          /* sectors */
  total = (LUKS_ALIGN_SECTORS + LUKS_NR_SLOTS * stride) * SECTOR;
  buf = calloc (1, total);
  if (buf == NULL) {
    qc_error ("%s: calloc: %m", name);
    return -1;
  }

  r = gnutls_rnd (GNUTLS_RND_KEY, mk, key_len);
  if (r < 0) {
    gnutls_fail (r, name, "random numbers");
    goto fail;
  }
  if (make_uuid (uuid, name) == -1)
    goto fail;

  memcpy (buf, LUKS_MAGIC, LUKS_MAGIC_LEN);
  put_be16 (buf + LUKS_OFF_VERSION, 1);
  strcpy ((char *) buf + LUKS_OFF_CIPHER_NAME, "aes");
  strcpy ((char *) buf + LUKS_OFF_CIPHER_MODE, mode);
  strcpy ((char *) buf + LUKS_OFF_HASH_SPEC, hash);
  put_be32 (buf + LUKS_OFF_PAYLOAD, total / SECTOR);
  put_be32 (buf + LUKS_OFF_KEY_BYTES, key_len);
  memcpy (buf + LUKS_OFF_UUID, uuid, 36);

  /* The master key digest. */
  r = gnutls_rnd (GNUTLS_RND_NONCE, salt, sizeof salt);
  if (r < 0) {
    gnutls_fail (r, name, "random numbers");
    goto fail;
  }
  if (pbkdf2 (h, mk, key_len, salt, sizeof salt, mk_iter, digest,
              sizeof digest, name) == -1)
    goto fail;
  memcpy (buf + LUKS_OFF_MK_DIGEST, digest, sizeof digest);
  memcpy (buf + LUKS_OFF_MK_SALT, salt, sizeof salt);
  put_be32 (buf + LUKS_OFF_MK_ITER, mk_iter);

  for (i = 0; i < LUKS_NR_SLOTS; i++) {
    uint8_t *s = buf + LUKS_OFF_SLOTS + i * LUKS_SLOT_SIZE;
    uint32_t km_sector = LUKS_ALIGN_SECTORS + i * stride;

    put_be32 (s + LUKS_SLOT_OFF_KM, km_sector);
    put_be32 (s + LUKS_SLOT_OFF_STRIPES, LUKS_STRIPES);
    if (i > 0) {
      put_be32 (s + LUKS_SLOT_OFF_ACTIVE, LUKS_KEY_DISABLED);
      continue;
    }

    /* Slot 0: the master key split, encrypted with the passphrase. */
    r = gnutls_rnd (GNUTLS_RND_NONCE, salt, sizeof salt);
    if (r < 0) {
      gnutls_fail (r, name, "random numbers");
      goto fail;
    }
    if (pbkdf2 (h, passphrase, passlen, salt, sizeof salt, slot_iter,
                key, key_len, name) == -1)
      goto fail;
    p = buf + (size_t) km_sector * SECTOR;
    if (af_split (h, mk, key_len, LUKS_STRIPES, p, name) == -1)
      goto fail;
    c = cipher_new (&spec, key, name);
    if (c == NULL || cipher_run (c, true, 0, p, km_len, name) == -1)
      goto fail;
    cipher_free (c);
    c = NULL;
    put_be32 (s + LUKS_SLOT_OFF_ACTIVE, LUKS_KEY_ENABLED);
    put_be32 (s + LUKS_SLOT_OFF_ITER, slot_iter);
    memcpy (s + LUKS_SLOT_OFF_SALT, salt, sizeof salt);
  }

  wipe (mk, sizeof mk);
  wipe (key, sizeof key);
  *hdr = buf;
  *len = total;
  return 0;

 fail:
  r = errno;
  cipher_free (c);
  wipe (mk, sizeof mk);
  wipe (key, sizeof key);
  wipe (buf, total);
  free (buf);
  errno = r;
  return -1;
}
