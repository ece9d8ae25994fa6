/* SPDX-License-Identifier: BSD-3-Clause */
/* qemu-compatible image locks: see qc-lock.h. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkdev.h"
#include "qc-error.h"
#include "qc-lock.h"
#include "qc-options.h"

#define PERM_READ   0
#define PERM_WRITE  1
#define PERM_RESIZE 3
#define NR_PERMS    4

static const char *const perm_names[NR_PERMS] = {
  "consistent read", "write", "write unchanged", "resize",
};

static int
ofd_lock (int fd, int cmd, short type, off_t byte, struct flock *fl)
{
  memset (fl, 0, sizeof *fl);
  fl->l_type = type;
  fl->l_whence = SEEK_SET;
  fl->l_start = byte;
  fl->l_len = 1;
  return fcntl (fd, cmd, fl);
}

/* Does another open file description hold a lock on byte? */
static int
held_by_other (int fd, off_t byte, const char *name, bool *held)
{
  struct flock fl;

  if (ofd_lock (fd, F_OFD_GETLK, F_WRLCK, byte, &fl) == -1) {
    qc_error ("%s: testing lock byte %ld: %m", name, (long) byte);
    return -1;
  }
  *held = fl.l_type != F_UNLCK;
  return 0;
}

/* The other process, for messages. */
static const char *
other (int fd, char *buf, size_t len)
{
  const char *who = qc_lock_holder (fd, buf, len);

  return who ? who : "another process (qemu?)";
}

/* Read-only: hold consistent read, share nothing that changes the
 * guest's view (write, resize).  Read-write: hold read, write and
 * resize; share neither write nor resize.
 */
#define HOLD(write) { true, write, false, write }
#define UNSHARE { false, true, false, true }

/* After taking our locks (or instead, for a probe): does another
 * process hold a permission we do not share, or not share one we hold?
 */
static int
check_conflicts (int fd, bool write, const char *name)
{
  const bool hold[NR_PERMS] = HOLD (write), unshare[NR_PERMS] = UNSHARE;
  char buf[128];
  bool held;
  int i;

  for (i = 0; i < NR_PERMS; i++) {
    if (hold[i]) {
      if (held_by_other (fd, 200 + i, name, &held) == -1)
        return -1;
      if (held) {
        qc_error ("%s: cannot get the \"%s\" lock: %s has the image "
                  "open and does not share it; use %slocking=off to serve "
                  "it anyway", name, perm_names[i],
                  other (fd, buf, sizeof buf), qc_options_prefix ());
        errno = EAGAIN;
        return -1;
      }
    }
    if (unshare[i]) {
      if (held_by_other (fd, 100 + i, name, &held) == -1)
        return -1;
      if (held) {
        qc_error ("%s: %s has the image open with \"%s\" permission; "
                  "use %slocking=off to serve it anyway", name,
                  other (fd, buf, sizeof buf), perm_names[i],
                  qc_options_prefix ());
        errno = EAGAIN;
        return -1;
      }
    }
  }
  return 0;
}

int
qc_lock_probe (int fd, const char *name)
{
  return check_conflicts (fd, true, name);
}

int
qc_lock_image (int fd, bool write, const char *name)
{
  const bool hold[NR_PERMS] = HOLD (write), unshare[NR_PERMS] = UNSHARE;
  struct flock fl;
  char buf[128];
  int i;

  for (i = 0; i < NR_PERMS; i++) {
    if (hold[i] && ofd_lock (fd, F_OFD_SETLK, F_RDLCK, 100 + i, &fl) == -1)
      goto lock_err;
    if (unshare[i] && ofd_lock (fd, F_OFD_SETLK, F_RDLCK, 200 + i, &fl) == -1)
      goto lock_err;
  }
  return check_conflicts (fd, write, name);

 lock_err:
  if (errno == EAGAIN || errno == EACCES) {
    qc_error ("%s: the image is locked by %s; use %slocking=off to serve "
              "it anyway", name, other (fd, buf, sizeof buf),
              qc_options_prefix ());
    errno = EAGAIN;
  }
  else
    qc_error ("%s: locking: %m", name);
  return -1;
}

void
qc_unlock_image (int fd)
{
  struct flock fl;
  int i;

  for (i = 0; i < NR_PERMS; i++) {
    ofd_lock (fd, F_OFD_SETLK, F_UNLCK, 100 + i, &fl);
    ofd_lock (fd, F_OFD_SETLK, F_UNLCK, 200 + i, &fl);
  }
}

/* qemu's locks on a file of the image (see qc-lock.h): the image
 * itself, each backing file (read locks only: we never write them) and
 * the external data file (write locks too once the image is writable).
 * role names the file in messages ("backing file"); NULL for the image.
 * A device that is not a local file (a filter's container) takes none.
 */
static int
lock_file (struct blkdev *dev, bool write, const char *role, bool probe)
{
  int fd = blkdev_file_fd (dev);
  char *label = NULL;
  const char *name;
  int r;

  if (fd < 0)
    return 0;
  if (role && asprintf (&label, "%s %s", role, dev->name) == -1) {
    qc_error ("%s: %m", dev->name);
    return -1;
  }
  name = label ? label : dev->name;
  r = probe ? qc_lock_probe (fd, name) : qc_lock_image (fd, write, name);
  free (label);
  return r;
}

int
qc_lock_file (struct blkdev *dev, bool write, const char *role)
{
  return lock_file (dev, write, role, false);
}

int
qc_lock_probe_file (struct blkdev *dev, const char *role)
{
  return lock_file (dev, true, role, true);
}
