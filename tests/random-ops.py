#!/usr/bin/python3
# Apply the same seeded random stream of writes, zeroes, trims and
# flushes to several NBD servers (URIs), then compare what each serves.
# Used by the differential tests: one server is nbdkit qcow2, the other
# qemu-nbd on a copy of the same image.
#
#   random-ops.py SEED NOPS URI [URI...]
#
# Exit status 1 (with the first differing offset) if the servers read
# back differently afterwards.
import os
import random
import sys

import nbd

seed, nops, uris = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
handles = []
for u in uris:
    h = nbd.NBD()
    h.connect_uri(u)
    handles.append(h)
size = handles[0].get_size()
for h in handles[1:]:
    if h.get_size() != size:
        sys.exit("size mismatch: %d != %d" % (h.get_size(), size))

rng = random.Random(seed)
# Lengths that hit sub-cluster, cluster and multi-cluster cases for any
# cluster size, at offsets that are often unaligned.
units = [1, 512, 4096, 65536, 2 << 20]


def pick_range():
    u = rng.choice(units)
    length = rng.randint(1, 3 * u)
    length = min(length, 4 << 20, size)
    if rng.random() < 0.5:
        off = rng.randrange(0, size - length + 1)
    else:
        off = rng.randrange(0, (size - length) // u + 1) * u
    return off, length


debug = os.environ.get("RANDOM_OPS_DEBUG")

for i in range(nops):
    op = rng.random()
    off, length = pick_range()
    if debug:
        print("op %d: %.2f off=%d len=%d" % (i, op, off, length))
    if op < 0.55:
        byte = rng.randrange(1, 256)
        if rng.random() < 0.3:
            buf = rng.randbytes(length)
        else:
            buf = bytes([byte]) * length
        fua = nbd.CMD_FLAG_FUA if rng.random() < 0.05 else 0
        for h in handles:
            h.pwrite(buf, off, fua)
    elif op < 0.75:
        flags = 0
        if rng.random() < 0.5:
            flags |= nbd.CMD_FLAG_NO_HOLE
        for h in handles:
            h.zero(length, off, flags)
    elif op < 0.9:
        for h in handles:
            if h.can_trim():
                h.trim(length, off)
    else:
        for h in handles:
            h.flush()
    if debug:
        a = handles[0].pread(length, off)
        for h in handles[1:]:
            if h.pread(length, off) != a:
                sys.exit("differs after op %d" % i)

# Compare contents.
chunk = 4 << 20
for off in range(0, size, chunk):
    n = min(chunk, size - off)
    ref = handles[0].pread(n, off)
    for j, h in enumerate(handles[1:], 1):
        got = h.pread(n, off)
        if got != ref:
            k = next(k for k in range(n) if got[k] != ref[k])
            sys.exit("content differs at offset %d between %s and %s" %
                     (off + k, uris[0], uris[j]))
for h in handles:
    h.flush()
    h.shutdown()
print("seed %d: %d operations, %d bytes compared" % (seed, nops, size))
