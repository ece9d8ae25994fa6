/* SPDX-License-Identifier: BSD-3-Clause */
/* Guest-to-host mapping through the L1 and L2 tables, at subcluster
 * precision with extended L2 entries.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "byteorder.h"
#include "codec.h"
#include "qc-error.h"
#include "qcow2-int.h"

#define CORRUPT(...) \
  do { qc_error (__VA_ARGS__); errno = EIO; return -1; } while (0)

/* Kind and host offset of subcluster sc (or of the whole cluster with
 * standard L2 entries) described by entry e and bitmap bm.
 */
static int
classify (struct qc_image *img, uint64_t e, uint64_t bm, unsigned sc,
          uint64_t guest, enum qc_kind *kind, uint64_t *host)
{
  const struct qcow2_header *h = &img->h;
  uint64_t off = e & QCOW2_OFFSET_MASK;
  bool external = img->external_data;

  if (e & QCOW2_OFLAG_COMPRESSED) {
    if (external)
      CORRUPT ("%s: compressed cluster at guest offset 0x%" PRIx64
               " in an image with an external data file",
               img->name, guest);
    *kind = QC_COMPRESSED;
    *host = e & ~(QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED);
    return 0;
  }
  if (off & (h->cluster_size - 1))
    CORRUPT ("%s: L2 entry for guest offset 0x%" PRIx64 " points to "
             "unaligned host offset 0x%" PRIx64, img->name, guest, off);

  if (!h->extended_l2) {
    if (e & QCOW2_OFLAG_ZERO)
      *kind = QC_ZERO;
    else if (off == 0 && !(external && (e & QCOW2_OFLAG_COPIED)))
      *kind = QC_UNALLOCATED;
    else {
      *kind = QC_DATA;
      *host = off;
    }
    return 0;
  }

  {
    bool alloc = bm & (1ULL << sc), zero = bm & (1ULL << (32 + sc));
    bool has_host = off != 0 || (external && (e & QCOW2_OFLAG_COPIED));

    if (alloc && zero)
      CORRUPT ("%s: subcluster %u at guest offset 0x%" PRIx64 " is marked "
               "both allocated and zero", img->name, sc, guest);
    if (zero)
      *kind = QC_ZERO;
    else if (alloc) {
      if (!has_host)
        CORRUPT ("%s: subcluster %u at guest offset 0x%" PRIx64 " is "
                 "allocated in a cluster without a host offset",
                 img->name, sc, guest);
      *kind = QC_DATA;
      *host = off + sc * h->subcluster_size;
    }
    else
      *kind = QC_UNALLOCATED;
  }
  return 0;
}

/* Metadata must lie inside the file, or inside clusters allocated since
 * it was opened (a new L2 table may not be written yet).
 */
static uint64_t
host_limit (struct qc_image *img)
{
  uint64_t end = __atomic_load_n (&img->alloc_end, __ATOMIC_ACQUIRE);

  uint64_t size = blkdev_size (img->file);

  return end > size ? end : size;
}

int
qc_map (struct qc_view *v, uint64_t offset, uint64_t count,
        struct qc_run *run)
{
  struct qc_image *img = v->img;
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size, scs = h->subcluster_size;
  const uint64_t l2_span = cs << h->l2_bits;
  uint64_t l1_index = offset / l2_span;
  uint64_t in_l2 = l2_span - offset % l2_span;
  uint64_t l2_offset, pos, end;
  uint64_t l1e;
  const uint8_t *l2;
  struct l2cache_entry *pin;
  uint64_t l2_index;
  enum qc_kind kind = QC_UNALLOCATED;
  uint64_t host = 0;
  int r = 0;

  if (count > in_l2)
    count = in_l2;
  run->length = count;
  run->kind = QC_UNALLOCATED;
  run->host = 0;
  run->copied = false;

  if (l1_index >= v->l1_size)
    return 0;
  l1e = __atomic_load_n (&v->l1[l1_index], __ATOMIC_ACQUIRE);
  l2_offset = l1e & QCOW2_OFFSET_MASK;
  if (l2_offset == 0)
    return 0;
  if (l2_offset & (cs - 1))
    CORRUPT ("%s: L1 entry %" PRIu64 " points to unaligned L2 table "
             "offset 0x%" PRIx64, img->name, l1_index, l2_offset);
  /* An L2 table may run past the end of the file (the rest reads as
   * zeros, as in qemu); it must start inside it.
   */
  if (l2_offset >= host_limit (img))
    CORRUPT ("%s: L1 entry %" PRIu64 " points to an L2 table at 0x%"
             PRIx64 ", beyond the end of the file",
             img->name, l1_index, l2_offset);

  l2 = l2cache_get (img->cache, img->file, l2_offset, &pin);
  if (!l2)
    return -1;

  /* Walk (sub)clusters until the kind or host contiguity changes. */
  pos = offset;
  end = offset + count;
  l2_index = (offset % l2_span) / cs;
  while (pos < end) {
    const uint8_t *p = l2 + l2_index * h->l2_entry_size;
    uint64_t e, bm;
    uint64_t cluster_start = pos - pos % cs;
    uint64_t step_end;
    unsigned sc = h->extended_l2 ? (pos % cs) / scs : 0;
    enum qc_kind k;
    uint64_t hoff = 0;

    qc_load_entry (img, p, &e, &bm);

    /* Each pass classifies one subcluster (or cluster). */
    for (;;) {
      uint64_t unit_start = h->extended_l2 ? cluster_start + sc * scs
                                           : cluster_start;
      uint64_t unit_end = h->extended_l2 ? unit_start + scs
                                         : cluster_start + cs;

      r = classify (img, e, bm, sc, unit_start, &k, &hoff);
      if (r == -1)
        goto out;
      if (k == QC_DATA)
        hoff += pos - unit_start;
      if (pos == offset) {
        kind = k;
        host = hoff;
        run->copied = k == QC_DATA && (e & QCOW2_OFLAG_COPIED);
      }
      else if (k != kind || kind == QC_COMPRESSED ||
               (kind == QC_DATA &&
                run->copied != ((e & QCOW2_OFLAG_COPIED) != 0)) ||
               (kind == QC_DATA && hoff != host + (pos - offset)))
        goto done;
      /* A compressed cluster is one run, whatever its subclusters. */
      if (k == QC_COMPRESSED)
        unit_end = cluster_start + cs;
      step_end = unit_end < end ? unit_end : end;
      pos = step_end;
      if (pos >= end || !h->extended_l2 || k == QC_COMPRESSED || ++sc == 32)
        break;
    }
    l2_index++;
  }
 done:
  run->kind = kind;
  run->host = host;
  run->length = pos - offset;
 out:
  l2cache_put (img->cache, pin);
  return r;
}

struct decompress {
  struct qc_image *img;
  size_t in_len;
  uint8_t *out;
  bool corrupt;
};

static int
decompress (void *opaque, const uint8_t *in)
{
  struct decompress *d = opaque;
  const struct qcow2_header *h = &d->img->h;

  __atomic_add_fetch (&d->img->nr_decompressed, 1, __ATOMIC_RELAXED);
  if (codec_decompress (h->compression_type, in, d->in_len, d->out,
                        h->cluster_size) == -1) {
    d->corrupt = true;
    return -1;
  }
  return 0;
}

int
qc_read_compressed (struct qc_image *img, uint64_t desc, uint8_t *out,
                    uint64_t want_end)
{
  struct decompress d = { .img = img, .out = out };
  uint64_t coff, clen;
  int r;

  qc_compressed_extent (img, desc, &coff, &clen);
  if (coff >= blkdev_size (img->file))
    CORRUPT ("%s: compressed cluster at host offset 0x%" PRIx64
             " lies beyond the end of the file", img->name, coff);
  /* Decompressed straight from the read-ahead window it lies in. */
  d.in_len = clen;
  r = rahead_use (img->rahead, img->file, clen, coff, want_end,
                  decompress, &d);
  if (r == -1 && d.corrupt)
    qc_error ("%s: compressed cluster at host offset 0x%" PRIx64
              " (%" PRIu64 " bytes) is corrupt", img->name, coff, clen);
  return r;
}

uint64_t *
qc_load_l1 (struct qc_image *img, uint64_t offset, uint32_t l1_size,
            const char *what)
{
  uint64_t *l1 = calloc (l1_size ? l1_size : 1, sizeof *l1);
  uint32_t i;

  if (!l1) {
    qc_error ("%s: %s: %m", img->name, what);
    return NULL;
  }
  if (l1_size &&
      blkdev_pread (img->file, l1, (size_t) l1_size * 8, offset) == -1) {
    free (l1);
    return NULL;
  }
  for (i = 0; i < l1_size; i++)
    l1[i] = be64toh (l1[i]);
  return l1;
}
