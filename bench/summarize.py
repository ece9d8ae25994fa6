#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Turn bench/run.sh's runs.tsv into the results table.

usage: summarize.py RESULTS-DIR SAMPLE-BYTES

runs.tsv lines: case  server  rep  value  work  cpu-s  peak-RSS-kB
(value: MB/s or IOPS, NA for a failed run; for the *-size cases, bytes;
for j-ready, j-write1, j-first, milliseconds; work: bytes copied or
requests done; cpu-s: the server's CPU seconds).
Each cell is the median over the repetitions; RSS is the largest peak.
"""
import os
import re
import statistics
import sys

resdir, sample = sys.argv[1], int(sys.argv[2])

info = {}
with open(os.path.join(resdir, "info.txt")) as f:
    for line in f:
        for k, v in re.findall(r"(\w+)=(\S+)", line):
            info[k] = v


def mib(n):
    n = int(n)
    return "%d GiB" % (n >> 30) if n >= 1 << 30 else "%d MiB" % (n >> 20)


qd = info.get("QD", "32")
runtime = info.get("runtime", "?")
seq, rnd = mib(info["SEQ"]), mib(info["RND"])
allocvs = mib(info["ALLOC_VS"])
alloc_n = int(info["ALLOC_IO"]) // 4096
cow_n = int(info["COW_IO"]) // 4096
smp = mib(sample)
luks = mib(info["LUKS"]) if "LUKS" in info else "?"
delay = info.get("REMOTE_DELAY", "2ms")

# case, label, unit, name of the "qemu" column's server(s)
ROWS = [
    ("a-seqread", f"(a) seq read {seq} (nbdcopy)", "MB/s", "qemu-nbd"),
    ("b-randread", f"(b) 4k rand read qd{qd} {rnd} ({runtime}s)", "IOPS",
     "qemu-nbd"),
    ("c-randwrite-alloc",
     f"(c) 4k rand write qd{qd}, empty {allocvs} ({alloc_n} writes)",
     "IOPS", "qemu-nbd"),
    ("d-randwrite-over", f"(d) 4k rand write qd{qd}, allocated {rnd} "
     f"({runtime}s)", "IOPS", "qemu-nbd"),
    ("e-seqwrite-new", f"(e) seq write {seq} into a new image (nbdcopy)",
     "MB/s", "qemu-nbd"),
    ("f-cow-xl2-off", f"(f) 4k rand write over backing, 64k clusters "
     f"({cow_n} writes)", "IOPS", "qemu-nbd"),
    ("f-cow-xl2-on", "(f) same, extended L2", "IOPS", "qemu-nbd"),
    ("g-randread-smallcache", f"(g) 4k rand read qd{qd} {rnd}, "
     f"L2 cache {info.get('SMALL_CACHE', '?')} ({runtime}s)", "IOPS",
     "qemu-nbd"),
    ("h-zlib-write", f"(h) compressed write zlib, {smp} sample", "MB/s",
     "qemu-nbd+compress"),
    ("h-zlib-write", "(h)   zlib, vs qemu-img convert -c", "MB/s",
     "qemu-img"),
    ("h-zlibfast-write", "(h)   zlib compress-level=fast (ISA-L), vs "
     "qemu-img convert -c (zlib)", "MB/s", "qemu-img@h-zlib-write"),
    ("h-zstd-write", f"(h) compressed write zstd, {smp} sample", "MB/s",
     "qemu-nbd+compress"),
    ("h-zstd-write", "(h)   zstd, vs qemu-img convert -c", "MB/s",
     "qemu-img"),
    ("h-zlib-read", f"(h) read zlib-compressed {smp} (nbdcopy)", "MB/s",
     "qemu-nbd"),
    ("h-zstd-read", f"(h) read zstd-compressed {smp} (nbdcopy)", "MB/s",
     "qemu-nbd"),
    ("i-luks-seqread", f"(i) LUKS seq read {luks} (nbdcopy)", "MB/s",
     "qemu-nbd"),
    ("i-luks-seqwrite", f"(i) LUKS seq write {luks} into a new image "
     "(nbdcopy)", "MB/s", "qemu-nbd"),
    ("k-plain", f"(k) raw {seq} to qcow2: qcow2enc + nbdcopy to a file, "
     "vs qemu-img convert", "MB/s", "qemu-img"),
    ("k-pipe", "(k)   qcow2enc + nbdcopy to a pipe, vs qemu-img convert",
     "MB/s", "qemu-img"),
    ("k-zlib", f"(k) {smp} sample to compressed qcow2, zlib: qcow2enc, "
     "vs qemu-img convert -c", "MB/s", "qemu-img"),
    ("k-zlibfast", "(k)   zlib compress-level=fast (ISA-L), vs "
     "qemu-img convert -c (zlib)", "MB/s", "qemu-img@k-zlib"),
    ("k-zstd", "(k)   zstd, vs qemu-img convert -c", "MB/s", "qemu-img"),
    ("l-randwrite-bitmap", f"(l) 4k rand write qd{qd}, allocated {rnd}, "
     "one enabled bitmap", "IOPS", "qemu-nbd"),
    ("l-randwrite-bitmap", "(l)   ours with the bitmap vs ours without",
     "IOPS", "ours-nobm"),
    ("m-zlib-remote", f"(m) zlib {smp} image over curl (nginx, loopback); "
     "raw: the file's bytes", "MB/s", "qemu-img"),
    ("m-zlib-remote-delay", f"(m)   same, {delay} per read below",
     "MB/s", "qemu-img"),
    ("m-plain-remote", f"(m) plain {smp} image over curl; raw: the "
     "file's bytes", "MB/s", "qemu-img"),
    ("m-plain-remote-delay", f"(m)   same, {delay} per read below",
     "MB/s", "qemu-img"),
]
# runs.tsv server names for each column
QEMU_SERVER = {"qemu-nbd": ("qemu", "qemu-opts", "qemu-luks"),
               "qemu-nbd+compress": ("qemu-opts",),
               "qemu-img": ("qemu-img",),
               "ours-nobm": ("ours-nobm",)}

vals, rss, cost = {}, {}, {}
with open(os.path.join(resdir, "runs.tsv")) as f:
    for line in f:
        case, server, rep, value, work, cpu, r = \
            line.rstrip("\n").split("\t")
        vals.setdefault((case, server), [])
        if value != "NA":
            vals[(case, server)].append(float(value))
        if r != "NA":
            rss[(case, server)] = max(rss.get((case, server), 0), int(r))
        if "NA" not in (value, work, cpu) and float(work) > 0:
            cost.setdefault((case, server), []).append(float(cpu) /
                                                        float(work))


def med(case, servers):
    for s in servers:
        if vals.get((case, s)):
            return statistics.median(vals[(case, s)]), s
    return None, None


def fmt(v, unit):
    if v is None:
        return "-"
    return "%.0f" % v if unit == "IOPS" or v >= 100 else "%.1f" % v


def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"


def cpu_cost(case, s, unit):
    """Server CPU per request (us) or per GB (s), median; as text."""
    c = cost.get((case, s)) if s else None
    if not c:
        return None, "-"
    v = statistics.median(c) * (1e6 if unit == "IOPS" else 1e9)
    return v, ("%.1f" % v if v < 100 else "%.0f" % v)


def fmt_rss(case, s):
    r = rss.get((case, s)) if s else None
    return "%.0f" % (r / 1024) if r else "-"


hdr = ["workload", "unit", "ours", "qemu", "qemu 10", "raw", "ours/qemu",
       "ours/qemu10", "ours/raw"]
hdr2 = ["workload", "server CPU", "ours", "qemu", "qemu 10", "raw",
        "ours/qemu", "ours/qemu10", "RSS ours", "RSS qemu", "RSS qemu 10",
        "RSS raw"]
table, table2 = [], []
for case, label, unit, qcol in ROWS:
    if not any(k[0] == case for k in vals):
        continue
    o, os_ = med(case, ("ours", "ours-cmd"))
    qcase = case
    if "@" in qcol:             # compared with another case's qemu
        qcol, qcase = qcol.split("@")
    q, qs = med(qcase, QEMU_SERVER[qcol])
    q10, q10s = med(qcase, tuple("q10-" + x for x in QEMU_SERVER[qcol]))
    r, rs = med(case, ("raw", "raw-cmd"))
    label = label if qcol in ("qemu-nbd",) or "vs" in label else \
        label + " [qemu: " + qcol + "]"
    table.append([label, unit, fmt(o, unit), fmt(q, unit), fmt(q10, unit),
                  fmt(r, unit), ratio(o, q), ratio(o, q10), ratio(o, r)])
    co, cos = cpu_cost(case, os_, unit)
    cq, cqs = cpu_cost(case, qs, unit)
    cq10, cq10s = cpu_cost(case, q10s, unit)
    _, crs = cpu_cost(case, rs if r else None, unit)
    table2.append([label, "us/req" if unit == "IOPS" else "s/GB", cos, cqs,
                   cq10s, crs, ratio(co, cq), ratio(co, cq10),
                   fmt_rss(case, os_), fmt_rss(case, qs),
                   fmt_rss(case, q10s), fmt_rss(case, rs if r else None)])

nreps = max((len(v) for v in vals.values()), default=0)


def show(hdr, table):
    widths = [max(len(str(row[i])) for row in [hdr] + table)
              for i in range(len(hdr))]

    def line(row):
        cells = [str(c).ljust(widths[i]) if i == 0 else
                 str(c).rjust(widths[i]) for i, c in enumerate(row)]
        return "| " + " | ".join(cells) + " |"

    print(line(hdr))
    print("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                         for i, w in enumerate(widths)) + "|")
    for row in table:
        print(line(row))


if table:
    print()
    print("Throughput: medians of %d run(s); MB/s = 10^6 bytes/s; "
          "ratios > 1: ours faster." % nreps)
    print("qemu = qemu-nbd unless noted (the system's; qemu 10: "
          "bench/get-qemu10.sh); raw = nbdkit file")
    print("on the raw equivalent.  (k): MB/s = the sample's size over the "
          "time; raw = nbdkit curl")
    print("moving the image file's own bytes (ours/raw = the time of "
          "moving them over the time of decoding).")
    print()
    show(hdr, table)
    print()
    print("Server cost: CPU time of the server process (all threads) per "
          "request (us/req) or")
    print("per GB copied (s/GB), median; ratio < 1: ours cheaper.  RSS: "
          "peak resident set")
    print("(VmHWM) of the server, MiB, largest over the runs (qemu-img: its "
          "own peak).")
    print()
    show(hdr2, table2)

# (j): the overlap checks on and off, ours and qemu-nbd's.
J_SERVERS = ("ours", "ours-off", "qemu", "qemu-all", "q10-qemu",
             "q10-qemu-all")
if any(k[0].startswith("j-") for k in vals):
    jvs = mib(info.get("J_VS", 0))
    jreg = mib(info.get("J_REGION", 0))
    jsn = info.get("J_SNAPS", "?")
    JROWS = [
        ("j-first", "(j) time to the first write: server launch to "
         "4k pwrite+flush done", "ms"),
        ("j-ready", "(j)   of which launch to connected (open, "
         "handshake)", "ms"),
        ("j-write1", "(j)   of which the pwrite+flush", "ms"),
        ("j-randwrite", f"(j) then 4k rand write qd{qd} in {jreg} "
         f"({runtime}s)", "IOPS"),
    ]
    jt, jt2 = [], []
    for case, label, unit in JROWS:
        m = {s: med(case, (s,))[0] for s in J_SERVERS}
        jt.append([label, unit] + [fmt(m[s], unit) for s in J_SERVERS] +
                  [ratio(m["ours"], m["ours-off"]),
                   ratio(m["ours"], m["qemu"]),
                   ratio(m["ours"], m["qemu-all"]),
                   ratio(m["ours"], m["q10-qemu"]),
                   ratio(m["ours"], m["q10-qemu-all"])])
    for case, label, what, scale, f in (
            ("j-first", "(j) CPU from launch to the first write done",
             "ms", 1e3, "%.0f"),
            ("j-randwrite", "(j) CPU per random write", "us/req", 1e6,
             "%.1f")):
        row = [label, what]
        for s in J_SERVERS:
            c = cost.get((case, s))
            row.append(f % (statistics.median(c) * scale) if c else "-")
        jt2.append(row)
    print()
    print("(j) %s disk, %s internal snapshots (64 KiB clusters): "
          "medians of %d run(s)." % (jvs, jsn, nreps))
    print("on/off: our overlap-check=on (the default) and off; qemu: "
          "qemu-nbd default")
    print("(overlap-check=cached); qemu-all: overlap-check=all.  "
          "Ratios are ours (on) / the")
    print("other: for ms, < 1 means ours is quicker; for IOPS, > 1 "
          "means ours is faster.")
    print()
    show(["workload", "unit", "ours on", "ours off", "qemu",
          "qemu-all", "qemu10", "qemu10-all", "on/off", "on/qemu",
          "on/qemu-all", "on/qemu10", "on/qemu10-all"], jt)
    print()
    print("Server CPU time, median (from /proc: 10 ms steps), and peak "
          "RSS:")
    print()
    jt2.append(["(j) peak RSS (VmHWM at the end, largest)", "MiB"] +
               [fmt_rss("j-randwrite", s) for s in J_SERVERS])
    show(["workload", "unit", "ours on", "ours off", "qemu", "qemu-all",
          "qemu10", "qemu10-all"], jt2)

# Compressed sizes.
sizes = []
for c in ("zlib", "zlibfast", "zstd"):
    for s, name in (("ours", "ours (nbdcopy, compress=%s)" % c),
                    ("qemu", "qemu-nbd + compress filter"),
                    ("qemu-img", "qemu-img convert -c"),
                    ("q10-qemu", "qemu-nbd 10 + compress filter"),
                    ("q10-qemu-img", "qemu-img 10 convert -c")):
        v, _ = med("h-%s-write-size" % c, (s,))
        if v:
            sizes.append((c, name, v))
if sizes:
    print()
    print("Compressed images of the %s sample (%d bytes): file size, "
          "sample/size" % (smp, sample))
    print()
    print("| type | writer | bytes | ratio |")
    print("|---|---|---:|---:|")
    for c, name, v in sizes:
        print("| %s | %s | %d | %.2f |" % (c, name, v, sample / v))

# (k): the qcow2 files of qcow2enc and qemu-img convert.
ksizes = []
for c in ("plain", "pipe", "zlib", "zlibfast", "zstd"):
    o, _ = med("k-%s-size" % c, ("ours",))
    q, _ = med("k-%s-size" % ("zlib" if c == "zlibfast" else c),
               ("qemu-img",))
    if o and q:
        ksizes.append((c, o, q))
if ksizes:
    print()
    print("(k) qcow2 file sizes: qcow2enc (nbdcopy) and qemu-img convert")
    print()
    print("| case | qcow2enc bytes | qemu-img bytes | qcow2enc/qemu-img |")
    print("|---|---:|---:|---:|")
    for c, o, q in ksizes:
        print("| %s | %d | %d | %.3f |" % (c, o, q, o / q))

print()
with open(os.path.join(resdir, "info.txt")) as f:
    sys.stdout.write(f.read())
