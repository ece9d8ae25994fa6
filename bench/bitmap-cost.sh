#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The cost of keeping one enabled persistent bitmap (64 KiB granularity)
# on 4 KiB random writes in place, in the core alone (bitmap-cost.c,
# linked with the built core): CPU time per write with the bitmap
# disabled and enabled, alternating, REPS times, and, where perf works,
# the share of samples in the marking function.  Unlike fio through a
# server (bench/run.sh --only k), CPU time per write and perf's share
# say little about the machine's other load.
#   bench/bitmap-cost.sh [REPS [WRITES]]      (after make)
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
reps=${1:-5} n=${2:-300000}
work=$(mktemp -d /dev/shm/qc-bitmap-cost.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$work"' EXIT
libs=$(sed -n "s/^dependency_libs='\(.*\)'/\1/p" "$top/common/libqcow2core.la")
gcc -O2 -I"$top" -I"$top/common" -o "$work/cost" "$top/bench/bitmap-cost.c" \
    "$top/common/.libs/libqcow2core.a" $libs -lpthread
img=$work/img.qcow2
qemu-img create -q -f qcow2 "$img" 256M
qemu-io -f qcow2 -c 'write 0 256M' "$img" >/dev/null
qemu-img bitmap --add "$img" bm
off=() on=()
for r in $(seq 1 "$reps"); do
  qemu-img bitmap --disable "$img" bm
  off+=("$("$work/cost" "$img" "$n")")
  qemu-img bitmap --enable "$img" bm
  on+=("$("$work/cost" "$img" "$n")")
done
median () { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
m0=$(median "${off[@]}") m1=$(median "${on[@]}")
echo "us CPU per 4 KiB write: no bitmap kept ${off[*]} (median $m0)"
echo "                        one bitmap kept ${on[*]} (median $m1)"
awk -v a="$m0" -v b="$m1" 'BEGIN {printf "ratio with/without: %.3f\n", b / a}'
if perf record -q -e cpu-clock -F 5000 -o "$work/perf.data" \
     "$work/cost" "$img" "$n" >/dev/null 2>&1; then
  share=$(perf report -i "$work/perf.data" --stdio --sort symbol 2>/dev/null |
          awk '/qc_bitmaps_mark_slow/ {print $1}')
  echo "perf: qc_bitmaps_mark_slow takes ${share:-<0.01%} of the CPU samples"
fi
