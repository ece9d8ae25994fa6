#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Installing (issue 19): no libtool .la files in nbdkit's directories;
# --with-plugindir / --with-filterdir (default: nbdkit's, from
# pkg-config) for an install without root; Check needed only by the
# unit tests, not to build the modules.
. "${srcdir:-$(dirname "$0")}/functions.sh"

requires make --version
requires pkg-config --version
requires git --version
requires nbdkit --version
top_srcdir=$(cd "${top_srcdir:-${srcdir:-.}/..}" && pwd)
top_builddir=$(cd "$top_builddir" && pwd)
failures=0
check_fail () { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# 1. make install from this build, into a staging directory and into
# directories of the user's choice: the .so files, no .la files.
make -s -C "$top_builddir/plugin" install DESTDIR="$tmpdir/stage" >/dev/null
make -s -C "$top_builddir/filters" install DESTDIR="$tmpdir/stage" >/dev/null
pd=$tmpdir/stage$(pkg-config --variable=plugindir nbdkit)
fd=$tmpdir/stage$(pkg-config --variable=filterdir nbdkit)
[ -f "$pd/nbdkit-qcow2-plugin.so" ] && [ -f "$fd/nbdkit-qcow2-filter.so" ] &&
  [ -f "$fd/nbdkit-overlay-filter.so" ] ||
  check_fail "make install: the modules are not in nbdkit's directories"
if find "$tmpdir/stage" -name '*.la' | grep .; then
  check_fail "make install left libtool .la files"
else
  echo "ok: make install: the .so files in nbdkit's directories, no .la"
fi
# The installed modules load by path.
nbdkit "$pd/nbdkit-qcow2-plugin.so" --dump-plugin 2>/dev/null |
  grep -q '^qcow2_core_version=' ||
  check_fail "the installed plugin does not load"

# 2. configure: --with-plugindir/--with-filterdir, and no Check needed.
# In a copy of the sources (automake allows one configured tree per
# source tree), configured only: the Makefiles say the rest.
src=$tmpdir/src
mkdir "$src"
(cd "$top_srcdir" && git ls-files -z | xargs -0 cp --parents -t "$src")
(cd "$top_srcdir" && cp -r --parents configure config.h.in aclocal.m4 \
   build-aux $(git ls-files '*Makefile.am' | sed 's/\.am$/.in/') "$src")
cd "$src"
# pkg-config without check.pc: configure succeeds and says what make
# check will need.
mkdir "$tmpdir/pc"
for d in $(pkg-config --variable pc_path pkg-config | tr : ' '); do
  [ -d "$d" ] || continue
  for f in "$d"/*.pc; do
    case "$f" in */check.pc) ;; *) ln -sf "$f" "$tmpdir/pc/" ;; esac
  done
done
PKG_CONFIG_LIBDIR=$tmpdir/pc PKG_CONFIG_PATH= ./configure -q \
  --prefix="$tmpdir/prefix" --with-plugindir="$tmpdir/p" \
  --with-filterdir="$tmpdir/f" >configure.out 2>&1 ||
  { cat configure.out >&2; fail "configure failed"; }
grep -qx "plugindir = $tmpdir/p" plugin/Makefile &&
  grep -qx "filterdir = $tmpdir/f" filters/Makefile ||
  check_fail "--with-plugindir/--with-filterdir not used"
echo "ok: configure --with-plugindir=DIR --with-filterdir=DIR"
grep -q 'Check not found.*make check needs it' configure.out &&
  grep -q '^UNIT_TESTS = no-check.sh' tests/Makefile ||
  check_fail "without Check: no warning, or make check would not say so"
status=0
tests/no-check.sh 2>no-check.err || status=$?
[ $status -eq 99 ] && grep -q 'apt-get install check' no-check.err ||
  check_fail "tests/no-check.sh does not fail with what to install"
echo "ok: configure without Check: $(grep -o 'Check not found.*' configure.out)"

if [ $failures -gt 0 ]; then
  echo "$0: $failures failure(s)" >&2
  exit 1
fi
