# SPDX-License-Identifier: BSD-3-Clause
# Shared helpers for the shell tests.  Source it with:
#   . "${srcdir:-.}/functions.sh"
# It sets: $NBDKIT (the in-tree wrapper), $tmpdir (removed at exit),
# and offers start_nbdkit / requires / fail.

set -e
set -u

: "${top_builddir:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${NBDKIT:=$top_builddir/nbdkit}"
export NBDKIT
PYTHON=/usr/bin/python3   # the system python has the nbd module
# nbdsh is a python script: make sure it runs with the system python
# (which has the nbd module) even where another python3 comes first.
export PATH="/usr/bin:$PATH"
. "$(dirname "${BASH_SOURCE[0]}")/nginx.sh"

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/qc-test.XXXXXX")
_cleanup_fns=()
_cleanup ()
{
  local fn
  for fn in "${_cleanup_fns[@]}"; do eval "$fn" || :; done
  rm -rf "$tmpdir"
}
trap _cleanup EXIT INT TERM
on_exit () { _cleanup_fns+=("$1"); }

fail () { echo "FAIL: $*" >&2; exit 1; }

# requires CMD...: skip the test (exit 77) when a tool is truly absent.
requires ()
{
  if ! "$@" >/dev/null 2>&1; then
    echo "$0: skipped: '$*' failed" >&2
    exit 77
  fi
}

# start_nbdkit SOCKVAR ARGS...: start nbdkit in the background on a new
# Unix socket, wait until it serves, stop it at exit.  The socket path is
# stored in the variable named SOCKVAR; the log goes to $tmpdir/NAME.log.
_nbdkit_n=0
start_nbdkit ()
{
  # Locals carry a prefix so that they cannot hide the caller's variable.
  local _sn_var="$1"; shift
  _nbdkit_n=$((_nbdkit_n + 1))
  local _sn_sock="$tmpdir/nbdkit$_nbdkit_n.sock"
  local _sn_pid="$tmpdir/nbdkit$_nbdkit_n.pid"
  local _sn_log="$tmpdir/nbdkit$_nbdkit_n.log"
  "$NBDKIT" -U "$_sn_sock" -P "$_sn_pid" "$@" 2>"$_sn_log" &
  local _sn_i
  for _sn_i in $(seq 1 100); do
    [ -S "$_sn_sock" ] && [ -s "$_sn_pid" ] && break
    if ! jobs %% >/dev/null 2>&1 && ! [ -s "$_sn_pid" ]; then break; fi
    sleep 0.1
  done
  if ! [ -S "$_sn_sock" ]; then
    cat "$_sn_log" >&2
    fail "nbdkit $* did not start"
  fi
  on_exit "kill \$(cat '$_sn_pid') 2>/dev/null; wait \$(cat '$_sn_pid') 2>/dev/null"
  printf -v "$_sn_var" '%s' "$_sn_sock"
}

# start_nginx DIR VAR: nginx on loopback serving the files of DIR (made
# readable to its workers), stopped at exit; the base URL
# (http://127.0.0.1:PORT) goes to the variable named VAR.  Returns 1
# when nginx is not installed.
start_nginx ()
{
  local _ng_dir _ng_var="$2"
  _ng_dir=$(cd "$1" && pwd)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || return 1
  # nginx workers may run as another user.
  chmod a+rx "$tmpdir" "$_ng_dir"; chmod -R a+r "$_ng_dir"
  nginx_launch "$tmpdir/ngx" "$_ng_dir" ||
    fail "nginx did not start: $(cat "$tmpdir/ngx/nginx.log")"
  on_exit "kill $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null"
  printf -v "$_ng_var" '%s' "$nginx_url"
}

# nbd_uri SOCK [EXPORT]: an NBD URI for a Unix socket.
nbd_uri () { echo "nbd+unix:///${2:-}?socket=$1"; }

# retry_pbkdf CMD...: run a qemu-img command that derives a LUKS key
# (create, amend).  Its PBKDF2 benchmark fails now and then on a loaded
# machine with "Unable to get accurate CPU usage": try such a failure
# again, up to 10 times; any other failure is final.  stderr of the
# last attempt is shown on failure.
retry_pbkdf ()
{
  local _rp_i _rp_err="$tmpdir/retry-pbkdf.err"
  for _rp_i in $(seq 1 10); do
    if "$@" 2>"$_rp_err"; then return 0; fi
    grep -q 'accurate CPU usage' "$_rp_err" || break
    sleep 0.2
  done
  cat "$_rp_err" >&2
  return 1
}
