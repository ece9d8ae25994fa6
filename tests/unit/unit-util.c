/* SPDX-License-Identifier: BSD-3-Clause */
/* Helpers shared by the unit tests: the log collector, temporary
 * directories, running qemu tools, files and byte comparison.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "blkdev.h"
#include "qc-error.h"
#include "unit.h"

/* ------------------------------------------------------- log handler */

#define LOG_MAX 256
#define LOG_LEN 512

static struct {
  int level;
  char msg[LOG_LEN];
} log_msgs[LOG_MAX];
static size_t log_n;            /* messages kept (the first LOG_MAX) */
static size_t log_total[2];     /* per level, including dropped ones */

static void
collect (enum qc_log_level level, const char *msg)
{
  if (level == QC_LOG_ERROR || level == QC_LOG_DEBUG)
    log_total[level]++;
  if (log_n < LOG_MAX) {
    log_msgs[log_n].level = level;
    snprintf (log_msgs[log_n].msg, LOG_LEN, "%s", msg);
    log_n++;
  }
  else {                        /* keep the most recent in the last slot */
    log_msgs[LOG_MAX - 1].level = level;
    snprintf (log_msgs[LOG_MAX - 1].msg, LOG_LEN, "%s", msg);
  }
  if (getenv ("UNIT_VERBOSE"))
    fprintf (stderr, "[%s] %s\n", level == QC_LOG_ERROR ? "error" : "debug",
             msg);
}

void
unit_log_install (void)
{
  qc_set_log_handler (collect);
  unit_log_clear ();
}

void
unit_log_clear (void)
{
  log_n = 0;
  log_total[0] = log_total[1] = 0;
}

size_t
unit_log_count (int level)
{
  if (level == UNIT_LOG_ANY)
    return log_total[0] + log_total[1];
  return log_total[level];
}

const char *
unit_log_last (int level)
{
  size_t i;

  for (i = log_n; i > 0; i--)
    if (level == UNIT_LOG_ANY || log_msgs[i - 1].level == level)
      return log_msgs[i - 1].msg;
  return NULL;
}

bool
unit_log_has (int level, const char *substr)
{
  size_t i;

  for (i = 0; i < log_n; i++)
    if ((level == UNIT_LOG_ANY || log_msgs[i].level == level) &&
        strstr (log_msgs[i].msg, substr))
      return true;
  return false;
}

/* ------------------------------------------------- files and commands */

char *
unit_tmpdir_new (void)
{
  const char *t = getenv ("TMPDIR");
  char *dir;

  if (!t || !*t)
    t = "/tmp";
  ck_assert (asprintf (&dir, "%s/qc-unit-XXXXXX", t) > 0);
  ck_assert_msg (mkdtemp (dir) != NULL, "mkdtemp %s: %s", dir,
                 strerror (errno));
  return dir;
}

void
unit_tmpdir_remove (const char *dir)
{
  char *cmd;

  if (!dir || getenv ("UNIT_KEEP_TMP"))
    return;
  if (asprintf (&cmd, "rm -rf '%s'", dir) > 0) {
    if (system (cmd) != 0)
      fprintf (stderr, "warning: could not remove %s\n", dir);
    free (cmd);
  }
}

char *unit_dir;

void
unit_dir_setup (void)
{
  unit_dir = unit_tmpdir_new ();
}

void
unit_dir_teardown (void)
{
  unit_tmpdir_remove (unit_dir);
  free (unit_dir);
  unit_dir = NULL;
}

static int
run (bool must, const char *fs, va_list args)
{
  char *cmd, *full, out[2048];
  size_t n = 0, r;
  FILE *fp;
  int status;

  ck_assert (vasprintf (&cmd, fs, args) > 0);
  ck_assert (asprintf (&full, "exec 2>&1; %s", cmd) > 0);
  fp = popen (full, "r");
  ck_assert_msg (fp != NULL, "popen: %s", strerror (errno));
  /* Keep the first part of the output; drain the rest. */
  while ((r = fread (out + n, 1, sizeof out - 1 - n, fp)) > 0) {
    n += r;
    if (n == sizeof out - 1) {
      char sink[4096];
      while (fread (sink, 1, sizeof sink, fp) > 0)
        ;
      break;
    }
  }
  out[n] = '\0';
  status = pclose (fp);
  status = status == -1 ? -1 :
    WIFEXITED (status) ? WEXITSTATUS (status) : -1;
  if (must)
    ck_assert_msg (status == 0, "command failed (status %d): %s\n%s",
                   status, cmd, out);
  free (full);
  free (cmd);
  return status;
}

void
unit_sh (const char *fs, ...)
{
  va_list args;

  va_start (args, fs);
  run (true, fs, args);
  va_end (args);
}

int
unit_sh_status (const char *fs, ...)
{
  va_list args;
  int r;

  va_start (args, fs);
  r = run (false, fs, args);
  va_end (args);
  return r;
}

uint8_t *
unit_read_file (const char *path, size_t *len)
{
  FILE *fp = fopen (path, "rb");
  uint8_t *buf;
  long n;

  ck_assert_msg (fp != NULL, "open %s: %s", path, strerror (errno));
  ck_assert (fseek (fp, 0, SEEK_END) == 0);
  n = ftell (fp);
  ck_assert (n >= 0);
  rewind (fp);
  buf = malloc (n ? n : 1);
  ck_assert (buf != NULL);
  ck_assert_msg (fread (buf, 1, n, fp) == (size_t) n, "read %s", path);
  fclose (fp);
  *len = n;
  return buf;
}

void
unit_write_file (const char *path, const void *buf, size_t len)
{
  FILE *fp = fopen (path, "wb");

  ck_assert_msg (fp != NULL, "create %s: %s", path, strerror (errno));
  ck_assert_msg (fwrite (buf, 1, len, fp) == len, "write %s", path);
  ck_assert_msg (fclose (fp) == 0, "close %s", path);
}

const char *
unit_path (const char *dir, const char *name)
{
  static char ring[8][4096];
  static unsigned next;
  char *p = ring[next++ % 8];

  snprintf (p, sizeof ring[0], "%s/%s", dir, name);
  return p;
}

void
unit_fill_random (uint8_t *buf, size_t len, uint64_t seed)
{
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 0x2545f4914f6cdd1dULL;
  size_t i;

  for (i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    buf[i] = x >> 24;
  }
}

void
unit_assert_mem_eq_ (const void *got, const void *want, size_t len,
                     const char *what, const char *file, int line)
{
  const uint8_t *g = got, *w = want;
  size_t i;

  if (memcmp (g, w, len) == 0)
    return;
  for (i = 0; i < len && g[i] == w[i]; i++)
    ;
  ck_abort_msg ("%s:%d: %s: first difference at byte %zu (0x%zx) of %zu: "
                "got 0x%02x, expected 0x%02x",
                file, line, what, i, i, len, g[i], w[i]);
}

/* ----------------------------------------------------------- extents */

int
unit_exts_collect (void *opaque, uint64_t off, uint64_t len, uint32_t flags)
{
  struct unit_exts *x = opaque;

  x->calls++;
  if (x->fail_after && x->calls == x->fail_after) {
    errno = EIO;
    return -1;
  }
  unit_check (len > 0, "empty extent at %llu", (unsigned long long) off);
  unit_check ((flags & ~3U) == 0, "unknown extent flags 0x%x", flags);
  if (x->n > 0) {
    struct unit_ext *last = &x->e[x->n - 1];
    unit_check (last->off + last->len == off,
                   "extents not contiguous: %llu+%llu then %llu",
                   (unsigned long long) last->off,
                   (unsigned long long) last->len, (unsigned long long) off);
    if (last->flags == flags) {
      last->len += len;
      return 0;
    }
  }
  if (x->n == x->cap) {
    x->cap = x->cap ? 2 * x->cap : 64;
    x->e = realloc (x->e, x->cap * sizeof *x->e);
    unit_check (x->e != NULL, "realloc");
  }
  x->e[x->n++] = (struct unit_ext) { off, len, flags };
  return 0;
}

void
unit_exts_reset (struct unit_exts *x)
{
  x->n = 0;
  x->calls = 0;
  x->fail_after = 0;
}

void
unit_exts_free (struct unit_exts *x)
{
  free (x->e);
  memset (x, 0, sizeof *x);
}

void
unit_exts_once (struct blkdev *dev, uint64_t off, uint64_t count,
                struct unit_exts *x)
{
  unit_exts_reset (x);
  ck_assert_msg (blkdev_extents (dev, off, count, unit_exts_collect, x) == 0,
                 "blkdev_extents: %s", qc_last_error ());
}

void
unit_exts_all (struct blkdev *dev, uint64_t off, uint64_t count,
               struct unit_exts *x)
{
  uint64_t end = off + count;

  unit_exts_reset (x);
  while (off < end) {
    size_t before = x->calls;
    ck_assert_msg (blkdev_extents (dev, off, end - off, unit_exts_collect,
                                   x) == 0,
                   "blkdev_extents: %s", qc_last_error ());
    ck_assert_msg (x->calls > before, "extents: no progress at %llu",
                   (unsigned long long) off);
    off = x->e[x->n - 1].off + x->e[x->n - 1].len;
  }
  ck_assert_msg (off == end, "extents ran past the request: %llu > %llu",
                 (unsigned long long) off, (unsigned long long) end);
}

void
unit_assert_ext (const struct unit_exts *x, size_t i, uint64_t off,
                 uint64_t len, uint32_t flags)
{
  ck_assert_msg (i < x->n, "only %zu extents, wanted #%zu", x->n, i);
  ck_assert_msg (x->e[i].off == off && x->e[i].len == len &&
                 x->e[i].flags == flags,
                 "extent #%zu is (%llu, %llu, %u), expected (%llu, %llu, %u)",
                 i, (unsigned long long) x->e[i].off,
                 (unsigned long long) x->e[i].len, x->e[i].flags,
                 (unsigned long long) off, (unsigned long long) len, flags);
}

void
unit_assert_zero_ (const void *p, size_t len, const char *what,
                   const char *file, int line)
{
  const uint8_t *b = p;
  size_t i;

  for (i = 0; i < len; i++)
    if (b[i] != 0)
      ck_abort_msg ("%s:%d: %s: byte %zu (0x%zx) of %zu is 0x%02x, not 0",
                    file, line, what, i, i, len, b[i]);
}

/* ------------------------------------------------------- byte order */

void
unit_put_be16 (uint8_t *p, uint16_t v)
{
  p[0] = v >> 8;
  p[1] = v;
}

void
unit_put_be32 (uint8_t *p, uint32_t v)
{
  p[0] = v >> 24;
  p[1] = v >> 16;
  p[2] = v >> 8;
  p[3] = v;
}

void
unit_put_be64 (uint8_t *p, uint64_t v)
{
  unit_put_be32 (p, v >> 32);
  unit_put_be32 (p + 4, v);
}

uint32_t
unit_get_be32 (const uint8_t *p)
{
  return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 |
    (uint32_t) p[2] << 8 | p[3];
}

uint64_t
unit_get_be64 (const uint8_t *p)
{
  return (uint64_t) unit_get_be32 (p) << 32 | unit_get_be32 (p + 4);
}
