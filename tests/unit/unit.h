/* SPDX-License-Identifier: BSD-3-Clause */
/* Shared declarations of the Check unit tests of the format core. */
#ifndef QC_UNIT_H
#define QC_UNIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <check.h>

/* ------------------------------------------------------------ suites */

extern Suite *header_suite (void);
extern Suite *blkdev_suite (void);
extern Suite *read_suite (void);
extern Suite *codec_suite (void);
extern Suite *options_suite (void);
extern Suite *crash_replay_suite (void);
extern Suite *faults_suite (void);
extern Suite *regressions_suite (void);
extern Suite *crypto_suite (void);
extern Suite *dcache_suite (void);
extern Suite *enc_suite (void);
extern Suite *bitmaps_suite (void);
extern Suite *rahead_suite (void);

/* Per-test timeout in seconds for tests that run qemu-img / qemu-io
 * (scaled by CK_TIMEOUT_MULTIPLIER, e.g. under sanitizers).
 */
#define UNIT_QEMU_TIMEOUT 60

/* ------------------------------------------------------- log handler */

/* The handler given to qc_set_log_handler: it keeps every message of
 * the core (errors and debug) so that tests can assert on them.
 */
#define UNIT_LOG_ANY (-1)
extern void unit_log_install (void);
extern void unit_log_clear (void);
/* Number of messages of this level (QC_LOG_ERROR, QC_LOG_DEBUG or
 * UNIT_LOG_ANY) since the last clear.
 */
extern size_t unit_log_count (int level);
/* The most recent message of this level, or NULL. */
extern const char *unit_log_last (int level);
/* True if a message of this level contains substr. */
extern bool unit_log_has (int level, const char *substr);

/* ------------------------------------------------- files and commands */

/* A new empty directory under $TMPDIR (or /tmp); free the result. */
extern char *unit_tmpdir_new (void);
extern void unit_tmpdir_remove (const char *dir);

/* The fixture most suites use: a new temporary directory per test in
 * unit_dir, removed after it (suites define P(name) over it).
 */
extern char *unit_dir;
extern void unit_dir_setup (void);
extern void unit_dir_teardown (void);

/* Run a shell command (printf format) with output captured; the test
 * fails (with the command and its output) unless it exits 0.
 */
extern void unit_sh (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));
/* The same, returning the exit status (or -1) without failing. */
extern int unit_sh_status (const char *fs, ...)
  __attribute__ ((format (printf, 1, 2)));

/* Whole-file helpers; failures fail the test. */
extern uint8_t *unit_read_file (const char *path, size_t *len);
extern void unit_write_file (const char *path, const void *buf, size_t len);
/* Path inside dir (static ring of buffers: valid for a few calls). */
extern const char *unit_path (const char *dir, const char *name);

/* Deterministic pseudo-random bytes (xorshift), for test content. */
extern void unit_fill_random (uint8_t *buf, size_t len, uint64_t seed);

/* A check cheap enough for loops: ck_assert* record a mark point (a
 * write to a pipe) on every call, even when it passes.
 */
#define unit_check(cond, ...) \
  do { if (!(cond)) ck_abort_msg (__VA_ARGS__); } while (0)

/* Assert that len bytes at p are zero. */
#define unit_assert_zero(p, len, what) \
  unit_assert_zero_ (p, len, what, __FILE__, __LINE__)
extern void unit_assert_zero_ (const void *p, size_t len, const char *what,
                               const char *file, int line);

/* Assert that got and want (len bytes) are equal; on a difference the
 * message names the first differing offset, and what.
 */
#define unit_assert_mem_eq(got, want, len, what) \
  unit_assert_mem_eq_ (got, want, len, what, __FILE__, __LINE__)
extern void unit_assert_mem_eq_ (const void *got, const void *want,
                                 size_t len, const char *what,
                                 const char *file, int line);

/* ----------------------------------------------------------- extents */

struct blkdev;

/* Extents as reported, adjacent ones with the same flags merged (only
 * the kinds matter, not how a device splits them).
 */
struct unit_ext { uint64_t off, len; uint32_t flags; };
struct unit_exts {
  struct unit_ext *e;
  size_t n, cap;
  size_t calls;                 /* callback invocations */
  size_t fail_after;            /* the callback fails on this call (1-based) */
};

/* A blkdev_extent_fn (opaque: struct unit_exts *); it also asserts that
 * extents are non-empty and contiguous.
 */
extern int unit_exts_collect (void *opaque, uint64_t off, uint64_t len,
                              uint32_t flags);
/* One blkdev_extents call, or a loop until the range is covered (as
 * callers do: a device may stop early).
 */
extern void unit_exts_once (struct blkdev *dev, uint64_t off, uint64_t count,
                            struct unit_exts *x);
extern void unit_exts_all (struct blkdev *dev, uint64_t off, uint64_t count,
                           struct unit_exts *x);
extern void unit_exts_reset (struct unit_exts *x);
extern void unit_exts_free (struct unit_exts *x);
extern void unit_assert_ext (const struct unit_exts *x, size_t i,
                             uint64_t off, uint64_t len, uint32_t flags);

/* ------------------------------------- in-memory qcow2 image builder */

/* Kinds of guest clusters in qimg_spec.layout (one char per cluster). */
#define QIMG_UNALLOC   'u'      /* L2 entry 0 */
#define QIMG_DATA      'd'      /* a host cluster with the guest bytes */
#define QIMG_ZERO      'z'      /* ZERO flag, offset 0 (v3) */
#define QIMG_ZERO_ALLOC 'Z'     /* ZERO flag with a host cluster (v3) */
#define QIMG_COMPRESSED 'c'     /* compressed with the image's type */

struct qimg_feature {
  uint8_t type, bit;
  const char *name;
};

struct qimg_spec {
  uint32_t version;             /* 2 or 3 */
  uint32_t cluster_bits;
  uint64_t size;                /* virtual size */
  uint32_t header_length;       /* v3 */
  uint8_t compression_type;     /* sets incompatible bit 3 if != 0 */
  uint64_t incompatible, compatible, autoclear;
  uint32_t refcount_order;
  const char *backing_file;     /* name after the extensions */
  const char *backing_format;   /* extension 0xe2792aca */
  const char *data_file;        /* extension 0x44415441 */
  bool feature_table;           /* qemu's feature-name table */
  const struct qimg_feature *extra_features;
  size_t nr_extra_features;
  /* Guest content (size bytes) or NULL.  layout (one char per guest
   * cluster, shorter means 'u' for the rest) or NULL: clusters with a
   * non-zero byte are 'd', the others 'u'.
   */
  const uint8_t *guest;
  const char *layout;
  /* Compressor for 'c' clusters (returns the stream length), or NULL
   * for qemu's: raw deflate with a 4 KiB window, or one zstd frame.
   */
  size_t (*compress) (const uint8_t *in, size_t cs, uint8_t *out,
                      size_t cap);
};

/* Where the builder put things. */
struct qimg_info {
  uint64_t cluster_size;
  uint64_t ext_end;             /* offset of the end-of-extensions marker */
  uint64_t backing_name;        /* offset of the backing name, or 0 */
  uint64_t reftable, refblock;
  uint64_t l1;                  /* L1 table offset */
  uint32_t l1_size;
  uint64_t *l2;                 /* per L1 entry: L2 table offset or 0 */
  uint64_t *host;               /* per guest cluster: host offset or 0
                                 * (compressed: the first byte) */
  size_t nr_clusters;           /* guest clusters */
};

/* Defaults: v3, 64 KiB clusters, 1 MiB, header_length 112, 16-bit
 * refcounts, qemu's feature table, no content.
 */
extern void qimg_spec_init (struct qimg_spec *s);
/* A valid image (as qemu-img check sees it); malloc'd, *len bytes.
 * info may be NULL; else free it with qimg_info_free.
 */
extern uint8_t *qimg_build (const struct qimg_spec *s,
                            struct qimg_info *info, size_t *len);
extern void qimg_info_free (struct qimg_info *info);
/* Offset in the image of the L2 entry of guest cluster c (0 if its L2
 * table is not allocated).
 */
extern uint64_t qimg_l2_entry (const struct qimg_spec *s,
                               const struct qimg_info *info, uint64_t c);

/* Raw deflate as qemu writes it (level 6, 4 KiB window). */
extern size_t unit_deflate_raw (const uint8_t *in, size_t len, uint8_t *out,
                                size_t cap);

/* Big-endian stores into an image being patched. */
extern void unit_put_be16 (uint8_t *p, uint16_t v);
extern void unit_put_be32 (uint8_t *p, uint32_t v);
extern void unit_put_be64 (uint8_t *p, uint64_t v);
extern uint32_t unit_get_be32 (const uint8_t *p);
extern uint64_t unit_get_be64 (const uint8_t *p);

#endif /* QC_UNIT_H */
