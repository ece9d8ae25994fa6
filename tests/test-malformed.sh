#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# test-malformed.sh: hostile qcow2 images must be refused at open or fail
# the affected read with an error message; nbdkit must never crash, hang
# or allocate what a header merely claims.
#
# malformed/gen-malformed.py writes the images and a manifest (cases.txt,
# "NAME EXPECT [match=REGEX] [PLUGIN-ARG=VALUE ...]", see that file).  Each
# case runs the plugin captive under timeout(1) and an address-space limit:
#
#   timeout prlimit --as=LIMIT: nbdkit -U - qcow2 FILE [ARGS] --run CLIENT
#
# The client (python3-libnbd, not under the limit) connects to the export;
# if that works it reads the whole export sequentially in 1 MiB requests
# (stopping at the first failed request), then walks the extents (block status,
# result ignored: only crashes count there).  Requests are strictly one at
# a time: nbdkit 1.32.5 itself can abort (connections.c raw_send_socket
# assertion) when a client such as nbdcopy drops the connection on the
# first error while other replies are in flight, which is not the plugin's
# fault.  One line per case is printed with the error message nbdkit gave,
# so a human can judge it.
#
# The limit: a healthy nbdkit serving one connection peaks at ~420 MB of
# address space here (16 worker threads with 8 MiB stacks, two malloc
# arenas with MALLOC_ARENA_MAX=2, libraries), so 1 GiB leaves ~600 MB:
# enough for any sane table, far too little for what the hostile headers
# claim (16 GiB L1 tables, 4G snapshot entries, 2^62-byte disks).
#
# Environment knobs: MALFORMED_TIMEOUT (seconds per case, default 20),
# MALFORMED_AS_LIMIT (bytes, default 1 GiB; 0 = no limit),
# MALFORMED_ONLY (extended regex: run only matching case names),
# MALFORMED_NBDKIT_ARGS (extra nbdkit options, e.g. -r; by default the
# image is opened the way a user would: nbdkit -U - qcow2 FILE),
# MALFORMED_KEEP (a directory: keep images and logs there).

. "${srcdir:-$(dirname "$0")}/functions.sh"

plugin_so="$top_builddir/plugin/.libs/nbdkit-qcow2-plugin.so"
gen="${srcdir:-$(dirname "$0")}/malformed/gen-malformed.py"
requires test -f "$plugin_so"
requires test -x "$NBDKIT"
requires qemu-img --version
requires qemu-io --version
requires prlimit --version
requires timeout --version
requires "$PYTHON" -c 'import nbd'

case_timeout="${MALFORMED_TIMEOUT:-20}"
as_limit="${MALFORMED_AS_LIMIT:-$((1 << 30))}"
# A sanitizer build reserves terabytes of shadow memory: no limit then.
if ldd "$plugin_so" 2>/dev/null | grep -Eq 'libasan|libubsan|libtsan'; then
  echo "note: sanitizer build, running without an address-space limit"
  as_limit=0
fi

work="${MALFORMED_KEEP:-$tmpdir}"
img="$work/img"
out="$work/out"
rm -rf "$img" "$out"
mkdir -p "$out"
"$PYTHON" "$gen" "$img" || fail "gen-malformed.py failed"
[ -s "$img/cases.txt" ] || fail "no cases.txt"

# The client, run by nbdkit --run.  Arguments: socket, mode (open, read,
# ok), export name, output prefix.  It writes PREFIX.info.rc (0: the export
# opened), PREFIX.copy.rc (0: every byte read), PREFIX.raw (mode ok) and
# one-line summaries in PREFIX.info / PREFIX.copy.
client="$tmpdir/client.py"
cat >"$client" <<'EOF'
import sys
import nbd

sock, mode, export, o = sys.argv[1:5]


def put(name, text):
    with open(o + "." + name, "w") as f:
        f.write(text + "\n")


h = nbd.NBD()
h.set_export_name(export)
try:
    h.connect_unix(sock)
    size = h.get_size()
except nbd.Error as e:
    put("info", str(e))
    put("info.rc", "1")
    sys.exit(0)
put("info", "size %d" % size)
put("info.rc", "0")
if mode == "open":
    h.shutdown()
    sys.exit(0)

CHUNK = 1 << 20
# "any" cases only look for crashes: a (legitimately) huge sparse export
# is sampled, its first 64 MiB and last 1 MiB.  "read" and "ok" cases
# read everything: a huge export that reads as zeros runs into the timeout.
ranges = [(0, size)]
if mode == "any" and size > (65 << 20):
    ranges = [(0, 64 << 20), (size - (1 << 20), size)]
dst = open(o + ".raw", "wb") if mode == "ok" else None
bad = nreq = 0
first = ""


def chunks():
    for start, end in ranges:
        for off in range(start, end, CHUNK):
            yield off, min(off + CHUNK, end)


for off, end in chunks():
    n = end - off
    nreq += 1
    try:
        buf = h.pread(n, off)
        if dst:
            dst.write(buf)
    except nbd.Error as e:
        bad += 1
        if not first:
            first = "at 0x%x: %s" % (off, e)
        if dst:
            dst.write(b"\0" * n)
        if h.aio_is_dead() or h.aio_is_closed():
            first += " (connection lost)"
            break
        if not dst:
            break       # one failed range is enough; a huge export of
                        # zeros is still read to the end (and times out)
if dst:
    dst.close()
put("copy", "%d of %d requests failed %s" % (bad, nreq, first))
put("copy.rc", "1" if bad else "0")

# The extents path: only crashes and hangs matter here.
try:
    for start, end in ranges:
        off = start
        calls = 0
        while off < end and calls < 10000:
            calls += 1
            got = [0]

            def cb(metacontext, offset, entries, err):
                got[0] += sum(entries[0::2])
                return 0
            h.block_status(min(end - off, 1 << 30), off, cb)
            if got[0] == 0:
                break
            off += got[0]
    put("map.rc", "0")
except nbd.Error as e:
    put("map", str(e))
    put("map.rc", "1")
try:
    h.shutdown()
except nbd.Error:
    pass
EOF

# Signs of memory errors, aborts or a server killed by a signal.
crash_re='AddressSanitizer|LeakSanitizer|runtime error:|Segmentation fault|double free|free\(\): |malloc\(\): |corrupted (size|double)|stack smashing|Assertion .* failed|Aborted|core dumped|nbdkit command was killed by signal'

# first_error FILE: the first error line of nbdkit's stderr, shortened.
first_error ()
{
  grep -m1 -i 'error' "$1" 2>/dev/null |
    sed -e 's/^nbdkit: //' -e 's/^[^ ]*\[[0-9]*\]: //' \
        -e 's/^[a-z0-9]*\.[0-9]*: //' | cut -c1-220
}

now_ms () { date +%s%3N; }

n=0 npass=0 nfail=0
failed=()
while read -r name expect rest; do
  case "$name" in ''|'#'*) continue ;; esac
  if [ -n "${MALFORMED_ONLY:-}" ] && ! [[ $name =~ $MALFORMED_ONLY ]]; then
    continue
  fi
  n=$((n + 1))
  pattern=""
  args=()
  read -r -a toks <<<"$rest"
  for tok in ${toks[@]+"${toks[@]}"}; do
    case "$tok" in
      match=*) pattern="${tok#match=}" ;;
      *=*) args+=("$tok") ;;
      *) fail "cases.txt: bad token '$tok' for $name" ;;
    esac
  done
  what="${expect%%@*}"
  exp=""
  [[ $expect == *@* ]] && exp="${expect#*@}"
  case "$what" in
    open) mode=open ;;
    ok) mode=ok ;;
    read) mode="read" ;;
    any) mode=any ;;
    *) fail "cases.txt: bad EXPECT '$expect' for $name" ;;
  esac
  o="$out/$n"
  limit_cmd=()
  [ "$as_limit" != 0 ] && limit_cmd=(prlimit "--as=$as_limit:" --)
  # The clients are not under test: lift the soft address-space limit.
  run_cmd="ulimit -S -v unlimited 2>/dev/null; $(printf %q "$PYTHON") $(printf %q "$client") \"\$unixsocket\" $mode $(printf %q "$exp") $(printf %q "$o")"

  t0=$(now_ms)
  set +e
  # shellcheck disable=SC2086 # MALFORMED_NBDKIT_ARGS is split on purpose
  MALLOC_ARENA_MAX=2 timeout -k 5 "$case_timeout" "${limit_cmd[@]}" \
    "$NBDKIT" ${MALFORMED_NBDKIT_ARGS:-} -U - qcow2 "$img/$name" \
    ${args[@]+"${args[@]}"} --run "$run_cmd" \
    </dev/null >"$o.out" 2>"$o.err"
  rc=$?
  set -e
  ms=$(( $(now_ms) - t0 ))

  started=no opened=no copied=no
  [ -f "$o.info.rc" ] && started=yes
  [ "$(cat "$o.info.rc" 2>/dev/null)" = 0 ] && opened=yes
  [ "$(cat "$o.copy.rc" 2>/dev/null)" = 0 ] && copied=yes
  msg="$(first_error "$o.err")"

  verdict=PASS why=""
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    verdict=FAIL why="hang: killed after ${case_timeout}s"
  elif [ $rc -ge 128 ]; then
    verdict=FAIL why="nbdkit died from signal $((rc - 128))"
  elif grep -Eq "$crash_re" "$o.err"; then
    verdict=FAIL why="crash: $(grep -Em1 "$crash_re" "$o.err" | cut -c1-150)"
  elif [ $started = yes ] && [ $rc != 0 ]; then
    verdict=FAIL why="nbdkit exited with status $rc after serving"
  elif [ $started = no ] && [ $rc = 0 ]; then
    verdict=FAIL why="nbdkit exited 0 without running the client"
  elif [ $started = yes ] && [ $mode != open ] && [ $opened = yes ] &&
         ! [ -f "$o.map.rc" ]; then
    verdict=FAIL why="client died: $(tail -n2 "$o.out" | tr '\n' ' ')"
  else
    case "$what" in
      open)
        if [ $opened = yes ]; then
          verdict=FAIL why="opened, but must be refused at open"
        elif [ -z "$msg" ]; then
          verdict=FAIL why="refused without an error message from nbdkit"
        fi ;;
      read)
        if [ $opened = yes ] && [ $copied = yes ]; then
          verdict=FAIL why="opened and the whole export read without error"
        elif [ -z "$msg" ]; then
          verdict=FAIL why="failed without an error message from nbdkit"
        fi ;;
      ok)
        if [ $opened = no ]; then
          verdict=FAIL why="valid image refused"
        elif [ $copied = no ]; then
          verdict=FAIL why="valid image: $(cat "$o.copy")"
        else
          snap=()
          if [ -n "$exp" ]; then
            if [[ $exp =~ ^[0-9]+$ ]]; then snap=(-l "snapshot.id=$exp")
            else snap=(-l "snapshot.name=$exp"); fi
          fi
          qemu-img convert -U -f qcow2 -O raw "${snap[@]}" \
            "$img/$name" "$o.qemu.raw" ||
            fail "qemu-img convert $name failed"
          if ! cmp -s "$o.raw" "$o.qemu.raw"; then
            verdict=FAIL why="valid image: data differs from qemu-img convert"
          fi
          rm -f "$o.raw" "$o.qemu.raw"
        fi ;;
      any)
        if { [ $opened = no ] || [ $copied = no ]; } && [ -z "$msg" ]; then
          verdict=FAIL why="failed without an error message from nbdkit"
        fi ;;
    esac
  fi
  rm -f "$o.raw"
  if [ $verdict = PASS ] && [ -n "$pattern" ] &&
       ! grep -Eiq -- "$pattern" "$o.err"; then
    verdict=FAIL why="error message does not match /$pattern/"
  fi
  # Nothing here is big: anything slow is a hang in the making, and a
  # tiny file claiming a huge disk must be handled at once.
  if [ $verdict = PASS ] && [ $ms -gt $((case_timeout * 1000 / 2)) ]; then
    verdict=FAIL why="took ${ms} ms"
  fi
  if [ $verdict = PASS ] && [[ $name == tiny-* ]] && [ $ms -gt 3000 ]; then
    verdict=FAIL why="tiny image took ${ms} ms"
  fi

  if [ $opened = no ]; then outcome="refused"
  elif [ $mode = open ]; then outcome="opened"
  elif [ $copied = yes ]; then outcome="opened, read ok"
  else outcome="opened, read failed"
  fi
  label="$name${args[*]:+ ${args[*]}}"
  printf '%s %-48s %-18s %-20s %5dms | %s\n' "$verdict" "$label" \
    "$expect" "$outcome" "$ms" "${msg:-(no error message)}"
  if [ $verdict = PASS ]; then
    npass=$((npass + 1))
  else
    nfail=$((nfail + 1))
    failed+=("$label $expect: $why")
    echo "     ^ $why"
    sed -e 's/^/     | /' "$o.err" | head -n 8
  fi
done <"$img/cases.txt"

echo
echo "test-malformed: $n cases, $npass passed, $nfail failed"
[ $n -gt 0 ] || fail "no cases run"
if [ $nfail -gt 0 ]; then
  printf '  %s\n' "${failed[@]}" >&2
  fail "$nfail malformed-image cases failed"
fi
