#!/usr/bin/env bash
# The README's test command: installs what the suite needs on a fresh Debian machine, then
# runs formatting, lints and every test (unit, in-process Raft cluster, multi-process
# coordinators, metalctl end to end, boot services with real DHCP/TFTP/HTTP clients and QEMU,
# BMC drivers against ipmi_sim and sushy-tools, switch drivers against Open vSwitch and a
# simulated switch CLI, the Ansible roles on namespace hosts).
set -euo pipefail
cd "$(dirname "$0")/.."

# command:package pairs; the boot-service tests use real clients, relays, QEMU and iPXE.
need_apt=()
for pair in curl:curl gcc:build-essential pkg-config:pkg-config \
  dhclient:isc-dhcp-client udhcpc:udhcpc dhcrelay:isc-dhcp-relay rdisc6:ndisc6 \
  tftp:tftp-hpa atftp:atftp cpio:cpio bc:bc qemu-system-x86_64:qemu-system-x86 \
  ip:iproute2 file:file ping:iputils-ping tcpdump:tcpdump ssh:openssh-client \
  ovs-vsctl:openvswitch-switch ipmi_sim:openipmi ipmitool:ipmitool python3:python3 \
  pip3:python3-pip strip:binutils ethtool:ethtool qemu-img:qemu-utils lldpd:lldpd; do
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

# Python peers: sushy-tools (Redfish BMC emulator), asyncssh (the simulated switch CLI).
need_pip=()
python3 -c 'import sushy_tools' 2>/dev/null || need_pip+=(sushy-tools==2.2.0)
python3 -c 'import bcrypt' 2>/dev/null || need_pip+=(bcrypt)
python3 -c 'import asyncssh' 2>/dev/null || need_pip+=(asyncssh)
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "== pip: installing ${need_pip[*]}"
  # Debian's own python3 refuses pip installs unless told (PEP 668); a pyenv python does not.
  python3 -m pip install -q "${need_pip[@]}" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "${need_pip[@]}"
fi
# Ansible (collection tests), sshd for the namespace hosts, vagrant for `vagrant validate`.
if [ -x scripts/ansible-deps.sh ]; then scripts/ansible-deps.sh; fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build binaries (used by the multi-process tests)"
cargo build --workspace --bins
echo "== tests"
cargo test --workspace -- --test-threads=2
