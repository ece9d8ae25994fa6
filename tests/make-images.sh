#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# make-images.sh DIR
#
# Create a matrix of small qcow2 images (and their backing / data files)
# in DIR with qemu-img and qemu-io, covering the qcow2 variants that
# qemu-img 7.2 can create.  Writes DIR/list.txt: one image per line, the
# image file name (relative to DIR) optionally followed by extra plugin
# arguments (key=value).  Arguments holding paths use absolute paths.
#
# The content is known (patterns at assorted, partly unaligned offsets,
# plus random data), but the tests never hard-code it: qemu is the oracle.
#
# Snapshot images are listed in DIR/snapshots.txt too (one image per line).

set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi

mkdir -p "$1"
dir=$(cd "$1" && pwd)
cd "$dir"
: > list.txt
: > snapshots.txt

KiB=1024
MiB=$((1024 * 1024))

# "Random" data: write -s takes its bytes from rnd.bin.  Pseudo-random
# from a fixed seed (QC_SEED), so image layouts (compressed sizes, hence
# qemu's extents) are the same on every run; QC_SEED=random for fresh.
seed=${QC_SEED:-20240611}
/usr/bin/python3 - "$seed" <<'PYEOF'
import base64, os, random, sys
seed = sys.argv[1]
r = random.Random(None if seed == "random" else seed)
rnd = lambda n: os.urandom(n) if seed == "random" else r.randbytes(n)
MiB = 1 << 20
open("rnd.bin", "wb").write(rnd(2 * MiB))
# compressible, but not trivially so: base64 text, zeros and random runs
mixed = (base64.encodebytes(rnd(768 << 10)) + bytes(256 << 10) +
         rnd(300 << 10) + base64.b64encode(rnd(500 << 10)))
open("mixed.raw", "wb").write(mixed[:3 * MiB])
PYEOF
truncate -s $((3 * MiB)) mixed.raw

# ---------------------------------------------------------------- helpers

# create NAME SIZE [qemu-img create args...]
create () {
  local name=$1 size=$2; shift 2
  qemu-img create -q -f qcow2 "$@" "$name" "$size"
}

# io IMG CMD...: run qemu-io commands on a qcow2 image (fails if any does).
io () {
  local img=$1; shift
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  local out
  if ! out=$(qemu-io -f qcow2 "${args[@]}" "$img" 2>&1); then
    echo "$0: qemu-io on $img failed:" >&2
    echo "$out" | grep -v -e '^wrote' -e 'ops/sec' >&2
    exit 1
  fi
}

# add IMG [PLUGIN-ARGS...]: list an image for the tests.
add () { echo "$*" >> list.txt; }
add_snap () { echo "$1" >> snapshots.txt; }

min () { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

# std IMG SIZE CLUSTER [SEED]: the standard content: a full first cluster,
# a write straddling a cluster boundary, byte-unaligned writes, random
# data, something in the middle and a write ending exactly at the end.
std () {
  local img=$1 s=$2 c=$3 k=${4:-1}
  # layout unit: the cluster size, or less for huge clusters in small images
  if [ $((8 * c)) -gt "$s" ]; then c=$((s / 8)); fi
  local rlen; rlen=$(min $((2 * c)) $((300 * KiB)))
  io "$img" \
     "write -P $((0x10 + k)) 0 $c" \
     "write -P $((0x20 + k)) $((c + c / 2)) $c" \
     "write -P $((0x30 + k)) $((4 * c + 1234)) 5000" \
     "write -s rnd.bin $((6 * c)) $rlen" \
     "write -P $((0x40 + k)) $((s / 2 + 7)) 777" \
     "write -P $((0x50 + k)) $((s - 3996)) 3996"
}

# ------------------------------------------------------ versions, clusters

create v2-c64k.qcow2 4M -o compat=0.10
std v2-c64k.qcow2 $((4 * MiB)) $((64 * KiB))
add v2-c64k.qcow2

create v2-c512.qcow2 1M -o compat=0.10,cluster_size=512
std v2-c512.qcow2 $((1 * MiB)) 512
add v2-c512.qcow2

create v2-c2M.qcow2 8M -o compat=0.10,cluster_size=2M
std v2-c2M.qcow2 $((8 * MiB)) $((2 * MiB))
add v2-c2M.qcow2

for cs in 512 1k 4k 64k 2M; do
  c=$(numfmt --from=iec "${cs^^}")
  s=$(( c * 4 > 4 * MiB ? c * 4 : 4 * MiB ))
  create "v3-c$cs.qcow2" "$s" -o compat=1.1,cluster_size=$cs
  std "v3-c$cs.qcow2" "$s" "$c"
  add "v3-c$cs.qcow2"
done

# ----------------------------------------------------------- refcount bits

for rb in 1 2 4 8 16 32 64; do
  create "rc$rb.qcow2" 2M -o cluster_size=512,refcount_bits=$rb
  std "rc$rb.qcow2" $((2 * MiB)) 512 $rb
  add "rc$rb.qcow2"
done
create rc64-c64k.qcow2 4M -o refcount_bits=64
std rc64-c64k.qcow2 $((4 * MiB)) $((64 * KiB))
add rc64-c64k.qcow2

# ------------------------------------------------------------ lazy / dirty

create lazy.qcow2 4M -o lazy_refcounts=on
std lazy.qcow2 $((4 * MiB)) $((64 * KiB))
add lazy.qcow2

# A dirty image: lazy refcounts, qemu-io killed by SIGKILL after a flush
# (L2 tables are on disk, refcounts are not, the dirty bit stays set).
create dirty.qcow2 4M -o lazy_refcounts=on,cluster_size=4k
std dirty.qcow2 $((4 * MiB)) 4096
bash -c 'qemu-io -f qcow2 -c "write -P 0x77 1M 200k" -c "write -s rnd.bin 3M 12345" \
           -c flush -c "sigraise 9" dirty.qcow2; exit 0' >/dev/null 2>&1
# incompatible_features (offset 72, 8 bytes BE), bit 0 = dirty
if [ "$(od -An -j 79 -N 1 -t u1 dirty.qcow2 | tr -d ' ')" -ne 1 ]; then
  echo "$0: dirty.qcow2 did not end up dirty" >&2
  exit 1
fi
add dirty.qcow2

# ------------------------------------------------------------- compression

# compressed clusters written by qemu-io over whole unallocated clusters:
# patterns compress, random data does not (qemu stores it uncompressed).
comp_io () {
  local img=$1 c=$2
  io "$img" \
     "write -c -P 0x61 0 $c" \
     "write -c -P 0x62 $((2 * c)) $c" \
     "write -c -s rnd.bin $((3 * c)) $c" \
     "write -c -s mixed.raw $((5 * c)) $c" \
     "write -P 0x63 $((6 * c + c / 8)) $((c / 2))" \
     "write -c -P 0x64 $((8 * c)) $c"
}
for ct in zlib zstd; do
  for cs in 512 4k 64k 2M; do
    c=$(numfmt --from=iec "${cs^^}")
    s=$(( c * 10 > 2 * MiB ? c * 10 : 2 * MiB ))
    create "comp-$ct-c$cs.qcow2" "$s" -o compression_type=$ct,cluster_size=$cs
    comp_io "comp-$ct-c$cs.qcow2" "$c"
    add "comp-$ct-c$cs.qcow2"
  done
  # realistic compressed clusters of varying sizes, packed back to back
  qemu-img convert -c -f raw -O qcow2 -o compression_type=$ct \
    mixed.raw "conv-$ct.qcow2"
  add "conv-$ct.qcow2"
done
create comp-v2.qcow2 2M -o compat=0.10,cluster_size=4k
comp_io comp-v2.qcow2 4096
add comp-v2.qcow2
# compressed, then partly overwritten (clusters become normal again)
qemu-img convert -c -f raw -O qcow2 -o cluster_size=4k mixed.raw conv-overwritten.qcow2
io conv-overwritten.qcow2 "write -P 0x99 10000 20000" "write -z 65536 8192" \
   "discard 131072 4096"
add conv-overwritten.qcow2

# ----------------------------------------------------------- zero clusters

# plain zero clusters: write -z on unallocated clusters (whole and partial)
create zero-plain.qcow2 4M -o cluster_size=64k
io zero-plain.qcow2 "write -P 1 0 64k" "write -z 64k 128k" "write -z 1M 1000" \
   "write -z 2M 1M" "write -P 2 2100000 5000"
add zero-plain.qcow2

# preallocated zero clusters: write -z over allocated data without unmap
create zero-alloc.qcow2 4M -o cluster_size=4k
io zero-alloc.qcow2 "write -P 3 0 1M" "write -z 64k 128k" "write -z 300000 5000" \
   "write -z -u 512k 64k" "write -P 4 520000 3000"
add zero-alloc.qcow2

# zero clusters hiding backing data
qemu-img convert -f raw -O qcow2 mixed.raw zero-base.qcow2
create zero-over-backing.qcow2 3M -b zero-base.qcow2 -F qcow2
io zero-over-backing.qcow2 "write -z 0 128k" "write -z 200000 3000" \
   "write -z -u 1M 256k" "write -P 5 2M 64k" "write -z 2M 32k"
add zero-over-backing.qcow2

# v2 has no zero flag
create zero-v2.qcow2 2M -o compat=0.10,cluster_size=4k
io zero-v2.qcow2 "write -P 6 0 1M" "write -z 64k 128k" "write -z 1200k 64k"
add zero-v2.qcow2

# ----------------------------------------------------------------- discard

create discard.qcow2 4M -o cluster_size=4k
io discard.qcow2 "write -s rnd.bin 0 2M" "discard 64k 128k" "discard 300000 10000" \
   "discard 1M 4k" "write -P 7 1M 512"
add discard.qcow2

create discard-over-backing.qcow2 3M -b zero-base.qcow2 -F qcow2 -o cluster_size=4k
io discard-over-backing.qcow2 "write -P 8 0 1M" "discard 64k 128k" "discard 1M 128k" \
   "discard 2M 64k"
add discard-over-backing.qcow2

create discard-v2.qcow2 2M -o compat=0.10
io discard-v2.qcow2 "write -P 9 0 1M" "discard 64k 128k" "discard 512k 64k"
add discard-v2.qcow2

# ------------------------------------------------------- extended L2 tables

# subclusters are cluster/32: partial writes, subcluster zeroes, discards
el2_io () {
  local img=$1 c=$2 sub=$(( $2 / 32 ))
  io "$img" \
     "write -P 0x71 $sub $sub" \
     "write -P 0x72 $((3 * sub + 17)) $((2 * sub))" \
     "write -P 0x73 $c $c" \
     "write -z $((c + 5 * sub)) $((3 * sub))" \
     "write -z $((2 * c + 2 * sub)) $sub" \
     "write -s rnd.bin $((3 * c + 7 * sub)) $((9 * sub + 5))" \
     "discard $((3 * c + 8 * sub)) $((2 * sub))" \
     "write -z -u $((3 * c + 12 * sub)) $sub" \
     "write -c -P 0x74 $((4 * c)) $c" \
     "write -P 0x75 $((5 * c + 31 * sub)) $((2 * sub))"
}
for cs in 16k 32k 64k 512k 2M; do
  c=$(numfmt --from=iec "${cs^^}")
  s=$(( c * 8 > 2 * MiB ? c * 8 : 2 * MiB ))
  create "el2-c$cs.qcow2" "$s" -o extended_l2=on,cluster_size=$cs
  el2_io "el2-c$cs.qcow2" "$c"
  add "el2-c$cs.qcow2"
done

# extended L2 over a backing file: unallocated subclusters read through
create el2-backing.qcow2 3M -b zero-base.qcow2 -F qcow2 -o extended_l2=on,cluster_size=32k
el2_io el2-backing.qcow2 $((32 * KiB))
io el2-backing.qcow2 "write -P 0x76 1M 1000" "write -z 1100k 3k" "discard 1200k 2k"
add el2-backing.qcow2

# ---------------------------------------------------- external data files
# (qemu 7.2 resolves a relative data file name against its current
# directory, not the image's: the tests run qemu from DIR.)

create datafile.qcow2 4M -o "data_file=$dir/datafile.data"
std datafile.qcow2 $((4 * MiB)) $((64 * KiB))
io datafile.qcow2 "write -z 64k 64k" "discard 3M 64k"
add datafile.qcow2

create datafile-raw.qcow2 4M -o data_file=datafile-raw.data,data_file_raw=on,cluster_size=4k
std datafile-raw.qcow2 $((4 * MiB)) 4096
io datafile-raw.qcow2 "write -z 8k 8k" "discard 3M 64k"
add datafile-raw.qcow2

create datafile-el2.qcow2 2M -o data_file=datafile-el2.data,extended_l2=on,cluster_size=64k
io datafile-el2.qcow2 "write -P 0x78 2k 4k" "write -P 0x79 70000 200000" "write -z 100000 4k"
add datafile-el2.qcow2

# ---------------------------------------------------------- backing chains

# depth 1: qcow2 over qcow2
create base1.qcow2 4M -o cluster_size=64k
std base1.qcow2 $((4 * MiB)) $((64 * KiB)) 1
create back1.qcow2 4M -b base1.qcow2 -F qcow2
io back1.qcow2 "write -P 0xa1 100000 5000" "write -P 0xa2 1M 64k" "write -P 0xa3 3999000 100"
add back1.qcow2
add back1.qcow2 backing=none

# depth 2 and 3, mixed cluster sizes
create back2-mid.qcow2 4M -b base1.qcow2 -F qcow2 -o cluster_size=4k
io back2-mid.qcow2 "write -P 0xb1 60000 10000" "write -s rnd.bin 2M 100000" \
   "write -z 0 8k"
create back2.qcow2 4M -b back2-mid.qcow2 -F qcow2 -o cluster_size=512
io back2.qcow2 "write -P 0xb2 65000 1000" "write -P 0xb3 2100000 777" "discard 2M 4k"
add back2.qcow2
create back3.qcow2 4M -b back2.qcow2 -F qcow2 -o cluster_size=1M
io back3.qcow2 "write -P 0xc1 1M 12345" "write -z 3M 512k"
add back3.qcow2

# raw backing file (sparse)
cp --sparse=always mixed.raw base-raw.img
truncate -s 4M base-raw.img
create back-raw.qcow2 4M -b base-raw.img -F raw -o cluster_size=16k
io back-raw.qcow2 "write -P 0xd1 5000 3000" "write -P 0xd2 3500000 1000"
add back-raw.qcow2

# backing files SHORTER than the top image (qcow2, and raw of odd length)
create base-short.qcow2 1M -o cluster_size=4k
std base-short.qcow2 $((1 * MiB)) 4096 3
create back-short.qcow2 4M -b base-short.qcow2 -F qcow2
io back-short.qcow2 "write -P 0xe1 1000000 1000" "write -P 0xe2 2M 1000"
add back-short.qcow2
head -c 1000001 rnd.bin > base-odd.img
create back-short-raw.qcow2 2M -b base-odd.img -F raw -o cluster_size=4k
io back-short-raw.qcow2 "write -P 0xe3 1500000 1000"
add back-short-raw.qcow2
# a chain where the middle layer is the short one
create back-short-mid.qcow2 4M -b base-short.qcow2 -F qcow2 -o cluster_size=64k
create back-short2.qcow2 6M -b back-short-mid.qcow2 -F qcow2 -o cluster_size=4k
io back-short2.qcow2 "write -P 0xe4 3M 10000"
add back-short2.qcow2

# backing file LONGER than the top image
create back-long.qcow2 2M -b base1.qcow2 -F qcow2 -o cluster_size=16k
io back-long.qcow2 "write -P 0xe5 30000 20000"
add back-long.qcow2

# relative backing path pointing out of a subdirectory; absolute path
mkdir -p sub
create sub/back-rel.qcow2 4M -b ../base1.qcow2 -F qcow2
io sub/back-rel.qcow2 "write -P 0xe6 123456 7890"
add sub/back-rel.qcow2
create back-abs.qcow2 4M -b "$dir/base-short.qcow2" -F qcow2
io back-abs.qcow2 "write -P 0xe7 500000 1"
add back-abs.qcow2

# v2 top over a v2 base
create base-v2.qcow2 2M -o compat=0.10,cluster_size=4k
std base-v2.qcow2 $((2 * MiB)) 4096 4
create back-v2.qcow2 2M -b base-v2.qcow2 -F qcow2 -o compat=0.10,cluster_size=16k
io back-v2.qcow2 "write -P 0xe8 16384 16384" "write -P 0xe9 50000 100"
add back-v2.qcow2

# backing overridden by the plugin argument: a different, shorter image;
# a raw file (probed, or named); a backing file for an image without one
add back1.qcow2 "backing=$dir/base-short.qcow2"
add back2.qcow2 "backing=$dir/base-raw.img"
add back1.qcow2 "backing=$dir/base-raw.img" backing-format=raw
add v3-c4k.qcow2 "backing=$dir/base1.qcow2"

# backing files with compressed clusters / extended L2 subclusters
create back-comp.qcow2 3M -b conv-zstd.qcow2 -F qcow2 -o cluster_size=4k
io back-comp.qcow2 "write -P 0xea 100000 5000" "write -z 1M 64k"
add back-comp.qcow2
create back-el2.qcow2 2M -b el2-c64k.qcow2 -F qcow2 -o extended_l2=on,cluster_size=32k
io back-el2.qcow2 "write -P 0xeb 1000 1000" "write -P 0xec 70000 3000" "write -z 200000 2048"
add back-el2.qcow2

# -------------------------------------------------------------- qemu-img amend

# v2 -> v3 (the header grows), then zero clusters
create amend-up.qcow2 2M -o compat=0.10,cluster_size=4k
std amend-up.qcow2 $((2 * MiB)) 4096 5
qemu-img amend -o compat=1.1 amend-up.qcow2
io amend-up.qcow2 "write -z 0 8k" "write -z 1M 64k"
add amend-up.qcow2
# v3 -> v2: zero clusters are expanded
create amend-down.qcow2 2M -o compat=1.1,cluster_size=4k
std amend-down.qcow2 $((2 * MiB)) 4096 6
io amend-down.qcow2 "write -z 0 8k" "write -z 1M 64k"
qemu-img amend -o compat=0.10 amend-down.qcow2
add amend-down.qcow2
# refcount width changed: the refcount structures are rewritten
create amend-rc.qcow2 2M -o cluster_size=512,refcount_bits=16
std amend-rc.qcow2 $((2 * MiB)) 512 7
qemu-img amend -o refcount_bits=2 amend-rc.qcow2
add amend-rc.qcow2

# ------------------------------------------------------------ preallocation

for p in metadata falloc full; do
  create "prealloc-$p.qcow2" 4M -o preallocation=$p,cluster_size=64k
  io "prealloc-$p.qcow2" "write -P 0xf1 100000 5000" "write -s rnd.bin 2M 64k" \
     "write -z 3M 64k"
  add "prealloc-$p.qcow2"
done
create prealloc-metadata-c512.qcow2 1M -o preallocation=metadata,cluster_size=512
io prealloc-metadata-c512.qcow2 "write -P 0xf2 1000 1000"
add prealloc-metadata-c512.qcow2

# preallocation over a backing file (qemu requires extended L2: the
# clusters are allocated but their subclusters are not, reads go through)
create prealloc-el2-backing.qcow2 4M -b base1.qcow2 -F qcow2 \
  -o preallocation=metadata,extended_l2=on
io prealloc-el2-backing.qcow2 "write -P 0xf3 5000 3000" "write -z 70000 4096" \
   "write -P 0xf4 2M 64k"
add prealloc-el2-backing.qcow2
create prealloc-el2-falloc-backing.qcow2 4M -b base1.qcow2 -F qcow2 \
  -o preallocation=falloc,extended_l2=on,cluster_size=32k
io prealloc-el2-falloc-backing.qcow2 "write -P 0xf5 1000 1000" "discard 65536 2048"
add prealloc-el2-falloc-backing.qcow2

# ------------------------------------------------------------------ bitmaps

create bitmaps.qcow2 4M -o cluster_size=16k
qemu-img bitmap --add bitmaps.qcow2 b0
qemu-img bitmap --add -g 128k bitmaps.qcow2 b1
qemu-img bitmap --add bitmaps.qcow2 b2
qemu-img bitmap --disable bitmaps.qcow2 b2
std bitmaps.qcow2 $((4 * MiB)) $((16 * KiB))
qemu-img bitmap --merge b0 bitmaps.qcow2 b2
qemu-img bitmap --add bitmaps.qcow2 b3
qemu-img bitmap --remove bitmaps.qcow2 b1
add bitmaps.qcow2

# -------------------------------------------------------- internal snapshots

# writes between snapshots, so every snapshot differs from the active image
create snap-basic.qcow2 4M -o cluster_size=4k
std snap-basic.qcow2 $((4 * MiB)) 4096 1
qemu-img snapshot -c s1 snap-basic.qcow2
io snap-basic.qcow2 "write -P 0x81 0 10000" "write -z 1M 64k" "discard 2M 4k"
qemu-img snapshot -c s2 snap-basic.qcow2
io snap-basic.qcow2 "write -s rnd.bin 100000 300000" "write -P 0x82 3M 1"
qemu-img snapshot -c "s3.last" snap-basic.qcow2
io snap-basic.qcow2 "write -P 0x83 4000 1000"
add snap-basic.qcow2
add snap-basic.qcow2 snapshot=s1
add snap-basic.qcow2 snapshot=s2
add_snap snap-basic.qcow2

# snapshots of different sizes: grow after one, shrink after the next
create snap-resize.qcow2 4M -o cluster_size=64k
std snap-resize.qcow2 $((4 * MiB)) $((64 * KiB)) 2
qemu-img snapshot -c small snap-resize.qcow2
qemu-img resize -q snap-resize.qcow2 8M
io snap-resize.qcow2 "write -P 0x84 6M 100000" "write -P 0x85 1M 1000"
qemu-img snapshot -c big snap-resize.qcow2
qemu-img resize -q --shrink snap-resize.qcow2 $((2 * MiB + 512))
io snap-resize.qcow2 "write -P 0x86 $((2 * MiB - 100)) 612"
add snap-resize.qcow2
add snap-resize.qcow2 snapshot=small
add snap-resize.qcow2 snapshot=big
add_snap snap-resize.qcow2

# v2 snapshots (no resize possible)
create snap-v2.qcow2 2M -o compat=0.10,cluster_size=4k
std snap-v2.qcow2 $((2 * MiB)) 4096 3
qemu-img snapshot -c first snap-v2.qcow2
io snap-v2.qcow2 "write -P 0x87 0 100000"
qemu-img snapshot -c second snap-v2.qcow2
io snap-v2.qcow2 "write -z 0 4096"
add snap-v2.qcow2
add snap-v2.qcow2 snapshot=first
add_snap snap-v2.qcow2

# snapshots sharing compressed clusters, then overwritten / zeroed
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd,cluster_size=16k \
  mixed.raw snap-comp.qcow2
qemu-img snapshot -c compressed snap-comp.qcow2
io snap-comp.qcow2 "write -P 0x88 20000 50000" "write -z 1M 256k" "discard 2M 16k"
add snap-comp.qcow2
add snap-comp.qcow2 snapshot=compressed
add_snap snap-comp.qcow2

# snapshots on extended L2 tables
create snap-el2.qcow2 2M -o extended_l2=on,cluster_size=64k
el2_io snap-el2.qcow2 $((64 * KiB))
qemu-img snapshot -c sub1 snap-el2.qcow2
io snap-el2.qcow2 "write -P 0x89 2048 2048" "write -z 65536 4096" "write -P 0x8a 1M 3000"
add snap-el2.qcow2
add snap-el2.qcow2 snapshot=sub1
add_snap snap-el2.qcow2

# snapshot on an image with a backing file
create snap-backing.qcow2 4M -b base1.qcow2 -F qcow2 -o cluster_size=16k
io snap-backing.qcow2 "write -P 0x8b 50000 30000"
qemu-img snapshot -c withbacking snap-backing.qcow2
io snap-backing.qcow2 "write -z 0 64k" "discard 50000 10000" "write -P 0x8c 2M 4096"
add snap-backing.qcow2
add_snap snap-backing.qcow2

# deleted snapshot in the middle of the table; an empty-image snapshot
create snap-deleted.qcow2 2M -o cluster_size=4k
qemu-img snapshot -c empty snap-deleted.qcow2
io snap-deleted.qcow2 "write -P 0x8d 0 1M"
qemu-img snapshot -c gone snap-deleted.qcow2
io snap-deleted.qcow2 "write -P 0x8e 100000 100000"
qemu-img snapshot -c kept snap-deleted.qcow2
io snap-deleted.qcow2 "write -z 0 512k"
qemu-img snapshot -d gone snap-deleted.qcow2
add snap-deleted.qcow2
add snap-deleted.qcow2 snapshot=kept
add_snap snap-deleted.qcow2

# awkward snapshot names (only in snapshots.txt: list.txt splits on
# blanks): a blank, a name that is another snapshot's ID ("1" is the name
# of ID 2), non-ASCII and URI-special characters
create snap-names.qcow2 1M -o cluster_size=4k
io snap-names.qcow2 "write -P 0xa1 0 4k"
qemu-img snapshot -c "with space" snap-names.qcow2
io snap-names.qcow2 "write -P 0xa2 0 4k" "write -P 0xa2 100k 1000"
qemu-img snapshot -c 1 snap-names.qcow2
io snap-names.qcow2 "write -P 0xa3 0 4k" "write -z 100k 4k"
qemu-img snapshot -c "ünï/cödé?#%" snap-names.qcow2
io snap-names.qcow2 "write -P 0xa4 0 4k"
add_snap snap-names.qcow2

# ------------------------------------------------------------ odd sizes etc.

# virtual size not a multiple of the cluster size (qemu rounds to 512)
create odd-size.qcow2 1000001
std odd-size.qcow2 1000448 $((64 * KiB))
add odd-size.qcow2
create odd-size-c2M.qcow2 $((5 * MiB + 512)) -o cluster_size=2M,extended_l2=on
io odd-size-c2M.qcow2 "write -P 0x91 $((5 * MiB - 1000)) 1512" "write -P 0x92 $((4 * MiB)) 64k"
add odd-size-c2M.qcow2

create empty.qcow2 4M
add empty.qcow2
create zero-size.qcow2 0
add zero-size.qcow2

# many L2 tables and a multi-cluster L1 table (512-byte clusters)
# (64M: 2048 L2 tables, a 16k L1 table = 32 clusters)
create big-sparse.qcow2 64M -o cluster_size=512
io big-sparse.qcow2 "write -P 0x93 0 1000" "write -P 0x94 $((17 * MiB + 3)) 70000" \
   "write -s rnd.bin $((40 * MiB)) 5000" "write -P 0x95 $((64 * MiB - 512)) 512" \
   "write -z $((50 * MiB)) 1M"
add big-sparse.qcow2

# uncompressed conversion of mixed data (zero runs stay unallocated)
qemu-img convert -f raw -O qcow2 -o cluster_size=4k mixed.raw conv-plain.qcow2
add conv-plain.qcow2

# a tiny L2 cache: constant eviction
add big-sparse.qcow2 cache-size=1k
add back3.qcow2 cache-size=4k
add el2-c16k.qcow2 cache-size=512
add snap-comp.qcow2 snapshot=compressed cache-size=1k

# raw images served with format=raw
cp --sparse=always mixed.raw plain.img
add plain.img format=raw
add v3-c64k.qcow2 format=raw

n=$(wc -l < list.txt)
echo "$0: $n test entries in $dir/list.txt"
