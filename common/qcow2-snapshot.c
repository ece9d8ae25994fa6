/* SPDX-License-Identifier: BSD-3-Clause */
/* The internal snapshot table.  Entries are read one by one, each read
 * bounded by the file, so a table that claims more than the file holds
 * fails instead of allocating what it claims.  Snapshot L1 tables are
 * loaded when a snapshot is first served.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "qc-error.h"
#include "qcow2-int.h"

#define SNAPSHOT_FIXED 40
#define MAX_EXTRA_DATA 1024

static char *
dup_name (const uint8_t *p, size_t len)
{
  char *s = malloc (len + 1);

  if (s) {
    memcpy (s, p, len);
    s[len] = '\0';
  }
  return s;
}

int
qc_snapshots_read (struct qc_image *img)
{
  const struct qcow2_header *h = &img->h;
  uint64_t off = h->snapshots_offset;
  uint8_t fixed[SNAPSHOT_FIXED];
  uint8_t *var = NULL;
  uint32_t i;

  if (h->nb_snapshots == 0)
    return 0;
  img->snapshots = calloc (h->nb_snapshots, sizeof *img->snapshots);
  if (!img->snapshots) {
    qc_error ("%s: %m", img->name);
    return -1;
  }
  for (i = 0; i < h->nb_snapshots; i++) {
    struct qcow2_snapshot *s = &img->snapshots[i];
    uint16_t id_len, name_len;
    uint32_t extra;
    uint64_t var_len;

    if (off > blkdev_size (img->file) ||
        blkdev_size (img->file) - off < SNAPSHOT_FIXED) {
      qc_error ("%s: snapshot table entry %" PRIu32 " at offset 0x%"
                PRIx64 " lies beyond the end of the file", img->name, i, off);
      goto bad;
    }
    if (blkdev_pread (img->file, fixed, sizeof fixed, off) == -1)
      goto err;
    s->l1_table_offset = get_be64 (fixed);
    s->l1_size = get_be32 (fixed + 8);
    id_len = get_be16 (fixed + 12);
    name_len = get_be16 (fixed + 14);
    extra = get_be32 (fixed + 36);
    if (extra > MAX_EXTRA_DATA) {
      qc_error ("%s: snapshot %" PRIu32 " has %" PRIu32 " bytes of extra "
                "data (at most %d)", img->name, i, extra, MAX_EXTRA_DATA);
      goto bad;
    }
    var_len = (uint64_t) extra + id_len + name_len;
    if (blkdev_size (img->file) - off - SNAPSHOT_FIXED < var_len) {
      qc_error ("%s: snapshot %" PRIu32 " runs past the end of the file",
                img->name, i);
      goto bad;
    }
    var = malloc (var_len + 1);
    if (!var) {
      qc_error ("%s: %m", img->name);
      goto err;
    }
    if (blkdev_pread (img->file, var, var_len, off + SNAPSHOT_FIXED) == -1)
      goto err;
    s->disk_size = extra >= 16 ? get_be64 (var + 8) : h->size;
    s->date_sec = get_be32 (fixed + 16);
    s->date_nsec = get_be32 (fixed + 20);
    s->vm_clock_nsec = get_be64 (fixed + 24);
    s->vm_state_size = get_be32 (fixed + 32);
    s->extra_size = extra;
    s->extra = malloc (extra + 1);
    if (!s->extra) {
      qc_error ("%s: %m", img->name);
      goto err;
    }
    memcpy (s->extra, var, extra);
    s->id = dup_name (var + extra, id_len);
    s->name = dup_name (var + extra + id_len, name_len);
    free (var);
    var = NULL;
    if (!s->id || !s->name) {
      qc_error ("%s: %m", img->name);
      goto err;
    }
    off += SNAPSHOT_FIXED + var_len;
    off = (off + 7) & ~7ULL;
    img->nr_snapshots = i + 1;
  }
  img->snapshots_size = off - h->snapshots_offset;
  return 0;

 bad:
  errno = EINVAL;
 err:
  free (var);
  return -1;
}

void
qc_snapshots_free (struct qc_image *img)
{
  uint32_t i;

  for (i = 0; i < img->nr_snapshots; i++) {
    struct qcow2_snapshot *s = &img->snapshots[i];
    qc_snapshot_free_loaded (s);
    free (s->id);
    free (s->name);
    free (s->extra);
  }
  free (img->snapshots);
  img->snapshots = NULL;
  img->nr_snapshots = 0;
}

/* Snapshot i's L1 table (s->l1_size entries, host byte order), loaded
 * the first time.  Counting references and the safety net walk the
 * snapshots' trees through this, without a view: a view is a device
 * whose writes lead to the allocator, which consults the safety net.
 */
uint64_t *
qc_snapshot_l1 (struct qc_image *img, uint32_t i)
{
  struct qcow2_snapshot *s = &img->snapshots[i];
  const uint64_t cs = img->h.cluster_size;
  uint64_t limit = (blkdev_size (img->file) + cs - 1) & ~(cs - 1);
  uint64_t *l1;

  pthread_mutex_lock (&img->snap_lock);
  if (s->l1)
    goto out;
  if (s->disk_size > INT64_MAX) {
    qc_error ("%s: snapshot '%s' claims an invalid disk size %" PRIu64,
              img->name, s->name, s->disk_size);
    errno = EINVAL;
    goto out;
  }
  if (s->l1_size > QCOW2_MAX_L1_BYTES / 8 ||
      (s->l1_size > 0 &&
       ((s->l1_table_offset & (cs - 1)) || s->l1_table_offset == 0 ||
        s->l1_table_offset > limit ||
        (uint64_t) s->l1_size * 8 > limit - s->l1_table_offset))) {
    qc_error ("%s: snapshot '%s' has an invalid L1 table (offset 0x%"
              PRIx64 ", %" PRIu32 " entries)", img->name, s->name,
              s->l1_table_offset, s->l1_size);
    errno = EINVAL;
    goto out;
  }
  s->l1 = qc_load_l1 (img, s->l1_table_offset, s->l1_size, "snapshot L1");
 out:
  l1 = s->l1;
  pthread_mutex_unlock (&img->snap_lock);
  return l1;
}

/* Free what qc_snapshot_l1 and qc_snapshot_view loaded for s. */
void
qc_snapshot_free_loaded (struct qcow2_snapshot *s)
{
  if (s->view) {
    free (s->view->dev.name);
    free (s->view);
    s->view = NULL;
  }
  free (s->l1);
  s->l1 = NULL;
}
