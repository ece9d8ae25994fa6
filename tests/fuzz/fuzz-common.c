/* SPDX-License-Identifier: BSD-3-Clause */
/* Shared helpers of the fuzz targets: see fuzz-common.h. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"
#include "qc-error.h"

#define READ_CHUNK (64 * 1024 + 1536)   /* not a multiple of any cluster */
#define MAX_EXTENT_CALLS 1024
#define TAIL (2ULL << 20)               /* extents of the last bytes */
#define MAX_ZERO_RANGES 8192
#define ZERO_CHECK_LIMIT (8ULL << 20)   /* zero ranges checked below this */

static bool verbose;
static unsigned long nr_errors;

unsigned long
fuzz_error_count (void)
{
  return nr_errors;
}

static void
log_fn (enum qc_log_level level, const char *msg)
{
  if (level == QC_LOG_ERROR)
    nr_errors++;
  if (verbose)
    fprintf (stderr, "[%s] %s\n", level == QC_LOG_ERROR ? "error" : "debug",
             msg);
}

void
fuzz_init_log (void)
{
  verbose = getenv ("QC_FUZZ_VERBOSE") != NULL;
  qc_set_log_handler (log_fn);
}

void
fuzz_fail (const char *fs, ...)
{
  va_list args;

  fprintf (stderr, "\n*** FUZZ FINDING: ");
  va_start (args, fs);
  vfprintf (stderr, fs, args);
  va_end (args);
  fprintf (stderr, "\n    (last core error: %s)\n", qc_last_error ());
  abort ();
}

void *
fuzz_scratch (unsigned slot, size_t n)
{
  static void *bufs[FUZZ_SCRATCH_SLOTS];
  static size_t sizes[FUZZ_SCRATCH_SLOTS];

  if (slot >= FUZZ_SCRATCH_SLOTS)
    abort ();
  if (n == 0)
    n = 1;
  if (n > sizes[slot]) {
    free (bufs[slot]);
    bufs[slot] = malloc (n);
    if (!bufs[slot])
      abort ();
    sizes[slot] = n;
  }
  return bufs[slot];
}

void
fuzz_check_errno (const char *what)
{
  if (errno == 0)
    fuzz_fail ("%s failed (-1) without setting errno", what);
}

bool
fuzz_names_backing (const uint8_t *data, size_t size)
{
  size_t i;

  if (size < 20 || memcmp (data, "QFI\xfb", 4) != 0)
    return false;
  for (i = 8; i < 16; i++)      /* backing_file_offset */
    if (data[i])
      return true;
  return false;
}

#define BACKING_SIZE (256 * 1024)

struct blkdev *
fuzz_backing (void)
{
  static struct blkdev *dev;
  uint8_t *pattern;
  size_t i;

  /* Made once: images only read it (it stays the caller's). */
  if (!dev) {
    pattern = malloc (BACKING_SIZE);
    if (!pattern)
      abort ();
    for (i = 0; i < BACKING_SIZE; i++)
      pattern[i] = (i / 512) * 3 + 1 + (i & 0xf0);
    dev = blkdev_memory_new (pattern, BACKING_SIZE, true);
    free (pattern);
    if (!dev)
      abort ();
  }
  return dev;
}

/* ------------------------------------------------------------ extents */

struct ext_state {
  uint64_t start, end;          /* the request */
  uint64_t reached;             /* next expected offset */
  size_t calls;
  uint64_t zero_limit;          /* record zero ranges below this */
  uint64_t (*zeros)[2];
  size_t nzeros;
};

static int
ext_cb (void *opaque, uint64_t offset, uint64_t length, uint32_t flags)
{
  struct ext_state *s = opaque;

  s->calls++;
  if (length == 0)
    fuzz_fail ("extents: empty extent at %" PRIu64, offset);
  if (offset != s->reached)
    fuzz_fail ("extents: gap or overlap: expected %" PRIu64 ", got %"
               PRIu64, s->reached, offset);
  if (flags & ~(uint32_t) (BLKDEV_EXTENT_HOLE|BLKDEV_EXTENT_ZERO))
    fuzz_fail ("extents: unknown flags 0x%" PRIx32, flags);
  if (length > s->end - offset)
    fuzz_fail ("extents: extent %" PRIu64 "+%" PRIu64 " runs past the "
               "request end %" PRIu64, offset, length, s->end);
  s->reached = offset + length;
  if ((flags & BLKDEV_EXTENT_ZERO) && offset < s->zero_limit &&
      s->nzeros < MAX_ZERO_RANGES) {
    if (s->nzeros > 0 && s->zeros[s->nzeros - 1][1] == offset)
      s->zeros[s->nzeros - 1][1] = offset + length;
    else {
      s->zeros[s->nzeros][0] = offset;
      s->zeros[s->nzeros][1] = offset + length;
      s->nzeros++;
    }
  }
  return 0;
}

static bool
all_zero (const uint8_t *p, size_t n)
{
  /* Not a byte loop: this code is instrumented for coverage. */
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

int
fuzz_read_view (struct blkdev *dev, uint64_t *budget, uint8_t *out,
                uint64_t out_len)
{
  uint64_t size = dev->size;
  uint64_t lim = size < *budget ? size : *budget;
  struct ext_state s = { 0 };
  uint64_t off;
  size_t calls, z = 0;
  int pass;
  uint8_t *buf;
  int ret = 0;

  /* Extents of the part that is read (bounded: each call may stop
   * early, callers loop), and of the end of the device.
   */
  s.zeros = fuzz_scratch (0, MAX_ZERO_RANGES * sizeof *s.zeros);
  s.zero_limit = lim < ZERO_CHECK_LIMIT ? lim : ZERO_CHECK_LIMIT;
  for (pass = 0; pass < 2; pass++) {
    uint64_t end = pass == 0 ? lim : size;

    off = pass == 0 ? 0 : size - (size - lim < TAIL ? size - lim : TAIL);
    if (pass == 1 && off >= size)
      break;
    s.end = end;
    calls = 0;
    while (off < end && calls++ < MAX_EXTENT_CALLS) {
      s.start = s.reached = off;
      s.calls = 0;
      errno = 0;
      if (blkdev_extents (dev, off, end - off, ext_cb, &s) == -1) {
        fuzz_check_errno ("extents");
        ret = -1;
        if (pass == 0)
          s.nzeros = 0;         /* nothing to compare reads with */
        break;
      }
      if (s.reached == off)
        fuzz_fail ("extents at %" PRIu64 " (of %" PRIu64 ") made no "
                   "progress", off, size);
      off = s.reached;
    }
  }
  /* A few calls with odd offsets and lengths. */
  if (size > 3) {
    uint64_t o = size / 3 + 1, n = size / 3 + 7;
    if (n > size - o)
      n = size - o;
    s.start = s.reached = o;
    s.end = o + n;
    s.zero_limit = 0;
    errno = 0;
    if (blkdev_extents (dev, o, n, ext_cb, &s) == -1)
      fuzz_check_errno ("extents");
  }

  /* Read in chunks; ranges described as zero must read as zeros. */
  buf = fuzz_scratch (1, READ_CHUNK);
  for (off = 0; off < lim; ) {
    size_t n = lim - off < READ_CHUNK ? lim - off : READ_CHUNK;

    errno = 0;
    if (blkdev_pread (dev, buf, n, off) == -1) {
      fuzz_check_errno ("pread");
      ret = -1;
      off += n;
      continue;
    }
    while (z < s.nzeros && s.zeros[z][1] <= off)
      z++;
    for (size_t k = z; k < s.nzeros && s.zeros[k][0] < off + n; k++) {
      uint64_t a = s.zeros[k][0] > off ? s.zeros[k][0] : off;
      uint64_t b = s.zeros[k][1] < off + n ? s.zeros[k][1] : off + n;
      if (!all_zero (buf + (a - off), b - a))
        fuzz_fail ("%s: [%" PRIu64 ", %" PRIu64 ") is reported as zero "
                   "but does not read as zeros", dev->name, a, b);
    }
    if (out && off < out_len)
      memcpy (out + off, buf, out_len - off < n ? out_len - off : n);
    off += n;
  }
  *budget -= lim;
  return ret;
}
