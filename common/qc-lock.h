/* SPDX-License-Identifier: BSD-3-Clause */
/* qemu-compatible image locking with open file description locks.  qemu
 * marks "I hold permission i" by a shared lock on byte 100+i and "I do
 * not share permission i" by a shared lock on byte 200+i; i is 0
 * consistent read, 1 write, 2 write-unchanged, 3 resize.  Taking the same
 * locks makes qemu refuse an image we serve, and the other way round.
 */
#ifndef QC_LOCK_H
#define QC_LOCK_H

#include <stdbool.h>
#include <stddef.h>

struct blkdev;

/* Lock fd (an image open read-only when !write).  Returns 0, or -1 after
 * qc_error naming the conflicting permission (errno EAGAIN).
 */
extern int qc_lock_image (int fd, bool write, const char *name);

/* Whether fd could be locked for writing now, without taking a lock:
 * 0, or -1 after qc_error saying who holds what (errno EAGAIN).
 */
extern int qc_lock_probe (int fd, const char *name);

/* Who else holds locks on the file of fd ("qemu (qemu-io, pid 12)",
 * "another nbdkit (pid 34)"), in buf; NULL if that cannot be told.
 */
extern const char *qc_lock_holder (int fd, char *buf, size_t len);

/* Release the locks qc_lock_image took on fd. */
extern void qc_unlock_image (int fd);

/* The same on a device: the locks for a file of an image (role names it
 * in messages, e.g. "backing file"; NULL for the image itself).  A
 * device that is not a local file takes none and succeeds.
 */
extern int qc_lock_file (struct blkdev *dev, bool write, const char *role);

/* qc_lock_probe on a device, as qc_lock_file. */
extern int qc_lock_probe_file (struct blkdev *dev, const char *role);

#endif /* QC_LOCK_H */
