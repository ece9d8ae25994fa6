/* SPDX-License-Identifier: BSD-3-Clause */
/* One option table for every front-end: key, type, default, help.  The
 * plugin uses the keys as they are; filters add their own prefix
 * ("qcow2-", "overlay-"), so the modules cannot drift apart.
 */
#ifndef QC_OPTIONS_H
#define QC_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>

#include "qcow2.h"

enum qc_option_type { QC_OPT_STRING, QC_OPT_BOOL, QC_OPT_SIZE };

/* The options, as an X-macro so that help texts can be string literals
 * (nbdkit copies config_help at load time, so it must be constant):
 * X (key, type, value syntax, default or NULL, help).  M is the module
 * (plugin, qcow2, overlay): help texts name options with its prefix,
 * QC_P (M), and say what an option means to it where that differs,
 * QC_HELP (NAME, M).
 */
#define QC_PREFIX_plugin ""
#define QC_PREFIX_qcow2 "qcow2-"
#define QC_PREFIX_overlay "overlay-"
#define QC_PREFIX_qcow2enc "qcow2enc-"
#define QC_P(M) QC_PREFIX_ ## M
#define QC_HELP(name, M) QC_HELP_ ## name ## _ ## M
#define QC_HELP_FOLLOW_plugin                                           \
  "Files an image may name (backing, data file): any path, only in "    \
  "its directory, or none."
#define QC_HELP_FOLLOW_qcow2                                            \
  "Files the image may name (backing, data file): any path, only in "   \
  "the directory nbdkit was started in, or none."
#define QC_HELP_FOLLOW_overlay                                          \
  "Files the overlay may name (its data file): any path, only in its "  \
  "directory, or none."
/* The encoder reads no image: these keys are not its own. */
#define QC_HELP_FOLLOW_qcow2enc "(not used by the encoder)"
#define QC_HELP_LOCKING_qcow2enc "(not used by the encoder)"
#define QC_HELP_LOCKING_plugin "Take qemu-compatible image locks."
#define QC_HELP_LOCKING_qcow2                                           \
  "Take qemu-compatible locks on the image's local backing and data "   \
  "files (the container is not locked)."
#define QC_HELP_LOCKING_overlay                                         \
  "Take qemu-compatible locks on the overlay file and its data file."

#define QC_OPTIONS(X, M)                                                \
  X ("format", QC_OPT_STRING, "qcow2|raw", "qcow2",                     \
     "Image format.")                                                   \
  X ("backing", QC_OPT_STRING, "PATH|none", NULL,                       \
     "Use this backing file instead of the image's, or none.")          \
  X ("backing-format", QC_OPT_STRING, "qcow2|raw", NULL,                \
     "Format of the " QC_P (M) "backing= or " QC_P (M) "backing-file= " \
     "file (probed if absent).")                                        \
  X ("referenced-files", QC_OPT_STRING, "any|same-dir|none", "any",     \
     QC_HELP (FOLLOW, M))                                               \
  X ("snapshot", QC_OPT_STRING, "NAME", NULL,                           \
     "Serve this internal snapshot (name or ID) by default.")           \
  X ("description", QC_OPT_STRING, "short|full", "short",              \
     "Export descriptions name files without (short) or with (full) "  \
     "their server-side directories.")                                  \
  X ("cache-size", QC_OPT_SIZE, "SIZE", "the whole disk, at most 32M",  \
     "L2 table cache size (suffixes s, k, M, G, T, P, E).")            \
  X ("compressed-cache", QC_OPT_SIZE, "SIZE", "8M or 16 clusters",     \
     "Cache of decompressed clusters per image, 0 = off.")              \
  X ("locking", QC_OPT_BOOL, "on|off", "on",                            \
     QC_HELP (LOCKING, M))                                              \
  X ("overlap-check", QC_OPT_BOOL, "on|off", "on",                      \
     "Refuse writes over metadata or snapshot data, whatever the "      \
     "refcounts say.")                                                  \
  X ("snapshot-create", QC_OPT_STRING, "NAME", NULL,                    \
     "Take an internal snapshot before serving (repeatable, in order).")\
  X ("snapshot-apply", QC_OPT_STRING, "NAME", NULL,                     \
     "Revert the image to an internal snapshot before serving.")        \
  X ("snapshot-delete", QC_OPT_STRING, "NAME", NULL,                    \
     "Delete an internal snapshot before serving.")                     \
  X ("bitmap-add", QC_OPT_STRING, "NAME", NULL,                         \
     "Add a persistent dirty bitmap before serving (repeatable, in "    \
     "order with the other bitmap options).")                           \
  X ("bitmap-granularity", QC_OPT_SIZE, "SIZE", "cluster size, 4k-64k", \
     "Granularity of the bitmap-add= just before (512 to 2G).")         \
  X ("bitmap-disabled", QC_OPT_BOOL, "on|off", "off",                   \
     "The bitmap-add= just before is added disabled.")                  \
  X ("bitmap-remove", QC_OPT_STRING, "NAME", NULL,                      \
     "Remove a persistent bitmap before serving.")                      \
  X ("bitmap-clear", QC_OPT_STRING, "NAME", NULL,                       \
     "Clear every bit of a persistent bitmap before serving.")          \
  X ("bitmap-enable", QC_OPT_STRING, "NAME", NULL,                      \
     "Enable a bitmap: writes are recorded in it.")                     \
  X ("bitmap-disable", QC_OPT_STRING, "NAME", NULL,                     \
     "Disable a bitmap: it is kept as it is.")                          \
  X ("bitmap-merge", QC_OPT_STRING, "SRC:DST", NULL,                    \
     "Set in bitmap DST every bit set in bitmap SRC.")                  \
  X ("check", QC_OPT_BOOL, "on|off", "off",                             \
     "Check the image's refcounts at open, as qemu-img check does.")    \
  X ("repair", QC_OPT_STRING, "leaks|all", NULL,                        \
     "Repair leaks, or everything (rebuilding refcounts), at open.")    \
  X ("compress", QC_OPT_STRING, "zlib|zstd|off", "off",                 \
     "Store every full-cluster write compressed.")                      \
  X ("compress-level", QC_OPT_STRING, "N|fast", "zlib 6, zstd 3",      \
     "Compression level (zlib 1-9, zstd 1-22; fast: ISA-L / zstd 1).")  \
  X ("passphrase", QC_OPT_STRING, "SECRET|-|+FILE|-FD", NULL,          \
     "Passphrase of an encrypted image (or of a new one: "              \
     QC_P (M) "encrypt=luks).")                                         \
  X ("backing-passphrase", QC_OPT_STRING, "SECRET|-|+FILE|-FD", NULL,  \
     "Passphrase of an encrypted backing file.")                       \
  X ("encrypt", QC_OPT_STRING, "luks|off", "off",                       \
     "Encrypt a created image with LUKS (aes-256-xts, as qemu-img).")   \
  X ("encrypt-iter-time", QC_OPT_SIZE, "N", "2000",                     \
     "PBKDF2 time when creating an encrypted image, in ms.")            \
  X ("create", QC_OPT_STRING, "true|false|force", "false",              \
     "Create the image if missing (true) or replace it (force).")       \
  X ("size", QC_OPT_SIZE, "SIZE", NULL,                                 \
     "Virtual size of a created image.")                                \
  X ("cluster-size", QC_OPT_SIZE, "SIZE", "64k",                        \
     "Cluster size of a created image (512 to 2M, a power of 2).")      \
  X ("compat", QC_OPT_STRING, "0.10|1.1", "1.1",                        \
     "qcow2 version of a created image (0.10 = v2, 1.1 = v3).")         \
  X ("refcount-bits", QC_OPT_SIZE, "1|2|4|8|16|32|64", "16",            \
     "Refcount width of a created image.")                              \
  X ("lazy-refcounts", QC_OPT_BOOL, "on|off", "off",                    \
     "Set the lazy refcounts bit in a created image.")                  \
  X ("extended-l2", QC_OPT_BOOL, "on|off", "off",                       \
     "Extended L2 entries (32 subclusters) in a created image.")        \
  X ("compression-type", QC_OPT_STRING, "zlib|zstd", "zlib",            \
     "Compression type of a created image.")                            \
  X ("preallocation", QC_OPT_STRING, "off|metadata", "off",             \
     "Preallocate the metadata (L2 tables and clusters) when creating.")\
  X ("backing-file", QC_OPT_STRING, "PATH", NULL,                       \
     "Backing file recorded in a created image.")                       \
  X ("data-file", QC_OPT_STRING, "PATH", NULL,                          \
     "External data file of a created image.")                          \
  X ("data-file-raw", QC_OPT_BOOL, "on|off", "off",                     \
     "Keep the external data file a valid raw image.")

/* Options of the encoder only (nbdkit-qcow2enc-filter), in the same
 * table (so parsed and checked the same way) but refused by the other
 * modules and left out of their help.
 */
#define QC_ENC_OPTIONS(X, M)                                            \
  X ("zero-detect", QC_OPT_BOOL, "on|off", "on",                        \
     "Leave clusters of the source that read as zeros unallocated "     \
     "(scans its data at open).")                                       \
  X ("holes", QC_OPT_STRING, "zero|backing", "zero",                    \
     "With " QC_P (M) "backing-file=: the source's holes read as "      \
     "zeros, or through to the backing file.")

/* The plugin's config_help text for all options (the filters build
 * theirs at load, without the keys they refuse: filter-glue.c).
 */
#define QC_OPTIONS_HELP(M) QC_OPTIONS (QC_OPTIONS_HELP_ ## M, M)
#define QC_OPTIONS_HELP_plugin(...) QC_OPTION_HELP_LINE ("", __VA_ARGS__)
#define QC_OPTION_HELP_LINE(prefix, key, type, syntax, def, help)       \
  "\n" prefix key "=" syntax "\n    " help

struct qc_option {
  const char *key;
  enum qc_option_type type;
  const char *syntax;           /* value syntax shown to users */
  const char *default_value;    /* as shown to users, NULL = none */
  const char *help;
};

/* compressed-cache= not given: 8 MiB, or 16 clusters when that is
 * more.  A client with many requests in flight on several connections
 * (nbdcopy: 4 x 64) reads from a dozen clusters at once: with 2 MiB
 * clusters a cache of 4 thrashes.
 */
#define QC_COMPRESSED_CACHE_DEFAULT UINT64_MAX
#define QC_COMPRESSED_CACHE_MIN_BYTES (8ULL << 20)
#define QC_COMPRESSED_CACHE_MIN_CLUSTERS 16
static inline uint64_t
qc_compressed_cache_bytes (uint64_t option, uint64_t cluster_size)
{
  uint64_t n = QC_COMPRESSED_CACHE_MIN_CLUSTERS * cluster_size;

  if (option != QC_COMPRESSED_CACHE_DEFAULT)
    return option;
  return n > QC_COMPRESSED_CACHE_MIN_BYTES ? n
                                           : QC_COMPRESSED_CACHE_MIN_BYTES;
}

extern const struct qc_option qc_option_table[];
extern const size_t qc_option_table_len;

extern void qc_options_init (struct qc_options *opts);
extern void qc_options_free (struct qc_options *opts);

/* Set key (without prefix) to value.  Returns 0, or -1 after qc_error
 * for an unknown key or a bad value.
 */
extern int qc_options_set (struct qc_options *opts,
                           const char *key, const char *value);

/* The size of an image to create, decided by the front-end (the
 * overlay's is the plugin's), as if size= was given: 0 is a size.
 */
extern void qc_options_set_size (struct qc_options *opts, uint64_t size);

/* Whether a created image's size is known: size=0 is a size (a 0-byte
 * disk, as qemu-img create makes), so a size given or set counts, even
 * 0; a caller of the core may also just set opts->size.
 */
extern bool qc_create_size_known (const struct qc_options *opts);

/* The creation options' rules, as qemu-img applies them. */
extern int qc_create_check (const struct qc_options *opts);
/* The virtual size a created image gets (size= rounded up to 512). */
extern uint64_t qc_create_size (const struct qc_options *opts);

/* Check the combination once all keys are set (-1 after qc_error):
 * nothing given may be silently ignored (creation options without
 * create=, compress= with snapshot=, compress-level= without compress=).
 */
extern int qc_options_check (const struct qc_options *opts);

/* nbdkit -r: refuse (-1 after qc_error) every option that would write:
 * create=, the snapshot operations, repair=, compress=.
 */
extern int qc_options_check_readonly (const struct qc_options *opts);

/* A size as nbdkit_parse_size and qemu-img take it: digits with an
 * optional suffix b, s (512-byte sectors), k, M, G, T, P, E.  0, -1
 * (not a size), or -2 (more than 64 bits).
 */
extern int qc_parse_size (const char *value, uint64_t *ret);

/* v as the shortest exact size with a suffix ("64k", "1P"), in buf. */
extern const char *qc_human_size (uint64_t v, char *buf, size_t len);

/* Whether the user gave key (without prefix). */
extern bool qc_options_given (const struct qc_options *opts,
                              const char *key);

/* The module's key prefix ("", "qcow2-", "overlay-"), set once by the
 * front-end at load: each module links its own copy of the core, so
 * every message naming an option, even where no qc_options is at hand
 * (image locking), names it as the user types it.
 */
extern void qc_options_set_prefix (const char *prefix);
extern const char *qc_options_prefix (void);

/* The front-end's key prefix, for messages. */
static inline const char *
qc_prefix (const struct qc_options *opts)
{
  return opts->prefix ? opts->prefix : qc_options_prefix ();
}

#endif /* QC_OPTIONS_H */
