#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The modules behave as nbdkit's own do (issue 19): sizes as nbdkit and
# qemu-img take them, messages that repeat the option as typed, errors
# at startup, the read-only fallback said once, debug flags,
# --dump-plugin keys, the in-tree wrapper's spellings.
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires nbdinfo --version
requires timeout --version

top_srcdir=$(cd "${top_srcdir:-${srcdir:-.}/..}" && pwd)
cd "$tmpdir"
failures=0
check_fail () { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# run ARGS...: nbdkit -U - ARGS --run 'nbdinfo --size', stderr in
# run.err, stdout in run.out, status in $status.
run ()
{
  status=0
  timeout 60 "$NBDKIT" -U - "$@" --run 'nbdinfo --size "$uri"' \
    </dev/null >run.out 2>run.err || status=$?
}

# refused REGEX ARGS...: nbdkit refuses to start, with exactly one
# error line, matching REGEX.
refused ()
{
  local re="$1"; shift
  run "$@"
  if [ $status -eq 0 ] || [ -s run.out ]; then
    cat run.err >&2; check_fail "nbdkit $* started; expected /$re/"
  elif ! grep -Eq -- "$re" run.err; then
    cat run.err >&2; check_fail "nbdkit $*: no error matching /$re/"
  elif [ "$(grep -c 'error:' run.err)" -ne 1 ]; then
    cat run.err >&2; check_fail "nbdkit $*: more than one error"
  else
    echo "ok: nbdkit $*: $(cat run.err)"
  fi
}

# --- 1. Sizes and numbers -------------------------------------------------
# Every suffix nbdkit_parse_size takes; the size qemu-img sees agrees.
for spec in 1P:1P 3s:1536 2k:2K 5M:5M 1G:1G 1T:1T 4096:4096 1024b:1024; do
  arg=${spec%%:*} q=${spec#*:}
  rm -f n.qcow2 q.qcow2
  run qcow2 n.qcow2 create=true size=$arg
  qemu-img create -q -f qcow2 q.qcow2 "$q"
  want=$(qemu-img info --output=json q.qcow2 |
           "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
  if [ $status -ne 0 ] || [ "$(cat run.out)" != "$want" ]; then
    cat run.err >&2
    check_fail "size=$arg: served $(cat run.out), qemu-img $q gives $want"
  else
    echo "ok: size=$arg is $want bytes, as qemu-img $q"
  fi
done
rm -f n.qcow2
# A size option of each module, with its prefix, repeating the value.
refused '^nbdkit: error: size=1X: expected a size.*s \(512-byte sectors\), k, M, G, T, P or E$' \
  qcow2 n.qcow2 create=true size=1X
refused '^nbdkit: error: qcow2-cache-size=12Q: expected a size' \
  --filter=qcow2 memory 1M qcow2-cache-size=12Q
refused '^nbdkit: error: overlay-compressed-cache=-1: expected a size' \
  --filter=overlay memory 1M overlay=ov.qcow2 overlay-compressed-cache=-1
refused '^nbdkit: error: size=17E: too large' qcow2 n.qcow2 create=true size=17E
# Too large for the cluster size: which cluster size would do.
refused 'size=8P is too large for cluster-size=64k \(at most 2P\): use a larger cluster size, cluster-size=128k or more' \
  qcow2 n.qcow2 create=true size=8P
refused 'qcow2-size=1E is too large for qcow2-cluster-size=64k.*qcow2-cluster-size=2M or more' \
  --filter=qcow2 memory 1M qcow2-create=true qcow2-size=1E
# Levels and counts are not sizes.
refused '^nbdkit: error: compress-level=high: expected a level \(1 to 9 for zlib, 1 to 22 for zstd\) or fast$' \
  qcow2 n.qcow2 compress=zlib compress-level=high
refused '^nbdkit: error: overlay-compress-level=3k: expected a level' \
  --filter=overlay memory 1M overlay=ov.qcow2 overlay-compress=zstd \
  overlay-compress-level=3k
refused '^nbdkit: error: qcow2-refcount-bits=3: expected 1, 2, 4, 8, 16, 32 or 64$' \
  --filter=qcow2 memory 1M qcow2-create=true qcow2-size=1M qcow2-refcount-bits=3
# One error, not two.
refused '^nbdkit: error: create=bogus: expected true, false or force$' \
  qcow2 n.qcow2 create=bogus size=1M
refused '^nbdkit: error: qcow2-create=bogus: expected true, false or force$' \
  --filter=qcow2 memory 1M qcow2-create=bogus
refused '^nbdkit: error: overlay-locking=maybe: expected on or off$' \
  --filter=overlay memory 1M overlay=ov.qcow2 overlay-locking=maybe
refused '^nbdkit: error: qcow2-cluster-size=3k: must be a power of two' \
  --filter=qcow2 memory 1M qcow2-create=true qcow2-size=1M qcow2-cluster-size=3k
[ ! -e n.qcow2 ] && [ ! -e ov.qcow2 ] || check_fail "a refused start left a file"

# --- 2. Errors at startup -------------------------------------------------
# A filter whose container or overlay cannot be opened stops nbdkit when
# it starts: in the background (the default), in the foreground, and
# before a --run command starts.
qemu-img create -q -f qcow2 disk.qcow2 4M
qemu-img create -q -f qcow2 small.qcow2 1M
retry_pbkdf qemu-img create -q -f qcow2 --object secret,id=s0,data=right \
  -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
  enc.qcow2 4M
truncate -s 4M plain.raw
startup_refused ()
{
  local re="$1"; shift
  local st=0
  rm -f ran
  timeout 60 "$NBDKIT" -U - "$@" --run 'touch ran' </dev/null \
    >/dev/null 2>run.err || st=$?
  if [ $st -eq 0 ] || [ -e ran ] || ! grep -Eq -- "$re" run.err; then
    cat run.err >&2
    check_fail "--run: nbdkit $* did not refuse to start (status $st)"
    return
  fi
  st=0
  timeout 60 "$NBDKIT" -U "$tmpdir/bg.sock" -P bg.pid "$@" \
    </dev/null >/dev/null 2>run.err || st=$?
  if [ $st -eq 0 ]; then
    kill "$(cat bg.pid)" 2>/dev/null || :
    check_fail "background: nbdkit $* exited 0 though it cannot serve"
    return
  fi
  st=0
  timeout 60 "$NBDKIT" -f -U "$tmpdir/fg.sock" "$@" \
    </dev/null >/dev/null 2>run.err || st=$?
  if [ $st -eq 0 ] || [ $st -eq 124 ]; then
    check_fail "foreground: nbdkit $* did not exit with an error ($st)"
    return
  fi
  echo "ok: refused at startup (--run, background, -f): nbdkit $*"
  sed 's/^/    /' run.err
}
startup_refused 'overlay=.*small.qcow2 has a virtual size of 1048576 bytes' \
  --filter=overlay qcow2 disk.qcow2 overlay=small.qcow2
startup_refused 'container: not a qcow2 image' --filter=qcow2 file plain.raw
startup_refused 'container: .*(passphrase|key)' \
  --filter=qcow2 file enc.qcow2 qcow2-passphrase=wrong
startup_refused 'overlay=.*plain.raw|not a qcow2' \
  --filter=overlay memory 4M overlay=plain.raw
# With a filter that waits below ours (delay: nbdkit 1.32 aborts when it
# is called outside a connection), the image is opened by the first
# connection: it serves, and a bad container is that connection's error.
run --filter=qcow2 --filter=delay file disk.qcow2 delay-read=1ms
[ $status -eq 0 ] && [ "$(cat run.out)" = 4194304 ] ||
  { cat run.err >&2; check_fail "--filter=qcow2 --filter=delay did not serve"; }
run --filter=qcow2 --filter=delay file plain.raw delay-read=1ms
[ $status -ne 0 ] && grep -q 'container: not a qcow2 image' run.err &&
  ! grep -q 'Assertion' run.err ||
  { cat run.err >&2; check_fail "--filter=qcow2 --filter=delay over raw: no clear error"; }
echo "ok: with a filter below, the first connection opens the image"
# and what can be opened still serves, once created.
rm -f ov.qcow2
run --filter=overlay qcow2 disk.qcow2 overlay=ov.qcow2
[ $status -eq 0 ] && [ "$(cat run.out)" = 4194304 ] ||
  { cat run.err >&2; check_fail "the overlay over the plugin did not serve"; }

# --- 5. Our overlay over our plugin: no "no connection in this thread" ----
if grep -q 'error' run.err; then
  cat run.err >&2
  check_fail "--filter=overlay qcow2: errors logged"
else
  echo "ok: --filter=overlay qcow2 disk.qcow2: no error logged"
fi
# Export names still reach the plugin from a client.
qemu-img snapshot -c snap1 disk.qcow2
status=0
timeout 60 "$NBDKIT" -U - qcow2 disk.qcow2 \
  --run 'nbdinfo --size "nbd+unix:///snap1?socket=$unixsocket"' \
  >run.out 2>run.err || status=$?
[ $status -eq 0 ] && [ "$(cat run.out)" = 4194304 ] ||
  { cat run.err >&2; check_fail "the plugin lost the export name"; }

# --- 3. The read-only fallback: said once, as a notice, naming the holder -
qemu-io -r -c 'sleep 60000' disk.qcow2 </dev/null >/dev/null 2>&1 &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
for _ in $(seq 50); do grep -q "$(stat -c %i disk.qcow2) " /proc/locks && break; sleep 0.1; done
for front in "qcow2 disk.qcow2" "--filter=overlay memory 4M overlay=disk.qcow2"; do
  status=0
  timeout 60 "$NBDKIT" -U - $front --run '
    for i in 1 2 3; do nbdinfo --can write "$uri" && echo can-write; done
    true' \
    >run.out 2>run.err || status=$?
  n=$(grep -c 'serving read-only' run.err || :)
  if [ $status -ne 0 ] || [ -s run.out ] || grep -q 'error:' run.err ||
     [ "$n" -ne 1 ] || ! grep -q 'qemu (qemu-io, pid [0-9]*)' run.err; then
    cat run.out run.err >&2
    check_fail "$front held by qemu: not one plain notice naming qemu"
  else
    echo "ok: $front held by qemu -r: $(cat run.err)"
  fi
done
kill $qpid; wait $qpid 2>/dev/null || :
# Another nbdkit serving the image writable: refused (it shares no
# read either, as qemu), naming it.
start_nbdkit other qcow2 disk.qcow2
nbdinfo --can write "$(nbd_uri "$other")"
status=0
timeout 60 "$NBDKIT" -U - qcow2 disk.qcow2 --run 'nbdinfo --size "$uri"' \
  >run.out 2>run.err || status=$?
if [ $status -eq 0 ] || ! grep -q 'another nbdkit (pid [0-9]*)' run.err ||
   [ "$(grep -c 'error:' run.err || :)" -ne 1 ]; then
  cat run.err >&2
  check_fail "held by another nbdkit: the message does not say so"
else
  echo "ok: held by another nbdkit: $(cat run.err)"
fi

# --- 4. A qcow2 image in a file (the man page's example) -----------------
# nbdkit's file plugin cannot grow the file: the first allocating write
# fails, saying how to give room; after truncate -s '>SIZE' it works.
rm -f grow.qcow2
qemu-img create -q -f qcow2 grow.qcow2 64M
write_one ()
{
  status=0
  timeout 60 "$NBDKIT" -U - --filter=qcow2 file grow.qcow2 --run '
    nbdsh -u "$uri" -c "h.pwrite(b\"\\x5a\" * 65536, 1 << 20); h.flush()"' \
    </dev/null >run.out 2>run.err || status=$?
}
write_one
if [ $status -eq 0 ] || ! grep -q 'no space left in the image container.*truncate -s' run.err; then
  cat run.err >&2
  check_fail "a full container: no error saying how to give room"
else
  echo "ok: full container: $(grep -o 'no space left.*' run.err | head -n1)"
fi
truncate -s '>1G' grow.qcow2
write_one
if [ $status -ne 0 ] ||
   ! qemu-io -r -f qcow2 -c 'read -q -P 0x5a 1M 64k' grow.qcow2 >/dev/null ||
   ! qemu-img check -q grow.qcow2; then
  cat run.err >&2
  check_fail "truncate -s '>1G' did not give the container room"
else
  echo "ok: after truncate -s '>1G' the write lands, qemu-img check agrees"
fi

# --- 8. Debug flags exist --------------------------------------------------
for flagmod in "qcow2 qcow2 n.qcow2 create=true size=4M" \
               "overlay --filter=overlay memory 4M overlay=dbg.qcow2"; do
  set -- $flagmod
  name=$1; shift
  rm -f n.qcow2 dbg.qcow2
  status=0
  timeout 60 "$NBDKIT" -U - -v -D $name.alloc=1 -D $name.flush=1 "$@" --run '
    nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 65536, 0); h.flush()"' \
    </dev/null >run.out 2>run.err || status=$?
  if [ $status -ne 0 ] || ! grep -q 'allocated 1 cluster' run.err ||
     ! grep -q 'writeback: .*L2 table' run.err; then
    grep -v 'debug: [a-z_]*: ' run.err | tail -n 5 >&2
    check_fail "-D $name.alloc=1 -D $name.flush=1 did nothing"
  else
    echo "ok: -D $name.alloc=1 -D $name.flush=1 log allocations and writeback"
  fi
done
# and are off by default.
rm -f n.qcow2
timeout 60 "$NBDKIT" -U - -v qcow2 n.qcow2 create=true size=4M --run '
  nbdsh -u "$uri" -c "h.pwrite(b\"x\" * 65536, 0); h.flush()"' \
  </dev/null >run.out 2>run.err || :
! grep -q 'allocated 1 cluster\|writeback:' run.err ||
  check_fail "allocation debug messages without -D"

# The man pages: podchecker clean, no troff warnings.
if command -v podchecker >/dev/null && command -v pod2man >/dev/null; then
  for pod in "$top_srcdir"/docs/*.pod; do
    podchecker -warnings -warnings "$pod" >pod.out 2>&1 ||
      { cat pod.out >&2; check_fail "podchecker: $pod"; }
    pod2man --utf8 --name=x "$pod" >x.1
    LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l x.1 >/dev/null 2>man.err || :
    if [ -s man.err ]; then
      cat man.err >&2; check_fail "troff warnings in $(basename "$pod")"
    else
      echo "ok: $(basename "$pod"): podchecker clean, no troff warnings"
    fi
  done
fi

# --- 9. --dump-plugin feature keys ------------------------------------------
"$NBDKIT" qcow2 --dump-plugin >dump.out
for key in qcow2_core_version qcow2_zlib qcow2_zstd qcow2_isal qcow2_luks; do
  grep -Eq "^$key=(yes|no|[0-9]+\.[0-9]+\.[0-9]+)$" dump.out ||
    check_fail "--dump-plugin has no $key= line"
done
grep -q '^qcow2_zstd=yes$' dump.out && grep -q '^qcow2_luks=yes$' dump.out ||
  check_fail "--dump-plugin: zstd and LUKS are always built in"
echo "ok: --dump-plugin: $(grep '^qcow2_' dump.out | tr '\n' ' ')"

# --- 11. The in-tree ./nbdkit: every spelling, nothing else rewritten -------
# It is the wrapper from this tree whatever $NBDKIT is.
top_builddir=$(cd "$top_builddir" && pwd)
wrapper=$top_builddir/nbdkit
for spell in "--filter=qcow2" "--filter qcow2" "--fil=qcow2" "--filt qcow2"; do
  # shellcheck disable=SC2086
  "$wrapper" $spell file grow.qcow2 --help >help.out 2>&1 || :
  grep -q "^($top_builddir/filters/.libs/nbdkit-qcow2-filter.so)" help.out ||
    { failures=$((failures + 1)); echo "FAIL: ./nbdkit $spell: not the filter of this tree" >&2; continue; }
done
[ $failures -eq 0 ] && echo "ok: ./nbdkit takes --filter=qcow2, --filter qcow2, --fil=qcow2, --filt qcow2"
# Files named qcow2 and overlay are plugin arguments, an export named
# qcow2 an option's value: none is rewritten.
truncate -s 1M qcow2; truncate -s 2M overlay
st=0
"$wrapper" -U - file qcow2 --run 'nbdinfo --size "$uri"' >run.out 2>run.err || st=$?
[ $st -eq 0 ] && [ "$(cat run.out)" = 1048576 ] ||
  { cat run.err >&2; check_fail "./nbdkit file qcow2: the file argument was rewritten"; }
st=0
"$wrapper" -U - -e qcow2 file overlay \
  --run 'echo "$uri"; nbdinfo --size "$uri"' >run.out 2>run.err || st=$?
[ $st -eq 0 ] && grep -q '^nbd+unix:///qcow2?' run.out && grep -qx 2097152 run.out ||
  { cat run.out run.err >&2; check_fail "./nbdkit -e qcow2 file overlay: rewritten"; }
st=0
"$wrapper" -U - --filter overlay file overlay overlay=w.qcow2 \
  --run 'nbdinfo --size "$uri"' >run.out 2>run.err || st=$?
[ $st -eq 0 ] && [ "$(cat run.out)" = 2097152 ] ||
  { cat run.err >&2; check_fail "./nbdkit --filter overlay file overlay: rewritten"; }
echo "ok: ./nbdkit leaves option values and plugin arguments named qcow2/overlay alone"

# --- 7. Export descriptions and nbdinfo --list ----------------------------
rm -f s.qcow2
qemu-img create -q -f qcow2 base7.qcow2 4M
qemu-img create -q -f qcow2 -b base7.qcow2 -F qcow2 s.qcow2
qemu-img snapshot -c first s.qcow2
qemu-img snapshot -c second s.qcow2
status=0
timeout 60 "$NBDKIT" -U - qcow2 s.qcow2 --run '
  nbdinfo --list --json "$uri"
  nbdinfo --json "nbd+unix:///1?socket=$unixsocket"' \
  </dev/null >run.out 2>run.err || status=$?
[ $status -eq 0 ] || { cat run.err >&2; check_fail "nbdinfo --list failed"; }
"$PYTHON" - run.out "$tmpdir" <<'PY' || check_fail "export list or descriptions wrong"
import json, sys
text = open(sys.argv[1]).read()
dec = json.JSONDecoder()
lst, end = dec.raw_decode(text)
one, _ = dec.raw_decode(text[end:].lstrip())
names = [e["export-name"] for e in lst["exports"]]
assert names == ["", "first", "second"], names
for e in lst["exports"]:
    d = e.get("description", "")
    assert d, "export %r has no description" % e["export-name"]
    assert sys.argv[2] not in d, "server path in %r" % d
    assert "s.qcow2" in d and "base7.qcow2" in d, d
    print("ok: %r: %s" % (e["export-name"], d))
d = one["exports"][0]["description"]
assert "'first'" in d, "snapshot ID 1 not described by its name: %r" % d
print("ok: export '1': %s" % d)
PY
timeout 60 "$NBDKIT" -U - qcow2 s.qcow2 description=full \
  --run 'nbdinfo --json "$uri"' </dev/null >run.out 2>run.err || :
grep -q "$tmpdir/s.qcow2.*$tmpdir/base7.qcow2" run.out ||
  { cat run.out run.err >&2; check_fail "description=full: no full paths"; }
echo "ok: description=full shows the server's paths"

# --- 6. Progress of long work before serving -------------------------------
# 2048 L2 tables to walk (512-byte clusters): quick here, so the
# progress is reported at every percent with -D qcow2.progress=-1, so the
# notices do not depend on the machine's speed.
rm -f p.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 p.qcow2 16M
qemu-io -c 'write -q -P 1 0 16M' p.qcow2
progress_run ()
{
  status=0
  timeout 120 "$NBDKIT" -U - "$@" --run 'nbdinfo --size "$uri"' \
    </dev/null >run.out 2>run.err || status=$?
  [ $status -eq 0 ] || { cat run.err >&2; check_fail "nbdkit $* failed"; }
}
progress_run -v -D qcow2.progress=-1 qcow2 p.qcow2 check=on snapshot-create=s1
if [ "$(grep -c '^nbdkit: .*p.qcow2: checking the refcounts: [0-9]*% ' run.err)" -lt 2 ] ||
   ! grep -q '^nbdkit: .*p.qcow2: checking the refcounts: done in' run.err ||
   ! grep -q "^nbdkit: .*p.qcow2: creating snapshot 's1': done in" run.err ||
   ! grep -q 'debug: .*checking the refcounts took [0-9.]* s' run.err ||
   ! grep -q "debug: .*creating snapshot 's1' took [0-9.]* s" run.err; then
  grep -v 'debug: [a-z_]*: ' run.err | tail -n 20 >&2
  check_fail "no progress notices, or no step times with -v"
else
  echo "ok: progress: $(grep -c '% (' run.err) notices, step times with -v"
fi
# By default a notice comes at most every 5 s: none for this short check,
# and without -v no step times.
progress_run qcow2 p.qcow2 check=on
if grep -q '% (\|took' run.err; then
  cat run.err >&2
  check_fail "progress notices for a step shorter than the interval"
else
  echo "ok: no progress notices for a short step"
fi
# A dirty image's refcount rebuild is a step too (lazy refcounts, left
# dirty by a qemu that was killed).
rm -f dirty.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512,lazy_refcounts=on dirty.qcow2 16M
(qemu-io -c 'write -q -P 2 0 16M' -c 'sigraise 9' dirty.qcow2) >/dev/null 2>&1 || :
if qemu-img info dirty.qcow2 | grep -q 'corrupt: false' &&
   qemu-img info --output=json dirty.qcow2 | grep -q '"dirty-flag": true'; then
  progress_run -v -D qcow2.progress=-1 qcow2 dirty.qcow2 check=on
  if grep -q 'rebuilding its refcounts: [0-9]*% ' run.err &&
     grep -q 'rebuilding its refcounts: done in' run.err &&
     grep -q 'rebuilding its refcounts took' run.err; then
    echo "ok: a dirty image's refcount rebuild reports its progress"
  else
    grep -v 'debug: [a-z_]*: ' run.err | tail -n 20 >&2
    check_fail "the dirty image's rebuild reports no progress"
  fi
fi

#@NEXT@

if [ $failures -gt 0 ]; then
  echo "$0: $failures failure(s)" >&2
  exit 1
fi
