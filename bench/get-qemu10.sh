#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# Unpack qemu 10 (qemu-img, qemu-nbd, qemu-io and the block modules, from
# Debian's bookworm-backports) into a private folder, without installing
# anything: a private apt configuration (its own sources list, lists and
# cache directories) adds the backports suite of the machine's Debian
# mirror, apt-get download fetches the two packages, dpkg -x unpacks them.
#
#   bench/get-qemu10.sh [DIR]      (default: $BENCH_DIR/qemu10, and
#                                   BENCH_DIR defaults to /var/tmp/qc-bench)
#
# Then run DIR/bin/qemu-img, DIR/bin/qemu-nbd: small wrappers setting
# QEMU_MODULE_DIR (the curl block module) for the unpacked binaries.
# bench/run.sh calls this script when DIR/bin/qemu-nbd is missing.

set -euo pipefail
export LC_ALL=C
BENCH_DIR=${BENCH_DIR:-/var/tmp/qc-bench}
dir=${1:-$BENCH_DIR/qemu10}
suite=${QEMU10_SUITE:-bookworm-backports}

if [ -x "$dir/bin/qemu-nbd" ] && "$dir/bin/qemu-img" --version >/dev/null 2>&1; then
  "$dir/bin/qemu-img" --version | head -1
  exit 0
fi

# The machine's Debian mirror: the first deb.debian.org-like URI of the
# suite "bookworm" in the system's sources (deb822 or one-line format).
mirror=$(
  {
    awk '/^URIs:/ {u = $2} /^Suites:/ && / bookworm( |$)/ {print u}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || :
    awk '$1 == "deb" && $3 == "bookworm" {print $2}' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || :
  } | grep -v security | head -1 || :)
: "${mirror:=http://deb.debian.org/debian}"
mirror=${QEMU10_MIRROR:-$mirror}

apt=$dir/apt
rm -rf "$apt"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/dl" \
         "$dir/root"
key=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$apt/sources.list" <<EOF
deb [signed-by=$key] $mirror bookworm main
deb [signed-by=$key] $mirror $suite main
EOF
opts=(-o Dir::Etc::sourcelist="$apt/sources.list"
      -o Dir::Etc::sourceparts=-
      -o Dir::State::Lists="$apt/lists"
      -o Dir::Cache="$apt/cache"
      -o APT::Sandbox::User=root)
echo "qemu 10 from $mirror $suite into $dir" >&2
apt-get -q "${opts[@]}" update >"$apt/update.log" 2>&1 ||
  { tail -5 "$apt/update.log" >&2; echo "apt-get update failed" >&2; exit 1; }
(cd "$apt/dl" &&
   apt-get -q "${opts[@]}" download "qemu-utils/$suite" \
           "qemu-block-extra/$suite") >"$apt/download.log" 2>&1 ||
  { tail -5 "$apt/download.log" >&2; echo "apt-get download failed" >&2; exit 1; }
for d in "$apt"/dl/*.deb; do dpkg -x "$d" "$dir/root"; done

# Libraries the binaries need that bookworm lacks would show here.
missing=$(ldd "$dir/root/usr/bin/qemu-nbd" "$dir/root/usr/bin/qemu-img" \
              "$dir"/root/usr/lib/x86_64-linux-gnu/qemu/block-curl.so 2>/dev/null |
            grep 'not found' || :)
if [ -n "$missing" ]; then
  echo "qemu 10 needs libraries this system lacks:" >&2
  echo "$missing" >&2
  exit 1
fi

mkdir -p "$dir/bin"
moddir=$(dirname "$(find "$dir/root" -name 'block-curl.so' | head -1)")
for t in qemu-img qemu-nbd qemu-io; do
  cat >"$dir/bin/$t" <<EOF
#!/bin/sh
# qemu 10 unpacked by bench/get-qemu10.sh: its own block modules.
QEMU_MODULE_DIR='$moddir' exec '$dir/root/usr/bin/$t' "\$@"
EOF
  chmod +x "$dir/bin/$t"
done
"$dir/bin/qemu-img" --version | head -1
