/* SPDX-License-Identifier: BSD-3-Clause */
/* Cluster codecs: zlib-type (raw deflate with a 4 KiB window, so that any
 * qemu can read it) and zstd (one plain frame per cluster).
 *
 * Reading zlib-type clusters uses libdeflate when built with it; writing
 * uses zlib, or ISA-L's igzip for the "fast" level when built with it.
 */
#ifndef QC_CODEC_H
#define QC_CODEC_H

#include <stddef.h>

/* Decompress in[0..in_len) into exactly out_len bytes (one cluster).
 * Trailing input after the stream is ignored.  Returns 0, or -1 with
 * errno EIO if the stream is corrupt or shorter than a cluster (no
 * message: the caller knows where the cluster is).
 */
extern int codec_decompress (int type, const void *in, size_t in_len,
                             void *out, size_t out_len);

/* Compress in_len bytes into out (out_max bytes).  level 0 = the codec's
 * default (qemu's ratio), -1 = fast (ISA-L for zlib, 1 for zstd).  Returns the compressed length, 0 if it does
 * not fit in out_max (store uncompressed then), -1 on error.
 */
extern long codec_compress (int type, int level, const void *in,
                            size_t in_len, void *out, size_t out_max);

/* Which implementation writes zlib-type clusters ("isa-l" or "zlib"). */
extern const char *codec_zlib_writer (void);

#endif /* QC_CODEC_H */
