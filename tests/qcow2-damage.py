#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Find qcow2 structures in an image and damage their refcounts.

Usage:
  qcow2-damage.py locate IMAGE KIND   print the host offset of a cluster
                                      holding KIND (exit 1 if none)
  qcow2-damage.py setref IMAGE OFFSET VALUE
                                      set the refcount of the cluster at
                                      host OFFSET to VALUE
  qcow2-damage.py getref IMAGE OFFSET print that refcount
  qcow2-damage.py pointbitmap IMAGE OFFSET
                                      make the first bitmap's first data
                                      cluster the cluster at host OFFSET
                                      (which something else uses),
                                      refcounts unchanged
  qcow2-damage.py setcopied IMAGE l1|l2 GUEST_OFFSET
                                      set the COPIED flag (the cluster is
                                      not shared: write in place) in the
                                      active L1 entry or L2 entry of
                                      GUEST_OFFSET

KIND is one of:
  header, active-l1, active-l2, snap-l1, snap-l2 (an L2 table only a
  snapshot uses), snap-data (a data cluster only a snapshot uses),
  shared-data (a data cluster the active image shares with a snapshot),
  reftable, refblock, snaptable, bitmap-dir, bitmap-table, bitmap-data,
  luks

Standard library only: the tests use it to make the damage that a crash
of a careless writer or a bit flip leaves behind, one structure at a
time, in images that qemu-img made.
"""

import struct
import sys

OFF_MASK = 0x00FFFFFFFFFFFE00
COMPRESSED = 1 << 62
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77


class Image:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = f.read()
        d = self.data
        (self.version,) = struct.unpack_from(">I", d, 4)
        (self.cluster_bits,) = struct.unpack_from(">I", d, 20)
        self.cs = 1 << self.cluster_bits
        (self.l1_size,) = struct.unpack_from(">I", d, 36)
        (self.l1_offset,) = struct.unpack_from(">Q", d, 40)
        (self.rt_offset,) = struct.unpack_from(">Q", d, 48)
        (self.rt_clusters,) = struct.unpack_from(">I", d, 56)
        (self.nb_snapshots,) = struct.unpack_from(">I", d, 60)
        (self.snap_offset,) = struct.unpack_from(">Q", d, 64)
        if self.version >= 3:
            (self.refcount_order,) = struct.unpack_from(">I", d, 96)
            (self.header_length,) = struct.unpack_from(">I", d, 100)
            (incompat,) = struct.unpack_from(">Q", d, 72)
            self.ext_l2 = bool(incompat & (1 << 4))
        else:
            self.refcount_order = 4
            self.header_length = 72
            self.ext_l2 = False
        self.entry_size = 16 if self.ext_l2 else 8
        self.exts = self._extensions()

    def u64(self, off):
        return struct.unpack_from(">Q", self.data, off)[0]

    def _extensions(self):
        exts = {}
        pos = self.header_length
        while pos + 8 <= self.cs:
            magic, length = struct.unpack_from(">II", self.data, pos)
            if magic == 0:
                break
            exts[magic] = self.data[pos + 8:pos + 8 + length]
            pos += 8 + ((length + 7) & ~7)
        return exts

    def snapshots(self):
        """(l1 offset, l1 size) of each snapshot."""
        out = []
        pos = self.snap_offset
        for _ in range(self.nb_snapshots):
            l1off, l1size, idlen, namelen = struct.unpack_from(
                ">QIHH", self.data, pos)
            (extra,) = struct.unpack_from(">I", self.data, pos + 36)
            out.append((l1off, l1size))
            pos += 40 + extra + idlen + namelen
            pos = (pos + 7) & ~7
        return out

    def snaptable_len(self):
        pos = self.snap_offset
        for _ in range(self.nb_snapshots):
            idlen, namelen = struct.unpack_from(">HH", self.data, pos + 12)
            (extra,) = struct.unpack_from(">I", self.data, pos + 36)
            pos += 40 + extra + idlen + namelen
            pos = (pos + 7) & ~7
        return pos - self.snap_offset

    def l1(self, off, size):
        return [self.u64(off + 8 * i) & OFF_MASK for i in range(size)]

    def l2_data(self, l2off):
        """Host clusters of the plain data entries of an L2 table."""
        out = []
        for j in range(self.cs // self.entry_size):
            e = self.u64(l2off + j * self.entry_size)
            if e & COMPRESSED:
                continue
            if e & OFF_MASK:
                out.append(e & OFF_MASK)
        return out

    def reftable(self):
        n = self.rt_clusters * self.cs // 8
        return [self.u64(self.rt_offset + 8 * i) & OFF_MASK for i in range(n)]

    def refcount_entry(self, offset):
        """(byte offset of the refcount block entry, bit shift, width)."""
        bits = 1 << self.refcount_order
        per_block = self.cs * 8 // bits
        c = offset // self.cs
        block = self.reftable()[c // per_block]
        if block == 0:
            raise SystemExit("no refcount block for offset 0x%x" % offset)
        index = c % per_block
        return block, index, bits

    def getref(self, offset):
        block, index, bits = self.refcount_entry(offset)
        if bits >= 8:
            raw = self.data[block + index * bits // 8:
                            block + (index + 1) * bits // 8]
            return int.from_bytes(raw, "big")
        byte = self.data[block + index * bits // 8]
        shift = (index * bits) % 8
        return (byte >> shift) & ((1 << bits) - 1)

    def setref(self, offset, value):
        block, index, bits = self.refcount_entry(offset)
        with open(self.path, "r+b") as f:
            if bits >= 8:
                f.seek(block + index * bits // 8)
                f.write(value.to_bytes(bits // 8, "big"))
            else:
                pos = block + index * bits // 8
                shift = (index * bits) % 8
                mask = ((1 << bits) - 1) << shift
                byte = (self.data[pos] & ~mask) | ((value << shift) & mask)
                f.seek(pos)
                f.write(bytes([byte]))

    def setcopied(self, level, guest):
        l2_bits = self.cluster_bits - (4 if self.ext_l2 else 3)
        i = guest >> (self.cluster_bits + l2_bits)
        pos = self.l1_offset + 8 * i
        if level == "l2":
            l2off = self.u64(pos) & OFF_MASK
            if not l2off:
                raise SystemExit("no L2 table for 0x%x" % guest)
            j = (guest >> self.cluster_bits) & ((1 << l2_bits) - 1)
            pos = l2off + j * self.entry_size
        e = self.u64(pos)
        if not e & OFF_MASK:
            raise SystemExit("0x%x is not allocated" % guest)
        with open(self.path, "r+b") as f:
            f.seek(pos)
            f.write(struct.pack(">Q", e | (1 << 63)))

    def bitmaps(self):
        """(directory offset, directory size, [table offsets], [data])."""
        ext = self.exts.get(EXT_BITMAPS)
        if not ext:
            return None
        nb, = struct.unpack_from(">I", ext, 0)
        dsize, doff = struct.unpack_from(">QQ", ext, 8)
        tables, data = [], []
        pos = doff
        for _ in range(nb):
            toff, tsize = struct.unpack_from(">QI", self.data, pos)
            namelen, = struct.unpack_from(">H", self.data, pos + 18)
            extra, = struct.unpack_from(">I", self.data, pos + 20)
            tables.append(toff)
            for k in range(tsize):
                e = self.u64(toff + 8 * k) & OFF_MASK
                if e:
                    data.append(e)
            pos += (24 + extra + namelen + 7) & ~7
        return doff, dsize, tables, data

    def pointbitmap(self, target):
        b = self.bitmaps()
        if not b:
            raise SystemExit("the image has no bitmaps")
        pos = b[2][0]
        e = self.u64(pos)
        with open(self.path, "r+b") as f:
            f.seek(pos)
            f.write(struct.pack(">Q", (e & ~OFF_MASK & ~1) | target))

    def locate(self, kind):
        active_l2 = [o for o in self.l1(self.l1_offset, self.l1_size) if o]
        snaps = self.snapshots()
        snap_l2 = set()
        for off, size in snaps:
            snap_l2.update(o for o in self.l1(off, size) if o)
        active_data = set()
        for t in active_l2:
            active_data.update(self.l2_data(t))
        snap_data = set()
        for t in snap_l2:
            snap_data.update(self.l2_data(t))
        if kind == "header":
            return [0]
        if kind == "active-l1":
            return [self.l1_offset]
        if kind == "active-l2":
            return active_l2
        if kind == "snap-l1":
            return [off for off, _ in snaps]
        if kind == "snap-l2":
            return sorted(snap_l2 - set(active_l2))
        if kind == "snap-data":
            return sorted(snap_data - active_data)
        if kind == "shared-data":
            return sorted(snap_data & active_data)
        if kind == "reftable":
            return [self.rt_offset]
        if kind == "refblock":
            return [b for b in self.reftable() if b]
        if kind == "snaptable":
            return [self.snap_offset] if self.nb_snapshots else []
        if kind.startswith("bitmap-"):
            b = self.bitmaps()
            if not b:
                return []
            doff, _, tables, data = b
            return {"bitmap-dir": [doff], "bitmap-table": tables,
                    "bitmap-data": data}[kind]
        if kind == "luks":
            ext = self.exts.get(EXT_CRYPTO)
            return [struct.unpack_from(">Q", ext, 0)[0]] if ext else []
        raise SystemExit("unknown kind " + kind)


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    cmd, path = sys.argv[1], sys.argv[2]
    img = Image(path)
    if cmd == "locate":
        found = img.locate(sys.argv[3])
        if not found:
            sys.exit(1)
        print(found[0])
    elif cmd == "setref":
        img.setref(int(sys.argv[3], 0), int(sys.argv[4], 0))
    elif cmd == "setcopied":
        img.setcopied(sys.argv[3], int(sys.argv[4], 0))
    elif cmd == "pointbitmap":
        img.pointbitmap(int(sys.argv[3], 0))
    elif cmd == "getref":
        print(img.getref(int(sys.argv[3], 0)))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
