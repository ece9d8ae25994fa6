/* SPDX-License-Identifier: BSD-3-Clause */
/* Decompression of one cluster: raw deflate (qemu's "zlib" type) and
 * zstd.  The streams are made here with zlib and libzstd directly.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>

#include "codec.h"
#include "qcow2-header.h"
#include "unit.h"

#define CS 65536

/* Compressible but not trivial content. */
static void
fill_mixed (uint8_t *buf, size_t len, uint64_t seed)
{
  size_t i;

  unit_fill_random (buf, len, seed);
  for (i = 0; i < len; i++)
    buf[i] = (i / 997) % 3 == 0 ? buf[i] : "qcow2 text-like "[(i + buf[i] % 3) % 16];
}

static size_t
deflate_raw (const uint8_t *in, size_t len, uint8_t *out, size_t cap,
             int wbits)
{
  z_stream z;

  memset (&z, 0, sizeof z);
  ck_assert (deflateInit2 (&z, 6, Z_DEFLATED, -wbits, 9,
                           Z_DEFAULT_STRATEGY) == Z_OK);
  z.next_in = (uint8_t *) in;
  z.avail_in = len;
  z.next_out = out;
  z.avail_out = cap;
  ck_assert (deflate (&z, Z_FINISH) == Z_STREAM_END);
  deflateEnd (&z);
  return cap - z.avail_out;
}

static size_t
zstd_frame (const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
  size_t r = ZSTD_compress (out, cap, in, len, 3);

  ck_assert (!ZSTD_isError (r));
  return r;
}

static size_t
compress_type (int type, const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
  return type == QCOW2_COMPRESS_ZSTD ? zstd_frame (in, len, out, cap)
    : deflate_raw (in, len, out, cap, 12);
}

/* _i: the compression type */
START_TEST (test_roundtrip)
{
  uint8_t *in = malloc (CS), *z = malloc (2 * CS), *out = malloc (CS);
  size_t n;

  fill_mixed (in, CS, 1);
  n = compress_type (_i, in, CS, z, 2 * CS);
  ck_assert_uint_lt (n, CS);
  memset (out, 0xee, CS);
  ck_assert_int_eq (codec_decompress (_i, z, n, out, CS), 0);
  unit_assert_mem_eq (out, in, CS, "decompressed cluster");

  /* Followed by the next cluster's bytes (packed streams), and read to
   * the end of the last sector as qemu does.
   */
  memset (z + n, 0x5a, 2 * CS - n);
  memset (out, 0xee, CS);
  ck_assert_int_eq (codec_decompress (_i, z, n + 1000, out, CS), 0);
  unit_assert_mem_eq (out, in, CS, "with trailing bytes");
  free (in);
  free (z);
  free (out);
}
END_TEST

/* Truncated and short streams are errors (EIO), never a partial cluster. */
START_TEST (test_truncated)
{
  uint8_t *in = malloc (CS), *z = malloc (2 * CS), *out = malloc (CS);
  size_t n;

  fill_mixed (in, CS, 2);
  n = compress_type (_i, in, CS, z, 2 * CS);
  errno = 0;
  ck_assert_int_eq (codec_decompress (_i, z, n / 2, out, CS), -1);
  ck_assert_int_eq (errno, EIO);

  /* a complete stream of less than a cluster */
  n = compress_type (_i, in, 1000, z, 2 * CS);
  errno = 0;
  ck_assert_int_eq (codec_decompress (_i, z, n, out, CS), -1);
  ck_assert_int_eq (errno, EIO);

  /* garbage */
  memset (z, 0xff, 4096);
  errno = 0;
  ck_assert_int_eq (codec_decompress (_i, z, 4096, out, CS), -1);
  ck_assert_int_eq (errno, EIO);

  /* nothing */
  ck_assert_int_eq (codec_decompress (_i, z, 0, out, CS), -1);
  free (in);
  free (z);
  free (out);
}
END_TEST

/* zlib type: any raw deflate window (qemu inflates with window bits
 * -15, though it writes with -12).
 */
START_TEST (test_deflate_window15)
{
  uint8_t *in = malloc (CS), *z = malloc (2 * CS), *out = malloc (CS);
  size_t n;

  fill_mixed (in, CS, 3);
  /* repeat a far block so that long distances occur */
  memcpy (in + 40000, in + 100, 20000);
  n = deflate_raw (in, CS, z, 2 * CS, 15);
  ck_assert_int_eq (codec_decompress (QCOW2_COMPRESS_ZLIB, z, n, out, CS), 0);
  unit_assert_mem_eq (out, in, CS, "window 15 stream");
  free (in);
  free (z);
  free (out);
}
END_TEST

/* A deflate stream that holds more than a cluster: qemu inflates into a
 * cluster-sized buffer and accepts it once the buffer is full, so the
 * cluster is exactly the stream's first cluster-size bytes.  Whatever a
 * reader does, it must never return a cluster with bytes the stream did
 * not produce (for example uninitialised memory).
 * _i: 0 a run of one byte (long matches cross the end), 1 random bytes
 * (stored blocks cross the end), 2 mixed.
 */
START_TEST (test_deflate_overlong)
{
  const size_t cs = 512, extra = 600;
  uint8_t in[512 + 600], z[4096], out[512];
  size_t n;
  int r;

  if (_i == 0)
    memset (in, 'A', sizeof in);
  else if (_i == 1)
    unit_fill_random (in, sizeof in, 4);
  else
    fill_mixed (in, sizeof in, 5);
  n = deflate_raw (in, cs + extra, z, sizeof z, 12);
  memset (out, 0xee, sizeof out);
  r = codec_decompress (QCOW2_COMPRESS_ZLIB, z, n, out, cs);
  ck_assert_msg (r == 0, "an over-long stream is refused (qemu reads it)");
  unit_assert_mem_eq (out, in, cs, "cluster from an over-long stream");
}
END_TEST

/* The same for zstd: qemu refuses a frame that does not end with the
 * cluster; a reader that accepts one must still return exactly its
 * first cluster-size bytes.
 */
START_TEST (test_zstd_overlong)
{
  const size_t cs = 512;
  uint8_t in[2048], z[4096], out[512];
  size_t n;

  fill_mixed (in, sizeof in, 6);
  n = zstd_frame (in, sizeof in, z, sizeof z);
  memset (out, 0xee, sizeof out);
  if (codec_decompress (QCOW2_COMPRESS_ZSTD, z, n, out, cs) == 0)
    unit_assert_mem_eq (out, in, cs, "cluster from an over-long frame");
  else
    ck_assert_int_eq (errno, EIO);
}
END_TEST

START_TEST (test_unknown_type)
{
  uint8_t z[16] = { 0 }, out[512];

  errno = 0;
  ck_assert_int_eq (codec_decompress (2, z, sizeof z, out, sizeof out), -1);
  ck_assert_int_eq (errno, ENOTSUP);
}
END_TEST

Suite *
codec_suite (void)
{
  Suite *s = suite_create ("codec");
  TCase *tc = tcase_create ("codec");

  tcase_add_loop_test (tc, test_roundtrip, QCOW2_COMPRESS_ZLIB,
                       QCOW2_COMPRESS_ZSTD + 1);
  tcase_add_loop_test (tc, test_truncated, QCOW2_COMPRESS_ZLIB,
                       QCOW2_COMPRESS_ZSTD + 1);
  tcase_add_test (tc, test_deflate_window15);
  tcase_add_loop_test (tc, test_deflate_overlong, 0, 3);
  tcase_add_test (tc, test_zstd_overlong);
  tcase_add_test (tc, test_unknown_type);
  suite_add_tcase (s, tc);
  return s;
}
