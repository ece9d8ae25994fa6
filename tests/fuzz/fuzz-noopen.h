/* SPDX-License-Identifier: BSD-3-Clause */
/* Force-included into every core source in the fuzz build: the core
 * may never open a host file there (a backing file or external data
 * file name in a hostile image could name anything, and making the image
 * writable would write to it).  open() always fails (fuzz-stubs.c), so
 * the real blkdev-file.c is built and its failure paths are fuzzed.
 */
#ifndef QC_FUZZ_NOOPEN_H
#define QC_FUZZ_NOOPEN_H

#include <config.h>
#include <fcntl.h>
#include <stdint.h>

extern int fuzz_no_open (const char *path, int flags, ...);
#define open fuzz_no_open

/* Renamed so that fuzz-stubs.c can pretend, for memory devices, to be
 * a sparse file (qemu's metadata-preallocation test is fuzzed then).
 */
#define blkdev_file_allocated fuzz_real_blkdev_file_allocated

#endif /* QC_FUZZ_NOOPEN_H */
