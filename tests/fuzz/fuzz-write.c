/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target: write through the core into an image on a fixed-size
 * memory device, close it, reopen it read-only and read it back.
 *
 * Input: [L] [script: L bytes] [image: the rest]
 *
 *   script[0], the configuration:
 *     bits 0-1  compress: 0/1 off, 2 zlib, 3 zstd (opts.compress)
 *     bit 2     tiny L2 cache (one table), so tables are evicted
 *     bit 3     no backing device, even if the image names a backing file
 *     bits 4-6  room past the image in the device: n * 32 KiB (allocation
 *               past the device end must fail cleanly with ENOSPC)
 *     bit 7     check and repair (qc_image_check, repair=all) first
 *   then operations of 6 bytes: opcode, offset (24 bits BE), length
 *   (16 bits BE).  Opcode bits 0-2: 0 write, 1 write+FUA, 2 zero,
 *   3 zero+MAY_TRIM, 4 trim, 5 flush, 6 zero+FAST_ZERO (+MAY_TRIM with
 *   bit 6), 7 read and compare; bit 3: byte units (else 512-byte
 *   sectors); writes: bit 6 compressible data, bit 7 zeros.  Opcode 5
 *   with bit 7 before the first write: an internal snapshot operation
 *   (see snapshot_op).
 *
 * Besides sanitizer findings, failures without errno are flagged, and
 * for images that are consistent when opened (every cluster's refcount
 * at least its number of references, no reference past the end of the
 * file, COPIED flags only on clusters with refcount 1, and fully
 * readable before they are made writable) there is an oracle: a shadow
 * copy of the guest disk.  Making the image writable (and repairing it)
 * must not change what it reads; what was written or zeroed
 * (successfully) must read back, before closing and after reopening
 * (unless a flush failed); snapshots must not change; the reopened
 * image must still be consistent (leaks allowed).
 *
 * QC_FUZZ_VERBOSE=1 prints the core's messages, each operation and its
 * result, and why the oracle is off.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"
#include "l2cache.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"
#include "qcow2-int.h"

#define READ_BUDGET (16ULL << 20)
#define ORACLE_MAX_SIZE (4ULL << 20)    /* virtual sizes with an oracle */
#define SNAP_COMPARE_MAX 8              /* snapshots compared */
#define SNAP_COMPARE_BYTES (1ULL << 20)
#define MAX_WRITE (256 * 1024)

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  fuzz_init_log ();
  return 0;
}

/* ------------------------------------------------- the memory device */

/* Like blkdev_memory_new (fixed size, ENOSPC past the end), but the
 * bytes survive the close, and trim zeros (as punching a hole in a file
 * does), so that a cluster freed while still in use shows.
 */
struct fmem {
  struct blkdev dev;
  uint8_t *data;
};

static int
fmem_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  memcpy (buf, ((struct fmem *) dev)->data + offset, count);
  return 0;
}

static int
fmem_pwrite (struct blkdev *dev, const void *buf, size_t count,
             uint64_t offset, unsigned flags)
{
  if (offset > dev->size || count > dev->size - offset) {
    qc_error ("fmem: write past the end (offset %" PRIu64 ")", offset);
    errno = ENOSPC;
    return -1;
  }
  memcpy (((struct fmem *) dev)->data + offset, buf, count);
  return 0;
}

static int
fmem_trim (struct blkdev *dev, uint64_t count, uint64_t offset,
           unsigned flags)
{
  if (offset < dev->size) {
    if (count > dev->size - offset)
      count = dev->size - offset;
    memset (((struct fmem *) dev)->data + offset, 0, count);
  }
  return 0;
}

static void
fmem_close (struct blkdev *dev)
{
  /* The bytes stay: the harness reopens them. */
}

static const struct blkdev_ops fmem_ops = {
  .pread = fmem_pread,
  .pwrite = fmem_pwrite,
  .trim = fmem_trim,
  .close = fmem_close,
};

static void
fmem_init (struct fmem *m, uint8_t *data, uint64_t size, bool readonly)
{
  memset (m, 0, sizeof *m);
  m->dev.ops = &fmem_ops;
  m->dev.name = (char *) "fuzz";
  m->dev.size = size;
  m->dev.readonly = readonly;
  m->dev.fixed_size = true;
  m->data = data;
}

/* ------------------------------------------------------- consistency */

/* Refcounts at least the references, nothing out of range, COPIED only
 * with refcount 1 (else in-place writes would change shared clusters).
 * The image must be writable (its refcount table loaded).
 */
static bool
consistent (struct qc_image *img, const char **why)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  struct qc_refs r;
  uint64_t c, v, i, j;
  bool ok = true;

  if (qc_count_refs (img, true, &r) == -1) {
    *why = "counting references failed";
    return false;
  }
  if (r.out_of_range) {
    *why = "references past the end of the file";
    ok = false;
  }
  /* A refcount table or block cluster that is also something else (say
   * guest data) is a corruption qemu-img check reports; a refcount
   * update then changes that data, as it does in qemu.
   */
  for (i = 0; ok && i < img->reftable_entries; i++) {
    c = img->reftable[i] / cs;
    if (img->reftable[i] && c < r.nr_clusters && r.count[c] > 1) {
      *why = "a refcount block shares its cluster";
      ok = false;
    }
  }
  for (i = 0; ok && i < h->refcount_table_clusters; i++) {
    c = h->refcount_table_offset / cs + i;
    if (c < r.nr_clusters && r.count[c] > 1) {
      *why = "the refcount table shares a cluster";
      ok = false;
    }
  }
  for (c = 0; ok && c < r.nr_clusters; c++) {
    if (qc_refcount_get (img, c, &v) == -1) {
      *why = "reading a refcount failed";
      ok = false;
    }
    else if (v < r.count[c]) {
      *why = "a cluster has more references than its refcount";
      ok = false;
    }
  }
  qc_refs_free (&r);

  for (i = 0; ok && i < img->active.l1_size; i++) {
    uint64_t l1e = img->active.l1[i], l2off = l1e & QCOW2_OFFSET_MASK;
    struct l2cache_entry *pin;
    uint8_t *t;

    if (!l2off)
      continue;
    if ((l1e & QCOW2_OFLAG_COPIED) &&
        (qc_refcount_get (img, l2off / cs, &v) == -1 || v != 1)) {
      *why = "COPIED L1 entry on a table with refcount != 1";
      return false;
    }
    t = l2cache_get (img->cache, img->file, l2off, &pin);
    if (!t) {
      *why = "reading an L2 table failed";
      return false;
    }
    for (j = 0; ok && j < (1ULL << h->l2_bits); j++) {
      uint64_t e, bm;

      qc_load_entry (img, t + j * h->l2_entry_size, &e, &bm);
      if ((e & QCOW2_OFLAG_COMPRESSED) || !(e & QCOW2_OFLAG_COPIED) ||
          !(e & QCOW2_OFFSET_MASK))
        continue;
      if (qc_refcount_get (img, (e & QCOW2_OFFSET_MASK) / cs, &v) == -1 ||
          v != 1) {
        *why = "COPIED L2 entry on a cluster with refcount != 1";
        ok = false;
      }
    }
    l2cache_put (img->cache, pin);
  }
  return ok;
}

/* ---------------------------------------------------------- the run */

struct shadow {
  bool on;
  uint64_t size;
  uint8_t *bytes;               /* the guest disk as it must read */
  uint8_t *known;               /* 0: undefined (failed or trimmed) */
  bool flush_failed;            /* what reaches the disk is undefined */
  bool written;                 /* a write, zero or trim was issued */
  uint64_t snap[SNAP_COMPARE_MAX];      /* hashes of the snapshots */
  size_t nsnap;
};

static void
forget (struct shadow *s, uint64_t off, uint64_t len)
{
  if (s->on)
    memset (s->known + off, 0, len);
}

static void
compare (const struct shadow *s, const uint8_t *got, uint64_t off,
         uint64_t len, const char *when)
{
  uint64_t i;

  if (!s->on)
    return;
  if (memcmp (got, s->bytes + off, len) == 0)
    return;
  for (i = 0; i < len; i++)
    if (s->known[off + i] && got[i] != s->bytes[off + i])
      fuzz_fail ("%s: guest byte %" PRIu64 " reads 0x%02x, expected 0x%02x",
                 when, off + i, got[i], s->bytes[off + i]);
}

/* Read the whole view (oracle sizes only) and compare. */
static void
compare_all (const struct shadow *s, struct blkdev *view, const char *when)
{
  uint8_t *buf;

  if (!s->on)
    return;
  buf = fuzz_scratch (2, s->size);
  errno = 0;
  if (blkdev_pread (view, buf, s->size, 0) == -1)
    fuzz_fail ("%s: reading the consistent image failed (errno %d)",
               when, errno);
  compare (s, buf, 0, s->size, when);
}

static uint64_t
hash_bytes (const uint8_t *p, size_t n)
{
  uint64_t h = 0xcbf29ce484222325ULL;

  while (n--)
    h = (h ^ *p++) * 0x100000001b3ULL;
  return h;
}

/* Hashes of the first bytes of the first snapshots (0 if unreadable). */
static void
snapshot_hashes (struct qc_image *img, uint64_t *hashes, size_t *n)
{
  size_t i, nr = qc_image_nr_snapshots (img);
  uint8_t *buf = fuzz_scratch (3, SNAP_COMPARE_BYTES);

  *n = nr < SNAP_COMPARE_MAX ? nr : SNAP_COMPARE_MAX;
  for (i = 0; i < *n; i++) {
    /* By index: names may be empty or repeated. */
    struct qc_view *sv = qc_snapshot_view (img, i);
    struct blkdev *v = sv ? &sv->dev : NULL;
    uint64_t len;

    hashes[i] = 0;
    if (!v)
      continue;
    len = v->size < SNAP_COMPARE_BYTES ? v->size : SNAP_COMPARE_BYTES;
    if (blkdev_pread (v, buf, len, 0) == 0)
      hashes[i] = hash_bytes (buf, len) | 1;
  }
}

static void
fill (uint8_t *buf, size_t len, uint8_t opc, uint64_t seed)
{
  size_t i;

  if (opc & 0x80)
    memset (buf, 0, len);
  else if (opc & 0x40)
    memset (buf, opc ^ (uint8_t) seed, len);
  else {
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (i = 0; i < len; i++) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      buf[i] = x;
    }
  }
}

static bool verbose;

static void
trace (const char *what, uint64_t off, uint64_t len, int r)
{
  if (verbose)
    fprintf (stderr, "fuzz-write: %s %" PRIu64 "+%" PRIu64 " -> %d%s%s\n",
             what, off, len, r, r ? ": " : "", r ? strerror (errno) : "");
}

/* Read the whole view into the shadow again (after a snapshot is
 * applied); the oracle goes off if it cannot.
 */
static void
reload (struct shadow *s, struct blkdev *view)
{
  uint64_t budget;

  if (view->size > ORACLE_MAX_SIZE) {
    s->on = false;
    return;
  }
  s->size = view->size;
  s->bytes = fuzz_scratch (5, s->size);
  s->known = fuzz_scratch (6, s->size);
  memset (s->known, 1, s->size);
  budget = s->size;
  if (fuzz_read_view (view, &budget, s->bytes, s->size) == -1)
    s->on = false;
}

/* Internal snapshot operations, allowed before the image serves (so
 * only before the first write of the script): opcode 5 with bit 7;
 * bits 4-5: 0 create "fzN", 1 delete, 2 apply, 3 create with an existing
 * name (refused); the last byte picks the snapshot.  The active disk
 * must not change (apply: it becomes the snapshot), the image must stay
 * consistent.
 */
static void
snapshot_op (struct qc_image *img, struct blkdev *view, struct shadow *s,
             const uint8_t *p, unsigned idx)
{
  static const char *const names[] = { "create", "delete", "apply",
                                       "create (existing name)" };
  unsigned sub = (p[0] >> 4) & 3;
  size_t nr = qc_image_nr_snapshots (img), i = 0, j;
  enum qc_snapshot_op op = QC_SNAPSHOT_CREATE;
  char name[32], *copy = NULL;
  const char *target = name;
  uint64_t want = 0;
  const char *why = "";
  int r;

  snprintf (name, sizeof name, "fz%u", idx);
  if (nr > 0 && sub > 0) {
    i = p[5] % nr;
    /* A copy: the operation may replace the snapshot table. */
    copy = strdup (qc_image_snapshot_name (img, i));
    if (!copy)
      abort ();
    target = copy;
    /* The operation acts on the first snapshot of that name. */
    for (j = 0; j < i; j++)
      if (strcmp (qc_image_snapshot_name (img, j), target) == 0)
        break;
    i = j;
    op = sub == 1 ? QC_SNAPSHOT_DELETE : sub == 2 ? QC_SNAPSHOT_APPLY
      : QC_SNAPSHOT_CREATE;
    if (op == QC_SNAPSHOT_APPLY && s->on) {
      struct qc_view *sv = qc_snapshot_view (img, i);
      uint8_t *buf = fuzz_scratch (3, SNAP_COMPARE_BYTES);
      uint64_t len;

      if (!sv)
        s->on = false;
      else {
        len = sv->dev.size < SNAP_COMPARE_BYTES ? sv->dev.size
          : SNAP_COMPARE_BYTES;
        if (blkdev_pread (&sv->dev, buf, len, 0) == -1)
          s->on = false;
        else
          want = hash_bytes (buf, len) ^ len;
      }
    }
  }
  else
    sub = 0;
  errno = 0;
  r = qc_image_snapshot_op (img, op, target);
  if (verbose)
    fprintf (stderr, "fuzz-write: snapshot %s '%s' -> %d%s%s\n", names[sub],
             target, r, r ? ": " : "", r ? strerror (errno) : "");
  free (copy);
  target = NULL;
  if (r == -1)
    fuzz_check_errno ("qc_image_snapshot_op");
  if (!s->on)
    return;
  if (op == QC_SNAPSHOT_APPLY && r == 0) {
    uint8_t *buf = fuzz_scratch (3, SNAP_COMPARE_BYTES);
    uint64_t len = view->size < SNAP_COMPARE_BYTES ? view->size
      : SNAP_COMPARE_BYTES;

    errno = 0;
    if (blkdev_pread (view, buf, len, 0) == -1)
      fuzz_fail ("reading the disk after applying a snapshot failed");
    if ((hash_bytes (buf, len) ^ len) != want)
      fuzz_fail ("after applying snapshot %zu the disk does not read as "
                 "the snapshot did", i);
    reload (s, view);
  }
  else
    compare_all (s, view, "after a snapshot operation");
  if (s->on && !consistent (img, &why))
    fuzz_fail ("snapshot %s left the image inconsistent: %s", names[sub],
               why);
  if (s->on)
    snapshot_hashes (img, s->snap, &s->nsnap);
}

static void
run_op (struct qc_image *img, struct blkdev *view, struct shadow *s,
        const uint8_t *p, unsigned idx)
{
  uint8_t opc = p[0];
  unsigned kind = opc & 7;
  bool bytes = opc & 8;
  uint64_t raw_off = (uint64_t) p[1] << 16 | p[2] << 8 | p[3];
  uint64_t raw_len = (uint64_t) p[4] << 8 | p[5];
  uint64_t size = view->size, off, len;
  uint8_t *buf;
  unsigned flags;
  int r;

  if (kind == 5 && (opc & 0x80) && !s->written) {
    snapshot_op (img, view, s, p, idx);
    return;
  }
  if (kind == 5) {
    errno = 0;
    r = blkdev_flush (view);
    trace ("flush", 0, 0, r);
    if (r == -1) {
      fuzz_check_errno ("flush");
      s->flush_failed = true;
    }
    return;
  }
  if (size == 0)
    return;
  if (kind != 7)
    s->written = true;
  off = (bytes ? raw_off : raw_off * 512) % size;
  len = bytes ? raw_len + 1 : ((raw_len & 0xfff) + 1) * 512;
  if (len > size - off)
    len = size - off;

  switch (kind) {
  case 0: case 1:
    if (len > MAX_WRITE)
      len = MAX_WRITE;
    buf = malloc (len);
    if (!buf)
      abort ();
    fill (buf, len, opc, idx * 1000003ULL + off);
    errno = 0;
    r = blkdev_pwrite (view, buf, len, off, kind == 1 ? BLKDEV_FUA : 0);
    trace (kind == 1 ? "write+fua" : "write", off, len, r);
    if (r == -1) {
      fuzz_check_errno ("pwrite");
      forget (s, off, len);
      if (kind == 1)            /* maybe the flush */
        s->flush_failed = true;
    }
    else if (s->on) {
      memcpy (s->bytes + off, buf, len);
      memset (s->known + off, 1, len);
    }
    free (buf);
    break;
  case 2: case 3: case 6: {
    flags = kind == 3 ? BLKDEV_MAY_TRIM : 0;
    if (kind == 6)
      flags = BLKDEV_FAST_ZERO | (opc & 0x40 ? BLKDEV_MAY_TRIM : 0);
    errno = 0;
    r = blkdev_zero (view, len, off, flags);
    trace (flags & BLKDEV_FAST_ZERO ? "zero+fast" :
           flags & BLKDEV_MAY_TRIM ? "zero+may_trim" : "zero", off, len, r);
    if (r == -1) {
      fuzz_check_errno ("zero");
      forget (s, off, len);
    }
    else if (s->on) {
      memset (s->bytes + off, 0, len);
      memset (s->known + off, 1, len);
    }
    break;
  }
  case 4:
    errno = 0;
    r = blkdev_trim (view, len, off, 0);
    trace ("trim", off, len, r);
    if (r == -1)
      fuzz_check_errno ("trim");
    forget (s, off, len);       /* advisory: contents undefined */
    break;
  case 7:
    buf = malloc (len);
    if (!buf)
      abort ();
    errno = 0;
    if (blkdev_pread (view, buf, len, off) == -1) {
      fuzz_check_errno ("pread");
      if (s->on)
        fuzz_fail ("reading a consistent image failed");
    }
    else
      compare (s, buf, off, len, "read during the script");
    free (buf);
    break;
  }
}

static void
set_options (struct qc_options *opts, uint8_t cfg, struct blkdev *backing)
{
  qc_options_init (opts);
  opts->locking = false;
  opts->compress = (cfg & 3) >= 2 ? (cfg & 3) - 2 : -1;
  /* Encrypted images made with it open (make-luks-seeds.c), so that
   * encrypted writes (whole and partial sectors) are fuzzed too.
   */
  opts->passphrase = (char *) FUZZ_PASSPHRASE;
  if (cfg & 4)
    opts->cache_size = 1;       /* at least one table */
  if (backing)
    opts->backing_dev = backing;
  else
    opts->backing = (char *) "none";
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  const uint8_t *script, *image;
  size_t slen, ilen, nops, i;
  uint8_t cfg;
  uint64_t devsize, budget;
  uint8_t *bytes;
  struct fmem mem;
  struct blkdev *backing = NULL, *view;
  struct qc_options opts;
  struct qc_image *img;
  struct shadow s = { 0 };
  uint64_t snap_after[SNAP_COMPARE_MAX];
  size_t nsnap2;
  const char *why = "";

  if (size < 1)
    return 0;
  slen = data[0];
  if (slen > size - 1)
    slen = size - 1;
  script = data + 1;
  image = data + 1 + slen;
  ilen = size - 1 - slen;
  cfg = slen > 0 ? script[0] : 0;
  nops = slen > 0 ? (slen - 1) / 6 : 0;

  devsize = ilen + ((cfg >> 4) & 7) * 32768ULL;
  /* Exact size (not scratch): ASan sees any access past the device. */
  bytes = calloc (1, devsize ? devsize : 1);
  if (!bytes)
    abort ();
  memcpy (bytes, image, ilen);
  fmem_init (&mem, bytes, devsize, false);
  if (fuzz_names_backing (image, ilen) && !(cfg & 8))
    backing = fuzz_backing ();
  set_options (&opts, cfg, backing);

  errno = 0;
  img = qc_image_open (&opts, &mem.dev);
  if (!img) {
    fuzz_check_errno ("qc_image_open");
    goto out;
  }
  view = qc_image_default_view (img);

  /* The guest disk as the image reads before it is writable (as it must
   * read after reopening read-only), for the oracle.
   */
  if (view->size <= ORACLE_MAX_SIZE) {
    s.size = view->size;
    s.bytes = fuzz_scratch (5, s.size);
    s.known = fuzz_scratch (6, s.size);
    memset (s.known, 1, s.size);
    budget = s.size;
    s.on = fuzz_read_view (view, &budget, s.bytes, s.size) == 0;
    if (s.on)
      snapshot_hashes (img, s.snap, &s.nsnap);
  }

  errno = 0;
  if (qc_image_make_writable (img) == -1) {
    fuzz_check_errno ("qc_image_make_writable");
    qc_image_close (img);
    goto out;
  }
  if (cfg & 0x80) {
    struct qc_check_result res;
    errno = 0;
    if (qc_image_check (img, QC_REPAIR_ALL, &res) == -1)
      fuzz_check_errno ("qc_image_check");
    /* Fixing COPIED flags rewrites L2 tables, and in a corrupt image an
     * L2 table can also be a data cluster the guest reads (as qemu-img
     * check -r all does, that data changes).
     */
    else if (res.copied_fixed && s.on) {
      s.on = false;
      why = "repair fixed COPIED flags";
    }
  }
  view = qc_image_default_view (img);

  /* The oracle, for consistent images of moderate size. */
  if (s.on && (view->readonly || !consistent (img, &why)))
    s.on = false;
  /* Making the image writable (and repairing it) must not change what
   * it reads.
   */
  if (s.on)
    compare_all (&s, view, "after making the image writable");

  verbose = getenv ("QC_FUZZ_VERBOSE") != NULL;
  if (verbose)
    fprintf (stderr, "fuzz-write: size %" PRIu64 ", %zu ops, oracle %s%s\n",
             view->size, nops, s.on ? "on" : "off: ", s.on ? "" : why);
  for (i = 0; i < nops; i++)
    run_op (img, view, &s, script + 1 + 6 * i, i);

  compare_all (&s, view, "before closing");
  /* A flush that fails (say, ENOSPC writing back a table that lies in
   * a partial last cluster of the device) leaves the disk undefined:
   * no oracle after reopening then.
   */
  errno = 0;
  if (blkdev_flush (view) == -1) {
    fuzz_check_errno ("flush");
    s.flush_failed = true;
  }
  if (s.flush_failed)
    s.on = false;
  qc_image_close (img);

  /* Reopen what is on the device, read-only, and read it all. */
  fmem_init (&mem, bytes, devsize, true);
  set_options (&opts, cfg, backing);
  opts.compress = -1;
  opts.readonly = true;
  errno = 0;
  img = qc_image_open (&opts, &mem.dev);
  if (!img) {
    fuzz_check_errno ("qc_image_open (reopen)");
    if (s.on)
      fuzz_fail ("a consistent image no longer opens after writing: %s",
                 qc_last_error ());
    goto out;
  }
  view = qc_image_default_view (img);
  budget = READ_BUDGET;
  (void) fuzz_read_view (view, &budget, NULL, 0);
  if (s.on) {
    if (view->size != s.size)
      fuzz_fail ("the virtual size changed from %" PRIu64 " to %" PRIu64,
                 s.size, view->size);
    compare_all (&s, view, "after reopening");
    snapshot_hashes (img, snap_after, &nsnap2);
    if (nsnap2 != s.nsnap)
      fuzz_fail ("%zu snapshots before, %zu after", s.nsnap, nsnap2);
    for (i = 0; i < s.nsnap; i++)
      if (s.snap[i] != snap_after[i])
        fuzz_fail ("snapshot %zu changed", i);
  }
  for (i = 0; i < qc_image_nr_snapshots (img) && i < 4; i++) {
    struct blkdev *v = qc_image_view (img, qc_image_snapshot_name (img, i));
    if (v)
      (void) fuzz_read_view (v, &budget, NULL, 0);
  }
  qc_image_close (img);

  /* Consistent before, consistent after (leaks allowed). */
  if (s.on) {
    fmem_init (&mem, bytes, devsize, false);
    set_options (&opts, cfg, backing);
    img = qc_image_open (&opts, &mem.dev);
    if (!img || qc_image_make_writable (img) == -1)
      fuzz_fail ("reopening the written image writable failed: %s",
                 qc_last_error ());
    if (!consistent (img, &why))
      fuzz_fail ("the image is corrupt after writing: %s", why);
    qc_image_close (img);
  }

 out:
  free (bytes);
  return 0;
}
