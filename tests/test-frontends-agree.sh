#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The plugin, the qcow2 filter and the overlay filter serve through one
# serving layer, so they agree (issue 15):
#  1. create sizes: 1000 bytes make a 1024-byte qcow2 disk everywhere
#     (qemu-img's rule), and create=true over that image accepts 1000;
#  2. hints: each message that names an option names it as the module's
#     user types it: copied onto the command line, it is accepted;
#  3. errno for each request type (write, zero, fast zero, trim, flush,
#     read) on a writable export, a read-only one, a snapshot export and
#     past the end, all three the same;
#  4. 0-byte disks: create=true size=0 as qemu-img create makes it, an
#     overlay over a 0-byte plugin (as nbdkit-cow-filter serves one),
#     judged by qemu-img info and check.
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires qemu-nbd --version
requires nbdinfo --version
requires $PYTHON -c 'import nbd'

failures=0
bad () { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
ok () { echo "ok: $*"; }
cd "$tmpdir"

# served_size ARGS...: the size nbdkit ARGS serves ("" if it fails).
served_size ()
{
  "$NBDKIT" -U - "$@" --run 'nbdinfo --size "$uri"' 2>"$tmpdir/err" || :
}
virtual_size ()
{
  qemu-img info --output=json "$@" |
    $PYTHON -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'
}

echo "== 1. create sizes"
s=$(served_size qcow2 p.qcow2 create=true size=1000)
[ "$s" = 1024 ] && [ "$(virtual_size p.qcow2)" = 1024 ] &&
  ok "plugin: size=1000 serves 1024" || bad "plugin: size=1000 serves '$s'"
truncate -s 4M c.img
s=$(served_size --filter=qcow2 file c.img qcow2-create=true qcow2-size=1000)
[ "$s" = 1024 ] && [ "$(virtual_size -f qcow2 c.img)" = 1024 ] &&
  ok "qcow2 filter: qcow2-size=1000 serves 1024" ||
  bad "qcow2 filter: qcow2-size=1000 serves '$s': $(cat err)"
s=$(served_size --filter=overlay null 1000 overlay=o.qcow2)
[ "$s" = 1000 ] && [ "$(virtual_size o.qcow2)" = 1024 ] &&
  ok "overlay over 1000 bytes: a 1024-byte overlay, 1000 served" ||
  bad "overlay over 1000 bytes: served '$s', $(virtual_size o.qcow2)"
# Again over the images just made: 1000 describes them.
s=$(served_size qcow2 p.qcow2 create=true size=1000)
[ "$s" = 1024 ] || bad "plugin: create=true size=1000 again: '$s' $(cat err)"
s=$(served_size --filter=qcow2 file c.img qcow2-create=true qcow2-size=1000)
[ "$s" = 1024 ] || bad "qcow2 filter: again: '$s' $(cat err)"
s=$(served_size --filter=overlay null 1000 overlay=o.qcow2)
[ "$s" = 1000 ] || bad "overlay: again: '$s' $(cat err)"
# ... and 2000 does not, in the same words.
s=$(served_size qcow2 p.qcow2 create=true size=2000)
[ -z "$s" ] && grep -q 'not the size=2048 asked for' err ||
  bad "plugin: size=2000 over a 1024-byte image: '$s' $(cat err)"
s=$(served_size --filter=qcow2 file c.img qcow2-create=true qcow2-size=2000)
[ -z "$s" ] && grep -q 'not the qcow2-size=2048 asked for' err ||
  bad "qcow2 filter: qcow2-size=2000 over 1024 bytes: '$s' $(cat err)"
ok "create=true over an existing image: one rule"

echo "== 2. hints"
# hint NAME PREFIX REGEX ARGS...: nbdkit ARGS fails with a message whose
# option (matching REGEX) carries PREFIX; with that option added it
# serves.
hint ()
{
  local name="$1" prefix="$2" re="$3" opt; shift 3
  if [ -n "$(served_size "$@")" ]; then
    bad "$name: served without the option"; return
  fi
  opt=$(grep -Eo "(^|[ (])[a-z0-9-]*$re" "$tmpdir/err" | head -1 |
          sed 's/^[ (]//') || :
  case "$opt" in
    "$prefix"*) ;;
    *) bad "$name: the hint names '$opt', not $prefix...: $(cat err)"
       return ;;
  esac
  case "$opt" in
    qcow2-qcow2-*|overlay-overlay-*|qcow2-overlay-*|overlay-qcow2-*)
      bad "$name: '$opt'"; return ;;
  esac
  # The hint names an option with its value or without: give it one.
  case "$opt" in *=) opt="${opt}secret" ;; esac
  if [ -z "$(served_size "$@" "$opt")" ]; then
    bad "$name: '$opt' (from the hint) is not accepted: $(cat err)"
    return
  fi
  ok "$name: the hint names $opt, which works"
}
# An encrypted image, and an encrypted overlay.
retry_pbkdf qemu-img create -q -f qcow2 --object secret,id=s,data=secret \
  -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=200 \
  enc.qcow2 1M
"$NBDKIT" -U - --filter=overlay null 1M overlay=enc-ov.qcow2 \
  overlay-encrypt=luks overlay-passphrase=secret \
  overlay-encrypt-iter-time=10 --run true
hint "plugin passphrase" "" 'passphrase=' qcow2 enc.qcow2
hint "qcow2 filter passphrase" qcow2- 'passphrase=' \
  --filter=qcow2 file enc.qcow2
hint "overlay passphrase" overlay- 'passphrase=' \
  --filter=overlay null 1M overlay=enc-ov.qcow2
# Images qemu holds open for writing.
qemu-img create -q -f qcow2 base.qcow2 1M
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
"$NBDKIT" -U - --filter=overlay null 1M overlay=held-ov.qcow2 --run true
qsock=$tmpdir/qemu.sock
qemu-nbd -t -k "$qsock" -f qcow2 base.qcow2 2>/dev/null &
qpid1=$!
qemu-nbd -t -k "$qsock.2" -f qcow2 held-ov.qcow2 2>/dev/null &
qpid2=$!
on_exit "kill $qpid1 $qpid2 2>/dev/null; wait $qpid1 $qpid2 2>/dev/null"
for i in $(seq 1 100); do
  [ -S "$qsock" ] && [ -S "$qsock.2" ] && break
  sleep 0.1
done
hint "plugin locking" "" 'locking=off' qcow2 base.qcow2
hint "qcow2 filter locking" qcow2- 'locking=off' --filter=qcow2 file top.qcow2
hint "overlay locking" overlay- 'locking=off' \
  --filter=overlay null 1M overlay=held-ov.qcow2
kill $qpid1 $qpid2; wait $qpid1 $qpid2 2>/dev/null || :
# Not qcow2: the plugin's hint is format=raw; an overlay file is always
# qcow2, so the overlay names no option (overlay-format is refused).
truncate -s 1M raw.img
hint "plugin format" "" 'format=raw' qcow2 raw.img
cp raw.img raw-ov.img
[ -z "$(served_size --filter=overlay null 1M overlay=raw-ov.img)" ] ||
  bad "overlay over a raw overlay file served"
grep -q 'not a qcow2 image' err || bad "overlay, raw file: $(cat err)"
! grep -q 'format=' err || bad "overlay, raw file: names format=: $(cat err)"
ok "overlay: a file that is not qcow2 is refused without a format= hint"

echo "== 3. errno of each request type"
cat >"$tmpdir/requests.py" <<'EOF'
# Each request type on an export (or "no export" if it cannot be
# opened), printed as one line each: what, then OK or the errno name.
import errno, nbd, sys
sock, export = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.set_strict_mode(0)            # let the server judge every request
h.set_export_name(export)
try:
    h.connect_unix(sock)
except nbd.Error:
    print("connect: no such export")
    sys.exit(0)
size = h.get_size()
def run(name, fn):
    try:
        fn()
        print(name, "OK")
    except nbd.Error as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
fz = nbd.CMD_FLAG_FAST_ZERO
ro = h.is_read_only()
if not ro:
    h.pwrite(b"\xaa" * 4096, 0)
run("write", lambda: h.pwrite(b"\x55" * 512, 0))
run("zero", lambda: h.zero(100, 8))
run("fast zero of data", lambda: h.zero(100, 1000, fz))
run("trim", lambda: h.trim(512, 2048))
run("flush", lambda: h.flush())
run("read", lambda: h.pread(512, 0))
run("read past the end", lambda: h.pread(512, size))
run("write past the end", lambda: h.pwrite(b"x" * 512, size))
run("zero past the end", lambda: h.zero(512, size))
run("fast zero past the end", lambda: h.zero(512, size, fz))
run("trim past the end", lambda: h.trim(512, size))
h.shutdown()
EOF
qemu-img create -q -f qcow2 img.qcow2 1M
qemu-img snapshot -c snap img.qcow2
cp img.qcow2 cont.qcow2
truncate -s 8M cont.qcow2       # room to allocate in the container
rm -f ov.qcow2
"$NBDKIT" -U - --filter=overlay memory 1M overlay=ov.qcow2 --run true
requests ()
{
  local export="$1"; shift
  "$NBDKIT" -U - "$@" \
    --run "$PYTHON $tmpdir/requests.py \"\$unixsocket\" '$export'" \
    2>>"$tmpdir/requests.log"
}
for export in "" snap; do
  for ro in "" -r; do
    what="export '$export'${ro:+ (nbdkit -r)}"
    requests "$export" $ro qcow2 img.qcow2 >plugin.out
    requests "$export" $ro --filter=qcow2 file cont.qcow2 >filter.out
    requests "$export" $ro --filter=overlay memory 1M \
      overlay=ov.qcow2 >overlay.out
    if [ -n "$export" ]; then
      # The overlay serves only its default export.
      grep -qx 'connect: no such export' overlay.out ||
        bad "overlay: export '$export': $(cat overlay.out)"
      cp plugin.out overlay.out
    fi
    if ! cmp -s plugin.out filter.out || ! cmp -s plugin.out overlay.out
    then
      bad "$what: the front-ends disagree"
      paste plugin.out filter.out overlay.out >&2
      continue
    fi
    cat plugin.out
    # The answers themselves, not only agreement.
    if [ -z "$export" ] && [ -z "$ro" ]; then
      printf '%s\n' "write OK" "zero OK" "fast zero of data ENOTSUP" \
        "trim OK" "flush OK" "read OK" "read past the end EINVAL" \
        "write past the end ENOSPC" "zero past the end ENOSPC" \
        "fast zero past the end ENOSPC" "trim past the end EINVAL"
    else
      printf '%s\n' "write EPERM" "zero EPERM" "fast zero of data EPERM" \
        "trim EPERM" "flush OK" "read OK" "read past the end EINVAL" \
        "write past the end EPERM" "zero past the end EPERM" \
        "fast zero past the end EPERM" "trim past the end EPERM"
    fi >expected.out
    diff -u expected.out plugin.out >&2 || bad "$what: unexpected answers"
    ok "$what: the three front-ends answer alike"
  done
done

echo "== 4. 0-byte disks"
qemu-img create -q -f qcow2 q0.qcow2 0
s=$(served_size qcow2 z.qcow2 create=true size=0)
[ "$s" = 0 ] || bad "plugin: create=true size=0 serves '$s': $(cat err)"
[ "$(virtual_size z.qcow2)" = 0 ] && qemu-img check -q z.qcow2 &&
  qemu-img compare -q q0.qcow2 z.qcow2 &&
  ok "plugin: size=0 makes a 0-byte qcow2 disk, qemu-img check clean" ||
  bad "plugin: size=0: $(qemu-img check z.qcow2 2>&1)"
s=$(served_size qcow2 z.qcow2 create=true size=0)
[ "$s" = 0 ] || bad "plugin: size=0 again: '$s' $(cat err)"
s=$(served_size qcow2 z2.qcow2 create=true)
[ -z "$s" ] && grep -q 'needs size=' err ||
  bad "plugin: create=true without size= must still be refused"
truncate -s 1M c0.img
s=$(served_size --filter=qcow2 file c0.img qcow2-create=true qcow2-size=0)
[ "$s" = 0 ] && qemu-img check -q -f qcow2 c0.img &&
  ok "qcow2 filter: qcow2-size=0 makes a 0-byte disk, qemu-img check clean" ||
  bad "qcow2 filter: qcow2-size=0: '$s' $(cat err)"
s=$(served_size --filter=overlay null 0 overlay=z-ov.qcow2)
[ "$s" = 0 ] || bad "overlay over null 0: '$s': $(cat err)"
[ "$(virtual_size z-ov.qcow2)" = 0 ] && qemu-img check -q z-ov.qcow2 &&
  ok "overlay over a 0-byte plugin: a 0-byte overlay, qemu-img check clean" ||
  bad "overlay over null 0: $(qemu-img check z-ov.qcow2 2>&1)"
s=$(served_size --filter=overlay null 0 overlay=z-ov.qcow2)
[ "$s" = 0 ] || bad "overlay over null 0, reopened: '$s': $(cat err)"

[ $failures -eq 0 ] || fail "$failures failures"
echo "all front-ends agree"
