/* SPDX-License-Identifier: BSD-3-Clause */
/* Crash replay at the block-device seam.
 *
 * An image made by qemu-img is opened on a recording device: a memory
 * device below that logs every write (pwrite, zero, trim) and every
 * flush the core issues, in order.  The files the image names (backing
 * files, an external data file) are opened through the core's open
 * hook on recording devices too, logging into the same log, so a
 * backing chain and a data file are covered like the image itself.  A
 * workload runs through the default view (allocating writes,
 * partial-cluster copy-on-write, zeroing, trimming, guest flushes, a
 * clean close).  Then a power cut is replayed before each flush record
 * and after the last record: each file holds its initial bytes, every
 * write that a flush of that same file made durable, and any subset of
 * its writes since (unflushed writes may be reordered, dropped or,
 * sector by sector, torn; a flush of one file makes nothing of another
 * durable).  For each such state:
 *
 *   - qemu-img check --output=json finds no corruption (leaks are
 *     allowed; after the clean close: nothing at all);
 *   - what the guest wrote before its last completed flush reads back,
 *     through our reader (every state) and through qemu-img convert
 *     (some states); bytes written after that flush may hold their old
 *     value or any value written to them since.
 *
 * A variant drops trims entirely (a file system or device without
 * discard): freed clusters then keep their old bytes when reused.
 *
 * Environment: CRASH_REPLAY_STATES=N sets the number of states checked
 * per image (default 60; every flush boundary is checked, and at least
 * two subsets of each window), CRASH_REPLAY_SEED the workloads' seed,
 * CRASH_REPLAY_TIMES=1 prints where the time goes.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)

/* ------------------------------------------------- recording device */

enum rec_kind { REC_WRITE, REC_FLUSH };

struct rec {
  enum rec_kind kind;
  unsigned dev;                 /* which device (struct run's devs[]) */
  const char *what;             /* "pwrite", "zero", "trim", "flush" */
  uint64_t off;
  size_t len;
  uint8_t *data;                /* what the write leaves (zeros for zero
                                 * and trim) */
};

struct recdev {
  struct blkdev dev;            /* first: a recdev is a device */
  struct recdev *log;           /* the device whose recs[] log this one's
                                 * requests (itself, or the image's: one
                                 * order for all the files of an image) */
  unsigned id;                  /* rec.dev of its records */
  char *fname;                  /* its file name, without directory */
  struct blkdev *mem;           /* the bytes (replaced when it grows) */
  uint64_t cap;                 /* mem->size */
  bool trim_noop;               /* trims do nothing (and are not logged) */
  bool closed;
  struct rec *recs;
  size_t n, nalloc;
};

static void
rec_add (struct recdev *d, enum rec_kind kind, const char *what,
         uint64_t off, size_t len, const void *data)
{
  struct recdev *r = d->log;
  struct rec *x;

  if (r->n == r->nalloc) {
    r->nalloc = r->nalloc ? r->nalloc * 2 : 256;
    r->recs = realloc (r->recs, r->nalloc * sizeof *r->recs);
    ck_assert (r->recs != NULL);
  }
  x = &r->recs[r->n++];
  x->kind = kind;
  x->dev = d->id;
  x->what = what;
  x->off = off;
  x->len = len;
  x->data = NULL;
  if (kind == REC_WRITE) {
    x->data = malloc (len ? len : 1);
    ck_assert (x->data != NULL);
    if (data)
      memcpy (x->data, data, len);
    else
      memset (x->data, 0, len);
  }
}

/* Make room for bytes up to end: a larger memory device with the old
 * contents.
 */
static int
rec_reserve (struct recdev *r, uint64_t end)
{
  uint64_t cap = r->cap ? r->cap : MiB;
  struct blkdev *m;
  uint8_t *buf;

  if (end <= r->cap)
    return 0;
  while (cap < end)
    cap *= 2;
  m = blkdev_memory_new (NULL, cap, false);
  if (!m)
    return -1;
  if (r->dev.size > 0) {
    buf = malloc (r->dev.size);
    ck_assert (buf != NULL);
    ck_assert_int_eq (blkdev_pread (r->mem, buf, r->dev.size, 0), 0);
    ck_assert_int_eq (blkdev_pwrite (m, buf, r->dev.size, 0, 0), 0);
    free (buf);
  }
  blkdev_close (r->mem);
  r->mem = m;
  r->cap = cap;
  return 0;
}

static int
rec_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  struct recdev *r = (struct recdev *) dev;

  return blkdev_pread (r->mem, buf, count, offset);
}

static int
rec_write (struct recdev *r, const char *what, const void *buf,
           size_t count, uint64_t offset, unsigned flags)
{
  if (rec_reserve (r, offset + count) == -1)
    return -1;
  if (buf) {
    if (blkdev_pwrite (r->mem, buf, count, offset, 0) == -1)
      return -1;
  }
  else if (blkdev_zero (r->mem, count, offset, 0) == -1)
    return -1;
  if (offset + count > r->dev.size)
    r->dev.size = offset + count;
  rec_add (r, REC_WRITE, what, offset, count, buf);
  if (flags & BLKDEV_FUA)
    rec_add (r, REC_FLUSH, "flush (FUA)", 0, 0, NULL);
  return 0;
}

static int
rec_pwrite (struct blkdev *dev, const void *buf, size_t count,
            uint64_t offset, unsigned flags)
{
  return rec_write ((struct recdev *) dev, "pwrite", buf, count, offset,
                    flags);
}

static int
rec_zero (struct blkdev *dev, uint64_t count, uint64_t offset,
          unsigned flags)
{
  return rec_write ((struct recdev *) dev, "zero", NULL, count, offset,
                    flags & BLKDEV_FUA);
}

/* Like a file's hole punching: within the size, reads as zeros after. */
static int
rec_trim (struct blkdev *dev, uint64_t count, uint64_t offset,
          unsigned flags)
{
  struct recdev *r = (struct recdev *) dev;

  if (r->trim_noop || offset >= dev->size)
    return 0;
  if (count > dev->size - offset)
    count = dev->size - offset;
  return rec_write (r, "trim", NULL, count, offset, flags & BLKDEV_FUA);
}

static int
rec_flush (struct blkdev *dev)
{
  struct recdev *r = (struct recdev *) dev;

  rec_add (r, REC_FLUSH, "flush", 0, 0, NULL);
  return 0;
}

static void
rec_close (struct blkdev *dev)
{
  struct recdev *r = (struct recdev *) dev;

  /* The log outlives the image: freed by recdev_free. */
  blkdev_close (r->mem);
  r->mem = NULL;
  r->closed = true;
}

static const struct blkdev_ops rec_ops = {
  .pread = rec_pread,
  .pwrite = rec_pwrite,
  .zero = rec_zero,
  .trim = rec_trim,
  .flush = rec_flush,
  .close = rec_close,
};

static struct recdev *
recdev_new (const uint8_t *data, size_t len, const char *name,
            bool trim_noop)
{
  struct recdev *r = calloc (1, sizeof *r);

  ck_assert (r != NULL);
  r->log = r;
  r->dev.ops = &rec_ops;
  r->dev.name = strdup (name);
  r->fname = strdup (strrchr (name, '/') ? strrchr (name, '/') + 1 : name);
  r->dev.readonly = false;
  r->dev.fixed_size = false;
  r->trim_noop = trim_noop;
  ck_assert_int_eq (rec_reserve (r, len), 0);
  ck_assert_int_eq (blkdev_pwrite (r->mem, data, len, 0, 0), 0);
  r->dev.size = len;
  return r;
}

static void
recdev_free (struct recdev *r)
{
  size_t i;

  if (!r)
    return;
  ck_assert (r->closed);
  for (i = 0; i < r->n; i++)
    free (r->recs[i].data);
  free (r->recs);
  free (r->dev.name);
  free (r->fname);
  free (r);
}

/* ---------------------------------------------------- random numbers */

static uint64_t
rnd (uint64_t *s)
{
  /* splitmix64 */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t
rnd_below (uint64_t *s, uint64_t n)
{
  return n ? rnd (s) % n : 0;
}

/* -------------------------------------------------------- workloads */

enum gkind { G_WRITE, G_ZERO, G_ZERO_TRIM, G_TRIM, G_FLUSH, G_CLOSE };

/* A guest request and the device records it caused. */
struct gop {
  enum gkind kind;
  uint64_t off, len;
  uint8_t *data;                /* G_WRITE: the bytes written */
  size_t rec_start, rec_end;
};

struct config {
  const char *name;
  /* Shell commands run in the test directory to make img.qcow2. */
  const char *make;
  uint64_t size;                /* virtual size */
  uint64_t cluster;
  uint64_t cache_size;          /* 0: default */
  bool trim_noop;
  unsigned nops;                /* random requests */
  unsigned big_writes;          /* 384 KiB writes first (table growth) */
  /* Requests run first: "w OFF LEN" write, "z" zero, "zt" zero that
   * may trim, "t" trim, "f" flush; separated by ';'; sizes in bytes or
   * with k/M.
   */
  const char *script;
  unsigned files;               /* files the image opens: itself, its
                                 * backing chain, its data file */
};

static const struct config configs[] = {
  { "64k",
    "qemu-img create -q -f qcow2 -o cluster_size=65536 img.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x12 2M 512k' "
    "img.qcow2",
    4 * MiB, 65536, 0, false, 36, 0, NULL, 1 },
  { "512-refcount64-growth",
    "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "
    "img.qcow2 4M",
    4 * MiB, 512, 0, false, 24, 7, NULL, 1 },
  { "extended-l2",
    "qemu-img create -q -f qcow2 -o cluster_size=65536,extended_l2=on "
    "img.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0x21 0 300k' -c 'write -P 0x22 1M 64k' "
    "img.qcow2",
    4 * MiB, 65536, 0, false, 36, 0, NULL, 1 },
  { "snapshot",
    "qemu-img create -q -f qcow2 -o cluster_size=4096 img.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0x31 0 2M' -c 'write -P 0x32 3M 256k' "
    "img.qcow2 && qemu-img snapshot -c s1 img.qcow2",
    4 * MiB, 4096, 0, false, 36, 0, NULL, 1 },
  { "snapshot-no-discard",
    "qemu-img create -q -f qcow2 -o cluster_size=4096 img.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0x41 0 2M' -c 'write -P 0x42 3M 256k' "
    "img.qcow2 && qemu-img snapshot -c s1 img.qcow2",
    4 * MiB, 4096, 8192, true, 36, 0, NULL, 1 },
  { "backing",
    "qemu-img create -q -f qcow2 -o cluster_size=65536 base.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0x51 0 3M' base.qcow2 && "
    "qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.qcow2 "
    "-F qcow2 img.qcow2 4M",
    4 * MiB, 65536, 0, false, 30, 0, NULL, 2 },
  { "compressed-no-discard",
    "qemu-img create -q -f raw src.raw 4M && "
    "qemu-io -f raw -c 'write -P 0x61 0 3M' src.raw && "
    "qemu-img convert -c -O qcow2 -o cluster_size=65536 src.raw img.qcow2",
    4 * MiB, 65536, 0, true, 30, 0, NULL, 1 },
  { "512-refcount64-snapshot-small-cache",
    "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "
    "img.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0x71 0 1M' img.qcow2 && "
    "qemu-img snapshot -c s1 img.qcow2",
    4 * MiB, 512, 4096, false, 24, 5, NULL, 1 },
  /* Freed data clusters keep their bytes (no discard) and are reused
   * for new L2 tables.
   */
  { "512-refcount64-no-discard",
    "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "
    "img.qcow2 4M",
    4 * MiB, 512, 0, true, 16, 0,
    "w 0 64k; f; zt 0 64k; f; f; w 2M 8k; f; w 3M 20k; f", 1 },
  /* A two-level backing chain (base <- mid <- img), every file on a
   * recording device: copy-on-write reads come from both levels, and a
   * write to either backing file fails the workload.
   */
  { "backing-chain",
    "qemu-img create -q -f qcow2 -o cluster_size=65536 base.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0x81 0 3M' base.qcow2 && "
    "qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.qcow2 "
    "-F qcow2 mid.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0x82 1M 1M' mid.qcow2 && "
    "qemu-img create -q -f qcow2 -o cluster_size=65536 -b mid.qcow2 "
    "-F qcow2 img.qcow2 4M",
    4 * MiB, 65536, 0, false, 30, 0, NULL, 3 },
  /* An external data file: guest data goes to img.data, metadata to
   * img.qcow2, and a cut leaves each file with its own subset of
   * unflushed writes.  With data_file_raw the data file alone must read
   * as the guest disk too.
   */
  { "data-file",
    "qemu-img create -q -f qcow2 -o cluster_size=65536,data_file=img.data "
    "img.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0x91 0 1M' -c 'write -P 0x92 2M 512k' "
    "img.qcow2",
    4 * MiB, 65536, 0, false, 30, 0, NULL, 2 },
  { "data-file-raw",
    "qemu-img create -q -f qcow2 -o cluster_size=65536,data_file=img.data,"
    "data_file_raw=on img.qcow2 4M && "
    "qemu-io -f qcow2 -c 'write -P 0xa1 0 1M' img.qcow2",
    4 * MiB, 65536, 0, false, 30, 0, NULL, 2 },
};

#define NR_CONFIGS (sizeof configs / sizeof configs[0])

#define P(name) unit_path (unit_dir, name)

static void
pick_range (uint64_t *s, const struct config *c, uint64_t *off,
            uint64_t *len)
{
  uint64_t cs = c->cluster, size = c->size, r = rnd_below (s, 100);
  uint64_t maxlen = 16 * cs < 128 * KiB ? 16 * cs : 128 * KiB;

  if (maxlen < 8 * KiB)
    maxlen = 8 * KiB;
  if (r < 35) {
    static const uint64_t mult[] = { 2, 2, 4, 6, 1, 1 };   /* in cs/2 */
    *len = mult[rnd_below (s, 6)] * cs / 2;
    if (rnd_below (s, 3) == 0)
      *len = rnd_below (s, 2) ? 512 : 4096;
  }
  else if (r < 65)
    *len = 1 + rnd_below (s, 3 * cs);
  else
    *len = 1 + rnd_below (s, maxlen);
  if (*len > size)
    *len = size;
  /* Half the requests in the first MiB, where the image has data. */
  if (rnd_below (s, 2))
    *off = rnd_below (s, MiB);
  else
    *off = rnd_below (s, size);
  if (rnd_below (s, 3) == 0)
    *off &= ~(cs - 1);
  else if (rnd_below (s, 2))
    *off &= ~511ULL;
  if (*off + *len > size)
    *off = size - *len;
}

static uint64_t
parse_size (char **p)
{
  uint64_t v = strtoull (*p, p, 0);

  if (**p == 'k') { v *= KiB; (*p)++; }
  else if (**p == 'M') { v *= MiB; (*p)++; }
  return v;
}

/* The guest requests of a configuration (before running them). */
static struct gop *
make_workload (const struct config *c, uint64_t seed, size_t *n)
{
  uint64_t s = seed;
  size_t cap = c->nops + c->big_writes + 64, i = 0, k;
  struct gop *g = calloc (cap, sizeof *g);

  ck_assert (g != NULL);
  if (c->script) {
    char *copy = strdup (c->script), *tok, *save = NULL;
    for (tok = strtok_r (copy, ";", &save); tok;
         tok = strtok_r (NULL, ";", &save)) {
      char op[4];
      int used = 0;
      while (*tok == ' ')
        tok++;
      ck_assert (sscanf (tok, "%3s%n", op, &used) == 1);
      tok += used;
      if (strcmp (op, "f") == 0)
        g[i].kind = G_FLUSH;
      else {
        g[i].kind = strcmp (op, "w") == 0 ? G_WRITE :
          strcmp (op, "z") == 0 ? G_ZERO :
          strcmp (op, "zt") == 0 ? G_ZERO_TRIM : G_TRIM;
        g[i].off = parse_size (&tok);
        g[i].len = parse_size (&tok);
        ck_assert (g[i].len > 0 && g[i].off + g[i].len <= c->size);
      }
      i++;
      ck_assert (i < cap - c->nops - c->big_writes - 2);
    }
    free (copy);
  }
  /* Large writes: many clusters, tables and refcount blocks at once. */
  for (k = 0; k < c->big_writes; k++) {
    g[i].kind = G_WRITE;
    g[i].len = 384 * KiB;
    g[i].off = (k * 448 * KiB + rnd_below (&s, 64) * 512) %
      (c->size - g[i].len);
    i++;
    if (k % 2 == 1)
      g[i++].kind = G_FLUSH;
  }
  for (k = 0; k < c->nops; k++) {
    uint64_t r = rnd_below (&s, 100);
    pick_range (&s, c, &g[i].off, &g[i].len);
    if (r < 12)
      g[i].kind = G_FLUSH;
    else if (r < 64)
      g[i].kind = G_WRITE;
    else if (r < 76)
      g[i].kind = G_ZERO;
    else if (r < 88)
      g[i].kind = G_ZERO_TRIM;
    else
      g[i].kind = G_TRIM;
    i++;
  }
  g[i++].kind = G_FLUSH;
  g[i++].kind = G_CLOSE;
  ck_assert (i <= cap);
  *n = i;
  return g;
}

static void
apply_model (uint8_t *model, const struct gop *g, const uint8_t *readback)
{
  switch (g->kind) {
  case G_WRITE:
    memcpy (model + g->off, g->data, g->len);
    break;
  case G_ZERO: case G_ZERO_TRIM:
    memset (model + g->off, 0, g->len);
    break;
  case G_TRIM:
    memcpy (model + g->off, readback, g->len);
    break;
  default:
    break;
  }
}

/* ------------------------------------------------------- the checks */

#define MAX_DEVS 4

struct run {
  const struct config *c;
  uint8_t *init_img;            /* the image file before the workload */
  size_t init_len;
  uint8_t *init_guest;          /* what the guest saw before */
  struct recdev *rd;            /* the image's device, and the log */
  struct recdev *devs[MAX_DEVS];        /* devs[0] is rd; then the files
                                         * the image opened (backing
                                         * files, its data file) */
  size_t ndev;
  uint8_t *base[MAX_DEVS];      /* per device: every write made durable
                                 * by a flush of that device so far */
  size_t base_len[MAX_DEVS];
  struct gop *g;
  uint8_t **trim_back;          /* per gop: what a trim read back */
  size_t ng;

  /* Results. */
  unsigned states, qemu_reads, windows, leaky, failures;
  bool final_checked;           /* the state after the clean close */
  double t_write, t_check, t_ours, t_qemu;      /* seconds */
  char report[3072];
};

static void
report (struct run *R, const char *fs, ...)
  __attribute__ ((format (printf, 2, 3)));
static void
report (struct run *R, const char *fs, ...)
{
  va_list args;
  size_t n = strlen (R->report);

  if (n >= sizeof R->report - 1)
    return;
  va_start (args, fs);
  vsnprintf (R->report + n, sizeof R->report - n, fs, args);
  va_end (args);
}

/* The value a guest request leaves at byte i (which it covers). */
static uint8_t
gop_byte (const struct run *R, size_t j, uint64_t i)
{
  const struct gop *g = &R->g[j];

  return g->kind == G_WRITE ? g->data[i - g->off] : 0;
}

/* Compare the guest disk read from a state with what must be there:
 * sure[] (as of the last completed guest flush) except where a later
 * request [first, last) covers a byte and left that value.  Returns the
 * first bad offset or -1.
 */
static int64_t
check_guest (const struct run *R, const uint8_t *got, const uint8_t *sure,
             size_t first, size_t last)
{
  uint64_t size = R->c->size, i;
  size_t j;

  for (i = 0; i < size; i++) {
    bool ok = false;
    if (i % 4096 == 0 && size - i >= 4096 &&
        memcmp (got + i, sure + i, 4096) == 0) {
      i += 4095;
      continue;
    }
    if (got[i] == sure[i])
      continue;
    for (j = first; j < last && !ok; j++) {
      const struct gop *g = &R->g[j];
      if ((g->kind == G_WRITE || g->kind == G_ZERO ||
           g->kind == G_ZERO_TRIM || g->kind == G_TRIM) &&
          g->off <= i && i < g->off + g->len && gop_byte (R, j, i) == got[i])
        ok = true;
    }
    if (!ok)
      return i;
  }
  return -1;
}

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t
json_num (const char *json, const char *key)
{
  char pat[64];
  const char *p;

  snprintf (pat, sizeof pat, "\"%s\":", key);
  p = strstr (json, pat);
  return p ? strtoull (p + strlen (pat), NULL, 10) : 0;
}

/* Read the guest disk of the image file at path with our reader. */
static bool
read_ours (const char *path, uint8_t *buf, uint64_t size, char *err,
           size_t errlen)
{
  struct qc_options o;
  struct qc_image *img;
  struct blkdev *v;
  bool ok = false;

  qc_options_init (&o);
  o.file = strdup (path);
  o.locking = false;
  o.readonly = true;
  img = qc_image_open (&o, NULL);
  if (!img)
    snprintf (err, errlen, "open: %s", qc_last_error ());
  else {
    v = qc_image_default_view (img);
    if (v->size != size)
      snprintf (err, errlen, "size %" PRIu64, v->size);
    else if (blkdev_pread (v, buf, size, 0) == -1)
      snprintf (err, errlen, "read: %s", qc_last_error ());
    else
      ok = true;
    qc_image_close (img);
  }
  qc_options_free (&o);
  return ok;
}

static const char *const gkind_name[] = {
  "write", "zero", "zero (may trim)", "trim", "flush", "close"
};

/* Describe the writes a state may hold (opt[], m of them; log indices
 * ws to we) and which of them it has.
 */
static void
report_window (struct run *R, size_t ws, size_t we, const size_t *opt,
               size_t m, const uint8_t *incl)
{
  size_t i, j;

  for (j = 0; j < R->ng; j++)
    if (R->g[j].rec_start <= we && R->g[j].rec_end > ws &&
        R->g[j].rec_end > R->g[j].rec_start)
    {
      const struct gop *g = &R->g[j];
      if (g->kind == G_FLUSH || g->kind == G_CLOSE)
        report (R, "    during guest request %zu: %s (records %zu-%zu)\n",
                j, gkind_name[g->kind], g->rec_start, g->rec_end - 1);
      else
        report (R, "    during guest request %zu: %s 0x%" PRIx64 " +%"
                PRIu64 " (records %zu-%zu)\n", j, gkind_name[g->kind],
                g->off, g->len, g->rec_start, g->rec_end - 1);
    }

  for (i = 0; i < m; i++) {
    const struct rec *x = &R->rd->recs[opt[i]];
    if (i == 40) {
      report (R, "    ... %zu more\n", m - i);
      break;
    }
    report (R, "    rec %zu: %-6s %s 0x%08" PRIx64 " +%-6zu %s\n", opt[i],
            x->what, R->devs[x->dev]->fname, x->off, x->len,
            incl[i] == 0 ? "dropped" :
            incl[i] == 1 ? "written" : "torn (some sectors)");
  }
}

/* Write the state of device d to st/NAME: its base plus, for each
 * write of that device among opt[] (m of them), incl[]: 0 not written, 1
 * written, 2 some of its sectors written (chosen with *seed).
 */
static void
write_device_state (struct run *R, unsigned d, const size_t *opt, size_t m,
                    const uint8_t *incl, uint64_t *seed)
{
  size_t len = R->base_len[d], i;
  uint8_t *buf;
  char name[256];

  for (i = 0; i < m; i++) {
    const struct rec *x = &R->rd->recs[opt[i]];
    if (x->dev == d && incl[i] && x->off + x->len > len)
      len = x->off + x->len;
  }
  buf = calloc (1, len ? len : 1);
  ck_assert (buf != NULL);
  memcpy (buf, R->base[d], R->base_len[d]);
  for (i = 0; i < m; i++) {
    const struct rec *x = &R->rd->recs[opt[i]];
    uint64_t o;
    if (x->dev != d)
      continue;
    if (incl[i] == 1)
      memcpy (buf + x->off, x->data, x->len);
    else if (incl[i] == 2)
      for (o = 0; o < x->len; o += 512 - (x->off + o) % 512) {
        uint64_t n = 512 - (x->off + o) % 512;
        if (n > x->len - o)
          n = x->len - o;
        if (rnd (seed) & 1)
          memcpy (buf + x->off + o, x->data + o, n);
      }
  }
  snprintf (name, sizeof name, "st/%s", R->devs[d]->fname);
  unit_write_file (P (name), buf, len);
  free (buf);
}

/* Check one state: the files after a power cut when the writes opt[]
 * (m of them, log indices ws to we) were not yet made durable by a flush
 * of their device.  The files go to st/ under the names the image
 * gives them, so that qemu finds the backing files and data file.
 */
static void
check_state (struct run *R, size_t ws, size_t we, const size_t *opt,
             size_t m, const uint8_t *incl, uint64_t *seed,
             const char *desc, const uint8_t *sure, size_t first,
             size_t last, bool final, bool use_qemu)
{
  const uint64_t size = R->c->size;
  const char *state = P ("st/img.qcow2");
  const char *json = P ("state.json");
  size_t jl;
  unsigned d;
  uint8_t *guest;
  char *out, err[512];
  int status;
  uint64_t corrupt, leaks, errors;
  int64_t bad;
  bool failed = false;
  double t0 = now (), t1, t2, t3;

  if (final)
    R->final_checked = true;
  for (d = 0; d < R->ndev; d++)
    write_device_state (R, d, opt, m, incl, seed);
  R->states++;
  t1 = now ();

  /* 1. qemu-img check. */
  /* (From st/: qemu 7.2 takes a relative data file name from its
   * working directory, not the image's.)
   */
  status = unit_sh_status ("cd '%s/st' && qemu-img check --output=json "
                           "img.qcow2 >../state.json 2>../state.err", unit_dir);
  out = (char *) unit_read_file (json, &jl);
  out = realloc (out, jl + 1);
  out[jl] = '\0';
  corrupt = json_num (out, "corruptions");
  leaks = json_num (out, "leaks");
  errors = json_num (out, "check-errors");
  if (!strstr (out, "\"check-errors\""))
    errors = 1;
  if (leaks)
    R->leaky++;
  if ((status != 0 && status != 3) || corrupt || errors ||
      (final && (status != 0 || leaks))) {
    report (R, "  %s: qemu-img check status %d, corruptions %" PRIu64
            ", leaks %" PRIu64 ", check-errors %" PRIu64 "\n", desc,
            status, corrupt, leaks, errors);
    failed = true;
  }
  free (out);
  t2 = now ();

  /* 2. The guest data, through our reader and qemu's. */
  guest = malloc (size);
  ck_assert (guest != NULL);
  if (!read_ours (state, guest, size, err, sizeof err)) {
    report (R, "  %s: our reader cannot read the state: %s\n", desc, err);
    failed = true;
  }
  else if ((bad = check_guest (R, guest, sure, first, last)) >= 0) {
    report (R, "  %s: our reader: guest byte 0x%" PRIx64 " is 0x%02x, "
            "expected 0x%02x (flushed data lost)\n", desc, bad,
            guest[bad], sure[bad]);
    failed = true;
  }
  t3 = now ();
  R->t_write += t1 - t0;
  R->t_check += t2 - t1;
  R->t_ours += t3 - t2;
  if (use_qemu || failed) {
    R->qemu_reads++;
    if (unit_sh_status ("cd '%s/st' && qemu-img convert -O raw img.qcow2 "
                        "../state.raw 2>../state.err", unit_dir) != 0) {
      report (R, "  %s: qemu-img convert failed\n", desc);
      failed = true;
    }
    else {
      size_t rl;
      uint8_t *raw = unit_read_file (P ("state.raw"), &rl);
      if (rl != size) {
        report (R, "  %s: qemu reads %zu bytes\n", desc, rl);
        failed = true;
      }
      else if ((bad = check_guest (R, raw, sure, first, last)) >= 0) {
        report (R, "  %s: qemu: guest byte 0x%" PRIx64 " is 0x%02x, "
                "expected 0x%02x (flushed data lost)\n", desc, bad,
                raw[bad], sure[bad]);
        failed = true;
      }
      free (raw);
    }
    R->t_qemu += now () - t3;
  }
  free (guest);

  if (failed) {
    char name[64];
    R->failures++;
    report_window (R, ws, we, opt, m, incl);
    if (R->failures <= 3) {
      /* Keep the state and qemu's words about it. */
      snprintf (name, sizeof name, "fail-%u", R->failures);
      unit_sh ("cd '%s' && rm -rf %s && cp -r st %s && "
               "(cd %s && qemu-img check img.qcow2 2>&1 | head -12 | "
               "sed 's/^/    | /' >../%s.txt || :)", unit_dir, name, name, name,
               name);
      out = (char *) unit_read_file (P (strcat (name, ".txt")), &jl);
      out = realloc (out, jl + 1);
      out[jl] = '\0';
      report (R, "%s    (this state is kept in %s/fail-%u/ if "
              "UNIT_KEEP_TMP=1)\n", out, unit_dir, R->failures);
      free (out);
    }
  }
}

/* The files the image names (its backing files, its data file) are
 * opened through qc_image_open_with on recording devices of their own,
 * which log into the image's log (one order for every write and flush
 * the core issues): a backing file read-only, so that a write to it
 * fails the workload; a data file writable.
 */
static struct blkdev *
rec_open_file (void *opaque, const char *path, enum qc_open_mode mode,
               const char *role)
{
  struct run *R = opaque;
  struct recdev *r;

  if (R->ndev == MAX_DEVS) {
    qc_error ("%s (%s): more files than the test has devices for", path,
              role);
    errno = EMFILE;
    return NULL;
  }
  R->base[R->ndev] = unit_read_file (path, &R->base_len[R->ndev]);
  r = recdev_new (R->base[R->ndev], R->base_len[R->ndev], path,
                  R->c->trim_noop);
  r->log = R->rd;
  r->id = R->ndev;
  r->dev.readonly = mode == QC_OPEN_READONLY;
  R->devs[R->ndev++] = r;
  return &r->dev;
}

/* Walk the power cuts of a run.  A cut is taken before each flush
 * record completes, and after the last record: each device then holds
 * its base (every write a flush of that device made durable) and any
 * subset of its writes since (pending[], in log order).  The callback
 * gets the pending writes at each cut b; afterwards a flush of device d
 * folds d's pending writes into its base.  Returns the number of cuts.
 */
typedef bool (*cut_fn) (struct run *R, size_t b, const size_t *pending,
                        size_t np, void *opaque);

static size_t
walk_cuts (struct run *R, bool fold, cut_fn fn, void *opaque)
{
  size_t *pending = malloc ((R->rd->n + 1) * sizeof *pending);
  size_t np = 0, b, cuts = 0;

  ck_assert (pending != NULL);
  for (b = 0; b <= R->rd->n; b++) {
    const struct rec *f = &R->rd->recs[b];
    size_t q, keep = 0;

    if (b < R->rd->n && f->kind == REC_WRITE) {
      pending[np++] = b;
      continue;
    }
    cuts++;
    if (!fn (R, b, pending, np, opaque))
      break;
    if (b == R->rd->n)
      break;
    for (q = 0; q < np; q++) {
      const struct rec *x = &R->rd->recs[pending[q]];
      if (x->dev != f->dev)
        pending[keep++] = pending[q];
      else if (fold) {
        uint8_t **base = &R->base[x->dev];
        size_t *len = &R->base_len[x->dev];
        if (x->off + x->len > *len) {
          *base = realloc (*base, x->off + x->len);
          ck_assert (*base != NULL);
          memset (*base + *len, 0, x->off + x->len - *len);
          *len = x->off + x->len;
        }
        memcpy (*base + x->off, x->data, x->len);
      }
    }
    np = keep;
  }
  free (pending);
  return cuts;
}

/* How many cuts have two pending writes or more. */
static bool
count_multi (struct run *R, size_t b, const size_t *pending, size_t np,
             void *opaque)
{
  if (np >= 2)
    (*(size_t *) opaque)++;
  return true;
}

struct replay {
  size_t extra;                 /* subsets per cut */
  uint64_t *seed;
  uint8_t *sure;                /* guest bytes as of the last flush */
  size_t gdone;                 /* guest requests folded into sure[] */
  uint8_t *incl;
};

/* Check the states of one cut: all pending writes, then subsets. */
static bool
replay_cut (struct run *R, size_t b, const size_t *pending, size_t m,
            void *opaque)
{
  struct replay *P = opaque;
  const struct config *c = R->c;
  const size_t k = R->windows, ws = m ? pending[0] : b, we = b;
  size_t j, first, last, p;
  char desc[160];
  bool final = b == R->rd->n && R->g[R->ng - 1].kind == G_CLOSE &&
    R->g[R->ng - 1].rec_end == R->rd->n;

  /* The guest's guarantee: every request up to the last guest flush
   * (or the close) that completed before the cut: all its records
   * precede b.  (Not "precede the first pending write": a device the
   * core never flushes would then guarantee nothing, and its lost
   * writes would pass unseen.)
   */
  for (j = P->gdone; j < R->ng; j++)
    if ((R->g[j].kind == G_FLUSH || R->g[j].kind == G_CLOSE) &&
        R->g[j].rec_end <= b) {
      for (; P->gdone <= j; P->gdone++)
        apply_model (P->sure, &R->g[P->gdone], R->trim_back[P->gdone]);
    }
  first = P->gdone;
  /* Requests that may have left something: begun before the cut. */
  for (last = first; last < R->ng && R->g[last].rec_start <= we; last++)
    ;
  R->windows++;

  if (m > 0 || b == R->rd->n) {
    /* All of it: the state at the next flush boundary. */
    memset (P->incl, 1, m);
    snprintf (desc, sizeof desc, "%s, cut %zu (recs %zu-%zu), all %zu "
              "writes", c->name, k, ws, we, m);
    check_state (R, ws, we, pending, m, P->incl, P->seed, desc, P->sure,
                 first, last, final, final || k % 3 == 0);
  }
  /* Then subsets, most telling first: the first write dropped (often
   * what the rest points to), half of them in issue order, a random
   * subset, torn writes (some sectors of each), the last write
   * dropped, then more prefixes, single drops and random subsets.
   */
  for (p = 0; m >= 2 && p < P->extra; p++) {
    size_t q, pick = p < 6 ? p : 6 + (p - 6) % 3, nth = (p - 6) / 3 + 1;
    char what[64];

    switch (pick) {
    case 0: case 4: case 7: {
      size_t drop = pick == 0 ? 0 : pick == 4 ? m - 1 : (nth * 7919) % m;
      memset (P->incl, 1, m);
      P->incl[drop] = 0;
      snprintf (what, sizeof what, "all but write %zu", drop);
      break;
    }
    case 1: case 6: {
      size_t n = pick == 1 ? m / 2 : 1 + (nth * 104729) % (m - 1);
      memset (P->incl, 0, m);
      memset (P->incl, 1, n);
      snprintf (what, sizeof what, "the first %zu", n);
      break;
    }
    case 2: case 5: case 8:
      for (q = 0; q < m; q++)
        P->incl[q] = rnd (P->seed) & 1;
      snprintf (what, sizeof what, "a random subset");
      break;
    default:                    /* 3 */
      memset (P->incl, 2, m);
      snprintf (what, sizeof what, "torn writes");
      break;
    }
    snprintf (desc, sizeof desc, "%s, cut %zu (recs %zu-%zu), %s of "
              "%zu writes", c->name, k, ws, we, what, m);
    check_state (R, ws, we, pending, m, P->incl, P->seed, desc, P->sure,
                 first, last, false, pick == 2 && k % 2 == 0);
  }
  return R->failures < 6;
}

/* Run one configuration: make the image, run the workload on the
 * recording device, replay.
 */
static void
run_config (const struct config *c, uint64_t seed, unsigned budget)
{
  struct run R;
  struct qc_options o;
  struct qc_image *img;
  struct blkdev *v;
  uint8_t *model;
  size_t i, nflushes, nwin, multi = 0;
  uint64_t s = seed ^ 0x5eed;
  struct replay P;
  unsigned d;

  memset (&R, 0, sizeof R);
  R.c = c;
  unit_sh ("cd '%s' && rm -rf st fail-* *.qcow2 *.raw *.data && "
           "mkdir st && %s >/dev/null", unit_dir, c->make);
  unit_sh ("cd '%s' && qemu-img convert -O raw img.qcow2 init.raw", unit_dir);
  R.init_img = unit_read_file (P ("img.qcow2"), &R.init_len);
  {
    size_t gl;
    R.init_guest = unit_read_file (P ("init.raw"), &gl);
    ck_assert_uint_eq (gl, c->size);
  }

  /* The workload, recorded. */
  R.g = make_workload (c, seed, &R.ng);
  R.trim_back = calloc (R.ng, sizeof *R.trim_back);
  R.rd = recdev_new (R.init_img, R.init_len, P ("img.qcow2"), c->trim_noop);
  R.devs[0] = R.rd;
  R.ndev = 1;
  R.base[0] = malloc (R.init_len);
  ck_assert (R.base[0] != NULL);
  memcpy (R.base[0], R.init_img, R.init_len);
  R.base_len[0] = R.init_len;
  qc_options_init (&o);
  o.locking = false;
  o.readonly = false;
  o.cache_size = c->cache_size;
  img = qc_image_open_with (&o, &R.rd->dev,
                            &(struct qc_open_file) { rec_open_file, &R });
  ck_assert_msg (img != NULL, "%s: open: %s", c->name, qc_last_error ());
  ck_assert_msg (qc_image_make_writable (img) == 0, "%s: make_writable: %s",
                 c->name, qc_last_error ());
  v = qc_image_default_view (img);
  ck_assert_uint_eq (v->size, c->size);
  model = malloc (c->size);
  ck_assert (model != NULL);
  memcpy (model, R.init_guest, c->size);
  for (i = 0; i < R.ng; i++) {
    struct gop *g = &R.g[i];
    int r = 0;

    g->rec_start = R.rd->n;
    switch (g->kind) {
    case G_WRITE:
      g->data = malloc (g->len);
      ck_assert (g->data != NULL);
      unit_fill_random (g->data, g->len, seed * 1000 + i);
      r = blkdev_pwrite (v, g->data, g->len, g->off, 0);
      break;
    case G_ZERO:
      r = blkdev_zero (v, g->len, g->off, 0);
      break;
    case G_ZERO_TRIM:
      r = blkdev_zero (v, g->len, g->off, BLKDEV_MAY_TRIM);
      break;
    case G_TRIM:
      r = blkdev_trim (v, g->len, g->off, 0);
      R.trim_back[i] = malloc (g->len);
      ck_assert (R.trim_back[i] != NULL);
      if (r == 0)
        r = blkdev_pread (v, R.trim_back[i], g->len, g->off);
      break;
    case G_FLUSH:
      r = blkdev_flush (v);
      break;
    case G_CLOSE:
      qc_image_close (img);
      img = NULL;
      break;
    }
    ck_assert_msg (r == 0, "%s: request %zu (kind %d, 0x%" PRIx64 " +%"
                   PRIu64 ") failed: %s", c->name, i, g->kind, g->off,
                   g->len, qc_last_error ());
    g->rec_end = R.rd->n;
    apply_model (model, g, R.trim_back[i]);
    /* The live view reads what the model says. */
    if (img && g->kind != G_FLUSH && rnd_below (&s, 4) == 0) {
      uint8_t *chk = malloc (c->size);
      ck_assert_int_eq (blkdev_pread (v, chk, c->size, 0), 0);
      unit_assert_mem_eq (chk, model, c->size, "live view");
      free (chk);
    }
  }
  qc_options_free (&o);
  ck_assert_msg (R.ndev == c->files, "%s: the image opened %zu files, not "
                 "%u", c->name, R.ndev, c->files);

  /* Every cut is checked; the rest of the budget goes to subsets of the
   * cuts with two pending writes or more (at least two each).
   */
  nwin = walk_cuts (&R, false, count_multi, &multi);
  for (i = 0, nflushes = 0; i < R.rd->n; i++)
    nflushes += R.rd->recs[i].kind == REC_FLUSH;
  P.extra = budget > nwin && multi ? (budget - nwin) / multi : 0;
  if (P.extra < 2)
    P.extra = 2;
  P.seed = &s;
  P.sure = malloc (c->size);
  ck_assert (P.sure != NULL);
  memcpy (P.sure, R.init_guest, c->size);
  P.gdone = 0;
  P.incl = malloc (R.rd->n + 1);
  ck_assert (P.incl != NULL);
  walk_cuts (&R, true, replay_cut, &P);

  /* The large writes are there to make the refcount table grow. */
  if (c->big_writes && R.failures < 6) {
    uint32_t before = unit_get_be32 (R.init_img + 56);
    uint32_t after = unit_get_be32 (R.base[0] + 56);
    ck_assert_msg (after > before, "%s: the refcount table did not grow "
                   "(%" PRIu32 " clusters)", c->name, after);
  }

  fprintf (stderr, "crash-replay %-36s %4zu records, %3zu flushes, "
           "%3u cuts, %4u states (%u read by qemu, %u with leaks)%s: "
           "%s\n", c->name, R.rd->n, nflushes, R.windows, R.states,
           R.qemu_reads, R.leaky,
           R.final_checked ? "" : " (final state not reached)",
           R.failures ? "FAILED" : "ok");
  if (getenv ("CRASH_REPLAY_TIMES"))
    fprintf (stderr, "  seconds: making states %.2f, qemu-img check %.2f, "
             "our reader %.2f, qemu-img convert %.2f\n", R.t_write,
             R.t_check, R.t_ours, R.t_qemu);
  /* A failed test does not get its teardown: clean up here. */
  if (R.failures)
    unit_tmpdir_remove (unit_dir);
  ck_assert_msg (R.failures == 0, "crash replay of %s (seed %" PRIu64 "): "
                 "%u bad states of %u:\n%s", c->name, seed, R.failures,
                 R.states, R.report);

  free (P.incl);
  free (P.sure);
  free (model);
  for (i = 0; i < R.ng; i++) {
    free (R.g[i].data);
    free (R.trim_back[i]);
  }
  free (R.trim_back);
  free (R.g);
  for (d = R.ndev; d-- > 0;) {
    free (R.base[d]);
    recdev_free (R.devs[d]);
  }
  free (R.init_img);
  free (R.init_guest);
}

static unsigned
env_uint (const char *name, unsigned def)
{
  const char *v = getenv (name);

  return v && *v ? (unsigned) strtoul (v, NULL, 0) : def;
}

START_TEST (test_crash_replay)
{
  const struct config *c = &configs[_i];

  run_config (c, env_uint ("CRASH_REPLAY_SEED", 7) + _i,
              env_uint ("CRASH_REPLAY_STATES", 60));
}
END_TEST

/* The recording device itself: writes are logged and readable, growth
 * keeps the contents, flushes are logged in order.
 */
START_TEST (test_recdev)
{
  uint8_t data[1000], buf[4096];
  struct recdev *r;

  unit_fill_random (data, sizeof data, 3);
  r = recdev_new (data, sizeof data, "rec", false);
  ck_assert_int_eq (blkdev_pwrite (&r->dev, "abc", 3, 10, 0), 0);
  ck_assert_int_eq (blkdev_flush (&r->dev), 0);
  ck_assert_int_eq (blkdev_pwrite (&r->dev, "xyz", 3, 3 * MiB, 0), 0);
  ck_assert_uint_eq (r->dev.size, 3 * MiB + 3);
  ck_assert_int_eq (blkdev_trim (&r->dev, 100, 20, 0), 0);
  ck_assert_int_eq (blkdev_pread (&r->dev, buf, 30, 0), 0);
  ck_assert (memcmp (buf, data, 10) == 0);
  ck_assert (memcmp (buf + 10, "abc", 3) == 0);
  ck_assert (memcmp (buf + 13, data + 13, 7) == 0);
  ck_assert_int_eq (buf[20], 0);
  ck_assert_int_eq (blkdev_pread (&r->dev, buf, 3, 3 * MiB), 0);
  ck_assert (memcmp (buf, "xyz", 3) == 0);
  ck_assert_uint_eq (r->n, 4);
  ck_assert_int_eq (r->recs[0].kind, REC_WRITE);
  ck_assert_uint_eq (r->recs[0].off, 10);
  ck_assert_int_eq (r->recs[1].kind, REC_FLUSH);
  ck_assert_uint_eq (r->recs[2].off, 3 * MiB);
  ck_assert_str_eq (r->recs[3].what, "trim");
  blkdev_close (&r->dev);
  recdev_free (r);
}
END_TEST

Suite *
crash_replay_suite (void)
{
  Suite *s = suite_create ("crash-replay");
  TCase *tc = tcase_create ("replay");

  tcase_add_checked_fixture (tc, unit_dir_setup, unit_dir_teardown);
  tcase_set_timeout (tc, 4 * UNIT_QEMU_TIMEOUT);
  tcase_add_test (tc, test_recdev);
  tcase_add_loop_test (tc, test_crash_replay, 0, NR_CONFIGS);
  suite_add_tcase (s, tc);
  return s;
}
