#!/usr/bin/env bash
# QEMU-compatible image locking (locking=on, the default, and locking=off).
#
#  - While nbdkit serves an image, qemu cannot open it for writing, but
#    can still open it read-only (the plugin shares reads).
#  - The plugin refuses to serve an image that qemu holds open for
#    writing, with an error that mentions the lock; it may serve one that
#    qemu holds open read-only.
#  - locking=off turns both checks off.
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
rm -f "$qsock"
qemu-nbd -t -k "$qsock" -f qcow2 "$img" 2>"$tmpdir/qemu-nbd.err" &
qpid=$!
on_exit "kill $qpid 2>/dev/null; wait $qpid 2>/dev/null"
for i in $(seq 1 100); do
  [ -S "$qsock" ] && break
  kill -0 $qpid 2>/dev/null || break
  sleep 0.1
done
[ -S "$qsock" ] || {
  cat "$tmpdir/qemu-nbd.err" >&2
  fail "qemu-nbd did not start"
}
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
rm -f "$qsock"
qemu-nbd -r -t -k "$qsock" -f qcow2 "$img" 2>"$tmpdir/qemu-nbd.err" &
qpid=$!
on_exit "kill $qpid 2>/dev/null; wait $qpid 2>/dev/null"
for i in $(seq 1 100); do
  [ -S "$qsock" ] && break
  kill -0 $qpid 2>/dev/null || break
  sleep 0.1
done
[ -S "$qsock" ] || {
  cat "$tmpdir/qemu-nbd.err" >&2
  fail "qemu-nbd -r did not start"
}
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

echo "PASS: test-locking"
