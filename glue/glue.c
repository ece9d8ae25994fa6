/* nbdkit glue shared by the modules: see glue.h. */
#include <config.h>

#include <errno.h>
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
  if (nbdkit_read_password (value, &secret) == -1)
    return -1;
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
