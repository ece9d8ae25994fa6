#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# nbdkit-qcow2enc-filter: the export is a qcow2 file of the plugin below.
#
# For every source and option set, qemu is the judge:
# - qemu-img compare -F qcow2 reads the export itself as qcow2 over NBD
#   and finds the source's bytes;
# - two copies of the export, nbdcopy to a file and nbdcopy to a pipe,
#   are byte-identical (any byte readable in any order, deterministic),
#   and so is a copy from a restarted server;
# - qemu-img check finds the copy clean (no leaks, no corruption), qemu-img
#   info shows the options asked for, qemu-img compare equals the source;
# - with zero-detect (the default) the copy is no larger than qemu-img
#   convert's with the same options (plus 2%).
# Sources: a file with random data, zero runs and holes whose size is not
# a multiple of the cluster (nor of 512 bytes); empty memory; sparse-random;
# our qcow2 plugin over a qemu-made image (compressed and zero clusters).
# Options: cluster sizes, compat=0.10, refcount widths, extended L2, lazy
# refcounts, compression type, compression (zlib, zstd, fast, with narrow
# refcounts), LUKS encryption, zero-detect=off, backing file (holes
# reading as zeros, or through to the base: a delta), external data file.
# Odd sources: 0 bytes; too large for the cluster size (the error names
# the option).  Bad option combinations are refused at startup.

. "${srcdir:-.}/functions.sh"

requires qemu-img --version
requires nbdcopy --version
requires cmp --version
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"
"$NBDKIT" --filter=qcow2enc null --dump-plugin >/dev/null ||
  fail "the qcow2enc filter does not load"

cd "$tmpdir"
K=1024
M=$((1024 * 1024))

# The file source: random data, allocated zeros, holes; 10 MiB + 12345
# bytes (not a multiple of 512).
truncate -s $((10 * M + 12345)) src.raw
dd if=/dev/urandom of=src.raw bs=64k count=20 conv=notrunc status=none
dd if=/dev/zero of=src.raw bs=64k seek=20 count=8 conv=notrunc status=none
dd if=/dev/urandom of=src.raw bs=4k seek=700 count=3 conv=notrunc \
   status=none
dd if=/dev/zero of=src.raw bs=64k seek=100 count=16 conv=notrunc status=none
dd if=/dev/urandom of=src.raw bs=1 seek=$((10 * M + 12000)) count=345 \
   conv=notrunc status=none
# One byte in an otherwise zero cluster must keep it.
printf '\001' | dd of=src.raw bs=1 seek=$((110 * 64 * K + 777)) \
   conv=notrunc status=none

stop () { kill "$(cat "$1")"; wait "$(cat "$1")" 2>/dev/null || :; }
pidfile () { echo "$tmpdir/nbdkit$_nbdkit_n.pid"; }
filesize () { stat -c %s "$1"; }

# encode NAME REF 'CONVERT -o OPTIONS' NBDKIT-ARGS...: serve, judge, and
# leave the copy in NAME.qcow2.  REF is a raw file with the source's
# bytes.  CONVERT options '-' mean: do not compare sizes.
encode ()
{
  local name="$1" ref="$2" conv="$3" sock uri pid
  shift 3
  start_nbdkit sock -r --filter=qcow2enc "$@"
  pid=$(pidfile)
  uri=$(nbd_uri "$sock")
  qemu-img compare -f raw -F qcow2 "$ref" "$uri" >/dev/null ||
    fail "$name: qemu reading the export over NBD differs from the source"
  nbdcopy "$uri" "$name.qcow2"
  nbdcopy "$uri" - | cat > "$name.pipe.qcow2"
  stop "$pid"
  cmp "$name.qcow2" "$name.pipe.qcow2" ||
    fail "$name: the copy to a file and the copy to a pipe differ"
  rm -f "$name.pipe.qcow2"
  qemu-img check "$name.qcow2" >"$name.check" 2>&1 || {
    cat "$name.check" >&2
    fail "$name: qemu-img check found errors or leaks"
  }
  qemu-img compare -f raw -F qcow2 "$ref" "$name.qcow2" >/dev/null ||
    fail "$name: the copy differs from the source"
  if [ "$conv" != "-" ]; then
    # shellcheck disable=SC2086
    qemu-img convert -f raw -O qcow2 $conv "$ref" "$name.conv.qcow2"
    local ours theirs
    ours=$(filesize "$name.qcow2")
    # qemu's file may end inside its last cluster (a sparse tail).
    theirs=$(qemu-img check --output=json "$name.conv.qcow2" |
             sed -n 's/.*"image-end-offset": \([0-9]*\).*/\1/p')
    [ "$ours" -le $((theirs + theirs / 50)) ] ||
      fail "$name: $ours bytes, qemu-img convert $theirs"
    rm -f "$name.conv.qcow2"
  fi
}

# info_has NAME JSON-FRAGMENT: qemu-img info of the copy says so.
info_has ()
{
  qemu-img info --output=json "$1.qcow2" | tr -d ' \n' | grep -q "$2" ||
    fail "$1: qemu-img info lacks $2"
}

# (1) The file source, default options; a restarted server gives the
# same bytes.
encode plain src.raw "" file src.raw
start_nbdkit s2 -r --filter=qcow2enc file src.raw
nbdcopy "$(nbd_uri "$s2")" again.qcow2
stop "$(pidfile)"
cmp plain.qcow2 again.qcow2 || fail "a restarted server gave other bytes"
rm -f again.qcow2
info_has plain '"virtual-size":10498560'     # rounded up to 512
info_has plain '"cluster-size":65536'

# (2) Options, each as qemu-img create's (and convert's) -o.
encode c512 src.raw "-o cluster_size=512" \
  file src.raw qcow2enc-cluster-size=512
info_has c512 '"cluster-size":512'
encode c2m src.raw "-o cluster_size=2M" \
  file src.raw qcow2enc-cluster-size=2M
encode v2 src.raw "-o compat=0.10" file src.raw qcow2enc-compat=0.10
info_has v2 '"compat":"0.10"'
encode rc1 src.raw "-o refcount_bits=1" \
  file src.raw qcow2enc-refcount-bits=1 qcow2enc-cluster-size=4k
info_has rc1 '"refcount-bits":1'
encode rc64 src.raw "-o refcount_bits=64" \
  file src.raw qcow2enc-refcount-bits=64
info_has rc64 '"refcount-bits":64'
encode extl2 src.raw "-o extended_l2=on" \
  file src.raw qcow2enc-extended-l2=on qcow2enc-cluster-size=32k
info_has extl2 '"extended-l2":true'
encode lazy src.raw "-o lazy_refcounts=on" \
  file src.raw qcow2enc-lazy-refcounts=on
info_has lazy '"lazy-refcounts":true'
encode zstd src.raw "-o compression_type=zstd" \
  file src.raw qcow2enc-compression-type=zstd
info_has zstd '"compression-type":"zstd"'

# Compressed: sizes against qemu-img convert -c.  Narrow refcounts
# bound how many streams share a host cluster.
encode zlib src.raw "-c" file src.raw qcow2enc-compress=zlib
encode zstdc src.raw "-c -o compression_type=zstd" \
  file src.raw qcow2enc-compress=zstd
info_has zstdc '"compression-type":"zstd"'
encode zfast src.raw - file src.raw qcow2enc-compress=zlib \
  qcow2enc-compress-level=fast
encode zrc2 src.raw - file src.raw qcow2enc-compress=zstd \
  qcow2enc-refcount-bits=2 qcow2enc-cluster-size=4k
encode zrc1 src.raw - file src.raw qcow2enc-compress=zlib \
  qcow2enc-refcount-bits=1 qcow2enc-zero-detect=off
encode zext src.raw "-c -o extended_l2=on,cluster_size=128k" \
  file src.raw qcow2enc-compress=zlib qcow2enc-extended-l2=on \
  qcow2enc-cluster-size=128k
encode z512 src.raw "-c -o cluster_size=512" \
  file src.raw qcow2enc-compress=zstd qcow2enc-cluster-size=512
# 2 MiB clusters: streams longer than 64 KiB (their lengths are kept in
# 24 bits, 16 up to 64 KiB clusters).
encode z2m src.raw "-c -o cluster_size=2M" \
  file src.raw qcow2enc-compress=zlib qcow2enc-cluster-size=2M

# zero-detect=off: the allocated zeros are stored, the holes are not.
encode nodetect src.raw - file src.raw qcow2enc-zero-detect=off
[ "$(filesize nodetect.qcow2)" -gt "$(filesize plain.qcow2)" ] ||
  fail "zero-detect=off stored no more than zero-detect=on"
[ "$(filesize nodetect.qcow2)" -lt "$(filesize src.raw)" ] ||
  fail "zero-detect=off stored the holes"

# (3) Other plugins.
encode mem0 /dev/null "" memory 0                      # a 0-byte disk
info_has mem0 '"virtual-size":0'
truncate -s 3000001 empty.raw
encode mem empty.raw "" memory 3000001
[ "$(filesize mem.qcow2)" -le $((4 * 64 * K)) ] ||
  fail "an empty memory disk stored data"

start_nbdkit sr -r sparse-random 64M seed=4 percent=5
nbdcopy "$(nbd_uri "$sr")" sr.raw
stop "$(pidfile)"
encode sparse sr.raw "" sparse-random 64M seed=4 percent=5

qemu-img create -q -f qcow2 -o cluster_size=64k img.qcow2 12M
qemu-io -f qcow2 -c 'write -P 7 0 1M' -c 'write -c -P 9 2M 256k' \
  -c 'write -z 4M 1M' -c 'write -P 5 8M 100k' -c 'write -z 8M 64k' \
  img.qcow2 >/dev/null
qemu-img convert -f qcow2 -O raw img.qcow2 img.raw
encode ourqcow2 img.raw "" qcow2 img.qcow2
encode reencode img.raw "-o cluster_size=4k" \
  qcow2 img.qcow2 qcow2enc-cluster-size=4k

# (4) A backing file.  base.raw has data everywhere.
head -c $((10 * M + 12345)) /dev/urandom > base.raw
# holes=zero (default): the image reads exactly as the source.
encode withbase src.raw - file src.raw \
  qcow2enc-backing-file="$tmpdir/base.raw" qcow2enc-backing-format=raw
info_has withbase '"backing-filename":"'"$tmpdir/base.raw"'"'
info_has withbase '"backing-filename-format":"raw"'
encode withbasex src.raw - file src.raw qcow2enc-extended-l2=on \
  qcow2enc-backing-file="$tmpdir/base.raw" qcow2enc-backing-format=raw
encode withbase2 src.raw - file src.raw qcow2enc-compat=0.10 \
  qcow2enc-backing-file="$tmpdir/base.raw" qcow2enc-backing-format=raw
# holes=backing: a delta.  delta.qcow2 over base.raw, served by our
# plugin without its backing: its holes are "unchanged".  Zeros written
# as data are found by zero-detect and must read as zeros, not as the
# base.  (A zero-write cannot be in the delta: NBD reports qemu's zero
# clusters as holes, like unallocated ones; see LIMITS in the man page.)
qemu-img create -q -f qcow2 -b "$tmpdir/base.raw" -F raw delta.qcow2 \
  $((10 * M + 12800))
qemu-io -f qcow2 -c 'write -P 3 1M 192k' -c 'write -P 0 5M 128k' \
  delta.qcow2 >/dev/null
qemu-img convert -f qcow2 -O raw delta.qcow2 delta.raw
encode deltaenc delta.raw - qcow2 delta.qcow2 backing=none \
  qcow2enc-backing-file="$tmpdir/base.raw" qcow2enc-backing-format=raw \
  qcow2enc-holes=backing
[ "$(filesize deltaenc.qcow2)" -lt $((M)) ] ||
  fail "the delta stored more than the changes"
encode deltaencx delta.raw - qcow2 delta.qcow2 backing=none \
  qcow2enc-backing-file="$tmpdir/base.raw" qcow2enc-backing-format=raw \
  qcow2enc-holes=backing qcow2enc-extended-l2=on qcow2enc-compress=zlib

# (5) An external data file: the header names the source itself.
encode datafile src.raw - file src.raw \
  qcow2enc-data-file="$tmpdir/src.raw"
info_has datafile '"data-file":"'"$tmpdir/src.raw"'"'
[ "$(filesize datafile.qcow2)" -le $((8 * 64 * K)) ] ||
  fail "the data-file image stored data"

# (6) LUKS, the passphrase from a file: qemu reads the export over NBD
# and the copies with it (not without); the two copies of one run are
# identical.
printf 'le secret' > pass
luks_opts ()    # FILE-OPTIONS: qemu's image options with the secret
{
  echo "driver=qcow2,encrypt.key-secret=sec0,$1"
}
for cs in 64k 4k; do
  start_nbdkit ls -r --filter=qcow2enc file src.raw qcow2enc-encrypt=luks \
    qcow2enc-passphrase=+pass qcow2enc-encrypt-iter-time=10 \
    qcow2enc-cluster-size=$cs
  qemu-img compare --object secret,id=sec0,file=pass --image-opts \
    driver=raw,file.filename=src.raw \
    "$(luks_opts "file.driver=nbd,file.server.type=unix,file.server.path=$ls")" \
    >/dev/null || fail "luks $cs: qemu reading the export differs"
  nbdcopy "$(nbd_uri "$ls")" luks.qcow2
  nbdcopy "$(nbd_uri "$ls")" - | cat > luks2.qcow2
  stop "$(pidfile)"
  cmp luks.qcow2 luks2.qcow2 || fail "luks $cs: file and pipe copies differ"
  qemu-img check --object secret,id=sec0,file=pass --image-opts \
    "$(luks_opts file.filename=luks.qcow2)" >/dev/null ||
    fail "luks $cs: qemu-img check"
  qemu-img compare --object secret,id=sec0,file=pass --image-opts \
    driver=raw,file.filename=src.raw "$(luks_opts file.filename=luks.qcow2)" \
    >/dev/null || fail "luks $cs: the copy differs from the source"
  qemu-img info luks.qcow2 | grep -q "encrypted: yes" ||
    fail "luks $cs: not encrypted"
  # The data is not there in clear.
  ! grep -q -F "$(head -c 32 src.raw | od -An -tx1 | tr -d ' \n')" \
    <(od -An -tx1 luks.qcow2 | tr -d ' \n') ||
    fail "luks $cs: clear data in the image"
  printf 'wrong' > wrong
  if qemu-img compare --object secret,id=sec0,file=wrong --image-opts \
       driver=raw,file.filename=src.raw \
       "$(luks_opts file.filename=luks.qcow2)" >/dev/null 2>&1; then
    fail "luks $cs: opened with a wrong passphrase"
  fi
done

# (7) Refused: the error names what to change.
refused ()
{
  local want="$1"; shift
  if "$NBDKIT" -r --filter=qcow2enc "$@" --run true >refused.log 2>&1; then
    fail "accepted: $*"
  fi
  grep -q -- "$want" refused.log || {
    cat refused.log >&2
    fail "the error for $* does not mention $want"
  }
}
refused "qcow2enc-cluster-size" memory 1M qcow2enc-cluster-size=3000
refused "compat=1.1" memory 1M qcow2enc-compat=0.10 qcow2enc-extended-l2=on
refused "qcow2enc-backing-file" memory 1M qcow2enc-holes=backing
refused "qcow2enc-backing-file" memory 1M qcow2enc-backing-format=raw
refused "qcow2enc-compression-type=zlib" memory 1M qcow2enc-compress=zlib \
  qcow2enc-compression-type=zstd
refused "needs qcow2enc-compress" memory 1M qcow2enc-compress-level=3
refused "external data file" memory 1M qcow2enc-compress=zlib \
  qcow2enc-data-file=/x
refused "unknown parameter" memory 1M qcow2enc-snapshot=x
refused "needs qcow2enc-passphrase" memory 1M qcow2enc-encrypt=luks
refused "not encrypted" memory 1M qcow2enc-passphrase=x
refused "cannot be used with encryption" memory 1M qcow2enc-encrypt=luks \
  qcow2enc-passphrase=x qcow2enc-compress=zlib
# Too large for 512-byte clusters: logged before serving, and every
# connection fails with the reason; with --run, the captive client gets
# the error (no hang).
timeout 120 "$NBDKIT" -r -U - --filter=qcow2enc memory 1P \
  qcow2enc-cluster-size=512 --run 'nbdinfo --size "$uri"' \
  >refused.log 2>&1 && fail "--run: a 1 PiB source was encoded"
[ $? -ne 124 ] || fail "--run: hung on a source that cannot be encoded"
grep -q "use a larger qcow2enc-cluster-size" refused.log ||
  fail "--run: the error does not name the option"
start_nbdkit big -r -f --filter=qcow2enc memory 1P \
  qcow2enc-cluster-size=512
if qemu-img info "$(nbd_uri "$big")" >/dev/null 2>&1; then
  fail "a 1 PiB source was encoded with 512-byte clusters"
fi
stop "$(pidfile)"
grep -q "use a larger qcow2enc-cluster-size" "$tmpdir/nbdkit$_nbdkit_n.log" ||
  { cat "$tmpdir/nbdkit$_nbdkit_n.log"; fail "the error for a too large source does not name the option"; }

# Writes are refused, even without -r.
start_nbdkit rw --filter=qcow2enc memory 1M
if nbdsh -u "$(nbd_uri "$rw")" -c 'h.pwrite(b"x", 0)' 2>/dev/null; then
  fail "a write was accepted"
fi
stop "$(pidfile)"

echo "PASS"
