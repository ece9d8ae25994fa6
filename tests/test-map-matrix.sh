#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Differential extents test: for every image of the matrix
# (make-images.sh), `nbdinfo --map` (base:allocation) of the plugin's
# export must agree with the map of the same image served by
# `qemu-nbd -r`, after merging adjacent extents with equal flags.  Then a
# client asks the plugin for block status at random, unaligned offsets
# and every extent it gets must agree with qemu's map over its range.
#
# The one documented qemu corner: qcow2's block status sets
# BDRV_BLOCK_RECURSE when qemu's heuristic "this image looks like
# preallocation=metadata" fires (qcow2_detect_metadata_preallocation:
# more clusters with a refcount than the host file has allocated blocks,
# +10%; it fires on preallocation=metadata images but also on some tiny
# ordinary ones).  qemu then asks the host file about every allocated
# cluster and calls host holes "zero" (data+zero, type 2), at host-block
# granularity.  qcow2 never yields data+zero by itself, so type 2 in
# qemu's map means exactly that.  When the strict comparison fails and
# qemu's map has type-2 extents, the image is compared with a weaker
# property instead: wherever qemu says 2 the plugin may say 0 (data) or
# 2; everywhere else the flags must be identical; and every extent the
# plugin calls zero must read as zeros (checked against qemu-img
# convert).  Such images are reported as "ok (weak)".  Set
# QC_MAP_STRICT=1 to forbid the weaker comparison.
#
# Set QC_TEST_IMAGES=DIR to reuse images made earlier by make-images.sh.

. "${srcdir:-.}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires nbdinfo --version
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
# backing file names, which are relative to the image).
cd "$imgdir"

# qemu_spec IMG PLUGIN-ARGS...: the qemu equivalent of serving IMG with
# those plugin arguments.  Sets qimg (file name or json: spec), qfmt (the
# -f option, empty for json:), qsnap (the -l option or empty) and qimg2.
#
# snapshot=NAME: qemu-nbd -l serves the snapshot from the original file,
# whose host allocation (which qemu's extents may depend on, see above)
# is the one the plugin sees -- but with the ACTIVE image's virtual size
# (a qemu quirk: see test-read-matrix.sh).  When the snapshot's size
# differs, qimg2 is a copy of the image with the snapshot applied
# (qemu-img snapshot -a restores the size), and the reference map is
# qemu-nbd -l's up to the active size, then the copy's.  Applying the
# snapshot changes the copy's host allocation, so that tail may end up
# compared weakly.  Call qemu_unspec after.
qcopy=
vsize () { qemu-img info --output=json "$1" |
           "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
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
  qsnap=(); qimg2=''; qfmt=(-f "$fmt")
  if [ -n "$snap" ]; then
    qsnap=(-l "snapshot.name=$snap")
    qcopy=$(dirname "$img")/.qc-snap.$$.$(basename "$img")
    cp "$img" "$qcopy"
    qemu-img snapshot -a "$snap" "$qcopy" ||
      fail "qemu-img snapshot -a '$snap' failed on $img"
    if [ "$(vsize "$qcopy")" = "$(vsize "$img")" ]; then
      rm -f "$qcopy"; qcopy=
    fi
  fi
  if [ -z "$backing" ]; then
    qimg=$img qimg2=$qcopy
    return
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
  [ -z "$qcopy" ] ||
    qimg2="json:{\"driver\":\"$fmt\",\"file\":{\"driver\":\"file\",\"filename\":\"$qcopy\"},\"backing\":$b}"
  qfmt=()
}
qemu_unspec () { [ -z "$qcopy" ] || rm -f "$qcopy"; qcopy=; }
on_exit qemu_unspec

# compare-maps.py QEMU-MAP PLUGIN-MAP RAW NAME STRICT QEMU-MAP2 -- PLUGIN-ARGV...
# (QEMU-MAP2, if not "", supplies the reference beyond QEMU-MAP's end.)
# exit 0: identical, 3: weakly equal (printed why), 1: mismatch (printed).
cat > "$tmpdir/compare-maps.py" <<'EOF'
import bisect, random, sys
import nbd

qfile, pfile, raw, name, strict, qfile2 = sys.argv[1:7]
argv = sys.argv[8:]
strict = strict == "1"

def load(fn):
    exts = []
    for line in open(fn):
        f = line.split()
        if not f:
            continue
        off, ln, ty = int(f[0]), int(f[1]), int(f[2])
        if exts and exts[-1][2] == ty and exts[-1][0] + exts[-1][1] == off:
            exts[-1][1] += ln
        else:
            exts.append([off, ln, ty])
    return exts

def show(exts):
    return "\n".join("    %12d %12d  %d" % tuple(e) for e in exts)

def coverage(exts, who):
    pos = 0
    for off, ln, ty in exts:
        if off != pos or ln <= 0:
            return "%s map is not contiguous at offset %d" % (who, pos)
        pos += ln
    return pos

q, p = load(qfile), load(pfile)
if qfile2:
    # qemu-nbd -l's map up to its end (the active size), then the copy's
    cut = sum(e[1] for e in q)
    for off, ln, ty in load(qfile2):
        if off + ln > cut:
            s = max(off, cut)
            if q and q[-1][2] == ty and q[-1][0] + q[-1][1] == s:
                q[-1][1] += off + ln - s
            else:
                q.append([s, off + ln - s, ty])
qend, pend = coverage(q, "qemu"), coverage(p, "plugin")
if isinstance(qend, str):
    sys.exit("%s: %s:\n%s" % (name, qend, show(q)))
if isinstance(pend, str):
    print("%s: %s:\n%s" % (name, pend, show(p)))
    sys.exit(1)
size = qend

qstarts = [e[0] for e in q]

def qflags(off, ln):
    """The set of qemu flags over [off, off+ln)."""
    i = bisect.bisect_right(qstarts, off) - 1
    s = set()
    while i < len(q) and q[i][0] < off + ln:
        s.add(q[i][2])
        i += 1
    return s

def ok(pflag, qset):
    if qset == {pflag}:
        return True
    # weak: qemu's host-hole probing (type 2) may be missing in the plugin
    return weak and pflag in (0, 2) and qset <= {0, 2} and \
        (pflag == 2) <= (qset == {2})

weak = False
mismatch = None
if pend != qend:
    mismatch = "plugin map covers %d bytes, qemu's %d" % (pend, qend)
elif p != q:
    mismatch = "maps differ"
    if not strict and any(e[2] == 2 for e in q):
        weak = True
        for off, ln, ty in p:
            if not ok(ty, qflags(off, ln)):
                weak = False
                break
        if weak:
            # every plugin zero extent must read as zeros
            with open(raw, "rb") as f:
                for off, ln, ty in p:
                    if ty & 2:
                        f.seek(off)
                        left = ln
                        while left:
                            b = f.read(min(left, 1 << 20))
                            if b.count(0) != len(b):
                                weak = False
                                mismatch = ("plugin calls [%d, +%d) zero but "
                                            "it does not read as zeros"
                                            % (off, ln))
                                break
                            left -= len(b)
                    if not weak:
                        break
if mismatch and not weak:
    print("%s: %s\n  qemu-nbd map (offset length type):\n%s\n"
          "  plugin map:\n%s" % (name, mismatch, show(q), show(p)))
    sys.exit(1)

# Random block status queries against the plugin.
if size == 0:
    sys.exit(3 if weak else 0)
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_systemd_socket_activation(argv)
if not h.can_meta_context("base:allocation"):
    print("%s: plugin does not offer base:allocation" % name)
    sys.exit(1)
rnd = random.Random(name)
bad = []
def cb(ctx, off, entries, err):
    if ctx != "base:allocation":
        return 0
    pos = off
    for i in range(0, len(entries), 2):
        ln, fl = entries[i], entries[i + 1]
        if ln == 0 or pos + ln > size:
            bad.append("extent [%d, +%d) flags %d out of bounds" % (pos, ln, fl))
        elif not ok(fl, qflags(pos, ln)):
            bad.append("extent [%d, +%d) flags %d, qemu says %s there"
                       % (pos, ln, fl, sorted(qflags(pos, ln))))
        pos += ln
    return 0
for i in range(60):
    if rnd.randrange(3) == 0:
        off = rnd.randrange(size)
    else:
        e = rnd.choice(q)          # near an extent boundary of qemu's map
        off = min(size - 1, max(0, e[0] + rnd.randrange(-1000, 1000)))
    count = min(size - off, rnd.choice([1, 511, 4096, 65537,
                                        rnd.randrange(1, 8 << 20)]))
    h.block_status(count, off, cb)
    if bad:
        print("%s: block status (count=%d, offset=%d) from the plugin "
              "disagrees with qemu-nbd's map: %s\n  qemu-nbd map:\n%s"
              % (name, count, off, bad[0], show(q)))
        sys.exit(1)
h.shutdown()
sys.exit(3 if weak else 0)
EOF

n=0 failed=0 weak=0
while read -r -u 3 img args; do
  [ -n "$img" ] || continue
  n=$((n + 1))
  # shellcheck disable=SC2086
  set -- $args
  desc="$img${args:+ $args}"
  path=$imgdir/$img
  qemu_spec "$path" "$@"
  rm -f "$tmpdir"/{qemu,qemu2,plugin}.map "$tmpdir/expect.raw"
  if ! nbdinfo --map -- [ qemu-nbd -r "${qfmt[@]}" "${qsnap[@]}" "$qimg" ] \
       >"$tmpdir/qemu.map" 2>"$tmpdir/qemu.err"; then
    cat "$tmpdir/qemu.err" >&2
    fail "qemu-nbd map failed on $desc"
  fi
  qmap2=
  if [ -n "$qimg2" ]; then
    qmap2=$tmpdir/qemu2.map
    nbdinfo --map -- [ qemu-nbd -r "${qfmt[@]}" "$qimg2" ] >"$qmap2" ||
      fail "qemu-nbd map failed on $desc (snapshot applied)"
    qemu-img convert "${qfmt[@]}" -O raw "$qimg2" "$tmpdir/expect.raw" ||
      fail "qemu-img convert failed on $desc (snapshot applied)"
  else
    qemu-img convert "${qfmt[@]}" "${qsnap[@]}" -O raw "$qimg" "$tmpdir/expect.raw" ||
      fail "qemu-img convert failed on $desc"
  fi
  qemu_unspec

  bad=
  if ! timeout 60 nbdinfo --map -- [ "$NBDKIT" -r qcow2 "$path" "$@" ] \
       >"$tmpdir/plugin.map" 2>"$tmpdir/plugin.err"; then
    bad="nbdinfo --map on the plugin failed: $(head -n 5 "$tmpdir/plugin.err")"
  else
    set +e
    timeout 60 "$PYTHON" "$tmpdir/compare-maps.py" "$tmpdir/qemu.map" "$tmpdir/plugin.map" \
      "$tmpdir/expect.raw" "$desc" "${QC_MAP_STRICT:-0}" "$qmap2" -- \
      "$NBDKIT" -r qcow2 "$path" "$@" >"$tmpdir/cmp.out" 2>&1
    r=$?
    set -e
    case $r in
      0) ;;
      3) weak=$((weak + 1))
         echo "ok (weak): $desc: qemu probed host holes (type 2 extents)" ;;
      *) bad=$(cat "$tmpdir/cmp.out") ;;
    esac
  fi
  if [ -n "$bad" ]; then
    failed=$((failed + 1))
    echo "FAIL: $bad"
    echo "  reproduce (in $imgdir): nbdinfo --map -- [ $NBDKIT -r qcow2 $path $args ]"
    echo "    vs nbdinfo --map -- [ qemu-nbd -r ${qfmt[*]} ${qsnap[*]} '$qimg' ]"
    [ -z "$qimg2" ] ||
      echo "    beyond the active size: nbdinfo --map -- [ qemu-nbd -r ${qfmt[*]} '$qimg2' ] (a copy with the snapshot applied by qemu-img snapshot -a)"
  elif [ "$r" = 0 ]; then
    echo "ok: $desc ($(wc -l < "$tmpdir/qemu.map") qemu extents)"
  fi
done 3< "$imgdir/list.txt"

echo "$n images mapped, $failed failed, $weak compared weakly (qemu host-hole probing)"
[ -z "$own_images" ] || [ "$n" -ge 40 ] || fail "only $n images in the matrix"
[ "$failed" -eq 0 ] || fail "$failed of $n images have extents different from qemu's"
