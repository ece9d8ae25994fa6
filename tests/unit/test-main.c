/* SPDX-License-Identifier: BSD-3-Clause */
/* The unit test runner: every suite of the format core, Check's normal
 * output, exit status 1 if any test failed.
 *
 * Environment: CK_RUN_SUITE / CK_RUN_CASE select tests (Check's own),
 * UNIT_VERBOSE=1 prints the core's messages, UNIT_KEEP_TMP=1 keeps the
 * temporary directories.
 */
#include <config.h>

#include <stdlib.h>

#include "unit.h"

int
main (void)
{
  SRunner *sr;
  int failed;

  /* Installed before the runner forks, so every test has it. */
  unit_log_install ();

  sr = srunner_create (header_suite ());
  srunner_add_suite (sr, blkdev_suite ());
  srunner_add_suite (sr, read_suite ());
  srunner_add_suite (sr, codec_suite ());
  srunner_add_suite (sr, options_suite ());
  srunner_add_suite (sr, crash_replay_suite ());
  srunner_add_suite (sr, faults_suite ());
  srunner_add_suite (sr, regressions_suite ());
  srunner_add_suite (sr, crypto_suite ());
  srunner_add_suite (sr, dcache_suite ());
  srunner_add_suite (sr, enc_suite ());
  srunner_add_suite (sr, bitmaps_suite ());
  srunner_add_suite (sr, rahead_suite ());
  srunner_run_all (sr, CK_NORMAL);
  failed = srunner_ntests_failed (sr);
  srunner_free (sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
