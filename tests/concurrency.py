#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
# Hammer one NBD export from several connections at once, with many
# requests in flight on each, and check the result against a model.
# Used by test-concurrency.sh.
#
#   concurrency.py run --uri URI --initial RAW --windows OFF:LEN,... \
#       --cluster-size N --unit N --model OUT [options]
#   concurrency.py verify --model MODEL --raw RAW --initial RAW
#
# "run":
#   The windows (guest byte ranges) are cut into segments, each owned by
#   one worker, so that neighbouring segments, in the same cluster and
#   the same L2 table, belong to different workers.  Three layouts, one
#   window each in turn: 512-byte slots (slot % nworkers == owner) or
#   whole clusters or odd little pieces, block by block; segments of any
#   size (one byte to three clusters); pairs of units (a unit is the
#   cluster, or the subcluster with extended L2 entries): one worker owns
#   unit k and half of unit k+1, another the other half.
#
#   Phase 1: each worker (a process with its own NBD connection and up to
#   --depth requests in flight) writes seeded data, zeroes (with and
#   without NO_HOLE), trims, reads back (checking against its model),
#   asks for block status (a zero extent must be zero in the model) and
#   flushes, only inside its own segments and never two requests on one
#   segment at once, half of the time on a few hot spots.  So the content
#   is deterministic: each worker keeps a model of its segments.  A trim
#   makes the whole clusters inside the request read as zeros (qcow2 v3:
#   the plugin marks them zero).  After a write, the whole segment is
#   often read back at once, so that a lost update shows before a later
#   write hides it.
#
#   Duels: on pairs of units, the owner of unit k zeroes it and writes
#   over it into unit k+1 (an allocating or copy-on-write step that ends
#   in an allocated unit), while the owner of the other half of unit k+1
#   writes there in place; both read back after each write.
#
#   Allocation storms: the parent trims a few clusters made of 512-byte
#   slots, then every worker writes all its slots there at once (one
#   request allocates each cluster, the others wait and then write in
#   place), and reads them back; --storm-rounds times.
#
#   Phase 2: every worker writes, zeroes and trims the SAME small ranges
#   concurrently (many requests on one range in flight at once).  Each
#   request covers its whole range, so afterwards each atomic unit
#   (--unit) of a range must hold what one of those requests put there.
#
#   Meanwhile, readers that connected before the workers read the export
#   (and, with --snap-uri, an internal snapshot, whose content is checked
#   against --snap-raw: it must not change).  The snapshot reader is
#   reading when the first writable connection opens (and makes the
#   image writable).
#
#   At the end everything is read back through NBD and checked, the
#   server is flushed, and the model is saved in --model.
#
# "verify": check a raw copy of the image (qemu-img convert, after the
#   server stopped) against the saved model: the windows as modelled, the
#   rest of the disk as in --initial.
#
# Exit status 1 with a description of the first mismatch.
import argparse
import multiprocessing as mp
import os
import pickle
import random
import sys
import time
import traceback

import nbd

STATE_ZERO = 2


def log(*a):
    print("concurrency:", *a, file=sys.stderr, flush=True)


class Fail(Exception):
    pass


def parse_windows(s):
    ws = []
    for part in s.split(","):
        off, length = part.split(":")
        ws.append((int(off), int(length)))
    ws.sort()
    for (a, al), (b, _) in zip(ws, ws[1:]):
        if a + al > b:
            sys.exit("overlapping windows")
    return ws


def read_file_range(path, off, length):
    with open(path, "rb") as f:
        f.seek(off)
        data = f.read(length)
    return data + bytes(length - len(data))


def connect(uri, name, meta=True):
    h = nbd.NBD()
    h.set_handle_name(name)
    if meta:
        h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    return h


# ---------------------------------------------------------------------
# The plan: segments with owners, shared ranges.  Deterministic from the
# seed, built in the parent before the workers fork.

def make_segments(rng, windows, cs, unit, nworkers):
    """List of (start, end, owner), and the duels: pairs of segments
    (unit k and half of k+1; the other half of k+1) with two owners."""
    segs = []
    duels = []
    storms = []                # (cluster offset, its segments)

    def add(a, b, owner):
        if segs and segs[-1][1] == a and segs[-1][2] == owner and \
                rng.random() < 0.5:
            owner = (owner + 1) % nworkers      # keep neighbours apart
        segs.append((a, b, owner))

    for wi, (ws, wl) in enumerate(windows):
        we = ws + wl
        pos = ws
        if wi % 3 == 2:
            # Pairs of units (clusters, or subclusters with extended L2):
            # one worker owns a unit and half the next, another the
            # other half.  A write over the first unit, once zeroed,
            # ends in the next one while its other owner writes there.
            while pos < we:
                mid = min((pos // unit) * unit + unit + unit // 2, we)
                end = min((pos // unit) * unit + 2 * unit, we)
                # The first pairs, one per cluster (duels in one cluster
                # would wait for each other's allocations), are duels:
                # workers 2j and 2j+1, each in one duel only.
                j = len(duels)
                if pos % unit == 0 and end - pos == 2 * unit and \
                        j < nworkers // 2 and \
                        (not duels or
                         (segs[duels[-1][1]][1] - 1) // cs < pos // cs):
                    segs.append((pos, mid, 2 * j))
                    segs.append((mid, end, 2 * j + 1))
                    duels.append((len(segs) - 2, len(segs) - 1))
                    pos = end
                    continue
                add(pos, mid, rng.randrange(nworkers))
                if mid < end:
                    add(mid, end, (segs[-1][2] + 1 +
                                   rng.randrange(nworkers - 1)) % nworkers)
                pos = end
            continue
        if wi % 3 == 0:
            # Block by block (a cluster, at least 4k): 512-byte slots
            # with slot % nworkers == owner, or one owner for the whole
            # block (trims, metadata-only zeroing), or small pieces of
            # odd sizes.
            block = max(cs, 4096)
            while pos < we:
                bend = min((pos // block + 1) * block, we)
                r = rng.random()
                if r < 0.6:
                    first = len(segs)
                    bstart = pos
                    while pos < bend:
                        end = min((pos // 512 + 1) * 512, bend)
                        add(pos, end, (pos // 512) % nworkers)
                        pos = end
                    # Whole clusters of slots: the allocation storms.
                    if cs >= 1024:
                        c = (bstart + cs - 1) // cs * cs
                        while c + cs <= bend and len(storms) < 4:
                            storms.append((c, [
                                i for i in range(first, len(segs))
                                if c <= segs[i][0] < c + cs]))
                            c += cs
                elif r < 0.85:
                    add(pos, bend, rng.randrange(nworkers))
                    pos = bend
                else:
                    while pos < bend:
                        end = min(pos + rng.randint(1, 2048), bend)
                        add(pos, end, rng.randrange(nworkers))
                        pos = end
            continue
        # Segments of any size, from one byte to three clusters.
        while pos < we:
            r = rng.random()
            if r < 0.3:
                size = rng.choice([512, 1024, 1536, 2048, 4096])
            elif r < 0.45:
                size = rng.randint(1, 1500)          # unaligned
            elif r < 0.8:
                size = cs * rng.randint(1, 3)
            else:
                size = rng.randint(1, 3 * cs)
            end = min(pos + size, we)
            # Often end on a cluster boundary, so that segments hold
            # whole clusters (trims and metadata-only zeroing).
            if rng.random() < 0.4:
                cend = (end + cs - 1) // cs * cs
                if cend > pos and cend - pos <= 4 * cs:
                    end = min(cend, we)
            add(pos, end, rng.randrange(nworkers))
            pos = end
    return segs, duels, storms


def make_shared(rng, windows, cs, unit, n):
    """Disjoint ranges for phase 2: (start, end, trimmable)."""
    ranges = []
    tries = 0
    while len(ranges) < n and tries < 100 * n:
        tries += 1
        ws, wl = rng.choice(windows)
        r = rng.random()
        if r < 0.15 and wl >= cs:
            # a whole cluster: may also be trimmed
            c = rng.randrange(ws // cs + (ws % cs != 0),
                              (ws + wl) // cs) if wl >= 2 * cs else None
            if c is None or c * cs < ws or (c + 1) * cs > ws + wl:
                continue
            a, b, trim = c * cs, (c + 1) * cs, True
        elif r < 0.75:
            # inside one unit
            u = rng.randrange(ws // unit, (ws + wl - 1) // unit + 1)
            ua, ub = max(u * unit, ws), min((u + 1) * unit, ws + wl)
            if rng.random() < 0.3:
                a, b = ua, ub
            else:
                a = rng.randrange(ua, ub)
                b = rng.randrange(a + 1, ub + 1)
            trim = False
        else:
            # across two or three units (checked unit by unit)
            a = rng.randrange(ws, ws + wl - 1)
            b = min(a + rng.randint(unit // 2 + 1, 2 * unit + unit // 2),
                    ws + wl)
            trim = False
        if any(a < y and x < b for x, y, _ in ranges):
            continue
        ranges.append((a, b, trim))
    ranges.sort()
    return ranges


def shared_value(seed, w, i, length):
    return random.Random(seed * 1000003 + w * 100003 + i).randbytes(length)


# ---------------------------------------------------------------------
# The model: the windows' bytes.

class Model:
    def __init__(self, windows, initial):
        self.windows = windows
        self.data = [bytearray(read_file_range(initial, off, ln))
                     for off, ln in windows]

    def _locate(self, off, length):
        for i, (ws, wl) in enumerate(self.windows):
            if ws <= off and off + length <= ws + wl:
                return i, off - ws
        raise ValueError("range %d+%d outside the windows" % (off, length))

    def get(self, off, length):
        i, o = self._locate(off, length)
        return bytes(self.data[i][o:o + length])

    def put(self, off, b):
        i, o = self._locate(off, len(b))
        self.data[i][o:o + len(b)] = b


def first_diff(a, b):
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return i
    return min(len(a), len(b))


def whole_clusters(off, length, cs):
    a = (off + cs - 1) // cs * cs
    b = (off + length) // cs * cs
    return (a, b) if a < b else None


# ---------------------------------------------------------------------
# Workers.

class Worker:
    def __init__(self, args, w, segs, duels, shared, model):
        self.args = args
        self.w = w
        self.cs = args.cluster_size
        self.unit = args.unit
        self.rng = random.Random(args.seed * 7919 + w)
        self.mine = [i for i, s in enumerate(segs) if s[2] == w]
        # Half of the requests go to a few hot spots, the first units of
        # each window, so that neighbours collide often.
        hot = max(8 * args.unit, 16384)
        self.hot = [i for i in self.mine
                    if any(ws <= segs[i][0] < ws + hot
                           for ws, _ in args.windows)]
        self.segs = segs
        self.duels = duels
        self.shared = shared
        self.model = model
        self.history = {}          # segment -> recent ops, for reports
        self.stats = {}
        self.inflight = {}         # cookie -> (kind, segment, ...)
        self.busy = set()          # segments with a request in flight
        self.h = None

    def note(self, seg, what):
        h = self.history.setdefault(seg, [])
        h.append(what)
        del h[:-12]

    def count(self, kind):
        self.stats[kind] = self.stats.get(kind, 0) + 1

    def seg_desc(self, si):
        a, b, o = self.segs[si]
        return ("segment %d [%d, %d) of worker %d, recent ops: %s" %
                (si, a, b, o, self.history.get(si, [])))

    # Requests on one of our segments (it stays busy until completed).
    def write(self, si, off, data, flags=0):
        self.model.put(off, data)
        c = self.h.aio_pwrite(nbd.Buffer.from_bytearray(data), off,
                              flags=flags)
        self.inflight[c] = ("write", si)
        self.note(si, ("write", off, len(data), data[:1].hex()))
        self.count("write")

    def zero(self, si, off, length, flags=0):
        self.model.put(off, bytes(length))
        c = self.h.aio_zero(length, off, flags=flags)
        self.inflight[c] = ("zero", si)
        self.note(si, ("zero", off, length, flags))
        self.count("zero")

    def trim(self, si, off, length, flags=0):
        wc = whole_clusters(off, length, self.cs)
        if wc:
            self.model.put(wc[0], bytes(wc[1] - wc[0]))
        c = self.h.aio_trim(length, off, flags=flags)
        self.inflight[c] = ("trim", si)
        self.note(si, ("trim", off, length))
        self.count("trim")

    def read(self, si, off, length):
        buf = nbd.Buffer(length)
        c = self.h.aio_pread(buf, off)
        self.inflight[c] = ("read", si, off, buf)
        self.count("read")

    def extents(self, si, off, length):
        ext = []

        def cb(meta, eoff, entries, err):
            if meta == "base:allocation":
                for j in range(0, len(entries), 2):
                    ext.append((eoff, entries[j], entries[j + 1]))
                    eoff += entries[j]
            return 0
        c = self.h.aio_block_status(length, off, cb)
        self.inflight[c] = ("extents", si, off, length, ext)
        self.count("extents")

    def complete(self, op, verify_after=0.5):
        kind, si = op[0], op[1]
        if kind == "read":
            off, buf = op[2], op[3]
            got = bytes(buf.to_bytearray())
            exp = self.model.get(off, len(got))
            if got != exp:
                d = first_diff(got, exp)
                raise Fail("worker %d: read at %d+%d differs from the "
                           "model at offset %d (got %02x, expected %02x); "
                           "%s" % (self.w, off, len(got), off + d, got[d],
                                   exp[d], self.seg_desc(si)))
        elif kind == "extents":
            off, length, ext = op[2], op[3], op[4]
            for eoff, elen, flags in ext:
                a, b = max(eoff, off), min(eoff + elen, off + length)
                if a < b and flags & STATE_ZERO:
                    m = self.model.get(a, b - a)
                    if m.count(0) != len(m):
                        raise Fail("worker %d: block status says [%d, %d) "
                                   "reads as zeros, the model has data "
                                   "there; %s" % (self.w, a, b,
                                                  self.seg_desc(si)))
        if kind in ("write", "zero", "trim") and \
                self.rng.random() < verify_after:
            # Read the whole segment back at once: a neighbour's request
            # that clobbered it (a lost update) shows now, before a later
            # request of ours hides it.
            a, b, _ = self.segs[si]
            self.read(si, a, b - a)
            return
        if si is not None:
            self.busy.discard(si)

    def wait(self, complete):
        """Wait for at least one completion."""
        h = self.h
        h.poll(-1)
        while self.inflight:
            c = h.aio_peek_command_completed()
            if c == 0:
                return
            op = self.inflight.pop(c)
            try:
                h.aio_command_completed(c)
            except nbd.Error as e:
                raise Fail("worker %d: %s failed: %s" % (self.w, op[0], e))
            complete(op)

    # Phase 1: random requests on our own segments.
    def phase1(self):
        rng, h = self.rng, self.h
        issued = 0
        nops = self.args.ops
        while issued < nops or self.inflight:
            while issued < nops and len(self.inflight) < self.args.depth:
                pool = self.hot if self.hot and rng.random() < 0.5 \
                    else self.mine
                free = [s for s in pool if s not in self.busy]
                r = rng.random()
                if r < 0.03:
                    c = h.aio_flush()
                    self.inflight[c] = ("flush", None)
                    issued += 1
                    self.count("flush")
                    continue
                if not free:
                    break
                si = rng.choice(free)
                a, b, _ = self.segs[si]
                u = self.unit
                k = rng.random()
                if k < 0.35:
                    off, length = a, b - a
                elif k < 0.55 and (a + u - 1) // u * u < b:
                    # from a unit boundary: whole units, metadata-only
                    # zeroing and trims, writes over zeroed units
                    off = rng.randrange((a + u - 1) // u,
                                        (b - 1) // u + 1) * u
                    length = b - off if rng.random() < 0.5 else \
                        min(b - off, u * rng.randint(1, 2))
                else:
                    off = rng.randrange(a, b)
                    if rng.random() < 0.5:
                        off = max(a, off // 512 * 512)
                    length = rng.randint(1, b - off)
                fua = nbd.CMD_FLAG_FUA if rng.random() < 0.05 else 0
                self.busy.add(si)
                issued += 1
                if r < 0.45:
                    k = rng.random()
                    if k < 0.75:
                        data = rng.randbytes(length)
                    elif k < 0.9:
                        data = bytes([rng.randrange(256)]) * length
                    else:
                        data = bytes(length)
                    self.write(si, off, data, fua)
                elif r < 0.60:
                    nohole = nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 \
                        else 0
                    self.zero(si, off, length, fua | nohole)
                elif r < 0.72:
                    self.trim(si, off, length, fua)
                elif r < 0.92:
                    self.read(si, off, length)
                else:
                    self.extents(si, off, length)
            if self.inflight:
                self.wait(self.complete)

    # Duels: pairs of segments [unit k + half of unit k+1] and [the other
    # half], owned by two workers.  The first owner zeroes unit k and
    # writes over it into unit k+1 (an allocating or copy-on-write step
    # whose last unit is written in place), the second writes its half
    # of unit k+1 in place, both reading back after each write.
    def duel(self):
        rng = self.rng
        roles = []                 # [segment, role, step]
        for sa, sb in self.duels:
            if self.segs[sa][2] == self.w:
                roles.append([sa, "A", 0])
            if self.segs[sb][2] == self.w:
                roles.append([sb, "B", 0])
        rounds = self.args.duel_rounds
        plan = {"A": ("zero", "write"), "B": ("write", "read")}

        def complete(op):
            self.complete(op, verify_after=0)

        while True:
            pending = [r for r in roles
                       if r[2] < rounds * len(plan[r[1]])]
            if not pending and not self.inflight:
                break
            for r in pending:
                si, role, step = r
                if si in self.busy:
                    continue
                a, b, _ = self.segs[si]
                what = plan[role][step % len(plan[role])]
                self.busy.add(si)
                r[2] += 1
                if what == "zero":
                    self.zero(si, a, self.unit, rng.choice(
                        (0, nbd.CMD_FLAG_NO_HOLE)))
                elif what == "write":
                    self.write(si, a, rng.randbytes(b - a))
                else:
                    self.read(si, a, b - a)
            if self.inflight:
                self.wait(complete)

    # Allocation storms: the parent has just trimmed some clusters made
    # of 512-byte slots (slot % nworkers == owner); every worker writes
    # all its slots there at once, so that each cluster is allocated by
    # one request while the others wait, then go in place, all in the
    # same moment; then everything is read back.
    def storm(self, storms):
        rng = self.rng
        mine = []
        for c, sis in storms:
            self.model.put(c, bytes(self.cs))    # trimmed (as the model
            mine += [si for si in sis            # of our slots)
                     if self.segs[si][2] == self.w]
        for si in mine:
            a, b, _ = self.segs[si]
            self.busy.add(si)
            self.write(si, a, rng.randbytes(b - a))
        while self.inflight:
            self.wait(lambda op: self.complete(op, verify_after=0))
        for si in mine:
            a, b, _ = self.segs[si]
            self.busy.add(si)
            self.read(si, a, b - a)
        while self.inflight:
            self.wait(lambda op: self.complete(op, verify_after=0))

    # Phase 2: everybody on the same ranges.
    def phase2(self):
        rng, h = self.rng, self.h
        wrote = []                 # (range index, kind, op number)
        for i in range(self.args.shared_ops):
            while len(self.inflight) >= self.args.depth:
                self.wait(lambda op: None)
            ri = rng.randrange(len(self.shared))
            a, b, trimmable = self.shared[ri]
            r = rng.random()
            if r < 0.6:
                data = shared_value(self.args.seed, self.w, i, b - a)
                c = h.aio_pwrite(nbd.Buffer.from_bytearray(data), a)
                wrote.append((ri, "write", i))
            elif r < 0.75:
                nohole = nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0
                c = h.aio_zero(b - a, a, flags=nohole)
                wrote.append((ri, "zero", i))
            elif r < 0.8 and trimmable:
                c = h.aio_trim(b - a, a)
                wrote.append((ri, "zero", i))
            else:
                c = h.aio_pread(nbd.Buffer(b - a), a)
            self.inflight[c] = ("phase 2 request on range %d" % ri, None)
            self.count("shared")
        while self.inflight:
            self.wait(lambda op: None)
        return wrote


def close_gently(h, inflight):
    """After a failure: let the requests in flight finish, then
    disconnect properly (a client that vanishes with requests in flight
    trips an assertion in nbdkit 1.32, which would hide the real
    failure)."""
    if h is None:
        return
    try:
        deadline = time.time() + 30
        while inflight and time.time() < deadline:
            h.poll(1000)
            for c in list(inflight):
                try:
                    if h.aio_command_completed(c):
                        del inflight[c]
                except nbd.Error:
                    del inflight[c]
        h.shutdown()
    except Exception:
        pass


def worker_main(args, w, segs, duels, storms, shared, model, barrier,
                outpath):
    wk = h = None
    try:
        wk = Worker(args, w, segs, duels, shared, model)
        h = wk.h = connect(args.uri, "w%d" % w)
        barrier.wait()                       # all connected
        wk.phase1()
        barrier.wait()                       # phase 1 done everywhere
        wk.duel()
        barrier.wait()                       # duels done everywhere
        for r in range(args.storm_rounds if storms else 0):
            barrier.wait()                   # the parent trimmed them
            wk.storm(storms)
            barrier.wait()
        wrote = wk.phase2()
        barrier.wait()                       # phase 2 done everywhere
        h.shutdown()
        res = {
            "segs": {si: model.get(segs[si][0], segs[si][1] - segs[si][0])
                     for si in wk.mine},
            "history": wk.history,
            "wrote": wrote,
            "stats": wk.stats,
        }
        with open(outpath, "wb") as f:
            pickle.dump(res, f)
    except BaseException as e:
        if isinstance(e, Fail):
            log(str(e))
        else:
            traceback.print_exc()
        barrier.abort()
        close_gently(h, wk.inflight if wk else {})
        os._exit(1)
    os._exit(0)


# Readers: connect first, read while the workers write.
def reader_main(args, uri, check_raw, ready, stop, name):
    h = None
    inflight = {}
    try:
        rng = random.Random(args.seed * 31 + len(name))
        h = connect(uri, name)
        size = h.get_size()
        nreads = 0
        fd = os.open(check_raw, os.O_RDONLY) if check_raw else None
        while not stop.is_set() or inflight:
            while not stop.is_set() and len(inflight) < 8:
                if rng.random() < 0.7:
                    ws, wl = rng.choice(args.windows)
                    off = rng.randrange(ws, ws + wl)
                    length = rng.randint(1, min(ws + wl - off, 256 << 10))
                else:
                    off = rng.randrange(size)
                    length = rng.randint(1, min(size - off, 1 << 20))
                r = rng.random()
                if r < 0.85:
                    buf = nbd.Buffer(length)
                    c = h.aio_pread(buf, off)
                    inflight[c] = (off, buf)
                elif r < 0.9:
                    c = h.aio_flush()
                    inflight[c] = None
                else:
                    c = h.aio_block_status(length, off,
                                           lambda *a: 0)
                    inflight[c] = None
            h.poll(1000)
            while inflight:
                c = h.aio_peek_command_completed()
                if c == 0:
                    break
                op = inflight.pop(c)
                try:
                    h.aio_command_completed(c)
                except nbd.Error as e:
                    raise Fail("%s: %s failed: %s" % (
                        name, "read at %d+%d" % (op[0], len(op[1]))
                        if op else "block status or flush", e))
                nreads += 1
                # Tell the parent only once requests are flowing, so
                # that the next connection opens (and, being the first
                # writable one, makes the image writable) meanwhile.
                if nreads == 32:
                    ready.set()
                if op and fd is not None:
                    off, buf = op
                    got = bytes(buf.to_bytearray())
                    exp = os.pread(fd, len(got), off)
                    exp += bytes(len(got) - len(exp))
                    if got != exp:
                        d = first_diff(got, exp)
                        raise Fail("%s: read at %d+%d differs from the "
                                   "snapshot's content at offset %d" %
                                   (name, off, len(got), off + d))
        h.shutdown()
        log("%s: %d requests" % (name, nreads))
    except BaseException as e:
        if isinstance(e, Fail):
            log(str(e))
        else:
            traceback.print_exc()
        ready.set()
        close_gently(h, inflight)
        os._exit(1)
    os._exit(0)


# ---------------------------------------------------------------------

def check_windows(read, model, shared, candidates, unit, what):
    """read(off, len) -> bytes.  Returns the actual shared bytes."""
    actual_shared = {}
    for (ws, wl), exp in zip(model.windows, model.data):
        got = read(ws, wl)
        # Shared ranges are judged separately.
        mask = bytearray(exp)
        for ri, (a, b, _) in enumerate(shared):
            if ws <= a and b <= ws + wl:
                mask[a - ws:b - ws] = got[a - ws:b - ws]
        if got != bytes(mask):
            d = first_diff(got, mask)
            raise Fail("%s: offset %d: got %02x, the model has %02x "
                       "(window [%d, %d))" % (what, ws + d, got[d], mask[d],
                                              ws, ws + wl))
        for ri, (a, b, _) in enumerate(shared):
            if not (ws <= a and b <= ws + wl):
                continue
            g = got[a - ws:b - ws]
            actual_shared[ri] = g
            cands = candidates.get(ri)
            if not cands:
                cands = [exp[a - ws:b - ws]]
            # unit by unit
            p = a
            while p < b:
                q = min((p // unit + 1) * unit, b)
                piece = g[p - a:q - a]
                if not any(c[p - a:q - a] == piece for c in cands):
                    raise Fail("%s: shared range %d [%d, %d): bytes [%d, "
                               "%d) match none of the %d values written "
                               "there" % (what, ri, a, b, p, q, len(cands)))
                p = q
            if not any(c == g for c in cands):
                log("%s: note: shared range %d [%d, %d) spans units and "
                    "holds a mix of values (allowed)" % (what, ri, a, b))
    return actual_shared


def cmd_run(args):
    args.windows = parse_windows(args.windows)
    rng = random.Random(args.seed)
    cs = args.cluster_size
    segs, duels, storms = make_segments(rng, args.windows, cs, args.unit,
                                        args.workers)
    if args.storm_rounds == 0:
        storms = []
    shared = make_shared(rng, args.windows, cs, args.unit, args.shared)
    model = Model(args.windows, args.initial)
    outdir = os.path.dirname(os.path.abspath(args.model))
    log("%d workers, %d segments in %d windows, %d duels, %d shared "
        "ranges, cluster %d, unit %d" % (args.workers, len(segs),
                                         len(args.windows), len(duels),
                                         len(shared), cs, args.unit))

    ctx = mp.get_context("fork")
    stop = ctx.Event()
    readers = []
    # The snapshot reader connects first and is reading (the image still
    # read-only) when the plain reader connects: the first writable
    # connection, which makes the image writable.  Then the workers.
    for name, uri, raw in (("snapshot-reader", args.snap_uri, args.snap_raw),
                           ("reader", args.uri, None)):
        if not uri:
            continue
        ready = ctx.Event()
        p = ctx.Process(target=reader_main,
                        args=(args, uri, raw, ready, stop, name))
        p.start()
        if not ready.wait(60) or p.exitcode not in (None, 0):
            sys.exit("concurrency: %s did not connect" % name)
        readers.append((name, p))

    barrier = ctx.Barrier(args.workers + 1, timeout=args.timeout)
    procs = []
    t0 = time.time()
    for w in range(args.workers):
        p = ctx.Process(target=worker_main,
                        args=(args, w, segs, duels, storms, shared, model, barrier,
                              "%s/worker%d.pkl" % (outdir, w)))
        p.start()
        procs.append(p)
    status = 0
    try:
        barrier.wait()
        log("all connected")
        barrier.wait()
        log("phase 1 done (%.1fs)" % (time.time() - t0))
        barrier.wait()
        log("duels done (%.1fs)" % (time.time() - t0))
        if storms:
            ph = connect(args.uri, "trimmer", meta=False)
            for r in range(args.storm_rounds):
                for c, _ in storms:
                    ph.trim(cs, c)
                barrier.wait()
                barrier.wait()
            ph.shutdown()
            log("%d allocation storms on %d clusters done (%.1fs)" %
                (args.storm_rounds, len(storms), time.time() - t0))
        barrier.wait()
        log("phase 2 done (%.1fs)" % (time.time() - t0))
    except Exception as e:
        log("a worker failed (%s)" % type(e).__name__)
        status = 1
    for p in procs:
        p.join()
        if p.exitcode != 0:
            status = 1
    stop.set()
    for name, p in readers:
        p.join(args.timeout)
        if p.exitcode != 0:
            log("%s failed (exit %s)" % (name, p.exitcode))
            status = 1
    if status:
        sys.exit(1)

    # Merge the workers' models.
    candidates = {}
    stats = {}
    for w in range(args.workers):
        with open("%s/worker%d.pkl" % (outdir, w), "rb") as f:
            res = pickle.load(f)
        for si, b in res["segs"].items():
            model.put(segs[si][0], b)
        for ri, kind, i in res["wrote"]:
            a, b, _ = shared[ri]
            v = (shared_value(args.seed, w, i, b - a) if kind == "write"
                 else bytes(b - a))
            candidates.setdefault(ri, []).append(v)
        for k, v in res["stats"].items():
            stats[k] = stats.get(k, 0) + v
    log("requests: %s" % ", ".join("%s %d" % kv for kv in sorted(stats.items())))

    # Read everything back through NBD, then flush.
    h = connect(args.uri, "check", meta=False)
    try:
        actual = check_windows(lambda o, n: h.pread(n, o), model, shared,
                               candidates, args.unit, "read back via NBD")
    except Fail as e:
        log(str(e))
        sys.exit(1)
    h.flush()
    h.shutdown()
    for ri, g in actual.items():
        a, b, _ = shared[ri]
        model.put(a, g)
    with open(args.model, "wb") as f:
        pickle.dump({"windows": model.windows, "data": model.data,
                     "shared": shared, "candidates": candidates,
                     "unit": args.unit, "segs": segs}, f)
    log("OK (%.1fs)" % (time.time() - t0))


def cmd_verify(args):
    with open(args.model, "rb") as f:
        m = pickle.load(f)
    windows, data = m["windows"], m["data"]
    # The windows: exactly what the server served at the end.
    with open(args.raw, "rb") as f:
        def read(o, n):
            f.seek(o)
            b = f.read(n)
            return b + bytes(n - len(b))

        model = Model.__new__(Model)
        model.windows, model.data = windows, data
        try:
            check_windows(read, model, [], {}, m["unit"], args.raw)
        except Fail as e:
            log(str(e))
            sys.exit(1)
    # The rest: as before.
    chunk = 4 << 20
    size = os.path.getsize(args.raw)
    with open(args.raw, "rb") as fa, open(args.initial, "rb") as fb:
        off = 0
        while off < size:
            n = min(chunk, size - off)
            fa.seek(off)
            fb.seek(off)
            a = fa.read(n)
            b = fb.read(n)
            b += bytes(len(a) - len(b))
            for ws, wl in windows:       # mask the windows
                lo, hi = max(ws, off), min(ws + wl, off + n)
                if lo < hi:
                    a = a[:lo - off] + bytes(hi - lo) + a[hi - off:]
                    b = b[:lo - off] + bytes(hi - lo) + b[hi - off:]
            if a != b:
                d = first_diff(a, b)
                log("%s: offset %d outside the windows changed (got %02x, "
                    "was %02x)" % (args.raw, off + d, a[d], b[d]))
                sys.exit(1)
            off += n
    log("%s matches the model" % args.raw)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--uri", required=True)
    r.add_argument("--snap-uri")
    r.add_argument("--snap-raw")
    r.add_argument("--initial", required=True)
    r.add_argument("--windows", required=True)
    r.add_argument("--cluster-size", type=int, required=True)
    r.add_argument("--unit", type=int, required=True)
    r.add_argument("--model", required=True)
    r.add_argument("--workers", type=int, default=6)
    r.add_argument("--depth", type=int, default=12)
    r.add_argument("--ops", type=int, default=500)
    r.add_argument("--shared", type=int, default=24)
    r.add_argument("--shared-ops", type=int, default=600)
    r.add_argument("--duel-rounds", type=int, default=600)
    r.add_argument("--storm-rounds", type=int, default=12)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--timeout", type=float, default=600)
    v = sub.add_parser("verify")
    v.add_argument("--model", required=True)
    v.add_argument("--raw", required=True)
    v.add_argument("--initial", required=True)
    args = ap.parse_args()
    if args.cmd == "run":
        cmd_run(args)
    else:
        cmd_verify(args)


if __name__ == "__main__":
    main()
