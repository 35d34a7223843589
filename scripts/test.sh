#!/usr/bin/env bash
# The README's test command: installs what the suite needs on a fresh Debian machine, then
# runs formatting, lints and every test (unit, in-process Raft cluster, multi-process
# coordinators, metalctl end to end).
set -euo pipefail
cd "$(dirname "$0")/.."

# command:package pairs; the boot-service tests use real clients, relays, QEMU and iPXE.
need_apt=()
for pair in curl:curl gcc:build-essential pkg-config:pkg-config \
  dhclient:isc-dhcp-client udhcpc:udhcpc dhcrelay:isc-dhcp-relay rdisc6:ndisc6 \
  tftp:tftp-hpa atftp:atftp cpio:cpio bc:bc qemu-system-x86_64:qemu-system-x86 \
  ip:iproute2 file:file; do
  command -v "${pair%%:*}" >/dev/null || need_apt+=("${pair##*:}")
done
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q static || need_apt+=(busybox-static)
[ -f /usr/lib/ipxe/undionly.kpxe ] || need_apt+=(ipxe)
[ -f /usr/lib/ipxe/qemu/efi-virtio.rom ] || need_apt+=(ipxe-qemu)
[ -f /usr/share/ovmf/OVMF.fd ] || need_apt+=(ovmf)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (rustup toolchain)"; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build binaries (used by the multi-process tests)"
cargo build --workspace --bins
echo "== tests"
cargo test --workspace -- --test-threads=2
