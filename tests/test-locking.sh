#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# QEMU-compatible image locking (locking=on, the default, and locking=off).
#
#  - While nbdkit serves an image, qemu cannot open it for writing, but
#    can still open it read-only (the plugin shares reads).
#  - The plugin refuses to serve an image that qemu holds open for
#    writing, with an error that mentions the lock; it may serve one that
#    qemu holds open read-only.
#  - locking=off turns both checks off.
#  - Backing files (raw and qcow2, every level) get the read locks, the
#    external data file the image's locks: qemu cannot write them while
#    nbdkit serves an image over them (plugin and qcow2 filter); nbdkit
#    refuses an image whose backing or data file qemu writes, and
#    serves it read-only when qemu holds the data file read-only;
#    locking=off takes no lock on any of them (/proc/locks).
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
requires nbdcopy --version
requires timeout --version
requires "$PYTHON" -c 'import fcntl, struct'

img=$tmpdir/disk.qcow2
qemu-img create -q -f qcow2 "$img" 1M
qemu-io -c 'write -q -P 0x11 0 64k' -c 'write -q -P 0x22 512k 4k' "$img" \
  >/dev/null
qemu-img convert -f qcow2 -O raw "$img" "$tmpdir/expected.raw"

# stop_nbdkit SOCK: stop the nbdkit started by start_nbdkit on SOCK and
# wait until it has exited (so its locks are gone).
stop_nbdkit ()
{
  local pidfile="${1%.sock}.pid" pid i
  pid=$(cat "$pidfile")
  kill "$pid"
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  fail "nbdkit (pid $pid) did not exit"
}

# qemu_write IMG: try a write open + write with qemu-io; the output goes
# to $tmpdir/qemu-io.out.  Returns qemu-io's status.
qemu_write ()
{
  timeout 60 qemu-io -c 'write -q -P 0x33 256k 512' "$1" \
    >"$tmpdir/qemu-io.out" 2>&1
}

# nbdkit_try ARGS...: run nbdkit ARGS with a client.  Sets $status to
# nbdkit's exit status, $started to yes if nbdkit got as far as serving,
# and leaves its stderr in $tmpdir/try.err.
nbdkit_try ()
{
  rm -f "$tmpdir/started"
  status=0
  timeout 60 "$NBDKIT" -U - "$@" \
    --run "touch '$tmpdir/started'; nbdcopy \"\$uri\" '$tmpdir/try.raw'" \
    </dev/null >/dev/null 2>"$tmpdir/try.err" || status=$?
  started=no
  if [ -e "$tmpdir/started" ]; then started=yes; fi
}

# lock_bytes IMG: the qemu lock bytes (100..103, 200..203) that some
# open file description holds on IMG, separated by spaces.
lock_bytes ()
{
  "$PYTHON" - "$1" <<'EOF'
import fcntl, os, struct, sys
F_OFD_GETLK = 36
fd = os.open(sys.argv[1], os.O_RDONLY)
held = []
for b in list(range(100, 104)) + list(range(200, 204)):
    fl = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, b, 1, 0)
    r = fcntl.fcntl(fd, F_OFD_GETLK, fl)
    if struct.unpack("hhqqi", r)[0] != fcntl.F_UNLCK:
        held.append(str(b))
print(" ".join(held))
EOF
}

echo "== 1. image served with locking=on (the default)"
start_nbdkit srv qcow2 "$img"
uri=$(nbd_uri "$srv")

if qemu_write "$img"; then
  cat "$tmpdir/qemu-io.out" >&2
  fail "qemu-io could open the image for writing while nbdkit serves it"
fi
cat "$tmpdir/qemu-io.out"
grep -q 'Failed to get "write" lock' "$tmpdir/qemu-io.out" ||
  fail "qemu-io failed, but not with qemu's lock error"
echo "ok: qemu-io refused to write: locked by nbdkit"

# A read-only open in qemu takes the consistent-read permission and does
# not share write: both are compatible with a server that has the image
# open read-only and shares reads (no client has connected yet).
qemu-img info "$img" >"$tmpdir/info.out" 2>&1 || {
  cat "$tmpdir/info.out" >&2
  fail "qemu-img info (read-only, without -U) refused while nbdkit serves"
}
echo "ok: qemu-img info (read-only) allowed"
qemu-io -r -c 'read -q -P 0x11 0 64k' "$img" >"$tmpdir/ro.out" 2>&1 || {
  cat "$tmpdir/ro.out" >&2
  fail "qemu-io -r (read-only) refused while nbdkit serves"
}
echo "ok: qemu-io -r (read-only) allowed"

# The lock bytes themselves: like a read-only qemu user, 100 (consistent
# read) and 201, 203 (does not share write, resize); not 101 (write).
locked=$(lock_bytes "$img")
[ "$locked" = "100 201 203" ] ||
  fail "lock bytes held while serving: '$locked'; expected '100 201 203'"
echo "ok: lock bytes held: $locked"

# Reading through nbdkit works, and afterwards (no client connected any
# more, nbdkit still serving) the lock is still held.  (Whether qemu may
# still read now depends on whether the client could write: see part 2.)
nbdcopy "$uri" "$tmpdir/served.raw"
cmp "$tmpdir/expected.raw" "$tmpdir/served.raw" ||
  fail "served data differs from qemu-img convert output"
echo "ok: served data matches qemu"
if qemu_write "$img"; then
  fail "qemu-io could write after a client disconnected from nbdkit"
fi
grep -q 'Failed to get "write" lock' "$tmpdir/qemu-io.out" ||
  fail "qemu-io failed after a client disconnected, but not with the lock error"
echo "ok: still locked after a client connected and disconnected"

# Once a client has had a writable export, the image is open for writing
# and holds qemu's write locks, as qemu itself does: then even a
# read-only qemu is refused (without -U).  A read-only export keeps the
# read locks.
writable=$(nbdinfo --json "$uri" | "$PYTHON" -c '
import json, sys
e = json.load(sys.stdin)["exports"][0]
print("no" if e["is_read_only"] else "yes")')
locked=$(lock_bytes "$img")
if [ "$writable" = yes ]; then
  [ "$locked" = "100 101 103 201 203" ] ||
    fail "writable export: lock bytes '$locked'; expected '100 101 103 201 203'"
  if qemu-img info "$img" >"$tmpdir/info.out" 2>&1; then
    fail "writable export: qemu-img info (without -U) was allowed"
  fi
  grep -q 'Failed to get shared "write" lock' "$tmpdir/info.out" || {
    cat "$tmpdir/info.out" >&2
    fail "writable export: qemu-img info failed, but not with the lock error"
  }
  qemu-img info -U "$img" >/dev/null ||
    fail "writable export: qemu-img info -U failed"
  echo "ok: writable export: write locks ($locked); qemu needs -U to read"
else
  [ "$locked" = "100 201 203" ] ||
    fail "read-only export: lock bytes '$locked'; expected '100 201 203'"
  qemu-img info "$img" >/dev/null ||
    fail "read-only export: qemu-img info (read-only) was refused"
  echo "ok: read-only export: read locks ($locked); qemu may read"
fi

stop_nbdkit "$srv"
qemu_write "$img" || {
  cat "$tmpdir/qemu-io.out" >&2
  fail "qemu-io could not write after nbdkit exited (lock not released?)"
}
echo "ok: lock released when nbdkit exits"
qemu-img convert -f qcow2 -O raw "$img" "$tmpdir/expected.raw"

echo "== 2. image served read-only (nbdkit -r): qemu may read alongside"
start_nbdkit srv1b -r qcow2 "$img"
uri=$(nbd_uri "$srv1b")
nbdcopy "$uri" "$tmpdir/served.raw"
cmp "$tmpdir/expected.raw" "$tmpdir/served.raw" ||
  fail "nbdkit -r: served data differs from qemu-img convert output"
qemu-img compare -q -f qcow2 "$img" -F raw "$uri" || {
  fail "nbdkit -r: qemu-img compare (qemu opening the image read-only" \
       "while nbdkit serves it) failed"
}
echo "ok: qemu-img compare: qemu reads the image while nbdkit serves it"
locked=$(lock_bytes "$img")
[ "$locked" = "100 201 203" ] ||
  fail "nbdkit -r: lock bytes after clients: '$locked'; expected '100 201 203'"
echo "ok: lock bytes after clients: $locked"
if qemu_write "$img"; then
  fail "nbdkit -r: qemu-io could open the image for writing"
fi
grep -q 'Failed to get "write" lock' "$tmpdir/qemu-io.out" ||
  fail "nbdkit -r: qemu-io failed, but not with qemu's lock error"
echo "ok: nbdkit -r: qemu-io refused to write"
stop_nbdkit "$srv1b"

echo "== 3. image served with locking=off"
start_nbdkit srv2 qcow2 "$img" locking=off
locked=$(lock_bytes "$img")
[ -z "$locked" ] || fail "locking=off: lock bytes held: '$locked'"
echo "ok: locking=off: no lock bytes held"
qemu_write "$img" || {
  cat "$tmpdir/qemu-io.out" >&2
  fail "locking=off: qemu-io could not open the image for writing"
}
echo "ok: locking=off: qemu-io wrote to the served image"
stop_nbdkit "$srv2"

qemu-img convert -f qcow2 -O raw "$img" "$tmpdir/expected.raw"

echo "== 4. qemu holds the image open for writing"
qsock=$tmpdir/qemu-nbd.sock
# qemu_hold ARGS...: qemu-nbd serving ARGS in the background (it holds
# its locks until killed), ready when this returns.
qemu_hold ()
{
  rm -f "$qsock"
  qemu-nbd -t -k "$qsock" "$@" 2>"$tmpdir/qemu-nbd.err" &
  qpid=$!
  on_exit "kill $qpid 2>/dev/null; wait $qpid 2>/dev/null"
  for i in $(seq 1 100); do
    [ -S "$qsock" ] && break
    kill -0 $qpid 2>/dev/null || break
    sleep 0.1
  done
  [ -S "$qsock" ] || {
    cat "$tmpdir/qemu-nbd.err" >&2
    fail "qemu-nbd $* did not start"
  }
}
qemu_hold -f qcow2 "$img"
# Make sure qemu really holds the write lock now: a second write open
# must fail in qemu itself.
if qemu_write "$img"; then
  fail "qemu-nbd (read-write) is not holding the write lock: test broken"
fi

nbdkit_try qcow2 "$img"
if [ $status -eq 0 ]; then
  cat "$tmpdir/try.err" >&2
  fail "nbdkit served an image that qemu-nbd holds open for writing"
fi
cat "$tmpdir/try.err"
grep -Eiq 'lock' "$tmpdir/try.err" ||
  fail "nbdkit refused the image, but the error does not mention the lock"
[ $started = no ] ||
  fail "nbdkit started serving and only failed when a client connected"
echo "ok: nbdkit refused to serve an image qemu has open for writing"

nbdkit_try qcow2 "$img" locking=off
if [ $status -ne 0 ]; then
  cat "$tmpdir/try.err" >&2
  fail "locking=off: nbdkit refused an image qemu has open for writing"
fi
echo "ok: locking=off: served an image qemu has open for writing"

kill $qpid; wait $qpid 2>/dev/null || :

echo "== 5. qemu holds the image open read-only"
qemu_hold -r -f qcow2 "$img"
nbdkit_try qcow2 "$img"
if [ $status -ne 0 ]; then
  cat "$tmpdir/try.err" >&2
  fail "nbdkit refused an image that qemu only has open read-only"
fi
cmp "$tmpdir/expected.raw" "$tmpdir/try.raw" ||
  fail "served data differs from qemu-img convert output"
echo "ok: served an image qemu has open read-only, data matches"
# qemu does not share write, so the export must be read-only, and the
# plugin must keep its read locks after it could not get write locks:
# once qemu is gone, qemu still cannot write while nbdkit serves.
start_nbdkit srv5 qcow2 "$img"
ro=$(nbdinfo --no-content --json "$(nbd_uri "$srv5")" | "$PYTHON" -c '
import json, sys
print(json.load(sys.stdin)["exports"][0]["is_read_only"])')
[ "$ro" = True ] ||
  fail "the export is writable although qemu has the image open and" \
       "does not share write (is_read_only: '$ro')"
echo "ok: and the export is read-only"
kill $qpid; wait $qpid 2>/dev/null || :
locked=$(lock_bytes "$img")
[ "$locked" = "100 201 203" ] ||
  fail "after qemu-nbd exited: lock bytes '$locked'; expected '100 201 203'"
if qemu_write "$img"; then
  fail "after a read-only fallback nbdkit lost its locks: qemu-io could write"
fi
echo "ok: the read-only fallback keeps the read locks"
stop_nbdkit "$srv5"

echo "== 6. backing files (qcow2 and raw, two levels) and a data file"
# base.raw <- mid.qcow2 <- top.qcow2, and dimg.qcow2 with its guest
# data in dd.raw.  Every backing file gets the read locks (qemu cannot
# write or resize it while we serve an image over it, but may read it);
# the data file gets the image's locks (write locks once writable).
base=$tmpdir/base.raw mid=$tmpdir/mid.qcow2 top=$tmpdir/top.qcow2
dimg=$tmpdir/dimg.qcow2 dd=$tmpdir/dd.raw
qemu-img create -q -f raw "$base" 1M
qemu-io -f raw -c 'write -q -P 0x44 0 64k' "$base" >/dev/null
qemu-img create -q -f qcow2 -b "$base" -F raw "$mid" 1M
qemu-io -f qcow2 -c 'write -q -P 0x55 64k 64k' "$mid" >/dev/null
qemu-img create -q -f qcow2 -b "$mid" -F qcow2 "$top" 1M
qemu-img create -q -f qcow2 -o data_file="$dd" "$dimg" 1M
qemu-io -f qcow2 -c 'write -q -P 0x66 0 64k' "$dimg" >/dev/null

# qemu_write_fmt FMT FILE: qemu-io write open with an explicit format
qemu_write_fmt ()
{
  timeout 60 qemu-io -f "$1" -c 'write -q -P 0x33 256k 512' "$2" \
    >"$tmpdir/qemu-io.out" 2>&1
}
# refused_by_lock WHAT FMT FILE: qemu-io must fail with its lock error
refused_by_lock ()
{
  if qemu_write_fmt "$2" "$3"; then
    fail "$1: qemu-io could open $3 for writing"
  fi
  grep -q 'Failed to get "write" lock' "$tmpdir/qemu-io.out" || {
    cat "$tmpdir/qemu-io.out" >&2
    fail "$1: qemu-io failed on $3, but not with qemu's lock error"
  }
  echo "ok: $1: qemu-io refused to write $(basename "$3")"
}
# expect_locks WHAT FILE BYTES
expect_locks ()
{
  local got
  got=$(lock_bytes "$2")
  [ "$got" = "$3" ] ||
    fail "$1: lock bytes on $(basename "$2"): '$got'; expected '$3'"
  echo "ok: $1: lock bytes on $(basename "$2"): '$got'"
}

for how in plugin filter; do
  if [ $how = plugin ]; then
    start_nbdkit srv6 qcow2 "$top"
  else
    start_nbdkit srv6 --filter=qcow2 file "$top"
  fi
  uri=$(nbd_uri "$srv6")
  # a client writes: the top image is now open for writing
  qemu-io -f raw -c 'write -q -P 0x77 128k 4k' "$uri" >/dev/null ||
    fail "$how: writing through nbdkit failed"
  for f in "$base" "$mid"; do
    expect_locks "$how: backing file" "$f" "100 201 203"
  done
  refused_by_lock "$how: raw backing file" raw "$base"
  refused_by_lock "$how: qcow2 backing file" qcow2 "$mid"
  refused_by_lock "$how: qcow2 backing file, format probed" qcow2 "$mid"
  qemu_write "$base" && fail "$how: qemu-io (format probed) wrote $base"
  for f in "$base" "$mid"; do
    qemu-img info "$f" >"$tmpdir/info.out" 2>&1 || {
      cat "$tmpdir/info.out" >&2
      fail "$how: qemu-img info (read-only) refused on backing file $f"
    }
  done
  echo "ok: $how: qemu-img info (read-only) works on the backing files"
  qemu-img compare -q -f raw "$uri" -F qcow2 "$mid" >/dev/null 2>&1 &&
    fail "$how: the write through nbdkit did not land?"
  stop_nbdkit "$srv6"
  qemu-io -f qcow2 -c 'write -q -P 0x88 0 4k' "$mid" >/dev/null ||
    fail "$how: backing file still locked after nbdkit exited"
  echo "ok: $how: backing files unlocked when nbdkit exits"

  if [ $how = plugin ]; then
    start_nbdkit srv7 qcow2 "$dimg"
  else
    start_nbdkit srv7 --filter=qcow2 file "$dimg"
  fi
  uri=$(nbd_uri "$srv7")
  # (the filter opens the image at the first connection, writable)
  if [ $how = plugin ]; then
    expect_locks "$how: data file, image read-only so far" "$dd" \
      "100 201 203"
    qemu-img info -f raw "$dd" >/dev/null 2>&1 ||
      fail "$how: qemu-img info refused on the data file of a read-only image"
    refused_by_lock "$how: data file, image read-only so far" raw "$dd"
  fi
  qemu-io -f raw -c 'write -q -P 0x99 64k 4k' "$uri" >/dev/null ||
    fail "$how: writing through nbdkit (data file) failed"
  expect_locks "$how: data file, image written" "$dd" "100 101 103 201 203"
  refused_by_lock "$how: data file, image written" raw "$dd"
  stop_nbdkit "$srv7"
  qemu-io -f qcow2 -c 'read -q -P 0x99 64k 4k' "$dimg" >/dev/null ||
    fail "$how: the write to the data file is not what qemu reads"
  qemu-img check -q "$dimg" || fail "$how: qemu-img check on $dimg"
done

# qemu holds a backing file or the data file open for writing: refused,
# with the lock and the file in the message; locking=off serves anyway.
for held in "raw $base $top backing" "qcow2 $mid $top backing" \
            "raw $dd $dimg data"; do
  set -- $held
  qemu_hold -f "$1" "$2"
  nbdkit_try qcow2 "$3"
  if [ $status -eq 0 ]; then
    cat "$tmpdir/try.err" >&2
    fail "nbdkit served $(basename "$3") while qemu-nbd writes $2"
  fi
  cat "$tmpdir/try.err"
  grep -q "$4.*$(basename "$2").*\"write\" permission" "$tmpdir/try.err" ||
    fail "refused, but the error does not name the $4 file and the lock"
  [ $started = no ] || fail "nbdkit started serving before it refused"
  echo "ok: nbdkit refused $(basename "$3"): qemu-nbd writes $(basename "$2")"
  nbdkit_try qcow2 "$3" locking=off
  [ $status -eq 0 ] || {
    cat "$tmpdir/try.err" >&2
    fail "locking=off: nbdkit refused $3 while qemu-nbd writes $2"
  }
  echo "ok: locking=off: served $(basename "$3") anyway"
  kill $qpid; wait $qpid 2>/dev/null || :
done

# qemu holds the data file read-only (and does not share resize): we
# serve the image, read-only.
qemu_hold -r -f raw "$dd"
status=0
timeout 60 "$NBDKIT" -U - qcow2 "$dimg" --run '
  if qemu-io -f raw -c "write -q -P 0x11 0 4k" "$uri" >/dev/null 2>&1; then
    echo wrote; fi
  nbdinfo --can write "$uri" && echo can-write || :
  qemu-io -r -f raw -c "read -q -P 0x99 64k 4k" "$uri" >/dev/null ||
    echo bad-read
' >"$tmpdir/ro.out" 2>"$tmpdir/ro.err" || status=$?
cat "$tmpdir/ro.err"
[ $status -eq 0 ] || fail "data file held read-only by qemu: nbdkit failed"
[ ! -s "$tmpdir/ro.out" ] ||
  fail "data file held read-only by qemu: $(cat "$tmpdir/ro.out")"
grep -q 'external data file.*"resize" lock' "$tmpdir/ro.err" ||
  fail "the refused write does not say which lock on the data file"
echo "ok: data file held read-only by qemu: served read-only"
kill $qpid; wait $qpid 2>/dev/null || :

# locking=off: no lock on any file of the chain, nor on the data file
start_nbdkit srv9 qcow2 "$top" locking=off
start_nbdkit srv10 qcow2 "$dimg" locking=off
qemu-io -f raw -c 'write -q -P 0x12 0 4k' "$(nbd_uri "$srv9")" >/dev/null
qemu-io -f raw -c 'write -q -P 0x12 0 4k' "$(nbd_uri "$srv10")" >/dev/null
for f in "$top" "$mid" "$base" "$dimg" "$dd"; do
  expect_locks "locking=off" "$f" ""
  ino=$(stat -c %i "$f")
  if grep -q ":$ino " /proc/locks; then
    fail "locking=off: /proc/locks lists a lock on $f"
  fi
done
echo "ok: locking=off: /proc/locks has no lock on any of the files"
stop_nbdkit "$srv9"
stop_nbdkit "$srv10"

echo "PASS: test-locking"
