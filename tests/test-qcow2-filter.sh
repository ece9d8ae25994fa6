#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The qcow2 filter: the plugin below serves the bytes of a qcow2 image
# (the container), the filter serves the guest disk.  qemu is the oracle.
#
#  1. read matrix: every image of make-images.sh served by
#     `nbdkit --filter=qcow2 file IMG` (plus internal snapshots picked by
#     export name) reads as `qemu-img convert -O raw`
#  2. qcow2-create over `nbdkit memory` and over a fixed-size file:
#     write through the filter (several connections), read back, stop,
#     then qemu-img check the container file and compare with qemu
#  3. over the nbd plugin proxying `qemu-nbd -f raw` of a qcow2 file:
#     read and write through the filter, then qemu-img check + compare
#  4. over `nbdkit curl` from nginx on loopback (read-only, nbdkit -r)
#  5. ENOSPC: a container too small for the data fails writes with
#     ENOSPC; afterwards the image checks clean and flushed data is intact
#  6. a virt-v2v-style conversion: nbdcopy from
#     `nbdkit --filter=qcow2 --filter=xz file src.qcow2.xz` into
#     `nbdkit qcow2 out.qcow2 create=true size=...`; qemu-img compare
#  7. refusals: not a qcow2 container, read-only container with create,
#     size mismatch with qcow2-create=true, qcow2-backing-from=plugin,
#     a relative external data file name; and nbdkit -r writes nothing
#
# Sub-tests that need a missing tool (nginx, nbdkit's curl plugin or xz
# filter, xz) are skipped with a message; the rest still runs (with
# QC_FAIL_ON_SKIP=1, as in CI, a skipped sub-test fails the test).
# Set QC_TEST_IMAGES=DIR to reuse images made earlier by make-images.sh.

. "${srcdir:-.}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdcopy --version
requires nbdinfo --version
requires timeout --version
requires cmp --version
requires "$PYTHON" -c 'import nbd'
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"
filter_so=$top_builddir/filters/.libs/nbdkit-qcow2-filter.so
[ -f "$filter_so" ] || fail "$filter_so not built"

M=$((1024 * 1024))
skipped=()
skip () { echo "SKIP: $*"; skipped+=("$*"); }

# qsize IMG: virtual size as qemu sees it.
qsize ()
{
  qemu-img info --output=json "$1" |
    "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'
}

# check_clean IMG: qemu-img check exits 0 (no corruption, no leaks).
check_clean ()
{
  if ! qemu-img check "$1" >"$tmpdir/check.out" 2>&1; then
    cat "$tmpdir/check.out" >&2
    fail "qemu-img check $1 is not clean"
  fi
}

# srv_start LOG ARGS...: "$NBDKIT -f -U SOCK ARGS" in the background,
# waiting until it serves (it writes its pid file once it listens);
# returns 1 if it dies first.  Sets srvsock.
# srv_stop stops it (nbdkit then closes the image: metadata written).
srvpid= srvn=0
srv_start ()
{
  local log=$1; shift
  srvn=$((srvn + 1))
  srvsock=$tmpdir/srv$srvn.sock
  local pidfile=$tmpdir/srv$srvn.pid
  "$NBDKIT" -f -U "$srvsock" -P "$pidfile" "$@" 2>"$log" &
  srvpid=$!
  local _
  for _ in $(seq 1000); do
    [ -S "$srvsock" ] && [ -s "$pidfile" ] && return 0
    kill -0 "$srvpid" 2>/dev/null || { wait "$srvpid" || :; srvpid=; return 1; }
    sleep 0.01
  done
  return 1
}
srv_stop ()
{
  [ -n "$srvpid" ] || return 0
  kill "$srvpid" 2>/dev/null || :
  wait "$srvpid" 2>/dev/null || :
  srvpid=
}
on_exit srv_stop

# ------------------------------------------------- 1. the read matrix
echo "== 1. read matrix through --filter=qcow2 file"
imgdir=${QC_TEST_IMAGES:-$tmpdir/images}
if [ -z "${QC_TEST_IMAGES:-}" ]; then
  "${srcdir:-.}/make-images.sh" "$imgdir" >/dev/null
fi
[ -s "$imgdir/list.txt" ] || fail "no $imgdir/list.txt"
imgdir=$(cd "$imgdir" && pwd)

n=0 failed=0
while read -r -u 3 img args; do
  [ -n "$img" ] || continue
  n=$((n + 1))
  # shellcheck disable=SC2086
  set -- $args
  desc="$img${args:+ $args}"
  # The filter's options: the plugin's, with the qcow2- prefix.  The
  # oracle: qemu-img convert with the same overrides.
  fargs=() fmt=qcow2 backing='' bfmt='' snap=''
  for a in "$@"; do
    fargs+=("qcow2-$a")
    case $a in
      format=*) fmt=${a#format=} ;;
      backing=*) backing=${a#backing=} ;;
      backing-format=*) bfmt=${a#backing-format=} ;;
      snapshot=*) snap=${a#snapshot=} ;;
    esac
  done
  # Run from the image's directory: the container has no directory, so
  # relative backing names are looked up in the current one.
  dir=$(dirname "$imgdir/$img") base=$(basename "$img")
  src=$dir/$base
  if [ -n "$snap" ]; then
    cp "$src" "$dir/.snap.$base"
    qemu-img snapshot -a "$snap" "$dir/.snap.$base"
    src=$dir/.snap.$base
  fi
  if [ -n "$backing" ]; then
    if [ "$backing" = none ]; then b=null; else
      [ -n "$bfmt" ] || bfmt=$(qemu-img info --output=json "$backing" |
        "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["format"])')
      b="{\"driver\":\"$bfmt\",\"file\":{\"driver\":\"file\",\"filename\":\"$backing\"}}"
    fi
    q=("json:{\"driver\":\"$fmt\",\"file\":{\"driver\":\"file\",\"filename\":\"$src\"},\"backing\":$b}")
  else
    q=(-f "$fmt" "$src")
  fi
  expect=$tmpdir/expect.raw
  rm -f "$expect" "$tmpdir/got.raw"
  (cd "$dir" && qemu-img convert "${q[@]}" -O raw "$expect") ||
    fail "qemu-img convert failed on $desc"
  rm -f "$dir/.snap.$base"

  # An external data file with a relative name is refused by design,
  # when nbdkit starts.
  datafile=$(qemu-img info --output=json "$imgdir/$img" | "$PYTHON" -c '
import json,sys
print(json.load(sys.stdin).get("format-specific",{}).get("data",{}).get("data-file",""))')
  bad=
  pushd "$dir" >/dev/null
  if ! srv_start "$tmpdir/srv.log" -r --filter=qcow2 \
       file "$base" "${fargs[@]}"; then
    bad="nbdkit did not start: $(head -n 5 "$tmpdir/srv.log")"
  fi
  popd >/dev/null
  if [ -n "$datafile" ] && [ "${datafile#/}" = "$datafile" ]; then
    if [ -z "$bad" ]; then
      bad="an image with a relative data file name was served"
    elif ! grep -q "relative name" "$tmpdir/srv.log"; then
      bad="no clear message for the relative data file: $(cat "$tmpdir/srv.log")"
    else
      echo "ok: $desc (refused at startup: relative external data file name)"
      continue
    fi
  elif [ -z "$bad" ]; then
    uri=$(nbd_uri "$srvsock")
    if ! timeout 60 nbdcopy "$uri" "$tmpdir/got.raw" 2>"$tmpdir/copy.err"; then
      bad="nbdcopy failed: $(cat "$tmpdir/copy.err") $(head -n 5 "$tmpdir/srv.log")"
    elif ! cmp "$expect" "$tmpdir/got.raw" >"$tmpdir/cmp.out" 2>&1; then
      bad="differs from qemu-img convert: $(cat "$tmpdir/cmp.out")"
    fi
  fi
  srv_stop
  if [ -n "$bad" ]; then
    failed=$((failed + 1))
    echo "FAIL: $desc: $bad"
    echo "  reproduce (in $dir): $NBDKIT -r --filter=qcow2 file $base ${fargs[*]}"
  else
    echo "ok: $desc ($(stat -c %s "$expect") bytes)"
  fi
done 3< "$imgdir/list.txt"
echo "$n images read through the filter, $failed failed"
[ "$n" -ge 40 ] || fail "only $n images in the matrix"
[ "$failed" -eq 0 ] || fail "$failed of $n images read differently from qemu"

# Internal snapshots chosen by export name, and listed as exports.
cat > "$tmpdir/snaps.py" <<'EOF'
# snaps.py IMG SOCK: list IMG's snapshots as "ID<TAB>NAME" lines, after
# checking that the server on SOCK lists each as an export.
import json, subprocess, sys
import nbd
img, sock = sys.argv[1], sys.argv[2]
info = json.loads(subprocess.check_output(
    ["qemu-img", "info", "--output=json", img]))
snaps = [(s["id"], s["name"]) for s in info.get("snapshots", [])]
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(sock)
names = []
h.opt_list(lambda name, desc: names.append(name))
h.opt_abort()
for i, name in snaps:
    if name not in names:
        sys.exit("%s: snapshot '%s' is not listed (exports: %s)"
                 % (img, name, names))
    print("%s\t%s" % (i, name))
EOF
cat > "$tmpdir/readexport.py" <<'EOF'
# readexport.py SOCK NAME OUT: read all of export NAME into OUT.
import sys
import nbd
h = nbd.NBD()
h.set_export_name(sys.argv[2])
h.connect_unix(sys.argv[1])
size = h.get_size()
with open(sys.argv[3], "wb") as f:
    off = 0
    while off < size:
        n = min(8 << 20, size - off)
        f.write(h.pread(n, off))
        off += n
EOF
cd "$imgdir"
while read -r -u 3 img; do
  [ -n "$img" ] || continue
  srv_start "$tmpdir/srv.log" -r --filter=qcow2 file "$img" ||
    fail "$img: nbdkit did not start: $(cat "$tmpdir/srv.log")"
  "$PYTHON" "$tmpdir/snaps.py" "$img" "$srvsock" > "$tmpdir/snaps.txt" ||
    fail "$img: snapshots are not listed as exports"
  while IFS=$'\t' read -r -u 4 id name; do
    # The oracle restores by ID: qemu-img snapshot -a looks a name up as
    # an ID first, and a snapshot may be named like another one's ID.
    cp "$img" ".snap.$img"
    qemu-img snapshot -a "$id" ".snap.$img"
    qemu-img convert -O raw ".snap.$img" "$tmpdir/expect.raw"
    rm -f ".snap.$img"
    "$PYTHON" "$tmpdir/readexport.py" "$srvsock" "$name" "$tmpdir/got.raw" ||
      fail "$img: cannot read export '$name': $(cat "$tmpdir/srv.log")"
    cmp "$tmpdir/expect.raw" "$tmpdir/got.raw" ||
      fail "$img: export '$name' differs from qemu's snapshot $id"
    echo "ok: $img export '$name' (internal snapshot $id)"
  done 4< "$tmpdir/snaps.txt"
  srv_stop
done 3< "$imgdir/snapshots.txt"
cd "$tmpdir"
rm -f "$tmpdir/expect.raw" "$tmpdir/got.raw"

# A helper writing a known pattern through one or more connections,
# recording the same writes in a raw file (the expected guest disk).
cat > "$tmpdir/writes.py" <<'EOF'
import os, random, sys, threading
import nbd

uri, raw, seed = sys.argv[1], sys.argv[2], sys.argv[3]
conns = int(sys.argv[4]) if len(sys.argv) > 4 else 1
rnd = random.Random(seed)
h0 = nbd.NBD()
h0.connect_uri(uri)
size = h0.get_size()
assert h0.can_multi_conn()
ops = []
# disjoint regions per connection so the result does not depend on
# scheduling; each connection writes, zeroes and trims in its region
region = size // conns
for c in range(conns):
    for i in range(40):
        kind = rnd.choice(["write", "write", "write", "zero", "trim"])
        off = c * region + rnd.randrange(region - 300000)
        n = rnd.choice([1, 511, 4096, 65536, 65537, rnd.randrange(1, 300000)])
        if kind == "trim":
            # whole 64k clusters: those read back as zeros (v3 images);
            # a partial cluster may keep its data (a trim is advisory)
            off = off // 65536 * 65536
            n = rnd.choice([1, 2, 4]) * 65536
        ops.append((c, kind, off, n, rnd.randbytes(n) if kind == "write" else None))
f = open(raw, "r+b")
for c, kind, off, n, data in ops:
    f.seek(off)
    f.write(data if kind == "write" else bytes(n))
f.close()

def worker(c):
    h = h0 if c == 0 else nbd.NBD()
    if c:
        h.connect_uri(uri)
    for cc, kind, off, n, data in ops:
        if cc != c:
            continue
        if kind == "write":
            h.pwrite(data, off)
        elif kind == "zero":
            h.zero(n, off)
        else:
            h.trim(n, off)
    h.flush()
    if c:
        h.shutdown()

ts = [threading.Thread(target=worker, args=(c,)) for c in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
# read back everything through a fresh connection
h = nbd.NBD()
h.connect_uri(uri)
want = open(raw, "rb").read()
off = 0
while off < size:
    n = min(4 << 20, size - off)
    if h.pread(n, off) != want[off:off + n]:
        sys.exit("read back differs in [%d, %d)" % (off, off + n))
    off += n
h.shutdown()
h0.shutdown()
EOF

# ----------------------------------------- 2. qcow2-create over a container
echo "== 2. qcow2-create over memory and over a file"
truncate -s 32M expect.raw
"$NBDKIT" -U - --filter=qcow2 memory 64M qcow2-create=true qcow2-size=32M \
  --run "'$PYTHON' '$tmpdir/writes.py' \"\$uri\" expect.raw mem 4 &&
         nbdinfo \"\$uri\" | grep -q 'qcow2 v3'" ||
  fail "qcow2-create over memory: writes did not read back"
echo "ok: memory 64M, qcow2-create=true qcow2-size=32M, 4 connections"

# The container is a 64M file: qemu can check it afterwards.
rm -f expect.raw container.img
truncate -s 32M expect.raw
truncate -s 64M container.img
"$NBDKIT" -U - --filter=qcow2 file container.img qcow2-create=true \
  qcow2-size=32M qcow2-cluster-size=4k \
  --run "'$PYTHON' '$tmpdir/writes.py' \"\$uri\" expect.raw file 4" ||
  fail "qcow2-create over a file: writes did not read back"
[ "$(stat -c %s container.img)" -eq $((64 * M)) ] ||
  fail "the container file changed size"
check_clean container.img
[ "$(qsize container.img)" -eq $((32 * M)) ] || fail "wrong virtual size"
qemu-img compare -f qcow2 -F raw container.img expect.raw ||
  fail "qemu reads the created container differently"
# A second run: create=true finds the image and keeps it.
"$NBDKIT" -U - --filter=qcow2 file container.img qcow2-create=true \
  qcow2-size=32M --run 'nbdcopy "$uri" got.raw' || fail "reopen failed"
cmp got.raw expect.raw || fail "create=true did not keep the image"
echo "ok: file container 64M: qemu-img check clean, compare identical"

# ------------------------------ 3. over the nbd plugin proxying qemu-nbd
echo "== 3. --filter=qcow2 nbd, with qemu-nbd -f raw serving a qcow2 file"
qemu-img create -q -f qcow2 -o cluster_size=64k viaqemu.qcow2 32M
qemu-io -c "write -P 0x5a 0 3M" -c "write -c -P 0x6b 8M 1M" \
  -c "write -z 9M 64k" viaqemu.qcow2 >/dev/null
# The container cannot grow: give it room first.
truncate -s 48M viaqemu.qcow2
qemu-img convert -O raw viaqemu.qcow2 expect.raw
cp expect.raw before.raw
qsock=$tmpdir/qemu-nbd.sock
qemu-nbd -f raw -k "$qsock" --persistent --shared=4 --pid-file=qemu-nbd.pid \
  viaqemu.qcow2 2>qemu-nbd.log &
qpid=$!
on_exit "kill $qpid 2>/dev/null; wait $qpid 2>/dev/null"
for _ in $(seq 500); do [ -S "$qsock" ] && break; sleep 0.01; done
[ -S "$qsock" ] || fail "qemu-nbd did not start: $(cat qemu-nbd.log)"
"$NBDKIT" -U - --filter=qcow2 nbd socket="$qsock" \
  --run "nbdcopy \"\$uri\" got.raw &&
         '$PYTHON' '$tmpdir/writes.py' \"\$uri\" expect.raw nbd 2" ||
  fail "through the nbd plugin: read or write failed"
cmp got.raw before.raw || fail "nbd plugin: read differs from qemu"
kill "$qpid"; wait "$qpid" 2>/dev/null || :
check_clean viaqemu.qcow2
qemu-img compare -f qcow2 -F raw viaqemu.qcow2 expect.raw ||
  fail "qemu reads the image written through qemu-nbd differently"
echo "ok: nbd plugin over qemu-nbd: read, written, check clean, identical"

# ------------------------------------------------------ 4. over curl
echo "== 4. --filter=qcow2 curl (read-only) from nginx on loopback"
if ! command -v nginx >/dev/null && ! [ -x /usr/sbin/nginx ]; then
  skip "curl sub-test: nginx is not installed (apt-get install nginx)"
elif ! nbdkit --dump-plugin curl >/dev/null 2>&1; then
  skip "curl sub-test: nbdkit's curl plugin is not installed"
else
  mkdir -p www
  qemu-img create -q -f qcow2 -o compression_type=zstd www/disk.qcow2 64M
  qemu-io -c "write -P 0x21 1M 5M" -c "write -c -P 0x22 20M 2M" \
    -c "write -z 30M 1M" -c "write -P 0x23 63M 1M" www/disk.qcow2 >/dev/null
  qemu-img snapshot -c base www/disk.qcow2
  qemu-io -c "write -P 0x24 1M 64k" www/disk.qcow2 >/dev/null
  qemu-img convert -O raw www/disk.qcow2 expect.raw
  start_nginx www base_url
  url=$base_url/disk.qcow2
  # nbdcopy uses several connections: they share the container's pool
  # of curl contexts (the curl plugin serializes requests per context:
  # the filter locks each).
  "$NBDKIT" -r -U - --filter=qcow2 curl "$url" \
    --run 'nbdcopy "$uri" got.raw && nbdinfo "$uri" | grep -q "read_only: true"' ||
    fail "reading through curl failed"
  cmp expect.raw got.raw || fail "curl: differs from qemu-img convert"
  cp www/disk.qcow2 snapcopy.qcow2
  qemu-img snapshot -a base snapcopy.qcow2
  qemu-img convert -O raw snapcopy.qcow2 expect-snap.raw
  "$NBDKIT" -r -U - --filter=qcow2 curl "$url" \
    --run 'nbdcopy "nbd+unix:///base?socket=$unixsocket" got.raw' ||
    fail "reading snapshot 'base' through curl failed"
  cmp expect-snap.raw got.raw || fail "curl: snapshot differs from qemu"
  echo "ok: curl from nginx: image and internal snapshot read as qemu does"
fi

# ----------------------------------------------------------- 5. ENOSPC
echo "== 5. ENOSPC: 2M container, qcow2-size=64M, writing 8M"
rm -f small.img
truncate -s 2M small.img
cat > enospc.py <<'EOF'
import errno, sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
first = bytes(range(256)) * 1024          # 256k, flushed before the end
h.pwrite(first, 0)
h.flush()
err = None
for i in range(8 * 16):                   # 8M in 64k writes
    try:
        h.pwrite(bytes([i % 251 + 1]) * 65536, (1 << 20) + i * 65536)
    except nbd.Error as e:
        err = e
        break
if err is None:
    sys.exit("8M of writes into a 2M container did not fail")
if err.errno not in (errno.ENOSPC, "ENOSPC"):   # a name in some versions
    sys.exit("the write failed with %s, not ENOSPC" % err)
print("write %d failed with ENOSPC as expected" % i)
if h.pread(len(first), 0) != first:
    sys.exit("flushed data changed")
# Trimmed clusters are reused once the frees are durable: the core
# applies them over two flushes (not while older I/O may use them).
h.trim(i * 65536 // 2 // 65536 * 65536, 1 << 20)
h.flush()
h.flush()
more = b"after trim" * 6553
h.pwrite(more, 1 << 20)
h.flush()
if h.pread(len(more), 1 << 20) != more:
    sys.exit("data written after the trim reads back differently")
h.shutdown()
EOF
"$NBDKIT" -U - --filter=qcow2 file small.img qcow2-create=true qcow2-size=64M \
  --run "'$PYTHON' enospc.py \"\$uri\"" 2>enospc.log ||
  { cat enospc.log; fail "ENOSPC sub-test failed"; }
grep -q "no space left" enospc.log ||
  fail "no message about the full container: $(cat enospc.log)"
[ "$(stat -c %s small.img)" -eq $((2 * M)) ] || fail "the container grew"
check_clean small.img
"$PYTHON" - <<'EOF' || fail "flushed data not intact after ENOSPC"
import subprocess, sys
subprocess.run(["qemu-img", "convert", "-O", "raw", "small.img", "small.raw"],
               check=True)
d = open("small.raw", "rb").read(256 * 1024)
sys.exit(d != bytes(range(256)) * 1024)
EOF
echo "ok: ENOSPC reported, container clean, flushed data intact"

# ----------------------------------------- 6. virt-v2v-style conversion
echo "== 6. nbdcopy -- [ --filter=qcow2 --filter=xz file src.qcow2.xz ] [ qcow2 create ]"
if ! nbdkit --filter=xz null --dump-plugin >/dev/null 2>&1; then
  skip "conversion sub-test: nbdkit's xz filter is not installed"
elif ! command -v xz >/dev/null; then
  skip "conversion sub-test: xz is not installed"
else
  qemu-img create -q -f qcow2 src.qcow2 96M
  qemu-io -c "write -P 0x31 0 4M" -c "write -c -P 0x32 10M 3M" \
    -c "write -z 40M 8M" -c "write -s $imgdir/rnd.bin 50M 2M" \
    -c "write -P 0x33 $((96 * M - 65536)) 65536" src.qcow2 >/dev/null
  xz -k -T1 --block-size=$((1 * M)) src.qcow2
  size=$(qsize src.qcow2)
  rm -f out.qcow2
  nbdcopy -- \
    [ "$NBDKIT" --filter=qcow2 --filter=xz file src.qcow2.xz ] \
    [ "$NBDKIT" qcow2 "$tmpdir/out.qcow2" create=true size="$size" ] ||
    fail "the conversion pipeline failed"
  qemu-img compare src.qcow2 out.qcow2 || fail "converted image differs"
  check_clean out.qcow2
  echo "ok: xz-compressed qcow2 converted: identical, check clean"
fi

# ------------------------------------------------------- 7. refusals
echo "== 7. refusals and read-only"
truncate -s 8M notqcow2.img
if "$NBDKIT" -U - --filter=qcow2 file notqcow2.img \
     --run 'nbdinfo "$uri"' >/dev/null 2>refuse.log; then
  fail "a container that is not qcow2 was served"
fi
grep -q "not a qcow2 image.*qcow2-create" refuse.log ||
  fail "no clear message for a non-qcow2 container: $(cat refuse.log)"
cmp notqcow2.img <(head -c 8M /dev/zero) || fail "the container was modified"

if "$NBDKIT" -r -U - --filter=qcow2 file notqcow2.img qcow2-create=true \
     qcow2-size=4M --run 'nbdinfo "$uri"' >/dev/null 2>refuse.log; then
  fail "qcow2-create worked on a read-only container"
fi
grep -q "read-only" refuse.log || fail "no message: $(cat refuse.log)"

if "$NBDKIT" -U - --filter=qcow2 file container.img qcow2-create=true \
     qcow2-size=16M --run 'nbdinfo "$uri"' >/dev/null 2>refuse.log; then
  fail "qcow2-create=true with another size was accepted"
fi
grep -q "qcow2-create=force" refuse.log || fail "no message: $(cat refuse.log)"

if "$NBDKIT" -U - --filter=qcow2 file container.img \
     qcow2-backing-from=plugin --run true 2>refuse.log; then
  fail "qcow2-backing-from=plugin was accepted"
fi
grep -q "export names" refuse.log || fail "no message: $(cat refuse.log)"

if "$NBDKIT" -U - --filter=qcow2 file container.img qcow2-no-such=1 \
     --run true 2>refuse.log; then
  fail "an unknown qcow2- option was accepted"
fi

sum=$(md5sum < container.img)
"$NBDKIT" -r -U - --filter=qcow2 file container.img \
  --run 'nbdinfo "$uri" | grep -q "is_read_only: true" &&
         ! nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 512, 0)" 2>/dev/null' ||
  fail "nbdkit -r: the export is writable"
[ "$(md5sum < container.img)" = "$sum" ] || fail "nbdkit -r changed the file"
echo "ok: refusals with clear messages; nbdkit -r writes nothing"

if [ ${#skipped[@]} -gt 0 ]; then
  echo "skipped sub-tests:"
  printf '  %s\n' "${skipped[@]}"
  # CI installs every tool: a skip there is a missing install step.
  [ "${QC_FAIL_ON_SKIP:-0}" != 1 ] ||
    fail "QC_FAIL_ON_SKIP=1 and ${#skipped[@]} sub-test(s) skipped"
fi
echo "all qcow2 filter tests passed"
