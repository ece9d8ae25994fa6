/* SPDX-License-Identifier: BSD-3-Clause */
/* Fault injection at the block-device seam.
 *
 * A qemu-made image runs on a fault-injecting device: a fixed-size
 * memory container (allocation past its end fails with ENOSPC) that
 * fails the k-th I/O point (every pread, pwrite and flush is one) with
 * EIO, ENOSPC, or a short write (about the first half written, torn at
 * a sector boundary, then EIO).  A
 * workload runs through the core: allocating writes, copy-on-write,
 * zeroing with and without MAY_TRIM, trimming (frees and reuse), refcount
 * table growth (512-byte clusters with 64-bit refcounts: one table
 * cluster covers only 2 MiB of host), compressed writes (compress=zlib),
 * internal snapshot operations (apply, create, delete) on an image made
 * by qemu with two snapshots of different sizes, so that applying one
 * shrinks the active L1 table and applying the other grows it again.
 * One workload ("everything") does all of these in one run.  The
 * "files" case puts a two-level backing chain and an external data
 * file on fault devices too (see test_faults_files).
 *
 * A recording run counts the I/O points; then for every point k and
 * every fault that applies to it (reads: EIO; writes: EIO, ENOSPC,
 * short; flushes: EIO):
 *
 *   - the request during which the fault fires fails with the injected
 *     errno (EIO, ENOSPC; EIO for a short write), as does qc_image_open
 *     or qc_image_make_writable if it fires there;
 *   - every other request succeeds or fails cleanly (errno set);
 *   - after the final flush and close (which may fail), the container
 *     has 0 corruptions for qemu-img check --output=json (leaks are
 *     allowed), opens with qc_image_open, every request that succeeded
 *     reads back (if the final flush succeeded), and every snapshot the
 *     image had at the start that still exists reads as it did.
 *
 * qemu-img check runs in parallel batches over sparse copies of the
 * containers; identical containers are checked once.  Every I/O point
 * of every workload is covered; FAULTS_SAMPLE=N checks only N points
 * per workload (each write point then gets one of the three faults in
 * turn), for the slower sanitizer build.
 * FAULTS_POINT=k runs only point k (with UNIT_VERBOSE=1 to see what the
 * core says), FAULTS_WORKLOAD=NAME only that workload.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"
#include "unit.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)
#define CONTAINER (4 * MiB)     /* at most */

#define P(name) unit_path (unit_dir, name)

/* ------------------------------------------------------- failures */

/* Failures are collected (the first few kept) so that one run reports
 * every broken fault point, with the coverage numbers.
 */
static char fail_buf[6000];
static size_t nfail;

static void __attribute__ ((format (printf, 1, 2)))
failure (const char *fs, ...)
{
  size_t len = strlen (fail_buf);
  va_list args;

  if (nfail++ < 12 && len < sizeof fail_buf - 2) {
    va_start (args, fs);
    vsnprintf (fail_buf + len, sizeof fail_buf - len - 1, fs, args);
    va_end (args);
    strcat (fail_buf, "\n");
  }
}
#define EXPECT(cond, ...) \
  do { if (!(cond)) failure (__VA_ARGS__); } while (0)

/* ------------------------------------------------- the fault device */

enum fault { F_NONE, F_EIO, F_ENOSPC, F_SHORT };
static const char *const fault_names[] = { "none", "EIO", "ENOSPC",
                                           "short write" };

struct faultdev {
  struct blkdev dev;            /* first: a faultdev is a device */
  uint8_t *data;                /* cap bytes, kept after close */
  uint64_t cap;                 /* the container's capacity */
  uint64_t io;                  /* I/O points so far */
  uint64_t fault_at;            /* 1-based point that fails, 0: none */
  enum fault fault;
  bool fired;
  char *kinds;                  /* recording: 'r', 'w', 'f' per point */
  size_t nkinds, kcap;
  struct faultdev *ctl;         /* holds the counters above: the device
                                 * itself, or the first of a set of
                                 * files that share one count of I/O
                                 * points */
  uint64_t points;              /* I/O points on this device */
};

static void
note (struct faultdev *f, char kind)
{
  f->points++;
  f = f->ctl;
  f->io++;
  if (f->nkinds == f->kcap) {
    f->kcap = f->kcap ? 2 * f->kcap : 1024;
    f->kinds = realloc (f->kinds, f->kcap);
    unit_check (f->kinds != NULL, "realloc");
  }
  f->kinds[f->nkinds++] = kind;
}

static bool
fires (struct faultdev *f)
{
  f = f->ctl;
  if (f->io != f->fault_at)
    return false;
  f->fired = true;
  return true;
}

static int
f_pread (struct blkdev *dev, void *buf, size_t count, uint64_t offset)
{
  struct faultdev *f = (struct faultdev *) dev;

  note (f, 'r');
  if (fires (f)) {
    qc_error ("faultdev: injected read error at point %" PRIu64,
              f->ctl->io);
    errno = EIO;
    return -1;
  }
  memcpy (buf, f->data + offset, count);
  return 0;
}

/* A growable device (a file) gets longer as it is written. */
static void
grow (struct faultdev *f, uint64_t end)
{
  if (end > f->dev.size)
    f->dev.size = end;
}

static int
f_pwrite (struct blkdev *dev, const void *buf, size_t count,
          uint64_t offset, unsigned flags)
{
  struct faultdev *f = (struct faultdev *) dev;

  note (f, 'w');
  if (offset > f->cap || count > f->cap - offset ||
      (dev->fixed_size &&
       (offset > dev->size || count > dev->size - offset))) {
    qc_error ("faultdev: write past the end of the container");
    errno = ENOSPC;
    return -1;
  }
  if (fires (f)) {
    if (f->ctl->fault == F_SHORT) {
      /* Torn at a sector boundary, as disks tear writes: about half
       * of it, nothing if it is inside one sector (sector writes are
       * atomic: qemu and the core rely on that for header fields).
       */
      uint64_t mid = (offset + count / 2) & ~511ULL;
      size_t part = mid > offset ? mid - offset : 0;
      memcpy (f->data + offset, buf, part);
      grow (f, offset + part);
    }
    qc_error ("faultdev: injected %s at point %" PRIu64,
              fault_names[f->ctl->fault], f->ctl->io);
    errno = f->ctl->fault == F_ENOSPC ? ENOSPC : EIO;
    return -1;
  }
  memcpy (f->data + offset, buf, count);
  grow (f, offset + count);
  return 0;
}

static int
f_flush (struct blkdev *dev)
{
  struct faultdev *f = (struct faultdev *) dev;

  note (f, 'f');
  if (fires (f)) {
    qc_error ("faultdev: injected flush error at point %" PRIu64,
              f->ctl->io);
    errno = EIO;
    return -1;
  }
  return 0;
}

/* Hole punching: reads as zeros after.  Advisory: not a fault point. */
static int
f_trim (struct blkdev *dev, uint64_t count, uint64_t offset, unsigned flags)
{
  struct faultdev *f = (struct faultdev *) dev;

  if (offset < dev->size) {
    if (count > dev->size - offset)
      count = dev->size - offset;
    memset (f->data + offset, 0, count);
  }
  return 0;
}

static void
f_close (struct blkdev *dev)
{
  /* The container outlives the image: the test checks it. */
}

static const struct blkdev_ops fault_ops = {
  .pread = f_pread,
  .pwrite = f_pwrite,
  .trim = f_trim,
  .flush = f_flush,
  .close = f_close,
};

/* A fixed-size container of cap bytes holding the image, or (growable)
 * a device of the image's size that grows up to cap, like a file.
 */
static void
faultdev_init (struct faultdev *f, const uint8_t *image, size_t len,
               uint64_t cap, bool growable)
{
  memset (f, 0, sizeof *f);
  f->ctl = f;
  f->cap = cap;
  f->data = calloc (1, cap);
  ck_assert (f->data != NULL);
  ck_assert (len <= cap);
  memcpy (f->data, image, len);
  f->dev.ops = &fault_ops;
  f->dev.name = (char *) "faultdev";
  f->dev.size = growable ? len : cap;
  f->dev.fixed_size = !growable;
}

/* --------------------------------------------------------- workloads */

struct step {
  char op;                      /* w write, z zero, t trim, f flush,
                                 * A/C/D apply/create/delete snapshot */
  uint64_t off, len;
  unsigned flags;
  int fill;                     /* w: byte value, or -1 for random */
  const char *name;             /* A/C/D: the snapshot */
};

struct workload {
  const char *name;
  const char *create;           /* qemu-img create -o ... (4 MiB) */
  const char *prepare;          /* else: shell commands making $IMG */
  const char *compress;         /* compress= value, or NULL */
  uint64_t cache_size;          /* L2 cache bytes, 0: default */
  const struct step *steps;
  size_t nsteps;
  uint64_t container;           /* capacity of the device */
  bool growable;                /* a device that grows (a file), else
                                 * a fixed-size container */
  const char *expect_debug;     /* the recording run logs this */
  bool expect_compressed;       /* ... and writes compressed clusters */
};

#define MAY_TRIM BLKDEV_MAY_TRIM
#define W(off, len, flags, fill) { 'w', off, len, flags, fill, NULL }
#define Z(off, len, flags) { 'z', off, len, flags, 0, NULL }
#define T(off, len) { 't', off, len, 0, 0, NULL }
#define FLUSH { 'f', 0, 0, 0, 0, NULL }
#define SNAP(op, name) { op, 0, 0, 0, 0, name }

/* Allocation, copy-on-write, frees and reuse, tables crossing. */
static const struct step small_steps[] = {
  W (0, 4096, 0, 0x11),
  W (1000, 300, 0, 0x22),               /* in place */
  W (8192 + 100, 3000, 0, -1),          /* partial clusters */
  FLUSH,
  Z (0, 2048, MAY_TRIM),                /* frees 4 clusters */
  T (2048, 2048),                      /* frees 4 more */
  W (30 * KiB, 6 * KiB, 0, 0x33),       /* crosses an L2 table */
  W (1 * MiB, 64 * KiB, 0, -1),         /* reuses freed clusters */
  Z (1 * MiB + 512, 1024, 0),           /* zero, keeping the host */
  Z (1 * MiB + 8 * KiB, 3000, 0),       /* partly explicit zeros */
  FLUSH,
  W (2 * MiB, 8 * KiB, BLKDEV_FUA, 0x44),
  T (1 * MiB + 16 * KiB, 16 * KiB),
  W (3 * MiB + 333, 2000, 0, 0x55),
  /* Back to earlier tables (with a tiny cache: read again). */
  W (4096 + 17, 100, 0, 0x66),
  Z (1 * MiB, 512, MAY_TRIM),
  T (2 * MiB, 4096),
  W (30 * KiB + 5, 3000, 0, 0x67),
  FLUSH,
  W (1 * MiB + 100, 50, 0, 0x68),
};

/* 2.5 MiB of data: the host file passes 2 MiB, the refcount table grows
 * (and its old clusters are freed).
 */
static const struct step grow_steps[] = {
  W (0, 640 * KiB, 0, -1),
  W (640 * KiB, 640 * KiB, 0, 0x66),
  FLUSH,
  W (1280 * KiB, 640 * KiB, 0, -1),
  W (1920 * KiB, 640 * KiB, 0, 0x77),
  Z (0, 64 * KiB, MAY_TRIM),
  FLUSH,
  W (3 * MiB, 64 * KiB, 0, 0x78),       /* reuses the freed */
};

/* Compressed writes (4 KiB clusters): packed streams, incompressible
 * clusters, overwriting and zeroing compressed clusters, copy-on-write
 * from a compressed cluster.
 */
static const struct step comp_steps[] = {
  W (0, 16 * KiB, 0, 0x21),             /* 4 compressed clusters */
  W (16 * KiB, 4 * KiB, 0, -1),         /* incompressible */
  W (20 * KiB, 2 * KiB, 0, 0x22),       /* partial: normal */
  FLUSH,
  W (4 * KiB, 4 * KiB, 0, 0x23),        /* replaces a stream */
  Z (8 * KiB, 4 * KiB, MAY_TRIM),       /* zeroes a compressed one */
  W (12 * KiB + 100, 200, 0, 0x24),     /* COW from compressed */
  FLUSH,
  T (0, 4 * KiB),
  W (64 * KiB, 32 * KiB, 0, 0x25),
};

/* An image with two snapshots: "small" (256 KiB, an L1 table of 8
 * entries) and "big" (4 MiB, 128 entries), and an active disk that
 * differs from both.  512-byte clusters with 64-bit refcounts: the
 * refcount table grows once the file passes 2 MiB, and the file is just
 * short of that (1.95 MiB), so that a few writes are enough (with
 * compression each cluster is a write of its own).
 */
static const char everything_image[] =
  "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "
  "  \"$IMG\" 256K && "
  "qemu-io -c 'write -P 0x31 0 40k' -c 'write -P 0x32 200k 8k' \"$IMG\" && "
  "qemu-img snapshot -c small \"$IMG\" && "
  "qemu-img resize -q \"$IMG\" 4M && "
  "qemu-io -c 'write -P 0x41 32k 64k' -c 'write -P 0x42 3M 16k' "
  "  -c 'write -P 0x43 1M 1800k' \"$IMG\" && "
  "qemu-img snapshot -c big \"$IMG\" && "
  "qemu-io -c 'write -P 0x51 0 4k' \"$IMG\"";

/* L1 shrink and growth (snapshot apply), snapshot create and delete,
 * then (snapshot operations come before the image serves) allocation,
 * frees, copy-on-write from clusters shared with snapshots, compressed
 * and plain writes, and refcount table growth, with compress=zlib.
 */
static const struct step everything_steps[] = {
  SNAP ('A', "small"),                  /* L1: 128 -> 8 entries */
  SNAP ('A', "big"),                    /* L1: 8 -> 128 entries */
  SNAP ('C', "s3"),
  SNAP ('D', "small"),                  /* frees its own clusters */
  W (4 * KiB, 4 * KiB, 0, 0x61),        /* compressed, over shared */
  W (3 * MiB + 100, 1000, 0, 0x62),     /* partial, into shared */
  W (32 * KiB, 8 * KiB, 0, 0x63),       /* replaces shared clusters */
  Z (0, 8 * KiB, MAY_TRIM),
  FLUSH,
  W (3200 * KiB, 96 * KiB, 0, -1),      /* plain: the file passes 2 MiB */
  W (3400 * KiB, 16 * KiB, 0, 0x64),    /* compressed */
  T (36 * KiB, 4 * KiB),
  W (1 * MiB, 64 * KiB, 0, -1),         /* plain, over shared */
};

#define N(a) (sizeof (a) / sizeof (a)[0])
static const struct workload workloads[] = {
  { "small", "cluster_size=512,refcount_bits=64", NULL, NULL, 0,
    small_steps, N (small_steps), MiB, false, NULL, false },
  /* One L2 table cached: tables are read (and can fail) all the time. */
  { "small-tiny-cache", "cluster_size=512,refcount_bits=64", NULL, NULL, 512,
    small_steps, N (small_steps), MiB, false, NULL, false },
  { "compressed", "cluster_size=4096", NULL, "zlib", 0,
    comp_steps, N (comp_steps), MiB, false, NULL, true },
  /* On a growable device (a file) the new table goes to the end; in a
   * fixed-size container into a free run.
   */
  { "refcount-growth", "cluster_size=512,refcount_bits=64", NULL, NULL, 0,
    grow_steps, N (grow_steps), 4 * MiB, true, "refcount table grown",
    false },
  { "refcount-growth-fixed", "cluster_size=512,refcount_bits=64", NULL,
    NULL, 0, grow_steps, N (grow_steps), 4 * MiB, false,
    "refcount table grown", false },
  { "everything", NULL, everything_image, "zlib", 0,
    everything_steps, N (everything_steps), 4 * MiB, true,
    "refcount table grown", true },
};

/* ------------------------------------------------------- one run */

struct outcome {
  bool fired;
  const char *where;            /* where the fault fired */
  bool opened;                  /* qc_image_open and make_writable done */
  bool final_flush_ok;
  bool size_unknown;            /* a snapshot apply failed */
  bool l1_grew;                 /* a snapshot apply grew the L1 table */
  unsigned failed_steps;        /* requests that failed */
  bool swallowed;               /* a request hid the fault: what it
                                 * did is undefined */
  uint8_t *shadow, *known;      /* the guest disk as it must read */
  uint64_t size;
};

static void
fill (uint8_t *buf, size_t len, int fill, uint64_t seed)
{
  if (fill >= 0)
    memset (buf, fill, len);
  else
    unit_fill_random (buf, len, seed);
}

static int
expected_errno (enum fault f)
{
  return f == F_ENOSPC ? ENOSPC : EIO;
}

/* What the image reads at the start (read through the core without
 * faults): the active disk and the snapshots.
 */
struct content {
  char *name;                   /* NULL: the active disk */
  uint8_t *data;
  uint64_t size;
};
#define MAX_SNAPS 4
static struct content active0, snaps[MAX_SNAPS];
static size_t nsnaps;

static void
read_view (struct blkdev *v, struct content *c)
{
  c->size = v->size;
  c->data = malloc (c->size ? c->size : 1);
  ck_assert (c->data != NULL);
  ck_assert_msg (blkdev_pread (v, c->data, c->size, 0) == 0,
                 "reading the image: %s", qc_last_error ());
}

static void
load_contents (const uint8_t *image, size_t len)
{
  struct blkdev *dev = blkdev_memory_new (image, len, true);
  struct qc_options opts;
  struct qc_image *img;
  size_t i;

  ck_assert (dev != NULL);
  qc_options_init (&opts);
  opts.locking = false;
  img = qc_image_open (&opts, dev);
  ck_assert_msg (img != NULL, "opening the image: %s", qc_last_error ());
  read_view (qc_image_default_view (img), &active0);
  nsnaps = qc_image_nr_snapshots (img);
  ck_assert (nsnaps <= MAX_SNAPS);
  for (i = 0; i < nsnaps; i++) {
    snaps[i].name = strdup (qc_image_snapshot_name (img, i));
    ck_assert (snaps[i].name != NULL);
    read_view (qc_image_view (img, snaps[i].name), &snaps[i]);
  }
  qc_image_close (img);
  qc_options_free (&opts);
}

static void
free_contents (void)
{
  size_t i;

  free (active0.data);
  for (i = 0; i < nsnaps; i++) {
    free (snaps[i].name);
    free (snaps[i].data);
  }
  memset (&active0, 0, sizeof active0);
  memset (snaps, 0, sizeof snaps);
  nsnaps = 0;
}

static const struct content *
find_snap (const char *name)
{
  size_t i;

  for (i = 0; i < nsnaps; i++)
    if (strcmp (snaps[i].name, name) == 0)
      return &snaps[i];
  return NULL;
}

/* The L1 size in the header on the device. */
static uint32_t
header_l1_size (const struct faultdev *f)
{
  const uint8_t *p = f->data + 36;

  return (uint32_t) p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
}

/* Run w on f (fault already configured).  Failures fail the test. */
static const struct step final_flush = FLUSH;

/* Do step s (number i) on view (snapshot operations on img); *buf
 * gets the bytes a write wrote (the caller frees them).  errno is the
 * request's.
 */
static int
run_step (struct qc_image *img, struct blkdev *view, const struct step *s,
          size_t i, uint8_t **buf)
{
  switch (s->op) {
  case 'w':
    *buf = malloc (s->len);
    ck_assert (*buf != NULL);
    fill (*buf, s->len, s->fill, i + 1);
    return blkdev_pwrite (view, *buf, s->len, s->off, s->flags);
  case 'z':
    return blkdev_zero (view, s->len, s->off, s->flags);
  case 't':
    return blkdev_trim (view, s->len, s->off, s->flags);
  case 'A': case 'C': case 'D':
    ck_assert (img != NULL);
    return qc_image_snapshot_op (img, s->op == 'A' ? QC_SNAPSHOT_APPLY :
                                 s->op == 'C' ? QC_SNAPSHOT_CREATE :
                                 QC_SNAPSHOT_DELETE, s->name);
  default:
    return blkdev_flush (view);
  }
}


static void
run (const struct workload *w, struct faultdev *f, struct outcome *o,
     const char *ctx)
{
  struct qc_options opts;
  struct qc_image *img;
  struct blkdev *view;
  size_t i;
  int r;

  memset (o, 0, sizeof *o);
  qc_options_init (&opts);
  opts.locking = false;
  opts.cache_size = w->cache_size;
  if (w->compress)
    ck_assert_int_eq (qc_options_set (&opts, "compress", w->compress), 0);

  errno = 0;
  img = qc_image_open (&opts, &f->dev);
  if (!img) {
    ck_assert_msg (f->fired, "%s: qc_image_open failed without a fault: %s",
                   ctx, qc_last_error ());
    EXPECT (errno == expected_errno (f->fault),
            "%s: qc_image_open: errno %d (%s), expected %s", ctx,
            errno, strerror (errno), fault_names[f->fault]);
    o->fired = true;
    o->where = "qc_image_open";
    qc_options_free (&opts);
    return;
  }
  errno = 0;
  if (qc_image_make_writable (img) == -1) {
    ck_assert_msg (f->fired, "%s: make_writable failed without a fault: %s",
                   ctx, qc_last_error ());
    EXPECT (errno == expected_errno (f->fault),
            "%s: qc_image_make_writable: errno %d (%s), expected %s",
            ctx, errno, strerror (errno), fault_names[f->fault]);
    o->fired = true;
    o->where = "qc_image_make_writable";
    qc_image_close (img);
    qc_options_free (&opts);
    return;
  }
  EXPECT (!f->fired, "%s: the fault during qc_image_open / "
          "qc_image_make_writable was swallowed (the call succeeded)", ctx);
  o->opened = true;
  view = qc_image_default_view (img);
  o->size = view->size;
  ck_assert_int_eq (o->size, active0.size);
  o->shadow = malloc (o->size);
  o->known = malloc (o->size);
  ck_assert (o->shadow && o->known);
  memcpy (o->shadow, active0.data, o->size);
  memset (o->known, 1, o->size);

  for (i = 0; i <= w->nsteps; i++) {
    const struct step *s = i < w->nsteps ? &w->steps[i]
      : &final_flush;   /* the final flush */
    bool before = f->fired;
    uint8_t *buf = NULL;
    uint32_t l1_before = header_l1_size (f);

    errno = 0;
    r = run_step (img, view, s, i, &buf);
    if (f->fired && !before) {
      o->fired = true;
      o->where = i < w->nsteps ? "a request" : "the final flush";
      if (r == 0) {
        failure ("%s: step %zu ('%c' %" PRIu64 "+%" PRIu64 "): the %s was "
                 "swallowed (the request succeeded)", ctx, i, s->op,
                 s->off, s->len, fault_names[f->fault]);
        o->swallowed = true;
      }
      else
        EXPECT (errno == expected_errno (f->fault),
                "%s: step %zu ('%c'): errno %d (%s), expected %s",
                ctx, i, s->op, errno, strerror (errno),
                fault_names[f->fault]);
    }
    else if (r == -1)
      EXPECT (errno != 0, "%s: step %zu ('%c') failed without errno",
              ctx, i, s->op);
    if (r == -1)
      o->failed_steps++;
    if (i == w->nsteps)
      o->final_flush_ok = r == 0;
    else if (s->op == 'A') {
      /* The disk becomes the snapshot; after a failure, one or the
       * other (a request that succeeded must still read back).
       */
      const struct content *c = find_snap (s->name);

      ck_assert (c != NULL);
      if (r == 0 && !o->swallowed) {
        o->l1_grew |= header_l1_size (f) > l1_before;
        free (o->shadow);
        free (o->known);
        o->size = c->size;
        o->shadow = malloc (o->size);
        o->known = malloc (o->size);
        ck_assert (o->shadow && o->known);
        memcpy (o->shadow, c->data, o->size);
        memset (o->known, 1, o->size);
        view = qc_image_default_view (img);
        ck_assert_int_eq (view->size, o->size);
      }
      else {
        o->size_unknown = true;
        memset (o->known, 0, o->size);
      }
    }
    else if (s->op == 'C' || s->op == 'D' || o->size_unknown)
      ;                         /* the disk must not change / unknown */
    else if (r == -1 || s->op == 't' || o->swallowed)
      memset (o->known + s->off, 0, s->len);     /* undefined */
    else if (s->op == 'w') {
      memcpy (o->shadow + s->off, buf, s->len);
      memset (o->known + s->off, 1, s->len);
    }
    else if (s->op == 'z') {
      memset (o->shadow + s->off, 0, s->len);
      memset (o->known + s->off, 1, s->len);
    }
    free (buf);
  }
  qc_image_close (img);
  if (f->fired && !o->fired)
    o->where = "qc_image_close";
  qc_options_free (&opts);
}

/* The container opens and reads back what succeeded. */
static void
verify_reopen (const struct faultdev *f, const struct outcome *o,
               const char *ctx)
{
  struct qc_options opts;
  struct qc_image *img;
  struct blkdev *dev, *view;
  uint8_t *buf;
  uint64_t i;

  dev = blkdev_memory_new (f->data, f->dev.size, true);
  ck_assert (dev != NULL);
  qc_options_init (&opts);
  opts.locking = false;
  img = qc_image_open (&opts, dev);
  if (!img) {
    failure ("%s: the image does not open any more: %s", ctx,
             qc_last_error ());
    return;
  }
  if (o->opened && o->final_flush_ok && !o->size_unknown) {
    view = qc_image_default_view (img);
    ck_assert_int_eq (view->size, o->size);
    buf = malloc (o->size);
    ck_assert (buf != NULL);
    if (blkdev_pread (view, buf, o->size, 0) == -1)
      failure ("%s: reading the image back failed: %s", ctx,
               qc_last_error ());
    else if (memcmp (buf, o->shadow, o->size) != 0)
      for (i = 0; i < o->size; i++)
        if (o->known[i] && buf[i] != o->shadow[i]) {
          failure ("%s: guest byte %" PRIu64 " reads 0x%02x, expected "
                   "0x%02x (a request that succeeded was lost)", ctx, i,
                   buf[i], o->shadow[i]);
          break;
        }
    free (buf);
  }
  /* The snapshots it had that are still there read as they did. */
  for (i = 0; i < nsnaps; i++) {
    const struct content *c = &snaps[i];
    size_t j;

    for (j = 0; j < qc_image_nr_snapshots (img); j++)
      if (strcmp (qc_image_snapshot_name (img, j), c->name) == 0)
        break;
    if (j == qc_image_nr_snapshots (img))
      continue;
    view = qc_image_view (img, c->name);
    buf = malloc (c->size ? c->size : 1);
    ck_assert (buf != NULL);
    if (!view || view->size != c->size)
      failure ("%s: snapshot '%s' has a different size", ctx, c->name);
    else if (blkdev_pread (view, buf, c->size, 0) == -1)
      failure ("%s: reading snapshot '%s' failed: %s", ctx, c->name,
               qc_last_error ());
    else if (memcmp (buf, c->data, c->size) != 0)
      failure ("%s: snapshot '%s' changed", ctx, c->name);
    free (buf);
  }
  qc_image_close (img);
}

/* ------------------------------------------- qemu-img check batches */

struct pending_check {
  char name[32];
  char ctx[96];
};

static uint64_t
hash_container (const uint8_t *p, uint64_t size)
{
  uint64_t h = 0xcbf29ce484222325ULL ^ size;
  size_t i;

  for (i = 0; i + 8 <= size; i += 8) {
    uint64_t v;
    memcpy (&v, p + i, 8);
    h = (h ^ v) * 0x100000001b3ULL;
  }
  for (; i < size; i++)
    h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

/* A sparse copy of the container (only its non-zero 64 KiB blocks). */
static void
save_sparse (const uint8_t *p, uint64_t size, const char *path)
{
  static const uint8_t zero[64 * KiB];
  int fd = open (path, O_WRONLY|O_CREAT|O_TRUNC, 0644);
  uint64_t o;

  ck_assert_msg (fd >= 0, "create %s: %s", path, strerror (errno));
  for (o = 0; o < size; o += sizeof zero) {
    size_t n = size - o < sizeof zero ? size - o : sizeof zero;
    if (memcmp (p + o, zero, n) != 0)
      ck_assert (pwrite (fd, p + o, n, o) == (ssize_t) n);
  }
  ck_assert (ftruncate (fd, size) == 0);
  ck_assert (close (fd) == 0);
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

/* Check every saved container in parallel; fail on corruption. */
static double t_checks;
static double now (void);

static void
run_checks (struct pending_check *pc, size_t n, uint64_t *leaky)
{
  size_t i;
  double t0 = now ();

  if (n == 0)
    return;
  unit_sh ("cd '%s' && ls c-*.qcow2 | xargs -P 8 -n 1 sh -c "
           "'qemu-img check --output=json \"$0\" >\"$0.json\" 2>\"$0.err\"; "
           "echo $? >\"$0.rc\"'", unit_dir);
  for (i = 0; i < n; i++) {
    char path[64], *json, *rc;
    size_t len;
    int status;

    snprintf (path, sizeof path, "%s.rc", pc[i].name);
    rc = (char *) unit_read_file (P (path), &len);
    rc = realloc (rc, len + 1);
    rc[len] = '\0';
    status = atoi (rc);
    free (rc);
    snprintf (path, sizeof path, "%s.json", pc[i].name);
    json = (char *) unit_read_file (P (path), &len);
    json = realloc (json, len + 1);
    json[len] = '\0';
    if ((status != 0 && status != 3) || json_num (json, "corruptions") ||
        json_num (json, "check-errors") || !strstr (json, "check-errors")) {
      unit_sh_status ("cp '%s' /tmp/faults-%s 2>/dev/null",
                      P (pc[i].name), pc[i].name);
      failure ("%s: qemu-img check status %d: %s (container kept "
               "as /tmp/faults-%s)", pc[i].ctx, status, json, pc[i].name);
    }
    if (json_num (json, "leaks"))
      (*leaky)++;
    free (json);
  }
  unit_sh ("cd '%s' && rm -f c-*", unit_dir);
  t_checks += now () - t0;
}

/* ------------------------------------------------------------ tests */

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

START_TEST (test_faults)
{
  const struct workload *w = &workloads[_i];
  struct faultdev rec, f;
  struct outcome o;
  uint8_t *image;
  size_t ilen, k, npoints, nruns = 0, nchecks = 0, ncheck_alloc = 0;
  uint64_t leaky = 0, *hashes = NULL;
  size_t nhashes = 0, stride = 1, fired_where[4] = { 0 };
  struct pending_check *pc = NULL;
  const char *env;
  unsigned sample = 0;
  double t0 = now ();

  if ((env = getenv ("FAULTS_WORKLOAD")) != NULL && strcmp (env, w->name))
    return;
  fail_buf[0] = '\0';
  nfail = 0;
  /* Hundreds of runs allocate and free the same few MiB: keep them in
   * the heap instead of mapping fresh zero pages each time.
   */
  mallopt (M_MMAP_THRESHOLD, 64 * MiB);
  mallopt (M_TRIM_THRESHOLD, 256 * MiB);
  if ((env = getenv ("FAULTS_SAMPLE")) != NULL)
    sample = atoi (env);

  if (w->prepare)
    unit_sh ("IMG='%s' && %s >/dev/null", P ("base.qcow2"), w->prepare);
  else
    unit_sh ("qemu-img create -q -f qcow2 -o %s '%s' 4M", w->create,
             P ("base.qcow2"));
  image = unit_read_file (P ("base.qcow2"), &ilen);
  load_contents (image, ilen);

  /* The recording run: how many I/O points, of which kinds. */
  faultdev_init (&rec, image, ilen, w->container, w->growable);
  unit_log_clear ();
  run (w, &rec, &o, "recording run");
  ck_assert_msg (!o.fired && o.opened && o.failed_steps == 0,
                 "%s: the workload fails without faults: %s", w->name,
                 qc_last_error ());
  verify_reopen (&rec, &o, "recording run");
  ck_assert_msg (nfail == 0, "recording run: %s", fail_buf);
  /* Snapshot workloads apply a snapshot with a larger L1 table. */
  ck_assert_msg (nsnaps == 0 || o.l1_grew,
                 "%s: no snapshot apply grew the L1 table", w->name);
  /* The workload does what it is meant to. */
  if (w->expect_debug)
    ck_assert_msg (unit_log_has (QC_LOG_DEBUG, w->expect_debug),
                   "%s: the workload does not log '%s'", w->name,
                   w->expect_debug);
  save_sparse (rec.data, rec.dev.size, P ("rec.qcow2"));
  unit_sh ("cd '%s' && qemu-img check --output=json rec.qcow2 >rec.json",
           unit_dir);
  {
    size_t jl;
    char *json = (char *) unit_read_file (P ("rec.json"), &jl);
    json = realloc (json, jl + 1);
    json[jl] = '\0';
    ck_assert_msg (!w->expect_compressed ||
                   json_num (json, "compressed-clusters") > 0,
                   "%s: no compressed clusters: %s", w->name, json);
    free (json);
  }
  free (o.shadow);
  free (o.known);
  npoints = rec.nkinds;
  if (sample && npoints > sample)
    stride = (npoints + sample - 1) / sample;

  for (k = 1; k <= npoints; k += stride) {
    char kind = rec.kinds[k - 1];

    /* FAULTS_POINT=k: only that point (to debug a failure). */
    if ((env = getenv ("FAULTS_POINT")) != NULL && (size_t) atoi (env) != k)
      continue;
    enum fault faults[3];
    size_t nf = 0, v;

    if (kind == 'w') {
      faults[nf++] = F_EIO;
      /* Sampled points get one write fault each, in turn. */
      if (stride == 1) {
        faults[nf++] = F_ENOSPC;
        faults[nf++] = F_SHORT;
      }
      else
        faults[0] = (enum fault[]) { F_EIO, F_ENOSPC, F_SHORT }[(k / stride) % 3];
    }
    else
      faults[nf++] = F_EIO;

    for (v = 0; v < nf; v++) {
      char ctx[96];
      uint64_t h;
      size_t j;

      snprintf (ctx, sizeof ctx, "%s: %s at I/O point %zu of %zu (%s)",
                w->name, fault_names[faults[v]], k, npoints,
                kind == 'r' ? "read" : kind == 'w' ? "write" : "flush");
      faultdev_init (&f, image, ilen, w->container, w->growable);
      f.fault_at = k;
      f.fault = faults[v];
      run (w, &f, &o, ctx);
      nruns++;
      ck_assert_msg (f.fired, "%s: the fault point was never reached "
                     "(the workload is not deterministic)", ctx);
      fired_where[o.where == NULL ? 3 :
                  strcmp (o.where, "a request") == 0 ||
                  strcmp (o.where, "the final flush") == 0 ? 0 :
                  strcmp (o.where, "qc_image_close") == 0 ? 1 : 2]++;
      verify_reopen (&f, &o, ctx);
      free (o.shadow);
      free (o.known);

      /* qemu-img check, once per distinct container. */
      h = hash_container (f.data, f.dev.size);
      for (j = 0; j < nhashes && hashes[j] != h; j++)
        ;
      if (j == nhashes && o.opened) {
        hashes = realloc (hashes, (nhashes + 1) * sizeof *hashes);
        ck_assert (hashes != NULL);
        hashes[nhashes++] = h;
        if (nchecks == ncheck_alloc) {
          ncheck_alloc = ncheck_alloc ? 2 * ncheck_alloc : 64;
          pc = realloc (pc, ncheck_alloc * sizeof *pc);
          ck_assert (pc != NULL);
        }
        snprintf (pc[nchecks].name, sizeof pc[nchecks].name,
                  "c-%05zu.qcow2", nchecks);
        snprintf (pc[nchecks].ctx, sizeof pc[nchecks].ctx, "%s", ctx);
        save_sparse (f.data, f.dev.size, P (pc[nchecks].name));
        nchecks++;
        if (nchecks % 64 == 0) {
          run_checks (pc + nchecks - 64, 64, &leaky);
        }
      }
      free (f.data);
      free (f.kinds);
    }
  }
  run_checks (pc + (nchecks / 64) * 64, nchecks % 64, &leaky);

  {
    size_t nk[3] = { 0 };
    for (k = 0; k < npoints; k++)
      nk[rec.kinds[k] == 'r' ? 0 : rec.kinds[k] == 'w' ? 1 : 2]++;
    fprintf (stderr, "faults: %s: %zu I/O points (%zu reads, %zu writes, "
             "%zu flushes; %s), %zu runs, %zu distinct containers checked "
             "by qemu-img (%" PRIu64 " with leaks); faults fired in "
             "requests %zu, in close %zu, in open/make_writable %zu; "
             "%.1f s (qemu-img %.1f s)\n", w->name, npoints, nk[0], nk[1],
             nk[2], stride == 1 ? "all covered" : "sampled", nruns, nchecks,
             leaky, fired_where[0], fired_where[1], fired_where[2],
             now () - t0, t_checks);
  }
  free (rec.data);
  free (rec.kinds);
  free (hashes);
  free (pc);
  free (image);
  free_contents ();
  ck_assert_msg (nfail == 0, "%s: %zu failures; the first:\n%s", w->name,
                 nfail, fail_buf);
}
END_TEST

/* ------------------------------- backing chains and external data files */

/* The same faults where an image's other files are: a two-level backing
 * chain (base <- mid <- top) and an image with an external data file,
 * made by qemu-img.  Every file is a growable faultdev of its own, which
 * the core opens through qc_image_open_with; the devices share one
 * count of I/O points, so that point k fails in whichever file it goes
 * to (reads of a backing file during copy-on-write, writes of guest
 * data to the data file).  Judged as above: the request fails with the
 * injected errno, the backing files are never written, qemu-img check
 * finds no corruption in what the devices hold, and every request that
 * succeeded reads back once the final flush did.
 */
#define MAX_FILES 3

struct fileset {
  const char *names[MAX_FILES]; /* names[0]: the image opened */
  bool written[MAX_FILES];      /* may be written (else: a backing file) */
  size_t n;
  struct faultdev devs[MAX_FILES];
  uint8_t *orig[MAX_FILES];
  size_t orig_len[MAX_FILES];
};

static struct blkdev *
fileset_open (void *opaque, const char *path, enum qc_open_mode mode,
              const char *role)
{
  struct fileset *fs = opaque;
  const char *base = strrchr (path, '/') ? strrchr (path, '/') + 1 : path;
  size_t i;

  for (i = 0; i < fs->n; i++)
    if (strcmp (base, fs->names[i]) == 0)
      return &fs->devs[i].dev;
  qc_error ("%s: no device for this file", path);
  errno = ENOENT;
  return NULL;
}

/* Fresh devices over the original files (or the files in sub/, for the
 * reopen), counters shared through devs[0].
 */
static void
fileset_load (struct fileset *fs, const char *sub)
{
  size_t i;

  for (i = 0; i < fs->n; i++) {
    char name[256];
    uint8_t *p;
    size_t len;

    snprintf (name, sizeof name, "%s%s", sub, fs->names[i]);
    p = unit_read_file (P (name), &len);
    if (!sub[0]) {
      fs->orig[i] = p;
      fs->orig_len[i] = len;
    }
    faultdev_init (&fs->devs[i], p, len, CONTAINER, true);
    fs->devs[i].dev.name = strdup (P (name));
    fs->devs[i].ctl = &fs->devs[0];
    if (sub[0])
      free (p);
  }
}

static void
fileset_free_devs (struct fileset *fs)
{
  size_t i;

  for (i = 0; i < fs->n; i++) {
    free (fs->devs[i].data);
    free (fs->devs[i].dev.name);
  }
  free (fs->devs[0].kinds);
}

struct files_workload {
  const char *name;
  const char *prepare;          /* shell commands in the test directory */
  const char *names[MAX_FILES];
  bool written[MAX_FILES];
  const struct step *steps;
  size_t nsteps;
};

static const struct step chain_steps[] = {
  W (130 * KiB + 100, 1000, 0, 0x44),   /* copy-on-write from mid */
  W (10 * KiB + 7, 3000, 0, 0x45),      /* copy-on-write from base */
  W (600 * KiB, 8 * KiB, 0, -1),        /* over nothing */
  Z (200 * KiB, 4 * KiB, 0),            /* over mid's data */
  FLUSH,
  W (128 * KiB, 4 * KiB, 0, 0x46),
};

static const struct step data_file_steps[] = {
  W (60 * KiB + 100, 8 * KiB, 0, 0x78), /* half allocated */
  Z (0, 8 * KiB, MAY_TRIM),
  T (16 * KiB, 4 * KiB),
  FLUSH,
  W (512 * KiB, 16 * KiB, 0, -1),
  W (1 * KiB, 512, 0, 0x79),            /* in place, in the data file */
};

static const struct files_workload files_workloads[] = {
  { "backing-chain",
    "qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 1M && "
    "qemu-io -c 'write -P 0x11 0 256k' base.qcow2 && "
    "qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 "
    "  -F qcow2 mid.qcow2 && "
    "qemu-io -c 'write -P 0x22 128k 256k' mid.qcow2 && "
    "qemu-img create -q -f qcow2 -o cluster_size=4096 -b mid.qcow2 "
    "  -F qcow2 top.qcow2 && "
    "qemu-io -c 'write -P 0x33 300k 4k' top.qcow2",
    { "top.qcow2", "mid.qcow2", "base.qcow2" }, { true, false, false },
    chain_steps, N (chain_steps) },
  { "data-file",
    "qemu-img create -q -f qcow2 -o cluster_size=4096,data_file=d.raw "
    "  d.qcow2 1M && "
    "qemu-io -c 'write -P 0x77 0 64k' d.qcow2",
    { "d.qcow2", "d.raw" }, { true, true },
    data_file_steps, N (data_file_steps) },
};

/* Read the whole guest disk of the image in fs (no faults). */
static uint8_t *
files_read_guest (struct fileset *fs, uint64_t *size)
{
  struct qc_options opts;
  struct qc_image *img;
  struct blkdev *v;
  uint8_t *buf;

  qc_options_init (&opts);
  opts.locking = false;
  img = qc_image_open_with (&opts, &fs->devs[0].dev,
                            &(struct qc_open_file) { fileset_open, fs });
  ck_assert_msg (img != NULL, "reopen: %s", qc_last_error ());
  v = qc_image_default_view (img);
  *size = v->size;
  buf = malloc (*size);
  ck_assert (buf != NULL);
  ck_assert_msg (blkdev_pread (v, buf, *size, 0) == 0, "read back: %s",
                 qc_last_error ());
  qc_image_close (img);
  qc_options_free (&opts);
  return buf;
}

/* One run with the fault at point k (0: recording).  Returns the
 * number of I/O points.
 */
static char per_file[256];     /* the recording's points per file */

static uint64_t
files_run (const struct files_workload *w, struct fileset *fs,
           const uint8_t *guest0, uint64_t size, uint64_t k,
           enum fault fault, char **kinds)
{
  struct faultdev *ctl = &fs->devs[0];
  struct qc_options opts;
  struct qc_image *img;
  struct blkdev *view = NULL;
  uint8_t *shadow, *known, *got;
  bool flushed = false;
  uint64_t io, gsize;
  char ctx[128];
  size_t i;
  int r;

  snprintf (ctx, sizeof ctx, "%s: %s at point %" PRIu64, w->name,
            fault_names[fault], k);
  fileset_load (fs, "");
  ctl->fault_at = k;
  ctl->fault = fault;
  shadow = malloc (size);
  known = malloc (size);
  ck_assert (shadow && known);
  memcpy (shadow, guest0, size);
  memset (known, 1, size);

  qc_options_init (&opts);
  opts.locking = false;
  img = qc_image_open_with (&opts, &ctl->dev,
                            &(struct qc_open_file) { fileset_open, fs });
  if (img && qc_image_make_writable (img) == 0)
    view = qc_image_default_view (img);
  if (!view)
    EXPECT (ctl->fired && errno == expected_errno (fault),
            "%s: open failed: errno %d, fired %d: %s", ctx, errno,
            ctl->fired, qc_last_error ());
  for (i = 0; view && i <= w->nsteps; i++) {
    const struct step *s = i < w->nsteps ? &w->steps[i] : &final_flush;
    bool before = ctl->fired;
    uint8_t *buf = NULL;

    errno = 0;
    r = run_step (NULL, view, s, i, &buf);
    if (ctl->fired && !before)
      EXPECT (r == -1 && errno == expected_errno (fault),
              "%s: step %zu ('%c'): r %d errno %d (%s)", ctx, i, s->op, r,
              errno, strerror (errno));
    else if (r == -1)
      EXPECT (errno != 0, "%s: step %zu failed without errno", ctx, i);
    if (s->op != 'f') {
      if (r == 0 && s->op == 'w')
        memcpy (shadow + s->off, buf, s->len);
      else if (r == 0 && s->op == 'z')
        memset (shadow + s->off, 0, s->len);
      else if (s->op == 't' || r == -1)
        memset (known + s->off, 0, s->len);
    }
    else if (i == w->nsteps)
      flushed = r == 0;
    free (buf);
  }
  if (img)
    qc_image_close (img);
  qc_options_free (&opts);
  io = ctl->io;
  if (kinds) {
    char *p = per_file;

    for (i = 0; i < fs->n; i++)
      p += sprintf (p, "%s%s %" PRIu64, i ? ", " : "", fs->names[i],
                    fs->devs[i].points);
    *kinds = ctl->kinds;
    ctl->kinds = NULL;
  }

  /* The backing files are never written; the rest is judged on disk. */
  unit_sh ("rm -rf '%s/j' && mkdir '%s/j'", unit_dir, unit_dir);
  for (i = 0; i < fs->n; i++) {
    char name[256];

    if (!w->written[i])
      unit_assert_mem_eq (fs->devs[i].data, fs->orig[i], fs->orig_len[i],
                          fs->names[i]);
    EXPECT (w->written[i] || fs->devs[i].dev.size == fs->orig_len[i],
            "%s: backing file %s changed size", ctx, fs->names[i]);
    snprintf (name, sizeof name, "j/%s", fs->names[i]);
    unit_write_file (P (name), fs->devs[i].data, fs->devs[i].dev.size);
  }
  r = unit_sh_status ("cd '%s/j' && qemu-img check --output=json '%s' "
                      ">check.json 2>check.err; s=$?; "
                      "[ $s = 0 ] || [ $s = 3 ] || exit 1; "
                      "! grep -q '\"corruptions\": *[1-9]' check.json",
                      unit_dir, fs->names[0]);
  EXPECT (r == 0, "%s: qemu-img check found corruption (or failed)", ctx);
  fileset_free_devs (fs);

  if (flushed) {
    fileset_load (fs, "j/");
    got = files_read_guest (fs, &gsize);
    ck_assert_uint_eq (gsize, size);
    for (i = 0; i < size; i++)
      if (known[i] && got[i] != shadow[i]) {
        failure ("%s: guest byte %zu reads 0x%02x, not 0x%02x", ctx, i,
                 got[i], shadow[i]);
        break;
      }
    free (got);
    fileset_free_devs (fs);
  }
  for (i = 0; i < fs->n; i++)
    free (fs->orig[i]);
  free (shadow);
  free (known);
  return io;
}

START_TEST (test_faults_files)
{
  const struct files_workload *w = &files_workloads[_i];
  struct fileset fs = { .n = 0 };
  uint8_t *guest0;
  uint64_t size, npoints, k, nruns = 0;
  char *kinds = NULL;
  size_t i;

  unit_sh ("cd '%s' && %s", unit_dir, w->prepare);
  for (i = 0; i < MAX_FILES && w->names[i]; i++) {
    fs.names[i] = w->names[i];
    fs.written[i] = w->written[i];
  }
  fs.n = i;
  fileset_load (&fs, "");
  guest0 = files_read_guest (&fs, &size);
  fileset_free_devs (&fs);
  for (i = 0; i < fs.n; i++)
    free (fs.orig[i]);

  npoints = files_run (w, &fs, guest0, size, 0, F_NONE, &kinds);
  ck_assert_msg (nfail == 0, "%s: the run without faults failed:\n%s",
                 w->name, fail_buf);
  for (k = 1; k <= npoints; k++) {
    files_run (w, &fs, guest0, size, k, F_EIO, NULL);
    nruns++;
    if (kinds[k - 1] == 'w') {
      files_run (w, &fs, guest0, size, k, F_SHORT, NULL);
      nruns++;
    }
  }
  fprintf (stderr, "faults: %s: %" PRIu64 " I/O points (%s), %" PRIu64
           " runs, each checked by qemu-img\n", w->name, npoints, per_file,
           nruns);
  free (kinds);
  free (guest0);
  ck_assert_msg (nfail == 0, "%s: %zu failures; the first:\n%s", w->name,
                 nfail, fail_buf);
}
END_TEST

Suite *
faults_suite (void)
{
  Suite *s = suite_create ("faults");
  TCase *tc = tcase_create ("faults");

  tcase_add_checked_fixture (tc, unit_dir_setup, unit_dir_teardown);
  /* "everything": ~2000 runs, about a minute. */
  /* Each workload runs qemu-img check after every injected fault: a
   * few minutes when the machine is busy with other jobs.
   */
  tcase_set_timeout (tc, 8 * UNIT_QEMU_TIMEOUT);
  tcase_add_loop_test (tc, test_faults, 0, N (workloads));
  suite_add_tcase (s, tc);

  tc = tcase_create ("files");
  tcase_add_checked_fixture (tc, unit_dir_setup, unit_dir_teardown);
  tcase_set_timeout (tc, 8 * UNIT_QEMU_TIMEOUT);
  tcase_add_loop_test (tc, test_faults_files, 0, N (files_workloads));
  suite_add_tcase (s, tc);
  return s;
}
