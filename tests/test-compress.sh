#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Compressed writes (compress=zlib|zstd, compress-level=) judged by QEMU:
#
#   1. nbdcopy of a mixed sample (text, binaries, random and zero runs)
#      into a new image with compress= (many requests in parallel):
#      qemu-img compare finds the sample, qemu-img check finds no error
#      and no leak, most clusters are compressed, and the image is no
#      more than 2% larger than qemu-img convert -c makes it (the same
#      codec at the default level);
#   2. a second session, still with compress=, rewrites it: writes of
#      bytes inside compressed clusters, whole clusters again, zeroes and
#      trims of compressed clusters (tests/enc-ops.py, against a raw
#      model): qemu reads the model, check is clean, no leak.
#
# Variants: zlib and zstd with 64k clusters, zlib with ISA-L
# (compress-level=fast), 4k clusters with 1-bit refcounts (a packed host
# cluster's refcount saturates at once), 2M clusters, extended L2.
. "${srcdir:-.}/functions.sh"
requires qemu-img --version
requires nbdcopy --version

encops=$(cd "${srcdir:-.}" && pwd)/enc-ops.py
cd "$tmpdir"
size=$((24 << 20))
"$PYTHON" - sample.raw $size <<'EOF'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
r = random.Random(11)
# Text and binaries from the system, cut into runs, mixed with random
# bytes (incompressible clusters) and zeros (whole zero clusters too).
pool = b""
for root in ("/usr/share/doc", "/usr/lib/x86_64-linux-gnu"):
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                try:
                    pool += open(p, "rb").read(256 << 10)
                except OSError:
                    pass
            if len(pool) > 16 << 20:
                break
        if len(pool) > 16 << 20:
            break
out = bytearray()
while len(out) < size:
    k = r.random()
    n = r.randint(1, 300000)
    if k < 0.6:
        o = r.randrange(0, max(1, len(pool) - n))
        out += pool[o:o + n]
    elif k < 0.8:
        out += r.randbytes(n)
    else:
        out += bytes(n)
open(path, "wb").write(out[:size])
EOF

# clean IMG WHAT: qemu-img check finds no error and no leak.
clean ()
{
  local out
  out=$(qemu-img check "$1" 2>&1) ||
    { echo "$out" >&2; fail "$2: qemu-img check: not clean (exit $?)"; }
  echo "$out" | grep -q "No errors were found" ||
    { echo "$out" >&2; fail "$2: qemu-img check: not clean"; }
}

# compressed_pct IMG: the percentage of compressed clusters.
compressed_pct ()
{
  qemu-img check "$1" 2>/dev/null |
    sed -n 's/.*fragmented, \([0-9.]*\)% compressed clusters.*/\1/p'
}

# name, creation options, compression options, the same image for
# qemu-img convert -c
variants="
zlib      cluster-size=64k                       compress=zlib                    cluster_size=64k
zstd      cluster-size=64k,compression-type=zstd compress=zstd                    cluster_size=64k,compression_type=zstd
fast      cluster-size=64k                       compress=zlib,compress-level=fast cluster_size=64k
c4k-r1    cluster-size=4k,refcount-bits=1        compress=zlib                    cluster_size=4k,refcount_bits=1
c2M-zstd  cluster-size=2M,compression-type=zstd  compress=zstd                    cluster_size=2M,compression_type=zstd
xl2       cluster-size=64k,extended-l2=on        compress=zlib                    cluster_size=64k,extended_l2=on
"
seed=1
while read -r name create comp qopts; do
  [ -n "$name" ] || continue
  seed=$((seed + 1))
  img=$name.qcow2
  rm -f "$img"
  # shellcheck disable=SC2086
  "$NBDKIT" -U - qcow2 "$img" create=true size=$size ${create//,/ } \
    ${comp//,/ } --run 'nbdcopy --flush sample.raw "$uri"' ||
    fail "$name: nbdcopy into the new image failed"
  qemu-img compare -q -f raw -F qcow2 sample.raw "$img" ||
    fail "$name: qemu does not read the sample from the new image"
  clean "$img" "$name: new image"

  # As many clusters compressed as qemu-img convert -c compresses, and
  # packed as tightly: at most 2% larger.
  qemu-img convert -c -f raw -O qcow2 -o "$qopts" sample.raw "qemu-$img"
  pct=$(compressed_pct "$img") qpct=$(compressed_pct "qemu-$img")
  ours=$(stat -c %s "$img") theirs=$(stat -c %s "qemu-$img")
  rm -f "qemu-$img"
  awk "BEGIN {exit !($pct >= $qpct - 1)}" ||
    fail "$name: $pct% of the clusters are compressed, by qemu-img $qpct%"
  awk "BEGIN {exit !($ours <= $theirs * 1.02)}" ||
    fail "$name: $ours bytes, qemu-img convert -c: $theirs (over 2% more)"
  msg="$pct% compressed, $ours bytes; qemu-img convert -c: $qpct%, $theirs bytes"
  echo "ok: $name: new image: $msg"

  # Rewrites in a new session, still compressing.
  cp sample.raw model.raw
  # shellcheck disable=SC2086
  "$NBDKIT" -U - qcow2 "$img" ${comp//,/ } \
    --run "$PYTHON '$encops' $seed 150 \"\$uri\" model.raw" ||
    fail "$name: rewriting through nbdkit failed"
  qemu-img compare -q -f raw -F qcow2 model.raw "$img" ||
    fail "$name: qemu does not read what was rewritten"
  clean "$img" "$name: after rewrites"
  echo "ok: $name: rewritten: $(compressed_pct "$img")% compressed, clean"
  [ -n "${KEEP:-}" ] && exit 0; rm -f "$img" model.raw
done <<<"$variants"
