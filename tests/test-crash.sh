#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash consistency: kill nbdkit qcow2 with SIGKILL in the middle of a
# random workload, then check that
#
#   1. qemu-img check finds no corruption (leaks are allowed);
#   2. everything written before the last completed flush reads back
#      through qemu as it was (bytes touched after that flush may hold
#      their flushed value or any value written to them later);
#   3. the plugin opens the crashed image again, reads it as qemu does,
#      writes to it and, after a clean shutdown, leaves no new leaks and
#      exactly the data it was given.
#
# Each round varies the image (cluster sizes, 64-bit refcounts whose
# table has to grow, extended L2 entries, a backing file, internal
# snapshots, compressed clusters, v2, lazy refcounts), the queue depth
# and when the kill happens (after a random delay, right after issuing
# a random request, or during a flush).
#
# A kill leaves the page cache intact, so this sees the image as it is
# after some prefix of the plugin's system calls; reordered or lost
# unflushed writes (a power cut) are covered by the crash-replay unit
# test (unit/test-crash-replay.c).
#
# Environment: CRASH_ROUNDS (default 48), CRASH_SEED (default 20240611),
# CRASH_TIME (seconds; no new round starts after it, default 95),
# CRASH_KEEP=DIR (copy the files of a failed round there).
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'
requires "$NBDKIT" --version
requires timeout --version

rounds=${CRASH_ROUNDS:-48}
seed=${CRASH_SEED:-20240611}
budget=${CRASH_TIME:-95}

py="$tmpdir/crash.py"
cat >"$py" <<'EOF'
# Helper of test-crash.sh: the writer (phase 1, killed), the checker and
# the clean-session writer (phase 2).
import argparse
import array
import base64
import json
import os
import random
import signal
import sys
import threading
import time
import zlib

import nbd

MAX_REQ = 1 << 20


def pattern(salt, seq, off, length):
    """The bytes written by request seq at guest [off, off+length): each
    aligned 8-byte word is salt:8 seq:16 word-index:40 (little endian),
    so any word read back tells who wrote it and for which offset."""
    a = off >> 3
    b = (off + length + 7) >> 3
    hi = (salt << 56) | ((seq & 0xffff) << 40)
    arr = array.array('Q', [hi | w for w in range(a, b)])
    if sys.byteorder != 'little':
        arr.byteswap()
    s = off - (a << 3)
    return arr.tobytes()[s:s + length]


def describe(word_bytes):
    w = int.from_bytes(word_bytes, 'little')
    return "salt=%d seq=%d word@0x%x" % (w >> 56, (w >> 40) & 0xffff,
                                         (w & ((1 << 40) - 1)) << 3)


class Picker:
    """Random request ranges for an image with the given cluster size."""

    def __init__(self, rng, size, cs):
        self.rng, self.size, self.cs = rng, size, cs
        n = max(1, size // cs)
        # A few hot clusters get rewritten, partially written, zeroed
        # and trimmed over and over.
        self.hot = [rng.randrange(n) * cs for _ in range(8)]

    def pick(self):
        rng, cs, size = self.rng, self.cs, self.size
        maxlen = min(size, 256 * 1024, max(16 * cs, 8192))
        r = rng.random()
        if r < 0.35:
            length = rng.choice([cs, 2 * cs, 3 * cs, cs // 2, 512, 4096])
        elif r < 0.6:
            length = rng.randint(1, 3 * cs)
        else:
            length = rng.randint(1, maxlen)
        length = max(1, min(length, maxlen, size))
        if rng.random() < 0.3:
            base = rng.choice(self.hot)
            off = base + rng.choice([0, 0, rng.randrange(cs)])
        elif rng.random() < 0.5:
            off = rng.randrange(0, size // cs) * cs
        else:
            off = rng.randrange(0, size)
        if rng.random() < 0.3:
            off &= ~511
        off = min(off, size - length)
        return off, length


def read_all(h, size):
    out = bytearray()
    off = 0
    while off < size:
        n = min(4 << 20, size - off)
        out += h.pread(n, off)
        off += n
    return out


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(0, n, 65536):
        if a[i:i + 65536] != b[i:i + 65536]:
            for j in range(i, min(i + 65536, n)):
                if a[j] != b[j]:
                    return j
    return None if len(a) == len(b) else n


# ------------------------------------------------------------- phase 1

def cmd_write(a):
    rng = random.Random(a.seed)
    h = nbd.NBD()
    h.connect_uri(a.uri)
    size = h.get_size()
    can_trim, can_zero = h.can_trim(), h.can_zero()
    can_fua, can_flush = h.can_fua(), h.can_flush()
    if not can_flush:
        sys.exit("server cannot flush")
    jf = open(a.journal, 'w')

    def log(rec):
        jf.write(json.dumps(rec, separators=(',', ':')) + '\n')

    killed = threading.Event()

    def kill(why):
        if not killed.is_set():
            killed.set()
            log({"k": "K", "why": why})
            os.kill(a.pid, signal.SIGKILL)

    picker = Picker(rng, size, a.cluster)
    qd = a.qd
    mode = a.kill_mode
    kill_op = rng.randrange(5, 400) if mode == 'op' else None
    kill_flush = rng.randrange(1, 6) if mode == 'flush' else None
    if mode == 'time':
        t = threading.Timer(rng.uniform(a.tmin, a.tmax), kill, ["timer"])
        t.daemon = True
        t.start()

    inflight = {}               # cookie -> (off, end, seq, fua)
    stats = {"ops": 0, "writes": 0, "zeros": 0, "trims": 0, "flushes": 0,
             "fua": 0}

    def reap(block):
        while True:
            done = False
            for c in list(inflight):
                if h.aio_command_completed(c):
                    if inflight[c][3]:
                        # A FUA write is durable once it completes.
                        log({"k": "C", "s": inflight[c][2]})
                    del inflight[c]
                    done = True
            if done or not block or not inflight:
                return
            h.poll(-1)

    def drain():
        while inflight:
            reap(True)

    def overlaps(off, end):
        return any(o < end and off < e for o, e, _, _ in inflight.values())

    seq = 0
    flushes_done = 0
    err = None
    try:
        while seq < a.nops and not killed.is_set():
            r = rng.random()
            if r < 0.07:
                # Flush: everything issued before has completed (so the
                # journal up to the F record is what the flush covers).
                drain()
                seq += 1
                log({"k": "f", "s": seq})
                c = h.aio_flush()
                if kill_flush is not None and flushes_done + 1 == kill_flush:
                    time.sleep(rng.choice([0, 0, 0.0002, 0.001, 0.003]))
                    kill("during flush %d" % kill_flush)
                while not h.aio_command_completed(c):
                    h.poll(-1)
                flushes_done += 1
                stats["flushes"] += 1
                log({"k": "F", "s": seq})
                jf.flush()
                os.fsync(jf.fileno())
                continue
            off, length = picker.pick()
            tries = 0
            while overlaps(off, off + length):
                tries += 1
                if tries > 8:
                    reap(True)
                    tries = 0
                off, length = picker.pick()
            if len(inflight) >= qd:
                reap(True)
            seq += 1
            stats["ops"] += 1
            if r < 0.72 or (r < 0.87 and not can_zero) or not can_trim:
                fua = can_fua and rng.random() < 0.05
                log({"k": "w", "s": seq, "o": off, "l": length,
                     "fua": int(fua)})
                buf = nbd.Buffer.from_bytearray(
                    bytearray(pattern(a.salt, seq, off, length)))
                c = h.aio_pwrite(buf, off,
                                 flags=nbd.CMD_FLAG_FUA if fua else 0)
                inflight[c] = (off, off + length, seq, fua)
                stats["writes"] += 1
                stats["fua"] += fua
            elif r < 0.87:
                flags = nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0
                log({"k": "z", "s": seq, "o": off, "l": length})
                c = h.aio_zero(length, off, flags=flags)
                inflight[c] = (off, off + length, seq, False)
                stats["zeros"] += 1
            else:
                # Trim: what a trimmed range reads as is up to the
                # server, so record what it reads as afterwards.
                drain()
                log({"k": "t", "s": seq, "o": off, "l": length})
                h.trim(length, off)
                data = h.pread(length, off)
                log({"k": "tr", "s": seq,
                     "d": base64.b64encode(zlib.compress(data)).decode()})
                stats["trims"] += 1
            if kill_op is not None and seq >= kill_op:
                time.sleep(rng.choice([0, 0, 0.0001, 0.0005, 0.002]))
                kill("after request %d" % seq)
        if not killed.is_set():
            # Out of requests: kill with whatever is still in flight.
            kill("at the end of the workload")
        try:
            drain()
        except nbd.Error:
            pass
    except nbd.Error as e:
        if not killed.is_set():
            err = e
    finally:
        jf.flush()
        os.fsync(jf.fileno())
        jf.close()
    if err is not None:
        print("FAIL: request failed before the kill: %s" % err,
              file=sys.stderr)
        sys.exit(1)
    stats["flushes_done"] = flushes_done
    print(json.dumps(stats))


# ------------------------------------------------------------- checker

def cmd_verify(a):
    with open(a.initial, 'rb') as f:
        flushed = bytearray(f.read())
    with open(a.actual, 'rb') as f:
        actual = f.read()
    size = len(flushed)
    if len(actual) != size:
        print("FAIL: qemu reads %d bytes, expected %d" % (len(actual), size))
        sys.exit(1)
    recs = []
    with open(a.journal) as f:
        for line in f:
            try:
                recs.append(json.loads(line))
            except ValueError:
                break
    last_f = -1
    for i, r in enumerate(recs):
        if r["k"] == "F":
            last_f = i
    nflushed = 0
    for r in recs[:last_f + 1]:
        k = r["k"]
        if k == "w":
            flushed[r["o"]:r["o"] + r["l"]] = pattern(a.salt, r["s"],
                                                      r["o"], r["l"])
            nflushed += 1
        elif k == "z":
            flushed[r["o"]:r["o"] + r["l"]] = bytes(r["l"])
            nflushed += 1
        elif k == "tr":
            d = zlib.decompress(base64.b64decode(r["d"]))
            t = [x for x in recs if x["k"] == "t" and x["s"] == r["s"]][0]
            flushed[t["o"]:t["o"] + t["l"]] = d
            nflushed += 1
    # Requests after the last flush may or may not have reached the
    # disk, except that a completed FUA write has: from its completion
    # on, its range holds its data or that of a request issued later.
    later = []
    by_seq = {}
    nfua = 0
    for r in recs[last_f + 1:]:
        k = r["k"]
        if k in ("w", "z", "t"):
            r = dict(r, lo=r["o"], hi=r["o"] + r["l"])
            later.append(r)
            by_seq[r["s"]] = r
        elif k == "C":
            j = by_seq[r["s"]]
            o, e = j["o"], j["o"] + j["l"]
            flushed[o:e] = pattern(a.salt, j["s"], o, j["l"])
            nfua += 1
            kept = []
            for x in later:
                if x["lo"] < e and o < x["hi"]:
                    if x["lo"] < o:
                        kept.append(dict(x, hi=o))
                    if x["hi"] > e:
                        kept.append(dict(x, lo=e))
                else:
                    kept.append(x)
            later = kept

    def content(r, off, length):
        if r["k"] == "w":
            return pattern(a.salt, r["s"], off, length)
        return bytes(length)    # zero; a trim may also leave zeros

    bad = []
    changed = 0
    CH = 65536
    for c in range(0, size, CH):
        if actual[c:c + CH] == flushed[c:c + CH]:
            continue
        for s in range(c, min(c + CH, size), 512):
            e = min(s + 512, size)
            act = actual[s:e]
            fl = flushed[s:e]
            if act == fl:
                continue
            cov = [r for r in later if r["lo"] < e and r["hi"] > s]
            ok = False
            for r in cov:
                if r["lo"] <= s and r["hi"] >= e and \
                   content(r, s, e - s) == act:
                    ok = True
                    break
            if not ok:
                cands = [(r["lo"], r["hi"],
                          content(r, max(s, r["lo"]),
                                  min(e, r["hi"]) - max(s, r["lo"])))
                         for r in cov]
                ok = True
                for j in range(s, e):
                    if act[j - s] == fl[j - s]:
                        continue
                    if any(o <= j < oe and d[j - max(s, o)] == act[j - s]
                           for o, oe, d in cands):
                        continue
                    ok = False
                    bad.append(j)
                    break
            if ok:
                changed += 1
            elif len(bad) >= 20:
                break
        if len(bad) >= 20:
            break
    summary = {"flushed_ops": nflushed, "fua_completed_later": nfua,
               "later_ops": len(set(r["s"] for r in later)),
               "later_sectors_persisted": changed,
               "flushes": sum(1 for r in recs if r["k"] == "F"),
               "kill": next((r["why"] for r in recs if r["k"] == "K"), "?")}
    if bad:
        print("FAIL: %d+ sectors read back wrong (flushed data lost or "
              "garbage)" % len(bad))
        for j in bad[:8]:
            w = j & ~7
            cov = [r for r in later if r["lo"] <= j < r["hi"]]
            print("  guest offset 0x%x: expected %s [%s], read %s [%s]; "
                  "later requests covering it: %s" % (
                      j, flushed[w:w + 8].hex(), describe(flushed[w:w + 8]),
                      actual[w:w + 8].hex(), describe(actual[w:w + 8]),
                      [(r["k"], r["s"]) for r in cov] or "none"))
        print("  " + json.dumps(summary))
        sys.exit(1)
    print(json.dumps(summary))


# ------------------------------------------------------------- phase 2

def cmd_clean(a):
    rng = random.Random(a.seed)
    h = nbd.NBD()
    h.connect_uri(a.uri)
    size = h.get_size()
    with open(a.expect, 'rb') as f:
        model = bytearray(f.read())
    disk = read_all(h, size)
    d = first_diff(disk, model)
    if d is not None:
        w = d & ~7
        sys.exit("FAIL: the plugin reads the crashed image differently "
                 "from qemu at 0x%x: plugin %s, qemu %s" %
                 (d, disk[w:w + 8].hex(), model[w:w + 8].hex()))
    picker = Picker(rng, size, a.cluster)
    for seq in range(1, a.nops + 1):
        off, length = picker.pick()
        r = rng.random()
        if r < 0.7:
            data = pattern(a.salt, seq, off, length)
            h.pwrite(data, off)
            model[off:off + length] = data
        elif r < 0.85:
            h.zero(length, off)
            model[off:off + length] = bytes(length)
        elif r < 0.95 and h.can_trim():
            h.trim(length, off)
            model[off:off + length] = h.pread(length, off)
        else:
            h.flush()
    h.flush()
    disk = read_all(h, size)
    d = first_diff(disk, model)
    if d is not None:
        sys.exit("FAIL: after the clean session the plugin reads 0x%x "
                 "wrong" % d)
    h.shutdown()
    with open(a.out, 'wb') as f:
        f.write(model)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--uri", required=True)
    w.add_argument("--pid", type=int, required=True)
    w.add_argument("--journal", required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--salt", type=int, required=True)
    w.add_argument("--cluster", type=int, required=True)
    w.add_argument("--nops", type=int, default=4000)
    w.add_argument("--qd", type=int, default=1)
    w.add_argument("--kill-mode", default="time")
    w.add_argument("--tmin", type=float, default=0.05)
    w.add_argument("--tmax", type=float, default=0.6)
    v = sub.add_parser("verify")
    v.add_argument("--initial", required=True)
    v.add_argument("--actual", required=True)
    v.add_argument("--journal", required=True)
    v.add_argument("--salt", type=int, required=True)
    c = sub.add_parser("clean")
    c.add_argument("--uri", required=True)
    c.add_argument("--expect", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--salt", type=int, required=True)
    c.add_argument("--cluster", type=int, required=True)
    c.add_argument("--nops", type=int, default=100)
    a = p.parse_args()
    {"write": cmd_write, "verify": cmd_verify, "clean": cmd_clean}[a.cmd](a)


main()
EOF

# ------------------------------------------------------------ images

configs=(c64k c512-r64 extl2 backing snapshot c4k compressed
         c512-r64-snap extl2-backing v2 lazy c4k-r1)

# mkimg CONFIG DIR: create DIR/img.qcow2; print its cluster size.
mkimg ()
{
  local cfg="$1" d="$2" img="$2/img.qcow2"
  local q="qemu-img create -q -f qcow2"
  case "$cfg" in
    c64k)
      $q -o cluster_size=65536 "$img" 16M
      echo 65536 ;;
    c4k)
      $q -o cluster_size=4096 "$img" 16M
      qemu-io -f qcow2 -c 'write -P 0x11 1M 1M' "$img" >/dev/null
      echo 4096 ;;
    c4k-r1)
      $q -o cluster_size=4096,refcount_bits=1 "$img" 8M
      echo 4096 ;;
    c512-r64)
      # 64 refcounts per block, one 64-entry table cluster: the table
      # has to grow once the file passes 2 MiB.
      $q -o cluster_size=512,refcount_bits=64 "$img" 4M
      echo 512 ;;
    c512-r64-snap)
      $q -o cluster_size=512,refcount_bits=64 "$img" 4M
      qemu-io -f qcow2 -c 'write -P 0x21 0 1M' -c 'write -P 0x22 2M 512k' \
        "$img" >/dev/null
      qemu-img snapshot -c snap1 "$img"
      echo 512 ;;
    extl2)
      $q -o cluster_size=65536,extended_l2=on "$img" 16M
      echo 65536 ;;
    extl2-backing)
      $q -o cluster_size=32768 "$d/base.qcow2" 8M
      qemu-io -f qcow2 -c 'write -P 0x5a 0 3M' -c 'write -P 0xa5 5M 2M' \
        "$d/base.qcow2" >/dev/null
      $q -o cluster_size=32768,extended_l2=on -b base.qcow2 -F qcow2 \
        "$img" 8M
      echo 32768 ;;
    backing)
      $q -o cluster_size=65536 "$d/base.qcow2" 16M
      qemu-io -f qcow2 -c 'write -P 0x5a 0 5M' -c 'write -P 0xa5 9M 3M' \
        "$d/base.qcow2" >/dev/null
      $q -o cluster_size=65536 -b base.qcow2 -F qcow2 "$img" 16M
      echo 65536 ;;
    snapshot)
      $q -o cluster_size=4096 "$img" 16M
      qemu-io -f qcow2 -c 'write -P 0x31 0 4M' -c 'write -P 0x32 8M 2M' \
        "$img" >/dev/null
      qemu-img snapshot -c snap1 "$img"
      qemu-io -f qcow2 -c 'write -P 0x33 1M 1M' "$img" >/dev/null
      qemu-img snapshot -c snap2 "$img"
      echo 4096 ;;
    compressed)
      qemu-img create -q -f raw "$d/src.raw" 16M
      qemu-io -f raw -c 'write -P 0x41 0 6M' -c 'write -P 0x42 8M 4M' \
        "$d/src.raw" >/dev/null
      qemu-img convert -c -O qcow2 -o cluster_size=65536 "$d/src.raw" "$img"
      rm -f "$d/src.raw"
      echo 65536 ;;
    v2)
      $q -o compat=0.10,cluster_size=65536 "$img" 16M
      echo 65536 ;;
    lazy)
      $q -o cluster_size=65536,lazy_refcounts=on "$img" 16M
      echo 65536 ;;
    *) fail "unknown config $cfg" ;;
  esac
}

# check_img IMG OUT: qemu-img check; sets $ck_status, $ck_corrupt,
# $ck_leaks, $ck_errors (qemu leaves out the counts that are 0).
json_num () { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" "$2" | head -1; }
check_img ()
{
  ck_status=0
  qemu-img check --output=json "$1" >"$2" 2>"$2.err" || ck_status=$?
  ck_corrupt=$(json_num corruptions "$2")
  ck_leaks=$(json_num leaks "$2")
  ck_errors=$(json_num check-errors "$2")
  : "${ck_corrupt:=0}" "${ck_leaks:=0}" "${ck_errors:=no output}"
}

cur_pid=
kill_cur () { if [ -n "$cur_pid" ]; then kill -9 "$cur_pid" 2>/dev/null || :; fi; }
on_exit kill_cur

failures=0
total_ops=0 total_kills=0 total_flushes=0 total_persisted=0 total_leaky=0
declare -A cfg_rounds=()
kill_modes=(time op flush)
start=$SECONDS

round_fail ()
{
  echo "FAIL: round $r ($cfg, kill mode $mode, qd $qd, seed $rseed): $*" >&2
  failures=$((failures + 1))
  if [ -n "${CRASH_KEEP:-}" ]; then
    mkdir -p "$CRASH_KEEP"
    cp -r "$d" "$CRASH_KEEP/round$r" || :
    echo "  files kept in $CRASH_KEEP/round$r" >&2
  fi
}

echo "test-crash: seed $seed, up to $rounds rounds, ${budget}s budget"
for r in $(seq 1 "$rounds"); do
  if [ $((SECONDS - start)) -ge "$budget" ]; then
    echo "time budget reached after $((r - 1)) rounds"
    break
  fi
  cfg=${configs[$(( (r - 1) % ${#configs[@]} ))]}
  mode=${kill_modes[$(( ((r - 1) + (r - 1) / ${#configs[@]}) % 3 ))]}
  rseed=$((seed * 1000 + r))
  qd=$(( (rseed % 4 == 0) ? 1 : (rseed % 4 == 1) ? 2 : (rseed % 4 == 2) ? 4 : 8 ))
  salt1=$(( (r * 2) % 255 + 1 )) salt2=$(( (r * 2 + 1) % 255 + 1 ))
  d="$tmpdir/r$r"
  mkdir "$d"
  cs=$(mkimg "$cfg" "$d")
  img="$d/img.qcow2"
  qemu-img convert -O raw "$img" "$d/initial.raw"

  # Phase 1: a random workload, killed.
  sock="$d/sock"
  # (In a subshell that outlives it, so that bash does not report the
  # kill; the subshell records nbdkit's exit status.)
  ( st=0; "$NBDKIT" -f -U "$sock" -P "$d/pid" qcow2 "$img" \
      2>"$d/nbdkit.log" || st=$?; echo $st >"$d/nbdkit.status" ) \
    2>/dev/null &
  sub_pid=$!
  for i in $(seq 1 200); do
    [ -S "$sock" ] && [ -s "$d/pid" ] && break
    [ -e "$d/nbdkit.status" ] && break
    sleep 0.02
  done
  if ! [ -S "$sock" ] || ! [ -s "$d/pid" ]; then
    cat "$d/nbdkit.log" >&2
    fail "nbdkit did not start"
  fi
  cur_pid=$(cat "$d/pid")
  wstatus=0
  timeout 120 "$PYTHON" "$py" write --uri "$(nbd_uri "$sock")" \
    --pid "$cur_pid" --journal "$d/journal" --seed "$rseed" \
    --salt "$salt1" --cluster "$cs" --qd "$qd" --kill-mode "$mode" \
    >"$d/write.out" 2>"$d/write.err" || wstatus=$?
  # The writer kills nbdkit; if it failed before that, do it here.
  [ $wstatus -eq 0 ] || kill -9 "$cur_pid" 2>/dev/null || :
  wait "$sub_pid" || :
  cur_pid=
  nstatus=$(cat "$d/nbdkit.status")
  if [ $wstatus -ne 0 ]; then
    round_fail "the writer failed: $(cat "$d/write.err")"
    tail -5 "$d/nbdkit.log" >&2
    continue
  fi
  if [ $nstatus -ne 137 ]; then
    round_fail "nbdkit exited with status $nstatus, not by the kill"
    tail -5 "$d/nbdkit.log" >&2
    continue
  fi
  ops=$(json_num ops "$d/write.out")
  total_ops=$((total_ops + ops))
  total_kills=$((total_kills + 1))

  # The crashed image: no corruption, flushed data intact.
  check_img "$img" "$d/check1.json"
  if [ "$ck_corrupt" != 0 ] || [ "$ck_errors" != 0 ] ||
     { [ $ck_status -ne 0 ] && [ $ck_status -ne 3 ]; }; then
    round_fail "qemu-img check after the crash: status $ck_status," \
      "corruptions $ck_corrupt, check errors $ck_errors"
    qemu-img check "$img" 2>&1 | head -30 >&2 || :
    continue
  fi
  leaks1=$ck_leaks
  [ "$leaks1" -gt 0 ] && total_leaky=$((total_leaky + 1))
  if ! qemu-img convert -O raw "$img" "$d/actual.raw" 2>"$d/convert.err"; then
    round_fail "qemu-img convert failed: $(cat "$d/convert.err")"
    continue
  fi
  if ! "$PYTHON" "$py" verify --initial "$d/initial.raw" \
       --actual "$d/actual.raw" --journal "$d/journal" --salt "$salt1" \
       >"$d/verify.out" 2>&1; then
    round_fail "data check after the crash:"
    cat "$d/verify.out" >&2
    continue
  fi
  vsum=$(cat "$d/verify.out")
  pers=$(json_num later_sectors_persisted "$d/verify.out")
  nfl=$(json_num flushes "$d/verify.out")
  total_persisted=$((total_persisted + pers))
  total_flushes=$((total_flushes + nfl))

  # Phase 2: the plugin opens the crashed image, writes, shuts down.
  cstatus=0
  timeout 120 "$NBDKIT" -U - qcow2 "$img" \
    --run "'$PYTHON' '$py' clean --uri \"\$uri\" --expect '$d/actual.raw' \
           --out '$d/final.raw' --seed $((rseed + 7)) --salt $salt2 \
           --cluster $cs" \
    >"$d/clean.out" 2>&1 </dev/null || cstatus=$?
  if [ $cstatus -ne 0 ]; then
    round_fail "clean session on the crashed image failed (status" \
      "$cstatus): $(tail -5 "$d/clean.out")"
    continue
  fi
  check_img "$img" "$d/check2.json"
  if [ "$ck_corrupt" != 0 ] || [ "$ck_errors" != 0 ] ||
     { [ $ck_status -ne 0 ] && [ $ck_status -ne 3 ]; }; then
    round_fail "qemu-img check after the clean session: status" \
      "$ck_status, corruptions $ck_corrupt, check errors $ck_errors"
    qemu-img check "$img" 2>&1 | head -30 >&2 || :
    continue
  fi
  if [ "$ck_leaks" -gt "$leaks1" ]; then
    round_fail "the clean session leaked clusters: $leaks1 leaks after" \
      "the crash, $ck_leaks after a clean shutdown"
    continue
  fi
  leaks2=$ck_leaks
  qemu-img convert -O raw "$img" "$d/final-qemu.raw"
  if ! cmp "$d/final.raw" "$d/final-qemu.raw" >"$d/cmp.out" 2>&1; then
    round_fail "after the clean session qemu reads other data:" \
      "$(cat "$d/cmp.out")"
    continue
  fi
  # Leaks repaired, the image is clean.
  qemu-img check -q -r leaks "$img" >/dev/null 2>&1 || :
  check_img "$img" "$d/check3.json"
  if [ $ck_status -ne 0 ]; then
    round_fail "qemu-img check -r leaks did not leave a clean image" \
      "(status $ck_status)"
    continue
  fi
  cfg_rounds[$cfg]=$(( ${cfg_rounds[$cfg]:-0} + 1 ))
  printf 'round %2d %-14s kill=%-5s qd=%d ops=%-5s leaks=%s/%s %s\n' \
    "$r" "$cfg" "$mode" "$qd" "$ops" "$leaks1" "$leaks2" "$vsum"
  rm -rf "$d"
done

echo "summary: $total_kills kills, $total_ops requests, $total_flushes" \
  "completed flushes, $total_persisted unflushed sectors found persisted," \
  "$total_leaky crashed images with leaks, $failures failures," \
  "$((SECONDS - start))s"
for c in "${configs[@]}"; do
  printf '  %-14s %s rounds passed\n' "$c" "${cfg_rounds[$c]:-0}"
done
[ $failures -eq 0 ] || fail "$failures round(s) failed"
