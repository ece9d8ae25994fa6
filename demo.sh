#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# nbdkit-qcow2 demo: install what is needed, build, make a sample qcow2
# image with QEMU's tools, serve it with "./nbdkit qcow2", read it back
# over NBD and check that it is byte for byte what qemu-img reads.
#
#   bash demo.sh            (Debian 12, as root; or any user once the
#                            packages below are installed)
#
# Environment: DEMO_DIR=DIR keeps the sample files in DIR (default: a new
# directory under /tmp, kept so you can look at it afterwards).
set -euo pipefail

cd "$(dirname "$0")"
top=$(pwd)

# Keep this list in step with run-tests.sh.
packages=(
  nbdkit nbdkit-plugin-dev libnbd-bin python3-libnbd qemu-utils check
  zlib1g-dev libzstd-dev libdeflate-dev libisal-dev libgnutls28-dev
  autoconf automake libtool pkg-config make gcc
)

if [ -t 1 ]; then bold=$'\e[1m'; green=$'\e[32m'; red=$'\e[31m'; off=$'\e[0m'
else bold=; green=; red=; off=; fi
step () { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
run () { printf '%s$ %s%s\n' "$bold" "$*" "$off"; "$@"; }
good () { printf '%s%s%s\n' "$green" "$*" "$off"; }
bad () { printf '%sMISMATCH: %s%s\n' "$red" "$*" "$off" >&2; mismatches=$((mismatches + 1)); }
mismatches=0

# ---------------------------------------------------------------------
step "Installing the packages nbdkit-qcow2 needs"
if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  run apt-get update
  run apt-get install -y "${packages[@]}"
else
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
      missing+=("$p")
  done
  if [ ${#missing[@]} -ne 0 ]; then
    echo "Not root, and these packages are missing: ${missing[*]}" >&2
    echo "Run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "(not root; all packages are already installed)"
fi

# nbdsh runs the "python3" found in PATH; the nbd module (python3-libnbd)
# is in the system python.
if ! python3 -c 'import nbd' 2>/dev/null; then export PATH=/usr/bin:$PATH; fi

# ---------------------------------------------------------------------
step "Building nbdkit-qcow2"
run autoreconf -fi
run ./configure
run make -j"$(nproc)"
test -x ./nbdkit || { echo "the ./nbdkit wrapper was not built" >&2; exit 1; }

# ---------------------------------------------------------------------
step "Creating a sample qcow2 image with qemu-img and qemu-io"
dir=${DEMO_DIR:-$(mktemp -d /tmp/nbdkit-qcow2-demo.XXXXXX)}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
echo "working in $dir"
cd "$dir"
rm -f sample.raw sample.qcow2 written.qcow2 served*.raw qemu*.raw \
  nbdkit.sock nbdkit.pid

# Guest content: a greeting, text that compresses well, random data that
# does not, and holes in between.
truncate -s 64M sample.raw
printf 'Hello from nbdkit-qcow2! This disk image is served over NBD.\n' |
  dd of=sample.raw conv=notrunc status=none
{ yes 'nbdkit-qcow2 reads qcow2 images natively.' || :; } | head -c 2M |
  dd of=sample.raw bs=1M seek=4 conv=notrunc status=none
head -c 1M /dev/urandom | dd of=sample.raw bs=1M seek=10 conv=notrunc status=none
# "convert -c" stores every cluster that compression makes smaller as a
# compressed cluster (zlib).
run qemu-img convert -c -f raw -O qcow2 sample.raw sample.qcow2
# A normal (uncompressed) write, a zero cluster, then an internal
# snapshot, then a change made after the snapshot.
run qemu-io -c 'write -q -P 0x5a 32M 256k' -c 'write -q -z 4M 64k' sample.qcow2
run qemu-img snapshot -c before-change sample.qcow2
run qemu-io -c 'write -q -P 0x77 16M 128k' sample.qcow2
run qemu-img info sample.qcow2
echo "qemu-img map (compressed clusters have no host offset):"
qemu-img map --output=json sample.qcow2

# ---------------------------------------------------------------------
step "Serving it read-only: ./nbdkit -r qcow2 sample.qcow2"
# (-r: this demo only reads.  Without -r clients may also write.)
sock=$dir/nbdkit.sock
run "$top/nbdkit" -r -U "$sock" -P "$dir/nbdkit.pid" qcow2 sample.qcow2
for i in $(seq 1 100); do
  [ -S "$sock" ] && [ -s "$dir/nbdkit.pid" ] && break
  sleep 0.1
done
[ -S "$sock" ] || { echo "nbdkit did not start" >&2; exit 1; }
pid=$(cat "$dir/nbdkit.pid")
trap 'kill $pid 2>/dev/null || :' EXIT
uri="nbd+unix:///?socket=$sock"
snapuri="nbd+unix:///before-change?socket=$sock"
echo "nbdkit is serving on $uri (pid $pid)"

step "What the server offers: the active image and one export per snapshot"
run nbdinfo --list "$uri"

step "The allocation map, as an NBD client sees it"
run nbdinfo --map "$uri"

step "Reading the first sector over NBD"
run nbdsh -u "$uri" -c 'print(h.pread(512, 0).split(b"\n")[0].decode())'

step "Copying the whole disk over NBD with nbdcopy, and comparing with qemu-img"
run nbdcopy "$uri" served.raw
run qemu-img convert -U -f qcow2 -O raw sample.qcow2 qemu.raw
if cmp served.raw qemu.raw; then
  good "served.raw and qemu.raw are identical ($(stat -c %s served.raw) bytes)"
else
  bad "the disk read through nbdkit differs from qemu-img's"
fi

step "The snapshot 'before-change', read as its own export"
run nbdcopy "$snapuri" served-snapshot.raw
run qemu-img convert -U -f qcow2 -l snapshot.name=before-change -O raw \
  sample.qcow2 qemu-snapshot.raw
if cmp served-snapshot.raw qemu-snapshot.raw; then
  good "the snapshot export is identical to qemu-img's view of the snapshot"
else
  bad "the snapshot read through nbdkit differs from qemu-img's"
fi
if cmp -s served-snapshot.raw served.raw; then
  bad "the snapshot export shows the change made after the snapshot"
else
  good "and it differs from the active image, as it should"
fi

step "qemu-img compare: QEMU reads the image and the NBD export side by side"
if run qemu-img compare -f qcow2 sample.qcow2 -F raw "$uri"; then
  good "qemu-img agrees"
else
  bad "qemu-img compare found a difference"
fi

step "While nbdkit serves the image, QEMU cannot open it for writing"
if qemu-io -c 'write 0 512' sample.qcow2 2>&1; then
  bad "qemu-io could write to the image while it was being served"
else
  good "refused, as expected: the plugin holds QEMU-compatible image locks"
fi

kill "$pid"
trap - EXIT

step "Writing: copying the disk into a new qcow2 image through the plugin"
run qemu-img create -f qcow2 written.qcow2 64M
run "$top/nbdkit" -U - qcow2 written.qcow2 \
  --run 'nbdcopy served.raw "$uri"'
if run qemu-img check written.qcow2; then
  good "qemu-img check: the image written by nbdkit-qcow2 is clean"
else
  bad "qemu-img check found problems in the image written through nbdkit"
fi
if run qemu-img compare -f raw served.raw -F qcow2 written.qcow2; then
  good "and it holds exactly the data that was copied in"
else
  bad "the image written through nbdkit differs from its source"
fi

echo
if [ $mismatches -eq 0 ]; then
  good "${bold}Demo finished: what nbdkit-qcow2 served and wrote matches qemu-img exactly."
  echo "Files are in $dir"
else
  printf '%sDemo finished with %d mismatch(es).%s\n' "$red" $mismatches "$off" >&2
  exit 1
fi
