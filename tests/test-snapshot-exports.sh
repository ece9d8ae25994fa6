#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Internal snapshots as NBD exports, checked against qemu.  For every
# image with snapshots (DIR/snapshots.txt from make-images.sh):
#  - the server lists the default export "" and one export per snapshot
#    name (as `qemu-img info` lists them), nothing else (names compared
#    exactly through libnbd's opt_list; nbdinfo --list's count too);
#  - each snapshot export is read-only, and reads identically to qemu's
#    view of the snapshot;
#  - an export named by a snapshot ID reads as that snapshot (when no
#    snapshot is named like that ID);
#  - the snapshot=NAME (and snapshot=ID) option serves that snapshot as
#    the default export;
#  - a non-existent snapshot name is refused with an error, both as
#    snapshot=NAME and as an export name.
#
# qemu's view of a snapshot: `qemu-img convert -l snapshot.name=NAME`
# keeps the ACTIVE image's virtual size (a qemu quirk), so the oracle is a
# copy of the image with the snapshot applied by `qemu-img snapshot -a`
# (which restores the snapshot's size).  `snapshot -a` looks IDs up
# before names, so for a name that is also another snapshot's ID the
# oracle is `convert -l snapshot.name=NAME` (same size in our images).
#
# Set QC_TEST_IMAGES=DIR to reuse images made earlier by make-images.sh.

. "${srcdir:-.}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires timeout --version
requires "$PYTHON" -c 'import nbd'
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"

imgdir=${QC_TEST_IMAGES:-$tmpdir/images}
if [ -z "${QC_TEST_IMAGES:-}" ]; then
  "${srcdir:-.}/make-images.sh" "$imgdir" >/dev/null
fi
[ -s "$imgdir/snapshots.txt" ] || fail "no $imgdir/snapshots.txt"
imgdir=$(cd "$imgdir" && pwd)
cd "$imgdir"    # see test-read-matrix.sh

# check-exports.py SOCK CHECKS: run the checks in the file CHECKS, one
# JSON array per line, against the server on SOCK:
#   ["read", EXPORT, RAW, WHAT]: the export reads exactly like the file RAW
#                               (same size) and is read-only
#   ["refuse", EXPORT, WHAT]:   the server refuses to serve the export
#   ["list", [NAMES...], WHAT]: the server lists exactly these exports
# Prints "ok: WHAT" or "FAIL: WHAT: why" per check.
cat > "$tmpdir/check-exports.py" <<'PYEOF'
import json, os, sys
import nbd
sock, checks = sys.argv[1:3]

def connect(export):
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(sock)
    return h

def read(export, raw):
    try:
        h = connect(export)
    except nbd.Error as e:
        return "cannot open export %r: %s" % (export, e)
    size, rsize = h.get_size(), os.path.getsize(raw)
    if size != rsize:
        return "export %r has size %d, qemu's view %d" % (export, size, rsize)
    if not h.is_read_only():
        return "export %r is not read-only" % export
    with open(raw, "rb") as f:
        off = 0
        while off < size:
            n = min(4 << 20, size - off)
            got, want = h.pread(n, off), f.read(n)
            if got != want:
                i = next(i for i in range(n) if got[i] != want[i])
                return ("export %r differs from qemu at byte %d "
                        "(plugin 0x%02x, qemu 0x%02x)"
                        % (export, off + i, got[i], want[i]))
            off += n
    h.shutdown()

def refuse(export):
    try:
        h = connect(export)
    except nbd.Error:
        return None
    return "export %r is served (size %d)" % (export, h.get_size())

def listing(want):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(sock)
    names = []
    h.opt_list(lambda name, desc: names.append(name) or 0)
    h.opt_abort()
    if sorted(names) != sorted(want):
        return "exports %s, but qemu's snapshot names + \"\" are %s" % (
            json.dumps(sorted(names)), json.dumps(sorted(want)))

for line in open(checks):
    c = json.loads(line)
    try:
        why = {"read": lambda: read(c[1], c[2]),
               "refuse": lambda: refuse(c[1]),
               "list": lambda: listing(c[1])}[c[0]]()
    except nbd.Error as e:
        why = str(e)
    print("FAIL: %s: %s" % (c[-1], why) if why else "ok: %s" % c[-1])
PYEOF

# snapshots IMG: qemu-img info's snapshot list: writes $tmpdir/snap-N.json
# (["ID", "NAME"]) for N = 1.., and prints the count.
snapshots ()
{
  rm -f "$tmpdir"/snap-*.json
  qemu-img info --output=json "$1" | "$PYTHON" -c '
import json, sys
snaps = json.load(sys.stdin).get("snapshots", [])
for i, s in enumerate(snaps, 1):
    json.dump([s["id"], s["name"]], open(sys.argv[1] + "/snap-%d.json" % i, "w"))
print(len(snaps))' "$tmpdir"
}
# jget N FIELD: field 0 (ID) or 1 (name) of snapshot N
jget () { "$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))[int(sys.argv[2])])' \
            "$tmpdir/snap-$1.json" "$2"; }
# jcheck ARGS...: a check line for check-exports.py
jcheck () { "$PYTHON" -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@"; }
# jlist WHAT NAMES...: a "list" check line
jlist () { "$PYTHON" -c 'import json,sys; print(json.dumps(["list", sys.argv[2:], sys.argv[1]]))' "$@"; }

# srv_start ARGS...: "$NBDKIT -f -U SOCK ARGS" in the background, wait
# until it serves (fail the test if it dies first); srv_stop stops it.
srvsock=$tmpdir/srv.sock srvpid=
srv_start ()
{
  rm -f "$srvsock"
  "$NBDKIT" -f -U "$srvsock" "$@" 2>"$tmpdir/srv.log" &
  srvpid=$!
  local _
  for _ in $(seq 1000); do
    [ -S "$srvsock" ] && return 0
    if ! kill -0 "$srvpid" 2>/dev/null; then
      cat "$tmpdir/srv.log" >&2
      srvpid=
      fail "nbdkit $* did not start"
    fi
    sleep 0.01
  done
  fail "nbdkit $* did not start in 10 s"
}
srv_stop ()
{
  [ -n "$srvpid" ] || return 0
  kill "$srvpid" 2>/dev/null || :
  wait "$srvpid" 2>/dev/null || :
  srvpid=
}
on_exit srv_stop

failures=()
bad () { echo "FAIL: $*"; failures+=("$*"); }
# run_checks: run $tmpdir/checks against the running server
run_checks ()
{
  local line
  timeout 120 "$PYTHON" "$tmpdir/check-exports.py" "$srvsock" "$tmpdir/checks" \
    > "$tmpdir/checks.out" 2>&1 ||
    bad "check-exports.py failed: $(tail -n 3 "$tmpdir/checks.out")"
  while IFS= read -r line; do
    case $line in
      ok:*) echo "$line" ;;
      FAIL:*) bad "${line#FAIL: }" ;;
    esac
  done < "$tmpdir/checks.out"
}

nimg=0 nsnap=0
while read -r -u 3 img; do
  [ -n "$img" ] || continue
  nimg=$((nimg + 1))
  path=$imgdir/$img
  ns=$(snapshots "$path")
  [ "$ns" -gt 0 ] || fail "$img has no snapshots according to qemu-img info"
  ids=() names=()
  for i in $(seq "$ns"); do
    ids[i]=$(jget "$i" 0)
    names[i]=$(jget "$i" 1)
  done
  # is_name STR / is_id STR: some snapshot of this image has that name / ID
  is_name () { local x; for x in "${names[@]}"; do [ "$x" != "$1" ] || return 0; done; return 1; }
  is_id () { local x; for x in "${ids[@]}"; do [ "$x" != "$1" ] || return 0; done; return 1; }

  # qemu's view of every snapshot, as raw files snap-N.raw
  for i in $(seq "$ns"); do
    name=${names[i]}
    if is_id "$name"; then
      # `snapshot -a` would take it as an ID; same size in our images
      qemu-img convert -f qcow2 -l "snapshot.name=$name" -O raw "$path" \
        "$tmpdir/snap-$i.raw" || fail "qemu-img convert -l failed: $img '$name'"
    else
      copy=$(dirname "$path")/.qc-snap.$$.$(basename "$path")
      on_exit "rm -f '$copy'"
      cp "$path" "$copy"
      qemu-img snapshot -a "$name" "$copy" ||
        fail "qemu-img snapshot -a '$name' $img failed"
      qemu-img convert -f qcow2 -O raw "$copy" "$tmpdir/snap-$i.raw" ||
        fail "qemu-img convert failed: $img '$name'"
      rm -f "$copy"
    fi
  done
  qemu-img convert -f qcow2 -O raw "$path" "$tmpdir/active.raw"

  # one server, every export
  {
    jlist "$img: exports = \"\" + qemu's snapshot names" "" "${names[@]}"
    jcheck read "" "$tmpdir/active.raw" "$img: default export = active image"
    for i in $(seq "$ns"); do
      nsnap=$((nsnap + 1))
      jcheck read "${names[i]}" "$tmpdir/snap-$i.raw" "$img: export '${names[i]}'"
      # by ID, unless some snapshot is named like this ID
      is_name "${ids[i]}" ||
        jcheck read "${ids[i]}" "$tmpdir/snap-$i.raw" \
          "$img: export '${ids[i]}' (ID of '${names[i]}')"
    done
    jcheck refuse "no-such-snapshot" "$img: export 'no-such-snapshot' refused"
  } > "$tmpdir/checks"
  srv_start -r qcow2 "$path"
  run_checks
  # the nbdinfo --list view too: the number of exports
  nlisted=$(nbdinfo --list --json "$(nbd_uri "$srvsock")" |
            "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)["exports"]))')
  if [ "$nlisted" -eq $((ns + 1)) ]; then
    echo "ok: $img: nbdinfo --list shows $nlisted exports"
  else
    bad "$img: nbdinfo --list shows $nlisted exports, want $((ns + 1))"
  fi
  srv_stop

  # snapshot=NAME (and snapshot=ID, for the first) as the default export
  for i in $(seq "$ns"); do
    sels=("${names[i]}")
    if [ "$i" -eq 1 ] && ! is_name "${ids[i]}"; then sels+=("${ids[i]}"); fi
    for sel in "${sels[@]}"; do
      jcheck read "" "$tmpdir/snap-$i.raw" "$img: snapshot=$sel" > "$tmpdir/checks"
      srv_start -r qcow2 "$path" "snapshot=$sel"
      run_checks
      srv_stop
    done
  done

  # snapshot=no-such-snapshot: refused, at startup or when connecting
  if qemu-img convert -f qcow2 -l snapshot.name=no-such-snapshot -O raw "$path" \
       "$tmpdir/x.raw" 2>/dev/null; then
    fail "qemu found a snapshot 'no-such-snapshot' in $img?"
  fi
  if timeout 60 "$NBDKIT" -r -f -U - qcow2 "$path" snapshot=no-such-snapshot \
       --run 'nbdinfo --size "$uri"' >"$tmpdir/out" 2>"$tmpdir/err"; then
    bad "$img: snapshot=no-such-snapshot was accepted (served $(cat "$tmpdir/out") bytes)"
  elif ! [ -s "$tmpdir/err" ]; then
    bad "$img: snapshot=no-such-snapshot failed without an error message"
  else
    echo "ok: $img: snapshot=no-such-snapshot refused:" \
         "$(grep -m1 -i 'snapshot' "$tmpdir/err" || head -n1 "$tmpdir/err")"
  fi
done 3< "$imgdir/snapshots.txt"

# An image without snapshots has just the default export.
jlist "empty.qcow2 (no snapshots): only the default export" "" > "$tmpdir/checks"
srv_start -r qcow2 "$imgdir/empty.qcow2"
run_checks
srv_stop

# Snapshot exports stay read-only even when the server is not (no -r).
cp "$imgdir/snap-basic.qcow2" "$tmpdir/rw.qcow2"
qemu-img convert -f qcow2 -l snapshot.name=s1 -O raw "$tmpdir/rw.qcow2" "$tmpdir/s1.raw"
jcheck read s1 "$tmpdir/s1.raw" "snap-basic.qcow2 served without -r: export 's1' read-only" \
  > "$tmpdir/checks"
srv_start qcow2 "$tmpdir/rw.qcow2"
run_checks
srv_stop

echo "$nimg images, $nsnap snapshots, ${#failures[@]} failures"
if [ "$nimg" -eq 0 ] || [ "$nsnap" -eq 0 ]; then fail "no snapshots tested"; fi
if [ "${#failures[@]}" -gt 0 ]; then
  printf '  %s\n' "${failures[@]}" >&2
  fail "${#failures[@]} snapshot export checks failed"
fi
