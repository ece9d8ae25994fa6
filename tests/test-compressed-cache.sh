#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The cache of decompressed clusters through nbdkit.
#
#  1. Images compressed by qemu-img (zlib and zstd, 64k clusters; zlib
#     with 2M clusters) read sequentially over NBD in pieces smaller than
#     a cluster (4k; 256k for 2M) hold qemu's bytes, and each compressed
#     cluster is decompressed once: nbdkit's debug counters at exit,
#     against the same reads with compressed-cache=0 (once per piece).
#     The same through the qcow2 filter.
#  2. compress=zlib, a client reading compressed clusters in 4k pieces
#     (so that they are cached) between whole-cluster compressed writes,
#     trims and flushes that free their streams and put new ones where
#     they were: every read matches the client's model, qemu-img reads
#     the same while nbdkit still serves (after a flush), and at the end.
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires "$PYTHON" -c 'import nbd'

K=1024 M=$((1024 * 1024))

# Compressible text (about 2:1), some zero and some random stretches.
"$PYTHON" - "$tmpdir/src.raw" <<'EOF'
import random, sys
r = random.Random(7)
words = [bytes(r.randrange(97, 123) for _ in range(r.randrange(2, 9)))
         for _ in range(800)]
out = bytearray()
while len(out) < 32 << 20:
    kind = r.randrange(8)
    if kind == 0:
        out += bytes(100000)
    elif kind == 1:
        out += r.randbytes(100000)
    else:
        out += b" ".join(r.choice(words) for _ in range(20000)) + b"\n"
open(sys.argv[1], "wb").write(out[:32 << 20])
EOF

# read_pieces SOCK CHUNK OUT: the whole disk in CHUNK-byte reads, one
# after the other, into OUT.
read_pieces ()
{
  "$PYTHON" - "$(nbd_uri "$1")" "$2" "$3" <<'EOF'
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
chunk = int(sys.argv[2])
size = h.get_size()
with open(sys.argv[3], "wb") as f:
    for off in range(0, size, chunk):
        f.write(h.pread(min(chunk, size - off), off))
h.shutdown()
EOF
}

# decompressed LOG: clusters decompressed, from the debug line at exit.
decompressed ()
{
  sed -n 's/.*: \([0-9]*\) compressed clusters decompressed.*/\1/p' "$1" |
    tail -n 1
}

# stop SOCK: stop that nbdkit and wait for it (the counters are logged
# when the image is closed).
stop ()
{
  local pid
  pid=$(cat "${1%.sock}.pid")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

# read_and_count CHUNK WANT ARGS...: serve (nbdkit ARGS), read in CHUNK
# pieces, compare with WANT (qemu's reading), stop; sets $count to the
# clusters decompressed.
count=
read_and_count ()
{
  local chunk=$1 want=$2; shift 2
  local srv log
  start_nbdkit srv -v "$@"
  log="${srv%.sock}.log"
  read_pieces "$srv" "$chunk" "$tmpdir/got.raw"
  stop "$srv"
  cmp "$tmpdir/got.raw" "$want" ||
    fail "nbdkit $*: reads of $chunk bytes differ from qemu-img's"
  count=$(decompressed "$log")
  [ -n "$count" ] || { cat "$log" >&2; fail "nbdkit $*: no counters"; }
}

for v in zlib:65536:4096 zstd:65536:4096 zlib:2097152:262144; do
  IFS=: read -r type cs chunk <<<"$v"
  img=$tmpdir/$type-$cs.qcow2
  qemu-img convert -c -f raw -O qcow2 \
    -o compression_type=$type,cluster_size=$cs "$tmpdir/src.raw" "$img"
  qemu-img convert -f qcow2 -O raw "$img" "$tmpdir/want.raw"
  clusters=$((32 * M / cs)) pieces=$((cs / chunk))

  read_and_count "$chunk" "$tmpdir/want.raw" qcow2 "$img"
  cached=$count
  read_and_count "$chunk" "$tmpdir/want.raw" qcow2 "$img" compressed-cache=0
  uncached=$count
  echo "$type, $cs-byte clusters, $chunk-byte reads: $cached clusters" \
       "decompressed ($uncached without the cache)"
  [ "$cached" -gt 0 ] && [ "$cached" -le "$clusters" ] ||
    fail "$type/$cs: $cached decompressions for $clusters clusters"
  [ "$uncached" -eq $((cached * pieces)) ] ||
    fail "$type/$cs: $uncached decompressions without the cache," \
         "expected $cached x $pieces"

  # The filter has the option too.
  read_and_count "$chunk" "$tmpdir/want.raw" --filter=qcow2 file "$img"
  [ "$count" -eq "$cached" ] ||
    fail "$type/$cs: the qcow2 filter decompressed $count, not $cached"
  read_and_count "$chunk" "$tmpdir/want.raw" --filter=qcow2 file "$img" \
    qcow2-compressed-cache=0
  [ "$count" -eq "$uncached" ] ||
    fail "$type/$cs: qcow2-compressed-cache=0 decompressed $count," \
         "not $uncached"
done

# 2. Streams freed and rewritten under cached reads.
img=$tmpdir/w.qcow2
qemu-img create -q -f qcow2 -o cluster_size=64k "$img" 4M
start_nbdkit srv -v qcow2 "$img" compress=zlib
log="${srv%.sock}.log"
"$PYTHON" - "$(nbd_uri "$srv")" "$img" "$tmpdir" <<'EOF' ||
import nbd, random, subprocess, sys
uri, img, tmp = sys.argv[1:4]
cs, n = 65536, 64
h = nbd.NBD()
h.connect_uri(uri)
r = random.Random(11)
model = bytearray(cs * n)

def cluster(seed):
    # Half random, half zeros: compressed to the same length whatever
    # the seed, so a new stream fits exactly where a freed one was.
    return random.Random(seed).randbytes(cs // 2) + bytes(cs // 2)

def check(what, clusters):
    for c in clusters:
        for off in range(c * cs, (c + 1) * cs, 4096):
            got = h.pread(4096, off)
            if got != model[off:off + 4096]:
                sys.exit("%s: 4k read at %d differs from the model"
                         % (what, off))

def qemu_agrees(what):
    h.flush()
    subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O",
                    "raw", img, tmp + "/mid.raw"], check=True)
    if open(tmp + "/mid.raw", "rb").read() != bytes(model):
        sys.exit("%s: qemu-img reads something else" % what)

seed = 1000
for step in range(400):
    c = r.randrange(8)              # a few clusters: their space recycles
    op = r.randrange(10)
    off = c * cs
    if op < 5:
        seed += 1
        data = cluster(seed)
        h.pwrite(data, off)
        model[off:off + cs] = data
    elif op < 7:
        h.trim(cs, off)
        model[off:off + cs] = bytes(cs)
    elif op < 8:
        data = r.randbytes(1000)
        o = off + r.randrange(cs - 1000)
        h.pwrite(data, o)           # copy-on-write from the cached cluster
        model[o:o + 1000] = data
    else:
        h.flush()                   # frees move on: streams get freed
    check("step %d" % step, [c, (c + 3) % 8])
    if step % 100 == 99:
        qemu_agrees("step %d" % step)
check("the end", range(8))
h.shutdown()
open(tmp + "/model.raw", "wb").write(bytes(model))
EOF
  { cat "$log" >&2; fail "reads under compressed writes and trims"; }
stop "$srv"
grep -E 'error' "$log" >&2 && fail "nbdkit logged errors (above)"
grep -h "decompressed" "$log"
drops=$(sed -n 's/.* \([0-9]*\) invalidations.*/\1/p' "$log" | tail -n 1)
[ "${drops:-0}" -gt 0 ] ||
  fail "no cached cluster was invalidated: the test did not free any"
qemu-img check -q "$img" || fail "qemu-img check"
qemu-img convert -f qcow2 -O raw "$img" "$tmpdir/final.raw"
cmp "$tmpdir/final.raw" "$tmpdir/model.raw" ||
  fail "qemu-img reads something else than was written"
echo "OK"
