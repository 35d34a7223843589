#!/usr/bin/env bash
# The README's first quick-start command: installs what the virtual datacenter needs on a fresh
# Debian machine (root), brings the lab up (3 coordinators, 2 racks × 2 VMs behind virtual
# BMCs), runs the buildout rollout (discovery, testing, OS install with the Ansible
# post-install) on all its VMs with lab-sized durations, shows its progress and ends with a
# table of nodes (rack, U, serial, IPs, state).
#
# Usage: scripts/lab.sh [up] [--config FILE] [--max-in-flight N] [--failure-budget N]
#        scripts/lab.sh down | status | metalctl ARGS... | console VM | power VM on|off|status
# The lab lives in lab-state/lab (LAB_DIR overrides) and keeps running until `down`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${LAB_DIR:-$PWD/lab-state/lab}
cmd=${1:-up}
[ $# -gt 0 ] && shift

lab() { cargo run -q -p metalfleet-tests --bin lab -- --dir "$dir" "$@"; }

case "$cmd" in
    down) lab down --config tests/lab/os/buildout-lab.toml; exit ;;
    status) lab status; exit ;;
    metalctl) lab metalctl -- "$@"; exit ;;
    console | power) lab "$cmd" "$@"; exit ;;
    up) ;;
    *) echo "usage: $0 [up [--config FILE] [--max-in-flight N] [--failure-budget N]] | down | status | metalctl ARGS... | console VM | power VM ACTION" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "the lab needs root (namespaces, Open vSwitch, QEMU)" >&2; exit 1; }

# command:package pairs (the lab's peers, the microkernel's and the lab OS's build inputs).
need_apt=()
for pair in curl:curl gcc:build-essential pkg-config:pkg-config cpio:cpio file:file \
  qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils ip:iproute2 ethtool:ethtool \
  ovs-vsctl:openvswitch-switch ipmi_sim:openipmi ipmitool:ipmitool python3:python3 \
  pip3:python3-pip strip:binutils ssh:openssh-client lldpd:lldpd smartctl:smartmontools \
  stress-ng:stress-ng memtester:memtester kexec:kexec-tools kmod:kmod syslinux:syslinux \
  mcopy:mtools mkfs.vfat:dosfstools mke2fs:e2fsprogs sfdisk:fdisk; do
  command -v "${pair%%:*}" >/dev/null || need_apt+=("${pair##*:}")
done
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q static || need_apt+=(busybox-static)
[ -f /usr/lib/ipxe/undionly.kpxe ] || need_apt+=(ipxe)
[ -f /usr/lib/ipxe/qemu/efi-virtio.rom ] || need_apt+=(ipxe-qemu)
[ -f /usr/share/ovmf/OVMF.fd ] || need_apt+=(ovmf)
[ -f /usr/lib/SYSLINUX.EFI/efi64/syslinux.efi ] || need_apt+=(syslinux-efi)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
[ -x /usr/bin/python3.11 ] || need_apt+=(python3.11-minimal libpython3.11-stdlib)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (rustup toolchain)" >&2; exit 1; }
need_pip=()
python3 -c 'import sushy_tools' 2>/dev/null || need_pip+=(sushy-tools==2.2.0)
python3 -c 'import bcrypt' 2>/dev/null || need_pip+=(bcrypt)
command -v ansible-playbook >/dev/null || need_pip+=(ansible-core)
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "== pip: installing ${need_pip[*]}"
  python3 -m pip install -q "${need_pip[@]}" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "${need_pip[@]}"
fi

echo "== building"
cargo build -q -p coordinator -p rack-agent -p metalfleet-tests --bins
config=tests/lab/os/buildout-lab.toml
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
exec target/debug/lab-buildout --dir "$dir" --config "$config" "${args[@]}"
