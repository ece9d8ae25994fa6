#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
# Apply the same seeded random stream of writes, zeroes, trims and
# flushes to several NBD servers (URIs), then compare what each serves.
# Used by the differential tests: one server is nbdkit qcow2, the other
# qemu-nbd on a copy of the same image.
#
#   random-ops.py SEED NOPS URI [URI...]
#
# Exit status 1 (with the first differing offset) if the servers read
# back differently afterwards.
import errno
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
# FAST_ZERO is chosen by a generator of its own, so that the main stream
# (offsets, lengths, data of every op for a given seed) does not depend
# on it.  A server may refuse a fast zero with ENOTSUP; that handle then
# gets the plain zero a real client would fall back to.
frng = random.Random(seed ^ 0xFA57)
fast_done = [0] * len(uris)
fast_refused = [0] * len(uris)
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
    kind = ("write" if op < 0.55 else "zero" if op < 0.75 else
            "trim" if op < 0.9 else "flush")
    if debug:
        print("op %d: %.2f %s off=%d len=%d" % (i, op, kind, off, length),
              end="")
    if op < 0.55:
        byte = rng.randrange(1, 256)
        if rng.random() < 0.3:
            buf = rng.randbytes(length)
        else:
            buf = bytes([byte]) * length
        fua = nbd.CMD_FLAG_FUA if rng.random() < 0.05 else 0
        if debug:
            print(" %s byte=%d%s" % ("random" if len(set(buf)) > 1 else
                                     "fill", buf[0], " FUA" if fua else ""),
                  end="")
        for h in handles:
            h.pwrite(buf, off, fua)
    elif op < 0.75:
        flags = 0
        if rng.random() < 0.5:
            flags |= nbd.CMD_FLAG_NO_HOLE
        fast = frng.random() < 0.3
        if debug:
            print("%s%s" % (" NO_HOLE" if flags else "",
                            " FAST_ZERO" if fast else ""), end="")
        for j, h in enumerate(handles):
            if fast and h.can_fast_zero():
                try:
                    h.zero(length, off, flags | nbd.CMD_FLAG_FAST_ZERO)
                    fast_done[j] += 1
                    continue
                except nbd.Error as e:
                    if e.errnum != errno.ENOTSUP:
                        raise
                    fast_refused[j] += 1
                    if debug:
                        print(" (fast zero refused by %s)" % uris[j], end="")
            h.zero(length, off, flags)
    elif op < 0.9:
        for h in handles:
            if h.can_trim():
                h.trim(length, off)
    else:
        for h in handles:
            h.flush()
    if debug:
        print()
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
print("seed %d: %d operations, %d bytes compared; fast zeroes done/refused: %s"
      % (seed, nops, size,
         ", ".join("%d/%d" % x for x in zip(fast_done, fast_refused))))
