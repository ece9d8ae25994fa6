#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Many connections, many requests in flight, one shared image.
#
# For each kind of image (64k clusters; 512-byte clusters; extended L2
# entries; a raw backing file; compressed clusters with an internal
# snapshot; compress=zlib, where partial writes are merged into
# compressed clusters and large writes compressed in parallel; the same
# over compressible text with a cache of decompressed clusters smaller
# than the windows), nbdkit
# serves it read-write and concurrency.py hammers it
# from several processes, each with its own connection and many requests
# in flight, on neighbouring and overlapping ranges: closely interleaved
# ranges owned by each worker (checked against a model as it goes),
# "duels" where one worker's allocating write ends in a unit that its
# neighbour writes in place, "allocation storms" where every worker
# writes its 512-byte slots of a freshly trimmed cluster at once, and a
# phase where all workers write the same ranges (each unit of a range
# must end up holding one of the values written to it).  See the top of
# concurrency.py.  Then nbdkit is stopped cleanly and the image is
# judged:
#
#  - qemu-img check: no corruption, no leaked clusters;
#  - its content (qemu-img convert) equals the model, byte for byte;
#  - the internal snapshot (read through NBD during the run, and again
#    by qemu-img afterwards) did not change;
#  - nbdkit logged no error.
#
# Environment: QC_CONC_OPS (requests per worker in phase 1, default 400),
# QC_CONC_WORKERS (default 6), QC_CONC_SEED (default: a new one, printed),
# QC_CONC_VARIANTS (a subset of: c64k c512 ext64k backing snapshot
# compress ccache),
# QC_CONC_ARGS (more options for concurrency.py run, e.g.
# "--duel-rounds 50 --storm-rounds 4").
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires "$PYTHON" -c 'import nbd'

hammer=${srcdir:-$(dirname "$0")}/concurrency.py
ops=${QC_CONC_OPS:-400}
workers=${QC_CONC_WORKERS:-6}
seed=${QC_CONC_SEED:-$(( $(date +%s) % 100000 ))}
variants=${QC_CONC_VARIANTS:-c64k c512 ext64k backing snapshot compress ccache}
echo "seed $seed (rerun with QC_CONC_SEED=$seed), $workers workers," \
     "$ops requests each"

K=1024 M=$((1024 * 1024))

# stop_nbdkit SOCK: SIGTERM (nbdkit closes the image cleanly: flush,
# free) and wait until it has exited.
stop_nbdkit ()
{
  local pidfile="${1%.sock}.pid" pid i
  pid=$(cat "$pidfile")
  kill "$pid"
  for i in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  # Hung: show where every thread is, then kill it.
  echo "nbdkit (pid $pid) did not exit within 60s of SIGTERM" >&2
  if command -v gdb >/dev/null; then
    timeout 120 gdb -q -batch -p "$pid" -ex 'thread apply all bt' \
      </dev/null 2>&1 | grep -v '^\[New LWP' >&2 || :
  fi
  kill -9 "$pid" 2>/dev/null || :
  show_log "${1%.sock}.log"
  fail "nbdkit (pid $pid) hung at exit (killed)"
}

# show_log LOG: the end of nbdkit's log, after a failure.
show_log ()
{
  echo "--- last lines of $1:" >&2
  tail -n 30 "$1" >&2 || :
}

# run_variant NAME IMG CLUSTER UNIT WINDOWS [SNAPSHOT]
run_variant ()
{
  local name=$1 img=$2 cs=$3 unit=$4 windows=$5 snap=${6:-}
  local dir=$tmpdir/$name srv log snapargs=() rc=0
  mkdir -p "$dir"
  echo "=== $name: $(qemu-img info "$img" | sed -n 's/^cluster_size: /cluster /p')" \
       "windows $windows"

  qemu-img convert -f qcow2 -O raw "$img" "$dir/initial.raw"
  if [ -n "$snap" ]; then
    qemu-img convert -f qcow2 -O raw -l "snapshot.name=$snap" "$img" \
      "$dir/snap-before.raw"
  fi

  start_nbdkit srv -f qcow2 "$img" ${serve_args:-}   # -f: errors go to the log
  log="${srv%.sock}.log"
  if [ -n "$snap" ]; then
    snapargs=(--snap-uri "$(nbd_uri "$srv" "$snap")"
              --snap-raw "$dir/snap-before.raw")
  fi
  timeout 600 "$PYTHON" "$hammer" run --uri "$(nbd_uri "$srv")" \
    "${snapargs[@]}" --initial "$dir/initial.raw" --windows "$windows" \
    --cluster-size "$cs" --unit "$unit" --model "$dir/model.pkl" \
    --workers "$workers" --ops "$ops" --seed "$seed" ${QC_CONC_ARGS:-} || rc=$?
  if [ $rc -ne 0 ]; then
    show_log "$log"
    stop_nbdkit "$srv"
    fail "$name: the concurrent run failed (exit $rc)"
  fi
  stop_nbdkit "$srv"
  if grep -i 'error' "$log" >&2; then
    fail "$name: nbdkit logged errors (above)"
  fi

  # The image: consistent, no leaks.
  rc=0
  qemu-img check -f qcow2 "$img" >"$dir/check.out" 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then
    cat "$dir/check.out" >&2
    fail "$name: qemu-img check exited with $rc"
  fi
  # Its content: the model.
  qemu-img convert -f qcow2 -O raw "$img" "$dir/final.raw"
  "$PYTHON" "$hammer" verify --model "$dir/model.pkl" \
    --raw "$dir/final.raw" --initial "$dir/initial.raw" ||
    fail "$name: the image does not hold what was written"
  # The snapshot: unchanged.
  if [ -n "$snap" ]; then
    qemu-img snapshot -l "$img" | grep -q " $snap " ||
      fail "$name: snapshot $snap is gone"
    qemu-img convert -f qcow2 -O raw -l "snapshot.name=$snap" "$img" \
      "$dir/snap-after.raw"
    cmp "$dir/snap-before.raw" "$dir/snap-after.raw" ||
      fail "$name: snapshot $snap changed"
  fi
  # With NBDKIT running nbdkit -v: the cache's counters.
  grep -h "decompressed" "$log" || :
  rm -f "$dir"/*.raw
  echo "$name: OK"
}

for v in $variants; do
  case $v in
  c64k)
    # Three windows: the start, across the boundary of the first two L2
    # tables (512M), the end of the disk.
    img=$tmpdir/c64k.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=64k "$img" 640M
    run_variant c64k "$img" $((64*K)) $((64*K)) \
      "0:$((2*M)),$((511*M)):$((2*M)),$((639*M)):$M"
    ;;
  c512)
    # 512-byte clusters: an L2 table covers 32k, a refcount block 128k,
    # the first refcount table 8M of the file: the refcount table grows
    # while the workers allocate.
    img=$tmpdir/c512.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=512 "$img" 16M
    run_variant c512 "$img" 512 512 \
      "0:$((192*K)),$((5*M+1000)):$((160*K)),$((9*M)):$((1536*K)),$((16*M-128*K)):$((128*K))"
    ;;
  ext64k)
    # Extended L2 entries: 32 subclusters of 2k; an L2 table covers 256M.
    img=$tmpdir/ext64k.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=64k,extended_l2=on "$img" 320M
    qemu-io -c "write -q -P 0x5a $((64*K+2*K)) 6k" \
            -c "write -q -P 0x6b $((255*M+10*K)) 100k" "$img"
    run_variant ext64k "$img" $((64*K)) $((2*K)) \
      "0:$((2*M)),$((255*M)):$((2*M)),$((319*M)):$M"
    ;;
  backing)
    # A raw backing file (40M of seeded data), shorter than its 48M
    # overlay (4k clusters: an L2 table covers 2M), some clusters of
    # the overlay already written.
    base=$tmpdir/base.raw img=$tmpdir/overlay.qcow2
    "$PYTHON" -c '
import random, sys
r = random.Random(int(sys.argv[2]))
with open(sys.argv[1], "wb") as f:
    for i in range(40):
        f.write(r.randbytes(1 << 20))
' "$base" "$seed"
    qemu-img create -q -f qcow2 -o cluster_size=4k -b "$base" -F raw \
      "$img" 48M
    qemu-io -c "write -q -P 0x11 $((100*K)) 20k" \
            -c "write -q -z $((300*K)) 8k" \
            -c "write -q -P 0x22 $((40*M-8*K)) 16k" "$img"
    run_variant backing "$img" $((4*K)) $((4*K)) \
      "0:$M,$((2*M-300*K)):$((600*K)),$((40*M-512*K)):$M,$((48*M-256*K)):$((256*K))"
    ;;
  compress)
    # compress=zlib over qemu-compressed 16k clusters: whole-cluster
    # writes compressed (several clusters of one request in parallel),
    # 4k writes merged into compressed clusters, zeroes and trims.
    src=$tmpdir/csrc.qcow2 img=$tmpdir/comp.qcow2
    qemu-img create -q -f qcow2 "$src" 32M
    qemu-io -c "write -q -P 0x61 0 3M" \
            -c "write -q -P 0x62 $((20*M)) 2M" "$src"
    qemu-img convert -c -f qcow2 -O qcow2 -o cluster_size=16k "$src" "$img"
    serve_args=compress=zlib run_variant compress "$img" $((16*K)) $((4*K)) \
      "0:$((3*M)),$((20*M-64*K)):$((2*M))"
    ;;
  ccache)
    # compress=zlib over a qemu-img compressed image of text (16k
    # clusters), with a cache of decompressed clusters smaller than the
    # windows (64 clusters): reads of parts of compressed clusters hit
    # and evict it while writes of whole clusters (compressed again when
    # they compress) and trims free the host bytes of its streams for
    # new ones.
    src=$tmpdir/ctext.raw img=$tmpdir/ccache.qcow2
    "$PYTHON" -c '
import random, sys
r = random.Random(int(sys.argv[2]))
words = [bytes(r.randrange(97, 123) for _ in range(r.randrange(2, 9)))
         for _ in range(500)]
with open(sys.argv[1], "wb") as f:
    n = 0
    while n < 8 << 20:
        line = b" ".join(r.choice(words) for _ in range(2000)) + b"\n"
        f.write(line[:(8 << 20) - n])
        n += min(len(line), (8 << 20) - n)
' "$src" "$seed"
    qemu-img convert -c -f raw -O qcow2 -o cluster_size=16k "$src" "$img"
    qemu-img resize -q "$img" 16M
    serve_args="compress=zlib compressed-cache=1M" \
      run_variant ccache "$img" $((16*K)) $((16*K)) \
      "0:$((2*M)),$((7*M)):$((2*M)),$((15*M)):$M"
    ;;
  snapshot)
    # Compressed clusters (16k; an L2 table covers 32M), a zero cluster,
    # a discarded one, plain ones; an internal snapshot; more writes
    # after it.  Every cluster is shared with the snapshot at first.
    src=$tmpdir/src.qcow2 img=$tmpdir/snap.qcow2
    qemu-img create -q -f qcow2 "$src" 64M
    qemu-io -c "write -q -P 0x31 0 1M" \
            -c "write -q -P 0x32 $((31*M)) 2M" \
            -c "write -q -P 0x33 $((62*M+5000)) 300k" "$src"
    qemu-img convert -c -f qcow2 -O qcow2 -o cluster_size=16k "$src" "$img"
    qemu-io -c "write -q -P 0x41 $((200*K)) 48k" \
            -c "write -q -z $((512*K)) 16k" \
            -c "discard -q $((544*K)) 16k" \
            -c "write -q -c -P 0x42 $((33*M)) 64k" \
            -c "write -q -P 0x43 $((33*M+100*K)) 7k" "$img"
    qemu-img snapshot -c snap1 "$img"
    qemu-io -c "write -q -P 0x51 $((16*K)) 16k" \
            -c "write -q -c -P 0x52 $((63*M)) 32k" "$img"
    run_variant snapshot "$img" $((16*K)) $((16*K)) \
      "0:$M,$((31*M)):$((3*M)),$((62*M)):$((2*M))" snap1
    ;;
  *) fail "unknown variant $v" ;;
  esac
done
echo "all variants OK"
