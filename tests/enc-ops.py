#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
# Write to an NBD server and keep a raw model file of what it must hold:
#
#   enc-ops.py SEED NOPS URI MODEL
#
# MODEL is a raw file holding what the server's disk holds beforehand
# (for example qemu-img convert of the image); every write and zero is
# applied to the server and to MODEL alike.  After a trim the contents
# of the range are up to the server (NBD leaves them unspecified, and a
# trim of part of a cluster may change nothing): MODEL takes what the
# server reads there, so the check that follows (QEMU reading the image
# and comparing it with MODEL) still sees every write and zero.
#
# First a fixed list of operations that the encrypted write paths must
# get right for any cluster size (a byte or a sector inside a cluster,
# writes across cluster boundaries, zeroes of parts of clusters, whole
# and partial trims), then NOPS seeded random ones.  Each read-back is
# checked against MODEL as it goes; exits 1 at the first difference.
import random
import sys

import nbd

seed, nops, uri, model = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                          sys.argv[4])
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
m = open(model, "r+b")
m.seek(0, 2)
if m.tell() != size:
    sys.exit("model %s has %d bytes, the server %d" % (model, m.tell(), size))

KB = 1024
counts = {"write": 0, "zero": 0, "trim": 0, "flush": 0}


def model_write(off, buf):
    m.seek(off)
    m.write(buf)


def check(off, length, what):
    got = h.pread(length, off)
    m.seek(off)
    want = m.read(length)
    if got != want:
        k = next(k for k in range(length) if got[k] != want[k])
        sys.exit("after %s: offset %d reads %#x, the model has %#x"
                 % (what, off + k, got[k], want[k]))


def write(off, buf, fua=0):
    h.pwrite(buf, off, fua)
    model_write(off, buf)
    counts["write"] += 1
    check(off, len(buf), "write of %d bytes at %d" % (len(buf), off))


def zero(off, length, flags=0):
    h.zero(length, off, flags)
    model_write(off, bytes(length))
    counts["zero"] += 1
    check(off, length, "zero of %d bytes at %d" % (length, off))


def trim(off, length):
    if not h.can_trim():
        return
    h.trim(length, off)
    model_write(off, h.pread(length, off))
    counts["trim"] += 1


def flush():
    h.flush()
    counts["flush"] += 1


def clip(off, length):
    off = min(off, size - 1)
    return off, min(length, size - off)


# Fixed operations, at offsets that are interesting for clusters of
# 512 bytes to 2 MiB (all inside the first 4 MiB of the disk).
fixed = [
    ("write", 7, b"\xa5"),                      # one byte
    ("write", 65536 - 100, b"\x5a" * 200),      # across a 64k boundary
    ("write", 3 * 65536 + 512, b"\x33" * 512),  # one aligned sector
    ("write", 1 * 1024 * KB + 1, bytes(range(256)) * 17),
    ("zero", 2 * 65536 + 1000, 3000),           # part of a cluster
    ("zero", 4 * 65536, 65536),                 # a whole 64k cluster
    ("write", 4 * 65536 + 4096, b"\x44" * 100),  # into that zero cluster
    ("trim", 5 * 65536, 65536),
    ("trim", 6 * 65536 + 512, 1024),            # part of a cluster
    ("write", 6 * 65536, b"\x66" * 300),
    ("flush",),
    ("write", 2 * 1024 * KB - 3, b"\x77" * 70000),  # across 2M
    ("zero", 3 * 1024 * KB + 17, 200000),
    ("write", size - 5, b"\xee" * 5),           # the last bytes
]
for op in fixed:
    if op[0] == "write":
        off, length = clip(op[1], len(op[2]))
        write(off, op[2][:length])
    elif op[0] == "zero":
        zero(*clip(op[1], op[2]))
    elif op[0] == "trim":
        trim(*clip(op[1], op[2]))
    else:
        flush()

rng = random.Random(seed)
units = [1, 512, 4096, 65536, 1 << 20]
for i in range(nops):
    u = rng.choice(units)
    length = min(rng.randint(1, 3 * u), 2 << 20, size)
    if rng.random() < 0.5:
        off = rng.randrange(0, size - length + 1)
    else:
        off = rng.randrange(0, (size - length) // u + 1) * u
    op = rng.random()
    if op < 0.6:
        if rng.random() < 0.3:
            buf = rng.randbytes(length)
        else:
            buf = bytes([rng.randrange(1, 256)]) * length
        write(off, buf, nbd.CMD_FLAG_FUA if rng.random() < 0.05 else 0)
    elif op < 0.8:
        zero(off, length,
             nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0)
    elif op < 0.92:
        trim(off, length)
    else:
        flush()

# The whole disk, once more.
chunk = 4 << 20
for off in range(0, size, chunk):
    check(off, min(chunk, size - off), "all operations")
h.flush()
h.shutdown()
m.close()
print("seed %d: %s" % (seed, ", ".join("%d %ss" % (v, k)
                                        for k, v in counts.items())))
