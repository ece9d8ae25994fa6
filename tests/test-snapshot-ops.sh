#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Image maintenance at startup: snapshot-create / snapshot-apply /
# snapshot-delete, check=on and repair=leaks|all, judged by qemu-img.
#
#  1. Snapshots we create (on images with 64k and 512-byte clusters,
#     refcount_bits 16 and 64, extended L2, compressed clusters, a
#     backing file, v2) are listed by qemu-img (name, ID, date; the disk
#     size is in the extra data), read by `qemu-img convert -l` and by
#     `qemu-img snapshot -a` on a copy exactly as the disk was when they
#     were taken, and served as read-only exports; qemu-img check is
#     clean after every step.
#  2. Snapshots qemu made (one taken before `qemu-img resize`) are applied
#     and deleted by us: the result equals `qemu-img snapshot -a` / `-d`
#     on a copy, sizes included (qemu-img info and the export size).
#  3. Several operations on one command line run in order: the result
#     (content, snapshot list, every snapshot) equals the same sequence
#     done by qemu-img on a copy.  A failing operation stops the server.
#  4. refcount_bits=2: a snapshot-create (or apply) that would overflow
#     the refcounts fails at startup, says what to do, and leaves the
#     file byte-identical.
#  5. The documented workflow: snapshot, write through nbdkit, apply:
#     the content is back to the snapshot's.
#  6. Snapshot exports stay bit-identical while the active image is
#     hammered with writes, zeroes and trims from two connections.
#  7. check=on / repair: leaks (hand-made and left by kill -9) repaired
#     by repair=leaks; a dirty lazy-refcounts image served read-write
#     (rebuilt); corrupted refcounts (and a wrong COPIED flag) detected
#     by check=on, the image then served read-only and left untouched,
#     repaired by repair=all with the data intact.
#
# Environment: QC_SNAPOPS_SEED (seed of the random writes, default 4242).
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires nbdcopy --version
requires timeout --version
requires "$PYTHON" -c 'import nbd'
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"

seed=${QC_SNAPOPS_SEED:-4242}
randomops=${srcdir:-$(dirname "$0")}/random-ops.py
randomops=$(cd "$(dirname "$randomops")" && pwd)/$(basename "$randomops")
K=1024 M=$((1024 * 1024))
T=$tmpdir

failures=()
ok () { echo "ok: $*"; }
bad () { echo "FAIL: $*"; failures+=("$*"); }

# ---------------------------------------------------------------- tools

# qc.py: reads and pokes qcow2 metadata (qcow2 spec, v2 and v3).
#   header IMG                     the header fields as JSON
#   snaps IMG                      the snapshot table as JSON
#   rc-get IMG HOSTOFF             refcount of the cluster at HOSTOFF
#   rc-set IMG HOSTOFF VALUE       set it
#   l2-or IMG GUESTOFF BITS        OR BITS into the active L2 entry
cat > "$T/qc.py" <<'EOF'
import json, struct, sys

def header(f):
    f.seek(0)
    b = f.read(104)
    d = {}
    (magic, d["version"], _, _, d["cluster_bits"], d["size"], _,
     d["l1_size"], d["l1_off"], d["rt_off"], d["rt_clusters"], d["nb_snap"],
     d["snap_off"]) = struct.unpack(">IIQIIQIIQQIIQ", b[:72])
    d["refcount_order"], d["incompat"] = 4, 0
    if d["version"] >= 3:
        d["incompat"], _, _, d["refcount_order"], _ = \
            struct.unpack(">QQQII", b[72:104])
    d["cs"] = 1 << d["cluster_bits"]
    return d

def rc_loc(f, h, c):
    bits = 1 << h["refcount_order"]
    per = h["cs"] * 8 // bits
    f.seek(h["rt_off"] + (c // per) * 8)
    boff = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    if not boff:
        sys.exit("no refcount block for cluster %d" % c)
    return boff + (c % per) * bits // 8, (c % per) * bits % 8, bits

def rc_get(f, h, c):
    pos, sh, bits = rc_loc(f, h, c)
    f.seek(pos)
    if bits >= 8:
        return int.from_bytes(f.read(bits // 8), "big")
    return (f.read(1)[0] >> sh) & ((1 << bits) - 1)

def rc_set(f, h, c, v):
    pos, sh, bits = rc_loc(f, h, c)
    f.seek(pos)
    if bits >= 8:
        f.write(v.to_bytes(bits // 8, "big"))
        return
    byte = f.read(1)[0]
    byte = (byte & ~(((1 << bits) - 1) << sh)) | (v << sh)
    f.seek(pos)
    f.write(bytes([byte]))

def snaps(f, h):
    out, off = [], h["snap_off"]
    for _ in range(h["nb_snap"]):
        f.seek(off)
        l1o, l1s, il, nl, ds, dns, vmc, vms, es = \
            struct.unpack(">QIHHIIQII", f.read(40))
        extra = f.read(es)
        s = dict(l1_off=l1o, l1_size=l1s, date_sec=ds, date_nsec=dns,
                 vm_clock=vmc, vm_state_size=vms, extra_size=es)
        s["id"] = f.read(il).decode()
        s["name"] = f.read(nl).decode()
        if es >= 16:
            s["disk_size"] = struct.unpack(">Q", extra[8:16])[0]
        out.append(s)
        off += (40 + es + il + nl + 7) & ~7
    return out

def listing(img, want, t0, t1, size, what):
    """qemu-img snapshot -l / info list exactly WANT ("ID:NAME ..."),
    dated within [t0, t1]; our reading of the table agrees and every
    entry's extra data holds the disk size."""
    import subprocess
    info = json.loads(subprocess.check_output(
        ["qemu-img", "info", "-U", "--output=json", img]))
    got = " ".join("%s:%s" % (x["id"], x["name"])
                   for x in info.get("snapshots", []))
    def res(cond, msg):
        print("%s: %s%s" % ("ok" if cond else "FAIL", what, msg))
    res(got == want, "qemu-img info lists '%s' (want '%s')" % (got, want))
    lst = subprocess.check_output(["qemu-img", "snapshot", "-U", "-l", img],
                                  text=True).split("\n")
    rows = [l.split()[:2] for l in lst[2:] if l.strip()]
    res(" ".join(":".join(r) for r in rows) == want,
        "qemu-img snapshot -l rows %s" % rows)
    dates = [x["date-sec"] for x in info.get("snapshots", [])]
    res(all(t0 <= d <= t1 for d in dates),
        "snapshot dates %s within [%d, %d]" % (dates, t0, t1))
    with open(img, "rb") as f:
        ours = snaps(f, header(f))
    ds = [(x["extra_size"] >= 16, x.get("disk_size")) for x in ours]
    res(all(d == (True, size) for d in ds),
        "extra data holds the disk size: %s" % ds)

cmd, img = sys.argv[1], sys.argv[2]
if cmd == "listing":
    listing(img, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
            int(sys.argv[6]), sys.argv[7])
    sys.exit(0)
with open(img, "rb" if cmd in ("header", "snaps", "rc-get") else "r+b") as f:
    h = header(f)
    if cmd == "header":
        print(json.dumps(h))
    elif cmd == "snaps":
        print(json.dumps(snaps(f, h)))
    elif cmd == "rc-get":
        print(rc_get(f, h, int(sys.argv[3]) // h["cs"]))
    elif cmd == "rc-set":
        rc_set(f, h, int(sys.argv[3]) // h["cs"], int(sys.argv[4]))
    elif cmd == "l2-or":
        g, bits = int(sys.argv[3]), int(sys.argv[4], 0)
        l2bits = h["cluster_bits"] - 3
        f.seek(h["l1_off"] + (g >> (h["cluster_bits"] + l2bits)) * 8)
        l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
        pos = l2 + ((g >> h["cluster_bits"]) & ((1 << l2bits) - 1)) * 8
        f.seek(pos)
        e = struct.unpack(">Q", f.read(8))[0]
        f.seek(pos)
        f.write(struct.pack(">Q", e | bits))
EOF
qc () { "$PYTHON" "$T/qc.py" "$@"; }
# jq-like: json FILTER-EXPRESSION (python, on variable d) < JSON
json () { "$PYTHON" -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

# qio IMG FMT CMD...: qemu-io commands (quiet)
qio ()
{
  local img=$1 fmt=$2 a=(); shift 2
  for c in "$@"; do a+=(-c "$c"); done
  qemu-io -f "$fmt" "$img" "${a[@]}" >/dev/null ||
    fail "qemu-io $img $* failed"
}
# qraw IMG OUT: qemu's view of the active image
qraw () { rm -f "$2"; qemu-img convert -U -f qcow2 -O raw "$1" "$2"; }
# qsnap IMG NAME OUT: qemu's view of snapshot NAME (snapshot -a on a copy)
qsnap ()
{
  cp "$1" "$T/oracle.qcow2"
  qemu-img snapshot -a "$2" "$T/oracle.qcow2" ||
    fail "qemu-img snapshot -a $2 $1 failed"
  qraw "$T/oracle.qcow2" "$3"
  rm -f "$T/oracle.qcow2"
}
# qsnapl IMG NAME OUT: qemu-img convert -l snapshot.name=NAME
qsnapl () { rm -f "$3"; qemu-img convert -U -f qcow2 -l "snapshot.name=$2" -O raw "$1" "$3"; }

# plug LOG IMG OPTS... [-- RUNCMD]: nbdkit qcow2 IMG OPTS --run RUNCMD
# (default: true); the exit status is nbdkit's, stderr goes to LOG.
plug ()
{
  local log=$1 img=$2 opts=(); shift 2
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
  [ $# -eq 0 ] || shift
  timeout 120 "$NBDKIT" -U - qcow2 "$img" "${opts[@]}" --run "${1:-true}" \
    2>"$log"
}
# maint WHAT IMG OPTS...: run the maintenance options; must succeed
maint ()
{
  local what=$1; shift
  if plug "$T/maint.log" "$@"; then
    ok "$what: nbdkit ${*:2} started"
  else
    bad "$what: nbdkit ${*:2} failed: $(tail -n 3 "$T/maint.log")"
  fi
}
# served IMG EXPORT OUT [OPTS...]: what nbdkit -r serves as EXPORT
served ()
{
  local img=$1 exp=$2 out=$3; shift 3
  rm -f "$out"
  QC_URI_EXPORT=$exp QC_OUT=$out timeout 120 "$NBDKIT" -r -U - qcow2 "$img" "$@" \
    --run 'nbdcopy "nbd+unix:///$QC_URI_EXPORT?socket=$unixsocket" "$QC_OUT"' \
    2>"$T/served.log" ||
    bad "$img: reading export '$exp' failed: $(tail -n 2 "$T/served.log")"
}
# same A B WHAT
same ()
{
  if cmp -s "$1" "$2"; then ok "$3"
  else bad "$3: $(cmp "$1" "$2" 2>&1 | head -n 1)"; fi
}
# report CMD...: CMD prints "ok: ..." / "FAIL: ..." lines: count them
report ()
{
  local line
  "$@" > "$T/report.out" 2>&1 || bad "$*: exit status $?: $(tail -n 2 "$T/report.out")"
  while IFS= read -r line; do
    case $line in
      ok:*) echo "$line" ;;
      FAIL:*) bad "${line#FAIL: }" ;;
      *) echo "$line" ;;
    esac
  done < "$T/report.out"
}
# qcheck IMG WHAT [WANT]: qemu-img check exits WANT (default 0)
qcheck ()
{
  local rc=0
  qemu-img check "$1" >"$T/check.out" 2>&1 || rc=$?
  if [ "$rc" -eq "${3:-0}" ]; then
    ok "$2: qemu-img check exit $rc"
  else
    bad "$2: qemu-img check exit $rc, want ${3:-0}: $(grep -m 3 -E 'ERROR|Leaked|error' "$T/check.out" | tr '\n' ';')"
  fi
}
# names IMG: "ID:NAME ..." as qemu-img info lists them
names ()
{
  qemu-img info -U --output=json "$1" |
    json '" ".join("%s:%s" % (s["id"], s["name"]) for s in d.get("snapshots", []))'
}
# vsize IMG: qemu-img info's virtual size
vsize () { qemu-img info -U --output=json "$1" | json 'd["virtual-size"]'; }
# nsize IMG [EXPORT]: the export's size as served
nsize ()
{
  QC_URI_EXPORT=${2:-} "$NBDKIT" -r -U - qcow2 "$1" \
    --run 'nbdinfo --size "nbd+unix:///$QC_URI_EXPORT?socket=$unixsocket"' 2>/dev/null
}

# ------------------------------------------------ 1. snapshots we create

# Writes, per phase: P1 before the first snapshot (qemu-io), P2 between
# the two (qemu-io), P3 through nbdkit right after the second was taken
# in the same session (qemu-io over NBD, also replayed on a raw copy).
P1=("write -P 0x11 0 256k" "write -P 0x12 3M 200k" "write -P 0x13 8389120 70k"
    "write -z 12M 128k" "write -P 0x14 15M 192k")
P2=("write -P 0x31 128k 256k" "discard 3M 64k" "write -z 8M 4k"
    "write -P 0x32 15M 100k")
P3=("write -P 0x41 0 4k" "write -P 0x42 100k 100k" "write -z 3149824 8k"
    "write -P 0x43 9M 128k")
PC=("write -c -P 0x21 4M 64k" "write -c -P 0x22 4259840 64k"
    "write -c -P 0x23 5M 128k")        # compressed
PCW=("write -P 0x24 4195304 3000")     # partial write over a compressed cluster

part1 ()
{
  local v=$1 create=$2 img t0 t1 s
  img=$T/p1-$v.qcow2
  echo "== 1. $v: snapshot-create ($create) [${SECONDS}s]"
  t0=$(date +%s)
  rm -f "$img"
  # shellcheck disable=SC2086
  qemu-img create -q -f qcow2 $create "$img" 16M
  if [ "$v" = backing ]; then
    qemu-img create -q -f qcow2 "$T/p1-base.qcow2" 16M
    qio "$T/p1-base.qcow2" qcow2 "write -P 0x55 0 6M" "write -P 0x56 10M 2M"
    qemu-img rebase -u -F qcow2 -b "$T/p1-base.qcow2" "$img"
    cp "$T/p1-base.qcow2" "$T/p1-base.orig"
  fi
  qio "$img" qcow2 "${P1[@]}"
  [ "$v" != compressed ] || qio "$img" qcow2 "${PC[@]}"
  qraw "$img" "$T/a.raw"

  maint "$v" "$img" snapshot-create=sA
  qcheck "$img" "$v: after snapshot-create=sA"

  qio "$img" qcow2 "${P2[@]}"
  [ "$v" != compressed ] || qio "$img" qcow2 "${PCW[@]}"
  qraw "$img" "$T/b.raw"
  cp "$T/b.raw" "$T/c-want.raw"
  qio "$T/c-want.raw" raw "${P3[@]}"

  # snapshot-create=sB, then write through the server in the same session
  local p3=""
  for s in "${P3[@]}"; do p3+=" -c '$s'"; done
  if plug "$T/p3.log" "$img" snapshot-create=sB -- \
       "qemu-io -f raw \"\$uri\" $p3 >/dev/null"; then
    ok "$v: snapshot-create=sB, then writes through nbdkit"
  else
    bad "$v: snapshot-create=sB + writes failed: $(tail -n 3 "$T/p3.log")"
  fi
  t1=$(date +%s)
  qcheck "$img" "$v: after snapshot-create=sB and writes"

  # listed by qemu: names, IDs, dates; disk size in the extra data
  report qc listing "$img" "1:sA 2:sB" "$t0" "$t1" $((16 * M)) "$v: "
  # contents: qemu's two ways, ours, and the active image
  qsnapl "$img" sA "$T/x.raw"; same "$T/a.raw" "$T/x.raw" "$v: convert -l sA = content when taken"
  qsnapl "$img" sB "$T/x.raw"; same "$T/b.raw" "$T/x.raw" "$v: convert -l sB = content when taken"
  qsnap "$img" sA "$T/x.raw"; same "$T/a.raw" "$T/x.raw" "$v: snapshot -a sA on a copy"
  qsnap "$img" sB "$T/x.raw"; same "$T/b.raw" "$T/x.raw" "$v: snapshot -a sB on a copy"
  served "$img" sA "$T/x.raw"; same "$T/a.raw" "$T/x.raw" "$v: export sA"
  served "$img" sB "$T/x.raw"; same "$T/b.raw" "$T/x.raw" "$v: export sB"
  qraw "$img" "$T/x.raw"; same "$T/c-want.raw" "$T/x.raw" "$v: active image = writes after sB"
  if [ "$v" = backing ]; then
    cmp -s "$T/p1-base.qcow2" "$T/p1-base.orig" && ok "$v: backing file untouched" ||
      bad "$v: the backing file changed"
  fi
  # and qemu can go on using them: delete sA, write, the rest still reads
  qemu-img snapshot -d sA "$img" && qio "$img" qcow2 "write -P 0x77 0 512k" ||
    bad "$v: qemu could not delete sA / write"
  qcheck "$img" "$v: after qemu deleted sA and wrote"
  qsnapl "$img" sB "$T/x.raw"; same "$T/b.raw" "$T/x.raw" "$v: sB intact after qemu's changes"
  # no false alarm: check=on on this clean image finds nothing and
  # serves it writable; repair=all leaves it clean, data unchanged
  qraw "$img" "$T/a.raw"
  plug "$T/c.log" "$img" check=on -- 'nbdinfo --can write "$uri"' &&
    ! grep -qi corrupt "$T/c.log" &&
    ok "$v: check=on on a clean image: nothing found, writable" ||
    bad "$v: check=on on a clean image: $(cat "$T/c.log")"
  maint "$v: repair=all" "$img" repair=all
  qcheck "$img" "$v: repair=all on a clean image"
  qraw "$img" "$T/x.raw"; same "$T/a.raw" "$T/x.raw" "$v: repair=all kept the data"
  qsnapl "$img" sB "$T/x.raw"; same "$T/b.raw" "$T/x.raw" "$v: repair=all kept sB"
}

part1 c64k    "-o cluster_size=64k"
part1 c512    "-o cluster_size=512"
part1 rc64    "-o refcount_bits=64"
part1 extl2   "-o extended_l2=on"
part1 compressed "-o cluster_size=64k"
part1 backing "-o cluster_size=64k"
part1 v2      "-o compat=0.10"

# --------------------------------------- 2. qemu's snapshots: apply, delete

echo "== 2. qemu's snapshots: snapshot-apply, snapshot-delete, resize [${SECONDS}s]"
img=$T/p2.qcow2
qemu-img create -q -f qcow2 "$img" 32M
qio "$img" qcow2 "write -P 1 0 1M" "write -P 2 30M 2M" "write -c -P 3 8M 64k"
qemu-img snapshot -c small "$img"
qemu-img resize -q "$img" 64M
qio "$img" qcow2 "write -P 4 0 64k" "write -P 5 50M 1M" "write -z 30M 1M"
qemu-img snapshot -c big "$img"
qio "$img" qcow2 "write -P 6 51M 2M" "discard 0 512k" "write -P 7 31M 4k"
cp "$img" "$T/p2.orig"
qsnap "$img" small "$T/small.raw"
qsnap "$img" big "$T/big.raw"
qraw "$img" "$T/p2-active.raw"

maint "apply small" "$img" snapshot-apply=small
qcheck "$img" "apply small"
cp "$T/p2.orig" "$T/p2-qemu.qcow2"
qemu-img snapshot -a small "$T/p2-qemu.qcow2"
qraw "$T/p2-qemu.qcow2" "$T/want.raw"
served "$img" "" "$T/x.raw"
same "$T/want.raw" "$T/x.raw" "apply small: served = qemu's snapshot -a small"
same "$T/small.raw" "$T/x.raw" "apply small: served = snapshot as taken"
s=$(vsize "$img"); [ "$s" = $((32 * M)) ] && ok "apply small: qemu-img info virtual size $s" ||
  bad "apply small: virtual size $s, want $((32 * M))"
s=$(nsize "$img"); [ "$s" = $((32 * M)) ] && ok "apply small: export size $s" ||
  bad "apply small: export size $s, want $((32 * M))"
qsnap "$img" big "$T/x.raw"; same "$T/big.raw" "$T/x.raw" "apply small: big still reads the same (qemu)"
served "$img" big "$T/x.raw"; same "$T/big.raw" "$T/x.raw" "apply small: export big"
s=$(names "$img"); [ "$s" = "1:small 2:big" ] && ok "apply small: snapshots kept" ||
  bad "apply small: snapshots '$s'"

maint "apply big" "$img" snapshot-apply=big
qcheck "$img" "apply big"
served "$img" "" "$T/x.raw"; same "$T/big.raw" "$T/x.raw" "apply big (grows back): served content"
s=$(vsize "$img"); [ "$s" = $((64 * M)) ] && ok "apply big: virtual size $s" ||
  bad "apply big: virtual size $s, want $((64 * M))"
s=$(nsize "$img"); [ "$s" = $((64 * M)) ] && ok "apply big: export size $s" ||
  bad "apply big: export size $s"

maint "delete small" "$img" snapshot-delete=small
qcheck "$img" "delete small"
s=$(names "$img"); [ "$s" = "2:big" ] && ok "delete small: qemu lists $s" ||
  bad "delete small: qemu lists '$s', want '2:big'"
qraw "$img" "$T/x.raw"; same "$T/big.raw" "$T/x.raw" "delete small: active unchanged"
qsnap "$img" big "$T/x.raw"; same "$T/big.raw" "$T/x.raw" "delete small: big intact"
# the active image still shares everything with big: a write must COW
plug "$T/w.log" "$img" -- 'qemu-io -f raw "$uri" -c "write -P 9 0 3M" >/dev/null' ||
  bad "delete small: write failed: $(tail -n 2 "$T/w.log")"
qcheck "$img" "delete small, then writes"
qsnap "$img" big "$T/x.raw"; same "$T/big.raw" "$T/x.raw" "big intact after writes"

# the same deletions in the original (qemu's order): delete big on a
# copy where the active image is the post-resize one
cp "$T/p2.orig" "$img"
maint "delete big (active image shares with it)" "$img" snapshot-delete=big
qcheck "$img" "delete big"
qraw "$img" "$T/x.raw"; same "$T/p2-active.raw" "$T/x.raw" "delete big: active unchanged"
qsnap "$img" small "$T/x.raw"; same "$T/small.raw" "$T/x.raw" "delete big: small intact"
maint "delete small (last one)" "$img" snapshot-delete=small
qcheck "$img" "delete the last snapshot"
s=$(qc header "$img" | json '(d["nb_snap"], d["snap_off"])')
[ "$s" = "(0, 0)" ] && ok "no snapshot left: nb_snapshots=0, offset 0" ||
  bad "after deleting every snapshot: (nb_snapshots, snapshots_offset) = $s"
qraw "$img" "$T/x.raw"; same "$T/p2-active.raw" "$T/x.raw" "delete all: active unchanged"
s=$(nsize "$img" small || :); [ -z "$s" ] && ok "export 'small' gone" ||
  bad "export 'small' still served ($s bytes)"

# -------------------------------------- 3. several operations, in order

echo "== 3. several operations on one command line [${SECONDS}s]"
img=$T/p3.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qio "$img" qcow2 "write -P 1 0 2M"
qemu-img snapshot -c b "$img"
qio "$img" qcow2 "write -P 2 1M 2M" "write -c -P 3 6M 64k"
qemu-img snapshot -c c "$img"
qio "$img" qcow2 "write -P 4 512k 1M" "write -z 6M 64k"
cp "$img" "$T/p3.orig"

# seq3 WHAT OPS...: OPS as create=NAME/delete=NAME/apply=NAME, by us and
# by qemu-img on a copy; compare the results
seq3 ()
{
  local what=$1 o ours=() q=$T/p3-qemu.qcow2 n; shift
  cp "$T/p3.orig" "$img"; cp "$T/p3.orig" "$q"
  for o in "$@"; do
    ours+=("snapshot-$o")
    case $o in
      create=*) qemu-img snapshot -c "${o#*=}" "$q" ;;
      delete=*) qemu-img snapshot -d "${o#*=}" "$q" ;;
      apply=*) qemu-img snapshot -a "${o#*=}" "$q" ;;
    esac
  done
  maint "$what" "$img" "${ours[@]}"
  qcheck "$img" "$what"
  local sq so
  sq=$(names "$q") so=$(names "$img")
  [ "$sq" = "$so" ] && ok "$what: snapshots '$so' as with qemu-img" ||
    bad "$what: snapshots '$so', qemu-img gives '$sq'"
  sq=$(qc snaps "$q" | json '[x.get("disk_size") for x in d]')
  so=$(qc snaps "$img" | json '[x.get("disk_size") for x in d]')
  [ "$sq" = "$so" ] || bad "$what: snapshot disk sizes $so, qemu-img's $sq"
  qraw "$q" "$T/want.raw"
  served "$img" "" "$T/x.raw"; same "$T/want.raw" "$T/x.raw" "$what: active image"
  for n in $(names "$q"); do
    n=${n#*:}
    # (every snapshot here has the active image's size: convert -l is exact)
    qsnapl "$q" "$n" "$T/want.raw"
    qsnapl "$img" "$n" "$T/x.raw"; same "$T/want.raw" "$T/x.raw" "$what: snapshot $n"
  done
}
seq3 "create=a delete=b apply=a" create=a delete=b apply=a
seq3 "apply=c create=d delete=c create=e apply=d" \
     apply=c create=d delete=c create=e apply=d
seq3 "delete=b delete=c create=b apply=b" delete=b delete=c create=b apply=b
seq3 "apply by ID (apply=1 create=x apply=2)" apply=1 create=x apply=2

# an operation that fails stops the server before serving
cp "$T/p3.orig" "$img"
if plug "$T/e.log" "$img" snapshot-create=b; then
  bad "snapshot-create=b (exists) was accepted"
else
  grep -q "exists" "$T/e.log" && ok "snapshot-create of an existing name refused: $(head -n 1 "$T/e.log")" ||
    bad "snapshot-create=b (exists): unclear message: $(cat "$T/e.log")"
  cmp -s "$img" "$T/p3.orig" && ok "refused create: file unchanged" ||
    bad "refused snapshot-create=b changed the file"
fi
if plug "$T/e.log" "$img" snapshot-create=z snapshot-apply=nosuch snapshot-delete=b; then
  bad "snapshot-apply=nosuch was accepted"
else
  grep -q "nosuch" "$T/e.log" && ok "snapshot-apply=nosuch refused: $(head -n 1 "$T/e.log")" ||
    bad "snapshot-apply=nosuch: unclear message: $(cat "$T/e.log")"
  qcheck "$img" "after a failed operation list"
  # All or nothing: the operations are validated before the first one
  # runs, so create=z before the failing apply is not done either.
  s=$(names "$img")
  [ "$s" = "1:b 2:c" ] && ok "no operation done when one is refused: $s" ||
    bad "after create=z apply=nosuch delete=b: snapshots '$s', want '1:b 2:c'"
  cmp -s "$img" "$T/p3.orig" && ok "refused operation list: file unchanged" ||
    bad "refused create=z apply=nosuch delete=b changed the file"
fi
if plug "$T/e.log" "$img" snapshot-delete=nosuch; then
  bad "snapshot-delete=nosuch was accepted"
else
  ok "snapshot-delete=nosuch refused: $(head -n 1 "$T/e.log")"
fi

# ------------------------------------------------- 4. refcount overflow

echo "== 4. refcount_bits=2: overflow [${SECONDS}s]"
img=$T/p4.qcow2
qemu-img create -q -f qcow2 -o refcount_bits=2 "$img" 16M
qio "$img" qcow2 "write -P 1 0 2M" "write -c -P 2 4M 64k"
qemu-img snapshot -c q1 "$img"
qemu-img snapshot -c q2 "$img"
cp "$img" "$T/p4.orig"
if plug "$T/e.log" "$img" snapshot-create=q3; then
  bad "refcount_bits=2 with 3 references: snapshot-create=q3 succeeded"
else
  if grep -q "refcount" "$T/e.log" && grep -qE "amend|refcount_bits|delete" "$T/e.log"; then
    ok "overflow refused: $(grep -m 1 refcount "$T/e.log")"
  else
    bad "overflow: message does not say what to do: $(cat "$T/e.log")"
  fi
fi
cmp -s "$img" "$T/p4.orig" && ok "overflow: file byte-identical" ||
  bad "refused snapshot-create changed the file ($(cmp "$img" "$T/p4.orig" 2>&1))"
# apply needs one more reference too, as in qemu (which refuses it as well)
if plug "$T/e.log" "$img" snapshot-apply=q1; then
  bad "refcount_bits=2: snapshot-apply=q1 succeeded (qemu refuses it)"
else
  ok "apply overflow refused: $(head -n 1 "$T/e.log")"
fi
cmp -s "$img" "$T/p4.orig" && ok "apply overflow: file byte-identical" ||
  bad "refused snapshot-apply changed the file"
# deleting one makes room, in the same command line
maint "delete q1 then create q3" "$img" snapshot-delete=q1 snapshot-create=q3
qcheck "$img" "refcount_bits=2 after delete+create"
s=$(names "$img"); [ "$s" = "2:q2 3:q3" ] && ok "refcount_bits=2: $s" ||
  bad "refcount_bits=2: snapshots '$s', want '2:q2 3:q3'"
qsnapl "$T/p4.orig" q1 "$T/want.raw"
qsnapl "$img" q3 "$T/x.raw"; same "$T/want.raw" "$T/x.raw" "refcount_bits=2: q3 content"

# ------------------------------------------- 5. snapshot, write, apply

echo "== 5. workflow: snapshot, write through nbdkit, apply [${SECONDS}s]"
img=$T/p5.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qio "$img" qcow2 "write -P 1 0 4M" "write -c -P 2 8M 1M" "write -P 3 12M 3M"
qraw "$img" "$T/before.raw"
if plug "$T/w.log" "$img" snapshot-create=before -- \
     "$PYTHON $randomops $seed 200 \"\$uri\" >/dev/null"; then
  ok "snapshot-create=before + 200 random writes/zeroes/trims"
else
  bad "workflow writes failed: $(tail -n 3 "$T/w.log")"
fi
qcheck "$img" "workflow: after the writes"
qraw "$img" "$T/x.raw"
cmp -s "$T/before.raw" "$T/x.raw" && bad "workflow: the writes changed nothing?" || :
qsnapl "$img" before "$T/x.raw"; same "$T/before.raw" "$T/x.raw" "workflow: snapshot intact after writes"
# a second session of writes, without options
plug "$T/w.log" "$img" -- "$PYTHON $randomops $((seed + 1)) 100 \"\$uri\" >/dev/null" ||
  bad "workflow: second session failed: $(tail -n 3 "$T/w.log")"
maint "workflow: apply" "$img" snapshot-apply=before
qcheck "$img" "workflow: after apply"
served "$img" "" "$T/x.raw"; same "$T/before.raw" "$T/x.raw" "workflow: content back to the snapshot's"

# ----------------------- 6. snapshot exports under heavy writes

echo "== 6. snapshot exports while the active image is hammered [${SECONDS}s]"
cat > "$T/reader.py" <<'EOF'
# reader.py SOCK STOPFILE NAME RAW [NAME RAW...]: read the exports again
# and again (new connection each pass) until STOPFILE exists, comparing
# with RAW; at least 2 passes.
import os, random, sys
import nbd
sock, stop, args = sys.argv[1], sys.argv[2], sys.argv[3:]
refs = [(args[i], open(args[i + 1], "rb").read()) for i in range(0, len(args), 2)]
rng = random.Random(len(args))
passes = 0
while True:
    for name, ref in refs:
        h = nbd.NBD()
        h.set_export_name(name)
        h.connect_unix(sock)
        if h.get_size() != len(ref):
            sys.exit("%s: size %d, want %d" % (name, h.get_size(), len(ref)))
        if not h.is_read_only():
            sys.exit("%s: not read-only" % name)
        off = 0
        while off < len(ref):
            n = min(rng.choice([4096, 65536 + 512, 1 << 20]), len(ref) - off)
            got = h.pread(n, off)
            if got != ref[off:off + n]:
                k = next(k for k in range(n) if got[k] != ref[off + k])
                sys.exit("pass %d: export %s differs at %d" % (passes, name, off + k))
            off += n
        h.shutdown()
    passes += 1
    if passes >= 2 and os.path.exists(stop):
        break
print("%d passes over %d snapshots" % (passes, len(refs)))
EOF
img=$T/p6.qcow2
qemu-img create -q -f qcow2 "$img" 32M
qio "$img" qcow2 "write -P 1 0 8M" "write -c -P 2 8M 2M" "write -P 3 16M 8M"
qemu-img snapshot -c qs "$img"
qio "$img" qcow2 "write -P 4 4M 8M" "write -z 20M 1M"
maint "hammer: ours" "$img" snapshot-create=ours
qio "$img" qcow2 "write -P 5 0 1M"
qsnapl "$img" qs "$T/qs.raw"
qsnapl "$img" ours "$T/ours.raw"
start_nbdkit sock6 qcow2 "$img"
uri6=$(nbd_uri "$sock6")
rm -f "$T/stop"
"$PYTHON" "$T/reader.py" "$sock6" "$T/stop" qs "$T/qs.raw" ours "$T/ours.raw" \
  >"$T/r1.out" 2>&1 & rpid1=$!
"$PYTHON" "$T/reader.py" "$sock6" "$T/stop" ours "$T/ours.raw" qs "$T/qs.raw" \
  >"$T/r2.out" 2>&1 & rpid2=$!
"$PYTHON" "$randomops" $((seed + 2)) 400 "$uri6" >"$T/w1.out" 2>&1 & wpid1=$!
"$PYTHON" "$randomops" $((seed + 3)) 400 "$uri6" >"$T/w2.out" 2>&1 & wpid2=$!
wait $wpid1 && ok "hammer: writer 1: $(cat "$T/w1.out")" || bad "hammer: writer 1: $(tail -n 2 "$T/w1.out")"
wait $wpid2 && ok "hammer: writer 2: $(cat "$T/w2.out")" || bad "hammer: writer 2: $(tail -n 2 "$T/w2.out")"
touch "$T/stop"
wait $rpid1 && ok "hammer: reader 1: $(cat "$T/r1.out")" || bad "hammer: reader 1: $(tail -n 2 "$T/r1.out")"
wait $rpid2 && ok "hammer: reader 2: $(cat "$T/r2.out")" || bad "hammer: reader 2: $(tail -n 2 "$T/r2.out")"
rm -f "$T/act-nbd.raw"
nbdcopy "$uri6" "$T/act-nbd.raw"
pid6=$(cat "${sock6%.sock}.pid")
kill "$pid6"
for _ in $(seq 300); do kill -0 "$pid6" 2>/dev/null || break; sleep 0.1; done
qcheck "$img" "hammer: after stopping nbdkit"
qraw "$img" "$T/x.raw"; same "$T/act-nbd.raw" "$T/x.raw" "hammer: active image as served = qemu's view"
qsnapl "$img" qs "$T/x.raw"; same "$T/qs.raw" "$T/x.raw" "hammer: snapshot qs intact (qemu)"
qsnapl "$img" ours "$T/x.raw"; same "$T/ours.raw" "$T/x.raw" "hammer: snapshot ours intact (qemu)"
if grep -q "error" "${sock6%.sock}.log"; then
  bad "hammer: nbdkit logged errors: $(grep -m 3 error "${sock6%.sock}.log")"
fi

# ------------------------------------------------------------ 7. repair

echo "== 7a. leaks: repair=leaks [${SECONDS}s]"
img=$T/p7a.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qio "$img" qcow2 "write -P 1 0 2M" "write -P 2 4M 1M"
# a cluster freed inside the file (discard) and one appended to it,
# both given refcount 1: two leaks
host=$(qemu-img map --output=json "$img" | json '[e["offset"] for e in d if e["data"]][0]')
qio "$img" qcow2 "discard 64k 64k"
end=$(stat -c %s "$img")
end=$(( (end + 64 * K - 1) / (64 * K) * 64 * K ))
truncate -s $((end + 64 * K)) "$img"
qc rc-set "$img" $((host + 64 * K)) 1
qc rc-set "$img" "$end" 1
qcheck "$img" "hand-made leaks" 3
qraw "$img" "$T/pre.raw"
cp "$img" "$T/p7a.orig"
plug "$T/c.log" "$img" check=on -- 'nbdinfo --can write "$uri"' &&
  ok "check=on, leaks only: served writable" ||
  bad "check=on with leaks only: not served writable: $(tail -n 2 "$T/c.log")"
cmp -s "$img" "$T/p7a.orig" && ok "check=on alone left the file unchanged" ||
  bad "check=on (no repair) changed the file"
maint "repair=leaks" "$img" repair=leaks
qcheck "$img" "after repair=leaks"
qraw "$img" "$T/x.raw"; same "$T/pre.raw" "$T/x.raw" "repair=leaks: data intact"

echo "== 7a'. leaks left by kill -9 during writes [${SECONDS}s]"
img=$T/p7k.qcow2
qemu-img create -q -f qcow2 "$img" 32M
qio "$img" qcow2 "write -P 1 0 4M"
qemu-img snapshot -c k "$img"
qsnapl "$img" k "$T/k.raw"
start_nbdkit sockk qcow2 "$img"
"$PYTHON" "$randomops" $((seed + 4)) 100000 "$(nbd_uri "$sockk")" >/dev/null 2>&1 & wk=$!
sleep 0.7
kill -9 "$(cat "${sockk%.sock}.pid")"
wait $wk 2>/dev/null || :
for _ in $(seq 50); do qemu-img info "$img" >/dev/null 2>&1 && break; sleep 0.1; done
rc=0; qemu-img check "$img" >"$T/check.out" 2>&1 || rc=$?
case $rc in
  0|3) ok "kill -9: qemu-img check exit $rc ($(grep -c Leaked "$T/check.out") leaked clusters)" ;;
  *) bad "kill -9: qemu-img check exit $rc: $(grep -m 3 ERROR "$T/check.out")" ;;
esac
qraw "$img" "$T/pre.raw"
maint "kill -9: repair=leaks" "$img" repair=leaks
qcheck "$img" "kill -9: after repair=leaks"
qraw "$img" "$T/x.raw"; same "$T/pre.raw" "$T/x.raw" "kill -9: repair=leaks kept the data"
qsnapl "$img" k "$T/x.raw"; same "$T/k.raw" "$T/x.raw" "kill -9: snapshot k intact"

echo "== 7b. dirty image with lazy refcounts [${SECONDS}s]"
img=$T/p7b.qcow2
qemu-img create -q -f qcow2 -o lazy_refcounts=on "$img" 16M
qio "$img" qcow2 "write -P 1 0 1M"
qemu-img snapshot -c lz "$img"
(qemu-io -f qcow2 "$img" -c "write -P 2 512k 2M" -c "write -P 3 8M 1M" -c abort \
  >/dev/null 2>&1 || :; :) 2>/dev/null
s=$(qc header "$img" | json 'd["incompat"] & 1')
[ "$s" = 1 ] && ok "lazy refcounts: image left dirty" || bad "lazy: image not dirty ($s)"
rc=0; qemu-img check "$img" >/dev/null 2>&1 || rc=$?
[ "$rc" -ne 0 ] && ok "lazy: qemu-img check before: exit $rc" || bad "lazy: dirty image checks clean?"
qraw "$img" "$T/pre.raw"
cp "$T/pre.raw" "$T/want.raw"
qio "$T/want.raw" raw "write -P 4 3M 100k"
qsnapl "$img" lz "$T/lz.raw"
if plug "$T/w.log" "$img" -- 'nbdinfo --can write "$uri" && qemu-io -f raw "$uri" -c "write -P 4 3M 100k" >/dev/null'; then
  ok "lazy: served read-write, written"
else
  bad "lazy: not served read-write / write failed: $(tail -n 3 "$T/w.log")"
fi
qcheck "$img" "lazy: after serving read-write"
s=$(qc header "$img" | json 'd["incompat"] & 1')
[ "$s" = 0 ] && ok "lazy: dirty bit cleared" || bad "lazy: dirty bit still set"
qraw "$img" "$T/x.raw"; same "$T/want.raw" "$T/x.raw" "lazy: content = before + the write"
qsnapl "$img" lz "$T/x.raw"; same "$T/lz.raw" "$T/x.raw" "lazy: snapshot intact"

echo "== 7c. corrupted refcounts: check=on, repair=all [${SECONDS}s]"
img=$T/p7c.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qio "$img" qcow2 "write -P 1 0 2M" "write -P 2 4M 1M"
qemu-img snapshot -c cs "$img"
qio "$img" qcow2 "write -P 3 4M 64k"
qraw "$img" "$T/pre.raw"
qsnapl "$img" cs "$T/cs.raw"
# a cluster used once (refcount 1 -> 0) and one shared with the
# snapshot (refcount 2 -> 1)
once=$(qemu-img map --output=json "$img" | json '[e["offset"] for e in d if e["data"] and e["start"] == 4*1024*1024][0]')
shared=$(qemu-img map --output=json "$img" | json '[e["offset"] for e in d if e["data"] and e["start"] == 0][0]')
[ "$(qc rc-get "$img" "$once")" = 1 ] && [ "$(qc rc-get "$img" "$shared")" = 2 ] ||
  fail "7c setup: unexpected refcounts"
qc rc-set "$img" "$once" 0
qc rc-set "$img" "$shared" 1
qcheck "$img" "hand-corrupted refcounts" 2
cp "$img" "$T/p7c.orig"

cat > "$T/trywrite.py" <<'EOF'
import errno, sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
ro = h.is_read_only()
try:
    h.pwrite(b"\xee" * 65536, 8 << 20)
    print("written (read-only flag %s)" % ro)
    sys.exit(1)
except nbd.Error as e:
    if e.errnum not in (errno.EPERM, errno.EROFS):
        print("write failed with %s" % e)
        sys.exit(1)
    print("write refused: %s" % errno.errorcode[e.errnum])
EOF
# ro_check WHAT OPTS...: the image must be served read-only, the
# corruption logged and the file untouched
ro_check ()
{
  local what=$1; shift
  cp "$T/p7c.orig" "$img"
  if plug "$T/c.log" "$img" "$@" -- \
       "nbdinfo --can write \"\$uri\"; echo can-write=\$?; $PYTHON $T/trywrite.py \"\$uri\"" \
       >"$T/c.out"; then :; fi
  if grep -q "can-write=0" "$T/c.out"; then
    bad "$what: served writable despite the corruption ($(tail -n 1 "$T/c.out"))"
  elif grep -q "can-write=" "$T/c.out"; then
    ok "$what: nbdinfo --can write false; $(tail -n 1 "$T/c.out")"
  else
    # refusing to start is as good (for snapshot operations)
    ok "$what: refused to start: $(grep -m 1 error "$T/c.log")"
  fi
  grep -qi "corrupt" "$T/c.log" && ok "$what: corruption logged: $(grep -m 1 -i corrupt "$T/c.log")" ||
    bad "$what: no corruption message: $(cat "$T/c.log")"
  cmp -s "$img" "$T/p7c.orig" && ok "$what: file untouched" ||
    bad "$what: the corrupted image was modified ($(qemu-img check "$img" 2>&1 | grep -m 2 ERROR | tr '\n' ';'))"
}
ro_check "check=on" check=on
ro_check "repair=leaks on a corrupted image" repair=leaks
ro_check "check=on snapshot-create=x on a corrupted image" check=on snapshot-create=x

cp "$T/p7c.orig" "$img"
maint "repair=all" "$img" repair=all
qcheck "$img" "after repair=all"
qraw "$img" "$T/x.raw"; same "$T/pre.raw" "$T/x.raw" "repair=all: data intact"
qsnapl "$img" cs "$T/x.raw"; same "$T/cs.raw" "$T/x.raw" "repair=all: snapshot intact"
[ "$(qc rc-get "$img" "$shared")" = 2 ] && ok "repair=all: shared cluster's refcount back to 2" ||
  bad "repair=all: shared cluster's refcount $(qc rc-get "$img" "$shared")"
# writes after the repair must copy the shared cluster
plug "$T/w.log" "$img" -- 'qemu-io -f raw "$uri" -c "write -P 9 0 4k" >/dev/null' ||
  bad "repair=all: write failed: $(tail -n 2 "$T/w.log")"
qcheck "$img" "repair=all, then writes"
qsnapl "$img" cs "$T/x.raw"; same "$T/cs.raw" "$T/x.raw" "repair=all, then writes: snapshot intact"
cp "$T/p7c.orig" "$img"
maint "check=on repair=all snapshot-create=after" "$img" check=on repair=all snapshot-create=after
qcheck "$img" "check+repair+create"
qsnapl "$img" after "$T/x.raw"; same "$T/pre.raw" "$T/x.raw" "repair then create: new snapshot = data"

echo "== 7d. a COPIED flag on a cluster shared with a snapshot [${SECONDS}s]"
img=$T/p7d.qcow2
qemu-img create -q -f qcow2 "$img" 16M
qio "$img" qcow2 "write -P 1 0 1M"
qemu-img snapshot -c s "$img"
qsnapl "$img" s "$T/s.raw"
qc l2-or "$img" 0 0x8000000000000000
qcheck "$img" "COPIED on a shared cluster" 2
cp "$img" "$T/p7d.orig"
if plug "$T/c.log" "$img" check=on -- \
     "nbdinfo --can write \"\$uri\"; echo can-write=\$?; $PYTHON $T/trywrite.py \"\$uri\"; qemu-io -f raw \"\$uri\" -c 'write -P 9 0 4k' >/dev/null 2>&1" \
     >"$T/c.out"; then :; fi
grep -q "can-write=0" "$T/c.out" &&
  bad "check=on: a COPIED flag on a shared cluster (qemu-img check: ERROR OFLAG_COPIED) is not detected: served writable" ||
  ok "check=on: wrong COPIED flag detected, read-only"
qsnapl "$img" s "$T/x.raw"; same "$T/s.raw" "$T/x.raw" "check=on + wrong COPIED: snapshot s intact"
cp "$T/p7d.orig" "$img"
maint "repair=all (COPIED)" "$img" repair=all
qcheck "$img" "repair=all fixed the COPIED flag"
plug "$T/w.log" "$img" -- 'qemu-io -f raw "$uri" -c "write -P 9 0 4k" >/dev/null' || :
qsnapl "$img" s "$T/x.raw"; same "$T/s.raw" "$T/x.raw" "repair=all (COPIED), then a write: snapshot intact"

# -------------------------------------------------------------- summary

echo "${#failures[@]} failures [${SECONDS}s]"
if [ "${#failures[@]}" -gt 0 ]; then
  printf '  %s\n' "${failures[@]}" >&2
  fail "${#failures[@]} checks failed"
fi
