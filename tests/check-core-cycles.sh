#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# The format core's files call each other without cycles, but for one:
# qcow2-alloc.c <-> qcow2-flush.c (writeback ends by freeing what its
# durable metadata no longer references, and a full container's
# allocator writes metadata back to get those clusters: see the top of
# qcow2-flush.c).
#
# The file-level call graph comes from the objects: an edge A -> B for
# every symbol A's object needs (nm -u) that B's object defines.  The
# allowed pair is merged into one node; tsort then fails on any other
# cycle and names the files in it.  Run by `make check`; by hand:
#   top_builddir=. tests/check-core-cycles.sh [-v]   (-v: print the edges)
# ALLOWED_CYCLE="" shows the inherent cycle fail too.
set -e

top_builddir=${top_builddir:-..}
allowed=${ALLOWED_CYCLE-qcow2-alloc qcow2-flush}

for tool in nm tsort awk; do
  if ! command -v $tool >/dev/null 2>&1; then
    echo "$0: $tool is not installed"
    exit 77
  fi
done

objs=$(ls "$top_builddir"/common/.libs/libqcow2core_la-*.o 2>/dev/null ||
       ls "$top_builddir"/common/libqcow2core_la-*.o 2>/dev/null || true)
if [ -z "$objs" ]; then
  echo "$0: no objects of the core under $top_builddir/common: build first"
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# "D symbol file" and "U symbol file" lines for every object.
for o in $objs; do
  f=$(basename "$o" .o)
  f=${f#libqcow2core_la-}
  nm -g --defined-only "$o" | awk -v f="$f" 'NF == 3 { print "D", $3, f }'
  nm -u "$o" | awk -v f="$f" '{ print "U", $NF, f }'
done > "$tmp/syms"

# "caller callee symbol", one line per distinct use across files.
awk '$1 == "D" { def[$2] = $3; next }
     { use[++n] = $2 " " $3 }
     END {
       for (i = 1; i <= n; i++) {
         split (use[i], a, " ")
         if ((a[1] in def) && def[a[1]] != a[2])
           print a[2], def[a[1]], a[1]
       }
     }' "$tmp/syms" | sort -u > "$tmp/uses"

if [ "$1" = "-v" ]; then
  awk '{ print $1 " -> " $2 " (" $3 ")" }' "$tmp/uses"
fi

# File-level edges, the allowed pair merged into one node.  Every file
# also gets a self edge, so that files without calls are counted.
merged=$(echo $allowed | tr ' ' '+')
for o in $objs; do
  f=$(basename "$o" .o)
  echo "${f#libqcow2core_la-} ${f#libqcow2core_la-} -"
done | cat - "$tmp/uses" |
awk -v allowed="$allowed" -v merged="${merged:-none}" '
  BEGIN { n = split (allowed, a, " "); for (i = 1; i <= n; i++) m[a[i]] = 1 }
  { x = ($1 in m) ? merged : $1; y = ($2 in m) ? merged : $2
    if (x != y || $1 == $2) print x, y }' | sort -u > "$tmp/edges"

nfiles=$(echo $objs | wc -w)
nedges=$(awk '$1 != $2' "$tmp/edges" | wc -l)
if ! tsort "$tmp/edges" > "$tmp/order" 2> "$tmp/loops"; then
  echo "FAIL: the core's files call each other in a cycle:"
  sed 's/^/  /' "$tmp/loops"
  echo "(run with -v for the calls)"
  exit 1
fi
echo "core call graph: $nfiles files, $nedges file-to-file edges;" \
     "no cycle except ${allowed:-none} (allowed)"
echo "order (callers first): $(tr '\n' ' ' < "$tmp/order")"
