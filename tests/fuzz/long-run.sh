#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# long-run.sh TARGET TOTAL [CHUNK]
#
# Fuzz TARGET (built in this directory) until it has executed TOTAL
# inputs in all, in chunks of CHUNK executions (-runs, default 1000000),
# new inputs going to work/TARGET (the stored corpus only changes by
# `make merge`).  Counting executions, not seconds, keeps the figures
# right when the process is paused (SIGSTOP) for a while.
#
# Resumable: every chunk appends "date runs seconds result" to
# work/TARGET.runs and the script starts from the sum there, so after an
# interruption (Ctrl-C, or SIGTERM to the script: the running chunk is stopped
# with SIGINT and counted) run it again with the same arguments.
# `touch work/stop` ends it after the current chunk.
#
# WORKERS=N (default 1) runs N fuzzer processes side by side, each doing
# its share of every chunk over the same corpus directory (one per core);
# each process's chunk is a line of its own in work/TARGET.runs.
#
# A chunk that ends with a finding stops the script (exit 1), the input
# in work/TARGET-crash-* etc., except a timeout that does not reproduce
# when run again alone: a pause of the process makes libFuzzer's wall
# clock timeout fire, so such a timeout is logged and discarded.
set -uo pipefail

cd "$(dirname "$0")"
t=${1:?usage: long-run.sh TARGET TOTAL [CHUNK]}
total=${2:?usage: long-run.sh TARGET TOTAL [CHUNK]}
chunk=${3:-1000000}
flags=(-rss_limit_mb="${RSS_LIMIT:-2048}" -malloc_limit_mb="${MALLOC_LIMIT:-256}"
       -max_len="${MAX_LEN:-262144}" -timeout="${TIMEOUT:-20}"
       -print_final_stats=1)

[ -x "$t" ] || { echo "$t is not built (make -C tests/fuzz)" >&2; exit 2; }
mkdir -p work/"$t" work/bin
state=work/$t.runs

done_runs () {
  awk '{ n += $2 } END { print n + 0 }' "$state" 2>/dev/null || echo 0
}

# Executions of a chunk from its log: the final stats, else (killed
# hard) the last status line "#N ...".
executed () {
  local n
  n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$1" | tail -n 1)
  [ -n "$n" ] || n=$(sed -n 's/^#\([0-9][0-9]*\)[[:space:]].*/\1/p' "$1" |
                       tail -n 1)
  echo "${n:-0}"
}

pid=
workers=${WORKERS:-1}
# $pid: the running fuzzer processes (a list).
trap '[ -n "$pid" ] && kill -INT $pid 2>/dev/null; stopping=1' INT TERM
stopping=

while :; do
  have=$(done_runs)
  if [ "$have" -ge "$total" ]; then
    echo "$t: $have executions (target $total) done"
    exit 0
  fi
  if [ -e work/stop ] || [ -n "$stopping" ]; then
    echo "$t: stopped at $have executions"
    exit 0
  fi
  n=$((total - have < chunk ? total - have : chunk))
  # A private copy: rebuilding the target does not disturb the chunk.
  cp "$t" work/bin/"$t".tmp && mv work/bin/"$t".tmp work/bin/"$t"
  stamp=$(date +%Y%m%d-%H%M%S)
  rm -f work/"$t"-timeout-*
  start=$(date +%s)
  pids=() logs=()
  for ((w = 1; w <= workers; w++)); do
    log=work/$t-$stamp$([ "$workers" -gt 1 ] && echo "-w$w").log
    ./work/bin/"$t" "${flags[@]}" -runs=$(((n + workers - 1) / workers)) \
      -artifact_prefix=work/"$t"- work/"$t" corpus/"$t" > "$log" 2>&1 &
    pids+=($!) logs+=("$log")
  done
  pid=${pids[*]}
  rcs=()
  for p in "${pids[@]}"; do
    wait "$p"; rc=$?
    # wait returns early when a trapped signal arrives: wait for the end.
    while kill -0 "$p" 2>/dev/null; do wait "$p"; rc=$?; done
    rcs+=($rc)
  done
  pid=
  secs=$(($(date +%s) - start))
  result=ok
  for a in work/"$t"-timeout-*; do
    [ -e "$a" ] || continue
    if ./work/bin/"$t" "${flags[@]}" "$a" >> "${logs[0]}.timeout" 2>&1; then
      echo "$(date -Is) $a: timeout does not reproduce (paused?), discarded" \
        >> "${logs[0]}.timeout"
      rm -f "$a"
      result=spurious-timeout
    else
      result=finding
    fi
  done
  for a in work/"$t"-crash-* work/"$t"-leak-* work/"$t"-oom-*; do
    [ -e "$a" ] && result=finding
  done
  for ((w = 0; w < workers; w++)); do
    r=$result
    [ "$r" != ok ] || [ "${rcs[w]}" -eq 0 ] || [ -n "$stopping" ] ||
      r=rc${rcs[w]}
    echo "$(date -Is) $(executed "${logs[w]}") $secs $r" \
      "$(basename "${logs[w]}")" >> "$state"
    tail -n 1 "$state"
    [ "$r" = ok ] || [ "$r" = spurious-timeout ] || result=$r
  done
  case $result in
    finding|rc*) echo "$t: finding, see $log" >&2; exit 1 ;;
  esac
done
