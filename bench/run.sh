#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# nbdkit-qcow2 benchmarks: our plugin against qemu-nbd (same qcow2 images)
# and the nbdkit file plugin (the raw equivalent), with the same clients:
# nbdcopy for sequential copies, fio's nbd engine for random I/O.
#
#   bench/run.sh [--quick] [--reps N] [--runtime SECS] [--only a,b,...]
#                [--clean]
#
# Images go to $BENCH_DIR (default /var/tmp/qc-bench) and are kept for
# the next run; per-run results, server logs and the table go to
# $BENCH_DIR/results-<mode>-<date>/.  See bench/README.md.

set -euo pipefail
export LC_ALL=C
# The system tools first (nbdsh/nbdinfo want the system python).
export PATH="/usr/bin:/usr/sbin:/bin:/sbin:$PATH"

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench=$top/bench

usage ()
{
  cat <<EOF
usage: bench/run.sh [--quick] [--reps N] [--runtime SECS] [--only LIST] [--clean]

  --quick        small images, 1 repetition, 3 s fio runs (smoke test)
  --reps N       repetitions per case (default 3; --quick: 1)
  --runtime S    fio time-based runtime and cap (default 10; --quick: 3)
  --only LIST    run only these workloads, e.g. --only a,b,h (a..m)
  --clean        remove \$BENCH_DIR's images first (they are rebuilt)
  --no-qemu10    compare with the system's qemu only (not also qemu 10)

Environment: BENCH_DIR (images and results, default /var/tmp/qc-bench),
WORK_DIR (scratch images, default a tmpfs directory in /dev/shm if it
has room), QD (fio iodepth, default 32), SMALL_CACHE (workload g,
default 128k), LUKS_SIZE (workload i, default 1G; --quick: 256M),
QEMU10_DIR (qemu 10 unpacked by bench/get-qemu10.sh, default
\$BENCH_DIR/qemu10), REMOTE_DELAY (workload k, default 2ms).
EOF
}

quick=0 reps= runtime= only=a,b,c,d,e,f,g,h,i,j,k,l,m clean=0 qemu10=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --reps) reps=$2; shift ;;
    --runtime) runtime=$2; shift ;;
    --only) only=$2; shift ;;
    --clean) clean=1 ;;
    --no-qemu10) qemu10=0 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

MiB=$((1024 * 1024)); GiB=$((1024 * MiB))
if [ $quick = 1 ]; then
  mode=quick
  : "${reps:=1}" "${runtime:=3}"
  SEQ=$((256 * MiB))        # (a), (e)
  RND=$((512 * MiB))        # (b), (d), (f) backing, (g)
  ALLOC_VS=$((1 * GiB))     # (c) virtual size
  SAMPLE=$((32 * MiB))      # (h)
  : "${LUKS_SIZE:=256M}"    # (i)
  J_VS=$((64 * GiB))        # (j) virtual size
  J_REGION=$((256 * MiB))   # (j) where the random writes go
else
  mode=full
  : "${reps:=3}" "${runtime:=10}"
  SEQ=$((2 * GiB))
  RND=$((4 * GiB))
  ALLOC_VS=$((8 * GiB))
  SAMPLE=$((256 * MiB))
  : "${LUKS_SIZE:=1G}"
  J_VS=$((1024 * GiB))
  J_REGION=$((1 * GiB))
fi
# (j): a snapshotted image: 64 KiB of data every $J_STRIDE of the disk
# (with 64 KiB clusters, an L2 table maps 512 MiB: 8 writes per table,
# every L2 table allocated), a contiguous $J_REGION at $J_OFF, then
# $J_SNAPS internal snapshots with a few writes between them.
J_STRIDE=$((64 * MiB))
J_OFF=$((J_VS / 2))
J_SNAPS=20
# (i): a LUKS image, and the raw data in it.  Any size numfmt reads
# (1G, 64M: powers of 1024), rounded down to whole MiB.
LUKS=$(numfmt --from=iec "${LUKS_SIZE^^}") ||
  { echo "LUKS_SIZE=$LUKS_SIZE: not a size" >&2; exit 2; }
LUKS=$((LUKS / MiB * MiB))
[ "$LUKS" -gt 0 ] || { echo "LUKS_SIZE=$LUKS_SIZE: too small" >&2; exit 2; }
# Allocating writes (c) and copy-on-write (f) write 1/64 of the disk's
# 4 KiB blocks once each, in random order: about 89% of those writes
# land in a cluster (64 KiB) not yet allocated.  fio stops after that
# many writes or after $runtime seconds, whichever comes first.
ALLOC_IO=$((ALLOC_VS / 64))
COW_IO=$((RND / 64))
QD=${QD:-32}
SMALL_CACHE=${SMALL_CACHE:-128k}
want () { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
case ",$only," in *[!a-m,]*|,,) usage >&2; exit 2 ;; esac
# The shared images (setup_images) serve workloads a to h and k to m;
# (i) and (j) make their own.
common=0
for w in a b c d e f g h k l m; do if want $w; then common=1; fi; done
REMOTE_DELAY=${REMOTE_DELAY:-2ms}

BENCH_DIR=${BENCH_DIR:-/var/tmp/qc-bench}
mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
img=$BENCH_DIR/$mode            # images of this mode, kept between runs
res=$BENCH_DIR/results-$mode-$(date +%Y%m%d-%H%M%S)
sock=$BENCH_DIR/srv.sock
uri="nbd+unix:///?socket=$sock"
runs=$res/runs.tsv

say () { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die () { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- checks
for t in make nbdkit qemu-nbd qemu-img nbdcopy nbdinfo fio python3 \
         /usr/bin/time tar; do
  command -v "$t" >/dev/null || die "$t is needed"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "fio lacks the nbd engine"
nbdkit file --version >/dev/null 2>&1 || die "nbdkit file plugin missing"
if want m; then
  { command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null ||
    die "(m) needs nginx"
  nbdkit curl --version >/dev/null 2>&1 || die "(m) needs nbdkit's curl plugin"
  nbdkit --filter=delay null --version >/dev/null 2>&1 ||
    die "(m) needs nbdkit's delay filter"
fi

# qemu 10 (bench/get-qemu10.sh, unpacked once into $QEMU10_DIR): every
# qemu figure is measured with the system's qemu and with it.  QP lists
# the server name prefixes: "" (system qemu) and "q10-".
QP=("")
Q10=${QEMU10_DIR:-$BENCH_DIR/qemu10}
if [ $qemu10 = 1 ]; then
  if BENCH_DIR=$BENCH_DIR "$bench/get-qemu10.sh" "$Q10" >&2; then
    QP+=("q10-")
  else
    say "warning: qemu 10 not available (bench/get-qemu10.sh failed): system qemu only"
  fi
fi
# qimg PREFIX: the qemu-img of the system ("") or of qemu 10 ("q10-").
qimg () { if [ "$1" = q10- ]; then echo "$Q10/bin/qemu-img"; else echo qemu-img; fi; }

say "building ($top)"
make -C "$top" -j"$(nproc)" >"$BENCH_DIR/make.log" 2>&1 ||
  { tail -20 "$BENCH_DIR/make.log" >&2; die "make failed"; }
[ -x "$top/nbdkit" ] && [ -f "$top/plugin/.libs/nbdkit-qcow2-plugin.so" ] ||
  die "the plugin did not build"

# Space: the images of this mode (kept), and the scratch images of one
# run (new and overlay images, created and deleted per run) in $work.
# Scratch images go to tmpfs (/dev/shm) when it has room: on a disk
# filesystem mounted with online discard, deleting an image that
# qemu-nbd has just allocated (64 KiB clusters, each a 4 KiB write plus
# a fallocated zero range: tens of thousands of extents) takes minutes.
# WORK_DIR=dir puts them elsewhere.
free_bytes () { echo $(( $(df -Pk "$1" | awk 'NR==2 {print $4}') * 1024 )); }
need_img=$(( common * (2 * RND + 2 * SEQ + 5 * SAMPLE) ))
if want i; then need_img=$(( need_img + 2 * LUKS )); fi
# (j): the data, its L2 tables (1/8192 of the disk) and some slack
J_BYTES=$(( (J_VS / J_STRIDE) * 65536 + J_REGION + J_VS / 8192 + 64 * MiB ))
if want j; then need_img=$(( need_img + J_BYTES )); fi
# (k): its source, SEQ bytes of which 5/8 data
if want k; then need_img=$(( need_img + SEQ )); fi
# (one at a time: the largest is (c)'s qcow2, up to a 64 KiB cluster per
# 4 KiB write, or (e)'s new image)
need_work=$(( (ALLOC_IO * 16 > SEQ ? ALLOC_IO * 16 : SEQ) + 256 * MiB ))
if want i && [ $((LUKS + 256 * MiB)) -gt "$need_work" ]; then
  need_work=$((LUKS + 256 * MiB))
fi
# (l): a copy of the random-data image
if want l && [ $((RND + 256 * MiB)) -gt "$need_work" ]; then
  need_work=$((RND + 256 * MiB))
fi
# (j): a copy of its image, and the clusters the writes allocate
if want j && [ $((J_BYTES + J_REGION)) -gt "$need_work" ]; then
  need_work=$((J_BYTES + J_REGION))
fi
[ $clean = 1 ] && rm -rf "$img"
used=$(( $(du -sk "$img" 2>/dev/null | cut -f1 || echo 0) * 1024 ))
[ $(( $(free_bytes "$BENCH_DIR") + used )) -ge "$need_img" ] ||
  die "$BENCH_DIR: $((need_img / MiB)) MiB needed, $(( $(free_bytes "$BENCH_DIR") / MiB )) MiB free (set BENCH_DIR)"
if [ -z "${WORK_DIR:-}" ]; then
  if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] &&
     [ "$(free_bytes /dev/shm)" -ge $((need_work + 2 * GiB)) ]; then
    WORK_DIR=/dev/shm/qc-bench-work.$$
  else
    WORK_DIR=$BENCH_DIR/work
  fi
fi
work=$WORK_DIR
mkdir -p "$img" "$work" "$res/logs"
rm -f "$work"/*
[ "$(free_bytes "$work")" -ge "$need_work" ] ||
  die "$work: $((need_work / MiB)) MiB needed for scratch images (set WORK_DIR)"

# ---------------------------------------------------------------- servers
srv_pid= srv_name= ngx_pid=
cleanup ()
{
  if [ -n "$srv_pid" ]; then kill "$srv_pid" 2>/dev/null || :; wait "$srv_pid" 2>/dev/null || :; fi
  if [ -n "$ngx_pid" ]; then kill "$ngx_pid" 2>/dev/null || :; wait "$ngx_pid" 2>/dev/null || :; fi
  rm -rf "$work/ngx"
  rm -f "$sock" "$work"/*
  case "$work" in /dev/shm/qc-bench-work.*) rmdir "$work" 2>/dev/null || : ;; esac
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_ready: until the server answers (a first connection, not timed),
# or it dies.
wait_ready ()
{
  local i
  for i in $(seq 1 300); do
    if [ -S "$sock" ] && nbdinfo --size "$uri" >/dev/null 2>&1; then
      return 0
    fi
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.1
  done
  say "server $srv_name did not start; its log:"
  tail -20 "$srv_log" >&2
  kill "$srv_pid" 2>/dev/null || :; wait "$srv_pid" 2>/dev/null || :
  srv_pid=
  return 1
}

# launch SERVER ARGS...: ours IMAGE [plugin options], qemu IMAGE [args],
# qemu-opts IMAGE-OPTS, qemu-luks IMAGE, raw FILE; ours-off and qemu-all
# are ours and qemu-opts under another name (their own rows and logs);
# ours-cmd and raw-cmd: the in-tree and the system nbdkit with the given
# arguments (filters, plugin, options).  q10-qemu... : the same qemu
# servers, with qemu 10's qemu-nbd.
# Servers run in the foreground of a background job, so $! is the server
# itself (the ./nbdkit wrapper execs).  No waiting: see start.
launch ()
{
  srv_name=$1; shift
  srv_log=$res/logs/$case_id-$srv_name-$rep.log
  rm -f "$sock"
  local qemu_nbd=qemu-nbd kind=$srv_name
  case "$srv_name" in
    q10-*) qemu_nbd=$Q10/bin/qemu-nbd; kind=${srv_name#q10-} ;;
  esac
  case "$kind" in
    ours|ours-off|ours-nobm)
      "$top/nbdkit" -f -U "$sock" qcow2 "$@" >"$srv_log" 2>&1 & ;;
    ours-cmd)                   # ARGS: the filters, plugin and options
      "$top/nbdkit" -f -U "$sock" "$@" >"$srv_log" 2>&1 & ;;
    raw-cmd)
      nbdkit -f -U "$sock" "$@" >"$srv_log" 2>&1 & ;;
    qemu)
      "$qemu_nbd" -f qcow2 --cache=writeback --discard=unmap --persistent \
               -e 16 -k "$sock" "$@" >"$srv_log" 2>&1 & ;;
    qemu-opts|qemu-all)
      "$qemu_nbd" --image-opts "$1" --cache=writeback --discard=unmap \
               --persistent -e 16 -k "$sock" >"$srv_log" 2>&1 & ;;
    qemu-luks)                  # IMAGE: LUKS-encrypted, $luks_pw's secret
      "$qemu_nbd" --object "secret,id=sec0,file=$luks_pw" \
               --image-opts "driver=qcow2,file.driver=file,file.filename=$1,encrypt.key-secret=sec0" \
               --cache=writeback --discard=unmap --persistent -e 16 \
               -k "$sock" >"$srv_log" 2>&1 & ;;
    raw)
      nbdkit -f -U "$sock" file "$@" >"$srv_log" 2>&1 & ;;
    enc)                        # FILE [filter options]: qcow2enc over it
      "$top/nbdkit" -f -r -U "$sock" --filter=qcow2enc file "$@" \
        >"$srv_log" 2>&1 & ;;
    *) die "unknown server $srv_name" ;;
  esac
  srv_pid=$!
}

# start SERVER ARGS...: launch, and wait until it answers.
start ()
{
  launch "$@"
  wait_ready || return 1
  cpu0=$(cpu_ticks "$srv_pid")
}

# cpu_ticks PID: user + system time of the process (all its threads, in
# clock ticks).
cpu_ticks ()
{
  awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null ||
    echo 0
}
hz=$(getconf CLK_TCK)

# stop: the server's peak RSS (VmHWM, kB) into $rss and the CPU time it
# used since it became ready (seconds) into $cpu; then SIGTERM and wait.
stop ()
{
  rss=$(awk '/^VmHWM:/ {print $2}' "/proc/$srv_pid/status" 2>/dev/null || :)
  [ -n "$rss" ] || rss=NA
  cpu=$(awk -v a="$cpu0" -v b="$(cpu_ticks "$srv_pid")" -v hz="$hz" \
            'BEGIN {printf "%.2f", (b - a) / hz}')
  kill "$srv_pid" 2>/dev/null || :
  wait "$srv_pid" 2>/dev/null || :
  srv_pid=
}

# record SERVER "VALUE WORK" CPU RSS: one line of $runs.  VALUE is MB/s
# or IOPS, WORK the bytes copied or requests done, CPU the server's CPU
# seconds, RSS its peak RSS in kB.
record ()
{
  local v w
  read -r v w <<<"$2"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case_id" "$1" "$rep" \
         "${v:-NA}" "${w:-NA}" "$3" "$4" >>"$runs"
  say "  $case_id $1 rep $rep: ${v:-NA} (server: $3 s CPU, $4 kB peak RSS)"
}

# ---------------------------------------------------------------- clients
now () { date +%s.%N; }
mbps () { awk -v b="$1" -v t0="$2" -v t1="$3" 'BEGIN {printf "%.1f", b / 1e6 / (t1 - t0)}'; }

# copy SRC DST BYTES: nbdcopy; prints "MB/s BYTES" (10^6 bytes/s), or NA.
copy ()
{
  local t0 t1
  t0=$(now)
  if ! nbdcopy "$1" "$2" 2>>"$res/logs/$case_id-client.log"; then
    echo NA; return
  fi
  t1=$(now)
  echo "$(mbps "$3" "$t0" "$t1") $3"
}

# fio_run RW [fio options]: 4 KiB requests at depth $QD, one job (one
# NBD connection); prints "IOPS REQUESTS", or NA.
fio_run ()
{
  local rw=$1; shift
  local out=$res/logs/$case_id-fio-$srv_name-$rep.json
  if ! fio --name="$case_id" --ioengine=nbd --uri="$uri" --rw="$rw" \
           --bs=4k --iodepth="$QD" --numjobs=1 "$@" \
           --output-format=json --output="$out" \
           >>"$res/logs/$case_id-client.log" 2>&1; then
    echo NA; return
  fi
  python3 - "$out" "$rw" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
j = d["jobs"][0]["read" if "read" in sys.argv[2] else "write"]
print("%.0f %d" % (j["iops"], j["total_ios"]))
EOF
}
fio_timed () { fio_run "$1" --time_based --runtime="$runtime" --norandommap "${@:2}"; }
# A fixed set of writes, each 4 KiB block at most once, capped in time.
fio_count () { fio_run randwrite --io_size="$1" --runtime="$runtime"; }

# serve_copy SERVER ARGS... -- SRC DST BYTES: start, nbdcopy, stop, record.
# "@" in SRC or DST stands for the server's URI.
serve_copy ()
{
  local name=$1 a=() v; shift
  while [ "$1" != -- ]; do a+=("$1"); shift; done; shift
  local src=${1/@/$uri} dst=${2/@/$uri}
  if start "$name" "${a[@]}"; then
    v=$(copy "$src" "$dst" "$3"); stop
  else v=NA cpu=NA rss=NA; fi
  record "$name" "$v" "$cpu" "$rss"
}

# serve_fio SERVER ARGS... -- FIO-FUNCTION ARGS...
serve_fio ()
{
  local name=$1 a=() v; shift
  while [ "$1" != -- ]; do a+=("$1"); shift; done; shift
  if start "$name" "${a[@]}"; then
    v=$("$@"); stop
  else v=NA cpu=NA rss=NA; fi
  record "$name" "$v" "$cpu" "$rss"
}

# ---------------------------------------------------------------- images
# Incompressible data: $img/seed (random) repeated; qcow2 copies made
# by qemu-img convert (every cluster allocated, 64 KiB clusters).
setup_images ()
{
  local stamp="$mode $SEQ $RND $SAMPLE v1"
  if [ "$(cat "$img/stamp" 2>/dev/null)" = "$stamp" ]; then
    say "reusing the images in $img"
  else
    rm -f "$img"/*
    say "making images in $img"
    local seed=$((64 * MiB)) i
    head -c $seed /dev/urandom >"$img/seed"
    for i in $(seq 1 $((RND / seed))); do cat "$img/seed"; done >"$img/data-rnd.raw"
    head -c "$SEQ" "$img/data-rnd.raw" >"$img/data-seq.raw"
    rm -f "$img/seed"
    qemu-img convert -f raw -O qcow2 "$img/data-rnd.raw" "$img/data-rnd.qcow2"
    qemu-img convert -f raw -O qcow2 "$img/data-seq.raw" "$img/data-seq.qcow2"
    # A compressible sample: half from /usr/share, half from /usr/lib.
    local half=$((SAMPLE / 2))
    {
      (tar --sort=name -cf - /usr/share 2>/dev/null || :) | head -c $half
      (tar --sort=name -cf - /usr/lib 2>/dev/null || :) | head -c $half
    } >"$img/sample.raw"
    [ "$(stat -c %s "$img/sample.raw")" -eq "$SAMPLE" ] ||
      die "could not make a $SAMPLE-byte sample from /usr/share and /usr/lib"
    qemu-img convert -c -f raw -O qcow2 "$img/sample.raw" "$img/sample-zlib.qcow2"
    qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd \
             "$img/sample.raw" "$img/sample-zstd.qcow2"
    echo "$stamp" >"$img/stamp"
  fi
  # Warm the page cache: every server reads the same cached files.
  cat "$img"/*.raw "$img"/*.qcow2 >/dev/null
}

# ---------------------------------------------------------------- workloads
# Each case: for each repetition, each server in turn (interleaved, so
# that a disturbance hits all servers alike).  case ids are the row keys
# in bench/summarize.py.

wl_a ()
{
  case_id=a-seqread
  say "(a) sequential read, $((SEQ / MiB)) MiB fully allocated, nbdcopy to null:"
  for rep in $(seq 1 "$reps"); do
    serve_copy ours "$img/data-seq.qcow2" -- @ null: "$SEQ"
    for q in "${QP[@]}"; do
      serve_copy ${q}qemu "$img/data-seq.qcow2" -- @ null: "$SEQ"
    done
    serve_copy raw "$img/data-seq.raw" -- @ null: "$SEQ"
  done
}

wl_b ()
{
  case_id=b-randread
  say "(b) 4k random read qd $QD, $((RND / MiB)) MiB fully written, ${runtime}s"
  for rep in $(seq 1 "$reps"); do
    serve_fio ours "$img/data-rnd.qcow2" -- fio_timed randread
    for q in "${QP[@]}"; do
      serve_fio ${q}qemu "$img/data-rnd.qcow2" -- fio_timed randread
    done
    serve_fio raw "$img/data-rnd.raw" -- fio_timed randread
  done
}

wl_c ()
{
  case_id=c-randwrite-alloc
  say "(c) 4k random write qd $QD into an empty $((ALLOC_VS / GiB)) GiB image, $((ALLOC_IO / 4096)) writes"
  for rep in $(seq 1 "$reps"); do
    qemu-img create -q -f qcow2 "$work/alloc.qcow2" "$ALLOC_VS"
    serve_fio ours "$work/alloc.qcow2" -- fio_count "$ALLOC_IO"
    rm -f "$work/alloc.qcow2"
    for q in "${QP[@]}"; do
      qemu-img create -q -f qcow2 "$work/alloc.qcow2" "$ALLOC_VS"
      serve_fio ${q}qemu "$work/alloc.qcow2" -- fio_count "$ALLOC_IO"
      rm -f "$work/alloc.qcow2"
    done
    truncate -s "$ALLOC_VS" "$work/alloc.raw"
    serve_fio raw "$work/alloc.raw" -- fio_count "$ALLOC_IO"
    rm -f "$work/alloc.raw"
  done
}

wl_d ()
{
  case_id=d-randwrite-over
  say "(d) 4k random write qd $QD over the allocated $((RND / MiB)) MiB image, ${runtime}s"
  for rep in $(seq 1 "$reps"); do
    serve_fio ours "$img/data-rnd.qcow2" -- fio_timed randwrite
    for q in "${QP[@]}"; do
      serve_fio ${q}qemu "$img/data-rnd.qcow2" -- fio_timed randwrite
    done
    serve_fio raw "$img/data-rnd.raw" -- fio_timed randwrite
  done
}

wl_e ()
{
  case_id=e-seqwrite-new
  say "(e) sequential write of $((SEQ / MiB)) MiB into a new image (nbdcopy from a raw file)"
  for rep in $(seq 1 "$reps"); do
    serve_copy ours "$work/new.qcow2" create=true size="$SEQ" -- \
               "$img/data-seq.raw" @ "$SEQ"
    rm -f "$work/new.qcow2"
    for q in "${QP[@]}"; do
      qemu-img create -q -f qcow2 "$work/new.qcow2" "$SEQ"
      serve_copy ${q}qemu "$work/new.qcow2" -- "$img/data-seq.raw" @ "$SEQ"
      rm -f "$work/new.qcow2"
    done
    truncate -s "$SEQ" "$work/new.raw"
    serve_copy raw "$work/new.raw" -- "$img/data-seq.raw" @ "$SEQ"
    rm -f "$work/new.raw"
  done
}

wl_f ()
{
  local x
  for x in off on; do
    case_id=f-cow-xl2-$x
    say "(f) 4k random write qd $QD over a full backing file, extended_l2=$x, $((COW_IO / 4096)) writes"
    for rep in $(seq 1 "$reps"); do
      for s in ours "${QP[@]/%/qemu}"; do
        qemu-img create -q -f qcow2 -b "$img/data-rnd.qcow2" -F qcow2 \
                 -o cluster_size=65536,extended_l2=$x "$work/ov.qcow2"
        serve_fio $s "$work/ov.qcow2" -- fio_count "$COW_IO"
        rm -f "$work/ov.qcow2"
      done
    done
  done
}

wl_g ()
{
  local bytes
  bytes=$(numfmt --from=iec "${SMALL_CACHE^^}")
  case_id=g-randread-smallcache
  say "(g) 4k random read qd $QD, L2 cache $SMALL_CACHE of $((RND / 65536 * 8 / 1024)) KiB of L2 tables, ${runtime}s"
  for rep in $(seq 1 "$reps"); do
    serve_fio ours "$img/data-rnd.qcow2" cache-size="$SMALL_CACHE" -- \
              fio_timed randread
    for q in "${QP[@]}"; do
      serve_fio ${q}qemu-opts "driver=qcow2,file.driver=file,file.filename=$img/data-rnd.qcow2,l2-cache-size=$bytes" -- \
                fio_timed randread
    done
  done
}

wl_h ()
{
  local c opt t0 t1 v out u s
  for c in zlib zstd; do
    [ $c = zstd ] && opt="-o compression_type=zstd" || opt=
    case_id=h-$c-write
    say "(h) compressed write ($c) of a $((SAMPLE / MiB)) MiB sample from /usr/share and /usr/lib"
    for rep in $(seq 1 "$reps"); do
      out=$work/c.qcow2
      # ours: nbdcopy into a new image, every cluster compressed.
      serve_copy ours "$out" create=true size="$SAMPLE" compress=$c -- \
                 "$img/sample.raw" @ "$SAMPLE"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case_id-size" ours "$rep" "$(stat -c %s "$out")" NA NA NA >>"$runs"
      rm -f "$out"
      # zlib with ISA-L (compress-level=fast): ours only (qemu has no
      # such level; its zlib numbers are the comparison).
      if [ $c = zlib ]; then
        case_id=h-zlibfast-write
        serve_copy ours "$out" create=true size="$SAMPLE" compress=zlib \
                   compress-level=fast -- "$img/sample.raw" @ "$SAMPLE"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case_id-size" ours "$rep" "$(stat -c %s "$out")" NA NA NA >>"$runs"
        rm -f "$out"
        case_id=h-$c-write
      fi
      for q in "${QP[@]}"; do
        # qemu-nbd with QEMU's compress filter: the same client.
        qemu-img create -q -f qcow2 $opt "$out" "$SAMPLE"
        serve_copy ${q}qemu-opts "driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=$out" -- \
                   "$img/sample.raw" @ "$SAMPLE"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case_id-size" ${q}qemu "$rep" "$(stat -c %s "$out")" NA NA NA >>"$runs"
        rm -f "$out"
        # qemu-img convert -c: QEMU's own way of making compressed images.
        t0=$(now)
        if /usr/bin/time -f '%M %U %S' -o "$work/time.out" \
             "$(qimg "$q")" convert -c -f raw -O qcow2 $opt "$img/sample.raw" "$out" \
             2>>"$res/logs/$case_id-client.log"; then
          t1=$(now); v="$(mbps "$SAMPLE" "$t0" "$t1") $SAMPLE"
          read -r rss u s <"$work/time.out"; cpu=$(awk "BEGIN {print $u + $s}")
        else v=NA cpu=NA rss=NA; fi
        record ${q}qemu-img "$v" "$cpu" "$rss"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case_id-size" ${q}qemu-img "$rep" "$(stat -c %s "$out")" NA NA NA >>"$runs"
        rm -f "$out"
      done
      # The same copy, uncompressed, into a raw file.
      truncate -s "$SAMPLE" "$work/c.raw"
      serve_copy raw "$work/c.raw" -- "$img/sample.raw" @ "$SAMPLE"
      rm -f "$work/c.raw"
    done
  done
  for c in zlib zstd; do
    case_id=h-$c-read
    say "(h) read of the $c-compressed sample (made by qemu-img convert -c)"
    for rep in $(seq 1 "$reps"); do
      serve_copy ours "$img/sample-$c.qcow2" -- @ null: "$SAMPLE"
      for q in "${QP[@]}"; do
        serve_copy ${q}qemu "$img/sample-$c.qcow2" -- @ null: "$SAMPLE"
      done
      serve_copy raw "$img/sample.raw" -- @ null: "$SAMPLE"
    done
  done
}

# (i) LUKS: a fully allocated image (aes-256-xts-plain64 with sha256,
# qemu-img's default LUKS cipher) of $LUKS bytes of random data, and the
# same data raw.  Both servers open it with the same passphrase (file
# $luks_pw).  The key derivation is made cheap (encrypt.iter-time=10):
# it only costs time when a server opens the image, which is not
# measured, and would add seconds to every run.
luks_pw=$img/luks-passphrase
luks_secret=(--object "secret,id=sec0,file=$luks_pw")
luks_opts=encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10

# luks_qemu_img ARGS...: qemu-img (create or convert) making a LUKS
# image.  Its PBKDF2 benchmark fails now and then on a loaded machine
# ("Unable to get accurate CPU usage"): try again.
luks_qemu_img ()
{
  local i
  for i in $(seq 1 10); do
    if qemu-img "$@" 2>"$work/luks-qemu-img.err"; then return 0; fi
    grep -q 'accurate CPU usage' "$work/luks-qemu-img.err" || break
  done
  cat "$work/luks-qemu-img.err" >&2
  die "qemu-img $1 of a LUKS image failed"
}

setup_luks ()
{
  local stamp="luks $LUKS v1"
  if [ "$(cat "$img/luks-stamp" 2>/dev/null)" = "$stamp" ] &&
     [ -s "$luks_pw" ]; then
    say "reusing the LUKS images in $img"
  else
    rm -f "$img/luks-stamp" "$img/data-luks.raw" "$img/data-luks.qcow2" \
          "$luks_pw"
    say "making the LUKS images in $img"
    printf 'qc-bench %s' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$luks_pw"
    head -c "$LUKS" /dev/urandom >"$img/data-luks.raw"
    luks_qemu_img convert "${luks_secret[@]}" -f raw -O qcow2 -o "$luks_opts" \
      "$img/data-luks.raw" "$img/data-luks.qcow2"
    echo "$stamp" >"$img/luks-stamp"
  fi
  cat "$img/data-luks.raw" "$img/data-luks.qcow2" >/dev/null
}

wl_i ()
{
  setup_luks
  case_id=i-luks-seqread
  say "(i) LUKS sequential read, $((LUKS / MiB)) MiB fully allocated, nbdcopy to null:"
  for rep in $(seq 1 "$reps"); do
    serve_copy ours "$img/data-luks.qcow2" passphrase=+"$luks_pw" -- \
               @ null: "$LUKS"
    for q in "${QP[@]}"; do
      serve_copy ${q}qemu-luks "$img/data-luks.qcow2" -- @ null: "$LUKS"
    done
    serve_copy raw "$img/data-luks.raw" -- @ null: "$LUKS"
  done
  case_id=i-luks-seqwrite
  say "(i) LUKS sequential write of $((LUKS / MiB)) MiB into a new image (nbdcopy from a raw file)"
  for rep in $(seq 1 "$reps"); do
    # Both servers get the same kind of image: new, empty, made by
    # qemu-img create with the same options.
    luks_qemu_img create -q -f qcow2 "${luks_secret[@]}" -o "$luks_opts" \
      "$work/luks.qcow2" "$LUKS"
    serve_copy ours "$work/luks.qcow2" passphrase=+"$luks_pw" -- \
               "$img/data-luks.raw" @ "$LUKS"
    rm -f "$work/luks.qcow2"
    for q in "${QP[@]}"; do
      luks_qemu_img create -q -f qcow2 "${luks_secret[@]}" -o "$luks_opts" \
        "$work/luks.qcow2" "$LUKS"
      serve_copy ${q}qemu-luks "$work/luks.qcow2" -- "$img/data-luks.raw" @ "$LUKS"
      rm -f "$work/luks.qcow2"
    done
    truncate -s "$LUKS" "$work/luks.raw"
    serve_copy raw "$work/luks.raw" -- "$img/data-luks.raw" @ "$LUKS"
    rm -f "$work/luks.raw"
  done
}

# (j) a 1 TiB [64 GiB] disk with $J_SNAPS internal snapshots: the time to
# the first write (our overlap checks count every reference in the image
# then) and the 4 KiB random-write rate after it, with the checks on and
# off, ours and qemu-nbd's (default: overlap-check=cached; and =all).
j_img=$img/snap.qcow2

# j_io IMAGE: qemu-io, the commands on stdin; -t unsafe: no flush after
# each write (with flushes, the 16384 writes take minutes).  qemu-io
# exits 0 even when a command fails: any output but its prompts is an
# error (the writes are -q).
j_io ()
{
  local out
  out=$(qemu-io -t unsafe -f qcow2 "$1" 2>&1 | sed 's/qemu-io> //g' | grep -v '^$' || :)
  [ -z "$out" ] || die "qemu-io on $1: $(head -3 <<<"$out")"
}

setup_j ()
{
  local stamp="j $J_VS $J_STRIDE $J_OFF $J_REGION $J_SNAPS v1" i s k n
  if [ "$(cat "$img/j-stamp" 2>/dev/null)" = "$stamp" ] && [ -f "$j_img" ]; then
    say "reusing the (j) image in $img"
  else
    rm -f "$img/j-stamp" "$j_img"
    say "making the (j) image in $img: $((J_VS / GiB)) GiB disk, $J_SNAPS snapshots"
    qemu-img create -q -f qcow2 -o cluster_size=65536 "$j_img" "$J_VS"
    n=$((J_VS / J_STRIDE))
    {
      for i in $(seq 0 $((n - 1))); do
        echo "write -q -P $((i % 255 + 1)) $((i * J_STRIDE)) 64k"
      done
      for i in $(seq 0 $((J_REGION / (64 * MiB) - 1))); do
        echo "write -q -P 90 $((J_OFF + i * 64 * MiB)) 64M"
      done
    } | j_io "$j_img"
    for s in $(seq 1 "$J_SNAPS"); do
      qemu-img snapshot -c "s$s" "$j_img" || die "qemu-img snapshot -c s$s failed"
      [ "$s" -lt "$J_SNAPS" ] || break
      # Between two snapshots: 64 KiB next to 8 of the grid's clusters
      # (their L2 tables are then no longer shared with the snapshot),
      # 4 KiB in 2 of the region's clusters.
      {
        for k in $(seq 0 7); do
          echo "write -q -P $s $(( ((s * 97 + k * 2053) % n) * J_STRIDE + 65536 )) 64k"
        done
        for k in 0 1; do
          echo "write -q -P $s $(( J_OFF + ((s * 7919 + k * 104729) % (J_REGION / 65536)) * 65536 )) 4k"
        done
      } | j_io "$j_img"
    done
    qemu-img check -q "$j_img" || die "qemu-img check $j_img: errors"
    echo "$stamp" >"$img/j-stamp"
  fi
  cat "$j_img" >/dev/null
}

# j_run SERVER ARGS...: a client armed first (nbd module loaded, retrying
# every millisecond to connect), then the server launched; the client
# writes 4 KiB at $J_OFF and flushes.  Recorded in ms: launch to
# connected (j-ready), the pwrite + flush (j-write1), launch to the
# write done (j-first), with the server's CPU time since its launch.
# Then, on the same server, fio's 4 KiB random writes in the region
# (j-randwrite).
j_run ()
{
  local name=$1 out=$work/fw.out armed=$work/fw.armed fw t0 t1 t2 i v
  shift
  rm -f "$out" "$armed" "$sock"
  python3 - "$sock" "$armed" "$J_OFF" >"$out" 2>>"$res/logs/j-client.log" <<'EOF' &
import os, sys, time
import nbd
sock, armed, off = sys.argv[1], sys.argv[2], int(sys.argv[3])
buf = os.urandom(4096)
open(armed, "w").close()
deadline = time.time() + 120
while True:
    h = nbd.NBD()
    try:
        h.connect_unix(sock)
        break
    except nbd.Error:
        if time.time() > deadline:
            raise
        time.sleep(0.001)
t1 = time.time()
h.pwrite(buf, off)
h.flush()
t2 = time.time()
h.shutdown()
print("%.6f %.6f" % (t1, t2))
EOF
  fw=$!
  for i in $(seq 1 1000); do
    [ ! -e "$armed" ] && kill -0 "$fw" 2>/dev/null || break
    sleep 0.01
  done
  t0=$(now)
  launch "$name" "$@"
  t1= t2=
  if wait "$fw"; then read -r t1 t2 <"$out" || :; fi
  if [ -n "$t2" ] && kill -0 "$srv_pid" 2>/dev/null; then
    cpu=$(awk -v t="$(cpu_ticks "$srv_pid")" -v hz="$hz" 'BEGIN {printf "%.3f", t / hz}')
    case_id=j-ready; record "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", (b - a) * 1000}') 1" NA NA
    case_id=j-write1; record "$name" "$(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.1f", (b - a) * 1000}') 1" NA NA
    case_id=j-first; record "$name" "$(awk -v a="$t0" -v b="$t2" 'BEGIN {printf "%.1f", (b - a) * 1000}') 1" "$cpu" NA
    case_id=j-randwrite
    cpu0=$(cpu_ticks "$srv_pid")
    v=$(fio_timed randwrite --offset="$J_OFF" --size="$J_REGION")
    stop
  else
    say "  (j) $name: no first write; server log:"
    tail -5 "$srv_log" >&2
    for case_id in j-ready j-write1 j-first; do record "$name" NA NA NA; done
    case_id=j-randwrite
    if [ -n "$srv_pid" ]; then kill "$srv_pid" 2>/dev/null || :; wait "$srv_pid" 2>/dev/null || :; srv_pid=; fi
    v=NA cpu=NA rss=NA
  fi
  record "$name" "$v" "$cpu" "$rss"
  case_id=j
}

wl_j ()
{
  local s a
  setup_j
  case_id=j
  say "(j) $((J_VS / GiB)) GiB disk, $J_SNAPS snapshots: time to the first 4k write, then 4k random write qd $QD in $((J_REGION / MiB)) MiB, ${runtime}s"
  for rep in $(seq 1 "$reps"); do
    for s in ours ours-off "${QP[@]/%/qemu}" "${QP[@]/%/qemu-all}"; do
      # A fresh copy each time (not timed).
      cp --reflink=auto "$j_img" "$work/j.qcow2"
      case $s in
        ours) a=("$work/j.qcow2") ;;
        ours-off) a=("$work/j.qcow2" overlap-check=off) ;;
        qemu|q10-qemu) a=("$work/j.qcow2") ;;
        qemu-all|q10-qemu-all) a=("driver=qcow2,overlap-check=all,file.driver=file,file.filename=$work/j.qcow2") ;;
      esac
      j_run "$s" "${a[@]}"
      rm -f "$work/j.qcow2"
    done
  done
}

# (k) the qcow2enc filter against qemu-img convert: making a qcow2 file
# of a raw source.  ours: nbdkit -r --filter=qcow2enc file SRC, and
# nbdcopy from it into a file (and into a pipe); timed from the server's
# launch, so that the scan before serving (zero-detect, the
# compression of every cluster) is counted.  qemu: qemu-img convert
# -O qcow2 (-c) from the same file.  raw: nbdkit file + nbdcopy into a
# raw file, the floor of a copy through NBD.  MB/s are source bytes per
# second; the sizes of the files go to the size table.
k_src=$img/k-src.raw

setup_k ()
{
  local stamp="k $SEQ v1" i chunk=$((64 * MiB))
  if [ "$(cat "$img/k-stamp" 2>/dev/null)" = "$stamp" ] && [ -f "$k_src" ]; then
    say "reusing the (k) source in $img"
  else
    # Per 64 MiB: 40 MiB of data, 8 MiB of written zeros, 16 MiB hole.
    rm -f "$k_src"
    truncate -s "$SEQ" "$k_src"
    for i in $(seq 0 $((SEQ / chunk - 1))); do
      dd if="$img/data-rnd.raw" of="$k_src" bs=1M count=40 \
         skip=$((i * 64 % (RND / MiB - 40))) seek=$((i * 64)) \
         conv=notrunc status=none
      dd if=/dev/zero of="$k_src" bs=1M count=8 seek=$((i * 64 + 40)) \
         conv=notrunc status=none
    done
    echo "$stamp" >"$img/k-stamp"
  fi
  cat "$k_src" >/dev/null
}

# k_ours SRC BYTES DST [filter options]: launch, copy (DST "-": into a
# pipe to a file), stop, record; the file's size as $case_id-size.
k_ours ()
{
  local src=$1 bytes=$2 dst=$3 t0 t1 v; shift 3
  t0=$(now)
  if start enc "$src" "$@"; then
    if if [ "$dst" = - ]; then
         nbdcopy "$uri" - 2>>"$res/logs/$case_id-client.log" >"$work/k.qcow2"
       else
         nbdcopy "$uri" "$work/k.qcow2" 2>>"$res/logs/$case_id-client.log"
       fi; then
      t1=$(now); v="$(mbps "$bytes" "$t0" "$t1") $bytes"
    else v=NA; fi
    stop
  else v=NA cpu=NA rss=NA; fi
  record ours "$v" "$cpu" "$rss"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case_id-size" ours "$rep" "$(stat -c %s "$work/k.qcow2" 2>/dev/null || echo NA)" NA NA NA >>"$runs"
  rm -f "$work/k.qcow2"
}

# k_qemu SRC BYTES [qemu-img convert options]
k_qemu ()
{
  local src=$1 bytes=$2 t0 t1 v u s; shift 2
  t0=$(now)
  if /usr/bin/time -f '%M %U %S' -o "$work/time.out" \
       qemu-img convert -f raw -O qcow2 "$@" "$src" "$work/q.qcow2" \
       2>>"$res/logs/$case_id-client.log"; then
    t1=$(now); v="$(mbps "$bytes" "$t0" "$t1") $bytes"
    read -r rss u s <"$work/time.out"; cpu=$(awk "BEGIN {print $u + $s}")
  else v=NA cpu=NA rss=NA; fi
  record qemu-img "$v" "$cpu" "$rss"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case_id-size" qemu-img "$rep" "$(stat -c %s "$work/q.qcow2" 2>/dev/null || echo NA)" NA NA NA >>"$runs"
  rm -f "$work/q.qcow2"
}

wl_k ()
{
  local c
  setup_k
  say "(k) qcow2enc: $((SEQ / MiB)) MiB source (5/8 data, 1/8 zeros, 1/4 holes) to a qcow2 file"
  for rep in $(seq 1 "$reps"); do
    case_id=k-plain
    k_ours "$k_src" "$SEQ" file
    k_qemu "$k_src" "$SEQ"
    truncate -s "$SEQ" "$work/k.raw"
    serve_copy raw "$k_src" -- @ "$work/k.raw" "$SEQ"
    rm -f "$work/k.raw"
    case_id=k-pipe
    k_ours "$k_src" "$SEQ" -
    k_qemu "$k_src" "$SEQ"
  done
  for c in zlib zstd; do
    [ $c = zstd ] && opt=(-o compression_type=zstd) || opt=()
    case_id=k-$c
    say "(k) qcow2enc-compress=$c of the $((SAMPLE / MiB)) MiB sample, against qemu-img convert -c"
    for rep in $(seq 1 "$reps"); do
      case_id=k-$c
      k_ours "$img/sample.raw" "$SAMPLE" file qcow2enc-compress=$c
      k_qemu "$img/sample.raw" "$SAMPLE" -c "${opt[@]}"
      # zlib with ISA-L (compress-level=fast): ours only.
      if [ $c = zlib ]; then
        case_id=k-zlibfast
        k_ours "$img/sample.raw" "$SAMPLE" file qcow2enc-compress=zlib \
          qcow2enc-compress-level=fast
      fi
    done
  done
}

# (l) the cost of keeping a persistent bitmap: 4 KiB random writes with
# one enabled bitmap, against the same bitmap disabled and qemu-nbd.
wl_l ()
{
  case_id=l-randwrite-bitmap
  say "(l) 4k random write qd $QD over the allocated $((RND / MiB)) MiB image with one enabled persistent bitmap (vs disabled, vs qemu-nbd), ${runtime}s"
  cp "$img/data-rnd.qcow2" "$work/l.qcow2"
  qemu-img bitmap --add "$work/l.qcow2" bm
  for rep in $(seq 1 "$reps"); do
    # The same image: the bitmap disabled (not kept) for ours-nobm,
    # enabled for ours and qemu-nbd (which keep it up to date).
    serve_fio ours-nobm "$work/l.qcow2" bitmap-disable=bm -- fio_timed randwrite
    serve_fio ours "$work/l.qcow2" bitmap-enable=bm -- fio_timed randwrite
    serve_fio qemu "$work/l.qcow2" -- fio_timed randwrite
  done
  rm -f "$work/l.qcow2"
}

# (m) remote: the sample's images on nginx (loopback), read through the
# qcow2 filter over nbdkit's curl plugin (ours) against qemu-img convert
# -m 1 from the URL into a raw file (qemu's http driver stalls with its
# default parallel requests), and against moving the image file's own
# bytes (nbdkit curl of the same .qcow2: raw-cmd).  Then the same with
# nbdkit's delay filter adding $REMOTE_DELAY to every read below the
# qcow2 filter (and below the byte mover): a network's latency.  Every
# MB/s is the sample's size over the time, so ours/raw is the time of
# moving the bytes over the time of decoding them.
. "$top/tests/nginx.sh"
start_nginx ()
{
  chmod a+rx "$img"; chmod a+r "$img"/sample*
  nginx_launch "$work/ngx" "$img" ||
    die "nginx did not start: $(cat "$work/ngx/nginx.log")"
  cp "$work/ngx/nginx.log" "$res/logs/nginx.log" 2>/dev/null || :
  ngx_pid=$nginx_pid
  base_url=$nginx_url
}

wl_m ()
{
  local c d url t0 t1 v q df dp
  [ -f "$img/sample-plain.qcow2" ] ||
    qemu-img convert -f raw -O qcow2 "$img/sample.raw" "$img/sample-plain.qcow2"
  start_nginx
  for c in zlib plain; do
    url=$base_url/sample-$c.qcow2
    for d in 0 "$REMOTE_DELAY"; do
      # The delay filter (df) and its parameter (dp, after the plugin's).
      if [ "$d" = 0 ]; then case_id=m-$c-remote; df=() dp=()
      else case_id=m-$c-remote-delay; df=(--filter=delay) dp=(delay-read="$d"); fi
      say "($case_id) read of the $c sample image over curl (nginx on loopback), delay below: $d"
      for rep in $(seq 1 "$reps"); do
        serve_copy ours-cmd --filter=qcow2 "${df[@]}" curl "$url" "${dp[@]}" -- \
                   @ null: "$SAMPLE"
        serve_copy raw-cmd "${df[@]}" curl "$url" "${dp[@]}" -- @ null: "$SAMPLE"
        [ "$d" = 0 ] || continue
        for q in "${QP[@]}"; do
          t0=$(now)
          if /usr/bin/time -f '%M %U %S' -o "$work/time.out" timeout 600 \
               "$(qimg "$q")" convert -m 1 -f qcow2 -O raw "$url" "$work/m.raw" \
               2>>"$res/logs/$case_id-client.log"; then
            t1=$(now); v="$(mbps "$SAMPLE" "$t0" "$t1") $SAMPLE"
            read -r rss u s <"$work/time.out"; cpu=$(awk "BEGIN {print $u + $s}")
          else v=NA cpu=NA rss=NA; fi
          record ${q}qemu-img "$v" "$cpu" "$rss"
          rm -f "$work/m.raw"
        done
      done
    done
  done
  kill "$ngx_pid" 2>/dev/null || :; wait "$ngx_pid" 2>/dev/null || :
  ngx_pid=
}

# ---------------------------------------------------------------- main
start_time=$(date +%s)
{
  echo "mode=$mode reps=$reps runtime=$runtime QD=$QD SMALL_CACHE=$SMALL_CACHE REMOTE_DELAY=$REMOTE_DELAY"
  echo "images: $img; scratch images: $work ($(stat -f -c %T "$work"))"
  echo "SEQ=$SEQ RND=$RND ALLOC_VS=$ALLOC_VS ALLOC_IO=$ALLOC_IO COW_IO=$COW_IO SAMPLE=$SAMPLE LUKS=$LUKS"
  echo "J_VS=$J_VS J_STRIDE=$J_STRIDE J_OFF=$J_OFF J_REGION=$J_REGION J_SNAPS=$J_SNAPS"
  echo "host: $(nproc) CPUs, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo), load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "nbdkit: $(nbdkit --version | head -1); qemu-nbd: $(qemu-nbd --version | head -1)"
  if [ ${#QP[@]} -gt 1 ]; then echo "q10: $("$Q10/bin/qemu-nbd" --version | head -1)"; fi
  echo "nbdcopy: $(nbdcopy --version | head -1); fio: $(fio --version)"
  echo "tree: $(git -C "$top" describe --always --dirty 2>/dev/null || echo '?')"
} >"$res/info.txt"
if awk -v n="$(nproc)" '{exit !($1 > n)}' /proc/loadavg; then
  echo "WARNING: load average above $(nproc) at start: other work shares the CPUs; compare the server CPU columns, and rerun" >>"$res/info.txt"
fi
cat "$res/info.txt" >&2
: >"$runs"

if [ $common = 1 ]; then setup_images; fi
for w in a b c d e f g h i j k l m; do
  if want $w; then "wl_$w"; fi
done

end_time=$(date +%s)
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg); wall time: $((end_time - start_time)) s" >>"$res/info.txt"
python3 "$bench/summarize.py" "$res" "$SAMPLE" | tee "$res/table.txt"
say "results in $res (wall time $((end_time - start_time)) s)"
