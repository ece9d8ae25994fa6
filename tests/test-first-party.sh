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

#@NEXT@

if [ $failures -gt 0 ]; then
  echo "$0: $failures failure(s)" >&2
  exit 1
fi
