#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Writes over a damaged image, and the verdict on what they left.

  safety-net.py writes URI LOG
      write a fixed set of patterns through NBD (each request on its
      own, then a flush); LOG gets one line per request:
      "ok|fail OFFSET LENGTH BYTE"
  safety-net.py verify BEFORE AFTER LOG
      BEFORE and AFTER are raw copies of the active disk (qemu-img
      convert) before the writes and after them: every acknowledged
      write must read back, every byte no request touched must be as
      before (bytes of failed requests may be either)
"""

import sys

# (offset, length, byte): over data shared with a snapshot (copy on
# write), into unallocated space (new L2 table and clusters), partial
# clusters, and over the data the snapshot does not share.
WRITES = [
    (0, 512, 0x11),
    (65536 * 3 + 100, 4000, 0x22),
    (32 << 20, 65536, 0x33),
    (48 << 20, 3 * 65536 + 512, 0x44),
    (600 << 10, 8192, 0x55),
    (4 << 20, 131072, 0x66),
]


def writes(uri, log):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    out = []
    for off, length, byte in WRITES:
        try:
            h.pwrite(bytes([byte]) * length, off)
            h.flush()
            out.append("ok %d %d %d" % (off, length, byte))
        except nbd.Error as e:
            out.append("fail %d %d %d" % (off, length, byte))
            print("write at %d failed: %s" % (off, e), file=sys.stderr)
    h.shutdown()
    with open(log, "w") as f:
        f.write("\n".join(out) + "\n")


def verify(before, after, log):
    with open(before, "rb") as f:
        want = bytearray(f.read())
    with open(after, "rb") as f:
        got = f.read()
    maybe = []
    for line in open(log):
        st, off, length, byte = line.split()
        off, length, byte = int(off), int(length), int(byte)
        if st == "ok":
            want[off:off + length] = bytes([byte]) * length
        else:
            maybe.append((off, length))
    if len(got) != len(want):
        raise SystemExit("disk size %d, expected %d" % (len(got), len(want)))
    # Failed requests: their bytes may be old or new.
    for off, length in maybe:
        want[off:off + length] = got[off:off + length]
    if got != bytes(want):
        i = next(i for i in range(len(got)) if got[i] != want[i])
        raise SystemExit("active disk differs at byte %d: 0x%02x, expected "
                         "0x%02x" % (i, got[i], want[i]))


if __name__ == "__main__":
    if sys.argv[1] == "writes":
        writes(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "verify":
        verify(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
