/* SPDX-License-Identifier: BSD-3-Clause */
/* The encoder's compressed clusters: see qcow2-enc.h.
 *
 * The L2 tables and the file size need every stream's length before
 * the first byte is served, and keeping the streams would cost as much
 * memory as the data.  So every stored cluster is compressed once at
 * open (in parallel) and only the lengths are kept; when a client reads
 * the streams, the clusters are compressed again (the codecs are
 * deterministic) through a small cache, so a sequential reader costs at
 * most two compressions per cluster.
 *
 * Streams are packed byte by byte after the uncompressed clusters, each
 * in a slot of at least min_slot bytes (zeros after the stream), so
 * that no host cluster is touched by more streams than a refcount of
 * the image's width can count.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "parfor.h"
#include "qc-error.h"
#include "qcow2-enc.h"
#include "qcow2-int.h"

#define SAMPLE 64               /* a slot start kept every SAMPLE streams */
#define ITEM 64                 /* stored clusters per parallel item */
#define CACHE_BYTES (4ULL << 20)
#define CACHE_MIN_SLOTS 8

struct cache_slot {
  uint64_t k;                   /* stream held, UINT64_MAX = none */
  uint8_t *data;
};

struct compress_pass {
  struct qc_enc_streams *s;
  struct qc_enc_map *stored;
  struct blkdev *src;
  uint8_t *len;                 /* per stored cluster, s->len_bytes
                                 * each, 0 = raw */
  int err;
};

static void
len_set (uint8_t *len, unsigned width, uint64_t k, uint32_t v)
{
  uint8_t *p = len + k * width;

  p[0] = v;
  p[1] = v >> 8;
  if (width == 3)
    p[2] = v >> 16;
}

static long
compress_one (struct qc_enc_streams *s, struct blkdev *src, uint64_t g,
              uint8_t *in, uint8_t *out)
{
  long n;

  if (blkdev_pread (src, in, s->cs, g * s->cs) == -1)
    return -1;
  n = codec_compress (s->type, s->level, in, s->cs, out, s->cs - 1);
  if (n == -1)
    qc_error ("compressing guest cluster %" PRIu64 ": %m", g);
  return n;
}

static void
compress_item (void *arg, size_t item)
{
  struct compress_pass *p = arg;
  struct qc_enc_streams *s = p->s;
  uint64_t r = (uint64_t) item * ITEM, end = r + ITEM, g;
  uint8_t *in = malloc (s->cs), *out = malloc (s->cs);

  if (!in || !out) {
    qc_error ("compressing: %m");
    __atomic_store_n (&p->err, ENOMEM, __ATOMIC_RELAXED);
    goto out;
  }
  if (end > p->stored->count)
    end = p->stored->count;
  g = qc_enc_map_select (p->stored, r);
  for (; r < end; r++, g = qc_enc_map_next (p->stored, g + 1)) {
    long n;
    if (__atomic_load_n (&p->err, __ATOMIC_RELAXED))
      break;
    n = compress_one (s, p->src, g, in, out);
    if (n == -1) {
      __atomic_store_n (&p->err, errno ? errno : EIO, __ATOMIC_RELAXED);
      break;
    }
    len_set (p->len, s->len_bytes, r, n);
  }
 out:
  free (in);
  free (out);
}

uint64_t
qc_enc_stream_start (const struct qc_enc_streams *s, uint64_t k)
{
  uint64_t i, pos = s->sample[k / SAMPLE];

  for (i = k - k % SAMPLE; i < k; i++)
    pos += qc_enc_stream_slot (s, i);
  return pos;
}

/* The first stream whose slot ends after byte pos of the region, or
 * count.
 */
static uint64_t
stream_at (const struct qc_enc_streams *s, uint64_t pos)
{
  uint64_t lo, k, start;

  if (s->count == 0)
    return 0;
  /* The last sample starting at or before pos. */
  lo = qc_enc_last_le (s->sample, (s->count + SAMPLE - 1) / SAMPLE, pos);
  k = lo * SAMPLE;
  start = s->sample[lo];
  while (k < s->count && start + qc_enc_stream_slot (s, k) <= pos)
    start += qc_enc_stream_slot (s, k++);
  return k;
}

int
qc_enc_compress_all (const struct qc_options *o, struct blkdev *src,
                     struct qc_enc_map *stored, uint64_t cluster_size,
                     unsigned refcount_order, struct qc_enc_streams *s)
{
  const uint64_t max_ref = refcount_order >= 6 ? UINT64_MAX
    : (1ULL << (1U << refcount_order)) - 1;
  struct compress_pass p = { .s = s, .stored = stored, .src = src };
  struct qc_enc_map raw;
  uint64_t r, g, k, i, nslots;

  memset (s, 0, sizeof *s);
  pthread_mutex_init (&s->lock, NULL);
  s->type = o->compress;
  s->level = o->compress_level;
  s->cs = cluster_size;
  /* Lengths are below cluster_size (out_max in compress_one). */
  s->len_bytes = cluster_size <= 65536 ? 2 : 3;
  /* At most max_ref streams touch a host cluster: all that start in it
   * (at most cs / min_slot) and one from before.
   */
  if (max_ref <= 2)
    s->min_slot = cluster_size;
  else if (max_ref - 1 < cluster_size)
    s->min_slot = (cluster_size + max_ref - 2) / (max_ref - 1);
  else
    s->min_slot = 1;
  if (qc_enc_map_init (&s->comp, stored->nbits) == -1 ||
      qc_enc_map_init (&raw, stored->nbits) == -1)
    goto fail;
  p.len = calloc (stored->count ? stored->count : 1, s->len_bytes);
  if (!p.len) {
    qc_error ("cannot allocate the compressed lengths (%" PRIu64
              " clusters): %m", stored->count);
    goto fail_raw;
  }
  parfor (compress_item, &p, (stored->count + ITEM - 1) / ITEM);
  if (p.err) {
    errno = p.err;
    goto fail_raw;
  }

  /* Split the stored clusters: compressed, raw. */
  for (r = 0, g = qc_enc_map_next (stored, 0); r < stored->count;
       r++, g = qc_enc_map_next (stored, g + 1)) {
    if (qc_enc_len_get (p.len, s->len_bytes, r))
      qc_enc_map_set_range (&s->comp, g, g + 1);
    else
      qc_enc_map_set_range (&raw, g, g + 1);
  }
  qc_enc_map_finish (&s->comp);
  qc_enc_map_finish (&raw);
  s->count = s->comp.count;
  /* Keep the lengths of the compressed ones only, in guest order. */
  for (r = 0, k = 0; r < stored->count; r++) {
    uint32_t n = qc_enc_len_get (p.len, s->len_bytes, r);

    if (n)
      len_set (p.len, s->len_bytes, k++, n);
  }
  s->len = p.len;
  p.len = NULL;
  s->sample = malloc (((s->count + SAMPLE - 1) / SAMPLE + 1) *
                      sizeof *s->sample);
  if (!s->sample) {
    qc_error ("%m");
    goto fail_raw;
  }
  for (k = 0, s->bytes = 0; k < s->count; k++) {
    if (k % SAMPLE == 0)
      s->sample[k / SAMPLE] = s->bytes;
    s->bytes += qc_enc_stream_slot (s, k);
  }
  qc_enc_map_free (stored);
  *stored = raw;

  nslots = CACHE_BYTES / cluster_size;
  if (nslots < CACHE_MIN_SLOTS)
    nslots = CACHE_MIN_SLOTS;
  s->cache = calloc (nslots, sizeof *s->cache);
  if (!s->cache) {
    qc_error ("%m");
    goto fail;
  }
  s->nr_cache = nslots;
  for (i = 0; i < nslots; i++)
    s->cache[i].k = UINT64_MAX;
  qc_debug ("qcow2enc: %" PRIu64 " clusters compressed into %" PRIu64
            " bytes, %" PRIu64 " stored as they are", s->count, s->bytes,
            stored->count);
  return 0;

 fail_raw:
  qc_enc_map_free (&raw);
 fail:
  free (p.len);
  qc_enc_streams_free (s);
  return -1;
}

void
qc_enc_streams_free (struct qc_enc_streams *s)
{
  size_t i;

  if (s->cache)
    qc_debug ("qcow2enc: %" PRIu64 " streams, compressed again %" PRIu64
              " times to serve them", s->count, s->recompressed);
  if (s->cache)
    for (i = 0; i < s->nr_cache; i++)
      free (s->cache[i].data);
  free (s->cache);
  free (s->len);
  free (s->sample);
  qc_enc_map_free (&s->comp);
  pthread_mutex_destroy (&s->lock);
  memset (s, 0, sizeof *s);
}

/* Stream k's bytes (len[k] of them) into out (cs bytes). */
static int
get_stream (struct qc_enc_streams *s, struct blkdev *src, uint64_t k,
            uint8_t *out)
{
  struct cache_slot *slot = &s->cache[k % s->nr_cache];
  uint8_t *in;
  long n;
  bool hit;

  pthread_mutex_lock (&s->lock);
  hit = slot->k == k;
  if (hit)
    memcpy (out, slot->data, qc_enc_stream_len (s, k));
  pthread_mutex_unlock (&s->lock);
  if (hit)
    return 0;

  in = malloc (s->cs);
  if (!in) {
    qc_error ("%m");
    return -1;
  }
  __atomic_add_fetch (&s->recompressed, 1, __ATOMIC_RELAXED);
  n = compress_one (s, src, qc_enc_map_select (&s->comp, k), in, out);
  free (in);
  if (n == -1)
    return -1;
  if ((uint64_t) n != qc_enc_stream_len (s, k)) {
    /* The plugin below changed since the layout was made. */
    qc_error ("guest cluster %" PRIu64 " compressed to %ld bytes, not %"
              PRIu32 " as when the export was opened: the plugin below "
              "must not change while it is encoded",
              qc_enc_map_select (&s->comp, k), n,
              qc_enc_stream_len (s, k));
    errno = EIO;
    return -1;
  }
  pthread_mutex_lock (&s->lock);
  if (!slot->data)
    slot->data = malloc (s->cs);
  if (slot->data) {
    memcpy (slot->data, out, n);
    slot->k = k;
  }
  pthread_mutex_unlock (&s->lock);
  return 0;
}

int
qc_enc_streams_read (struct qc_enc_streams *s, struct blkdev *src,
                     uint8_t *buf, size_t count, uint64_t pos)
{
  uint64_t k = stream_at (s, pos), start;
  uint8_t *tmp = NULL;
  int r = -1;

  memset (buf, 0, count);
  if (k >= s->count)
    return 0;
  start = qc_enc_stream_start (s, k);
  while (k < s->count && start < pos + count) {
    uint64_t from = pos > start ? pos - start : 0;
    uint64_t to = pos + count - start;

    if (to > qc_enc_stream_len (s, k))
      to = qc_enc_stream_len (s, k);
    if (from < to) {
      if (!tmp && !(tmp = malloc (s->cs))) {
        qc_error ("%m");
        goto out;
      }
      if (get_stream (s, src, k, tmp) == -1)
        goto out;
      memcpy (buf + (start + from - pos), tmp + from, to - from);
    }
    start += qc_enc_stream_slot (s, k);
    k++;
  }
  r = 0;
 out:
  free (tmp);
  return r;
}

void
qc_enc_streams_refcounts (const struct qc_enc_streams *s, uint8_t *block,
                          unsigned order, uint64_t from, uint64_t to,
                          uint64_t entry)
{
  const uint64_t cs = s->cs;
  uint64_t k = stream_at (s, from * cs), start;

  if (k >= s->count)
    return;
  start = qc_enc_stream_start (s, k);
  for (; k < s->count && start < to * cs;
       start += qc_enc_stream_slot (s, k), k++) {
    uint64_t c = start / cs, last = (start + qc_enc_stream_len (s, k) - 1) / cs;
    for (; c <= last; c++)
      if (c >= from && c < to) {
        uint64_t i = c - from + entry;
        qc_refcount_entry_set (block, i, order,
                               qc_refcount_entry_get (block, i, order) + 1);
      }
  }
}
