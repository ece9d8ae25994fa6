#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Generate hostile (malformed) qcow2 images for tests/test-malformed.sh.

Usage: gen-malformed.py OUTDIR          generate the images and OUTDIR/cases.txt
       gen-malformed.py --qemu OUTDIR   also print qemu-img's verdict per case
                                        (a calibration aid for humans)

Base images are made with qemu-img / qemu-io (small, deterministic content).
Every case is a copy of a base image with one meaningful corruption, found
by parsing the real header (big-endian) and following the real pointers
(L1 -> L2, snapshot table, header extensions, compressed descriptors).

cases.txt has one line per case:  NAME EXPECT [match=REGEX] [KEY=VALUE ...]
  NAME     file name in OUTDIR
  EXPECT   open  - must be refused at open (nbdkit fails / nbdinfo fails)
           read  - may be refused at open; if it opens, reading the whole
                   disk must fail for at least some range
           any   - either outcome is fine; must not crash, hang or blow up
                   (a refusal or failed read still needs an error message;
                   huge exports are only sampled)
           ok    - a valid image (or one with only ignorable oddities): must
                   open and read back exactly what qemu-img convert reads
           EXPECT@EXPORT (read@snap1, ok@1): the same, for the export named
                   EXPORT (an internal snapshot, by name or ID) instead of
                   the default export; for read@EXPORT a refusal to serve
                   that export also counts as failing the read
  A file may appear on several lines (different exports).
  match=REGEX  an extended regex (grep -Ei, no spaces) nbdkit's error
           message must match
  KEY=VALUE  extra plugin arguments (e.g. format=qcow2: no probing)
Lines starting with '#' are comments.

Standard library only.
"""

import os
import shutil
import struct
import subprocess
import sys
import zlib

QCOW_MAGIC = 0x514649FB
OFF_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# name: (offset, struct format)
FIELDS = {
    "magic": (0, ">I"),
    "version": (4, ">I"),
    "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"),
    "cluster_bits": (20, ">I"),
    "size": (24, ">Q"),
    "crypt_method": (32, ">I"),
    "l1_size": (36, ">I"),
    "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"),
    "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"),
    "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"),
    "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"),
    "refcount_order": (96, ">I"),
    "header_length": (100, ">I"),
    "compression_type": (104, ">B"),
}

SNAP_FIXED = ">QIHHIIQII"   # l1 off, l1 size, id len, name len, date s/ns,
SNAP_FIXED_LEN = struct.calcsize(SNAP_FIXED)   # vm clock, vm state, extra


def die(msg):
    sys.stderr.write("gen-malformed.py: %s\n" % msg)
    sys.exit(1)


def run(*args, cwd=None):
    r = subprocess.run(list(args), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        die("command failed: %s\n%s" % (" ".join(args), r.stdout))
    return r.stdout


class Qcow2:
    """A qcow2 image held in memory, with parsed header and helpers."""

    def __init__(self, data):
        self.d = bytearray(data)
        self.parse()

    def copy(self):
        return Qcow2(bytes(self.d))

    # raw access
    def get(self, off, fmt):
        return struct.unpack_from(fmt, self.d, off)[0]

    def put(self, off, fmt, val):
        end = off + struct.calcsize(fmt)
        if end > len(self.d):
            self.d.extend(b"\0" * (end - len(self.d)))
        struct.pack_into(fmt, self.d, off, val)

    def write(self, off, data):
        end = off + len(data)
        if end > len(self.d):
            self.d.extend(b"\0" * (end - len(self.d)))
        self.d[off:end] = data

    def __getitem__(self, name):
        off, fmt = FIELDS[name]
        return self.get(off, fmt)

    def __setitem__(self, name, val):
        off, fmt = FIELDS[name]
        self.put(off, fmt, val)

    def parse(self):
        assert self["magic"] == QCOW_MAGIC
        self.version = self["version"]
        self.cluster_bits = self["cluster_bits"]
        self.cs = 1 << self.cluster_bits
        if self.version >= 3:
            self.hdrlen = self["header_length"]
            self.incompat = self["incompatible_features"]
        else:
            self.hdrlen = 72
            self.incompat = 0
        self.ext_l2 = bool(self.incompat & 16)
        self.l2_entry_size = 16 if self.ext_l2 else 8
        self.l2_entries = self.cs // self.l2_entry_size
        self.exts = self.parse_exts()

    def parse_exts(self):
        """[(offset of ext header, type, length)] up to the terminator."""
        exts = []
        off = self.hdrlen
        while off + 8 <= self.cs:
            typ, ln = struct.unpack_from(">II", self.d, off)
            if typ == EXT_END:
                break
            exts.append((off, typ, ln))
            off += 8 + ((ln + 7) & ~7)
        return exts

    def ext(self, typ):
        for e in self.exts:
            if e[1] == typ:
                return e
        return None

    def ext_data(self, typ):
        e = self.ext(typ)
        return bytes(self.d[e[0] + 8:e[0] + 8 + e[2]])

    def backing_name(self):
        off, ln = self["backing_file_offset"], self["backing_file_size"]
        return bytes(self.d[off:off + ln]) if off else b""

    def rebuild_cluster0(self, exts, hdrlen=None, backing=None,
                         keep_backing=True):
        """Rewrite everything after the header in cluster 0: the extension
        list [(type, data)], then the backing file name."""
        if backing is None and keep_backing:
            backing = self.backing_name()
        if hdrlen is None:
            hdrlen = self.hdrlen
        else:
            self["header_length"] = hdrlen
        old_end = self.cs
        area = bytearray()
        for typ, data in exts:
            area += struct.pack(">II", typ, len(data)) + data
            area += b"\0" * (-len(data) % 8)
        area += struct.pack(">II", 0, 0)
        start = max(hdrlen, 72 if self.version < 3 else 104)
        self.d[start:old_end] = b"\0" * (old_end - start)
        self.write(hdrlen, bytes(area))
        if backing:
            boff = hdrlen + len(area)
            self.write(boff, backing)
            self["backing_file_offset"] = boff
            self["backing_file_size"] = len(backing)
        assert len(self.d) >= self.cs
        self.parse()

    def ext_list(self):
        return [(t, bytes(self.d[o + 8:o + 8 + ln])) for (o, t, ln) in self.exts]

    # mapping
    def l1(self):
        off, n = self["l1_table_offset"], self["l1_size"]
        return [(off + 8 * i, self.get(off + 8 * i, ">Q")) for i in range(n)]

    def l2_slots(self, l1_off=None, l1_size=None):
        """[(guest cluster index, slot offset, entry, bitmap-or-None)] for all
        L2 entries of allocated L2 tables that are not zero (entry or
        bitmap)."""
        if l1_off is None:
            l1 = self.l1()
        else:
            l1 = [(l1_off + 8 * i, self.get(l1_off + 8 * i, ">Q"))
                  for i in range(l1_size)]
        res = []
        for i, (_, l1e) in enumerate(l1):
            l2off = l1e & OFF_MASK
            if not l2off:
                continue
            for j in range(self.l2_entries):
                slot = l2off + j * self.l2_entry_size
                e = self.get(slot, ">Q")
                bm = self.get(slot + 8, ">Q") if self.ext_l2 else None
                if e or bm:
                    res.append((i * self.l2_entries + j, slot, e, bm))
        return res

    def find_slot(self, pred):
        for s in self.l2_slots():
            if pred(s):
                return s
        die("no L2 entry matches")

    def normal_slot(self):
        return self.find_slot(lambda s: not (s[2] & COMPRESSED)
                              and (s[2] & OFF_MASK) and not (s[2] & ZERO))

    def compressed_slot(self, n=0):
        found = [s for s in self.l2_slots() if s[2] & COMPRESSED]
        if len(found) <= n:
            die("no compressed cluster %d" % n)
        return found[n]

    def stream_room(self, coff, want):
        """How many bytes from coff may be overwritten without touching
        another compressed stream (at most want)."""
        room = want
        for s in self.l2_slots():
            if s[2] & COMPRESSED:
                o = self.cdesc(s[2])[0]
                if o > coff:
                    room = min(room, o - coff)
        return room

    def check_zlib_streams(self, skip_slot):
        """Assert that every other compressed (zlib) cluster still inflates
        to a full cluster: a corruption must not spill into neighbours."""
        for s in self.l2_slots():
            if s[2] & COMPRESSED and s[1] != skip_slot:
                o, n, _ = self.cdesc(s[2])
                data = bytes(self.d[o:o + (n + 1) * 512 - (o & 511)])
                out = zlib.decompressobj(-15).decompress(data, self.cs)
                assert len(out) == self.cs, "collateral damage at %#x" % o

    def cdesc(self, e):
        x = 62 - (self.cluster_bits - 8)
        return e & ((1 << x) - 1), (e >> x) & ((1 << (62 - x)) - 1), x

    # snapshots
    def snapshots(self):
        """[(entry offset, fields tuple, total entry length)]"""
        res = []
        off = self["snapshots_offset"]
        for _ in range(self["nb_snapshots"]):
            f = struct.unpack_from(SNAP_FIXED, self.d, off)
            id_len, name_len, extra = f[2], f[3], f[8]
            ln = SNAP_FIXED_LEN + extra + id_len + name_len
            ln += -ln % 8
            res.append((off, f, ln))
            off += ln
        return res


def save(path, data):
    """Write data sparsely (skip all-zero 4 KiB blocks)."""
    with open(path, "wb") as f:
        blk = 4096
        zero = bytes(blk)
        for i in range(0, len(data), blk):
            chunk = data[i:i + blk]
            if chunk == zero[:len(chunk)]:
                f.seek(len(chunk), 1)
            else:
                f.write(chunk)
        f.truncate(len(data))


def load(path):
    with open(path, "rb") as f:
        return Qcow2(f.read())


class Gen:
    def __init__(self, outdir):
        self.out = outdir
        self.cases = []
        self.names = set()

    def qimg(self, *args):
        return run("qemu-img", *args, cwd=self.out)

    def qio(self, img, *cmds, fmt="qcow2"):
        args = ["qemu-io", "-f", fmt]
        for c in cmds:
            args += ["-c", c]
        args.append(img)
        out = run(*args, cwd=self.out)
        if "failed" in out or "error" in out.lower():
            die("qemu-io %s: %s" % (img, out))

    def add(self, name, expect, data, pattern=None, comment=None, args=()):
        """Save a case.  data: Qcow2, bytes or None (file made by caller)."""
        assert expect.split("@")[0] in ("open", "read", "any", "ok")
        fname = name + ".qcow2"
        if data is not None:
            assert fname not in self.names, fname
            self.names.add(fname)
            if isinstance(data, Qcow2):
                data = data.d
            save(os.path.join(self.out, fname), bytes(data))
        self.cases.append((fname, expect, pattern, comment, tuple(args)))

    # base images
    def make_bases(self):
        q = self.qimg
        # v3, 64 KiB clusters: data, allocated zero cluster, partial cluster
        q("create", "-q", "-f", "qcow2", "-o", "cluster_size=64k",
          "base-v3-64k.qcow2", "4M")
        self.qio("base-v3-64k.qcow2", "write -P 0x11 0 64k",
                 "write -P 0x22 1M 128k", "write -P 0x44 2M 64k",
                 "write -z 2M 64k", "write -P 0x33 3M 4k")
        # v3, 512-byte clusters: 32 KiB per L2 table, many L2 tables
        q("create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
          "base-v3-512.qcow2", "1M")
        self.qio("base-v3-512.qcow2", "write -P 0x11 0 8k",
                 "write -P 0x22 100k 4k", "write -P 0x33 600k 40k",
                 "write -c -P 0x55 960k 4k")
        # v2 (compat 0.10)
        q("create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=64k",
          "base-v2.qcow2", "4M")
        self.qio("base-v2.qcow2", "write -P 0x11 0 64k",
                 "write -P 0x22 1M 64k", "write -c -P 0x66 3M 64k")
        # compressed clusters, zlib (several streams share a host cluster)
        q("create", "-q", "-f", "qcow2", "-o", "cluster_size=64k",
          "base-zlib.qcow2", "4M")
        self.qio("base-zlib.qcow2", "write -c -P 0x41 0 64k",
                 "write -c -P 0x42 64k 64k", "write -c -P 0x43 1M 128k",
                 "write -P 0x44 2M 64k")
        # compressed clusters, zstd
        q("create", "-q", "-f", "qcow2", "-o",
          "cluster_size=64k,compression_type=zstd", "base-zstd.qcow2", "4M")
        self.qio("base-zstd.qcow2", "write -c -P 0x51 0 64k",
                 "write -c -P 0x52 1M 64k", "write -P 0x53 2M 64k")
        # backing file (qcow2 parent, relative name)
        q("create", "-q", "-f", "qcow2", "base-backing-parent.qcow2", "4M")
        self.qio("base-backing-parent.qcow2", "write -P 0x71 0 4M")
        q("create", "-q", "-f", "qcow2", "-b", "base-backing-parent.qcow2",
          "-F", "qcow2", "base-backing.qcow2", "4M")
        self.qio("base-backing.qcow2", "write -P 0x72 1M 64k")
        # internal snapshots
        q("create", "-q", "-f", "qcow2", "base-snap.qcow2", "4M")
        self.qio("base-snap.qcow2", "write -P 0x81 0 64k")
        q("snapshot", "-c", "snap1", "base-snap.qcow2")
        self.qio("base-snap.qcow2", "write -P 0x82 0 64k",
                 "write -P 0x83 1M 64k")
        q("snapshot", "-c", "second-snapshot", "base-snap.qcow2")
        self.qio("base-snap.qcow2", "write -P 0x84 2M 64k")
        # extended L2 entries
        q("create", "-q", "-f", "qcow2", "-o",
          "cluster_size=64k,extended_l2=on", "base-extl2.qcow2", "4M")
        self.qio("base-extl2.qcow2", "write -P 0x91 0 4k",
                 "write -P 0x92 64k 64k", "write -z 8k 2k",
                 "write -c -P 0x93 1M 64k", "write -P 0x94 2M 64k",
                 "write -z 2M 4k")
        # external data file
        q("create", "-q", "-f", "qcow2", "-o", "data_file=base-extdata.raw",
          "base-extdata.qcow2", "4M")
        self.qio("base-extdata.qcow2", "write -P 0xa1 0 64k",
                 "write -P 0xa2 1M 64k")

        for b in ("base-v3-64k", "base-v3-512", "base-v2", "base-zlib",
                  "base-zstd", "base-backing", "base-snap", "base-extl2"):
            self.add(b, "ok", None, comment="unmodified base image")
        self.add("base-backing-parent", "ok", None)
        self.add("base-snap", "ok@snap1", None, comment="snapshot export")
        self.add("base-snap", "ok@second-snapshot", None)
        self.add("base-snap", "ok@1", None, comment="snapshot by ID")

    def base(self, name):
        return load(os.path.join(self.out, name + ".qcow2"))

    # the cases
    def make_cases(self):
        add = self.add
        B = self.base

        # ---- magic and version
        q = B("base-v3-64k"); q["magic"] = 0x514649FA
        add("hdr-bad-magic", "open", q, args=["format=qcow2"])
        add("hdr-bad-magic", "any", None,
            comment="without format=qcow2 the plugin may probe it as raw")
        for v in (0, 1, 4, 0xFFFFFFFF):
            q = B("base-v3-64k"); q["version"] = v
            add("hdr-version-%d" % v, "open", q)

        # ---- header_length
        for hl, tag in ((96, "too-small-96"), (72, "v2-size-in-v3"),
                        (108, "not-multiple-of-8"),
                        (65536 + 8, "beyond-cluster"),
                        (0xFFFFFFF8, "huge")):
            q = B("base-v3-64k"); q["header_length"] = hl
            add("hdrlen-" + tag, "open", q)
        q = B("base-v3-512"); q["header_length"] = 520
        add("hdrlen-beyond-512-cluster", "open", q)
        # header_length 104 (no compression_type byte): valid
        q = B("base-v3-64k"); q.rebuild_cluster0(q.ext_list(), hdrlen=104)
        add("hdrlen-104-valid", "ok", q,
            comment="header without compression_type: valid zlib image")
        # bigger header with unknown non-zero bytes after byte 112: valid
        q = B("base-v3-64k"); q.rebuild_cluster0(q.ext_list(), hdrlen=128)
        q.write(112, b"\x5a" * 16)
        add("hdrlen-128-unknown-bytes", "ok", q,
            comment="unknown header bytes between 112 and header_length")

        # ---- header extensions
        q = B("base-v3-64k"); o = q.exts[0][0]
        q.put(o + 4, ">I", 65536)
        add("ext-len-past-cluster0", "open", q)
        q = B("base-v3-64k"); o = q.exts[0][0]
        q.put(o + 4, ">I", 0xFFFFFFFF)
        add("ext-len-0xffffffff", "open", q)
        q = B("base-v3-64k"); o = q.exts[0][0]
        q.put(o + 4, ">I", 0xFFFFFFF9)   # rounds up to 2^32: 32-bit wrap
        add("ext-len-wraps-when-padded", "open", q)
        q = B("base-v3-64k"); o = q.exts[0][0]
        q.put(o + 4, ">I", q.cs - o - 8 + 1)   # one byte past the cluster
        add("ext-len-one-past-cluster0", "open", q)
        # no terminator: unknown extensions fill cluster 0 exactly
        q = B("base-v3-64k")
        exts = q.ext_list()
        used = q.hdrlen + sum(8 + len(d) + (-len(d) % 8) for _, d in exts)
        q.rebuild_cluster0(exts)
        off = used
        while off + 16 <= q.cs:
            q.write(off, struct.pack(">II", 0x12345678, 8) + b"ABCDEFGH")
            off += 16
        if off < q.cs:
            q.write(off, struct.pack(">II", 0x12345678, 0))
            off += 8
        assert off == q.cs
        add("ext-no-terminator-fills-cluster0", "any", q,
            comment="qemu accepts a list that ends exactly at the cluster end")
        # no terminator, last extension header straddles the cluster end
        q = B("base-v3-64k")
        q.rebuild_cluster0(q.ext_list())
        off = used
        while off + 16 <= q.cs - 8:
            q.write(off, struct.pack(">II", 0x12345678, 8) + b"ABCDEFGH")
            off += 16
        q.write(off, struct.pack(">II", 0x12345678, 64))
        add("ext-no-terminator-last-runs-past", "open", q)
        # feature-name table with a length not a multiple of 48 and a
        # truncated last entry: harmless, must not be read out of bounds
        q = B("base-v3-64k")
        exts = [(t, d[:-7] if t == EXT_FEATURE_TABLE else d)
                for t, d in q.ext_list()]
        q.rebuild_cluster0(exts)
        add("ext-feature-table-truncated-entry", "any", q)
        # feature-name table entry whose name has no NUL (46 bytes of 'A')
        q = B("base-v3-64k")
        exts = [(t, struct.pack(">BB46s", 0, 10, b"A" * 46) + d
                 if t == EXT_FEATURE_TABLE else d) for t, d in q.ext_list()]
        q.rebuild_cluster0(exts)
        q["incompatible_features"] = q["incompatible_features"] | (1 << 10)
        add("ext-feature-name-unterminated-bit10", "open", q, "AAAAAAAAAA")
        # unknown extension with a huge but in-cluster length: must skip it
        q = B("base-v3-64k")
        q.rebuild_cluster0([(0x0BADF00D, b"\xee" * 60000)] + q.ext_list())
        add("ext-unknown-large-skipped", "ok", q,
            comment="unknown extensions are skipped")
        # bitmaps extension with garbage (autoclear bit 0 clear: ignore it)
        q = B("base-v3-64k")
        q.rebuild_cluster0(q.ext_list() + [(EXT_BITMAPS, b"\xff" * 24)])
        add("ext-bitmaps-garbage-autoclear-clear", "any", q)
        q = B("base-v3-64k")
        q.rebuild_cluster0(q.ext_list() + [(EXT_BITMAPS, struct.pack(
            ">IIQQ", 0xFFFFFFFF, 0, 1 << 40, 1 << 50))])
        q["autoclear_features"] = 1
        add("ext-bitmaps-huge-autoclear-set", "any", q,
            comment="2^32-1 bitmaps, 1 TiB directory beyond EOF: a reader "
                    "that ignores bitmaps is fine, one that loads them "
                    "must refuse without allocating")
        # crypto header extension on an unencrypted image
        q = B("base-v3-64k")
        q.rebuild_cluster0(q.ext_list() +
                           [(EXT_CRYPTO, struct.pack(">QQ", 1 << 40, 1 << 40))])
        add("ext-crypto-on-plain-image", "any", q)

        # ---- backing file
        q = B("base-backing")
        assert q.backing_name() == b"base-backing-parent.qcow2"
        q2 = q.copy(); q2["backing_file_offset"] = q.cs + 16
        add("backing-offset-beyond-cluster0", "open", q2)
        q2 = q.copy(); q2["backing_file_offset"] = q.cs - 4
        add("backing-name-straddles-cluster0-end", "open", q2)
        q2 = q.copy(); q2["backing_file_offset"] = 0xFFFFFFFFFFFFFFF0
        add("backing-offset-wraps", "open", q2)
        q2 = q.copy(); q2["backing_file_offset"] = 1 << 62
        add("backing-offset-2^62", "open", q2)
        q2 = q.copy(); q2["backing_file_size"] = 1024
        add("backing-size-1024", "open", q2)
        q2 = q.copy(); q2["backing_file_size"] = 0xFFFFFFFF
        add("backing-size-0xffffffff", "open", q2)
        q2 = q.copy(); q2["backing_file_offset"] = 40   # inside the header
        add("backing-offset-inside-header", "any", q2,
            comment="name = header bytes starting with NUL")
        for tag, name in (
                ("json", b'json:{"driver":"file","filename":"/etc/passwd"}'),
                ("json-nbd", b'json:{"file":{"driver":"nbd","host":"127.0.0.1"}}'),
                ("http", b"http://host/x"),
                ("https", b"https://example.invalid/disk.qcow2"),
                ("nbd-uri", b"nbd://127.0.0.1:10809/x"),
                ("nbd-legacy", b"nbd:127.0.0.1:10809"),
                ("ssh", b"ssh://user@host/disk"),
                ("missing-file", b"does-not-exist.qcow2"),
                ("empty-nul", b"\0"),
                ("embedded-nul", b"base-backing-parent.qcow2\0junk"),
                ("directory", b"."),
                ("self", b"backing-self.qcow2"),
                ("loop-a", b"backing-loop-b.qcow2"),
                ("loop-b", b"backing-loop-a.qcow2")):
            q2 = q.copy(); q2.rebuild_cluster0(q.ext_list(), backing=name)
            # qemu cuts a name at its first NUL; refusing is fine too
            add("backing-" + tag, "any" if b"\0" in name else "open", q2)
        # a FIFO: open(2) would block until a writer shows up
        os.mkfifo(os.path.join(self.out, "fifo"))
        q2 = q.copy(); q2.rebuild_cluster0(q.ext_list(), backing=b"fifo")
        add("backing-fifo", "open", q2,
            comment="backing file is a FIFO: must not block in open()")
        q2 = q.copy(); q2.rebuild_cluster0(q.ext_list(), backing=b"/dev/zero")
        add("backing-dev-zero", "any", q2)
        # backing format extension lies / is garbage
        def with_fmt(q, fmt):
            q2 = q.copy()
            exts = [(t, fmt if t == EXT_BACKING_FORMAT else d)
                    for t, d in q.ext_list()]
            q2.rebuild_cluster0(exts)
            return q2
        add("backing-fmt-raw-but-qcow2", "any", with_fmt(q, b"raw"),
            comment="reads the parent as raw: wrong data, no crash")
        add("backing-fmt-unknown-vmdk", "any", with_fmt(q, b"vmdk"))
        add("backing-fmt-garbage", "any", with_fmt(q, b"\xff\x00\x01garbage"))
        add("backing-fmt-2000-bytes", "any", with_fmt(q, b"q" * 2000))
        # a 1000-deep backing chain (512-byte clusters, each ~3 KiB)
        self.make_chain(1000)

        # ---- cluster_bits
        for cb in (0, 8, 22, 30, 63, 64, 0xFFFFFFFF):
            q = B("base-v3-64k"); q["cluster_bits"] = cb
            add("cluster-bits-%d" % cb, "open", q)
        q = B("base-extl2"); q["cluster_bits"] = 13
        add("extl2-cluster-bits-13", "open", q)

        # ---- size / l1_size
        q = B("base-v3-64k"); q["size"] = (1 << 63) - 1
        add("size-2^63-1", "open", q)
        q = B("base-v3-64k"); q["size"] = (1 << 64) - 512
        add("size-negative", "open", q)
        q = B("base-v3-64k"); q["size"] = 1 << 50
        add("size-2^50-l1-size-1", "open", q)
        q = B("base-v3-64k"); q["size"] = 1 << 62; q["l1_size"] = 1 << 22
        add("size-2^62-l1-size-2^22", "open", q,
            comment="needs 2^33 L1 entries; claims a 32 MiB L1 beyond EOF")
        q = B("base-v3-64k"); q["size"] = 1 << 45; q["l1_size"] = 1 << 16
        add("size-2^45-l1-512k-beyond-eof", "read", q,
            comment="consistent size and l1_size, but the L1 table is not "
                    "in the file")
        q = B("base-v3-64k"); q["l1_size"] = 0
        add("l1-size-0", "open", q)
        q = B("base-v3-512"); q["l1_size"] = q["l1_size"] - 1
        add("l1-size-one-too-small-512", "open", q)
        q = B("base-v3-64k"); q["l1_size"] = 1 << 31
        add("l1-size-2^31", "open", q)
        q = B("base-v3-64k"); q["l1_size"] = 0xFFFFFFFF
        add("l1-size-0xffffffff", "open", q)
        q = B("base-v3-64k"); q["l1_size"] = (32 << 20) // 8 + 1
        add("l1-size-over-32MiB", "open", q)
        q = B("base-v3-64k"); q["l1_table_offset"] += 8
        add("l1-offset-unaligned", "open", q)
        q = B("base-v3-64k"); q["l1_table_offset"] = 1 << 40
        add("l1-offset-beyond-eof", "read", q)
        q = B("base-v3-64k"); q["l1_table_offset"] = 0xFFFFFFFFFFFF0000
        add("l1-offset-wraps", "open", q)
        q = B("base-v3-64k"); q["l1_table_offset"] = 0
        add("l1-offset-0-header-as-l1", "any", q,
            comment="L1 entries are header words: a mess, but no crash")
        q = B("base-v3-64k"); q["size"] = q["size"] + 1
        add("size-not-multiple-of-512", "any", q)

        # ---- refcount table
        q = B("base-v3-64k"); q["refcount_table_offset"] += 512
        add("refcount-offset-unaligned", "open", q)
        q = B("base-v3-64k"); q["refcount_table_offset"] = 1 << 44
        add("refcount-offset-beyond-eof", "any", q,
            comment="read-only use never needs refcounts")
        q = B("base-v3-64k"); q["refcount_table_offset"] = 0xFFFFFFFFFFFF0000
        add("refcount-offset-wraps", "open", q)
        q = B("base-v3-64k"); q["refcount_table_clusters"] = 0
        add("refcount-clusters-0", "open", q)
        q = B("base-v3-64k"); q["refcount_table_clusters"] = 0xFFFFFFFF
        add("refcount-clusters-0xffffffff", "open", q)
        q = B("base-v3-64k"); q["refcount_table_clusters"] = 1 << 20
        add("refcount-clusters-2^20", "open", q)
        q = B("base-v3-64k"); q["refcount_order"] = 7
        add("refcount-order-7", "open", q)
        q = B("base-v3-64k"); q["refcount_order"] = 0xFFFFFFFF
        add("refcount-order-0xffffffff", "open", q)

        # ---- snapshots
        q = B("base-snap")
        snaps = q.snapshots()
        assert len(snaps) == 2
        q2 = q.copy(); q2["nb_snapshots"] = 65537
        add("snap-nb-65537", "open", q2)
        q2 = q.copy(); q2["nb_snapshots"] = 0xFFFFFFFF
        add("snap-nb-0xffffffff", "open", q2)
        q2 = q.copy(); q2["nb_snapshots"] = 3
        add("snap-nb-one-too-many", "any", q2,
            comment="third entry is read from whatever follows the table")
        q2 = q.copy(); q2["snapshots_offset"] = 1 << 40
        add("snap-offset-beyond-eof", "read@snap1", q2)
        q2 = q.copy(); q2["snapshots_offset"] += 8
        add("snap-offset-unaligned", "open", q2)
        q2 = q.copy(); q2["snapshots_offset"] = 0xFFFFFFFFFFFF0000
        add("snap-offset-wraps", "open", q2)
        q2 = q.copy(); q2["snapshots_offset"] = len(q.d) - q.cs
        q2.d = q2.d[:len(q.d) - q.cs + 16]
        q2.d += b"\0" * (-len(q2.d) % 512)
        add("snap-table-truncated-by-eof", "any", q2,
            comment="file ends inside the first entry")
        last_off, last_f, last_len = snaps[-1]
        first_off, first_f, _ = snaps[0]
        q2 = q.copy(); q2.put(last_off + 12, ">H", 0xFFFF)
        add("snap-id-len-past-table", "any", q2)
        q2 = q.copy(); q2.put(last_off + 14, ">H", 0xFFFF)
        add("snap-name-len-past-table", "any", q2)
        # id/name past EOF: put the table at the file's last cluster
        q2 = q.copy()
        tail = len(q2.d)
        q2.write(tail, bytes(q.d[first_off:first_off + snaps[0][2]]))
        q2.put(tail + 14, ">H", 0xFFFF)
        q2["snapshots_offset"] = tail
        q2["nb_snapshots"] = 1
        q2.d = q2.d[:tail + 512]
        add("snap-name-len-past-eof", "any", q2,
            comment="qemu reads zeros past EOF; refusing is fine too")
        q2 = q.copy(); q2.put(first_off + 36, ">I", 0xFFFFFFFF)
        add("snap-extra-size-huge", "open", q2)
        q2 = q.copy(); q2.put(first_off + 36, ">I", 1028)
        add("snap-extra-size-1028", "open", q2)
        q2 = q.copy(); q2.put(first_off + 8, ">I", 1 << 31)
        add("snap-l1-size-2^31", "read@snap1", q2)
        q2 = q.copy(); q2.put(first_off + 8, ">I", 0xFFFFFFFF)
        add("snap-l1-size-0xffffffff", "read@snap1", q2)
        q2 = q.copy(); q2.put(first_off, ">Q", first_f[0] + 8)
        add("snap-l1-offset-unaligned", "read@snap1", q2)
        q2 = q.copy(); q2.put(first_off, ">Q", 1 << 40)
        add("snap-l1-offset-beyond-eof", "read@snap1", q2,
            comment="only the snapshot export is affected")
        q2 = q.copy(); q2.put(first_off, ">Q", 0xFFFFFFFFFFFF0000)
        add("snap-l1-offset-wraps", "read@snap1", q2)
        q2 = q.copy(); q2.put(first_off + 12, ">H", 0)
        add("snap-id-len-0", "any", q2)
        assert first_f[8] >= 16     # extra data has disk_size
        for tag, sz in (("2^62", 1 << 62), ("2^64-1", (1 << 64) - 1),
                        ("2^40", 1 << 40)):
            q2 = q.copy(); q2.put(first_off + SNAP_FIXED_LEN + 8, ">Q", sz)
            add("snap-disk-size-" + tag, "any@snap1", q2,
                comment="snapshot disk bigger than its L1 maps: qemu reads "
                        "zeros past the L1; refusing is fine too")
        # 65536 snapshots (the limit), the table running past EOF
        q2 = q.copy(); q2["nb_snapshots"] = 65536
        add("snap-nb-65536-past-eof", "any", q2)
        # two snapshots with the same name and id
        q2 = q.copy()
        sid = b"1"
        id0 = first_off + SNAP_FIXED_LEN + first_f[8]
        assert bytes(q.d[id0:id0 + 1]) == sid
        l_off = last_off + SNAP_FIXED_LEN + last_f[8]
        q2.write(l_off, b"1")
        add("snap-duplicate-id", "any", q2)

        # ---- feature bits
        q = B("base-v3-64k")
        q["incompatible_features"] = 1 << 10
        add("incompat-bit10-unnamed", "open", q, r"10|0x400|400")
        q = B("base-v3-64k")
        exts = [(t, d + struct.pack(">BB46s", 0, 10, b"hostile-feature-x")
                 if t == EXT_FEATURE_TABLE else d) for t, d in q.ext_list()]
        q.rebuild_cluster0(exts)
        q["incompatible_features"] = 1 << 10
        add("incompat-bit10-named", "open", q, "hostile-feature-x")
        q = B("base-v3-64k"); q["incompatible_features"] = 1 << 63
        add("incompat-bit63", "open", q)
        q = B("base-v3-64k"); q["incompatible_features"] = 0xFFFFFFFFFFFFFFFF
        add("incompat-all-bits", "open", q)
        q = B("base-v3-64k"); q["incompatible_features"] = 1 << 1
        add("incompat-corrupt-bit", "any", q,
            comment="qemu allows read-only use of a corrupt-marked image")
        q = B("base-v3-64k"); q["incompatible_features"] = 1 << 0
        add("incompat-dirty-bit", "any", q)
        q = B("base-v3-64k"); q["compatible_features"] = 0xFFFFFFFFFFFFFFFE
        add("compat-unknown-bits", "ok", q,
            comment="unknown compatible bits are ignored")
        q = B("base-v3-64k"); q["autoclear_features"] = 0xFFFFFFFFFFFFFFFC
        add("autoclear-unknown-bits", "ok", q,
            comment="read-only: unknown autoclear bits are harmless")
        q = B("base-v2"); q.put(72, ">Q", 1 << 10)
        add("v2-garbage-after-header", "ok", q,
            comment="v2 has no feature fields: bytes 72.. are not a header")

        # ---- encryption
        for cm in (1, 2, 3, 0xFFFFFFFF):
            q = B("base-v3-64k"); q["crypt_method"] = cm
            add("crypt-method-%d" % cm, "open", q)

        # ---- compression type
        q = B("base-v3-64k"); q["compression_type"] = 1
        add("compression-type-1-without-bit3", "open", q)
        q = B("base-v3-64k"); q["incompatible_features"] = 1 << 3
        add("compression-bit3-with-type-0", "open", q)
        q = B("base-v3-64k"); q["compression_type"] = 7
        q["incompatible_features"] = 1 << 3
        add("compression-type-7", "open", q)
        q = B("base-zstd")
        q["incompatible_features"] = q["incompatible_features"] & ~8
        add("zstd-without-bit3", "open", q)
        q = B("base-zstd"); q.rebuild_cluster0(q.ext_list(), hdrlen=104)
        add("zstd-bit3-header-104", "open", q,
            comment="bit 3 set but the header has no compression_type byte")

        # ---- L1 entries
        q = B("base-v3-64k"); o, e = q.l1()[0]
        q.put(o, ">Q", COPIED | (1 << 40))
        add("l1-entry-beyond-eof", "read", q)
        q = B("base-v3-64k"); o, e = q.l1()[0]
        q.put(o, ">Q", e + 512)
        add("l1-entry-unaligned", "read", q)
        q = B("base-v3-64k"); o, e = q.l1()[0]
        q.put(o, ">Q", e | 0x1FE | (0x7F << 56))   # bits 1-8, 56-62
        add("l1-entry-reserved-bits", "any", q)
        q = B("base-v3-64k"); o, e = q.l1()[0]
        q.put(o, ">Q", COPIED)      # L2 table at offset 0: the header
        add("l1-entry-points-at-header", "any", q)
        q = B("base-v3-64k"); o, e = q.l1()[0]
        q.put(o, ">Q", COPIED | q["l1_table_offset"])
        add("l1-entry-points-at-l1", "any", q)
        q = B("base-v3-64k"); o, e = q.l1()[0]
        q.put(o, ">Q", COPIED | 0x00FFFFFFFFFF0000)
        add("l1-entry-max-offset", "read", q)
        q = B("base-v3-512")
        l1 = q.l1(); o, e = l1[len(l1) - 2]
        assert e
        q.put(o, ">Q", COPIED | (len(q.d) + (1 << 20)) & ~511)
        add("l1-entry-beyond-eof-512", "read", q)
        q = B("base-v3-512"); o, e = q.l1()[3]
        q.put(o, ">Q", e + 8)     # 512-byte clusters: bits 1-8 are reserved
        add("l1-entry-reserved-bit3-512", "any", q)

        # ---- L2 entries
        q = B("base-v3-64k"); _, slot, e, _ = q.normal_slot()
        q.put(slot, ">Q", COPIED | (1 << 40))
        add("l2-entry-beyond-eof", "any", q,
            comment="qemu reads zeros past EOF; an error is fine too")
        q = B("base-v3-64k"); _, slot, e, _ = q.normal_slot()
        q.put(slot, ">Q", e + 4096)
        add("l2-entry-unaligned", "read", q)
        q = B("base-v3-64k"); _, slot, e, _ = q.normal_slot()
        q.put(slot, ">Q", e | 0x1FE | (0x3F << 56))
        add("l2-entry-reserved-bits", "any", q,
            comment="check error; the read path may mask them")
        q = B("base-v3-64k"); _, slot, e, _ = q.normal_slot()
        q.put(slot, ">Q", COPIED | 0x00FFFFFFFFFF0000)
        add("l2-entry-max-offset", "any", q)
        q = B("base-v3-64k"); _, slot, e, _ = q.normal_slot()
        q.put(slot, ">Q", COPIED)   # data cluster = the header cluster
        add("l2-entry-points-at-header", "any", q)
        # copy the only L2 table to the end of the file and cut the file
        # after 16 entries: guest offsets from 1M on lose their mapping
        q = B("base-v3-64k"); o, e = q.l1()[0]
        l2 = e & OFF_MASK
        assert q.get(l2 + 16 * 8, ">Q")          # guest 1M is mapped
        new = (len(q.d) + q.cs - 1) // q.cs * q.cs
        q.write(new, bytes(q.d[l2:l2 + 16 * 8]))
        q.put(o, ">Q", COPIED | new)
        add("l2-table-cut-by-eof", "any", q,
            comment="file ends 128 bytes into an L2 table: qemu reads the "
                    "rest as zeros (a file may end inside its last cluster)")
        q = B("base-v3-512"); _, slot, e, _ = q.find_slot(
            lambda s: s[0] > 1000 and not (s[2] & COMPRESSED))
        q.put(slot, ">Q", e + 8)
        add("l2-entry-reserved-bit3-512", "any", q)
        q = B("base-v2"); _, slot, e, _ = q.normal_slot()
        q.put(slot, ">Q", e | ZERO)
        add("v2-l2-entry-bit0", "any", q,
            comment="bit 0 is reserved in v2")
        q = B("base-v3-64k"); _, slot, e, _ = q.normal_slot()
        q.put(slot, ">Q", ZERO | 0x1000)
        add("l2-zero-entry-unaligned-offset", "any", q)

        # ---- compressed clusters (zlib)
        q = B("base-zlib"); _, slot, e, _ = q.compressed_slot(0)
        coff, nsec, x = q.cdesc(e)
        # BFINAL=1 BTYPE=11: an invalid block, whatever follows
        q.write(coff, b"\xff" * q.stream_room(coff, 16))
        q.check_zlib_streams(slot)
        add("compressed-garbage", "read", q)
        q = B("base-zlib"); _, slot, e, _ = q.compressed_slot(1)
        coff, nsec, x = q.cdesc(e)
        c = zlib.compressobj(6, zlib.DEFLATED, -12, 9)
        short = c.compress(b"B" * 100) + c.flush()
        assert q.stream_room(coff, len(short)) == len(short)
        q.write(coff, short)
        q.check_zlib_streams(slot)
        add("compressed-short-output", "read", q,
            comment="valid stream that ends after 100 bytes of a 64k cluster")
        q = B("base-zlib"); _, slot, e, _ = q.compressed_slot(0)
        coff, nsec, x = q.cdesc(e)
        q.put(slot, ">Q", COMPRESSED | (nsec << x) | (len(q.d) + 4096))
        add("compressed-offset-past-eof", "read", q)
        q = B("base-zlib"); _, slot, e, _ = q.compressed_slot(0)
        coff, nsec, x = q.cdesc(e)
        # move the (valid) stream to the very end of the file, at an odd
        # offset, and claim the maximum length
        stream = bytes(q.d[coff:coff + (nsec + 1) * 512 - (coff & 511)])
        end = len(q.d) + 77
        q.write(end, stream)
        q.put(slot, ">Q", COMPRESSED | (((1 << (62 - x)) - 1) << x) | end)
        add("compressed-size-past-eof", "any", q,
            comment="stream is valid; only the claimed length runs past EOF")
        q = B("base-zlib"); _, slot, e, _ = q.compressed_slot(0)
        coff, nsec, x = q.cdesc(e)
        q.put(slot, ">Q", COMPRESSED | (nsec << x) | ((1 << x) - 1))
        add("compressed-offset-max", "read", q)
        q = B("base-zlib"); _, slot, e, _ = q.compressed_slot(0)
        q.put(slot, ">Q", e | COPIED)
        add("compressed-with-copied-bit", "any", q)
        # a stream that inflates to more than a cluster: must stop, not
        # overflow the buffer
        q = B("base-zlib"); _, slot, e, _ = q.compressed_slot(2)
        coff, nsec, x = q.cdesc(e)
        c = zlib.compressobj(9, zlib.DEFLATED, -12, 9)
        big = c.compress(b"\x43" * (4 << 20)) + c.flush()
        end = len(q.d) + 99     # at the end of the file: no collateral
        q.write(end, big)
        q.write(len(q.d), b"\0" * (-len(q.d) % 512))
        n = (len(big) + (end & 511) + 511) // 512 - 1
        assert n < (1 << (62 - x))
        q.put(slot, ">Q", COMPRESSED | (n << x) | end)
        q.check_zlib_streams(slot)
        add("compressed-inflates-past-cluster", "any", q,
            comment="4 MiB of output for a 64 KiB cluster: stop at 64 KiB")
        q = B("base-v3-512"); _, slot, e, _ = q.compressed_slot(0)
        coff, nsec, x = q.cdesc(e)
        q.write(coff, b"\xff" * q.stream_room(coff, 8))
        q.check_zlib_streams(slot)
        add("compressed-garbage-512", "read", q)
        q = B("base-v2"); _, slot, e, _ = q.compressed_slot(0)
        coff, nsec, x = q.cdesc(e)
        q.write(coff, b"\xff" * q.stream_room(coff, 8))
        q.check_zlib_streams(slot)
        add("v2-compressed-garbage", "read", q)
        # zstd
        q = B("base-zstd"); _, slot, e, _ = q.compressed_slot(0)
        coff, nsec, x = q.cdesc(e)
        q.write(coff, b"\xff" * q.stream_room(coff, 16))   # bad magic
        add("zstd-garbage", "read", q)
        q = B("base-zstd"); _, slot, e, _ = q.compressed_slot(0)
        coff, nsec, x = q.cdesc(e)
        # keep the magic, break the frame header
        q.write(coff + 4, b"\xff" * (q.stream_room(coff, 16) - 4))
        add("zstd-bad-frame-header", "read", q)
        q = B("base-zstd"); _, slot, e, _ = q.compressed_slot(0)
        coff, nsec, x = q.cdesc(e)
        q.put(slot, ">Q", COMPRESSED | (nsec << x) | (len(q.d) + 4096))
        add("zstd-offset-past-eof", "read", q)

        # ---- extended L2
        q = B("base-extl2")
        _, slot, e, bm = q.find_slot(lambda s: s[0] == 0)
        assert bm & 1
        q.put(slot + 8, ">Q", bm | (1 << 32))    # sub 0: alloc and zero
        add("extl2-alloc-and-zero", "read", q)
        q = B("base-extl2")
        _, slot, e, bm = q.find_slot(lambda s: s[0] == 1)
        q.put(slot + 8, ">Q", 0xFFFFFFFFFFFFFFFF)
        add("extl2-all-alloc-and-zero", "read", q)
        q = B("base-extl2")
        _, slot, e, bm = q.find_slot(lambda s: s[0] == 0)
        q.put(slot, ">Q", 0)                     # alloc bits, no cluster
        add("extl2-alloc-without-offset", "read", q)
        q = B("base-extl2")
        _, slot, e, bm = q.compressed_slot(0)
        q.put(slot + 8, ">Q", 0x1)
        add("extl2-compressed-with-bitmap", "any", q,
            comment="check error; qemu's read path ignores the bitmap")
        q = B("base-extl2"); q["incompatible_features"] &= ~16
        add("extl2-bit-cleared", "any", q,
            comment="tables are read as standard L2: wrong data, no crash")
        q = B("base-v3-64k"); q["incompatible_features"] |= 16
        add("extl2-bit-set-on-standard", "any", q)

        # ---- external data file
        q = B("base-extdata")
        assert q["incompatible_features"] & 4
        q2 = q.copy()
        q2.rebuild_cluster0([(t, d) for t, d in q.ext_list()
                             if t != EXT_DATA_FILE])
        add("extdata-bit-without-name", "open", q2)
        q2 = B("base-v3-64k"); q2["incompatible_features"] |= 4
        add("extdata-bit-on-plain-image", "open", q2)
        for tag, nm in (("missing", b"no-such-data-file.raw"),
                        ("fifo", b"fifo"),
                        ("json", b'json:{"driver":"file","filename":"x"}'),
                        ("http", b"http://host/x"),
                        ("empty", b"")):
            q2 = q.copy()
            q2.rebuild_cluster0([(t, nm if t == EXT_DATA_FILE else d)
                                 for t, d in q.ext_list()])
            add("extdata-name-" + tag, "open", q2)

        # ---- tiny files
        q = B("base-v3-64k"); q["size"] = 1 << 62
        q.d = q.d[:1024]
        add("tiny-1k-size-2^62", "open", q,
            comment="must be refused in milliseconds, nothing allocated")
        q = B("base-v3-64k"); q["size"] = 1 << 62
        q["cluster_bits"] = 21; q["l1_size"] = (32 << 20) // 8
        q["refcount_table_offset"] = 2 << 20; q["l1_table_offset"] = 4 << 20
        q.d = q.d[:1024]
        add("tiny-1k-size-2^62-2M-clusters", "open", q,
            comment="needs 2^23 L1 entries; claims 2^22 (32 MiB) past EOF")
        q = B("base-v3-64k"); q["size"] = 1 << 54
        q["cluster_bits"] = 21; q["l1_size"] = 1 << 15
        q["refcount_table_offset"] = 2 << 20; q["l1_table_offset"] = 4 << 20
        q.d = q.d[:1024]
        add("tiny-1k-size-2^54-l1-beyond-eof", "read", q,
            comment="consistent header for 16 PiB; no table is in the file")
        q = B("base-v3-64k"); q.d = q.d[:1024]
        add("tiny-1k-truncated-image", "read", q,
            comment="header fine, everything else missing")
        q = B("base-v3-64k"); q.d = q.d[:100]
        add("tiny-100-bytes", "open", q)
        q = B("base-v3-64k"); q.d = q.d[:4]
        add("tiny-magic-only", "open", q)
        add("tiny-empty", "open", b"", args=["format=qcow2"])
        add("tiny-empty", "any", None,
            comment="probed: an empty raw disk is fine, a crash is not")

    def make_chain(self, depth):
        """backing-chain-N: a chain of N 512-byte-cluster images."""
        cdir = os.path.join(self.out, "chain")
        os.mkdir(cdir)
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
            "c0000.qcow2", "1M", cwd=cdir)
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0xc0 0 1M", "c0000.qcow2",
            cwd=cdir)
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
            "-b", "c0000.qcow2", "-F", "qcow2", "tmpl.qcow2", "1M", cwd=cdir)
        tmpl = load(os.path.join(cdir, "tmpl.qcow2"))
        os.unlink(os.path.join(cdir, "tmpl.qcow2"))
        for i in range(1, depth):
            q = tmpl.copy()
            q.rebuild_cluster0(q.ext_list(), backing=b"c%04d.qcow2" % (i - 1))
            # one sector of our own per level, so every level is read
            save(os.path.join(cdir, "c%04d.qcow2" % i), bytes(q.d))
        q = tmpl.copy()
        q.rebuild_cluster0(q.ext_list(),
                           backing=b"chain/c%04d.qcow2" % (depth - 1))
        self.add("backing-chain-%d" % depth, "any", q,
                 comment="deep chain: refuse or serve, no stack overflow")

    def write_manifest(self):
        with open(os.path.join(self.out, "cases.txt"), "w") as f:
            f.write("# NAME EXPECT [match=REGEX] [KEY=VALUE ...]"
                    "   (see gen-malformed.py)\n")
            for fname, expect, pat, comment, args in self.cases:
                if comment:
                    f.write("# %s: %s\n" % (fname, comment))
                words = [fname, expect]
                if pat:
                    assert " " not in pat
                    words.append("match=" + pat)
                words += args
                f.write(" ".join(words) + "\n")


def qemu_verdicts(outdir, cases):
    """Print what qemu-img makes of each case (open? whole read?)."""
    tmp = os.path.join(outdir, "qemu-verdict.raw")
    for fname, expect, _, _, _ in cases:
        p = os.path.join(outdir, fname)
        r = subprocess.run(["timeout", "20", "qemu-img", "info", "-U",
                            "-f", "qcow2", p], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           errors="replace")
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines() or ["status %d" % r.returncode]
            verdict = "REFUSED: " + lines[-1][:150]
        else:
            r = subprocess.run(["timeout", "20", "qemu-img", "convert", "-U",
                                "-f", "qcow2", "-O", "raw", p, tmp],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, errors="replace")
            if r.returncode != 0:
                lines = r.stderr.strip().splitlines() or ["status %d" % r.returncode]
                verdict = "READ-FAIL: " + lines[-1][:150]
            else:
                verdict = "ok"
        print("%-45s %-5s qemu: %s" % (fname, expect, verdict), flush=True)
    if os.path.exists(tmp):
        os.unlink(tmp)


def main():
    args = sys.argv[1:]
    qemu = False
    if args and args[0] == "--qemu":
        qemu = True
        args = args[1:]
    if len(args) != 1:
        die("usage: gen-malformed.py [--qemu] OUTDIR")
    out = args[0]
    os.makedirs(out, exist_ok=True)
    if os.listdir(out):
        die("%s is not empty" % out)
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            die("%s not found (apt-get install qemu-utils)" % tool)
    g = Gen(out)
    g.make_bases()
    g.make_cases()
    g.write_manifest()
    if qemu:
        qemu_verdicts(out, g.cases)


if __name__ == "__main__":
    main()
