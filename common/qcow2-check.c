/* SPDX-License-Identifier: BSD-3-Clause */
/* Check and repair, as qemu-img check [-r leaks|all] does them: the
 * references counted (qcow2-refs.c) against the refcounts, the refcount
 * structures that something else shares, and the COPIED flags.  Runs
 * with the image writable (for a repair) and no I/O in flight, under
 * the metadata lock.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qc-error.h"
#include "qcow2-int.h"

/* What check and repair report, one line per finding (worded as
 * qemu-img check words them, so the two can be compared), at most
 * MAX_FINDING_LINES of them per pass, then how many more there were.
 */
#define MAX_FINDING_LINES 100

struct findings {
  struct qc_image *img;
  uint64_t n;
};

static void finding (struct findings *f, const char *fs, ...)
  __attribute__ ((format (printf, 2, 3)));

/* f NULL: not reported. */
static void
finding (struct findings *f, const char *fs, ...)
{
  va_list args;
  char msg[256];

  if (!f || f->n++ >= MAX_FINDING_LINES)
    return;
  va_start (args, fs);
  vsnprintf (msg, sizeof msg, fs, args);
  va_end (args);
  qc_info ("%s: %s", f->img->name, msg);
}

static void
findings_end (struct findings *f)
{
  if (f->n > MAX_FINDING_LINES)
    qc_info ("%s: ... and %" PRIu64 " more", f->img->name,
             f->n - MAX_FINDING_LINES);
}

/* Set COPIED exactly where the refcount is 1, in the active tree; or
 * (!apply) only count where it is wrong.  Each flag set or found wrong
 * is reported to f.
 */
static int
copied_flags_report (struct qc_image *img, bool apply, uint64_t *fixed,
                     struct findings *f)
{
  const struct qcow2_header *h = &img->h;
  const uint64_t cs = h->cluster_size;
  bool external = img->external_data;
  uint32_t i;
  uint64_t j, v;

  for (i = 0; i < img->active.l1_size; i++) {
    uint64_t l1e = img->active.l1[i], l2off = l1e & QCOW2_OFFSET_MASK, ne;
    struct l2cache_entry *pin;
    uint8_t *t;

    if (!l2off)
      continue;
    if (qc_refcount_get (img, l2off / cs, &v) == -1)
      return -1;
    ne = v == 1 ? l1e | QCOW2_OFLAG_COPIED : l1e & ~QCOW2_OFLAG_COPIED;
    if (ne != l1e)
      finding (f, "%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32
               " l1_entry=%" PRIx64 " refcount=%" PRIu64,
               apply ? "Repairing" : "ERROR", i, l1e, v);
    if (ne != l1e && !apply)
      (*fixed)++;
    else if (ne != l1e) {
      __atomic_store_n (&img->active.l1[i], ne, __ATOMIC_RELEASE);
      qc_l1_mark_dirty (img, i);
      (*fixed)++;
    }
    t = l2cache_get (img->cache, img->file, l2off, &pin);
    if (!t)
      return -1;
    for (j = 0; j < (1ULL << h->l2_bits); j++) {
      uint64_t e, bm, want;
      qc_load_entry (img, t + j * h->l2_entry_size, &e, &bm);
      if (e & QCOW2_OFLAG_COMPRESSED) {
        want = e & ~QCOW2_OFLAG_COPIED;
        if (want != e)
          finding (f, "%s OFLAG_COPIED on a compressed cluster: l2_entry=%"
                   PRIx64, apply ? "Repairing" : "ERROR", e);
      }
      else if ((e & QCOW2_OFFSET_MASK) && !external) {
        if (qc_refcount_get (img, (e & QCOW2_OFFSET_MASK) / cs, &v) == -1) {
          l2cache_put (img->cache, pin);
          return -1;
        }
        want = v == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
        if (want != e)
          finding (f, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                   " refcount=%" PRIu64, apply ? "Repairing" : "ERROR", e, v);
      }
      else
        continue;
      if (want != e) {
        if (apply)
          qc_store_entry (img, t, pin, j, want, bm);
        (*fixed)++;
      }
    }
    l2cache_put (img->cache, pin);
  }
  return 0;
}

int
qc_copied_flags (struct qc_image *img, bool apply, uint64_t *fixed)
{
  return copied_flags_report (img, apply, fixed, NULL);
}

static uint64_t
shared_refcount_structures (struct qc_image *img, const struct qc_refs *r,
                            struct findings *f)
{
  const uint64_t cs = img->h.cluster_size;
  uint64_t k, c, n = 0, first = img->h.refcount_table_offset / cs;

  for (c = first; c < first + img->h.refcount_table_clusters; c++)
    if (c < r->nr_clusters && r->count[c] > 1) {
      finding (f, "ERROR refcount table cluster %" PRIu64 " has %" PRIu32
               " references", c, r->count[c]);
      n++;
    }
  for (k = 0; k < img->reftable_entries; k++) {
    c = img->reftable[k] / cs;
    if (img->reftable[k] && c < r->nr_clusters && r->count[c] > 1) {
      finding (f, "ERROR refcount block %" PRIu64 " (cluster %" PRIu64
               ") has %" PRIu32 " references", k, c, r->count[c]);
      n++;
    }
  }
  return n;
}

/* Without repair, every finding is reported (to stderr, through
 * qc_info); with repair, every repair.
 */
int
qc_image_check (struct qc_image *img, enum qc_repair repair,
                struct qc_check_result *res)
{
  struct qc_refs r;
  struct findings seen = { .img = img }, fixes = { .img = img };
  struct findings *f = repair == QC_REPAIR_NONE ? &seen : NULL;
  uint64_t c, v, copied = 0;
  int ret = -1;

  memset (res, 0, sizeof *res);
  pthread_mutex_lock (&img->meta_lock);
  if (qc_flush_locked (img) == -1 || qc_count_refs (img, true, &r) == -1)
    goto unlock;
  res->corruptions += r.out_of_range;
  if (r.out_of_range)
    finding (f, "ERROR %" PRIu64 " references to clusters past the end of "
             "the file", r.out_of_range);
  for (c = 0; c < r.nr_clusters; c++) {
    if (qc_refcount_get (img, c, &v) == -1)
      goto out;
    if (v > r.count[c]) {
      res->leaks++;
      finding (f, "Leaked cluster %" PRIu64 " refcount=%" PRIu64
               " reference=%" PRIu32, c, v, r.count[c]);
    }
    else if (v < r.count[c]) {
      res->corruptions++;
      finding (f, "ERROR cluster %" PRIu64 " refcount=%" PRIu64
               " reference=%" PRIu32, c, v, r.count[c]);
    }
  }
  /* A refcount table or block cluster that something else references
   * too (or twice) is a corruption, whatever its refcount says: the
   * refcounts read through it are not refcounts, and repairing leaks in
   * place would write over what shares it.  Only a rebuild fixes it.
   */
  res->corruptions += shared_refcount_structures (img, &r, f);
  /* COPIED flags that disagree with the refcounts are corruptions too:
   * a write would go in place into a shared cluster.
   */
  if (copied_flags_report (img, false, &copied, f) == -1)
    goto out;
  res->corruptions += copied;

  /* Repairs: leaks alone with repair=leaks; everything with repair=all.
   * A corrupt image is not touched by repair=leaks.
   */
  if (repair == QC_REPAIR_ALL && res->corruptions - copied > 0) {
    finding (&fixes, "Rebuilding refcount structure");
    for (c = 0; c < r.nr_clusters; c++) {
      if (qc_refcount_get (img, c, &v) == -1)
        goto out;
      if (v != r.count[c])
        finding (&fixes, "Repairing cluster %" PRIu64 " refcount=%" PRIu64
                 " reference=%" PRIu32, c, v, r.count[c]);
    }
    /* Stale cached refcount blocks go with the old structures. */
    if (qc_rebuild_refcounts (img) == -1)
      goto out;
    l2cache_free (img->rcache);
    img->rcache = NULL;
    free (img->reftable);
    img->reftable = NULL;
    if (qc_refcount_open (img) == -1)
      goto out;
    res->corruptions_fixed = res->corruptions - copied;
    res->leaks_fixed = res->leaks;
  }
  else if (repair != QC_REPAIR_NONE &&
           (repair == QC_REPAIR_ALL || res->corruptions == 0)) {
    for (c = 0; c < r.nr_clusters; c++) {
      if (qc_refcount_get (img, c, &v) == -1)
        goto out;
      if (v > r.count[c])
        finding (&fixes, "Repairing cluster %" PRIu64 " refcount=%" PRIu64
                 " reference=%" PRIu32, c, v, r.count[c]);
      /* Down to the number of references, in steps that fit a signed
       * delta (a 64-bit refcount may have its top bit set).
       */
      while (v > r.count[c]) {
        uint64_t step = v - r.count[c] > INT64_MAX ? INT64_MAX
                                                   : v - r.count[c];
        if (qc_refcount_add (img, c, -(int64_t) step) == -1)
          goto out;
        v -= step;
      }
    }
    res->leaks_fixed = res->leaks;
  }
  if (repair == QC_REPAIR_ALL) {
    uint64_t fixed = 0;
    /* After a rebuild, the flags found wrong may be right again (as
     * qemu-img check -r all counts them): only those changed count.
     */
    if (copied_flags_report (img, true, &fixed, &fixes) == -1)
      goto out;
    res->copied_fixed = fixed;
    res->corruptions_fixed += fixed;
  }
  if (qc_flush_locked (img) == -1)
    goto out;
  ret = 0;
 out:
  findings_end (&seen);
  findings_end (&fixes);
  qc_refs_free (&r);
 unlock:
  pthread_mutex_unlock (&img->meta_lock);
  return ret;
}

/* The summary after the findings, in qemu-img check's words. */
void
qc_check_report (struct qc_image *img, const struct qc_check_result *res)
{
  if (res->corruptions)
    qc_info ("%s: %" PRIu64 " errors were found on the image.",
             img->name, res->corruptions);
  if (res->leaks)
    qc_info ("%s: %" PRIu64 " leaked clusters were found on the image.",
             img->name, res->leaks);
  if (!res->corruptions && !res->leaks)
    qc_info ("%s: No errors were found on the image.", img->name);
}

void
qc_check_report_repaired (struct qc_image *img,
                          const struct qc_check_result *res)
{
  qc_info ("%s: The following inconsistencies were found and repaired: %"
           PRIu64 " leaked clusters, %" PRIu64 " corruptions", img->name,
           res->leaks_fixed, res->corruptions_fixed);
}
