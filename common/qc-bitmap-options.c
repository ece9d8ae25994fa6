/* SPDX-License-Identifier: BSD-3-Clause */
/* The persistent bitmap options (bitmap-add= and its
 * bitmap-granularity= and bitmap-disabled=, bitmap-remove=, -clear=,
 * -enable=, -disable=, bitmap-merge=SRC:DST) into opts->bitmap_ops, in
 * the order given: qcow2-bitmap-ops.c runs them.  A file of its own,
 * below qc-options.c, so that the operations (which name options in
 * their messages) and the option table do not call each other.
 */
#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "qcow2-int.h"

/* Options (parsed into opts->bitmap_ops by qc-options.c). */
int
qc_bitmap_option (struct qc_options *opts, const char *key,
                  const char *value, const char *p)
{
  static const char *const keys[] = {
    [QC_BITMAP_ADD] = "bitmap-add", [QC_BITMAP_REMOVE] = "bitmap-remove",
    [QC_BITMAP_CLEAR] = "bitmap-clear", [QC_BITMAP_ENABLE] = "bitmap-enable",
    [QC_BITMAP_DISABLE] = "bitmap-disable",
    [QC_BITMAP_MERGE] = "bitmap-merge",
  };
  struct qc_bitmap_op *ops, *last =
    opts->nr_bitmap_ops ? &opts->bitmap_ops[opts->nr_bitmap_ops - 1] : NULL;
  size_t i;

  if (strcmp (key, "bitmap-granularity") == 0 ||
      strcmp (key, "bitmap-disabled") == 0) {
    bool disabled = false;
    uint64_t g = 0;

    if (key[7] == 'd') {
      if (strcmp (value, "true") == 0 || strcmp (value, "on") == 0 ||
          strcmp (value, "yes") == 0 || strcmp (value, "1") == 0)
        disabled = true;
      else if (strcmp (value, "false") != 0 && strcmp (value, "off") != 0 &&
               strcmp (value, "no") != 0 && strcmp (value, "0") != 0) {
        qc_error ("%sbitmap-disabled=%s: expected true or false", p, value);
        errno = EINVAL;
        return -1;
      }
    }
    else {
      char *end;

      errno = 0;
      g = strtoull (value, &end, 10);
      if (g > (1ULL << 31))     /* no wrap-around in the shifts below */
        g = 0;
      if (end != value && (*end == 'k' || *end == 'K'))
        g <<= 10, end++;
      else if (end != value && (*end == 'M' || *end == 'm'))
        g <<= 20, end++;
      else if (end != value && (*end == 'G' || *end == 'g'))
        g <<= 30, end++;
      if (errno || end == value || *end || g < 512 || g > (1ULL << 31) ||
          (g & (g - 1))) {
        qc_error ("%sbitmap-granularity=%s: expected a power of 2 from 512 "
                  "to 2G", p, value);
        errno = EINVAL;
        return -1;
      }
    }
    /* Without an add just before, qc_options_check refuses it (here
     * the option table's keys are tried one at a time).
     */
    if (!last || last->op != QC_BITMAP_ADD) {
      opts->bitmap_orphan = key[7] == 'd' ? "bitmap-disabled" :
        "bitmap-granularity";
      return 0;
    }
    if (key[7] == 'd')
      last->disabled = disabled;
    else
      last->granularity = g;
    return 0;
  }
  for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (strcmp (key, keys[i]) == 0)
      break;
  if (i == sizeof keys / sizeof keys[0]) {
    qc_error ("unknown option %s%s=", p, key);
    errno = EINVAL;
    return -1;
  }
  if (*value == '\0' || strlen (value) > QC_BITMAP_NAME_MAX) {
    qc_error ("%s%s=%s: a bitmap name is 1 to %d bytes", p, key, value,
              QC_BITMAP_NAME_MAX);
    errno = EINVAL;
    return -1;
  }
  if (i == QC_BITMAP_MERGE) {
    const char *colon = strchr (value, ':');
    if (!colon || colon == value || colon[1] == '\0') {
      qc_error ("%sbitmap-merge=%s: expected SOURCE:TARGET", p, value);
      errno = EINVAL;
      return -1;
    }
  }
  ops = realloc (opts->bitmap_ops, (opts->nr_bitmap_ops + 1) * sizeof *ops);
  if (!ops) {
    qc_error ("%m");
    return -1;
  }
  opts->bitmap_ops = ops;
  ops += opts->nr_bitmap_ops;
  memset (ops, 0, sizeof *ops);
  ops->op = i;
  ops->name = strdup (value);
  if (!ops->name) {
    qc_error ("%m");
    return -1;
  }
  opts->nr_bitmap_ops++;
  if (i == QC_BITMAP_MERGE) {
    char *colon = strchr (ops->name, ':');
    *colon = '\0';
    ops->target = colon + 1;
  }
  return 0;
}

const char *
qc_bitmap_op_key (enum qc_bitmap_op_kind op)
{
  switch (op) {
  case QC_BITMAP_ADD: return "bitmap-add";
  case QC_BITMAP_REMOVE: return "bitmap-remove";
  case QC_BITMAP_CLEAR: return "bitmap-clear";
  case QC_BITMAP_ENABLE: return "bitmap-enable";
  case QC_BITMAP_DISABLE: return "bitmap-disable";
  default: return "bitmap-merge";
  }
}
