/* Decompression of compressed clusters: zlib-type (raw deflate, decoded
 * with libdeflate) and zstd.
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

#endif /* QC_CODEC_H */
