#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# make-corpus.sh [OUTDIR]
#
# Seed inputs for the fuzz targets, made with qemu-img / qemu-io: small
# images (512-byte and 4 KiB clusters, one 16 KiB extended-L2 image),
# v2 and v3, compressed clusters (zlib, zstd), zero clusters, discards,
# internal snapshots, persistent bitmaps, odd refcount widths, lazy
# refcounts left dirty, metadata preallocation, a backing file name, a
# large virtual size over a small file.  No backing or data files are
# needed: the targets never open host files.
#
# OUTDIR (default: ./seeds) gets fuzz-open-read/ (the images) and
# fuzz-write/ (each image behind a few write scripts, in the format
# fuzz-write.c decodes).  The stored corpus (corpus/) is these seeds
# after fuzzing and `make merge`.

set -euo pipefail

out=${1:-seeds}
mkdir -p "$out/fuzz-open-read" "$out/fuzz-write"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

img () {                        # img NAME SIZE OPTIONS
  qemu-img create -q -f qcow2 -o "$3" "$1" "$2"
}
io () {                         # io NAME CMD...
  local name=$1 a=(); shift
  for c in "$@"; do a+=(-c "$c"); done
  qemu-io -f qcow2 "${a[@]}" "$name" >/dev/null
}
keep () { cp "$1" "$out/fuzz-open-read/$1"; }

# Standard content: aligned and unaligned writes, a cluster boundary
# straddle, zeros, a discard.
std () {                        # std NAME CLUSTER SIZE
  local c=$2 s=$3
  io "$1" "write -P 0x11 0 $c" "write -P 0x22 $((c + c / 2)) $c" \
     "write -P 0x33 $((4 * c + 100)) 1000" "write -z $((6 * c)) $((2 * c))" \
     "write -P 0x44 $((s - 1500)) 1500" "discard $((4 * c)) $c"
}

for cs in 512 4096; do
  for v in 0.10 1.1; do
    if [ $v = 0.10 ]; then n=v2-c$cs.qcow2; else n=v3-c$cs.qcow2; fi
    img "$n" 64K "compat=$v,cluster_size=$cs"
    std "$n" "$cs" 65536
    keep "$n"
  done
done

img empty-c512.qcow2 32K cluster_size=512; keep empty-c512.qcow2
img zero-size.qcow2 0 cluster_size=512; keep zero-size.qcow2

# Compressed clusters.
for ct in zlib zstd; do
  for cs in 512 4096; do
    n=comp-$ct-c$cs.qcow2
    img "$n" 64K "cluster_size=$cs,compression_type=$ct"
    io "$n" "write -c -P 0x61 0 $cs" "write -c -P 0x62 $((2 * cs)) $cs" \
       "write -c -P 0x63 $((3 * cs)) $cs" "write -P 0x64 $((5 * cs)) 300"
    keep "$n"
  done
done
img comp-v2.qcow2 32K compat=0.10,cluster_size=512
io comp-v2.qcow2 "write -c -P 0x71 0 512" "write -c -P 0x72 1024 1024"
keep comp-v2.qcow2

# Extended L2 entries (16 KiB clusters: the smallest allowed).
img extl2.qcow2 128K cluster_size=16K,extended_l2=on
io extl2.qcow2 "write -P 0x81 0 1024" "write -P 0x82 20000 3000" \
   "write -z 40000 6000" "write -c -P 0x83 65536 16384" \
   "write -P 0x84 100000 512"
keep extl2.qcow2

# Internal snapshots.
img snap-c512.qcow2 32K cluster_size=512
io snap-c512.qcow2 "write -P 0x91 0 4096"
qemu-img snapshot -c first snap-c512.qcow2
io snap-c512.qcow2 "write -P 0x92 1024 2048" "write -z 3072 1024"
qemu-img snapshot -c second snap-c512.qcow2
io snap-c512.qcow2 "write -P 0x93 8192 512"
keep snap-c512.qcow2
img snap-v2.qcow2 16K compat=0.10,cluster_size=512
io snap-v2.qcow2 "write -P 0x94 0 2048"
qemu-img snapshot -c s1 snap-v2.qcow2
io snap-v2.qcow2 "write -P 0x95 512 512"
keep snap-v2.qcow2

# Refcount widths.
for rb in 1 8 64; do
  n=rc$rb-c512.qcow2
  img "$n" 32K "cluster_size=512,refcount_bits=$rb"
  std "$n" 512 32768
  keep "$n"
done

# Lazy refcounts, left dirty (qemu-io killed after a flush).
img dirty-c512.qcow2 32K cluster_size=512,lazy_refcounts=on
bash -c 'qemu-io -f qcow2 -c "write -P 0xa1 0 3000" -c flush \
          -c "sigraise 9" dirty-c512.qcow2; exit 0' >/dev/null 2>&1
keep dirty-c512.qcow2

# Persistent bitmaps (the autoclear bit is cleared at the first write).
img bitmap-c512.qcow2 32K cluster_size=512
io bitmap-c512.qcow2 "write -P 0xb1 0 1024"
qemu-img bitmap --add bitmap-c512.qcow2 b0
io bitmap-c512.qcow2 "write -P 0xb2 4096 1024"
keep bitmap-c512.qcow2

# Metadata preallocation.
img prealloc-c512.qcow2 16K cluster_size=512,preallocation=metadata
io prealloc-c512.qcow2 "write -P 0xc1 1000 2000"
keep prealloc-c512.qcow2

# A backing file name (the targets give such images a memory backing
# device) and a v2 image with one.
qemu-img create -q -f raw base.raw 64K
img backed-c512.qcow2 64K cluster_size=512,backing_file=base.raw,backing_fmt=raw
io backed-c512.qcow2 "write -P 0xd1 1000 2000" "write -z 8192 1024"
keep backed-c512.qcow2
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 \
  -b base.raw -F raw backed-v2.qcow2 64K
io backed-v2.qcow2 "write -P 0xd2 512 512"
keep backed-v2.qcow2

# A large virtual size over a small file (reads are bounded).
img big-c4k.qcow2 1G cluster_size=4096
io big-c4k.qcow2 "write -P 0xe1 0 4096" "write -P 0xe2 1000M 8192"
keep big-c4k.qcow2

# ------------------------------------------------------ write scripts
#
# fuzz-write input: [L][config][ops (6 bytes each)...][image], L = the
# number of script bytes after it (config + ops).  See fuzz-write.c.
python3 - "$out" <<'PYEOF'
import os, struct, sys
out = sys.argv[1]
src = os.path.join(out, "fuzz-open-read")

def op(kind, off, length, flags=0):
    # kind: 0 write 1 write+FUA 2 zero 3 zero+MAY_TRIM 4 trim 5 flush
    #       (with flag 0x80: a snapshot operation, 0x10/0x20/0x30 pick
    #       which; the length's last byte picks the snapshot)
    #       6 zero+FAST_ZERO 7 read-compare
    # off in 512-byte units (24 bits), length in 512-byte units - 1
    return bytes([kind | flags]) + struct.pack(">I", off)[1:] + \
        struct.pack(">H", length - 1)

scripts = {
    # config byte: bits 0-1 compress (2 zlib, 3 zstd), bit 2 tiny cache,
    # bit 3 no backing device, bits 4-7 slack in 16 KiB units
    "alloc": bytes([0xf0]) + op(0, 0, 4) + op(0, 17, 9) + op(5, 0, 1) +
             op(2, 2, 3) + op(3, 0, 2) + op(4, 16, 8) + op(0, 40, 1) +
             op(7, 0, 64),
    "unaligned": bytes([0x80]) + op(0, 3, 100, 0x08) + op(2, 5, 1500, 0x08) +
             op(0, 1, 1, 0x08) + op(1, 30, 2) + op(7, 0, 200, 0x08),
    "compress": bytes([0xf2]) + op(0, 0, 8) + op(0, 16, 8, 0x40) +
             op(3, 0, 8) + op(0, 32, 3) + op(5, 0, 1),
    "trim": bytes([0x44]) + op(4, 0, 64) + op(6, 0, 64) + op(0, 8, 1) +
             op(3, 8, 64) + op(7, 0, 64),
    "enospc": bytes([0x00]) + op(0, 0, 128) + op(0, 200, 64) + op(2, 0, 64),
    # internal snapshots before the first write: create, apply the
    # first, delete the second, create one with an existing name
    "snapshots": bytes([0x70]) + op(5, 0, 1, 0x80) + op(5, 0, 1, 0xa0) +
             op(5, 0, 2, 0x90) + op(5, 0, 1, 0xb0) + op(0, 0, 8) +
             op(7, 0, 64),
}
for name in sorted(os.listdir(src)):
    image = open(os.path.join(src, name), "rb").read()
    for sname, s in scripts.items():
        if ("comp" in name) != (sname == "compress") and sname == "compress":
            continue
        if sname == "snapshots" and not any(
                k in name for k in ("snap", "v3-c512", "rc1", "bitmap")):
            continue
        if "zstd" in name and sname == "compress":
            s = bytes([0xf3]) + s[1:]
        assert len(s) < 256
        base = name.replace(".qcow2", "")
        open(os.path.join(out, "fuzz-write", base + "-" + sname), "wb").write(
            bytes([len(s)]) + s + image)
PYEOF
ls "$out"/fuzz-open-read | wc -l
du -sh "$out"/*
