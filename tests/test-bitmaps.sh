#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Persistent dirty bitmaps, judged by qemu:
# (1) writes, zeroes and trims through the plugin, the qcow2 filter and
#     the overlay filter set exactly the granules they touch in every
#     enabled bitmap (granularities 512 B, 64 KiB = the cluster, 128 KiB
#     and 2 MiB), keeping the bits qemu had set before; a disabled
#     bitmap is unchanged; after a clean stop no bitmap is in use and
#     qemu-img check is clean: read with qemu-nbd -r -B NAME and
#     nbdinfo --map=qemu:dirty-bitmap:NAME.
# (2) SIGKILL after writes leaves the enabled bitmaps in use (qemu
#     refuses to export them) and the disabled one not; check: leaks at
#     most.
# (3) bitmap-add/-remove/-clear/-enable/-disable/-merge give what
#     qemu-img bitmap gives on a copy (names, flags, granularities, and
#     the merged bits); errors change nothing; refused under -r, on v2.
# (4) read-only serving and a snapshot export change no byte.
. "${srcdir:-.}/functions.sh"
requires qemu-img --version
requires qemu-nbd --version
requires nbdinfo --version
requires $PYTHON -c 'import nbd'

cd "$tmpdir"
M=64M

# ops.py URI SEED: random writes, zeroes (some may-trim) and trims,
# printing "offset length" of each.
cat > ops.py <<'EOF'
import nbd, random, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
rnd = random.Random(int(sys.argv[2]))
for i in range(60):
    kind = rnd.choice(["w", "w", "z", "t"])
    ln = rnd.choice([1, 512, 4096, 65536, 100000, 3 << 20])
    off = rnd.randrange(0, size - ln)
    if rnd.random() < 0.3:
        off &= ~4095
    if kind == "w":
        h.pwrite(bytes([i + 1]) * ln, off)
    elif kind == "z":
        h.zero(ln, off, nbd.CMD_FLAG_NO_HOLE if rnd.random() < 0.5 else 0)
    else:
        h.trim(ln, off)
    print(off, ln)
h.flush()
h.shutdown()
EOF

# granules.py MAPFILE SIZE GRAN [RANGES [PREMAP]]: compare the dirty
# granules of a map with those the ranges (and the earlier map) say.
cat > granules.py <<'EOF'
import sys
def from_map(path, g):
    s = set()
    for line in open(path):
        f = line.split()
        off, ln, t = int(f[0]), int(f[1]), int(f[2])
        if t & 1:
            s.update(range(off // g, (off + ln - 1) // g + 1))
    return s
mapf, size, g = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
got = from_map(mapf, g)
want = set()
if len(sys.argv) > 4:
    for line in open(sys.argv[4]):
        off, ln = map(int, line.split())
        want.update(range(off // g, (off + ln - 1) // g + 1))
if len(sys.argv) > 5:
    want |= from_map(sys.argv[5], g)
if got != want:
    print("granularity %d: missing %s, extra %s" %
          (g, sorted(want - got)[:10], sorted(got - want)[:10]))
    sys.exit(1)
print("granularity %d: %d dirty granules as expected" % (g, len(got)))
EOF

# bmap IMG NAME OUT: the bitmap as qemu exports it.
bmap ()
{
  local sock=$tmpdir/q.sock pid i
  rm -f "$sock"
  qemu-nbd -r -f qcow2 -B "$2" -k "$sock" "$1" 2>"$tmpdir/qnbd.err" &
  pid=$!
  for i in $(seq 1 100); do
    [ -S "$sock" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
  done
  if ! [ -S "$sock" ]; then
    wait $pid || :
    return 1
  fi
  i=0
  nbdinfo --map=qemu:dirty-bitmap:"$2" "nbd+unix:///?socket=$sock" \
    > "$3" 2>>"$tmpdir/qnbd.err" ||
    i=1
  kill $pid 2>/dev/null || :
  wait $pid 2>/dev/null || :
  return $i
}

# flags IMG: "name:flags:granularity" of each bitmap, sorted.
flags ()
{
  qemu-img info -U --output=json "$1" | $PYTHON -c '
import json, sys
d = json.load(sys.stdin)["format-specific"]["data"]
for b in sorted(d.get("bitmaps", []), key=lambda b: b["name"]):
    print("%s:%s:%d" % (b["name"], ",".join(sorted(b["flags"])),
                        b["granularity"]))'
}

check_clean ()
{
  qemu-img check -q "$1" || fail "$2: qemu-img check is not clean"
}

# bitmaps_image IMG: enabled a (64k), b (512), c (128k), e (2M) and a
# disabled d, with bits qemu set before.
bitmaps_image ()
{
  qemu-img bitmap --add "$1" a
  qemu-img bitmap --add -g 512 "$1" b
  qemu-img bitmap --add -g 128K "$1" c
  qemu-img bitmap --add "$1" d
  qemu-img bitmap --add -g 2M "$1" e
  qemu-io -f qcow2 -c 'write 5M 70k' -c 'write 40M 1k' "$1" >/dev/null
  qemu-img bitmap --disable "$1" d
}

echo "(1) writes, zeroes and trims set the bits (three modules)"
qemu-img create -q -f raw base.raw $M
seed=17
for mod in plugin qcow2 overlay; do
  seed=$((seed + 1))
  case $mod in
  plugin)
    qemu-img create -q -f qcow2 img.qcow2 $M; bitmaps_image img.qcow2
    img=img.qcow2; args=(qcow2 img.qcow2) ;;
  qcow2)
    # The container below the filter has a fixed size: room to grow.
    qemu-img create -q -f qcow2 img.qcow2 $M; bitmaps_image img.qcow2
    truncate -s 96M img.qcow2
    img=img.qcow2; args=(--filter=qcow2 file img.qcow2) ;;
  overlay)
    rm -f ov.qcow2
    "$NBDKIT" -U - --filter=overlay file base.raw overlay=ov.qcow2 \
      --run 'nbdinfo --size "$uri" >/dev/null'
    bitmaps_image ov.qcow2
    img=ov.qcow2; args=(--filter=overlay file base.raw overlay=ov.qcow2) ;;
  esac
  for b in a b c d e; do bmap $img $b pre-$b.map || fail "$mod: bmap $b"; done
  "$NBDKIT" -U - "${args[@]}" --run "$PYTHON ops.py \"\$uri\" $seed > ranges" ||
    fail "$mod: the writes failed"
  check_clean $img "$mod"
  flags $img | grep -q in-use && fail "$mod: a bitmap stayed in use: $(flags $img)"
  for b in a b c e; do
    g=$(flags $img | awk -F: -v b=$b '$1 == b { print $3 }')
    bmap $img $b post-$b.map || fail "$mod: qemu cannot export bitmap $b"
    $PYTHON granules.py post-$b.map $((64 << 20)) $g ranges pre-$b.map ||
      fail "$mod: bitmap $b is wrong"
  done
  bmap $img d post-d.map
  cmp -s pre-d.map post-d.map || fail "$mod: the disabled bitmap changed"
  [ "$(flags $img | grep '^d:')" = "d::65536" ] ||
    fail "$mod: the disabled bitmap's flags changed"
done

echo "(2) SIGKILL leaves the enabled bitmaps in use"
qemu-img create -q -f qcow2 k.qcow2 $M
bitmaps_image k.qcow2
start_nbdkit sock qcow2 k.qcow2
nbdsh -u "$(nbd_uri "$sock")" -c 'h.pwrite(b"k" * 4096, 1 << 20)' \
  -c 'h.flush()'
kill -9 "$(cat "$tmpdir"/nbdkit$_nbdkit_n.pid)"
sleep 0.5
want="a:auto,in-use:65536
b:auto,in-use:512
c:auto,in-use:131072
d::65536
e:auto,in-use:2097152"
[ "$(flags k.qcow2)" = "$want" ] || fail "after SIGKILL: $(flags k.qcow2)"
bmap k.qcow2 a k.map && fail "qemu exported a bitmap left in use"
grep -qi "inconsistent" qnbd.err || { cat qnbd.err; fail "qemu's refusal"; }
r=0; qemu-img check -q k.qcow2 || r=$?
[ $r = 0 ] || [ $r = 3 ] || fail "after SIGKILL: qemu-img check exit $r"

echo "(3) maintenance options against qemu-img bitmap"
qemu-img create -q -f qcow2 -o cluster_size=4k m.qcow2 $M
bitmaps_image m.qcow2
cp m.qcow2 q.qcow2
"$NBDKIT" -U - qcow2 m.qcow2 bitmap-add=n1 bitmap-granularity=8k \
  bitmap-add=n2 bitmap-disabled=true bitmap-add=n3 bitmap-remove=c \
  bitmap-merge=a:n2 bitmap-merge=b:n2 bitmap-clear=e bitmap-disable=a \
  bitmap-enable=d bitmap-remove=n3 --run true || fail "maintenance failed"
qemu-img bitmap --add -g 8k q.qcow2 n1
qemu-img bitmap --add --disable q.qcow2 n2
qemu-img bitmap --add q.qcow2 n3
qemu-img bitmap --remove q.qcow2 c
qemu-img bitmap --merge a q.qcow2 n2
qemu-img bitmap --merge b q.qcow2 n2
qemu-img bitmap --clear q.qcow2 e
qemu-img bitmap --disable q.qcow2 a
qemu-img bitmap --enable q.qcow2 d
qemu-img bitmap --remove q.qcow2 n3
[ "$(flags m.qcow2)" = "$(flags q.qcow2)" ] ||
  fail "maintenance: ours $(flags m.qcow2) qemu's $(flags q.qcow2)"
check_clean m.qcow2 "maintenance"
for b in a b d e n1 n2; do
  bmap m.qcow2 $b m-$b.map && bmap q.qcow2 $b q-$b.map ||
    fail "bitmap $b cannot be exported"
  cmp -s m-$b.map q-$b.map || fail "bitmap $b differs from qemu's"
done
grep -q ' 1 ' m-n2.map || fail "the merged bitmap is empty"
# A new bitmap on an image without any, then removing the last one.
qemu-img create -q -f qcow2 -b base.raw -F raw n.qcow2
# A bitmap added at startup records the writes of the same run.
"$NBDKIT" -U - qcow2 n.qcow2 bitmap-add=x \
  --run 'nbdsh -u "$uri" -c "h.pwrite(b\"1\" * 512, 3 << 20)"'
[ "$(flags n.qcow2)" = "x:auto:65536" ] || fail "add to a fresh image"
echo "$((3 << 20)) 512" > ranges
bmap n.qcow2 x n-x.map || fail "the added bitmap cannot be exported"
$PYTHON granules.py n-x.map $((64 << 20)) 65536 ranges ||
  fail "the added bitmap missed the write"
qemu-img info n.qcow2 | grep -q 'backing file: base.raw' ||
  fail "the backing file name was lost"
"$NBDKIT" -U - qcow2 n.qcow2 bitmap-remove=x --run true
[ -z "$(flags n.qcow2)" ] || fail "removing the last bitmap"
check_clean n.qcow2 "add/remove"
# Errors: all validated before anything is written.
cp m.qcow2 before.qcow2
for bad in "bitmap-add=n1" "bitmap-add=z bitmap-remove=nothere" \
           "bitmap-merge=a:nothere" "bitmap-add=z bitmap-add=z" \
           "bitmap-granularity=64k" "bitmap-add=z bitmap-granularity=1000"; do
  # shellcheck disable=SC2086
  if "$NBDKIT" -U - qcow2 m.qcow2 $bad --run true 2>err; then
    fail "$bad was accepted"
  fi
  cmp -s m.qcow2 before.qcow2 || fail "$bad changed the image"
done
"$NBDKIT" -r -U - qcow2 m.qcow2 bitmap-add=z --run true 2>err &&
  fail "bitmap-add under -r"
grep -q 'read-only' err || fail "-r: $(cat err)"
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 $M
"$NBDKIT" -U - qcow2 v2.qcow2 bitmap-add=z --run true 2>err &&
  fail "bitmap-add on v2"
grep -q 'version 3' err || fail "v2: $(cat err)"
# (The filter opens the image at the first connection.)
"$NBDKIT" -U - --filter=qcow2 file m.qcow2 qcow2-bitmap-remove=n1 \
  --run 'nbdinfo --size "$uri" >/dev/null' || fail "qcow2-bitmap-remove="
flags m.qcow2 | grep -q '^n1:' && fail "qcow2-bitmap-remove= did nothing"

echo "(4) read-only serving and snapshot exports change nothing"
qemu-img create -q -f qcow2 r.qcow2 $M
bitmaps_image r.qcow2
qemu-img snapshot -c s1 r.qcow2
cp r.qcow2 r0.qcow2
"$NBDKIT" -r -U - qcow2 r.qcow2 --run 'nbdinfo --size "$uri" >/dev/null'
"$NBDKIT" -U - qcow2 r.qcow2 snapshot=s1 \
  --run 'nbdinfo --size "$uri" >/dev/null'
cmp -s r.qcow2 r0.qcow2 || fail "read-only serving changed the image"
echo OK
