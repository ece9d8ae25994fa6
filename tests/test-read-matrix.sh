#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Differential read test: for every image of the matrix (make-images.sh),
# the bytes served by the plugin must equal `qemu-img convert -O raw` of
# the same image.  Two readers: nbdcopy (which skips what extents call
# zero), and a Python client reading everything sequentially in odd-sized
# chunks, then 150 reads at random, mostly unaligned offsets/lengths.
#
# Set QC_TEST_IMAGES=DIR to reuse images made earlier by make-images.sh.

. "${srcdir:-.}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdcopy --version
requires nbdinfo --version
requires timeout --version
requires cmp --version
requires "$PYTHON" -c 'import nbd'
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"

own_images=
imgdir=${QC_TEST_IMAGES:-$tmpdir/images}
if [ -z "${QC_TEST_IMAGES:-}" ]; then
  "${srcdir:-.}/make-images.sh" "$imgdir" >/dev/null
  own_images=1
fi
[ -s "$imgdir/list.txt" ] || fail "no $imgdir/list.txt"
imgdir=$(cd "$imgdir" && pwd)
# Run everything from the image directory: qemu 7.2 opens a relative
# external data file name relative to its working directory (unlike
# backing file names, which are relative to the image), so this is the
# only place where qemu and a plugin following either rule agree.
# (sub/back-rel.qcow2 still checks image-relative backing resolution.)
cd "$imgdir"

# qemu_spec IMG PLUGIN-ARGS...: the qemu equivalent of serving IMG with
# those plugin arguments.  Sets qimg (file name or json: spec) and qfmt
# (the -f option, empty for json:).
#
# snapshot=NAME: qemu-img convert -l / qemu-nbd -l load a snapshot's L1
# table but keep the ACTIVE image's virtual size (a qemu quirk: a
# snapshot taken before a resize comes out truncated or zero-extended).
# So the oracle is a copy of the image (next to it, for relative backing
# names) with the snapshot applied by `qemu-img snapshot -a`, which does
# restore the snapshot's size.  The copy is $qcopy; call qemu_unspec.
qcopy=
qemu_spec ()
{
  local img=$1; shift
  local fmt=qcow2 backing='' snap='' a b bfmt=''
  for a in "$@"; do
    case $a in
      format=*) fmt=${a#format=} ;;
      backing=*) backing=${a#backing=} ;;
      backing-format=*) bfmt=${a#backing-format=} ;;
      snapshot=*) snap=${a#snapshot=} ;;
      cache-size=*|locking=*) ;;    # no effect on what is read
      *) fail "$img: no qemu equivalent known for plugin argument '$a'" ;;
    esac
  done
  if [ -n "$snap" ]; then
    qcopy=$(dirname "$img")/.qc-snap.$$.$(basename "$img")
    cp "$img" "$qcopy"
    qemu-img snapshot -a "$snap" "$qcopy" ||
      fail "qemu-img snapshot -a '$snap' failed on $img"
    img=$qcopy
  fi
  if [ -z "$backing" ]; then
    qimg=$img; qfmt=(-f "$fmt"); return
  fi
  if [ "$backing" = none ]; then
    b=null
  else
    [ -n "$bfmt" ] ||
      bfmt=$(qemu-img info --output=json "$backing" |
             "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["format"])')
    b="{\"driver\":\"$bfmt\",\"file\":{\"driver\":\"file\",\"filename\":\"$backing\"}}"
  fi
  qimg="json:{\"driver\":\"$fmt\",\"file\":{\"driver\":\"file\",\"filename\":\"$img\"},\"backing\":$b}"
  qfmt=()
}
qemu_unspec () { [ -z "$qcopy" ] || rm -f "$qcopy"; qcopy=; }
on_exit qemu_unspec

# Random reads through libnbd, compared with the raw file.
cat > "$tmpdir/preads.py" <<'EOF'
import os, random, sys
import nbd

uri, raw, name = sys.argv[1], sys.argv[2], sys.argv[3]
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
rsize = os.path.getsize(raw)
if size != rsize:
    sys.exit("%s: export size %d != qemu's raw size %d" % (name, size, rsize))
if size == 0:
    sys.exit(0)
rnd = random.Random(name)
f = open(raw, "rb")

def check(off, n):
    n = min(n, size - off)
    if n <= 0:
        return
    got = h.pread(n, off)
    f.seek(off)
    want = f.read(n)
    if got != want:
        i = next(i for i in range(n) if got[i] != want[i])
        sys.exit("%s: pread(off=%d, len=%d) differs from qemu at byte %d "
                 "(plugin 0x%02x, qemu 0x%02x)"
                 % (name, off, n, off + i, got[i], want[i]))

# everything, in chunks of an odd size (no extents involved)
off = 0
while off < size:
    check(off, 1000003)
    off += 1000003
check(0, 1)
check(size - 1, 1)
check(max(0, size - 4097), 4097)
for i in range(150):
    kind = rnd.randrange(4)
    if kind == 0:                       # anywhere
        off = rnd.randrange(size)
    elif kind == 1:                     # just around a 512-aligned spot
        off = max(0, min(size - 1, rnd.randrange(size) // 512 * 512
                                   + rnd.randrange(-3, 4)))
    else:                               # just around a 64k/2M boundary
        unit = rnd.choice([16384, 65536, 2 * 1024 * 1024])
        off = max(0, min(size - 1, rnd.randrange(size) // unit * unit
                                   + rnd.randrange(-700, 700)))
    n = rnd.choice([1, 3, 511, 512, 513, 4095, 65537,
                    rnd.randrange(1, 300000)])
    check(off, n)
h.shutdown()
EOF

# srv_start ARGS...: start "$NBDKIT -r -f -U SOCK ARGS" in the background
# and wait until it serves; return 1 (log in $tmpdir/srv.log) if it dies
# first.  srv_stop stops it.  (Not start_nbdkit from functions.sh: that
# ends the whole test when one image fails to start.)
srvsock=$tmpdir/srv.sock srvpid=
srv_start ()
{
  rm -f "$srvsock"
  "$NBDKIT" -r -f -U "$srvsock" "$@" 2>"$tmpdir/srv.log" &
  srvpid=$!
  local _
  for _ in $(seq 1000); do
    [ -S "$srvsock" ] && return 0
    kill -0 "$srvpid" 2>/dev/null || { wait "$srvpid" || :; srvpid=; return 1; }
    sleep 0.01
  done
  return 1
}
srv_stop ()
{
  [ -n "$srvpid" ] || return 0
  kill "$srvpid" 2>/dev/null || :
  wait "$srvpid" 2>/dev/null || :
  srvpid=
}
on_exit srv_stop

n=0 failed=0
while read -r -u 3 img args; do
  [ -n "$img" ] || continue
  n=$((n + 1))
  # shellcheck disable=SC2086
  set -- $args
  desc="$img${args:+ $args}"
  path=$imgdir/$img
  qemu_spec "$path" "$@"
  expect=$tmpdir/expect.raw
  rm -f "$expect" "$tmpdir/got.raw"
  if ! qemu-img convert "${qfmt[@]}" -O raw "$qimg" "$expect" \
       2>"$tmpdir/qemu.err"; then
    cat "$tmpdir/qemu.err" >&2
    fail "qemu-img convert failed on $desc"
  fi
  qemu_unspec

  bad=
  if ! srv_start qcow2 "$path" "$@"; then
    bad="the plugin does not serve it: $(head -n 5 "$tmpdir/srv.log")"
  else
    uri=$(nbd_uri "$srvsock")
    if ! timeout 60 nbdcopy "$uri" "$tmpdir/got.raw" 2>"$tmpdir/copy.err"; then
      bad="nbdcopy failed: $(cat "$tmpdir/copy.err")"
    elif ! cmp "$expect" "$tmpdir/got.raw" >"$tmpdir/cmp.out" 2>&1; then
      bad="nbdcopy output differs from qemu-img convert: $(cat "$tmpdir/cmp.out")"
    elif ! timeout 60 "$PYTHON" "$tmpdir/preads.py" "$uri" "$expect" "$desc" \
           2>"$tmpdir/py.err"; then
      bad=$(tail -n 3 "$tmpdir/py.err")
    fi
  fi
  srv_stop

  if [ -n "$bad" ]; then
    failed=$((failed + 1))
    echo "FAIL: $desc: $bad"
    echo "  reproduce (in $imgdir): $NBDKIT -r qcow2 $path $args"
    echo "    vs qemu-img convert ${qfmt[*]} -O raw '$qimg' out.raw"
    case $args in
      *snapshot=*) echo "    (on a copy with the snapshot applied: qemu-img snapshot -a NAME)" ;;
    esac
    if [ -s "$tmpdir/srv.log" ]; then
      sed 's/^/  nbdkit: /' "$tmpdir/srv.log" | head -n 10
    fi
  else
    echo "ok: $desc ($(stat -c %s "$expect") bytes)"
  fi
done 3< "$imgdir/list.txt"

echo "$n images read, $failed failed"
[ -z "$own_images" ] || [ "$n" -ge 40 ] || fail "only $n images in the matrix"
[ "$failed" -eq 0 ] || fail "$failed of $n images read differently from qemu"
