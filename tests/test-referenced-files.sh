#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# referenced-files=any|same-dir|none: which files named inside an image
# (backing files down the chain, external data files) the plugin and the
# qcow2 filter open.  Images come from qemu-img; what is served is
# compared with what qemu-img reads from the same image.
#
#   dir/secret.raw              a file outside the image directory
#   dir/img/base.raw            a backing file inside it
#   dir/img/top.qcow2           -> base.raw (relative)
#   dir/img/chain.qcow2         -> sub/mid.qcow2 -> ../base.raw
#   dir/img/escape.qcow2        -> ../secret.raw
#   dir/img/abs.qcow2           -> /abs/path/dir/secret.raw
#   dir/img/link.qcow2          -> link.raw, a symlink to ../secret.raw
#   dir/img/deep.qcow2          -> sub/evil.qcow2 -> ../../secret.raw
#   dir/img/df-in.qcow2         data file df-in.raw (same directory)
#   dir/img/df-out.qcow2        data file ../df-out.raw
. "${srcdir:-.}/functions.sh"
requires qemu-img --version
requires nbdcopy --version

d=$tmpdir/dir
mkdir -p "$d/img/sub"
cd "$d/img"
head -c 1M /dev/urandom > ../secret.raw
head -c 1M /dev/urandom > base.raw
q () { qemu-img create -q -f qcow2 "$@"; }
q -b base.raw -F raw top.qcow2 1M
q -b ../base.raw -F raw sub/mid.qcow2 1M
q -b sub/mid.qcow2 -F qcow2 chain.qcow2 1M
q -b ../secret.raw -F raw escape.qcow2 1M
q -b "$d/secret.raw" -F raw abs.qcow2 1M
ln -s ../secret.raw link.raw
q -b link.raw -F raw link.qcow2 1M
q -b ../../secret.raw -F raw sub/evil.qcow2 1M
q -b sub/evil.qcow2 -F qcow2 deep.qcow2 1M
q -o data_file=df-in.raw,data_file_raw=on df-in.qcow2 1M
q -o data_file=../df-out.raw,data_file_raw=on df-out.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' df-in.qcow2 >/dev/null
qemu-io -f qcow2 -c 'write -P 0xa5 0 64k' df-out.qcow2 >/dev/null
# One write in each qcow2 image, so that it is not only its backing.
for i in top chain escape abs link deep; do
  qemu-io -f qcow2 -c 'write -P 0x11 4096 4096' $i.qcow2 >/dev/null
done

# served IMG ARGS...: nbdkit serves the image (plugin, with ARGS) and
# reads it as qemu-img does.
served ()
{
  local img="$1"; shift
  rm -f out.raw want.raw
  qemu-img convert -f qcow2 -O raw "$img" want.raw
  "$NBDKIT" -U - qcow2 "$img" "$@" --run 'nbdcopy "$uri" out.raw' \
    2>served.err || { cat served.err >&2; fail "nbdkit qcow2 $img $* failed"; }
  cmp -s out.raw want.raw || fail "nbdkit qcow2 $img $*: not what qemu reads"
  echo "ok: served: $img $*"
}

# refused REGEX IMG ARGS...: nbdkit refuses to start, saying REGEX.
refused ()
{
  local re="$1" img="$2"; shift 2
  if "$NBDKIT" -U - qcow2 "$img" "$@" --run 'true' 2>refused.err; then
    fail "nbdkit qcow2 $img $* was accepted"
  fi
  grep -Eq -- "$re" refused.err ||
    { cat refused.err >&2; fail "nbdkit qcow2 $img $*: no /$re/ in the error"; }
  echo "ok: refused: $img $*: $(grep -E -- "$re" refused.err | head -1)"
}

# any (the default): every plain file name is followed, as qemu does.
for i in top chain escape abs link deep df-in df-out; do
  served $i.qcow2
done
served escape.qcow2 referenced-files=any

# same-dir: inside the image's directory only.
for i in top chain df-in; do
  served $i.qcow2 referenced-files=same-dir
done
served "$d/img/chain.qcow2" referenced-files=same-dir
refused "outside the image's directory" escape.qcow2 referenced-files=same-dir
refused "secret.raw.*outside" abs.qcow2 referenced-files=same-dir
refused "link.raw' is $d/secret.raw, outside" link.qcow2 \
  referenced-files=same-dir
refused "outside the image's directory $d/img " deep.qcow2 \
  referenced-files=same-dir
refused "external data file.*outside" df-out.qcow2 referenced-files=same-dir
# Started elsewhere, the image's directory is still the one that counts.
(cd / && refused "outside" "$d/img/escape.qcow2" referenced-files=same-dir)
# A backing file given by the user is not restricted.
served escape.qcow2 referenced-files=same-dir backing="$d/secret.raw" \
  backing-format=raw

# none: no file at all.
refused "referenced-files=none" top.qcow2 referenced-files=none
refused "referenced-files=none" df-in.qcow2 referenced-files=none
"$NBDKIT" -U - qcow2 top.qcow2 referenced-files=none backing=none \
  --run 'nbdcopy "$uri" out.raw' || fail "backing=none was refused"
qemu-img convert -f qcow2 -O raw top.qcow2 want.raw
cmp -s out.raw want.raw && fail "backing=none read the backing file"
echo "ok: referenced-files=none backing=none serves the image alone"
refused "expected any, same-dir or none" top.qcow2 referenced-files=some

# The qcow2 filter: the directory nbdkit was started in is the image's.
filter_read ()
{
  "$NBDKIT" -U - --filter=qcow2 file "$@" --run 'nbdcopy "$uri" out.raw' \
    2>filter.err
}
qemu-img convert -f qcow2 -O raw top.qcow2 want.raw
filter_read top.qcow2 qcow2-referenced-files=same-dir ||
  { cat filter.err >&2; fail "filter: top.qcow2 same-dir failed"; }
cmp -s out.raw want.raw || fail "filter: top.qcow2 is not what qemu reads"
echo "ok: filter: top.qcow2 qcow2-referenced-files=same-dir"
for i in escape abs deep link; do
  filter_read $i.qcow2 qcow2-referenced-files=same-dir &&
    fail "filter: $i.qcow2 with qcow2-referenced-files=same-dir was served"
  grep -q "outside" filter.err ||
    { cat filter.err >&2; fail "filter: $i.qcow2: no 'outside' in the log"; }
  echo "ok: filter refused: $i.qcow2: $(grep -o "image's backing.*" filter.err | head -1)"
done
filter_read top.qcow2 qcow2-referenced-files=none &&
  fail "filter: top.qcow2 with qcow2-referenced-files=none was served"
grep -q "referenced-files=none" filter.err ||
  { cat filter.err >&2; fail "filter: no referenced-files=none in the log"; }
echo "ok: filter refused: top.qcow2 qcow2-referenced-files=none"
filter_read escape.qcow2 ||
  { cat filter.err >&2; fail "filter: escape.qcow2 (any) failed"; }
echo "ok: filter: escape.qcow2 followed by default"
