#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Differential write test.  For every image of a matrix (qcow2 versions,
# cluster sizes, refcount widths, extended L2, lazy refcounts, zstd,
# backing chains, internal snapshots, external data files, odd sizes),
# build the image with qemu-img/qemu-io (patterned data, compressed
# clusters, zero clusters, discards, snapshots), then for several seeds:
#
#   copy A  served by  nbdkit qcow2 A
#   copy B  served by  qemu-nbd -f qcow2 --discard=unmap B
#
# apply the same seeded random writes / zeroes (NO_HOLE, FAST_ZERO) /
# trims / flushes / FUA writes to both (random-ops.py, which also compares
# what both serve), stop both servers (SIGTERM: a clean shutdown) and
# judge:
#   - qemu-img check A exits 0 (no corruption, no leaks after a clean stop)
#   - qemu-img check B exits 0
#   - qemu-img compare A B: identical
#   - every internal snapshot of A reads exactly as before the run
#   - data_file_raw=on: A's raw data file equals what qemu reads from A
# The last seed of each image runs in two sessions (servers restarted in
# between, judged after each), so the second starts from what the first
# left on disk.  Every op is applied to both servers; a fast zero that a
# server refuses (ENOTSUP) becomes a plain zero for that server.
#
# A failure is bisected: the report names the first op after which the
# two servers read differently (or, for a failed check, a short failing
# prefix of the op stream) and prints the commands that reproduce it.
#
# Knobs (environment):
#   QC_DIFF_SEEDS=N      seeds per image (default 3)
#   QC_DIFF_OPS=N        random operations per seed (default 300)
#   QC_DIFF_SEED_BASE=N  seeds are BASE + 100 * image number + k
#                        (default 1000; vary it to fuzz)
#   QC_DIFF_JOBS=N       images worked on in parallel (default 2)
#   QC_DIFF_ONLY=REGEX   only images whose name matches
#   QC_DIFF_KEEP=DIR     keep the work directory of failed runs in DIR
#   QC_DIFF_TMPDIR=DIR   where most images live (default /dev/shm, a
#                        tmpfs, if it has room: see "fastdir" below)

. "${srcdir:-.}/functions.sh"

requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
requires cmp --version
requires timeout --version
requires "$PYTHON" -c 'import nbd'
[ -x "$NBDKIT" ] || fail "$NBDKIT not found (run configure)"

randomops=$(cd "${srcdir:-.}" && pwd)/random-ops.py
[ -r "$randomops" ] || fail "$randomops not found"

nseeds=${QC_DIFF_SEEDS:-3}
nops=${QC_DIFF_OPS:-300}
seedbase=${QC_DIFF_SEED_BASE:-1000}
jobs_max=${QC_DIFF_JOBS:-2}
only=${QC_DIFF_ONLY:-}
keep=${QC_DIFF_KEEP:-}

M=$((1024 * 1024))
K=1024

# The matrix: NAME SIZE QEMU-IMG-CREATE-OPTIONS FLAGS
# FLAGS (comma separated, or -):
#   snap        internal snapshots (s1, s3 kept; s2 deleted) with writes between
#   nocomp      no compressed clusters (qemu refuses them with a data file)
#   back=KIND   backing file: raw, qcow2, short (qcow2 shorter than the
#               top), chain (raw <- qcow2 <- top)
#   datafile    options name an external data file data.raw
#   rawcheck    after the run, data.raw must equal qemu's view of A
#   disk        work in $tmpdir (a real file system), not on tmpfs
matrix="
v3-64k        32M      compat=1.1                                  disk
v2-64k        32M      compat=0.10                                 -
v3-512        16M      cluster_size=512                            -
v2-512        16M      compat=0.10,cluster_size=512                -
v3-4k         16M      cluster_size=4096                           -
v2-4k         16M      compat=0.10,cluster_size=4096               -
v3-2M         32M      cluster_size=2M                             -
v2-2M         32M      compat=0.10,cluster_size=2M                 -
rc1-64k       32M      refcount_bits=1                             -
rc1-4k        16M      refcount_bits=1,cluster_size=4096           -
rc2-64k       32M      refcount_bits=2                             -
rc4-512       16M      refcount_bits=4,cluster_size=512            -
rc8-4k        16M      refcount_bits=8,cluster_size=4096           -
rc32-64k      32M      refcount_bits=32                            -
rc64-64k      32M      refcount_bits=64                            -
rc64-512      16M      refcount_bits=64,cluster_size=512           -
xl2-16k       16M      extended_l2=on,cluster_size=16k             -
xl2-64k       32M      extended_l2=on                              disk
xl2-2M        32M      extended_l2=on,cluster_size=2M              -
lazy-64k      32M      lazy_refcounts=on                           -
lazy-512      16M      lazy_refcounts=on,cluster_size=512          -
zstd-64k      32M      compression_type=zstd                       -
zstd-xl2-16k  16M      compression_type=zstd,extended_l2=on,cluster_size=16k -
back-raw      32M      compat=1.1                                  back=raw
back-qcow2    32M      compat=1.1                                  back=qcow2,disk
back-short    32M      compat=1.1                                  back=short
back-chain    32M      compat=1.1                                  back=chain
back-v2       32M      compat=0.10                                 back=qcow2
back-512      16M      cluster_size=512                            back=short
back-xl2-64k  32M      extended_l2=on                              back=qcow2
back-xl2-2M   32M      extended_l2=on,cluster_size=2M              back=short
snap-v3-64k   32M      compat=1.1                                  snap
snap-v3-512   16M      cluster_size=512                            snap
snap-v2       32M      compat=0.10                                 snap
snap-xl2      32M      extended_l2=on,cluster_size=16k             snap
snap-rc64     16M      refcount_bits=64,cluster_size=4096          snap
snap-back     32M      lazy_refcounts=on                           snap,back=qcow2
data          32M      data_file=data.raw                          datafile,nocomp
data-raw      32M      data_file=data.raw,data_file_raw=on         datafile,nocomp,rawcheck,disk
data-xl2      32M      data_file=data.raw,extended_l2=on           datafile,nocomp
prealloc-meta 32M      preallocation=metadata                      nocomp
prealloc-xl2  16M      preallocation=falloc,extended_l2=on,cluster_size=16k nocomp
odd-64k       20979712 compat=1.1                                  -
odd-2M        18350592 cluster_size=2M                             -
odd-xl2       17306112 extended_l2=on,cluster_size=32k             back=short
"
# odd sizes: 20M+8k (64k clusters), 17.5M+512 (2M), 16.5M+4.5k (32k)

# A file of half-compressible bytes, for compressed writes whose streams
# span many sectors (and so cross host clusters).
mix=$tmpdir/mix.bin
"$PYTHON" - "$mix" <<'EOF'
import random, sys
r = random.Random(7)
out = bytearray()
while len(out) < 4 << 20:
    if r.random() < 0.5:
        out += r.randbytes(r.randint(1, 3000))
    else:
        out += bytes([r.randrange(256)]) * r.randint(1, 5000)
open(sys.argv[1], "wb").write(out[:4 << 20])
EOF

# Most images live on tmpfs: the servers fsync a lot and this test is
# about what they write, not about durability.  Images flagged "disk"
# stay in $tmpdir, so that a real file system's zero/punch paths run too.
fastdir=$tmpdir
if [ -n "${QC_DIFF_TMPDIR:-}" ]; then
  fastdir=$(mktemp -d "$QC_DIFF_TMPDIR/qc-write-diff.XXXXXX")
elif [ -d /dev/shm ] && [ -w /dev/shm ] &&
     [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt $((2 * 1024 * 1024)) ]; then
  fastdir=$(mktemp -d /dev/shm/qc-write-diff.XXXXXX)
fi
# On an early exit: stop the image workers still running, then the
# servers they left behind.
kill_leftovers ()
{
  local f j
  for j in $(jobs -pr); do kill "$j" 2>/dev/null; done
  for f in "$tmpdir"/*/[ab].pid "$fastdir"/*/[ab].pid; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  return 0
}
on_exit kill_leftovers

[ "$fastdir" = "$tmpdir" ] || on_exit "rm -rf '$fastdir'"

# wdir NAME FLAGS: the work directory of an image.
wdir ()
{
  if has_flag "$2" disk; then echo "$tmpdir/$1"; else echo "$fastdir/$1"; fi
}

size_bytes ()
{
  case $1 in
    *M) echo $(( ${1%M} * M )) ;;
    *k) echo $(( ${1%k} * K )) ;;
    *) echo "$1" ;;
  esac
}

has_flag () { case ",$1," in *",$2,"*) return 0 ;; esac; return 1; }

# qio DIR ARGS...: qemu-io on DIR/img.qcow2, run in DIR (qemu opens a
# relative data file name relative to its working directory).
qio ()
{
  local d=$1; shift
  (cd "$d" && qemu-io -f qcow2 "$@" img.qcow2) >/dev/null
}

# qspec DIR FLAGS: the image in DIR as qemu-img sees it from anywhere.
qspec ()
{
  if has_flag "$2" datafile; then
    printf 'json:{"driver":"qcow2","file":{"driver":"file","filename":"%s"},"data-file":{"driver":"file","filename":"%s"}}' \
      "$1/img.qcow2" "$1/data.raw"
  else
    printf '%s' "$1/img.qcow2"
  fi
}

# make_backing W KIND: make the backing file(s) in W; prints the
# qemu-img create options -b/-F for the top image (in W/orig).
make_backing ()
{
  local w=$1 kind=$2 bs=$3
  case $kind in
    raw)
      qemu-img create -q -f raw "$w/base.raw" "$bs" || return 1
      qemu-io -f raw -c 'write -P 7 0 4M' -c 'write -P 8 5M 3M' \
        -c "write -P 9 $((bs - 1536 * K)) 1536k" "$w/base.raw" >/dev/null ||
        return 1
      echo "-b ../base.raw -F raw" ;;
    qcow2|short)
      [ "$kind" = short ] && bs=$((12 * M + 512 * K))
      qemu-img create -q -f qcow2 -o cluster_size=4096 "$w/base.qcow2" "$bs" ||
        return 1
      qemu-io -f qcow2 -c 'write -P 7 0 4M' -c 'write -c -P 10 4M 512k' \
        -c 'write -c -s '"$mix"' 6M 1M' -c 'write -P 8 7M 3M' \
        -c "write -P 9 $((bs - 1536 * K)) 1536k" "$w/base.qcow2" >/dev/null ||
        return 1
      qemu-io -f qcow2 -c 'write -z 1M 256k' -c 'discard 8M 64k' \
        "$w/base.qcow2" >/dev/null || return 1
      echo "-b ../base.qcow2 -F qcow2" ;;
    chain)
      qemu-img create -q -f raw "$w/base.raw" "$bs" || return 1
      qemu-io -f raw -c 'write -P 7 0 6M' -c "write -P 9 $((bs - 4 * M)) 4M" \
        "$w/base.raw" >/dev/null || return 1
      qemu-img create -q -f qcow2 -b base.raw -F raw "$w/mid.qcow2" "$bs" ||
        return 1
      qemu-io -f qcow2 -c 'write -P 11 2M 1M' -c 'write -c -P 12 7M 1M' \
        -c 'write -P 13 12M 2M' -c "write -P 14 $((bs - 1 * M)) 512k" \
        "$w/mid.qcow2" >/dev/null || return 1
      qemu-io -f qcow2 -c 'write -z 3M 64k' -c 'write -z 13M 512k' \
        "$w/mid.qcow2" >/dev/null || return 1
      echo "-b ../mid.qcow2 -F qcow2" ;;
    *) echo "bad backing kind $kind" >&2; return 1 ;;
  esac
}

# make_image NAME SIZE OPTS FLAGS: the pristine image in $tmpdir/NAME/orig,
# snapshot contents in $tmpdir/NAME/snap-*.raw.
make_image ()
{
  local name=$1 size=$2 opts=$3 flags=$4
  local w o
  w=$(wdir "$name" "$flags"); o=$w/orig
  local cs=65536 comp=1 cl back=
  mkdir -p "$o"
  case ,$opts, in
    *,cluster_size=*) cs=${opts#*cluster_size=}; cs=$(size_bytes "${cs%%,*}") ;;
  esac
  has_flag "$flags" nocomp && comp=
  local f
  for f in ${flags//,/ }; do
    case $f in back=*) back=$(make_backing "$w" "${f#back=}" "$size") || return 1 ;; esac
  done
  # shellcheck disable=SC2086
  (cd "$o" && qemu-img create -q -f qcow2 -o "$opts" $back img.qcow2 "$size") ||
    return 1
  # Compressed writes cover whole, unallocated clusters.
  cl=$((cs > 256 * K ? cs : 256 * K))
  local cmds=(-c 'write -P 0x11 0 1M' -c 'write -P 0x22 1049088 300k'
              -c 'write -z 512k 128k' -c 'write -z -u 768k 64k'
              -c 'write -P 0x44 9M 1536k' -c 'write -z -u 9728k 512k'
              -c 'discard 10M 256k'
              -c "write -P 0x55 $((size - 700 * K)) 700k")
  [ -n "$comp" ] &&
    cmds+=(-c "write -c -P 0x33 4M $cl" -c "write -c -s $mix 6M $cl"
           -c "write -c -s $mix $((12 * M)) $((cl * 2))")
  qio "$o" "${cmds[@]}" || return 1
  # Zero / discard over compressed clusters: in a new session (qemu 7.2
  # corrupts its image on a compressed write after that in one session).
  [ -n "$comp" ] &&
    { qio "$o" -c "write -z 4M $((cl / 2))" -c "discard $((12 * M)) $cs" \
        -c "write -P 0x5a $((6 * M + 4096)) 8k" || return 1; }
  if has_flag "$flags" snap; then
    (cd "$o" && qemu-img snapshot -c s1 img.qcow2) || return 1
    cmds=(-c 'write -P 0x66 512k 1M' -c 'write -z 9M 64k' -c 'discard 9472k 64k')
    [ -n "$comp" ] && cmds+=(-c "write -c -P 0x77 14M $cl")
    qio "$o" "${cmds[@]}" || return 1
    (cd "$o" && qemu-img snapshot -c s2 img.qcow2) || return 1
    qio "$o" -c 'write -P 0x88 9M 256k' -c "discard 6M $cl" \
      -c 'write -z -u 1M 64k' || return 1
    (cd "$o" && qemu-img snapshot -c s3 img.qcow2 &&
      qemu-img snapshot -d s2 img.qcow2) || return 1
    local s
    for s in s1 s3; do
      (cd "$o" && qemu-img convert -l "snapshot.name=$s" -O raw img.qcow2 \
         "$w/snap-$s.raw") || return 1
    done
  fi
  (cd "$o" && qemu-img check -q img.qcow2) ||
    { echo "$name: qemu made an unclean image" >&2; return 1; }
}

# session W SEED N: serve W/A with nbdkit and W/B with qemu-nbd, apply N
# random operations of stream SEED to both, stop both servers.  Prints
# nothing on success, the reason otherwise.
session ()
{
  local w=$1 seed=$2 n=$3
  local a=$w/A b=$w/B apid bpid i bad= rc
  rm -f "$w"/*.sock "$w"/*.pid
  # Both servers stay our children (no --fork: a daemon is reaped late
  # by whoever inherits it, so its exit cannot be waited for).  Each runs
  # in its image's directory: qemu resolves a relative data file name
  # against its working directory, the plugin against the image's.
  (cd "$a" && exec "$NBDKIT" -f -U "$w/a.sock" -P "$w/a.pid" \
     qcow2 "$a/img.qcow2" 2>"$w/a.log") &
  apid=$!
  (cd "$b" && exec qemu-nbd -f qcow2 --discard=unmap --persistent \
     --pid-file="$w/b.pid" -k "$w/b.sock" img.qcow2 2>"$w/b.log") &
  bpid=$!
  for i in $(seq 1 500); do
    [ -S "$w/a.sock" ] && [ -s "$w/a.pid" ] &&
      [ -S "$w/b.sock" ] && [ -s "$w/b.pid" ] && break
    kill -0 "$apid" 2>/dev/null && kill -0 "$bpid" 2>/dev/null || break
    sleep 0.02
  done
  if ! [ -S "$w/a.sock" ] || ! [ -S "$w/b.sock" ]; then
    kill "$apid" "$bpid" 2>/dev/null; wait "$apid" "$bpid"
    rm -f "$w/a.pid" "$w/b.pid"
    echo "servers did not start: $(cat "$w/a.log" "$w/b.log")"; return
  fi

  timeout 150 env RANDOM_OPS_DEBUG="${RANDOM_OPS_DEBUG:-}" \
    "$PYTHON" "$randomops" "$seed" "$n" \
    "nbd+unix:///?socket=$w/a.sock" "nbd+unix:///?socket=$w/b.sock" \
    >"$w/ops.out" 2>&1 ||
    bad="random-ops.py: $(tail -n 1 "$w/ops.out")"

  kill "$apid" 2>/dev/null
  wait "$apid"; rc=$?
  kill "$bpid" 2>/dev/null
  wait "$bpid" || bad="${bad:+$bad; }qemu-nbd failed: $(cat "$w/b.log")"
  rm -f "$w/a.pid" "$w/b.pid"
  [ -z "$bad" ] && [ "$rc" -ne 0 ] && bad="nbdkit exited with status $rc"
  [ -n "$bad" ] || tail -n 1 "$w/ops.out" >>"$w/ops.lines"
  [ -z "$bad" ] || echo "$bad"
}

# judge W FLAGS: the checks after a session (servers stopped).  Prints
# nothing on success, the reason of the first failed check otherwise.
judge ()
{
  local w=$1 flags=$2
  local a=$w/A b=$w/B s list
  rm -f "$w"/after-*.raw "$w/a.raw"
  if ! (cd "$a" && qemu-img check img.qcow2) >"$w/check.out" 2>&1; then
    echo "qemu-img check A: $(grep -v '^$' "$w/check.out" | head -n 8 | tr '\n' '|')"
    return
  fi
  if ! (cd "$b" && qemu-img check img.qcow2) >"$w/check.out" 2>&1; then
    echo "qemu-img check B (qemu's own copy!): $(grep -v '^$' "$w/check.out" | head -n 8 | tr '\n' '|')"
    return
  fi
  if ! qemu-img compare "$(qspec "$a" "$flags")" "$(qspec "$b" "$flags")" \
       >"$w/cmp.out" 2>&1; then
    echo "qemu-img compare A B: $(tr '\n' ' ' < "$w/cmp.out")"
    return
  fi
  if has_flag "$flags" snap; then
    list=$(cd "$a" && qemu-img snapshot -l img.qcow2 | awk 'NR > 2 { print $2 }' | tr '\n' ' ')
    if [ "$list" != "s1 s3 " ]; then
      echo "snapshot list changed: $list"
      return
    fi
    for s in s1 s3; do
      if ! (cd "$a" && qemu-img convert -l "snapshot.name=$s" -O raw \
              img.qcow2 "$w/after-$s.raw") 2>"$w/conv.err"; then
        echo "snapshot $s unreadable: $(cat "$w/conv.err")"
        return
      elif ! cmp "$w/snap-$s.raw" "$w/after-$s.raw" >"$w/cmp.out" 2>&1; then
        echo "snapshot $s changed: $(cat "$w/cmp.out")"
        return
      fi
    done
  fi
  if has_flag "$flags" rawcheck; then
    if ! (cd "$a" && qemu-img convert -O raw img.qcow2 "$w/a.raw") 2>"$w/conv.err"; then
      echo "qemu-img convert A: $(cat "$w/conv.err")"
    elif ! cmp "$w/a.raw" "$a/data.raw" >"$w/cmp.out" 2>&1; then
      echo "raw data file differs from qemu's view of A: $(cat "$w/cmp.out")"
    fi
  fi
  rm -f "$w"/after-*.raw "$w/a.raw"
}

# run_once NAME FLAGS SEED:N...: a differential run on fresh copies A and
# B of the image, one session (servers started and stopped) per SEED:N,
# judged after each session.  Prints nothing on success; on failure, the
# reason, and the number of the failing session goes to W/failed.
run_once ()
{
  local name=$1 flags=$2; shift 2
  local w k=0 sn bad
  w=$(wdir "$name" "$flags")
  rm -rf "$w/A" "$w/B" "$w/ops.lines" "$w/failed"
  cp -a --sparse=always "$w/orig" "$w/A"
  cp -a --sparse=always "$w/orig" "$w/B"
  for sn in "$@"; do
    k=$((k + 1))
    bad=$(session "$w" "${sn%:*}" "${sn#*:}")
    [ -n "$bad" ] || bad=$(judge "$w" "$flags")
    if [ -n "$bad" ]; then
      [ $# -eq 1 ] || bad="session $k of $# (seed ${sn%:*}): $bad"
      echo "$k" >"$w/failed"
      echo "$bad"
      return
    fi
  done
}

# run_seed NAME FLAGS SEED:N...: run_once; on failure, find a short
# prefix of the failing session's operation stream that still fails
# and print how to reproduce it.  Prints nothing on success.
run_seed ()
{
  local name=$1 flags=$2; shift 2
  local w bad bad2 lo=0 hi mid k seed
  w=$(wdir "$name" "$flags")
  bad=$(run_once "$name" "$flags" "$@")
  if [ -z "$bad" ]; then
    cat "$w/ops.lines" >>"$w/ops.summary"
    rm -rf "$w/A" "$w/B"
    return
  fi
  echo "$bad"
  grep -i 'error\|warn\|assert' "$w/a.log" | head -n 5 | sed 's/^/  nbdkit: /'
  if [ -n "$keep" ]; then
    mkdir -p "$keep"
    rm -rf "$keep/$name-seed${1%:*}"
    cp -a "$w" "$keep/$name-seed${1%:*}"
    echo "  work directory kept in $keep/$name-seed${1%:*} (A, B: after the run)"
  fi
  # Keep the sessions up to the failing one; shorten that one.
  k=$(cat "$w/failed")
  set -- "${@:1:k}"
  seed=${!k%:*}; hi=${!k#*:}
  local -a pre=("${@:1:k-1}")
  # With RANDOM_OPS_DEBUG, random-ops.py compares after every op and
  # names the first one after which the servers read differently.
  bad2=$(RANDOM_OPS_DEBUG=1 run_once "$name" "$flags" "${pre[@]}" "$seed:$hi")
  case $bad2 in
    *"differs after op "*)
      hi=${bad2##*differs after op }; hi=$((${hi%%[!0-9]*} + 1)); lo=$((hi - 1)) ;;
  esac
  # Otherwise (a check failed, contents agree): bisect on the number of
  # operations (the failure need not be monotonic; this finds one
  # failing prefix whose predecessor passes).
  while [ $((hi - lo)) -gt 1 ]; do
    mid=$(((lo + hi) / 2))
    if [ -n "$(RANDOM_OPS_DEBUG=1 run_once "$name" "$flags" "${pre[@]}" "$seed:$mid")" ]; then
      hi=$mid
    else
      lo=$mid
    fi
  done
  bad2=$(RANDOM_OPS_DEBUG=1 run_once "$name" "$flags" "${pre[@]}" "$seed:$hi")
  echo "  fails after $hi operations of seed $seed (bisected); the last, op $((hi - 1)), is:"
  grep "^op $((hi - 1)):" "$w/ops.out" | sed 's/^/    /'
  echo "  which fails with: ${bad2:-(passed on the rerun: not reproducible?)}"
  if [ -n "$keep" ]; then
    echo "  reproduce:"
    echo "    cd $keep/$name-seed${1%:*} && rm -rf A B && cp -a orig A && cp -a orig B"
  else
    echo "  reproduce (rerun with QC_DIFF_KEEP=DIR QC_DIFF_ONLY='^$name\$' to keep the image):"
    echo "    cd DIR/$name-seed${1%:*} && rm -rf A B && cp -a orig A && cp -a orig B"
  fi
  echo "    then for each session (SEED N):$(for sn in "${pre[@]}"; do printf ' %s %s,' "${sn%:*}" "${sn#*:}"; done) $seed $hi"
  echo "    (cd A && $NBDKIT -f -U \$PWD/../a.sock qcow2 \$PWD/img.qcow2) &"
  echo "    (cd B && qemu-nbd -f qcow2 --discard=unmap --persistent -k \$PWD/../b.sock img.qcow2) &"
  echo "    RANDOM_OPS_DEBUG=1 $PYTHON $randomops SEED N \"nbd+unix:///?socket=\$PWD/a.sock\" \"nbd+unix:///?socket=\$PWD/b.sock\""
  echo "    # stop both servers (SIGTERM), then: (cd A && qemu-img check img.qcow2)"
  rm -rf "$w/A" "$w/B"
}

# run_entry INDEX NAME SIZE OPTS FLAGS: make the image, run every seed;
# the verdict goes to $tmpdir/results/INDEX.
run_entry ()
{
  local idx=$1 name=$2 size=$3 opts=$4 flags=$5
  local out=$tmpdir/results/$idx k seed why nfail=0 start=$SECONDS
  size=$(size_bytes "$size")
  if ! make_image "$name" "$size" "$opts" "$flags" >"$tmpdir/$name.make" 2>&1; then
    { echo "FAIL: $name ($opts $flags): could not build the image:"
      sed 's/^/    /' "$tmpdir/$name.make" | head -n 10
      echo "STAT $name 0 0 1 0 0 0 0"; } >"$out"
    return
  fi
  : >"$out.tmp"
  for k in $(seq 0 $((nseeds - 1))); do
    seed=$((seedbase + idx * 100 + k))
    if [ "$k" -eq $((nseeds - 1)) ] && [ "$nseeds" -gt 1 ]; then
      # The last run is split into two sessions: the second one starts
      # from what the first left on disk (no state kept in memory).
      why=$(run_seed "$name" "$flags" "$seed:$((nops / 2))" \
              "$((seed + 50)):$((nops - nops / 2))")
    else
      why=$(run_seed "$name" "$flags" "$seed:$nops")
    fi
    if [ -n "$why" ]; then
      nfail=$((nfail + 1))
      { echo "FAIL: $name ($opts, $flags) seed $seed:"
        echo "$why" | sed 's/^/    /'; } >>"$out.tmp"
    fi
  done
  {
    cat "$out.tmp"
    if [ "$nfail" -eq 0 ]; then
      echo "ok: $name ($opts, $flags): $nseeds seeds x $nops ops ($((SECONDS - start)) s)"
    fi
    # fast zeroes done/refused by nbdkit and by qemu-nbd (random-ops.py's
    # last line: "... fast zeroes done/refused: 9/4, 9/4")
    echo "STAT $name $nseeds $((nseeds * nops)) $nfail $(
      sed -n 's|.*done/refused: \([0-9]*\)/\([0-9]*\), \([0-9]*\)/\([0-9]*\)$|\1 \2 \3 \4|p' \
        "$(wdir "$name" "$flags")/ops.summary" 2>/dev/null |
      awk '{ a += $1; b += $2; c += $3; d += $4 } END { print a+0, b+0, c+0, d+0 }')"
  } >"$out"
  rm -f "$out.tmp"
  rm -rf "$(wdir "$name" "$flags")"
}

mkdir -p "$tmpdir/results"
idx=0
while read -r name size opts flags; do
  [ -n "$name" ] || continue
  idx=$((idx + 1))
  if [ -n "$only" ] && ! [[ $name =~ $only ]]; then continue; fi
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n || :; done
  run_entry "$idx" "$name" "$size" "$opts" "$flags" &
done <<<"$matrix"
wait

images=0 seeds=0 ops=0 failed=0 failimgs= fz=(0 0 0 0)
for r in $(ls "$tmpdir/results" | sort -n); do
  grep -v '^STAT ' "$tmpdir/results/$r"
  read -r _ name s o f z0 z1 z2 z3 < <(grep '^STAT ' "$tmpdir/results/$r")
  images=$((images + 1)) seeds=$((seeds + s)) ops=$((ops + o))
  fz=($((fz[0] + z0)) $((fz[1] + z1)) $((fz[2] + z2)) $((fz[3] + z3)))
  if [ "$f" -ne 0 ]; then failed=$((failed + f)); failimgs+=" $name"; fi
done
echo "test-write-diff: $images images, $seeds seed runs, $ops random operations" \
     "compared with qemu-nbd (fast zeroes done/refused: nbdkit ${fz[0]}/${fz[1]}," \
     "qemu-nbd ${fz[2]}/${fz[3]}); $failed failed runs${failimgs:+ (images:$failimgs)}"
[ "$images" -gt 0 ] || fail "no image was tested"
[ "$failed" -eq 0 ] || fail "$failed differential runs failed"
