#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Every option is documented where users look (issue 19): each key of
# the option table (common/qc-options.h) is in each module's --help, or
# refused by the module with an error naming it; and each key --help
# lists is in the SYNOPSIS and the PARAMETERS of the module's man page.
# Driven by the table and --help, not by a list here: a new option
# fails this test until it is documented.
. "${srcdir:-$(dirname "$0")}/functions.sh"

: "${top_srcdir:=$(cd "${srcdir:-.}/.." && pwd)}"
docs=$top_srcdir/docs
table=$top_srcdir/common/qc-options.h
failures=0
check_fail () { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# The table's keys: the X ("key", ...) rows of QC_OPTIONS.
keys=$(grep -o 'X ("[a-z0-9-]*"' "$table" | sed 's/X ("//; s/"//')
[ "$(echo "$keys" | wc -w)" -gt 20 ] ||
  fail "could not read the option table from $table"

# pod_section POD HEAD: the text of one =head1 section.
pod_section ()
{
  awk -v h="=head1 $2" '$0 == h { on = 1; next } /^=head1 / { on = 0 } on' "$1"
}

# module NAME PREFIX PAGE HEADER NBDKIT-ARGS...: HEADER starts the
# module's part of --help ("plugin: qcow2").
module ()
{
  local name=$1 prefix=$2 page=$3 header=$4; shift 4
  local pod=$docs/$page.pod help="$tmpdir/$name.help"
  local k key syn="$tmpdir/$name.syn" params="$tmpdir/$name.params"

  "$NBDKIT" "$@" --help >"$help.all" || fail "$name: --help failed"
  # Only the module's own part of --help.
  awk -v h="$header" 'index ($0, h " ") == 1 { on = 1; n = 0; next }
    /^(filter|plugin): / { on = 0 } on && ++n > 1' "$help.all" >"$help"
  [ -s "$help" ] || fail "$name: no help text in --help"
  pod_section "$pod" SYNOPSIS >"$syn"
  # The parameters: the PARAMETERS section (and its subsections).
  pod_section "$pod" PARAMETERS >"$params"
  [ -s "$syn" ] && [ -s "$params" ] ||
    fail "$pod: no SYNOPSIS or PARAMETERS section"

  for k in $keys; do
    key=$prefix$k
    if grep -q "^$key=" "$help"; then
      continue
    fi
    # Not in --help: the module must refuse it, naming it.
    status=0
    timeout 30 "$NBDKIT" -U - "$@" "$key=x" --run true \
      </dev/null >/dev/null 2>"$tmpdir/refused.err" || status=$?
    if [ $status -eq 0 ] || ! grep -q -- "$key" "$tmpdir/refused.err"; then
      check_fail "$name: $key is neither in --help nor refused"
    else
      echo "ok: $name: $key is refused: $(head -n1 "$tmpdir/refused.err")"
    fi
  done
  for key in $(grep -o '^\(\[file=\]\)\?[a-z][a-z0-9-]*=' "$help" | tr -d '[]='); do
    grep -q -- "\b$key=" "$syn" ||
      check_fail "$page: $key= is in --help but not in the SYNOPSIS"
    grep -Eq -- "^=item B<(\[)?$key(\])?=" "$params" ||
      check_fail "$page: $key= is in --help but not an =item of PARAMETERS"
  done
  echo "ok: $name: $(grep -c '^[a-z]' "$help") help entries checked"
}

module plugin "" nbdkit-qcow2-plugin "plugin: qcow2" qcow2
module qcow2 qcow2- nbdkit-qcow2-filter "filter: qcow2" --filter=qcow2 null
module overlay overlay- nbdkit-overlay-filter "filter: overlay" \
  --filter=overlay null

if [ $failures -gt 0 ]; then
  echo "$0: $failures failure(s)" >&2
  exit 1
fi
