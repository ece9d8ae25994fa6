/* SPDX-License-Identifier: BSD-3-Clause */
/* The cost of keeping a persistent bitmap, in the core alone (no NBD,
 * no nbdkit: the share of the marking is larger here than in a server):
 * N random 4 KiB writes in place through the active view of IMAGE,
 * printing the CPU time per write.  Built and run by bitmap-cost.sh.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qc-options.h"
#include "qcow2.h"

static double
cpu_seconds (void)
{
  struct timespec t;

  clock_gettime (CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int
main (int argc, char **argv)
{
  static char buf[4096];
  uint64_t x = 88172645463325252ULL, blocks;
  struct qc_options o;
  struct qc_image *img;
  struct blkdev *v;
  long i, n;
  double t0;

  if (argc != 3) {
    fprintf (stderr, "usage: %s IMAGE N\n", argv[0]);
    return 2;
  }
  n = atol (argv[2]);
  qc_options_init (&o);
  o.locking = false;
  if (qc_options_set (&o, "file", argv[1]) == -1 ||
      !(img = qc_image_open (&o, NULL)) ||
      qc_image_make_writable (img) == -1) {
    fprintf (stderr, "%s: %s\n", argv[1], qc_last_error ());
    return 1;
  }
  v = qc_image_default_view (img);
  blocks = v->size / 4096;
  /* The first write starts the tracker: not timed. */
  if (blkdev_pwrite (v, buf, 4096, 0, 0) == -1)
    return 1;
  t0 = cpu_seconds ();
  for (i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    if (blkdev_pwrite (v, buf, 4096, (x % blocks) * 4096, 0) == -1) {
      fprintf (stderr, "write: %s\n", qc_last_error ());
      return 1;
    }
  }
  printf ("%.3f\n", (cpu_seconds () - t0) / n * 1e6);
  qc_image_close (img);
  qc_options_free (&o);
  return 0;
}
