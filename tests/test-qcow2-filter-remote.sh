#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# The qcow2 filter over a remote container: nbdkit's curl plugin reading
# from nginx on loopback, with nbdkit's delay filter below ours (every
# read below takes 1 ms longer, as over a network), and several
# contexts below (qcow2-below-connections).  Compressed images (zlib
# and zstd; zlib with 4 KiB clusters too; streams coalesced and read
# ahead, with the uncompressed clusters among them: common/rahead.c) with
# incompressible clusters (stored uncompressed by qemu-img) and zero
# stretches between the compressed ones, and a plain one; all judged
# against qemu-img convert:
#
#  1. nbdcopy of each image equals qemu-img convert's raw output
#  2. 6 clients at once, each reading ranges of random sizes at random
#     places (some unaligned, some over many clusters) and a sequential
#     stretch, compare every read with qemu's bytes
#  3. the number of contexts opened on the plugin below follows
#     qcow2-below-connections (1 and 3), and a bad value is refused

. "${srcdir:-.}/functions.sh"

requires qemu-img --version
requires nbdcopy --version
requires "$PYTHON" -c 'import nbd'
requires nbdkit --dump-plugin curl
requires nbdkit --filter=delay null --version
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"
cd "$tmpdir"

mkdir -p www
# 24 MiB: compressible text, random (incompressible) and zero clusters
# in a pattern that does not repeat with the cluster size.
"$PYTHON" - <<'EOF'
import random
r = random.Random(18)
out = bytearray()
unit = 48 * 1024
while len(out) < 24 << 20:
    k = r.randrange(8)
    if k == 0:
        out += bytes(unit)
    elif k == 1:
        out += r.randbytes(unit)
    else:
        out += b"".join(b"qcow2 remote %03d\n" % r.randrange(1000)
                        for _ in range(unit // 17 + 1))[:unit]
open("src.raw", "wb").write(out[:24 << 20])
EOF
qemu-img convert -q -f raw -O qcow2 -c src.raw www/zlib.qcow2
qemu-img convert -q -f raw -O qcow2 -c -o compression_type=zstd \
  src.raw www/zstd.qcow2
qemu-img convert -q -f raw -O qcow2 src.raw www/plain.qcow2
# 4 KiB clusters: many streams and uncompressed clusters per request,
# read from the same windows.
qemu-img convert -q -f raw -O qcow2 -c -o cluster_size=4k \
  src.raw www/zlib4k.qcow2
for i in zlib zstd plain zlib4k; do
  qemu-img convert -O raw www/$i.qcow2 want-$i.raw
done
cmp src.raw want-zlib.raw || fail "qemu-img convert changed the data"

if ! start_nginx www base_url; then
  echo "$0: skipped: nginx is not installed" >&2
  exit 77
fi

# serve IMAGE N [nbdkit options]: the filter over curl + delay, N
# contexts below.
serve ()
{
  local img=$1 n=$2; shift 2
  start_nbdkit sock -r -v "$@" --filter=qcow2 --filter=delay \
    curl "$base_url/$img.qcow2" delay-read=1ms qcow2-below-connections="$n"
}

cat > readers.py <<'EOF'
import random, sys, threading
import nbd
uri, want_file = sys.argv[1], sys.argv[2]
want = open(want_file, "rb").read()
size = len(want)
errors = []

def reader(seed):
    r = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        if h.get_size() != size:
            errors.append("size %d, want %d" % (h.get_size(), size))
            return
        for i in range(60):
            n = r.choice([1, 512, 4096, 65536, 3 * 65536 + 7, 1 << 20,
                          r.randrange(1, 2 << 20)])
            off = r.randrange(0, size - n)
            if i % 4 == 0:
                off = off - off % 65536
            got = h.pread(n, off)
            if got != want[off:off + n]:
                errors.append("seed %d: %d bytes at %d differ" %
                              (seed, n, off))
                return
        # A sequential stretch: read-ahead windows.
        start = r.randrange(0, size // 2)
        start -= start % 4096
        for off in range(start, min(size, start + (4 << 20)), 65536):
            n = min(65536, size - off)
            if h.pread(n, off) != want[off:off + n]:
                errors.append("seed %d: sequential at %d differs" %
                              (seed, off))
                return
    except nbd.Error as e:
        errors.append("seed %d: %s" % (seed, e))
    finally:
        h.shutdown()

threads = [threading.Thread(target=reader, args=(s,)) for s in range(6)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit("\n".join(errors))
EOF

for i in zlib zstd plain zlib4k; do
  echo "== $i: nbdcopy and 6 parallel readers, 3 contexts below"
  serve "$i" 3
  uri=$(nbd_uri "$sock")
  nbdcopy "$uri" got.raw || fail "$i: nbdcopy failed"
  cmp want-$i.raw got.raw || fail "$i: nbdcopy differs from qemu-img convert"
  "$PYTHON" readers.py "$uri" want-$i.raw || fail "$i: parallel readers"
  rm -f got.raw
done

echo "== contexts opened below"
# nbdkit -v logs each open of the curl plugin.
opens ()
{
  grep -c 'curl: open readonly=' "$tmpdir/nbdkit$_nbdkit_n.log" || :
}
serve zlib 1
nbdcopy "$(nbd_uri "$sock")" null: || fail "nbdcopy with 1 context"
n=$(opens)
[ "$n" = 1 ] || fail "qcow2-below-connections=1: $n opens of the plugin below"
serve zlib 3
nbdcopy "$(nbd_uri "$sock")" null: || fail "nbdcopy with 3 contexts"
n=$(opens)
[ "$n" = 3 ] || fail "qcow2-below-connections=3: $n opens of the plugin below"

for bad in 0 65 x -1; do
  if "$NBDKIT" -r -U - --filter=qcow2 curl "$base_url/zlib.qcow2" \
       qcow2-below-connections=$bad --run true 2>bad.err; then
    fail "qcow2-below-connections=$bad was accepted"
  fi
  grep -q "qcow2-below-connections=$bad: expected a number from 1 to 64" bad.err ||
    { cat bad.err >&2; fail "no clear error for below-connections=$bad"; }
done
echo "ok: remote reads through several contexts match qemu"
