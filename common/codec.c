/* SPDX-License-Identifier: BSD-3-Clause */
/* Cluster codecs.  Codec state is per thread: it is not thread-safe,
 * and allocating it per cluster would cost more than the work on a small
 * cluster.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>
#include <zstd.h>
#ifdef HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif
#ifdef HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif

#include "codec.h"
#include "qcow2-header.h"

/* qemu's window (its reader inflates with 4 KiB).  zlib's default
 * level is one below qemu's 6: on the benchmark's sample (text and
 * binaries) the streams are 0.3% larger for 12-18% less CPU, and with
 * our tighter packing the files are still smaller than qemu-img
 * convert -c makes them.  zstd's is qemu's 3: level 2 costs 1% on
 * 64 KiB clusters but 1.7% on 2 MiB ones.
 */
#define ZLIB_WINDOW_BITS 12
#define ZLIB_DEFAULT_LEVEL 5
#define ZSTD_DEFAULT_LEVEL 3

struct codec_state {
#ifdef HAVE_LIBDEFLATE
  struct libdeflate_decompressor *deflate;
#endif
  z_stream inflater;
  bool have_inflater;
  z_stream deflater;            /* kept: allocating it per cluster */
  int deflater_level;           /* costs ~270 KiB of fresh pages */
  bool have_deflater;
  ZSTD_DCtx *zstd_d;
  ZSTD_CCtx *zstd_c;
#ifdef HAVE_ISAL
  uint8_t *isal_level_buf;
#endif
};

static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;

static void
free_state (void *p)
{
  struct codec_state *s = p;

#ifdef HAVE_LIBDEFLATE
  if (s->deflate)
    libdeflate_free_decompressor (s->deflate);
#endif
#ifdef HAVE_ISAL
  free (s->isal_level_buf);
#endif
  if (s->have_inflater)
    inflateEnd (&s->inflater);
  if (s->have_deflater)
    deflateEnd (&s->deflater);
  ZSTD_freeDCtx (s->zstd_d);
  ZSTD_freeCCtx (s->zstd_c);
  free (s);
}

static void
make_key (void)
{
  pthread_key_create (&state_key, free_state);
}

static struct codec_state *
get_state (void)
{
  struct codec_state *s;

  pthread_once (&state_once, make_key);
  s = pthread_getspecific (state_key);
  if (!s) {
    s = calloc (1, sizeof *s);
    if (!s)
      return NULL;
    pthread_setspecific (state_key, s);
  }
  return s;
}

/* Inflate a raw deflate stream into exactly one cluster.  A stream that
 * would produce more than a cluster has filled it: accepted, as qemu
 * does.
 */
static int
zlib_inflate_cluster (struct codec_state *s, const void *in, size_t in_len,
                      void *out, size_t out_len)
{
  z_stream *z = &s->inflater;
  int r;

  if (!s->have_inflater) {
    memset (z, 0, sizeof *z);
    if (inflateInit2 (z, -15) != Z_OK)
      return -1;
    s->have_inflater = true;
  }
  else
    inflateReset (z);
  z->next_in = (Bytef *) in;
  z->avail_in = in_len;
  z->next_out = out;
  z->avail_out = out_len;
  r = inflate (z, Z_FINISH);
  if ((r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) &&
      z->avail_out == 0)
    return 0;
  errno = EIO;
  return -1;
}

static int
inflate_cluster (struct codec_state *s, const void *in, size_t in_len,
                 void *out, size_t out_len)
{
#ifdef HAVE_LIBDEFLATE
  enum libdeflate_result r;
  size_t in_used, out_got;

  if (!s->deflate && !(s->deflate = libdeflate_alloc_decompressor ()))
    return -1;
  r = libdeflate_deflate_decompress_ex (s->deflate, in, in_len, out, out_len,
                                        &in_used, &out_got);
  if (r == LIBDEFLATE_SUCCESS && out_got == out_len)
    return 0;
  /* A stream longer than a cluster: libdeflate stops short of filling
   * the cluster, zlib fills it; qemu reads the first cluster's worth.
   */
  if (r == LIBDEFLATE_INSUFFICIENT_SPACE)
    return zlib_inflate_cluster (s, in, in_len, out, out_len);
  errno = EIO;
  return -1;
#else
  return zlib_inflate_cluster (s, in, in_len, out, out_len);
#endif
}

static int
zstd_decompress (struct codec_state *s, const void *in, size_t in_len,
                 void *out, size_t out_len)
{
  ZSTD_inBuffer ib = { in, in_len, 0 };
  ZSTD_outBuffer ob = { out, out_len, 0 };

  if (!s->zstd_d && !(s->zstd_d = ZSTD_createDCtx ()))
    return -1;
  ZSTD_DCtx_reset (s->zstd_d, ZSTD_reset_session_only);
  /* Stop once the cluster is full: the bytes after the frame belong to
   * the next cluster.
   */
  while (ob.pos < ob.size) {
    size_t before_in = ib.pos, before_out = ob.pos;
    size_t r = ZSTD_decompressStream (s->zstd_d, &ob, &ib);
    if (ZSTD_isError (r))
      goto bad;
    if (r == 0 && ob.pos < ob.size)     /* frame ended early */
      goto bad;
    if (ib.pos == before_in && ob.pos == before_out)
      goto bad;                         /* no progress: truncated */
  }
  return 0;
 bad:
  errno = EIO;
  return -1;
}

int
codec_decompress (int type, const void *in, size_t in_len,
                  void *out, size_t out_len)
{
  struct codec_state *s = get_state ();

  if (!s) {
    errno = ENOMEM;
    return -1;
  }
  switch (type) {
  case QCOW2_COMPRESS_ZLIB:
    return inflate_cluster (s, in, in_len, out, out_len);
  case QCOW2_COMPRESS_ZSTD:
    return zstd_decompress (s, in, in_len, out, out_len);
  default:
    errno = ENOTSUP;
    return -1;
  }
}

/* zlib's deflate with a 4 KiB window, as qemu's reader needs.  The
 * stream is reset, not made again, for each cluster: same output.
 */
static long
zlib_compress (struct codec_state *s, int level, const void *in,
               size_t in_len, void *out, size_t out_max)
{
  z_stream *z = &s->deflater;
  long n;
  int r;

  if (!level)
    level = ZLIB_DEFAULT_LEVEL;
  if (s->have_deflater && s->deflater_level != level) {
    deflateEnd (z);
    s->have_deflater = false;
  }
  if (!s->have_deflater) {
    memset (z, 0, sizeof *z);
    if (deflateInit2 (z, level, Z_DEFLATED, -ZLIB_WINDOW_BITS, 9,
                      Z_DEFAULT_STRATEGY) != Z_OK) {
      errno = ENOMEM;
      return -1;
    }
    s->have_deflater = true;
    s->deflater_level = level;
  }
  else if (deflateReset (z) != Z_OK) {
    errno = EIO;
    return -1;
  }
  z->next_in = (Bytef *) in;
  z->avail_in = in_len;
  z->next_out = out;
  z->avail_out = out_max;
  r = deflate (z, Z_FINISH);
  n = r == Z_STREAM_END ? (long) (out_max - z->avail_out) : 0;
  return n;
}

#ifdef HAVE_ISAL
/* ISA-L's igzip, level 3, limited to a 4 KiB window so that readers
 * that inflate with zlib's 4 KiB window (qemu) accept its streams.
 */
static long
isal_compress (struct codec_state *s, const void *in, size_t in_len,
               void *out, size_t out_max)
{
  struct isal_zstream z;

  if (!s->isal_level_buf &&
      !(s->isal_level_buf = malloc (ISAL_DEF_LVL3_DEFAULT)))
    return -1;
  isal_deflate_stateless_init (&z);
  z.level = 3;
  z.level_buf = s->isal_level_buf;
  z.level_buf_size = ISAL_DEF_LVL3_DEFAULT;
  z.hist_bits = ZLIB_WINDOW_BITS;
  z.gzip_flag = IGZIP_DEFLATE;
  z.end_of_stream = 1;
  z.flush = NO_FLUSH;
  z.next_in = (uint8_t *) in;
  z.avail_in = in_len;
  z.next_out = out;
  z.avail_out = out_max;
  if (isal_deflate_stateless (&z) != COMP_OK || z.avail_in != 0)
    return 0;                   /* did not fit */
  return out_max - z.avail_out;
}
#endif

const char *
codec_zlib_writer (void)
{
#ifdef HAVE_ISAL
  return "isa-l";
#else
  return "zlib";
#endif
}

long
codec_compress (int type, int level, const void *in, size_t in_len,
                void *out, size_t out_max)
{
  struct codec_state *s = get_state ();
  size_t n;

  if (!s) {
    errno = ENOMEM;
    return -1;
  }
  switch (type) {
  case QCOW2_COMPRESS_ZLIB:
    /* Level -1 ("fast"): ISA-L, about ten times faster than zlib's
     * level 6 but 2-10% larger; the default is zlib's level 5 (see
     * ZLIB_DEFAULT_LEVEL).
     */
    if (level < 0) {
#ifdef HAVE_ISAL
      return isal_compress (s, in, in_len, out, out_max);
#else
      level = 1;
#endif
    }
    return zlib_compress (s, level, in, in_len, out, out_max);
  case QCOW2_COMPRESS_ZSTD:
    if (!s->zstd_c && !(s->zstd_c = ZSTD_createCCtx ())) {
      errno = ENOMEM;
      return -1;
    }
    n = ZSTD_compressCCtx (s->zstd_c, out, out_max, in, in_len,
                           level > 0 ? level : level < 0 ? 1 :
                           ZSTD_DEFAULT_LEVEL);
    if (ZSTD_isError (n))
      return 0;                 /* most likely: does not fit */
    return n;
  default:
    errno = ENOTSUP;
    return -1;
  }
}
