#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The safety net over damaged refcounts: in images made by qemu-img, the
# refcount of one structure at a time (the header, the active L1 and L2
# tables, a snapshot's L1 and L2 tables and data, the refcount table and
# a block, the snapshot table, bitmaps, the LUKS header) is set to 0, or
# a shared cluster's refcount to 1, or the active image's L1 or L2 entry
# of a cluster shared with snapshots is flagged "not shared" (COPIED);
# then writes go through the plugin
# and through the qcow2 filter.  QEMU judges: every snapshot reads as
# before, the active disk has every acknowledged write and is unchanged
# elsewhere, qemu-img check finds no error that was not there before.
# Where the guard refused a write, the image is marked corrupt and the
# log names the structure.  A control run with overlap-check=off shows
# that the same writes do damage the image without the net.
. "${srcdir:-.}/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires $PYTHON -c 'import nbd'

srcdir=$(cd "${srcdir:-.}" && pwd)
damage="$PYTHON $srcdir/qcow2-damage.py"
net="$PYTHON $srcdir/safety-net.py"
cd "$tmpdir"

secret=--object=secret,id=s0,data=pw
# img_opts IMAGE: qemu's --image-opts for IMAGE (LUKS images need the key).
img_opts ()
{
  case "$1" in
  luks*) echo "driver=qcow2,file.filename=$1,encrypt.key-secret=s0" ;;
  *) echo "driver=qcow2,file.filename=$1" ;;
  esac
}
# to_raw IMAGE OUT [SNAPSHOT]: the disk (or a snapshot) as qemu reads it.
to_raw ()
{
  qemu-img convert $secret ${3:+-l "$3"} --image-opts "$(img_opts "$1")" \
    -O raw "$2"
}
# check_errors IMAGE: how many errors qemu-img check reports.
check_errors ()
{
  local out
  out=$(qemu-img check $secret --image-opts "$(img_opts "$1")" 2>&1 || :)
  echo "$out" | sed -n 's/^\([0-9]*\) errors were found.*/\1/p' | grep . ||
    echo 0
}
io ()
{
  local img="$1"; shift
  qemu-io $secret --image-opts "$(img_opts "$img")" "$@" >/dev/null
}

# The plain base image: data, snapshot snap1, data that only snap1 keeps
# (copied on write afterwards), a persistent bitmap with a dirty bit,
# then snap2.
qemu-img create -q -f qcow2 base.qcow2 64M
io base.qcow2 -c 'write -P 0xaa 0 1M' -c 'write -P 0xab 8M 256K'
qemu-img snapshot -c snap1 base.qcow2
io base.qcow2 -c 'write -P 0xbb 512K 128K'
qemu-img bitmap --add base.qcow2 b0
io base.qcow2 -c 'write -P 0xcc 16M 64K'
qemu-img snapshot -c snap2 base.qcow2
# The LUKS base: the same without bitmaps.
retry_pbkdf qemu-img create -q -f qcow2 $secret \
  -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 \
  luks.qcow2 64M
io luks.qcow2 -c 'write -P 0xaa 0 1M' -c 'write -P 0xab 8M 256K'
qemu-img snapshot $secret --image-opts -c snap1 "$(img_opts luks.qcow2)"
io luks.qcow2 -c 'write -P 0xbb 512K 128K'
for b in base luks; do
  [ "$(check_errors $b.qcow2)" = 0 ] || fail "$b.qcow2 is not clean"
  to_raw $b.qcow2 $b-active.raw
  to_raw $b.qcow2 $b-snap1.raw snap1
done
to_raw base.qcow2 base-snap2.raw snap2

# run_case FRONT KIND VALUE [OPTIONS...]: damage a copy of the base image
# and write through FRONT (plugin or filter).  Sets $fired (the guard
# refused a write) and $damaged (qemu found the image damaged beyond
# what it was).
run_case ()
{
  local front="$1" kind="$2" value="$3"; shift 3
  local b=base img off before after s pass=() log=case.log
  case "$kind" in luks) b=luks ;; esac
  img=$b-case.qcow2
  cp $b.qcow2 $img
  case "$kind" in
  copied-l1|copied-l2)
    # Not a refcount: the active image's entry for guest offset 0 says
    # "not shared, write in place" while snapshots use the cluster.
    $damage setcopied $img ${kind#copied-} 0 ;;
  bitmap-over-*)
    # Not a refcount: the bitmap's data cluster is also another
    # structure (refcount 1, two users); keeping the bitmap writes it
    # in place.
    off=$($damage locate $img ${kind#bitmap-over-}) ||
      fail "$kind: no such structure"
    $damage pointbitmap $img $off ;;
  *)
    off=$($damage locate $img $kind) || fail "$kind: no such structure"
    $damage setref $img $off $value ;;
  esac
  before=$(check_errors $img)
  [ "$before" -gt 0 ] || fail "$kind: the damage is not seen by qemu-img"
  [ $b = luks ] && pass=(passphrase=pw)
  if [ $front = plugin ]; then
    "$NBDKIT" -U - qcow2 $img "${pass[@]}" "$@" \
      --run "$net writes \"\$uri\" writes.log" 2>$log || :
  else
    # Room past the end for the fixed-size container.
    truncate -s +8M $img
    local fpass=()
    [ $b = luks ] && fpass=(qcow2-passphrase=pw)
    "$NBDKIT" -U - --filter=qcow2 file $img "${fpass[@]}" \
      "${@/#/qcow2-}" --run "$net writes \"\$uri\" writes.log" 2>$log || :
  fi
  [ -s writes.log ] || { cat $log; fail "$front $kind: no writes were made"; }
  fired=false damaged=false
  if grep -q 'preventing a write' $log; then fired=true; fi
  after=$(check_errors $img)
  [ "$after" -gt "$before" ] && damaged=true
  to_raw $img after.raw || damaged=true
  $net verify $b-active.raw after.raw writes.log 2>verify.err ||
    damaged=true
  for s in snap1 snap2; do
    [ -f $b-$s.raw ] || continue
    if ! to_raw $img after-$s.raw $s || ! cmp -s $b-$s.raw after-$s.raw
    then damaged=true; fi
  done
  if $fired; then
    qemu-img info $secret --image-opts "$(img_opts $img)" |
      grep -q 'corrupt: true' || fail "$front $kind: not marked corrupt"
  fi
  echo "$front $kind=$value: fired=$fired damaged=$damaged" \
       "errors $before -> $after"
}

# The guard must refuse where the allocator would reach the structure:
# every kind but the bitmaps' own refcounts (a bitmap whose clusters are
# not its own alone is not kept: marked in use, qemu ignores it) and the
# shared cluster (its refcount drops to 0 only after a copy on write);
# and where a kept bitmap would be written over another structure.
for front in plugin filter; do
  for kind in header active-l1 active-l2 snap-l1 snap-l2 snap-data \
              reftable refblock snaptable luks bitmap-dir bitmap-table \
              bitmap-data shared-data copied-l1 copied-l2 \
              bitmap-over-snap-data bitmap-over-snap-l2 \
              bitmap-over-bitmap-dir; do
    value=0
    [ $kind = shared-data ] && value=1
    run_case $front $kind $value
    if $damaged; then
      cat case.log verify.err >&2
      fail "$front $kind: the writes damaged the image"
    fi
    case $kind in
    bitmap-dir|bitmap-table|bitmap-data|shared-data) ;;
    *)
      $fired || { cat case.log >&2; fail "$front $kind: no write refused"; }
      ;;
    esac
  done
done

# The log names the structure.
run_case plugin snap-l1 0
grep -q "holds the L1 table of snapshot 'snap1'" case.log ||
  { cat case.log; fail "the message does not name snap1's L1 table"; }
run_case plugin header 0
grep -q "holds the image header" case.log ||
  { cat case.log; fail "the message does not name the header"; }

# A bitmap directory that is also a bitmap's data: refused at the first
# write, when the directory is marked in use (the guard is built before).
run_case plugin bitmap-over-bitmap-dir 0
grep -q "preventing a write that would damage the image: marking bitmaps in use in cluster" case.log ||
  { cat case.log; fail "the in-use mark of the directory is not checked"; }

# After the guard fired the image is served read-only, and qemu-img
# check -r all is the way out: then it is writable again.
run_case plugin snap-data 0
"$NBDKIT" -U - qcow2 base-case.qcow2 --run 'nbdinfo --can write "$uri"' &&
  fail "a corrupt image is served writable"
qemu-img check -q -r all base-case.qcow2 >/dev/null || :
[ "$(check_errors base-case.qcow2)" = 0 ] || fail "repair left errors"
"$NBDKIT" -U - qcow2 base-case.qcow2 --run 'nbdinfo --can write "$uri"' ||
  fail "a repaired image is not served writable"

# The in-place cases name both users of the cluster.
run_case plugin copied-l2 0
grep -q "writing guest data to cluster 0x[0-9a-f]*, which holds guest data of the active image (guest offset 0x0); guest data of snapshot 'snap1'" case.log ||
  { cat case.log; fail "the message does not name both users"; }

# Control: without the net the same writes damage the image (so the
# verdicts above can fail).
for kind in snap-l1 header copied-l1 copied-l2 bitmap-over-snap-data; do
  run_case plugin $kind 0 overlap-check=off
  $fired && fail "overlap-check=off: the guard fired"
  $damaged || fail "overlap-check=off $kind: no damage seen: the test " \
                   "cannot tell"
done
echo "test-safety-net: ok"
