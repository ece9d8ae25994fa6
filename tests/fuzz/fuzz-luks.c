/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target: the LUKS1 header parser and unlock path of the core
 * (qcow2-crypto.c).  The input is a LUKS header area on a memory
 * device, unlocked with a fixed passphrase (FUZZ_PASSPHRASE, the one
 * the seeds of corpus/fuzz-luks were made with: make-seeds.c).  The
 * fuzz build caps PBKDF2 at a few iterations (see qcow2-crypto.c), or
 * every run would take seconds.
 *
 * Besides crashes, sanitizer reports, leaks and huge allocations, it
 * flags (abort): a failure without errno or with an errno outside the
 * documented ones; for a header that opens: decrypt (encrypt (x)) != x,
 * an encryption that leaves a sector unchanged, a multi-sector request
 * that differs from the same sectors done one by one (the IV of each
 * sector), a misaligned request that does not fail with EINVAL, and a
 * wrong passphrase that opens the header.  The legacy AES method gets
 * the same round trip, keyed by the first bytes of the input.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"
#include "qc-error.h"
#include "qcow2-crypto.h"

#define SECTOR QC_CRYPTO_SECTOR_SIZE
#define MAX_SECTORS 8

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  fuzz_init_log ();
  return 0;
}

/* What qcow2-crypto.h documents for a failure. */
static void
check_open_errno (void)
{
  switch (errno) {
  case EINVAL: case ENOTSUP: case EPERM: case ENOMEM: case EIO:
    return;
  case 0:
    fuzz_fail ("qc_crypto_open failed without setting errno");
  default:
    fuzz_fail ("qc_crypto_open failed with errno %d (%s), not one of "
               "qcow2-crypto.h's", errno, strerror (errno));
  }
}

/* Round trips through an open cipher; seed picks offsets and sizes. */
static void
exercise (struct qc_crypto *c, const char *what, uint32_t seed)
{
  uint8_t plain[MAX_SECTORS * SECTOR], buf[MAX_SECTORS * SECTOR];
  uint8_t one[SECTOR];
  uint64_t host, guest;
  size_t n, i, len;

  for (i = 0; i < sizeof plain; i++) {
    seed = seed * 1103515245 + 12345;
    plain[i] = seed >> 16;
  }
  /* Offsets anywhere in the 64-bit space (IVs of high sectors, plain's
   * 32-bit wrap), aligned as the contract requires.
   */
  host = ((uint64_t) seed << 20 ^ (uint64_t) (seed >> 3) << 41) & ~511ULL;
  guest = ((uint64_t) seed << 9) & ~511ULL;
  n = 1 + seed % MAX_SECTORS;
  len = n * SECTOR;
  if (host > UINT64_MAX - len)
    host -= len;

  memcpy (buf, plain, len);
  errno = 0;
  if (qc_crypto_encrypt (c, host, guest, buf, len) == -1) {
    fuzz_check_errno ("qc_crypto_encrypt");
    return;
  }
  for (i = 0; i < n; i++)
    if (memcmp (buf + i * SECTOR, plain + i * SECTOR, SECTOR) == 0)
      fuzz_fail ("%s: encryption left sector %zu unchanged", what, i);

  /* Each sector alone, at its own offsets: the same bytes. */
  for (i = 0; i < n; i++) {
    memcpy (one, plain + i * SECTOR, SECTOR);
    errno = 0;
    if (qc_crypto_encrypt (c, host + i * SECTOR, guest + i * SECTOR, one,
                           SECTOR) == -1) {
      fuzz_check_errno ("qc_crypto_encrypt");
      return;
    }
    if (memcmp (one, buf + i * SECTOR, SECTOR) != 0)
      fuzz_fail ("%s: sector %zu of a %zu-sector request encrypts "
                 "differently alone", what, i, n);
  }

  errno = 0;
  if (qc_crypto_decrypt (c, host, guest, buf, len) == -1) {
    fuzz_check_errno ("qc_crypto_decrypt");
    return;
  }
  if (memcmp (buf, plain, len) != 0)
    fuzz_fail ("%s: decrypt (encrypt (x)) != x (%zu sectors at host "
               "%" PRIu64 ", guest %" PRIu64 ")", what, n, host, guest);

  /* Misaligned requests fail cleanly, without touching the buffer. */
  errno = 0;
  if (qc_crypto_decrypt (c, host, guest, buf, SECTOR - 1) != -1 ||
      errno != EINVAL)
    fuzz_fail ("%s: a request of %d bytes did not fail with EINVAL", what,
               SECTOR - 1);
  errno = 0;
  if (qc_crypto_encrypt (c, host + 1, guest + 256, buf, SECTOR) != -1 ||
      errno != EINVAL)
    fuzz_fail ("%s: a misaligned offset did not fail with EINVAL", what);
  if (memcmp (buf, plain, len) != 0)
    fuzz_fail ("%s: a refused request changed the buffer", what);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static const char pass[] = FUZZ_PASSPHRASE;
  struct blkdev *dev;
  struct qc_crypto *c;
  uint32_t seed = size;
  size_t i;

  for (i = 0; i < size && i < 256; i++)
    seed = seed * 31 + data[i];

  /* Legacy AES: any passphrase opens (it is the key). */
  errno = 0;
  c = qc_crypto_open (QC_CRYPT_AES, NULL, 0, 0, (const char *) data,
                      size < 24 ? size : 24, "fuzz-aes");
  if (!c)
    fuzz_fail ("legacy AES did not open (errno %d)", errno);
  exercise (c, "legacy AES", seed);
  qc_crypto_close (c);

  dev = blkdev_memory_new (data, size, true);
  if (!dev)
    abort ();

  errno = 0;
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, 0, size, pass, sizeof pass - 1,
                      "fuzz-luks");
  if (!c)
    check_open_errno ();
  else {
    exercise (c, "LUKS", seed);
    qc_crypto_close (c);

    /* The header opened: any other passphrase must not. */
    errno = 0;
    c = qc_crypto_open (QC_CRYPT_LUKS, dev, 0, size, pass, sizeof pass - 2,
                        "fuzz-luks");
    if (c)
      fuzz_fail ("LUKS: a wrong passphrase opened the header");
    if (errno != EPERM)
      check_open_errno ();
  }

  /* A header area that does not fit the device fails cleanly. */
  errno = 0;
  c = qc_crypto_open (QC_CRYPT_LUKS, dev, size / 2 + 1, size, pass,
                      sizeof pass - 1, "fuzz-luks");
  if (c)
    fuzz_fail ("LUKS: a header area past the end of the device opened");
  check_open_errno ();

  blkdev_close (dev);
  return 0;
}
