/* SPDX-License-Identifier: BSD-3-Clause */
/* nbdkit glue shared by the modules: see glue.h. */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include <sys/stat.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "glue.h"
#include "qc-options.h"

/* Is fd 2 /dev/null?  nbdkit (not -v) points it there when it forks
 * into the background, and sends its own messages to syslog then.
 */
static bool
stderr_is_null (void)
{
  struct stat st, null;

  return fstat (STDERR_FILENO, &st) == 0 && S_ISCHR (st.st_mode) &&
    stat ("/dev/null", &null) == 0 && st.st_rdev == null.st_rdev;
}

void
glue_log (enum qc_log_level level, const char *msg)
{
  switch (level) {
  case QC_LOG_ERROR:
    nbdkit_error ("%s", msg);
    break;
  case QC_LOG_INFO:
    /* nbdkit 1.32 has no level between error and debug (-v only): a
     * result the user asked for goes where nbdkit's errors go, without
     * the "error:" label.
     */
    if (stderr_is_null ())
      syslog (LOG_NOTICE, "%s", msg);
    else
      fprintf (stderr, "nbdkit: %s\n", msg);
    break;
  default:
    nbdkit_debug ("%s", msg);
  }
}

unsigned
glue_blkdev_flags (uint32_t flags)
{
  return (flags & NBDKIT_FLAG_FUA ? BLKDEV_FUA : 0) |
    (flags & NBDKIT_FLAG_MAY_TRIM ? BLKDEV_MAY_TRIM : 0) |
    (flags & NBDKIT_FLAG_FAST_ZERO ? BLKDEV_FAST_ZERO : 0);
}

struct extents_ctx {
  struct nbdkit_extents *extents;
  bool req_one;
  bool got_one;
};

static int
add_extent (void *opaque, uint64_t offset, uint64_t length, uint32_t flags)
{
  struct extents_ctx *ctx = opaque;
  uint32_t type = 0;

  if (ctx->req_one && ctx->got_one) {
    errno = 0;
    return -1;                  /* enough: stop quietly */
  }
  if (flags & BLKDEV_EXTENT_HOLE) type |= NBDKIT_EXTENT_HOLE;
  if (flags & BLKDEV_EXTENT_ZERO) type |= NBDKIT_EXTENT_ZERO;
  ctx->got_one = true;
  return nbdkit_add_extent (ctx->extents, offset, length, type);
}

int
glue_extents (struct blkdev *view, uint32_t count, uint64_t offset,
              uint32_t flags, struct nbdkit_extents *extents)
{
  struct extents_ctx ctx = { extents, flags & NBDKIT_FLAG_REQ_ONE, false };
  int r;

  r = blkdev_extents (view, offset, count, add_extent, &ctx);
  if (r == -1 && ctx.req_one && ctx.got_one && errno == 0)
    return 0;
  return r;
}

int
glue_set_option (struct qc_options *opts, const char *key, const char *value)
{
  char *secret;
  int r;

  if (strcmp (key, "passphrase") != 0 &&
      strcmp (key, "backing-passphrase") != 0)
    return qc_options_set (opts, key, value);
  if (nbdkit_read_password (value, &secret) == -1) {
    nbdkit_error ("%s%s: the passphrase could not be read",
                  qc_prefix (opts), key);
    return -1;
  }
  r = qc_options_set (opts, key, secret);
  explicit_bzero (secret, strlen (secret));
  free (secret);
  return r;
}

void
glue_block_size (struct qc_image *img, uint32_t *minimum,
                 uint32_t *preferred, uint32_t *maximum)
{
  uint32_t pref = img ? qc_image_preferred_block (img) : 0;

  /* No minimum: any byte range works.  nbdcopy, for one, sizes its
   * zero detection by the preferred size, so it does not cut clusters.
   */
  if (pref >= 512) {
    *minimum = 1;
    *preferred = pref;
    *maximum = 0xffffffff;
  }
  else
    *minimum = *preferred = *maximum = 0;
}

/* nbdkit 1.32's options that take an argument (nbdkit --short-options,
 * --long-options): the rest take none.  Later versions add options;
 * one unknown to us only risks its argument being taken for an option.
 */
static const char nbdkit_short_options[] = "46D:e:fg:i:nop:P:rst:u:U:vV";
static const struct option nbdkit_long_options[] = {
  { "debug", required_argument, NULL, 'D' },
  { "export", required_argument, NULL, 'e' },
  { "export-name", required_argument, NULL, 'e' },
  { "exportname", required_argument, NULL, 'e' },
  { "filter", required_argument, NULL, 0 },
  { "group", required_argument, NULL, 'g' },
  { "ip-addr", required_argument, NULL, 'i' },
  { "ipaddr", required_argument, NULL, 'i' },
  { "log", required_argument, NULL, 0 },
  { "mask-handshake", required_argument, NULL, 0 },
  { "pid-file", required_argument, NULL, 'P' },
  { "pidfile", required_argument, NULL, 'P' },
  { "port", required_argument, NULL, 'p' },
  { "read-only", no_argument, NULL, 'r' },
  { "readonly", no_argument, NULL, 'r' },
  { "run", required_argument, NULL, 0 },
  { "selinux-label", required_argument, NULL, 0 },
  { "threads", required_argument, NULL, 't' },
  { "tls", required_argument, NULL, 0 },
  { "tls-certificates", required_argument, NULL, 0 },
  { "tls-psk", required_argument, NULL, 0 },
  { "unix", required_argument, NULL, 'U' },
  { "user", required_argument, NULL, 'u' },
  /* Without an argument, listed so that abbreviations stay unique. */
  { "ipv4-only", no_argument, NULL, '4' },
  { "ipv6-only", no_argument, NULL, '6' },
  { "dump-config", no_argument, NULL, 0 },
  { "dump-plugin", no_argument, NULL, 0 },
  { "exit-with-parent", no_argument, NULL, 0 },
  { "foreground", no_argument, NULL, 'f' },
  { "no-fork", no_argument, NULL, 'f' },
  { "help", no_argument, NULL, 0 },
  { "long-options", no_argument, NULL, 0 },
  { "new-style", no_argument, NULL, 'n' },
  { "newstyle", no_argument, NULL, 'n' },
  { "no-sr", no_argument, NULL, 0 },
  { "old-style", no_argument, NULL, 'o' },
  { "oldstyle", no_argument, NULL, 'o' },
  { "short-options", no_argument, NULL, 0 },
  { "single", no_argument, NULL, 's' },
  { "stdin", no_argument, NULL, 's' },
  { "swap", no_argument, NULL, 0 },
  { "tls-verify-peer", no_argument, NULL, 0 },
  { "verbose", no_argument, NULL, 'v' },
  { "version", no_argument, NULL, 'V' },
  { "vsock", no_argument, NULL, 0 },
  { NULL },
};

/* What nbdkit's command line says, read once: -r, and the filters in
 * the order given (the first is nearest the client).
 */
static struct {
  int parsed;                   /* 0 not yet, 1 read, -1 unreadable */
  int readonly;
  char *filters[32];
  size_t nr_filters;
} cmdline;

static void
parse_cmdline (void)
{
  FILE *fp;
  char *buf = NULL, **argv = NULL;
  size_t len = 0, i, argc = 0;
  int saved_optind = optind, saved_opterr = opterr, saved_optopt = optopt;
  char *saved_optarg = optarg;
  int c, idx;

  if (cmdline.parsed)
    return;
  cmdline.parsed = -1;
  /* Read the whole command line: NUL-separated words. */
  fp = fopen ("/proc/self/cmdline", "re");
  if (!fp) {
    nbdkit_debug ("/proc/self/cmdline: %m: cannot tell how nbdkit was "
                  "started (-r, the filters)");
    return;
  }
  {
    char chunk[4096];
    size_t n;
    while ((n = fread (chunk, 1, sizeof chunk, fp)) > 0) {
      char *nb = realloc (buf, len + n + 1);
      if (!nb) {
        free (buf);
        fclose (fp);
        return;
      }
      buf = nb;
      memcpy (buf + len, chunk, n);
      len += n;
    }
  }
  fclose (fp);
  if (!buf)
    return;
  buf[len] = '\0';
  for (i = 0; i < len; i++)
    if (buf[i] == '\0')
      argc++;
  argv = calloc (argc + 1, sizeof *argv);
  if (!argv) {
    free (buf);
    return;
  }
  for (i = 0, argc = 0; i < len; i += strlen (buf + i) + 1)
    argv[argc++] = buf + i;
  /* The same parse as nbdkit's (GNU getopt_long, permuting, with
   * abbreviations), on a copy, with getopt's state put back after.
   */
  optind = 0;
  opterr = 0;
  while ((c = getopt_long (argc, argv, nbdkit_short_options,
                           nbdkit_long_options, &idx)) != -1) {
    if (c == 'r')
      cmdline.readonly = 1;
    else if (c == 0 && strcmp (nbdkit_long_options[idx].name, "filter") == 0 &&
             optarg &&
             cmdline.nr_filters < sizeof cmdline.filters /
                                  sizeof cmdline.filters[0])
      cmdline.filters[cmdline.nr_filters++] = strdup (optarg);
  }
  optind = saved_optind;
  opterr = saved_opterr;
  optopt = saved_optopt;
  optarg = saved_optarg;
  free (argv);
  free (buf);
  cmdline.parsed = 1;
}

int
glue_nbdkit_readonly (void)
{
  parse_cmdline ();
  return cmdline.parsed == 1 ? cmdline.readonly : -1;
}

/* Is FILTER (as given to --filter: a name or a path) the filter name? */
static bool
filter_is (const char *given, const char *name)
{
  const char *base = strrchr (given, '/') ? strrchr (given, '/') + 1 : given;
  size_t n = strlen (name);

  if (strcmp (base, name) == 0)
    return true;
  /* nbdkit-NAME-filter.so */
  return strncmp (base, "nbdkit-", 7) == 0 &&
    strncmp (base + 7, name, n) == 0 &&
    strcmp (base + 7 + n, "-filter.so") == 0;
}

int
glue_nbdkit_filters_below (const char *name)
{
  size_t i;

  parse_cmdline ();
  if (cmdline.parsed != 1)
    return -1;
  for (i = 0; i < cmdline.nr_filters; i++)
    if (filter_is (cmdline.filters[i], name))
      return i + 1 < cmdline.nr_filters;
  return -1;
}
