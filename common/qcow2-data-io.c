/* SPDX-License-Identifier: BSD-3-Clause */
/* Guest data to and from host clusters, through the image's encryption
 * when it has one.  Encryption works on whole 512-byte sectors: reads
 * round out to sectors, and writes of partial sectors read, decrypt,
 * merge and re-encrypt them under the image's rmw_lock taken
 * exclusively (whole-sector writes take it shared, so the two never
 * interleave on one sector).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "qcow2-crypto.h"
#include "qcow2-int.h"

#define SECTOR 512ULL

int
qc_data_read (struct qc_image *img, uint64_t host, uint64_t guest,
              void *buf, size_t len)
{
  uint64_t lo, hi;
  uint8_t *tmp;
  int r;

  if (!img->crypto)
    return blkdev_pread (img->data, buf, len, host);
  /* Sector-aligned in the guest and on the host alike (clusters are). */
  lo = host & ~(SECTOR - 1);
  hi = (host + len + SECTOR - 1) & ~(SECTOR - 1);
  if (lo == host && hi == host + len) {
    if (blkdev_pread (img->data, buf, len, host) == -1)
      return -1;
    return qc_crypto_decrypt (img->crypto, host, guest, buf, len);
  }
  tmp = malloc (hi - lo);
  if (!tmp) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  r = blkdev_pread (img->data, tmp, hi - lo, lo);
  if (r == 0)
    r = qc_crypto_decrypt (img->crypto, lo, guest - (host - lo), tmp,
                           hi - lo);
  if (r == 0)
    memcpy (buf, tmp + (host - lo), len);
  free (tmp);
  return r;
}

static int write_encrypted (struct qc_image *img, uint64_t host,
                            uint64_t guest, const void *buf, size_t len);

/* Encrypted writes go through a bounce buffer: in pieces of at most
 * this size, so that many large requests in flight do not each hold a
 * copy of their whole data (peak memory).  Pieces after the first start
 * on a sector boundary.
 */
#define CRYPT_CHUNK (64 * 1024)

int
qc_data_write (struct qc_image *img, uint64_t host, uint64_t guest,
               const void *buf, size_t len)
{
  const uint8_t *p = buf;

  if (!img->external_data &&
      qc_guard_inplace_check (img, host, len, "writing guest data to",
                              false) == -1)
    return -1;
  if (!img->crypto) {
    if (blkdev_pwrite (img->data, buf, len, host, 0) == -1)
      return -1;
    /* Read-ahead windows may hold these bytes (small data clusters
     * among compressed streams are read through them): forgotten once
     * the new bytes are in the file, so that a load racing with the
     * write is not kept either.
     */
    if (!img->external_data)
      rahead_drop (img->rahead, host, host + len);
    return 0;
  }
  while (len > 0) {
    size_t n = CRYPT_CHUNK - host % CRYPT_CHUNK;
    if (n > len)
      n = len;
    if (write_encrypted (img, host, guest, p, n) == -1)
      return -1;
    host += n;
    guest += n;
    p += n;
    len -= n;
  }
  return 0;
}

static int
write_encrypted (struct qc_image *img, uint64_t host, uint64_t guest,
                 const void *buf, size_t len)
{
  uint64_t lo, hi;
  uint8_t *tmp;
  bool whole;
  int r;

  lo = host & ~(SECTOR - 1);
  hi = (host + len + SECTOR - 1) & ~(SECTOR - 1);
  whole = lo == host && hi == host + len;
  tmp = malloc (hi - lo);
  if (!tmp) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  if (whole)
    pthread_rwlock_rdlock (&img->rmw_lock);
  else {
    pthread_rwlock_wrlock (&img->rmw_lock);
    /* The partial sectors at the edges: their current plaintext. */
    if (qc_data_read (img, lo, guest - (host - lo), tmp, SECTOR) == -1 ||
        (hi - lo > SECTOR &&
         qc_data_read (img, hi - SECTOR, guest + (hi - SECTOR - host),
                       tmp + (hi - lo - SECTOR), SECTOR) == -1)) {
      r = -1;
      goto out;
    }
  }
  memcpy (tmp + (host - lo), buf, len);
  r = qc_crypto_encrypt (img->crypto, lo, guest - (host - lo), tmp, hi - lo);
  if (r == 0)
    r = blkdev_pwrite (img->data, tmp, hi - lo, lo, 0);
 out:
  pthread_rwlock_unlock (&img->rmw_lock);
  free (tmp);
  return r;
}
