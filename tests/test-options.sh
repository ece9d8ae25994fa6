#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The plugin's parameters: bad values give clear errors at startup, and
# each parameter does what the man page says.
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires nbdcopy --version
requires timeout --version
requires "$PYTHON" -c 'import json'

# The refusals below only mean something if the plugin loads at all.
"$NBDKIT" qcow2 --dump-plugin >/dev/null ||
  fail "the qcow2 plugin does not load: '$NBDKIT qcow2 --dump-plugin' failed"

failures=0
# check_fail MSG: record a failure, keep going (so one run shows them all).
check_fail () { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# nbdkit_try ARGS...: run "nbdkit -U - ARGS" with nbdcopy as the client.
# Sets $status (nbdkit's exit status) and $started (yes if nbdkit got as
# far as serving); stderr is left in $tmpdir/try.err, the data read in
# $tmpdir/try.raw.
nbdkit_try ()
{
  rm -f "$tmpdir/started" "$tmpdir/try.raw"
  status=0
  timeout 60 "$NBDKIT" -U - "$@" \
    --run "touch '$tmpdir/started'; nbdcopy \"\$uri\" '$tmpdir/try.raw'" \
    </dev/null >/dev/null 2>"$tmpdir/try.err" || status=$?
  started=no
  if [ -e "$tmpdir/started" ]; then started=yes; fi
}

# expect_refused REGEX ARGS...: nbdkit ARGS must refuse to start, with
# an error on stderr matching REGEX (extended, case-insensitive).
expect_refused ()
{
  local re="$1"; shift
  nbdkit_try "$@"
  if [ $status -eq 0 ]; then
    cat "$tmpdir/try.err" >&2
    check_fail "nbdkit $* was accepted; expected an error matching /$re/"
  elif [ $started = yes ]; then
    cat "$tmpdir/try.err" >&2
    check_fail "nbdkit $* started serving and failed only when a client" \
               "connected; expected it to refuse to start"
  elif ! grep -Eiq -- "$re" "$tmpdir/try.err"; then
    cat "$tmpdir/try.err" >&2
    check_fail "nbdkit $*: the error does not match /$re/"
  else
    echo "ok: refused: nbdkit $*"
    sed 's/^/    /' "$tmpdir/try.err"
  fi
}

# expect_served EXPECTED ARGS...: nbdkit ARGS must serve exactly the
# bytes of the file EXPECTED.
expect_served ()
{
  local expected="$1"; shift
  nbdkit_try "$@"
  if [ $status -ne 0 ]; then
    cat "$tmpdir/try.err" >&2
    check_fail "nbdkit $* failed (status $status)"
  elif ! cmp "$expected" "$tmpdir/try.raw"; then
    check_fail "nbdkit $*: served bytes differ from $(basename "$expected")"
  else
    echo "ok: served correctly: nbdkit $*"
  fi
}

# to_raw IMG OUT [qemu-img convert options...]: qemu's view of IMG.
to_raw ()
{
  local img="$1" out="$2"; shift 2
  qemu-img convert -U "$@" -O raw "$img" "$out"
}

cd "$tmpdir"

# ---------------------------------------------------------------------
# Images.
# base.raw (1 MiB, 0xaa) <- overlay.qcow2 (4 MiB, some clusters written)
truncate -s 1M base.raw
qemu-io -f raw -c 'write -q -P 0xaa 0 1M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw overlay.qcow2 4M
qemu-io -c 'write -q -P 0xbb 64k 64k' -c 'write -q -P 0xcc 2M 4k' \
        -c 'write -q -z 128k 64k' overlay.qcow2 >/dev/null
to_raw overlay.qcow2 overlay-expected.raw

# other.raw (3 MiB, 0x55) and other.qcow2 (same content), to override the
# backing file with.
truncate -s 3M other.raw
qemu-io -f raw -c 'write -q -P 0x55 0 3M' other.raw >/dev/null
qemu-img convert -f raw -O qcow2 other.raw other.qcow2

cp overlay.qcow2 nobacking.qcow2
qemu-img rebase -u -b '' nobacking.qcow2
to_raw nobacking.qcow2 nobacking-expected.raw
cp overlay.qcow2 overother.qcow2
qemu-img rebase -u -b "$tmpdir/other.raw" -F raw overother.qcow2
to_raw overother.qcow2 overother-expected.raw

# A plain qcow2 image with a snapshot.
qemu-img create -q -f qcow2 snap.qcow2 2M
qemu-io -c 'write -q -P 0x01 0 1M' snap.qcow2 >/dev/null
qemu-img snapshot -c first snap.qcow2
qemu-io -c 'write -q -P 0x02 512k 1M' snap.qcow2 >/dev/null
qemu-img snapshot -c second snap.qcow2
qemu-io -c 'write -q -P 0x03 0 64k' snap.qcow2 >/dev/null
to_raw snap.qcow2 snap-active.raw
to_raw snap.qcow2 snap-first.raw -l snapshot.name=first
to_raw snap.qcow2 snap-second.raw -l snapshot.name=second
snap_first_id=$(qemu-img snapshot -l snap.qcow2 |
                awk '$2 == "first" { print $1 }')
[ -n "$snap_first_id" ] || fail "cannot find the ID of snapshot 'first'"

# Raw files.
truncate -s 3M disk.raw
qemu-io -f raw -c 'write -q -P 0x42 0 100k' -c 'write -q -P 0x43 2M 512' \
        disk.raw >/dev/null
head -c 700000 /dev/urandom | dd of=disk.raw bs=1k seek=1024 \
  conv=notrunc status=none
echo "not a qcow2 image, just some text" >text.img
truncate -s 1M text.img

# Backing names that qemu would interpret as protocols.
qemu-img create -q -f qcow2 -u -F raw \
  -b 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/hostname"}}' \
  json-backing.qcow2 1M
qemu-img create -q -f qcow2 -u -F raw -b 'nbd://localhost/x' nbd-backing.qcow2 1M
qemu-img create -q -f qcow2 -u -F raw -b 'http://localhost/base.raw' \
  http-backing.qcow2 1M

# Encrypted images.
# (qemu-img's PBKDF2 benchmark fails now and then with "Unable to get
# accurate CPU usage": try again.)
for i in $(seq 1 10); do
  qemu-img create -q -f qcow2 --object secret,id=s0,data=secret \
    -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
    luks.qcow2 1M 2>luks.err && break
  rm -f luks.qcow2
done
[ -f luks.qcow2 ] || { cat luks.err >&2; fail "cannot create a LUKS image"; }
qemu-img create -q -f qcow2 --object secret,id=s0,data=secret \
  -o encrypt.format=aes,encrypt.key-secret=s0 aes.qcow2 1M

# ---------------------------------------------------------------------
echo "== bad options and inputs are refused with clear errors"
expect_refused 'frobnicate|unknown' qcow2 overlay.qcow2 frobnicate=1
expect_refused 'vmdk|format' qcow2 overlay.qcow2 format=vmdk
expect_refused 'cache-size|garbage' qcow2 overlay.qcow2 cache-size=garbage
expect_refused 'locking|maybe' qcow2 overlay.qcow2 locking=maybe
expect_refused 'nonexistent|snapshot' qcow2 snap.qcow2 snapshot=nonexistent
expect_refused 'json' qcow2 overlay.qcow2 'backing=json:{}'
expect_refused 'http|protocol|url' qcow2 overlay.qcow2 backing=http://x
expect_refused 'vmdk|backing-format' qcow2 overlay.qcow2 \
  backing=other.raw backing-format=vmdk
expect_refused 'nosuchbase' qcow2 overlay.qcow2 \
  backing="$tmpdir/nosuchbase.raw" backing-format=raw
expect_refused 'backing' qcow2 overlay.qcow2 backing-format=raw
expect_refused 'snapshot' qcow2 disk.raw format=raw snapshot=first
expect_refused 'format=raw' qcow2 text.img
expect_refused 'format=raw' qcow2 disk.raw
expect_refused 'nosuchfile' qcow2 "$tmpdir/nosuchfile.qcow2"
expect_refused 'file=|\<file\>.*(required|missing|must)|(required|missing|must|no)\>.*\<file\>' qcow2
expect_refused 'json' qcow2 json-backing.qcow2
expect_refused 'nbd:|protocol|url' qcow2 nbd-backing.qcow2
expect_refused 'http|protocol|url' qcow2 http-backing.qcow2
expect_refused 'encrypt' qcow2 luks.qcow2
expect_refused 'encrypt' qcow2 aes.qcow2

# ---------------------------------------------------------------------
echo "== format=raw"
expect_served disk.raw qcow2 disk.raw format=raw
expect_served disk.raw qcow2 file=disk.raw format=raw
expect_served text.img qcow2 text.img format=raw
# A qcow2 file served as raw shows its container bytes.
expect_served overlay.qcow2 qcow2 overlay.qcow2 format=raw
expect_served overlay-expected.raw qcow2 overlay.qcow2 format=qcow2

echo "== backing"
# The default: the backing file named in the image, relative to the
# image's directory (not nbdkit's working directory).
cd /
expect_served "$tmpdir/overlay-expected.raw" qcow2 "$tmpdir/overlay.qcow2"
cd "$tmpdir"
mkdir -p sub
cp base.raw sub/base.raw
qemu-img create -q -f qcow2 -b base.raw -F raw sub/rel.qcow2 4M
qemu-io -c 'write -q -P 0xbb 64k 64k' sub/rel.qcow2 >/dev/null
to_raw sub/rel.qcow2 rel-expected.raw
cd /
expect_served "$tmpdir/rel-expected.raw" qcow2 "$tmpdir/sub/rel.qcow2"
cd "$tmpdir"

expect_served nobacking-expected.raw qcow2 overlay.qcow2 backing=none
cmp -s nobacking-expected.raw overlay-expected.raw &&
  fail "test broken: backing=none expectation equals the normal one"
expect_served overother-expected.raw qcow2 overlay.qcow2 \
  backing="$tmpdir/other.raw" backing-format=raw
expect_served overother-expected.raw qcow2 overlay.qcow2 \
  backing="$tmpdir/other.qcow2" backing-format=qcow2

echo "== snapshot"
expect_served snap-active.raw qcow2 snap.qcow2
expect_served snap-first.raw qcow2 snap.qcow2 snapshot=first
expect_served snap-second.raw qcow2 snap.qcow2 snapshot=second
expect_served snap-first.raw qcow2 snap.qcow2 snapshot="$snap_first_id"
# A snapshot is always served read-only.
ro=$(timeout 60 "$NBDKIT" -U - qcow2 snap.qcow2 snapshot=first \
       --run 'nbdinfo --no-content --json "$uri"' </dev/null |
     "$PYTHON" -c '
import json, sys
print(json.load(sys.stdin)["exports"][0]["is_read_only"])') || :
if [ "$ro" = True ]; then
  echo "ok: snapshot=first is served read-only"
else
  check_fail "snapshot=first: export not read-only (is_read_only: '$ro')"
fi

echo "== cache-size and locking"
expect_served overlay-expected.raw qcow2 overlay.qcow2 cache-size=64k
expect_served overlay-expected.raw qcow2 overlay.qcow2 cache-size=1M
expect_served overlay-expected.raw qcow2 overlay.qcow2 cache-size=1G
expect_served overlay-expected.raw qcow2 overlay.qcow2 locking=off
expect_served overlay-expected.raw qcow2 overlay.qcow2 locking=on

# ---------------------------------------------------------------------
echo "== export description"
# describe ARGS...: set $d to the description nbdinfo --json shows for
# the default export.
describe ()
{
  d=
  timeout 60 "$NBDKIT" -U - "$@" --run 'nbdinfo --no-content --json "$uri"' \
    </dev/null >"$tmpdir/info.json" 2>"$tmpdir/info.err" || {
    cat "$tmpdir/info.err" >&2
    check_fail "nbdinfo --json failed for nbdkit $*"
    return 0
  }
  d=$("$PYTHON" -c '
import json, sys
d = json.load(open(sys.argv[1]))
e = [x for x in d["exports"] if x.get("export-name", "") == ""][0]
print(e.get("description", ""))' "$tmpdir/info.json")
}
# check_description WHAT REGEX DESC
check_description ()
{
  if echo "$3" | grep -Eiq -- "$2"; then
    echo "ok: description mentions $1"
  else
    check_fail "description '$3' does not mention $1 (/$2/)"
  fi
}

qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=64k v3.qcow2 1M
describe qcow2 v3.qcow2
echo "description of a v3, 64 KiB cluster image: $d"
check_description "qcow2" 'qcow2' "$d"
check_description "version 3" '(\bv|version|compat)[ =:]*(3\b|1\.1)' "$d"
check_description "cluster size 64 KiB" '65536|64 ?k' "$d"
check_description "zlib" 'zlib' "$d"

qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k v2.qcow2 1M
describe qcow2 v2.qcow2
echo "description of a v2, 4 KiB cluster image: $d"
check_description "qcow2" 'qcow2' "$d"
check_description "version 2" '(\bv|version|compat)[ =:]*(2\b|0\.10)' "$d"
check_description "cluster size 4 KiB" '4096|4 ?k' "$d"

qemu-img create -q -f qcow2 -o compression_type=zstd,cluster_size=2M \
  zstd.qcow2 4M
describe qcow2 zstd.qcow2
echo "description of a zstd, 2 MiB cluster image: $d"
check_description "zstd" 'zstd' "$d"
check_description "cluster size 2 MiB" '2097152|2 ?mi?b|2048 ?ki?b' "$d"

describe qcow2 overlay.qcow2
echo "description of an overlay: $d"
check_description "its backing file" 'base\.raw' "$d"

describe qcow2 disk.raw format=raw
echo "description of a raw image: $d"
check_description "raw" 'raw' "$d"

if [ $failures -ne 0 ]; then
  echo "test-options: $failures check(s) failed" >&2
  exit 1
fi
echo "PASS: test-options"
