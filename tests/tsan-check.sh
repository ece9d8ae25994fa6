#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# ThreadSanitizer check of the plugin and the core (not part of "make
# check"; CI runs it on its own):
#
#   bash tests/tsan-check.sh
#
# 1. Copies the sources into a temporary directory and builds them there
#    with -fsanitize=thread (the source tree is left alone).
# 2. Runs tests/test-concurrency.sh against that build.  nbdkit itself is
#    the system's, not instrumented, so the TSan runtime is preloaded
#    into it (LD_PRELOAD, for nbdkit only: a wrapper script replaces the
#    "qcow2" argument by the instrumented plugin).
# 3. Fails if TSan reported anything (data race, lock-order inversion,
#    use of a freed mutex, ...) with a frame in our code (common/,
#    plugin/); the reports are printed.  Reports only about nbdkit's own
#    code are shown but do not fail the check.
#
# The compiler: gcc with its shared runtime libtsan.so (package libtsan2,
# which gcc depends on), or clang if its runtime can be preloaded (clang
# 14's libclang_rt.tsan-x86_64.so crashes when preloaded into a program,
# so on Debian 12 gcc is used).  Exit 77 only when no compiler with a
# working TSan runtime exists.
#
# Environment:
#   QC_TSAN_CC=gcc|clang   the compiler to use (default: the first that works)
#   QC_TSAN_OPS=N          requests per worker in phase 1 (default 300)
#   QC_CONC_ARGS=...       options for concurrency.py (default: shorter
#                          duels, storms and phase 2)
#   QC_CONC_VARIANTS=...   image variants (default: all)
#   QC_TSAN_RUNS=N         runs of the concurrency test, each with its own
#                          seed (default 2)
#   QC_TSAN_SUPPRESSIONS=FILE   a TSan suppressions file (default: none)
#   QC_TSAN_KEEP=1         keep the temporary directory (its path is printed)
#   JOBS=N                 parallel make jobs
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
jobs=${JOBS:-$(nproc)}
ops=${QC_TSAN_OPS:-300}
# Shorter duels, storms and phase 2 than the plain test (TSan is ~5-10
# times slower); QC_CONC_ARGS overrides.
conc_args=${QC_CONC_ARGS:---duel-rounds 60 --storm-rounds 6 --shared-ops 300}
runs=${QC_TSAN_RUNS:-2}
nbdkit_bin=$(command -v nbdkit || :)

skip ()
{
  echo "tsan-check: SKIP: $*" >&2
  echo "tsan-check: 0 passed, 0 failed, 1 skipped"
  exit 77
}
die ()
{
  echo "tsan-check: FAIL: $*" >&2
  echo "tsan-check: 0 passed, 1 failed"
  exit 1
}

[ -n "$nbdkit_bin" ] || die "nbdkit is not installed (apt-get install nbdkit)"

work=$(mktemp -d "${TMPDIR:-/tmp}/qc-tsan.XXXXXX")
cleanup ()
{
  if [ "${QC_TSAN_KEEP:-0}" = 1 ]; then
    echo "tsan-check: kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------
# A compiler whose TSan runtime works here, also preloaded into nbdkit.
# probe CC RUNTIME: 0 if CC builds a TSan program that runs, and nbdkit
# runs with RUNTIME preloaded (both under the command prefix $runner).
runner=()
probe ()
{
  local cc=$1 rt=$2
  [ -n "$rt" ] && [ -f "$rt" ] || return 1
  printf '#include <pthread.h>\nstatic void *f (void *p) { return p; }\n'\
'int main (void) { pthread_t t; pthread_create (&t, 0, f, 0);\n'\
'return pthread_join (t, 0); }\n' >"$work/probe.c"
  local r=0
  "$cc" -fsanitize=thread -g "$work/probe.c" -o "$work/probe" -pthread \
    >"$work/probe.log" 2>&1 || r=$?
  [ $r -eq 0 ] || { echo "cannot build a TSan program" >>"$work/probe.log"; return 1; }
  ("${runner[@]}" "$work/probe") >>"$work/probe.log" 2>&1 || r=$?
  [ $r -eq 0 ] || { echo "a TSan program fails (exit $r)" >>"$work/probe.log"; return 1; }
  ("${runner[@]}" env LD_PRELOAD="$rt" "$nbdkit_bin" --version) \
    >>"$work/probe.log" 2>&1 || r=$?
  [ $r -eq 0 ] || { echo "nbdkit fails with it preloaded (exit $r)" >>"$work/probe.log"; return 1; }
}

runtime_of ()
{
  case $1 in
  gcc) readlink -f "$(gcc -print-file-name=libtsan.so 2>/dev/null)" 2>/dev/null ;;
  clang) clang -print-file-name=libclang_rt.tsan-x86_64.so 2>/dev/null ;;
  esac
}

# TSan needs its fixed memory layout: with more address randomization
# than it knows (some kernels), its programs die at start; then run
# them without randomization (setarch -R).
cc= rt= tried=()
for c in ${QC_TSAN_CC:-gcc clang}; do
  command -v "$c" >/dev/null 2>&1 || { tried+=("$c: not installed"); continue; }
  r=$(runtime_of "$c")
  runner=()
  if probe "$c" "$r"; then
    cc=$c rt=$r
    break
  fi
  if setarch "$(uname -m)" -R true 2>/dev/null; then
    runner=(setarch "$(uname -m)" -R)
    if probe "$c" "$r"; then
      cc=$c rt=$r
      break
    fi
  fi
  tried+=("$c: runtime '${r:-none}' does not work: $(tail -1 "$work/probe.log" 2>/dev/null)")
done
if [ -z "$cc" ]; then
  printf '  %s\n' "${tried[@]}" >&2
  skip "no working ThreadSanitizer runtime (install gcc, which brings libtsan2)"
fi
echo "tsan-check: $cc, runtime $rt${runner:+ (under ${runner[*]})}"

# ---------------------------------------------------------------------
# The instrumented build of the core and the plugin (only: nothing else
# is needed), in a copy of the sources (the tracked files and
# the new ones git does not ignore; without git, all but build products).
build=$work/build
mkdir -p "$build"
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$src" ls-files -z --cached --others --exclude-standard |
    (cd "$src" && tar --null --no-recursion --ignore-failed-read -T - -cf -) |
    tar -C "$build" -xf -
else
  (cd "$src" && tar --exclude=./.git --exclude='*.o' --exclude='*.lo' \
     --exclude='*.la' --exclude=.libs --exclude=.deps --exclude='*.log' \
     --exclude='*.trs' --exclude=./config.status --exclude=./libtool \
     --exclude=./nbdkit --exclude=Makefile --exclude=config.h \
     --exclude=stamp-h1 --exclude=autom4te.cache --exclude='build-*' \
     -cf - .) | tar -C "$build" -xf -
fi
echo "tsan-check: building in $build"
if ! (cd "$build" && autoreconf -fi && \
      ./configure CC="$cc" CFLAGS='-fsanitize=thread -g -O1' \
                  LDFLAGS=-fsanitize=thread && \
      make -j"$jobs" -C common && make -j"$jobs" -C plugin) \
     >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  die "the TSan build failed"
fi
plugin=$build/plugin/.libs/nbdkit-qcow2-plugin.so
[ -f "$plugin" ] || die "no plugin in $build/plugin/.libs"

# nbdkit with the TSan runtime, for nbdkit only (the test's shell, python
# and qemu tools run normally).
logdir=$work/tsan-logs
mkdir -p "$logdir"
tsan_options="halt_on_error=0 log_path=$logdir/tsan second_deadlock_stack=1"
tsan_options+=" suppress_equal_addresses=0 history_size=4"
if [ -n "${QC_TSAN_SUPPRESSIONS:-}" ]; then
  tsan_options+=" suppressions=$(readlink -f "$QC_TSAN_SUPPRESSIONS")"
fi
cat >"$work/nbdkit" <<EOF
#!/usr/bin/env bash
# nbdkit with the ThreadSanitizer build of the plugin (tsan-check.sh).
args=() done=
for a in "\$@"; do
  if [ -z "\$done" ] && [ "\$a" = qcow2 ]; then a='$plugin'; done=1; fi
  args+=("\$a")
done
exec ${runner[*]} env LD_PRELOAD='$rt' TSAN_OPTIONS='$tsan_options' '$nbdkit_bin' "\${args[@]}"
EOF
chmod +x "$work/nbdkit"

# Make sure the instrumented plugin really runs (and TSan is active).
"$work/nbdkit" qcow2 --dump-plugin >"$work/dump.log" 2>&1 ||
  { cat "$work/dump.log" >&2; die "nbdkit cannot load the TSan plugin"; }

# ---------------------------------------------------------------------
status=0
for i in $(seq 1 "$runs"); do
  seed=$(( ($(date +%s) + i * 7919) % 100000 ))
  echo "tsan-check: concurrency test, run $i of $runs (seed $seed)"
  if ! NBDKIT="$work/nbdkit" srcdir="$build/tests" top_builddir="$build" \
       QC_CONC_OPS=$ops QC_CONC_SEED=$seed QC_CONC_ARGS="$conc_args" \
       bash "$build/tests/test-concurrency.sh" >"$work/run$i.log" 2>&1; then
    cat "$work/run$i.log" >&2
    echo "tsan-check: the concurrency test failed under TSan (run $i," \
         "seed $seed)" >&2
    status=1
  else
    tail -1 "$work/run$i.log"
  fi
done

# ---------------------------------------------------------------------
# Judge the reports: one with a frame in our code (a source path under
# common/ or plugin/) counts; the rest are only shown.
if ! /usr/bin/python3 - "$logdir" "$build" <<'PY'
import collections, glob, re, sys
logdir, build = sys.argv[1], sys.argv[2]
n_ours = n_theirs = 0
summary = collections.Counter()
for f in sorted(glob.glob(logdir + "/tsan.*")):
    text = open(f, errors="replace").read().replace(build + "/", "")
    for rep in text.split("==================\n"):
        if "ThreadSanitizer" not in rep or "WARNING" not in rep:
            continue
        if re.search(r" (common|plugin)/[\w.+-]+\.[ch]:\d+", rep):
            n_ours += 1
            print("==================\n" + rep.rstrip(), file=sys.stderr)
            m = re.search(r"^SUMMARY: ThreadSanitizer: (.*)$", rep, re.M)
            summary[m.group(1) if m else rep.splitlines()[0]] += 1
        else:
            n_theirs += 1
            print("---- not in our code ----\n" + rep.rstrip())
if n_theirs:
    print("tsan-check: %d report(s) only about nbdkit itself (ignored)"
          % n_theirs)
if n_ours:
    print("tsan-check: FAIL: %d ThreadSanitizer report(s) in our code "
          "(above; paths relative to the source tree); by summary line:"
          % n_ours, file=sys.stderr)
    for s, n in summary.most_common():
        print("  %4d  %s" % (n, s), file=sys.stderr)
    sys.exit(1)
PY
then
  status=1
fi

if [ $status -eq 0 ]; then
  echo "tsan-check: PASS (no ThreadSanitizer report in our code)"
  echo "tsan-check: 1 passed, 0 failed"
else
  echo "tsan-check: 0 passed, 1 failed"
fi
exit $status
