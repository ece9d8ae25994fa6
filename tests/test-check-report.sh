#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# check=on and repair= report what they find and what they repair,
# without -v, on stderr: one line per finding in qemu-img check's
# words, at most 100 of them, then a summary.  Judged by qemu-img check
# on the same (damaged) image: the same finding lines, the same counts.
#
#  1. Refcount errors, leaks and wrong COPIED flags (an image with a
#     snapshot): check=on prints exactly qemu-img check's ERROR / Leaked
#     lines and its two summary counts, through the plugin and through
#     the qcow2 filter, and leaves the file untouched; repair=all reports
#     the counts qemu-img check -r all reports, then "No errors", and
#     qemu-img check agrees.
#  2. Leaks and a wrong COPIED flag on an L1 entry: repair=all prints
#     exactly the lines qemu-img check -r all prints.
#  3. 150 leaked clusters: 100 lines, "... and 50 more", the count;
#     repair=leaks likewise, and qemu-img check is clean after it.
#  4. A clean image: only "No errors were found on the image.".
#  5. The overlay filter: overlay-check=on on a damaged overlay file.
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires timeout --version
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"

T=$tmpdir K=1024
failures=()
ok () { echo "ok: $*"; }
bad () { echo "FAIL: $*"; failures+=("$*"); }

# rc.py IMG OFF VALUE [OFF VALUE...]: set the refcount of the cluster
# at each host offset OFF (qcow2 spec; refcount block must exist)
cat > "$T/rc.py" <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(0)
    b = f.read(104)
    cbits = struct.unpack(">I", b[20:24])[0]
    rt_off = struct.unpack(">Q", b[48:56])[0]
    version = struct.unpack(">I", b[4:8])[0]
    order = struct.unpack(">I", b[96:100])[0] if version >= 3 else 4
    cs, bits = 1 << cbits, 1 << order
    per = cs * 8 // bits
    assert bits >= 8
    args = sys.argv[2:]
    for off, v in zip(args[::2], args[1::2]):
        c = int(off) // cs
        f.seek(rt_off + (c // per) * 8)
        blk = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
        assert blk, "no refcount block for cluster %d" % c
        f.seek(blk + (c % per) * bits // 8)
        f.write(int(v).to_bytes(bits // 8, "big"))
EOF
rc () { "$PYTHON" "$T/rc.py" "$@"; }
# l1-clear-copied IMG: clear COPIED in the first L1 entry
l1_clear_copied ()
{
  "$PYTHON" - "$1" <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(40)
    l1 = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1)
    e = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1)
    f.write(struct.pack(">Q", e & ~(1 << 63)))
EOF
}
# host IMG GUESTOFF: host offset of a guest offset (qemu-img map)
host ()
{
  qemu-img map --output=json "$1" | "$PYTHON" -c '
import json, sys
g = int(sys.argv[1])
print([e["offset"] + g - e["start"] for e in json.load(sys.stdin)
       if e["data"] and e["start"] <= g < e["start"] + e["length"]][0])' "$2"
}
# add_leaks IMG N: append N clusters to the file, each with refcount 1
add_leaks ()
{
  local img=$1 n=$2 end args=() i
  end=$(stat -c %s "$img")
  end=$(( (end + 64 * K - 1) / (64 * K) * 64 * K ))
  truncate -s $((end + n * 64 * K)) "$img"
  for i in $(seq 0 $((n - 1))); do args+=($((end + i * 64 * K)) 1); done
  rc "$img" "${args[@]}"
}

# qemu_findings IMG [OPTS]: qemu-img check's finding lines (stderr) in
# $T/q.lines, its summary (stdout) in $T/q.out, its status in $qrc
qemu_findings ()
{
  local img=$1; shift
  qrc=0
  qemu-img check "$@" "$img" >"$T/q.out" 2>"$T/q.err" || qrc=$?
  grep -E '^(ERROR|Leaked|Repairing|Rebuilding)' "$T/q.err" >"$T/q.lines" || :
}
# run_nbdkit LOG ARGS...: nbdkit -U - ARGS --run true, stderr to LOG
run_nbdkit ()
{
  local log=$1; shift
  # (a connection: the filters open the image at the first one)
  timeout 120 "$NBDKIT" -U - "$@" --run 'nbdinfo --size "$uri" >/dev/null' \
    2>"$log" ||
    bad "nbdkit $* failed: $(tail -n 3 "$log")"
  if grep -q 'debug:' "$log"; then bad "nbdkit $*: debug lines without -v"; fi
}
# our_lines LOG: our finding lines, without the "nbdkit: NAME: " prefix
our_lines ()
{
  sed -n 's/^nbdkit: [^ ]*: //p' "$1" |
    grep -E '^(ERROR|Leaked|Repairing|Rebuilding|\.\.\. and)' || :
}
# same_lines WHAT LOG: our finding lines = qemu's ($T/q.lines)
same_lines ()
{
  our_lines "$2" >"$T/o.lines"
  if [ ! -s "$T/q.lines" ]; then
    bad "$1: qemu-img check printed no finding lines: test broken"
  elif cmp -s "$T/q.lines" "$T/o.lines"; then
    ok "$1: the $(wc -l <"$T/o.lines") finding lines are qemu-img check's"
  else
    bad "$1: finding lines differ from qemu-img check's:
$(diff "$T/q.lines" "$T/o.lines")"
  fi
}
# has WHAT LOG TEXT: LOG has a line ending in TEXT
has ()
{
  if grep -qF -- "$3" "$2"; then ok "$1: '$3'"
  else bad "$1: no '$3' in: $(cat "$2")"; fi
}
# qemu_count WHAT: the number before WHAT in qemu-img check's summary
qemu_count ()
{
  sed -n "s/^ *\([0-9]*\) $1.*/\1/p" "$T/q.out" | head -n 1
}

echo "== 1. refcount errors, leaks, wrong COPIED flags"
img=$T/mixed.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qemu-io -f qcow2 -c 'write -q -P 1 0 2M' -c 'write -q -P 2 4M 1M' "$img"
qemu-img snapshot -c s1 "$img"
qemu-io -f qcow2 -c 'write -q -P 3 4M 64k' "$img"
once=$(host "$img" $((4 * 1024 * K)))
shared=$(host "$img" 0)
# refcount 1 -> 0 (and a COPIED flag now wrong), 2 -> 1 (likewise)
rc "$img" "$once" 0 "$shared" 1
add_leaks "$img" 1
end=$(stat -c %s "$img")
truncate -s $((end + 64 * K)) "$img"
rc "$img" "$end" 3                     # a leak with refcount 3
cp "$img" "$T/mixed.orig"
qemu_findings "$img"
[ "$qrc" = 2 ] || bad "qemu-img check exit $qrc on the damaged image, want 2"
errors=$(qemu_count errors) leaks=$(qemu_count leaked)
[ "$errors" = 4 ] && [ "$leaks" = 2 ] ||
  bad "setup: qemu-img check finds $errors errors, $leaks leaks (want 4, 2)"

run_nbdkit "$T/p.log" qcow2 "$img" check=on
cat "$T/p.log"
same_lines "plugin check=on" "$T/p.log"
has "plugin check=on" "$T/p.log" "$errors errors were found on the image."
has "plugin check=on" "$T/p.log" "$leaks leaked clusters were found on the image."
cmp -s "$img" "$T/mixed.orig" && ok "check=on left the file untouched" ||
  bad "check=on changed the file"

run_nbdkit "$T/f.log" --filter=qcow2 file "$img" qcow2-check=on
same_lines "qcow2 filter qcow2-check=on" "$T/f.log"
has "qcow2 filter" "$T/f.log" "$errors errors were found on the image."
has "qcow2 filter" "$T/f.log" "$leaks leaked clusters were found on the image."

cp "$T/mixed.orig" "$img"
qemu_findings "$img" -r all
qleaks=$(qemu_count "leaked clusters") qcorr=$(qemu_count corruptions)
cp "$T/mixed.orig" "$img"
run_nbdkit "$T/r.log" qcow2 "$img" repair=all
cat "$T/r.log"
has "repair=all" "$T/r.log" "The following inconsistencies were found and repaired: $qleaks leaked clusters, $qcorr corruptions"
tail -n 1 "$T/r.log" | grep -qF "No errors were found on the image." &&
  ok "repair=all: the double check finds nothing" ||
  bad "repair=all: last line: $(tail -n 1 "$T/r.log")"
qemu-img check -q "$img" && ok "repair=all: qemu-img check agrees" ||
  bad "repair=all: qemu-img check: $(qemu-img check "$img" 2>&1 | head -n 3)"

echo "== 2. leaks and a wrong COPIED flag in the L1 table: repair=all"
img=$T/l1.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qemu-io -f qcow2 -c 'write -q -P 1 0 2M' "$img"
add_leaks "$img" 2
l1_clear_copied "$img"
cp "$img" "$T/l1.orig"
# what we print: the check's findings (qemu-img check's), then the
# repairs (qemu-img check -r all's "Repairing" lines)
qemu_findings "$img"
grep -q 'OFLAG_COPIED L2 cluster' "$T/q.lines" ||
  bad "setup: qemu-img check does not see the L1 COPIED flag"
cp "$T/q.lines" "$T/check.lines"
qemu_findings "$img" -r all
grep '^Repairing' "$T/q.lines" >>"$T/check.lines" || :
mv "$T/check.lines" "$T/q.lines"
cp "$T/l1.orig" "$img"
run_nbdkit "$T/r.log" qcow2 "$img" repair=all
cat "$T/r.log"
same_lines "repair=all (leaks, L1 COPIED)" "$T/r.log"
has "repair=all" "$T/r.log" "repaired: $(qemu_count "leaked clusters") leaked clusters, $(qemu_count corruptions) corruptions"
qemu-img check -q "$img" && ok "repair=all: qemu-img check clean" ||
  bad "repair=all (L1): qemu-img check not clean"

echo "== 3. 150 leaked clusters: 100 lines, then how many more"
img=$T/many.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qemu-io -f qcow2 -c 'write -q -P 1 0 1M' "$img"
add_leaks "$img" 150
qemu_findings "$img"
[ "$(qemu_count leaked)" = 150 ] ||
  bad "setup: qemu-img check finds $(qemu_count leaked) leaks, want 150"
run_nbdkit "$T/m.log" qcow2 "$img" check=on
n=$(our_lines "$T/m.log" | grep -c '^Leaked cluster' || :)
[ "$n" = 100 ] && ok "check=on: 100 'Leaked cluster' lines" ||
  bad "check=on: $n 'Leaked cluster' lines, want 100"
head -n 100 "$T/q.lines" >"$T/q100.lines"
our_lines "$T/m.log" | grep '^Leaked' >"$T/o100.lines" || :
cmp -s "$T/q100.lines" "$T/o100.lines" &&
  ok "check=on: they are qemu-img check's first 100" ||
  bad "check=on: the 100 lines differ from qemu's: $(diff "$T/q100.lines" "$T/o100.lines" | head -n 4)"
has "check=on, 150 leaks" "$T/m.log" "... and 50 more"
has "check=on, 150 leaks" "$T/m.log" "150 leaked clusters were found on the image."
run_nbdkit "$T/m.log" qcow2 "$img" repair=leaks
n=$(our_lines "$T/m.log" | grep -c '^Repairing cluster' || :)
[ "$n" = 100 ] && ok "repair=leaks: 100 'Repairing cluster' lines" ||
  bad "repair=leaks: $n 'Repairing cluster' lines, want 100"
has "repair=leaks" "$T/m.log" "repaired: 150 leaked clusters, 0 corruptions"
has "repair=leaks" "$T/m.log" "No errors were found on the image."
qemu-img check -q "$img" && ok "repair=leaks: qemu-img check clean" ||
  bad "repair=leaks: qemu-img check not clean"

echo "== 4. a clean image"
run_nbdkit "$T/c.log" qcow2 "$img" check=on
cat "$T/c.log"
[ "$(wc -l <"$T/c.log")" = 1 ] &&
  grep -q "^nbdkit: $img: No errors were found on the image.\$" "$T/c.log" &&
  ok "check=on, clean image: one line, 'No errors were found on the image.'" ||
  bad "check=on, clean image: $(cat "$T/c.log")"

echo "== 5. the overlay filter: overlay-check=on"
truncate -s 16M "$T/base.raw"
ov=$T/ov.qcow2
qemu-img create -q -f qcow2 "$ov" 16M
qemu-io -f qcow2 -c 'write -q -P 5 0 1M' "$ov"
add_leaks "$ov" 3
qemu_findings "$ov"
run_nbdkit "$T/o.log" --filter=overlay file "$T/base.raw" overlay="$ov" \
  overlay-check=on
cat "$T/o.log"
same_lines "overlay filter overlay-check=on" "$T/o.log"
has "overlay filter" "$T/o.log" "3 leaked clusters were found on the image."

echo "${#failures[@]} failures"
if [ "${#failures[@]}" -gt 0 ]; then
  printf '  %s\n' "${failures[@]}" >&2
  fail "${#failures[@]} checks failed"
fi
echo "PASS: test-check-report"
