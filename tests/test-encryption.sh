#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Encrypted images (LUKS and legacy AES), always checked against QEMU
# opening the same image with the same secret:
#
# (a) Reading: images made by qemu-img (LUKS: aes-128/192/256 in
#     xts-plain64, cbc-plain64 and cbc-essiv:sha256, PBKDF2 with sha1,
#     sha256, sha384, sha512; 64k clusters and 16k with subclusters;
#     legacy AES) and filled by qemu-io read through the plugin exactly
#     as qemu-img convert reads them.  A LUKS image with a second key
#     slot (qemu-img amend) opens with either passphrase; once the first
#     slot is erased, only with the second.
# (b) Writing: fixed and seeded random writes, zeroes and trims
#     (tests/enc-ops.py) through the plugin into such images, including
#     encrypted overlays over encrypted backing files of another
#     passphrase (LUKS, legacy AES; a chain of three LUKS images): copy-
#     on-write from the backing to new clusters; an image with an
#     internal snapshot (copy-on-write inside the image, to new host
#     offsets, which LUKS uses as the IV; the snapshot must not change);
#     a version 2 image (no zero clusters) over a raw backing file; and
#     nbdcopy writing from 4 connections at once.  Afterwards qemu-img
#     compare with the secret finds the image equal to the raw model of
#     the writes, and qemu-img check finds it clean.
# (c) Creation: create=true encrypt=luks encrypt-iter-time=10 makes an
#     image that QEMU opens with the same passphrase, with the same
#     encryption parameters as qemu-img create's LUKS defaults, holding
#     what was written; also create=force with 4k clusters.
# (d) Passphrases: a wrong or missing passphrase (of the image or of its
#     backing file) is refused at startup with a message naming the
#     problem; passphrase=+FILE and passphrase=-FD work.  A wrong legacy
#     AES passphrase cannot be detected: nbdkit reads the same garbage
#     as qemu.
# (e) The qcow2 filter over the file plugin (an image of qemu-img's,
#     and one the filter formats with qcow2-encrypt=luks), and the
#     overlay filter creating an encrypted overlay, then reopening it.
#     The filters open the image when a client connects: a wrong
#     passphrase fails the client, with the reason in the log.
#
# qemu-img create of a LUKS image takes seconds of CPU (its PBKDF2
# benchmarks), more on a loaded machine: the test makes as few as it can.
# Knobs: QC_ENC_OPS=N random operations per write run (default 60).

. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdcopy --version
requires nbdinfo --version
requires head --version
requires cmp --version
requires truncate --version
requires "$PYTHON" -c 'import nbd, json'
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"
"$NBDKIT" qcow2 --dump-plugin >/dev/null ||
  fail "the qcow2 plugin does not load"

encops=$(cd "${srcdir:-$(dirname "$0")}" && pwd)/enc-ops.py
[ -r "$encops" ] || fail "$encops not found"
nops=${QC_ENC_OPS:-60}

cd "$tmpdir"
M=$((1024 * 1024))
size=$((8 * M))

# Passphrases (s0, s1: of images; sb: of backing files) and the matching
# QEMU secret objects.
pw0='first pass phrase'
pw1='second-passphrase'
pwb='backing.secret'
printf '%s' "$pw0" > pw0.txt
printf '%s' "$pw1" > pw1.txt
printf '%s' "$pwb" > pwb.txt
secrets=(--object "secret,id=s0,file=pw0.txt"
         --object "secret,id=s1,file=pw1.txt"
         --object "secret,id=sb,file=pwb.txt"
         --object "secret,id=sw,data=wrong")

# opts IMG [SECRET]: QEMU --image-opts for an encrypted qcow2 image.
opts () { echo "driver=qcow2,file.filename=$1,encrypt.key-secret=${2:-s0}"; }

# qemu_create IMG SIZE ENCRYPT-OPTIONS [qemu-img create options...]
qemu_create ()
{
  local img="$1" sz="$2" eo="$3"; shift 3
  retry_pbkdf qemu-img create -q -f qcow2 "${secrets[@]}" \
    -o "$eo" "$@" "$img" "$sz" || fail "qemu-img create $img ($eo) failed"
}
luks='encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10'

# qemu-img create of a LUKS image takes seconds whatever the iter-time
# (its PBKDF2 benchmarks run for a while): empty images with qemu-img's
# default cipher are made once and copied.  rebase_u IMG SECRET BACKING
# then gives a copy a backing file.
rebase_u ()
{
  qemu-img rebase -u "${secrets[@]}" --image-opts "$(opts "$1" "$2")" \
    -b "$3" -F qcow2 || fail "qemu-img rebase -u $1 failed"
}

# qemu_fill IMG [OPTS]: data here and there, written by qemu-io: parts of
# clusters, whole clusters, a zeroed range, some of it unaligned.
qemu_fill ()
{
  qemu-io "${secrets[@]}" --image-opts "${2:-$(opts "$1")}" \
    -c 'write -q -P 0x11 0 100k' \
    -c 'write -q -P 0x22 300k 5000' \
    -c 'write -q -P 0x33 1M 1M' \
    -c 'write -q -z 1536k 64k' \
    -c 'write -q -P 0x44 3M 512' \
    -c 'write -q -P 0x55 5000k 3000k' >/dev/null ||
    fail "qemu-io could not write to $1"
}

# qemu_read IMG OUT [OPTS]: what QEMU reads, as a raw file.
qemu_read ()
{
  qemu-img convert "${secrets[@]}" --image-opts "${3:-$(opts "$1")}" \
    -O raw "$2" || fail "qemu-img convert $1 failed"
}

# plugin_read OUT NBDKIT-ARGS...: what nbdkit serves (read-only).
plugin_read ()
{
  local out="$1"; shift
  "$NBDKIT" -r -U - "$@" --run "nbdcopy \"\$uri\" '$out'" ||
    fail "nbdkit $* could not be read"
}

# expect_same_read NAME IMG QEMU-OPTS NBDKIT-ARGS...
expect_same_read ()
{
  local name="$1" img="$2" qo="$3"; shift 3
  qemu_read "$img" "$name.qemu.raw" "$qo"
  plugin_read "$name.nbdkit.raw" "$@"
  cmp "$name.qemu.raw" "$name.nbdkit.raw" ||
    fail "$name: nbdkit $* reads differently from qemu"
  echo "ok: $name: read identically to qemu"
}

# write_and_check NAME IMG QEMU-OPTS SEED NBDKIT-ARGS...: enc-ops.py
# through nbdkit, then QEMU must read the model and find the image clean.
write_and_check ()
{
  local name="$1" img="$2" qo="$3" seed="$4"; shift 4
  qemu_read "$img" "$name.model.raw" "$qo"
  "$NBDKIT" -U - "$@" \
    --run "$PYTHON '$encops' $seed $nops \"\$uri\" '$name.model.raw'" ||
    fail "$name: writing through nbdkit $* failed"
  qemu-img compare -q "${secrets[@]}" --image-opts "$qo" \
    "driver=raw,file.filename=$name.model.raw" ||
    fail "$name: qemu does not read what was written through nbdkit"
  qemu-img check -q "${secrets[@]}" --image-opts "$qo" ||
    fail "$name: qemu-img check finds the image damaged after the writes"
  echo "ok: $name: qemu reads what was written; the image is clean"
}

# expect_refused REGEX NBDKIT-ARGS...: nbdkit must refuse to start (not
# fail later on a client's request), with a message matching REGEX.
expect_refused ()
{
  local re="$1"; shift
  rm -f started
  if "$NBDKIT" -U - "$@" --run 'touch started' </dev/null \
       >/dev/null 2>refused.err; then
    cat refused.err >&2; fail "nbdkit $* was accepted"
  fi
  [ ! -e started ] || fail "nbdkit $* started serving"
  grep -Eiq -- "$re" refused.err ||
    { cat refused.err >&2; fail "nbdkit $*: the error does not match /$re/"; }
  echo "ok: refused: $(head -1 refused.err)"
}

# expect_client_refused REGEX NBDKIT-ARGS...: for the filters, which open
# the image when the first client connects (qcow2) or log the failure
# and refuse each client (overlay): a client must fail to read, and the
# log must match REGEX.
expect_client_refused ()
{
  local re="$1"; shift
  if "$NBDKIT" -U - "$@" --run 'nbdcopy "$uri" refused.raw' </dev/null \
       >/dev/null 2>refused.err; then
    cat refused.err >&2; fail "nbdkit $*: a client could read"
  fi
  grep -Eiq -- "$re" refused.err ||
    { cat refused.err >&2; fail "nbdkit $*: the error does not match /$re/"; }
  echo "ok: client refused: $(grep -Ei -m1 -- "$re" refused.err)"
}

# ---------------------------------------------------------------------
echo "== (a) reading LUKS images of several ciphers, and legacy AES"
# qemu-img's defaults: aes-256, xts-plain64, sha256 (s0 and sb).
qemu_create empty.qcow2 $size "$luks"
qemu_create emptyb.qcow2 $size \
  encrypt.format=luks,encrypt.key-secret=sb,encrypt.iter-time=10
cp empty.qcow2 xts256.qcow2
qemu_fill xts256.qcow2
expect_same_read xts256 xts256.qcow2 "$(opts xts256.qcow2)" \
  qcow2 xts256.qcow2 passphrase="$pw0"
combos=(
  "xts128-sha1 cipher-alg=aes-128,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha1"
  "cbc256-sha512 cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain64,hash-alg=sha512"
  "essiv128 cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha256"
)
for c in "${combos[@]}"; do
  name=${c%% *} eo=${c#* }
  qemu_create "$name.qcow2" $size "$luks,encrypt.${eo//,/,encrypt.}"
  qemu_fill "$name.qcow2"
  expect_same_read "$name" "$name.qcow2" "$(opts "$name.qcow2")" \
    qcow2 "$name.qcow2" passphrase="$pw0"
done
# Small clusters with subclusters (512 bytes: one encryption sector
# each), and aes-192 with sha384.
qemu_create ext.qcow2 $size \
  "$luks,encrypt.cipher-alg=aes-192,encrypt.hash-alg=sha384" \
  -o cluster_size=16k,extended_l2=on
qemu_fill ext.qcow2
expect_same_read ext ext.qcow2 "$(opts ext.qcow2)" \
  qcow2 ext.qcow2 passphrase="$pw0"

qemu-img create -q -f qcow2 "${secrets[@]}" \
  -o encrypt.format=aes,encrypt.key-secret=s0 aes.qcow2 $size
qemu_fill aes.qcow2
expect_same_read aes aes.qcow2 "$(opts aes.qcow2)" \
  qcow2 aes.qcow2 passphrase="$pw0"

echo "== (a) several key slots"
cp xts256.qcow2 slots.qcow2
retry_pbkdf qemu-img amend "${secrets[@]}" --image-opts "$(opts slots.qcow2)" \
  -o encrypt.state=active,encrypt.new-secret=s1,encrypt.keyslot=3,encrypt.iter-time=10 ||
  fail "qemu-img amend could not add a key slot"
expect_same_read slots-0 slots.qcow2 "$(opts slots.qcow2 s0)" \
  qcow2 slots.qcow2 passphrase="$pw0"
expect_same_read slots-1 slots.qcow2 "$(opts slots.qcow2 s1)" \
  qcow2 slots.qcow2 passphrase="$pw1"
cmp slots-0.qemu.raw slots-1.qemu.raw || fail "the two key slots differ"
# Erase the first slot: its passphrase no longer opens the image.
qemu-img amend "${secrets[@]}" --image-opts "$(opts slots.qcow2 s1)" \
  -o encrypt.state=inactive,encrypt.old-secret=s0 ||
  fail "qemu-img amend could not erase a key slot"
qemu-img convert "${secrets[@]}" --image-opts "$(opts slots.qcow2 s0)" \
  -O raw slots-none.raw 2>/dev/null &&
  fail "qemu still opens the image with the erased passphrase"
expect_refused 'passphrase' qcow2 slots.qcow2 passphrase="$pw0"
expect_same_read slots-1b slots.qcow2 "$(opts slots.qcow2 s1)" \
  qcow2 slots.qcow2 passphrase="$pw1"
write_and_check slots slots.qcow2 "$(opts slots.qcow2 s1)" 11 \
  qcow2 slots.qcow2 passphrase="$pw1"

# ---------------------------------------------------------------------
echo "== (b) writing"
seed=100
for name in xts256 essiv128 cbc256-sha512 ext aes; do
  seed=$((seed + 1))
  write_and_check "$name" "$name.qcow2" "$(opts "$name.qcow2")" $seed \
    qcow2 "$name.qcow2" passphrase="$pw0"
done

# An encrypted overlay over an encrypted backing file of another
# passphrase: partial writes copy clusters from the backing (decrypted
# with its key) into new clusters of the overlay (encrypted with the
# overlay's key at their new offsets).
cp emptyb.qcow2 base.qcow2
qemu_fill base.qcow2 "$(opts base.qcow2 sb)"
cp empty.qcow2 top.qcow2
rebase_u top.qcow2 s0 base.qcow2
qemu-io "${secrets[@]}" \
  --image-opts "$(opts top.qcow2),backing.encrypt.key-secret=sb" \
  -c 'write -q -P 0x99 64k 4k' -c 'write -q -P 0x98 1100k 200k' >/dev/null ||
  fail "qemu-io could not write to top.qcow2"
topopts="$(opts top.qcow2),backing.encrypt.key-secret=sb"
cp base.qcow2 base.orig
expect_same_read top top.qcow2 "$topopts" \
  qcow2 top.qcow2 passphrase="$pw0" backing-passphrase="$pwb"
write_and_check top top.qcow2 "$topopts" 201 \
  qcow2 top.qcow2 passphrase="$pw0" backing-passphrase=+pwb.txt
cmp base.qcow2 base.orig || fail "writing to top.qcow2 changed its backing file"

# A chain of three encrypted images: backing-passphrase= opens every
# file below the top one.
cp emptyb.qcow2 mid.qcow2
rebase_u mid.qcow2 sb base.qcow2
qemu-io "${secrets[@]}" \
  --image-opts "$(opts mid.qcow2 sb),backing.encrypt.key-secret=sb" \
  -c 'write -q -P 0x97 2M 100k' >/dev/null || fail "qemu-io mid.qcow2"
cp empty.qcow2 chain.qcow2
rebase_u chain.qcow2 s0 mid.qcow2
chainopts="$(opts chain.qcow2),backing.encrypt.key-secret=sb"
chainopts+=",backing.backing.encrypt.key-secret=sb"
qemu-io "${secrets[@]}" --image-opts "$chainopts" \
  -c 'write -q -P 0x96 2100k 4k' >/dev/null || fail "qemu-io chain.qcow2"
expect_same_read chain chain.qcow2 "$chainopts" \
  qcow2 chain.qcow2 passphrase="$pw0" backing-passphrase="$pwb"
write_and_check chain chain.qcow2 "$chainopts" 204 \
  qcow2 chain.qcow2 passphrase="$pw0" backing-passphrase="$pwb"

# A version 2 image (qemu-img makes LUKS ones with compat=0.10) has no
# zero clusters: zeroes over the backing file are written as encrypted
# zeros.
head -c $size /dev/urandom > rnd.raw
qemu_create v2.qcow2 $size "$luks,compat=0.10" -b rnd.raw -F raw
qemu-io "${secrets[@]}" --image-opts "$(opts v2.qcow2)" \
  -c 'write -q -P 0x95 1M 1M' >/dev/null || fail "qemu-io v2.qcow2"
write_and_check v2 v2.qcow2 "$(opts v2.qcow2)" 205 \
  qcow2 v2.qcow2 passphrase="$pw0"

# Several connections writing at once (nbdcopy's parallel requests),
# into an overlay of the encrypted base.qcow2: 4k writes to two blocks
# of every three, so that most writes copy the rest of their cluster
# from the backing file while other writes to the same cluster are in
# flight.  par.src is sparse where nothing is written (nbdcopy
# --destination-is-zero skips those blocks); par.model is what the disk
# must then hold.
cp empty.qcow2 par.qcow2
rebase_u par.qcow2 s0 base.qcow2
qemu_read base.qcow2 par.model "$(opts base.qcow2 sb)"
"$PYTHON" - <<'PY' || fail "could not make par.src"
import os
size = os.path.getsize("par.model")
with open("par.src", "wb") as src, open("par.model", "r+b") as model:
    src.truncate(size)
    for i in range(size // 4096):
        if i % 3:
            b = os.urandom(4096)
            for f in (src, model):
                f.seek(i * 4096)
                f.write(b)
PY
"$NBDKIT" -U - qcow2 par.qcow2 passphrase="$pw0" backing-passphrase="$pwb" \
  --run 'nbdcopy --destination-is-zero --connections=4 --requests=16 \
           --request-size=4096 par.src "$uri"' ||
  fail "nbdcopy into par.qcow2 failed"
paropts="$(opts par.qcow2),backing.encrypt.key-secret=sb"
qemu-img compare -q "${secrets[@]}" --image-opts "$paropts" \
  driver=raw,file.filename=par.model ||
  fail "par: qemu does not read what nbdcopy wrote in parallel"
qemu-img check -q "${secrets[@]}" --image-opts "$paropts" ||
  fail "par: qemu-img check finds the image damaged"
echo "ok: par: parallel copy-on-write read back by qemu; the image is clean"

# An overlay of legacy AES over legacy AES (its IV is the guest offset).
cp aes.qcow2 aesbase.qcow2
qemu-img create -q -f qcow2 "${secrets[@]}" -b aesbase.qcow2 -F qcow2 \
  -o encrypt.format=aes,encrypt.key-secret=s1 aestop.qcow2 $size
aesopts="$(opts aestop.qcow2 s1),backing.encrypt.key-secret=s0"
write_and_check aestop aestop.qcow2 "$aesopts" 202 \
  qcow2 aestop.qcow2 passphrase="$pw1" backing-passphrase="$pw0"

# An internal snapshot shares every cluster: writes copy them to new
# host offsets inside the same image.  The snapshot keeps its data.
cp xts128-sha1.qcow2 snap.qcow2
qemu-img snapshot "${secrets[@]}" --image-opts "$(opts snap.qcow2)" \
  -c before || fail "qemu-img snapshot failed"
qemu_read snap.qcow2 snap-before.raw
write_and_check snap snap.qcow2 "$(opts snap.qcow2)" 203 \
  qcow2 snap.qcow2 passphrase="$pw0"
qemu-img convert "${secrets[@]}" --image-opts "$(opts snap.qcow2)" \
  -l snapshot.name=before -O raw snap-after.raw ||
  fail "qemu cannot read the snapshot any more"
cmp snap-before.raw snap-after.raw ||
  fail "writing the active image changed the snapshot"
plugin_read snap-export.raw qcow2 snap.qcow2 passphrase="$pw0" \
  snapshot=before
cmp snap-before.raw snap-export.raw ||
  fail "nbdkit reads the snapshot differently from qemu"
echo "ok: snap: the snapshot is unchanged, read identically by nbdkit"

# ---------------------------------------------------------------------
echo "== (c) creating encrypted images"
"$NBDKIT" -U - qcow2 new.qcow2 create=true size=$size encrypt=luks \
  encrypt-iter-time=10 passphrase="$pw0" \
  --run 'nbdinfo --size "$uri"' >/dev/null ||
  fail "nbdkit could not create an encrypted image"
# The encryption parameters are those of qemu-img's LUKS defaults.
# enc_params IMG [SECRET]: the encryption parameters qemu-img info shows,
# except those that differ from image to image.
enc_params ()
{
  qemu-img info --output=json "${secrets[@]}" \
    --image-opts "$(opts "$1" "${2:-s0}")" |
    "$PYTHON" -c '
import json, sys
e = json.load(sys.stdin)["format-specific"]["data"]["encrypt"]
slots = [s for s in e.pop("slots") if s["active"]]
for k in ("payload-offset", "master-key-iters", "uuid"):
    e.pop(k)
print(json.dumps(e, sort_keys=True), "active slots:", len(slots))'
}
p_new=$(enc_params new.qcow2) || fail "qemu-img info new.qcow2 failed"
p_qemu=$(enc_params empty.qcow2)
[ "$p_new" = "$p_qemu" ] ||
  fail "encryption of the created image: $p_new; qemu-img's: $p_qemu"
echo "ok: created: $p_new"
qemu-img check -q "${secrets[@]}" --image-opts "$(opts new.qcow2)" ||
  fail "qemu-img check: the new encrypted image is damaged"
write_and_check new new.qcow2 "$(opts new.qcow2)" 301 \
  qcow2 new.qcow2 passphrase="$pw0"

# create=force over an existing image, other cluster size, and then
# qemu writes to it and nbdkit reads it.
"$NBDKIT" -U - qcow2 new.qcow2 create=force size=$size cluster-size=4k \
  encrypt=luks encrypt-iter-time=10 passphrase=+pw1.txt \
  --run 'nbdinfo --size "$uri"' >/dev/null ||
  fail "nbdkit create=force with encryption failed"
qemu_fill new.qcow2 "$(opts new.qcow2 s1)"
expect_same_read new2 new.qcow2 "$(opts new.qcow2 s1)" \
  qcow2 new.qcow2 passphrase="$pw1"

# A version 2 (compat=0.10) encrypted image, as qemu-img makes too.
"$NBDKIT" -U - qcow2 new-v2.qcow2 create=true size=$size compat=0.10 \
  encrypt=luks encrypt-iter-time=10 passphrase="$pw0" \
  --run 'nbdinfo --size "$uri"' >/dev/null ||
  fail "nbdkit could not create an encrypted compat=0.10 image"
qemu-img info "${secrets[@]}" --image-opts "$(opts new-v2.qcow2)" |
  grep -q 'compat: 0.10' || fail "new-v2.qcow2 is not compat=0.10"
write_and_check new-v2 new-v2.qcow2 "$(opts new-v2.qcow2)" 302 \
  qcow2 new-v2.qcow2 passphrase="$pw0"

# ---------------------------------------------------------------------
echo "== (d) passphrases"
expect_refused 'passphrase' qcow2 xts256.qcow2 passphrase=wrong
expect_refused 'passphrase' qcow2 xts256.qcow2 passphrase=
expect_refused 'encrypt|passphrase' qcow2 aes.qcow2
# Legacy AES has nothing to check a key against: QEMU opens the image
# with any passphrase and reads garbage.  So must nbdkit, the same.
expect_same_read aes-wrong aes.qcow2 "$(opts aes.qcow2 sw)" \
  qcow2 aes.qcow2 passphrase=wrong
cmp -s aes-wrong.qemu.raw aes.qemu.raw &&
  fail "a wrong AES passphrase reads the right data"
expect_refused 'encrypt|passphrase' qcow2 xts256.qcow2
# Missing: the message names the option that gives it.
expect_refused 'backing-passphrase=' qcow2 top.qcow2 passphrase="$pw0"
expect_refused 'passphrase' qcow2 top.qcow2 passphrase="$pw0" \
  backing-passphrase="$pw0"
expect_refused 'passphrase' qcow2 xts256.qcow2 passphrase=+pw1.txt
expect_refused 'pw-missing|No such file|passphrase' \
  qcow2 xts256.qcow2 passphrase=+pw-missing.txt
expect_same_read file xts256.qcow2 "$(opts xts256.qcow2)" \
  qcow2 xts256.qcow2 passphrase=+pw0.txt
expect_same_read fd xts256.qcow2 "$(opts xts256.qcow2)" \
  qcow2 xts256.qcow2 passphrase=-7 7<pw0.txt
expect_same_read fd-aes aes.qcow2 "$(opts aes.qcow2)" \
  qcow2 aes.qcow2 passphrase=-7 7<pw0.txt

# ---------------------------------------------------------------------
echo "== (e) filters"
# (The container cannot grow: give it room for the writes.)
cp cbc256-sha512.qcow2 filt.qcow2
truncate -s +$((3 * size)) filt.qcow2
expect_same_read filter filt.qcow2 "$(opts filt.qcow2)" \
  --filter=qcow2 file filt.qcow2 qcow2-passphrase="$pw0"
write_and_check filter filt.qcow2 "$(opts filt.qcow2)" 401 \
  --filter=qcow2 file filt.qcow2 qcow2-passphrase=+pw0.txt
expect_client_refused 'passphrase' --filter=qcow2 file filt.qcow2 \
  qcow2-passphrase=wrong

# The qcow2 filter formatting an encrypted image in a container.
truncate -s $((4 * size)) cont.img
"$NBDKIT" -U - --filter=qcow2 file cont.img qcow2-create=true \
  qcow2-size=$size qcow2-encrypt=luks qcow2-encrypt-iter-time=10 \
  qcow2-passphrase="$pw1" --run 'nbdinfo --size "$uri"' >/dev/null ||
  fail "the qcow2 filter could not make an encrypted image"
p_cont=$(enc_params cont.img s1) || fail "qemu-img info cont.img failed"
[ "$p_cont" = "$p_qemu" ] ||
  fail "encryption of the filter's image: $p_cont; qemu-img's: $p_qemu"
write_and_check cont cont.img "$(opts cont.img s1)" 402 \
  --filter=qcow2 file cont.img qcow2-passphrase="$pw1"

# The overlay filter: an encrypted overlay over a raw disk.
qemu_read xts256.qcow2 obase.raw
"$NBDKIT" -U - --filter=overlay file obase.raw overlay=ov.qcow2 \
  overlay-encrypt=luks overlay-encrypt-iter-time=10 \
  overlay-passphrase="$pw1" --run 'nbdinfo --size "$uri"' >/dev/null ||
  fail "the overlay filter could not create an encrypted overlay"
ovopts="$(opts ov.qcow2 s1),backing.driver=raw,backing.file.filename=obase.raw"
cp obase.raw obase.orig
p_ov=$(enc_params ov.qcow2 s1) || fail "qemu-img info ov.qcow2 failed"
[ "$p_ov" = "$p_qemu" ] ||
  fail "encryption of the overlay: $p_ov; qemu-img's: $p_qemu"
write_and_check overlay ov.qcow2 "$ovopts" 501 \
  --filter=overlay file obase.raw overlay=ov.qcow2 overlay-passphrase="$pw1"
cmp obase.raw obase.orig || fail "the overlay filter changed its base"
# Reopened: the changes are there (the model of the last run).
plugin_read ov-again.raw --filter=overlay file obase.raw overlay=ov.qcow2 \
  overlay-passphrase=+pw1.txt
cmp overlay.model.raw ov-again.raw ||
  fail "the encrypted overlay reads differently after a restart"
expect_client_refused 'passphrase' --filter=overlay file obase.raw \
  overlay=ov.qcow2 overlay-passphrase="$pw0"
echo "ok: overlay: reopened with its passphrase, refused with another"

echo "PASS"
