/* SPDX-License-Identifier: BSD-3-Clause */
/* Shared helpers of the libFuzzer targets over the format core.
 *
 * The targets are built from the sources in common/ directly, with
 * fuzz-noopen.h forced in: no input can make the core open (or, worse,
 * write) a file of the host through a backing file or external data
 * file name.  Images run on memory devices only.
 */
#ifndef QC_FUZZ_COMMON_H
#define QC_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkdev.h"
#include "qcow2.h"

/* The passphrase of encrypted inputs: the seeds made by make-luks-seeds
 * use it, and the targets unlock images with it.
 */
#define FUZZ_PASSPHRASE "fuzz passphrase"

/* Silence the core (QC_FUZZ_VERBOSE=1 prints its messages). */
extern void fuzz_init_log (void);

/* Number of errors the core has reported so far. */
extern unsigned long fuzz_error_count (void);

/* Abort with a message: a finding (libFuzzer saves the input). */
extern void fuzz_fail (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2), noreturn));

/* Does the input look like a qcow2 image naming a backing file? */
extern bool fuzz_names_backing (const uint8_t *data, size_t size);

/* A backing device for images that name one: a read-only memory device
 * with a fixed pattern, shared by all inputs (never closed).
 */
extern struct blkdev *fuzz_backing (void);

/* Read [0, min(size, budget)) of dev in chunks, and describe its extents
 * there and at the end of the device (bounded number of calls), checking
 * the extents' invariants and that ranges reported as zero (in the first
 * 8 MiB) read as zeros.  *budget is decremented by the
 * bytes read; reading stops when it is exhausted.  If out is not NULL
 * it receives the bytes read (out_len bytes at most).  Returns 0 if
 * every read succeeded, -1 if one failed (cleanly: errno set).
 */
extern int fuzz_read_view (struct blkdev *dev, uint64_t *budget,
                           uint8_t *out, uint64_t out_len);

/* Scratch buffers kept between inputs (fresh large allocations cost
 * page faults on every input): slot 0-1 fuzz-common.c, 2-7 the targets.
 * Contents are undefined.
 */
#define FUZZ_SCRATCH_SLOTS 8
extern void *fuzz_scratch (unsigned slot, size_t n);

/* Check that a call that returned -1 set errno to something sensible. */
extern void fuzz_check_errno (const char *what);

#endif /* QC_FUZZ_COMMON_H */
