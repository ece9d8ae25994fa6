/* SPDX-License-Identifier: BSD-3-Clause */
/* Fuzz target: open an image read-only from a memory device, read all of
 * it (bounded) and describe its extents, through the default view and
 * every snapshot view.
 *
 * Besides crashes, sanitizer reports, leaks and huge allocations, it
 * flags (abort): a failure without errno, extents that are empty, not
 * contiguous, past the request or make no progress, ranges described as
 * zero that do not read as zeros, and reads that return different bytes
 * for the same range depending on how the request is cut.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"
#include "qcow2-int.h"

#define READ_BUDGET (16ULL << 20)       /* bytes read per input, all views */
#define COMPARE_BYTES (1ULL << 20)      /* kept to compare re-reads */

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  fuzz_init_log ();
  return 0;
}

/* Re-read a few odd ranges of the first bytes and compare. */
static void
reread (struct blkdev *dev, const uint8_t *ref, uint64_t ref_len,
        uint32_t seed)
{
  uint8_t buf[5000];
  int i;

  for (i = 0; i < 4 && ref_len > 0; i++) {
    uint64_t o, n;

    seed = seed * 1103515245 + 12345;
    o = (seed >> 8) % ref_len;
    n = 1 + (seed >> 3) % sizeof buf;
    if (n > ref_len - o)
      n = ref_len - o;
    errno = 0;
    if (blkdev_pread (dev, buf, n, o) == -1) {
      fuzz_check_errno ("pread");
      continue;
    }
    if (memcmp (buf, ref + o, n) != 0)
      fuzz_fail ("%s: re-reading [%" PRIu64 ", +%" PRIu64 ") gives "
                 "different bytes", dev->name, o, n);
  }
}

static void
read_and_reread (struct blkdev *view, uint64_t *budget, uint8_t *ref,
                 uint32_t seed)
{
  uint64_t before = *budget, got;

  if (fuzz_read_view (view, budget, ref, COMPARE_BYTES) == -1)
    return;
  got = before - *budget;
  reread (view, ref, got < COMPARE_BYTES ? got : COMPARE_BYTES, seed);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct qc_options opts;
  struct blkdev *dev, *backing = NULL, *view;
  struct qc_view *sv;
  struct qc_image *img;
  uint64_t budget = READ_BUDGET;
  static uint8_t *ref;
  uint32_t seed = size;
  size_t i, n;

  if (!ref && !(ref = malloc (COMPARE_BYTES)))
    abort ();
  for (i = 0; i < size && i < 64; i++)
    seed = seed * 31 + data[i];

  dev = blkdev_memory_new (data, size, true);
  if (!dev)
    abort ();
  qc_options_init (&opts);
  opts.locking = false;
  opts.readonly = true;
  /* Encrypted images unlock when made with it (make-luks-seeds.c; any
   * legacy AES image opens), so decryption is fuzzed too.
   */
  opts.passphrase = (char *) FUZZ_PASSPHRASE;
  /* Images naming a backing file get a memory backing device; the
   * others none (never a host file).
   */
  if (fuzz_names_backing (data, size)) {
    backing = fuzz_backing ();
    opts.backing_dev = backing;
  }
  else
    opts.backing = (char *) "none";

  errno = 0;
  img = qc_image_open (&opts, dev);
  if (!img) {
    fuzz_check_errno ("qc_image_open");
    return 0;
  }
  (void) qc_image_description (img);

  view = qc_image_default_view (img);
  read_and_reread (view, &budget, ref, seed);

  n = qc_image_nr_snapshots (img);
  for (i = 0; i < n; i++) {
    const char *name = qc_image_snapshot_name (img, i);

    /* By name (the public way; an empty name is the default view, and
     * a repeated one the first such snapshot), and by index.
     */
    errno = 0;
    if (!qc_image_view (img, name))
      fuzz_check_errno ("qc_image_view");
    errno = 0;
    sv = qc_snapshot_view (img, i);
    if (!sv) {
      fuzz_check_errno ("qc_snapshot_view");
      continue;
    }
    view = &sv->dev;
    read_and_reread (view, &budget, ref, seed + i);
  }
  /* Lookups that must fail cleanly. */
  errno = 0;
  if (!qc_image_view (img, "\x01no such snapshot"))
    fuzz_check_errno ("qc_image_view");

  qc_image_close (img);
  return 0;
}
