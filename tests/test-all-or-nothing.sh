#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Creation and maintenance are all or nothing, nbdkit -r writes nothing,
# and no option is silently ignored (issue 14, items 4 to 7).  Every
# refused command line must exit non-zero with a message naming the
# option as typed, and leave the directory exactly as it was: the same
# files (no stray temporary ones), byte for byte.  The good cases must
# still work, judged by qemu-img info / check / snapshot -l.
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires timeout --version
requires sha256sum --version

"$NBDKIT" qcow2 --dump-plugin >/dev/null ||
  fail "the qcow2 plugin does not load"

failures=0
bad () { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
ok () { echo "ok: $*"; }

D=$tmpdir/d
mkdir "$D"
cd "$D"

# The state of the directory: every name (hidden ones too) and hash.
state ()
{
  (cd "$D" && ls -A | LC_ALL=C sort && find . -type f -print0 |
     LC_ALL=C sort -z | xargs -0r sha256sum)
}

# refused REGEX ARGS...: "nbdkit -U - ARGS" (a client connects) must
# fail, with stderr matching REGEX, and change nothing in $D.
refused ()
{
  local re="$1" st=0; shift
  state >"$tmpdir/before"
  timeout 120 "$NBDKIT" -U - "$@" --run 'nbdinfo --size "$uri"' \
    </dev/null >/dev/null 2>"$tmpdir/err" || st=$?
  state >"$tmpdir/after"
  if [ $st -eq 0 ]; then
    bad "accepted: nbdkit $*"
  elif ! grep -Eiq -- "$re" "$tmpdir/err"; then
    bad "nbdkit $*: the message does not match /$re/: $(cat "$tmpdir/err")"
  elif ! cmp -s "$tmpdir/before" "$tmpdir/after"; then
    bad "nbdkit $* (refused) changed the directory:" \
        "$(diff "$tmpdir/before" "$tmpdir/after" | tr '\n' ' ')"
  else
    ok "refused, nothing changed: nbdkit $*"
    sed 's/^/    /' "$tmpdir/err"
  fi
}

# served ARGS...: "nbdkit -U - ARGS" must start and serve.
served ()
{
  if timeout 120 "$NBDKIT" -U - "$@" --run 'nbdinfo --size "$uri"' \
       </dev/null >/dev/null 2>"$tmpdir/err"; then
    ok "served: nbdkit $*"
  else
    bad "nbdkit $* failed: $(cat "$tmpdir/err")"
  fi
}

qcheck ()
{
  qemu-img check -q "$1" >/dev/null 2>&1 ||
    bad "$2: qemu-img check $1: $(qemu-img check "$1" 2>&1 | head -n 3)"
}
snaps () { qemu-img snapshot -l "$1" | awk 'NR > 2 { print $2 }' | xargs; }
vsize () { qemu-img info --output=json "$1" |
             sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p'; }

# A sample image with data and a snapshot, a raw base file.
qemu-img create -q -f qcow2 disk.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0xaa 0 1M' disk.qcow2 >/dev/null
qemu-img snapshot -c snap1 disk.qcow2
qemu-io -f qcow2 -c 'write -P 0xbb 1M 1M' disk.qcow2 >/dev/null
truncate -s 64M base.raw

echo "== 4. creation is all or nothing"
refused 'size=.*too large' qcow2 new.qcow2 create=true size=9000T
# ...and a retry works: no 0-byte leftover in the way.
served qcow2 new.qcow2 create=true size=1G
[ "$(vsize new.qcow2)" = 1073741824 ] && qcheck new.qcow2 "retry" ||
  bad "create=true size=1G after the refused 9000T: $(vsize new.qcow2)"
rm -f new.qcow2
# An empty file (what older versions left behind) holds no image.
: >empty.qcow2
served qcow2 empty.qcow2 create=true size=1M
qcheck empty.qcow2 "create=true over an empty file"
rm -f empty.qcow2
refused 'backing-file=missing.raw.*(no such|exist)' \
  qcow2 new.qcow2 create=true size=1G backing-file=missing.raw
refused 'backing-format=qcow2' \
  qcow2 new.qcow2 create=true size=1G backing-file=base.raw \
  backing-format=qcow2
refused 'cluster-size' qcow2 new.qcow2 create=true size=1G cluster-size=3000
refused 'encrypt=luks needs passphrase' qcow2 new.qcow2 create=true size=1G \
  encrypt=luks
refused 'passphrase=.*not encrypted|encrypt=luks' \
  qcow2 new.qcow2 create=true size=1G passphrase=secret
refused 'encrypt-iter-time' qcow2 new.qcow2 create=true size=1G \
  encrypt-iter-time=10
# Fails after the image file was started: the data file's directory is
# missing.  The half-made image must go, temporary names included.
refused 'nodir' qcow2 new.qcow2 create=true size=1G data-file=nodir/d.raw
# A maintenance failure right after creating: the new image goes too.
refused "snapshot-apply=nosuch" qcow2 new.qcow2 create=true size=1G \
  snapshot-apply=nosuch
# create=force: the old image stays until the new one is complete.
refused 'size=.*too large' qcow2 disk.qcow2 create=force size=9000T
refused 'backing-file=missing.raw' qcow2 disk.qcow2 create=force size=1G \
  backing-file=missing.raw
cp disk.qcow2 old.qcow2
served qcow2 old.qcow2 create=force size=32M backing-file=base.raw \
  backing-format=raw
[ "$(vsize old.qcow2)" = 33554432 ] && [ -z "$(snaps old.qcow2)" ] &&
  qemu-img info old.qcow2 | grep -q 'backing file: base.raw' &&
  ok "create=force replaced the image" ||
  bad "create=force: $(qemu-img info old.qcow2)"
qcheck old.qcow2 "create=force"
rm -f old.qcow2
# create=force over an image qemu has open is refused.
cp disk.qcow2 held.qcow2
qemu-io -f qcow2 held.qcow2 -c 'sleep 20000' >/dev/null 2>&1 &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
sleep 1
refused 'lock|held|in use|permission' qcow2 held.qcow2 create=force size=1G
kill $qpid 2>/dev/null; wait $qpid 2>/dev/null || :

echo "== 4. the qcow2 filter's container"
truncate -s 64M cont.img
refused 'qcow2-size=.*too large' --filter=qcow2 file cont.img \
  qcow2-create=true qcow2-size=9000T
refused 'qcow2-backing-file=missing.raw' --filter=qcow2 file cont.img \
  qcow2-create=true qcow2-size=32M qcow2-backing-file=missing.raw
refused 'too small.*qcow2-preallocation' --filter=qcow2 file cont.img \
  qcow2-create=true qcow2-size=1G qcow2-preallocation=metadata
refused 'qcow2-passphrase' --filter=qcow2 file cont.img \
  qcow2-create=true qcow2-size=32M qcow2-passphrase=secret
served --filter=qcow2 file cont.img qcow2-create=true qcow2-size=32M
[ "$(vsize cont.img)" = 33554432 ] && ok "container formatted" ||
  bad "container: $(qemu-img info cont.img)"
refused 'qcow2-cluster-size=.*qcow2-create=force' --filter=qcow2 file \
  cont.img qcow2-create=true qcow2-size=32M qcow2-cluster-size=4k
refused 'qcow2-size=.*qcow2-create=force' --filter=qcow2 file cont.img \
  qcow2-create=true qcow2-size=16M

echo "== 4. the overlay filter"
refused 'overlay-passphrase' --filter=overlay file base.raw \
  overlay=ov.qcow2 overlay-passphrase=secret
refused 'overlay-cluster-size' --filter=overlay file base.raw \
  overlay=ov.qcow2 overlay-cluster-size=3000
served --filter=overlay file base.raw overlay=ov.qcow2
qcheck ov.qcow2 "overlay"

echo "== 5. maintenance is all or nothing"
refused 'snapshot-delete=nosuch' qcow2 disk.qcow2 snapshot-create=new1 \
  snapshot-delete=nosuch
refused "snapshot-create=s1.*exists" qcow2 disk.qcow2 snapshot-create=s1 \
  snapshot-create=s1
refused 'snapshot-apply=snap1' qcow2 disk.qcow2 snapshot-delete=snap1 \
  snapshot-apply=snap1
refused 'snapshot-delete=3' qcow2 disk.qcow2 snapshot-create=a \
  snapshot-delete=2 snapshot-delete=3
[ "$(snaps disk.qcow2)" = snap1 ] || bad "snapshots changed: $(snaps disk.qcow2)"
# A leaking image: repair= is not run when an operation is refused.
cp disk.qcow2 leaky.qcow2
python3 - leaky.qcow2 <<'EOF'
import struct, sys
# One leaked cluster: bump the refcount of the header cluster's
# neighbour past the file end is hard; instead append a cluster and
# count it in the first refcount block.
f = open(sys.argv[1], 'r+b')
h = f.read(104)
cs = 1 << struct.unpack('>I', h[20:24])[0]
rt = struct.unpack('>Q', h[48:56])[0]
f.seek(rt); rb = struct.unpack('>Q', f.read(8))[0]
f.seek(0, 2); end = f.seek(0, 2)
end = (end + cs - 1) // cs * cs
f.truncate(end + cs)
f.seek(rb + 2 * (end // cs)); f.write(struct.pack('>H', 1))
EOF
qemu-img check leaky.qcow2 2>&1 | grep -q 'leaked' ||
  bad "setup: leaky.qcow2 has no leak"
refused 'snapshot-apply=nosuch' qcow2 leaky.qcow2 repair=leaks \
  snapshot-apply=nosuch
qemu-img check leaky.qcow2 2>&1 | grep -q 'leaked' ||
  bad "refused run repaired the leak anyway"
# Refcount overflow at the second step (2-bit refcounts: at most 3).
qemu-img create -q -f qcow2 -o refcount_bits=2 narrow.qcow2 16M
qemu-io -f qcow2 -c 'write -P 1 0 1M' narrow.qcow2 >/dev/null
qemu-img snapshot -c q1 narrow.qcow2
refused 'snapshot-create=b.*refcount' qcow2 narrow.qcow2 \
  snapshot-create=a snapshot-create=b
[ "$(snaps narrow.qcow2)" = q1 ] || bad "narrow: $(snaps narrow.qcow2)"
# An image qemu holds: not writable, nothing done.
qemu-io -f qcow2 disk.qcow2 -c 'sleep 20000' >/dev/null 2>&1 &
qpid=$!
on_exit "kill $qpid 2>/dev/null"
sleep 1
refused 'lock|held|in use|permission' qcow2 disk.qcow2 snapshot-create=x
kill $qpid 2>/dev/null; wait $qpid 2>/dev/null || :
# The good cases, in order, with names made earlier in the same run.
cp disk.qcow2 m.qcow2
served qcow2 m.qcow2 snapshot-create=s1 snapshot-create=s2 \
  snapshot-delete=s1 snapshot-apply=s2 snapshot-apply=snap1 \
  snapshot-delete=snap1
[ "$(snaps m.qcow2)" = s2 ] && ok "operation list done: $(snaps m.qcow2)" ||
  bad "operation list: snapshots $(snaps m.qcow2), want s2"
qcheck m.qcow2 "operation list"
served qcow2 leaky.qcow2 repair=leaks
qemu-img check leaky.qcow2 >/dev/null 2>&1 && ok "repair=leaks repaired" ||
  bad "repair=leaks: $(qemu-img check leaky.qcow2 2>&1 | tail -n 2)"

echo "== 6. nbdkit -r never modifies anything"
refused 'create=.*-r' -r qcow2 new.qcow2 create=true size=1G
refused 'create=.*-r' qcow2 disk.qcow2 create=true -r
refused 'snapshot-create=.*-r' --readonly qcow2 disk.qcow2 \
  snapshot-create=x
refused 'snapshot-delete=.*-r' --read-only qcow2 disk.qcow2 \
  snapshot-delete=snap1
refused 'repair=.*-r' -r qcow2 leaky.qcow2 repair=all
refused 'compress=.*-r' -fr qcow2 disk.qcow2 compress=zlib
refused 'qcow2-snapshot-create=.*-r' -r --filter=qcow2 file cont.img \
  qcow2-snapshot-create=x
refused 'qcow2-create=.*-r' -r --filter=qcow2 file cont.img \
  qcow2-create=force qcow2-size=32M
refused 'overlay=.*-r|read-only' -r --filter=overlay file base.raw \
  overlay=ov2.qcow2
refused 'overlay-snapshot-create=.*-r' -r --filter=overlay file base.raw \
  overlay=ov.qcow2 overlay-snapshot-create=x
state >"$tmpdir/before"
served -r qcow2 disk.qcow2 check=on
served -r --filter=overlay file base.raw overlay=ov.qcow2
state >"$tmpdir/after"
cmp -s "$tmpdir/before" "$tmpdir/after" && ok "-r check=on: nothing changed" ||
  bad "-r check=on or the overlay changed files"

echo "== 7. nothing accepted and silently ignored"
refused 'passphrase=.*not encrypted' qcow2 disk.qcow2 passphrase=secret
refused 'qcow2-passphrase=.*not encrypted' --filter=qcow2 file cont.img \
  qcow2-passphrase=secret
refused 'overlay-passphrase=.*not encrypted' --filter=overlay file \
  base.raw overlay=ov.qcow2 overlay-passphrase=secret
refused 'error: size=.*create=' qcow2 disk.qcow2 size=1G
refused 'cluster-size=.*create=' qcow2 disk.qcow2 cluster-size=4k
refused 'qcow2-size=.*qcow2-create=' --filter=qcow2 file cont.img \
  qcow2-size=32M
refused 'compress=.*snapshot=' qcow2 disk.qcow2 compress=zlib snapshot=snap1
refused 'compress-level=.*compress=' qcow2 disk.qcow2 compress-level=3
refused 'qcow2-compress-level=.*qcow2-compress=' --filter=qcow2 file \
  cont.img qcow2-compress-level=3
refused 'overlay-compress-level=.*overlay-compress=' --filter=overlay \
  file base.raw overlay=ov.qcow2 overlay-compress-level=3
refused 'cluster size 65536.*create=force' qcow2 disk.qcow2 create=true \
  size=64M cluster-size=4k
refused 'compat=1.1.*create=force' qcow2 disk.qcow2 create=true compat=0.10
refused 'no encryption.*create=force' qcow2 disk.qcow2 create=true \
  encrypt=luks passphrase=secret encrypt-iter-time=10
refused 'overlay-cluster-size=.*new overlay' --filter=overlay file \
  base.raw overlay=ov.qcow2 overlay-cluster-size=4k
# What matches is served.
served qcow2 disk.qcow2 create=true size=64M cluster-size=64k compat=1.1
served --filter=overlay file base.raw overlay=ov.qcow2 \
  overlay-cluster-size=64k
qcheck disk.qcow2 "matching create=true"
[ "$(snaps disk.qcow2)" = snap1 ] || bad "disk.qcow2 snapshots changed"

# No temporary file was ever left behind.
if ls -A "$D" | grep -q '\.tmp$'; then
  bad "temporary files left: $(ls -A "$D" | grep '\.tmp$')"
fi

if [ $failures -gt 0 ]; then
  echo "FAIL: $failures checks failed" >&2
  exit 1
fi
echo "all checks passed"
