#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# nbdkit-overlay-filter: a persistent qcow2 copy-on-write overlay over
# the plugin below.
#
# (1) Over "nbdkit file base.raw" (a sparse raw disk with data here and
#     there), for several creation option sets: the same seeded random
#     writes / zeroes / trims / flushes go to the overlay and to qemu-nbd
#     serving a qemu-made overlay over the same base.raw (random-ops.py
#     compares what both serve).  Then: base.raw is byte-identical
#     (sha256); after a restart with the same overlay file the changes are
#     still there; qemu-img check finds the overlay clean; qemu-img rebase
#     -u -b base.raw -F raw, then qemu-img convert equals what nbdkit
#     served, and qemu-img compare equals qemu's own overlay.  With
#     overlay-backing-name=base.raw qemu opens the overlay directly.  A
#     base of the wrong size is refused with both sizes in the message,
#     without touching the overlay; meaningless options are refused.
# (2) Over "nbdkit curl" reading base.raw from nginx on 127.0.0.1 (a
#     read-only plugin with serialize_requests, shared by connections):
#     writes go to the overlay, what it serves equals qemu's model, also
#     read by several connections at once; qemu reads the same after a
#     rebase; nginx saw no request other than GET/HEAD.
# (3) Extents: nbdinfo --map over the overlay agrees with qemu-nbd's map
#     of the rebased overlay (adjacent extents of one type merged); and
#     directly: written ranges are data, untouched base holes are holes.
#
# Knobs: QC_OVERLAY_OPS=N random operations per run (default 300),
# QC_OVERLAY_SEED=N first seed (default 4200).

. "${srcdir:-.}/functions.sh"

requires qemu-img --version
requires qemu-nbd --version
requires nbdinfo --version
requires nbdcopy --version
requires nbdsh --version
requires sha256sum --version
requires cmp --version
requires timeout --version
requires "$PYTHON" -c 'import nbd'
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"
"$NBDKIT" --filter=overlay null --dump-plugin >/dev/null ||
  fail "the overlay filter does not load"

randomops=$(cd "${srcdir:-.}" && pwd)/random-ops.py
[ -r "$randomops" ] || fail "$randomops not found"
nops=${QC_OVERLAY_OPS:-300}
seed=${QC_OVERLAY_SEED:-4200}

cd "$tmpdir"
M=$((1024 * 1024))
size=$((32 * M))

# ---------------------------------------------------------------------
# Helpers.

# Servers run in the foreground as our children, so that their exit (and
# the overlay's metadata written back on exit) can be waited for.
declare -A server_pid
# serve NAME CMD...: CMD must listen on $tmpdir/NAME.sock.
serve ()
{
  local name=$1; shift
  local sock=$tmpdir/$name.sock i
  rm -f "$sock"
  "$@" >"$tmpdir/$name.log" 2>&1 &
  server_pid[$name]=$!
  on_exit "kill ${server_pid[$name]} 2>/dev/null; wait ${server_pid[$name]} 2>/dev/null"
  for i in $(seq 1 300); do
    [ -S "$sock" ] && return 0
    kill -0 "${server_pid[$name]}" 2>/dev/null || break
    sleep 0.05
  done
  cat "$tmpdir/$name.log" >&2
  fail "server $name ($*) did not start"
}
serve_overlay () { local n=$1; shift; serve "$n" "$NBDKIT" -f -U "$tmpdir/$n.sock" "$@"; }
serve_qemu () {
  serve "$1" qemu-nbd -f qcow2 --discard=unmap --persistent \
    -k "$tmpdir/$1.sock" "$2"
}
# stop NAME: stop the server and check that it exited cleanly.
stop ()
{
  local rc=0
  kill "${server_pid[$1]}" 2>/dev/null || :
  wait "${server_pid[$1]}" || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$tmpdir/$1.log" >&2
    fail "server $1 exited with status $rc"
  fi
}
uri () { nbd_uri "$tmpdir/$1.sock"; }

# random_ops SEED NAME NAME: the same random operations on both servers.
random_ops ()
{
  timeout 300 "$PYTHON" "$randomops" "$1" "$nops" "$(uri "$2")" \
    "$(uri "$3")" >"$tmpdir/ops.out" 2>&1 || {
    cat "$tmpdir/ops.out" >&2
    fail "random-ops.py seed $1: the overlay ($2) and qemu ($3) differ"
  }
  echo "  $(tail -n 1 "$tmpdir/ops.out")"
}

# check_image IMG: qemu-img check must find nothing to complain about.
check_image ()
{
  qemu-img check "$1" >"$tmpdir/check.out" 2>&1 || {
    cat "$tmpdir/check.out" >&2
    fail "qemu-img check $1 failed"
  }
}

# concurrent NAME: several connections write into the overlay served as
# NAME at once (conc.py), then it must read as the model.
cat >conc.py <<'EOF'
# conc.py URI BASE NTHREADS NOPS SEED: NTHREADS connections write at once,
# each only inside its own 4K blocks (block number % NTHREADS), at random
# unaligned places; neighbours' blocks share clusters, so copy-on-write of
# one thread's cluster races with the others' writes.  Then the overlay
# must read as the base with every thread's writes applied.
import random, sys, threading
import nbd
uri, base, nthreads, nops, seed = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                   int(sys.argv[4]), int(sys.argv[5]))
model = bytearray(open(base, "rb").read())
size = len(model)
B = 4096
nblocks = size // B
errors = []
def worker(t):
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        rng = random.Random(seed * 100 + t)
        for i in range(nops):
            blk = rng.randrange(t, nblocks, nthreads)
            off = blk * B + rng.randrange(0, B)
            n = rng.randint(1, blk * B + B - off)
            if rng.random() < 0.2:
                h.zero(n, off)
                data = bytes(n)
            else:
                data = rng.randbytes(n)
                h.pwrite(data, off)
            model[off:off + n] = data
            if rng.random() < 0.02:
                h.flush()
        h.flush()
        h.shutdown()
    except Exception as e:
        errors.append("thread %d: %s" % (t, e))
ts = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
for t in ts: t.start()
for t in ts: t.join()
if errors:
    sys.exit(errors[0])
h = nbd.NBD()
h.connect_uri(uri)
for off in range(0, size, 1 << 20):
    got = h.pread(min(1 << 20, size - off), off)
    if got != model[off:off + len(got)]:
        k = next(k for k in range(len(got)) if got[k] != model[off + k])
        sys.exit("offset %d differs from the model" % (off + k))
print("%d threads x %d writes: contents as expected" % (nthreads, nops))
EOF
concurrent ()
{
  timeout 300 "$PYTHON" conc.py "$(uri "$1")" base.raw 8 1000 "$2" \
    >conc.out 2>&1 || { cat conc.out >&2;
                       fail "concurrent writers: the overlay ($1) is wrong"; }
  echo "  $(tail -n 1 conc.out)"
}

# The base: 32M, sparse, data at unaligned places, holes in between.
"$PYTHON" - base.raw $size <<'EOF'
import random, sys
path, size = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
M = 1 << 20
with open(path, "wb") as f:
    f.truncate(size)
    for off, n in [(0, M), (3 * M + 1000, 200000), (10 * M, 2 * M),
                   (17 * M + 4096, 65536 * 3 + 512), (31 * M, 4096)]:
        f.seek(off)
        f.write(rng.randbytes(n))
EOF
base_sum=$(sha256sum <base.raw)

# ---------------------------------------------------------------------
echo "(1) overlay over nbdkit file base.raw"

# Option sets: overlay options, and qemu-img create -o options making
# the equivalent qemu overlay.
optsets=(
  "|extended_l2=on"
  "overlay-cluster-size=4k overlay-extended-l2=off|cluster_size=4096"
  "overlay-compat=0.10|compat=0.10"
  "overlay-cluster-size=2M|cluster_size=2M,extended_l2=on"
  "overlay-refcount-bits=1 overlay-lazy-refcounts=on|refcount_bits=1,lazy_refcounts=on,extended_l2=on"
  "overlay-compress=zstd|extended_l2=on,compression_type=zstd"
)
n=0
for set in "${optsets[@]}"; do
  n=$((n + 1))
  ovopts=${set%%|*} qopts=${set#*|}
  echo " options: ${ovopts:-(defaults)}"
  rm -f ov$n.qcow2
  qemu-img create -q -f qcow2 -b base.raw -F raw -o "$qopts" model$n.qcow2
  # shellcheck disable=SC2086
  serve_overlay ov --filter=overlay file base.raw overlay=ov$n.qcow2 $ovopts
  serve_qemu model model$n.qcow2
  random_ops $((seed + n)) ov model
  stop ov
  stop model
  [ -s ov$n.qcow2 ] || fail "ov$n.qcow2 was not created"
  [ "$(sha256sum <base.raw)" = "$base_sum" ] ||
    fail "base.raw changed (options: $ovopts)"
  check_image ov$n.qcow2
  # The overlay was created with the options asked for.
  info=$(qemu-img info --output=json ov$n.qcow2)
  minfo=$(qemu-img info --output=json model$n.qcow2)
  "$PYTHON" - "$info" "$minfo" <<'EOF' || fail "ov$n.qcow2 has other creation options than model$n.qcow2"
import json, sys
a, b = (json.loads(s) for s in sys.argv[1:3])
for k in ("virtual-size", "cluster-size"):
    if a[k] != b[k]:
        sys.exit("%s: %s != %s" % (k, a[k], b[k]))
fa, fb = a["format-specific"]["data"], b["format-specific"]["data"]
for k in ("compat", "refcount-bits", "lazy-refcounts", "extended-l2",
          "compression-type"):
    if fa.get(k) != fb.get(k):
        sys.exit("%s: %s != %s" % (k, fa.get(k), fb.get(k)))
if "backing-filename" in a:
    sys.exit("backing file name recorded without overlay-backing-name")
EOF
  # Restart with the same overlay: the changes are still there.
  # shellcheck disable=SC2086
  serve_overlay ov --filter=overlay file base.raw overlay=ov$n.qcow2 $ovopts
  nbdcopy "$(uri ov)" served$n.raw
  stop ov
  qemu-img convert -O raw model$n.qcow2 model$n.raw
  cmp served$n.raw model$n.raw ||
    fail "after a restart the overlay serves other bytes than qemu's model"
  check_image ov$n.qcow2
  # Merge with qemu: name the backing file, then qemu reads the same.
  cp ov$n.qcow2 rebased$n.qcow2
  qemu-img rebase -u -b base.raw -F raw rebased$n.qcow2
  qemu-img convert -O raw rebased$n.qcow2 conv$n.raw
  cmp conv$n.raw served$n.raw ||
    fail "qemu reads the rebased overlay differently from nbdkit"
  qemu-img compare -q rebased$n.qcow2 model$n.qcow2 ||
    fail "the rebased overlay differs from qemu's model"
  rm -f served$n.raw model$n.raw conv$n.raw
done

echo " a known write persists across restarts"
serve_overlay ov --filter=overlay file base.raw overlay=ov1.qcow2
nbdsh -u "$(uri ov)" -c 'h.pwrite(b"persistent!" * 1000, 5 * 1024 * 1024 + 3)'
stop ov
serve_overlay ov --filter=overlay file base.raw overlay=ov1.qcow2
nbdsh -u "$(uri ov)" -c '
assert h.pread(11000, 5 * 1024 * 1024 + 3) == b"persistent!" * 1000
assert not h.is_read_only() and h.can_multi_conn()'
stop ov
check_image ov1.qcow2
[ "$(sha256sum <base.raw)" = "$base_sum" ] || fail "base.raw changed"

echo " overlay-backing-name=base.raw: qemu opens the overlay as it is"
rm -f named.qcow2
qemu-img create -q -f qcow2 -b base.raw -F raw -o extended_l2=on model-named.qcow2
serve_overlay ov --filter=overlay file base.raw overlay=named.qcow2 \
  overlay-backing-name=base.raw
serve_qemu model model-named.qcow2
random_ops $((seed + 100)) ov model
nbdcopy "$(uri ov)" served-named.raw
stop ov
stop model
check_image named.qcow2
qemu-img info --output=json named.qcow2 >info.json
"$PYTHON" - info.json <<'EOF' || fail "named.qcow2 does not name base.raw (raw) as its backing file"
import json, sys
i = json.load(open(sys.argv[1]))
assert i.get("backing-filename") == "base.raw", i.get("backing-filename")
assert i.get("backing-filename-format") == "raw", i.get("backing-filename-format")
EOF
qemu-img convert -O raw named.qcow2 conv-named.raw
cmp conv-named.raw served-named.raw ||
  fail "qemu reads named.qcow2 differently from what nbdkit served"
qemu-img compare -q named.qcow2 model-named.qcow2 ||
  fail "named.qcow2 differs from qemu's model"
# ... and it is reused as it is by nbdkit (the name is ignored there).
serve_overlay ov --filter=overlay file base.raw overlay=named.qcow2
nbdcopy "$(uri ov)" served-named2.raw
stop ov
cmp served-named.raw served-named2.raw || fail "named.qcow2 not reused"
# Merging into a copy of the base: qemu-img commit.
cp base.raw base-copy.raw
cp named.qcow2 commit.qcow2
qemu-img rebase -u -b base-copy.raw -F raw commit.qcow2
qemu-img commit -q commit.qcow2
cmp base-copy.raw served-named.raw ||
  fail "after qemu-img commit the base copy differs from what was served"
rm -f served-named.raw served-named2.raw conv-named.raw base-copy.raw
[ "$(sha256sum <base.raw)" = "$base_sum" ] || fail "base.raw changed"

echo " concurrent writers on several connections"
for ovopts in "" "overlay-extended-l2=off" \
              "overlay-cluster-size=4k overlay-extended-l2=off"; do
  rm -f conc.qcow2
  # shellcheck disable=SC2086
  serve_overlay ov --filter=overlay file base.raw overlay=conc.qcow2 $ovopts
  concurrent ov $((seed + 300))
  nbdcopy "$(uri ov)" conc-served.raw
  stop ov
  check_image conc.qcow2
  qemu-img rebase -u -b base.raw -F raw conc.qcow2
  qemu-img convert -O raw conc.qcow2 conc-conv.raw
  cmp conc-conv.raw conc-served.raw ||
    fail "qemu reads the overlay written concurrently differently"
done
rm -f conc-served.raw conc-conv.raw
[ "$(sha256sum <base.raw)" = "$base_sum" ] || fail "base.raw changed"

echo " a relative overlay= name with nbdkit in the background"
start_nbdkit relsock --filter=overlay file base.raw overlay=rel.qcow2
nbdsh -u "$(nbd_uri "$relsock")" -c 'h.pwrite(b"x" * 512, 0); h.flush()'
[ -s "$tmpdir/rel.qcow2" ] || fail "overlay=rel.qcow2 was not created in the working directory"
[ ! -e /rel.qcow2 ] || fail "overlay=rel.qcow2 was created in /"

echo " a base of the wrong size is refused"
truncate -s 16M small.raw
ov_sum=$(sha256sum <ov1.qcow2)
if timeout 60 "$NBDKIT" -U - --filter=overlay file small.raw \
     overlay=ov1.qcow2 --run 'nbdinfo "$uri"' >/dev/null 2>size.err; then
  fail "an overlay over a base of another size was served"
fi
grep -q "overlay=.*ov1.qcow2 has a virtual size of $size bytes, but the plugin below serves $((16 * M)) bytes" size.err || {
  cat size.err >&2
  fail "no clear error for a base of the wrong size"
}
[ "$(sha256sum <ov1.qcow2)" = "$ov_sum" ] || fail "a refused overlay was modified"

echo " a base whose size is not a whole number of sectors"
head -c $((M + 3)) base.raw >odd.raw
rm -f odd.qcow2
serve_overlay ov --filter=overlay file odd.raw overlay=odd.qcow2
nbdsh -u "$(uri ov)" -c '
assert h.get_size() == (1 << 20) + 3, h.get_size()
h.pwrite(b"tail", (1 << 20) - 1)'
nbdcopy "$(uri ov)" odd-served.raw
stop ov
[ "$(stat -c %s odd-served.raw)" -eq $((M + 3)) ] ||
  fail "over a base of $((M + 3)) bytes, $(stat -c %s odd-served.raw) bytes were served"
check_image odd.qcow2
# Reused: the overlay is 509 bytes longer (qcow2 rounds up to sectors).
serve_overlay ov --filter=overlay file odd.raw overlay=odd.qcow2
nbdcopy "$(uri ov)" odd-served2.raw
stop ov
cmp odd-served.raw odd-served2.raw || fail "odd.qcow2 not reused"
qemu-img rebase -u -b odd.raw -F raw odd.qcow2
qemu-img convert -O raw odd.qcow2 odd-conv.raw
cmp -n $((M + 3)) odd-conv.raw odd-served.raw ||
  fail "qemu reads the overlay of odd.raw differently from nbdkit"
rm -f odd-served.raw odd-served2.raw odd-conv.raw

echo " meaningless or bad options are refused"
# refuse REGEX ARGS...: nbdkit must refuse to start, saying REGEX.
refuse ()
{
  local re=$1; shift
  if timeout 60 "$NBDKIT" -U - --filter=overlay file base.raw "$@" \
       --run true >/dev/null 2>refuse.err; then
    fail "nbdkit started with $*"
  fi
  grep -Eq "$re" refuse.err || {
    cat refuse.err >&2
    fail "nbdkit $*: expected an error matching '$re'"
  }
}
refuse "add overlay=FILE"
for key in size create format backing snapshot backing-file file data-file-raw; do
  refuse "overlay-$key=.*not an overlay option" overlay=x.qcow2 "overlay-$key=1"
done
refuse "overlay-nosuch=1: unknown overlay option" overlay=x.qcow2 overlay-nosuch=1
refuse "overlay-backing-format=raw needs overlay-backing-name" overlay=x.qcow2 \
  overlay-backing-format=raw
refuse "extended-l2=on" overlay=x.qcow2 overlay-preallocation=metadata \
  overlay-extended-l2=off
refuse "cluster-size" overlay=x.qcow2 overlay-cluster-size=3k
[ ! -e x.qcow2 ] || fail "a refused configuration created its overlay"
# Another export name than the default is refused.
if timeout 60 "$NBDKIT" -U - --filter=overlay file base.raw overlay=ov1.qcow2 \
     --run 'nbdinfo "nbd+unix:///other?socket=$unixsocket"' \
     >/dev/null 2>export.err; then
  fail "export 'other' was served"
fi
grep -q "only the default export" export.err || {
  cat export.err >&2; fail "no clear error for export 'other'"; }

# ---------------------------------------------------------------------
echo "(2) overlay over nbdkit curl (nginx on 127.0.0.1)"

skip2=
if ! command -v nginx >/dev/null 2>&1 &&
   ! [ -x /usr/sbin/nginx ]; then
  skip2="nginx is not installed (Debian: apt-get install nginx)"
elif ! "$NBDKIT" curl --dump-plugin >/dev/null 2>&1; then
  skip2="the nbdkit curl plugin does not load (Debian: it is in the nbdkit package)"
fi
if [ -n "$skip2" ]; then
  echo "SKIP part (2) only: $skip2" >&2
else
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  port=$("$PYTHON" -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
  mkdir -p nginx-tmp
  cat >nginx.conf <<EOF
daemon on;
worker_processes 1;
pid $tmpdir/nginx.pid;
error_log $tmpdir/nginx-error.log;
user $(id -un) $(id -gn);
events { worker_connections 64; }
http {
  access_log $tmpdir/nginx-access.log;
  client_body_temp_path $tmpdir/nginx-tmp/body;
  proxy_temp_path $tmpdir/nginx-tmp/proxy;
  fastcgi_temp_path $tmpdir/nginx-tmp/fastcgi;
  uwsgi_temp_path $tmpdir/nginx-tmp/uwsgi;
  scgi_temp_path $tmpdir/nginx-tmp/scgi;
  types { application/octet-stream raw; }
  server {
    listen 127.0.0.1:$port;
    root $tmpdir;
  }
}
EOF
  "$NGINX" -p "$tmpdir" -e "$tmpdir/nginx-error.log" -c "$tmpdir/nginx.conf" \
    2>nginx.start || { cat nginx.start nginx-error.log >&2 || :;
                       fail "nginx did not start"; }
  on_exit "kill \$(cat '$tmpdir/nginx.pid') 2>/dev/null"
  url=http://127.0.0.1:$port/base.raw
  for i in $(seq 1 100); do
    "$PYTHON" -c "
import socket, sys
socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
    sleep 0.1
  done
  # The curl plugin reads base.raw as it is.
  nbdcopy -- [ "$NBDKIT" -r curl "$url" ] curl-base.raw ||
    fail "nbdkit curl $url does not work"
  cmp curl-base.raw base.raw || fail "nbdkit curl reads another base.raw"
  rm -f curl-base.raw

  rm -f curl-ov.qcow2
  qemu-img create -q -f qcow2 -b base.raw -F raw -o extended_l2=on model-curl.qcow2
  serve_overlay ov --filter=overlay curl "$url" overlay=curl-ov.qcow2
  serve_qemu model model-curl.qcow2
  random_ops $((seed + 200)) ov model
  # Several connections reading at once through the one plugin handle.
  nbdcopy --connections=4 --requests=16 --request-size=65536 \
    "$(uri ov)" curl-served.raw
  nbdcopy "$(uri model)" curl-model.raw
  cmp curl-served.raw curl-model.raw ||
    fail "over curl the overlay serves other bytes than qemu's model"
  stop ov
  stop model
  check_image curl-ov.qcow2
  [ "$(sha256sum <base.raw)" = "$base_sum" ] || fail "base.raw changed"
  # Concurrent writers through the one (serialize_requests) curl handle.
  rm -f curl-conc.qcow2
  serve_overlay ov --filter=overlay curl "$url" overlay=curl-conc.qcow2
  concurrent ov $((seed + 400))
  stop ov
  check_image curl-conc.qcow2
  # nginx saw reads only.
  if grep -Ev '"(GET|HEAD) ' nginx-access.log >nginx-other.log; then
    cat nginx-other.log >&2
    fail "the curl plugin sent requests other than GET/HEAD"
  fi
  # Restart: the changes persist; then qemu reads the same after rebase.
  serve_overlay ov --filter=overlay curl "$url" overlay=curl-ov.qcow2
  nbdcopy "$(uri ov)" curl-served2.raw
  stop ov
  cmp curl-served.raw curl-served2.raw ||
    fail "over curl, changes did not persist across a restart"
  qemu-img rebase -u -b base.raw -F raw curl-ov.qcow2
  qemu-img convert -O raw curl-ov.qcow2 curl-conv.raw
  cmp curl-conv.raw curl-served.raw ||
    fail "qemu reads the rebased curl overlay differently from nbdkit"
  check_image curl-ov.qcow2
  echo "  $(grep -c . nginx-access.log) HTTP requests, all GET/HEAD"
  rm -f curl-served.raw curl-served2.raw curl-model.raw curl-conv.raw
fi

# ---------------------------------------------------------------------
echo "(3) extents"

# merge MAP: nbdinfo --map output as "offset length type" lines with
# adjacent extents of the same type merged.
cat >merge-map.py <<'EOF'
import sys
out = []
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) < 3:
        continue
    off, ln, ty = int(f[0]), int(f[1]), int(f[2])
    if out and out[-1][2] == ty and out[-1][0] + out[-1][1] == off:
        out[-1][1] += ln
    else:
        out.append([off, ln, ty])
for e in out:
    print(*e)
EOF
for n in $(seq 1 ${#optsets[@]}); do
  nbdinfo --map -- [ "$NBDKIT" -r --filter=overlay file base.raw \
    overlay=rebased$n.qcow2 ] >plugin.map ||
    fail "nbdinfo --map over the overlay failed"
  nbdinfo --map -- [ qemu-nbd -r -f qcow2 rebased$n.qcow2 ] >qemu.map ||
    fail "nbdinfo --map over qemu-nbd failed"
  "$PYTHON" merge-map.py plugin.map >plugin.merged
  "$PYTHON" merge-map.py qemu.map >qemu.merged
  if ! cmp -s plugin.merged qemu.merged; then
    diff -u qemu.merged plugin.merged >&2 || :
    fail "the overlay's map (+) differs from qemu-nbd's (-), options: ${optsets[$((n - 1))]%%|*}"
  fi
  echo "  options ${optsets[$((n - 1))]%%|*}: $(wc -l <plugin.merged) extents agree"
done

# Directly: a write into a base hole is data, base data stays data,
# untouched base holes stay holes.
rm -f map.qcow2
serve_overlay ov --filter=overlay file base.raw overlay=map.qcow2
nbdsh -u "$(uri ov)" -c '
M = 1 << 20
h.pwrite(b"d" * 65536, 6 * M)            # in a base hole, aligned
h.pwrite(b"e" * 100, 20 * M + 7)         # in a base hole, tiny
h.flush()
'
nbdinfo --map "$(uri ov)" >map.out
stop ov
"$PYTHON" - map.out <<'EOF' || { cat map.out >&2; fail "unexpected extents"; }
import sys
M = 1 << 20
ext = []
for line in open(sys.argv[1]):
    f = line.split()
    ext.append((int(f[0]), int(f[1]), int(f[2])))
def types(off, n):
    return {t for o, l, t in ext if o < off + n and off < o + l}
checks = [
    (6 * M, 65536, {0}, "written into a hole"),
    (20 * M + 7, 100, {0}, "written (100 bytes) into a hole"),
    (0, M, {0}, "base data"),
    (10 * M, 2 * M, {0}, "base data"),
    (7 * M, M, {3}, "untouched base hole"),
    (25 * M, 5 * M, {3}, "untouched base hole"),
]
for off, n, want, what in checks:
    got = types(off, n)
    if got != want:
        sys.exit("[%d, +%d) %s: types %s, expected %s" % (off, n, what,
                                                          got, want))
EOF
check_image map.qcow2

echo "PASS"
