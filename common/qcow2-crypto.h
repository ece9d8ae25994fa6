/* SPDX-License-Identifier: BSD-3-Clause */
/* Encryption of qcow2 guest data: the legacy AES method and LUKS1.
 *
 * Method 1 (legacy AES): AES-128-CBC, the key is the first 16 bytes of
 * the passphrase (zero padded), the IV of each 512-byte sector is its
 * GUEST sector number (little-endian 64 bits, "plain64").
 *
 * Method 2 (LUKS): a LUKS1 header stored in the image (full disk
 * encryption header extension 0x0537be77).  The passphrase unlocks one
 * of its key slots and so the master key; data sectors use the header's
 * cipher with the HOST file offset / 512 as IV sector number (qcow2
 * ignores the LUKS payload offset).
 *
 * Supported: the cipher "aes" with 128, 192 or 256 bit keys, the modes
 * xts and cbc, the IV generators plain, plain64 and essiv:sha256; the
 * hashes sha1, sha224, sha256, sha384 and sha512.
 *
 * Conventions of the core: 0 or a pointer on success; -1 or NULL with
 * errno set after qc_error on failure.  EINVAL: a malformed header or a
 * bad argument; ENOTSUP: an unsupported cipher, mode or hash; EPERM: the
 * passphrase opens no key slot; ENOMEM; EIO: the crypto library failed.
 */
#ifndef QC_QCOW2_CRYPTO_H
#define QC_QCOW2_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

struct blkdev;                  /* blkdev.h */
struct qc_crypto;

/* Values of the qcow2 header's crypt_method field. */
#define QC_CRYPT_NONE 0
#define QC_CRYPT_AES  1
#define QC_CRYPT_LUKS 2

/* Encryption works on whole sectors of this size. */
#define QC_CRYPTO_SECTOR_SIZE 512

/* Most PBKDF2 iterations of a key slot or of the master key digest
 * that an image may ask for: more is refused with EINVAL (it would
 * spin for minutes on a malformed header).
 */
#define QC_CRYPTO_MAX_ITERATIONS 100000000u

/* Open the encryption of an image.  method is QC_CRYPT_AES (dev,
 * hdr_offset and hdr_length are ignored and dev may be NULL) or
 * QC_CRYPT_LUKS: the LUKS1 header is [hdr_offset, hdr_offset +
 * hdr_length) of dev.  name is for messages (may be NULL).  A wrong
 * passphrase fails with errno EPERM and the message "...: wrong
 * passphrase (no key slot opens with it)".
 */
extern struct qc_crypto *qc_crypto_open (int method, struct blkdev *dev,
                                         uint64_t hdr_offset,
                                         uint64_t hdr_length,
                                         const char *passphrase,
                                         size_t passlen, const char *name);

/* Free c and wipe its keys.  NULL is allowed. */
extern void qc_crypto_close (struct qc_crypto *c);

/* Decrypt / encrypt buf in place.  len is a multiple of 512;
 * host_offset (the file offset of buf, the IV base of LUKS) and
 * guest_offset (the IV base of legacy AES) are multiples of 512.
 * Thread-safe: any number of threads may call these at once.
 */
extern int qc_crypto_decrypt (struct qc_crypto *c, uint64_t host_offset,
                              uint64_t guest_offset, uint8_t *buf,
                              size_t len);
extern int qc_crypto_encrypt (struct qc_crypto *c, uint64_t host_offset,
                              uint64_t guest_offset, uint8_t *buf,
                              size_t len);

/* A new LUKS1 header area as qemu-img makes it: 8 key slots of 4000
 * stripes, slot 0 opened by the passphrase, the key material of slot i
 * at sector 8 + i * (its size rounded up to 4096 bytes), a random
 * master key.  PBKDF2 iterations are benchmarked so that opening the
 * slot takes about iter_time_ms of CPU time (0 means 2000), and the
 * master key digest an eighth of it, at least 1000 each.
 *
 * cipher_alg: "aes-128", "aes-192" or "aes-256" (NULL: "aes-256");
 * cipher_mode: "xts" or "cbc" (IV generator plain64), or a full LUKS
 * mode such as "cbc-essiv:sha256" (NULL: "xts"); hash: for PBKDF2 and
 * the AF splitter (NULL: "sha256").
 *
 * On success *hdr is a malloc'd buffer of *len bytes (2068480 for the
 * defaults), to be stored at the start of the encryption header area;
 * its payload offset field is *len / 512.
 */
extern int qc_crypto_luks_format (const char *passphrase, size_t passlen,
                                  unsigned iter_time_ms,
                                  const char *cipher_alg,
                                  const char *cipher_mode, const char *hash,
                                  uint8_t **hdr, size_t *len);

#endif /* QC_QCOW2_CRYPTO_H */
