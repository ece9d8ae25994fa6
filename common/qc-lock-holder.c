/* SPDX-License-Identifier: BSD-3-Clause */
/* Who holds the image locks another process took (see qc-lock.h).
 * Open file description locks show no owner in /proc/locks (pid -1),
 * so look for the processes that have the same file open with a lock
 * on that descriptor (/proc/PID/fdinfo/FD lists its locks), and name
 * them by /proc/PID/comm.  Only for messages: best effort, Linux only,
 * and bounded by the processes and descriptors the system has.
 */
#include <config.h>

#include <ctype.h>
#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "qc-lock.h"

/* Does /proc/PID/fdinfo/FD list a lock? */
static bool
fd_has_lock (const char *pid, const char *fd)
{
  char path[600], line[256];
  bool ret = false;
  FILE *fp;

  snprintf (path, sizeof path, "/proc/%s/fdinfo/%s", pid, fd);
  fp = fopen (path, "re");
  if (!fp)
    return false;
  while (!ret && fgets (line, sizeof line, fp))
    ret = strncmp (line, "lock:", 5) == 0;
  fclose (fp);
  return ret;
}

/* Has process pid the file st open, with a lock on it? */
static bool
pid_holds (const char *pid, const struct stat *st)
{
  char path[300];
  struct dirent *d;
  bool ret = false;
  DIR *dir;

  snprintf (path, sizeof path, "/proc/%s/fd", pid);
  dir = opendir (path);
  if (!dir)
    return false;
  while (!ret && (d = readdir (dir)) != NULL) {
    char fdpath[600];
    struct stat fst;

    if (!isdigit ((unsigned char) d->d_name[0]))
      continue;
    snprintf (fdpath, sizeof fdpath, "%s/%s", path, d->d_name);
    if (stat (fdpath, &fst) == 0 && fst.st_dev == st->st_dev &&
        fst.st_ino == st->st_ino)
      ret = fd_has_lock (pid, d->d_name);
  }
  closedir (dir);
  return ret;
}

const char *
qc_lock_holder (int fd, char *buf, size_t len)
{
  struct stat st;
  struct dirent *d;
  DIR *proc;
  const char *ret = NULL;
  char self[32];

  if (fstat (fd, &st) == -1 || !(proc = opendir ("/proc")))
    return NULL;
  snprintf (self, sizeof self, "%ld", (long) getpid ());
  while (!ret && (d = readdir (proc)) != NULL) {
    char path[300], comm[64] = "";
    FILE *fp;

    if (!isdigit ((unsigned char) d->d_name[0]) ||
        strcmp (d->d_name, self) == 0 || !pid_holds (d->d_name, &st))
      continue;
    snprintf (path, sizeof path, "/proc/%s/comm", d->d_name);
    fp = fopen (path, "re");
    if (fp) {
      if (fgets (comm, sizeof comm, fp))
        comm[strcspn (comm, "\n")] = '\0';
      fclose (fp);
    }
    if (strcmp (comm, "nbdkit") == 0)
      snprintf (buf, len, "another nbdkit (pid %s)", d->d_name);
    else if (strncmp (comm, "qemu", 4) == 0)
      snprintf (buf, len, "qemu (%s, pid %s)", comm, d->d_name);
    else
      snprintf (buf, len, "%s (pid %s)", *comm ? comm : "a process",
                d->d_name);
    ret = buf;
  }
  closedir (proc);
  return ret;
}
