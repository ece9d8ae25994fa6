#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Run the whole nbdkit-qcow2 test suite:
#
#   1. install the Debian packages it needs, if any is missing;
#   2. build in the source tree (autoreconf, configure, make) and run
#      "make check": the unit tests of the core and the shell tests that
#      drive the real plugin with nbdkit, libnbd and QEMU's tools;
#   3. build again with ASan and UBSan (./configure --enable-sanitizers)
#      in build-asan/, and run the unit tests there;
#   4. build the libFuzzer targets (tests/fuzz), replay their stored
#      corpus and saved regressions, and fuzz each for QC_FUZZ_TIME s;
#   5. the concurrency test under ThreadSanitizer.
#
#   bash run-tests.sh
#
# Exits non-zero if anything fails; the logs of failed tests are printed.
# Environment:
#   QC_FAIL_ON_SKIP=1   also fail when a test was skipped (CI sets this:
#                       there every tool is installed, so a skip means a
#                       missing install step)
#   JOBS=N              parallel make jobs (default: number of CPUs)
#   QC_FUZZ_TIME=S      seconds of fuzzing per fuzz target (default 45)
set -euo pipefail

cd "$(dirname "$0")"
src=$(pwd)
jobs=${JOBS:-$(nproc)}

# Keep this list in step with demo.sh.
packages=(
  nbdkit nbdkit-plugin-dev libnbd-bin python3-libnbd qemu-utils check
  zlib1g-dev libzstd-dev libdeflate-dev libisal-dev libgnutls28-dev
  autoconf automake libtool pkg-config make gcc
  nginx xz-utils clang
)

section () { printf '\n===== %s =====\n' "$*"; }

# ---------------------------------------------------------------------
section "packages"
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
    missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "all ${#packages[@]} packages are installed"
elif [ "$(id -u)" = 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y "${missing[@]}"
else
  echo "missing packages: ${missing[*]}; run as root or install them:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

# nbdsh runs the "python3" found in PATH; the nbd module (python3-libnbd)
# is in the system python.
if ! python3 -c 'import nbd' 2>/dev/null; then export PATH=/usr/bin:$PATH; fi

# print_logs DIR: show what went wrong in the test directory DIR.
print_logs ()
{
  local f
  for f in "$1"/test-suite.log; do
    [ -f "$f" ] || continue
    printf '\n----- %s -----\n' "$f"
    cat "$f"
  done
}

# count_results DIR: add the results of the .trs files under DIR to the
# totals.
passed=0 failed=0 skipped=0
count_results ()
{
  local r
  while read -r r; do
    case "$r" in
      PASS|XFAIL) passed=$((passed + 1)) ;;
      SKIP) skipped=$((skipped + 1)) ;;
      *) failed=$((failed + 1)) ;;
    esac
  done < <(find "$1" -name '*.trs' -exec sed -n 's/^:test-result: //p' {} +)
}

status=0
check_failed=

# ---------------------------------------------------------------------
section "build (in the source tree)"
autoreconf -fi
./configure
make -j"$jobs"

section "make check"
find tests -name '*.trs' -delete 2>/dev/null || :
if ! make -j"$jobs" check; then
  print_logs tests
  status=1
  check_failed="make check"
fi
count_results tests

# ---------------------------------------------------------------------
# The sanitizer build is a VPATH build (build-asan/build) of a pristine
# copy of the sources (build-asan/src).  It cannot use this source tree
# directly: configure refuses a VPATH build of a source tree that is
# itself configured, and make would pick up the uninstrumented objects
# of the in-tree build through VPATH.
section "ASan + UBSan build of the unit tests"
rm -rf build-asan
mkdir -p build-asan/src build-asan/build
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # The sources: tracked files and new files that git does not ignore.
  { git ls-files -z --cached --others --exclude-standard |
      grep -zv '^build-asan/' || :; } |
    tar --null --no-recursion --ignore-failed-read -T - -cf - |
    tar -C build-asan/src -xf -
else
  # Not a git checkout (e.g. an unpacked tarball): copy everything but
  # the products of the in-tree build.
  tar --exclude=./build-asan --exclude=./.git \
      --exclude='*.o' --exclude='*.lo' --exclude='*.la' --exclude='*.a' \
      --exclude=.libs --exclude=.deps --exclude='*.log' --exclude='*.trs' \
      --exclude=./config.status --exclude=./libtool --exclude=./nbdkit \
      --exclude=Makefile --exclude=stamp-h1 --exclude=tests/unit/test-core \
      --exclude=config.h --exclude=autom4te.cache \
      -cf - . | tar -C build-asan/src -xf -
fi
if ! (cd build-asan/src && autoreconf -fi &&
       cd ../build && ../src/configure --enable-sanitizers &&
       make -j"$jobs"); then
  echo "the sanitizer build failed" >&2
  exit 1
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# The sanitizers make the code 2-3 times slower: give Check's per-test
# timeouts room accordingly.
# The fault-injection test covers every I/O point of its workloads in
# the plain build (above); here 100 points of each.
if ! CK_TIMEOUT_MULTIPLIER=${CK_TIMEOUT_MULTIPLIER:-3} \
     FAULTS_SAMPLE=${FAULTS_SAMPLE:-100} \
     make -C build-asan/build/tests check TESTS=unit/test-core; then
  print_logs build-asan/build/tests
  status=1
  check_failed="${check_failed:+$check_failed and }the ASan unit tests"
fi
count_results build-asan/build/tests

# ---------------------------------------------------------------------
# The libFuzzer targets (tests/fuzz, clang): every stored input and
# saved regression once, then a short run of each target from the stored
# corpus.  Any finding fails.  New inputs go to tests/fuzz/work/.
fuzz_time=${QC_FUZZ_TIME:-45}
section "fuzz targets: regressions, then ${fuzz_time} s of fuzzing each"
fuzz_make () { make -s --no-print-directory -C tests/fuzz "$@"; }
if ! command -v clang >/dev/null 2>&1; then
  if [ "${QC_FAIL_ON_SKIP:-0}" = 1 ]; then
    echo "clang is not installed: the fuzz targets cannot be built" \
         "(QC_FAIL_ON_SKIP=1: a failure)" >&2
    failed=$((failed + 1)); status=1
  else
    echo "skipped: clang is not installed (the fuzz targets need it)"
    skipped=$((skipped + 1))
  fi
else
  mkdir -p tests/fuzz/work
  if ! fuzz_make -j"$jobs" > tests/fuzz/work/build.log 2>&1; then
    tail -n 20 tests/fuzz/work/build.log
    echo "building the fuzz targets failed (tests/fuzz/work/build.log)" >&2
    failed=$((failed + 1)); status=1
  else
    for step in regress fuzz-short; do
      if fuzz_make "$step" FUZZ_TIME="$fuzz_time"; then
        passed=$((passed + 1))
      else
        failed=$((failed + 1)); status=1
        check_failed="${check_failed:+$check_failed and }fuzz $step"
      fi
    done
  fi
fi

# ---------------------------------------------------------------------
# The concurrency test once more, with the core and the plugin built
# under ThreadSanitizer (tests/tsan-check.sh builds its own copy).
section "ThreadSanitizer: the concurrency test"
if [ "${QC_SKIP_TSAN:-0}" = 1 ]; then
  echo "skipped (QC_SKIP_TSAN=1)"
  skipped=$((skipped + 1))
else
  tsan_status=0
  QC_TSAN_RUNS=${QC_TSAN_RUNS:-1} bash tests/tsan-check.sh || tsan_status=$?
  case $tsan_status in
    0) passed=$((passed + 1)) ;;
    77) skipped=$((skipped + 1)) ;;
    *) failed=$((failed + 1)); status=1
       check_failed="${check_failed:+$check_failed and }the TSan check" ;;
  esac
fi

# ---------------------------------------------------------------------
section "summary"
if [ $skipped -ne 0 ]; then
  echo "skipped tests:"
  find tests build-asan/build/tests -name '*.trs' \
    -exec grep -l '^:test-result: SKIP' {} + | sed 's/\.trs$//; s/^/  /'
  if [ "${QC_FAIL_ON_SKIP:-0}" = 1 ]; then
    echo "QC_FAIL_ON_SKIP=1: a skipped test counts as a failure" >&2
    status=1
  fi
fi
if [ $((passed + failed + skipped)) -eq 0 ]; then
  echo "no test ran" >&2
  status=1
fi
[ $failed -eq 0 ] || status=1
if [ -n "$check_failed" ] && [ $failed -eq 0 ]; then
  # Failed before or around the tests themselves (e.g. a test program
  # that does not build): count it, so the totals do not look clean.
  echo "$check_failed failed outside any single test (see above)" >&2
  failed=1
fi
echo "run-tests: $passed passed, $failed failed, $skipped skipped"
exit $status
