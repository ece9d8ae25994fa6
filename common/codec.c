/* Cluster decompression.  Decompressor state is per thread: it is not
 * thread-safe, and allocating it per cluster would cost more than the
 * decompression of a small cluster.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include <libdeflate.h>
#include <zstd.h>

#include "codec.h"
#include "qcow2-header.h"

struct codec_state {
  struct libdeflate_decompressor *deflate;
  ZSTD_DCtx *zstd;
};

static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;

static void
free_state (void *p)
{
  struct codec_state *s = p;

  if (s->deflate)
    libdeflate_free_decompressor (s->deflate);
  if (s->zstd)
    ZSTD_freeDCtx (s->zstd);
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

static int
inflate_cluster (struct codec_state *s, const void *in, size_t in_len,
                 void *out, size_t out_len)
{
  enum libdeflate_result r;
  size_t in_used, out_got;

  if (!s->deflate && !(s->deflate = libdeflate_alloc_decompressor ()))
    return -1;
  r = libdeflate_deflate_decompress_ex (s->deflate, in, in_len, out, out_len,
                                        &in_used, &out_got);
  /* A stream that would produce more than a cluster has filled the
   * cluster: accept it, as qemu does.
   */
  if (r == LIBDEFLATE_INSUFFICIENT_SPACE ||
      (r == LIBDEFLATE_SUCCESS && out_got == out_len))
    return 0;
  errno = EIO;
  return -1;
}

static int
zstd_cluster (struct codec_state *s, const void *in, size_t in_len,
              void *out, size_t out_len)
{
  ZSTD_inBuffer ib = { in, in_len, 0 };
  ZSTD_outBuffer ob = { out, out_len, 0 };

  if (!s->zstd && !(s->zstd = ZSTD_createDCtx ()))
    return -1;
  ZSTD_DCtx_reset (s->zstd, ZSTD_reset_session_only);
  /* Stop once the cluster is full: the bytes after the frame belong to
   * the next cluster.
   */
  while (ob.pos < ob.size) {
    size_t before_in = ib.pos, before_out = ob.pos;
    size_t r = ZSTD_decompressStream (s->zstd, &ob, &ib);
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
    return zstd_cluster (s, in, in_len, out, out_len);
  default:
    errno = ENOTSUP;
    return -1;
  }
}
