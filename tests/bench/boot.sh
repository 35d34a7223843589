#!/usr/bin/env bash
# Boot benchmark: QEMU power-on to the marker line of a small kernel + initramfs, network-booted
# through the rack agent (DHCP + RA + HTTP iPXE script + HTTP assets) versus through a dnsmasq +
# nginx chain configured with the same speed-ups (RA with M=0/O=0, no ICMP probe, iPXE option
# 175.176), same kernel, same initramfs, same VM. Prints seconds per boot and the ratio.
#
# Usage: tests/bench/boot.sh [ROUNDS]   (default 3 per firmware and server; BIOS and UEFI)
# Needs root (network namespaces). Installs its packages when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}

pkgs=()
for p in qemu-system-x86_64:qemu-system-x86 dnsmasq:dnsmasq-base nginx:nginx-light; do
    command -v "${p%%:*}" >/dev/null || pkgs+=("${p##*:}")
done
[ -f /usr/lib/ipxe/qemu/efi-virtio.rom ] || pkgs+=(ipxe-qemu)
[ -f /usr/share/ovmf/OVMF.fd ] || pkgs+=(ovmf)
if ((${#pkgs[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
marker=$(tests/lab/marker-image.sh)
cargo build --release -q -p rack-agent --bin rack-agent
AGENT=$PWD/target/release/rack-agent

T=$(mktemp -d)
NS=mfbb$$
pids=()
# Everything this script starts runs inside its namespace: stop it by the namespace's PIDs.
stop_ns_processes() {
    local p
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        [ -z "$(ip netns pids "$NS" 2>/dev/null)" ] && return 0
        sleep 0.1
    done
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
}
cleanup() {
    stop_ns_processes
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }

ip netns add "$NS"
in_ns ip link set lo up
in_ns ip link add br0 type bridge
in_ns ip addr add 10.99.0.1/24 dev br0
in_ns sysctl -qw net.ipv6.conf.br0.disable_ipv6=0 || true
in_ns ip -6 addr add fd00:99::1/64 dev br0
in_ns ip tuntap add dev tap0 mode tap
in_ns ip link set tap0 master br0
in_ns ip link set tap0 up
in_ns ip link set br0 up

mkdir -p "$T/www" "$T/agent/data/assets/marker"
cp "$marker/vmlinuz" "$marker/initrd.img" "$T/www/"
cp "$marker/vmlinuz" "$marker/initrd.img" "$T/agent/data/assets/marker/"

# One boot: prints seconds from QEMU start to the marker on the serial console.
boot_once() { # firmware(bios|uefi) label
    local fw=$1 label=$2 serial="$T/serial-$2.log" args=()
    rm -f "$serial"
    [ "$fw" = uefi ] && args=(-bios /usr/share/ovmf/OVMF.fd)
    local start end
    start=$(date +%s.%N)
    in_ns qemu-system-x86_64 -accel tcg -m 384 -smp 1 -display none -no-reboot \
        "${args[@]}" -boot n -serial "file:$serial" \
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
        -device virtio-net-pci,netdev=n0,mac=52:54:00:99:00:01 2>>"$T/qemu.log" &
    local qpid=$!  # the subshell; QEMU itself is found through the namespace below
    local deadline=$((SECONDS + 120))
    until grep -aq "METALFLEET-MARKER" "$serial" 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "boot $label: no marker within 120 s" >&2
            pkill -f "serial file:$serial" 2>/dev/null; wait "$qpid" 2>/dev/null || true
            return 1
        fi
        sleep 0.05
    done
    end=$(date +%s.%N)
    pkill -f "serial file:$serial" 2>/dev/null; wait "$qpid" 2>/dev/null || true
    echo "$end - $start" | bc
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run_rounds() { # firmware label
    local i out=()
    for ((i = 0; i < ROUNDS; i++)); do out+=("$(boot_once "$1" "$2-$i")"); done
    printf '%s\n' "${out[@]}" | median
}

# --- dnsmasq + nginx baseline -------------------------------------------------------------
cat >"$T/www/boot.ipxe" <<'IPXE'
#!ipxe
kernel http://10.99.0.1:8081/vmlinuz initrd=initrd.img console=ttyS0 quiet marker=baseline || goto failed
initrd --name initrd.img http://10.99.0.1:8081/initrd.img || goto failed
boot || goto failed
:failed
echo boot failed
IPXE
cat >"$T/nginx.conf" <<NGINX
daemon off;
user root;
worker_processes 1;
pid $T/nginx.pid;
error_log $T/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    server { listen 10.99.0.1:8081; root $T/www; }
}
NGINX
cat >"$T/dnsmasq.conf" <<DNSMASQ
port=0
interface=br0
bind-interfaces
dhcp-range=10.99.0.100,10.99.0.200,1h
enable-ra
dhcp-range=::,constructor:br0,ra-only
no-ping
dhcp-leasefile=$T/dnsmasq.leases
dhcp-userclass=set:ipxe,iPXE
dhcp-boot=tag:ipxe,http://10.99.0.1:8081/boot.ipxe
dhcp-option=encap:175,176,1
DNSMASQ
in_ns nginx -c "$T/nginx.conf" -p "$T" &
pids+=($!)
in_ns dnsmasq -k --conf-file="$T/dnsmasq.conf" --pid-file="$T/dnsmasq.pid" &
pids+=($!)
sleep 0.5
base_bios=$(run_rounds bios base-bios)
base_uefi=$(run_rounds uefi base-uefi)
stop_ns_processes

# --- the rack agent -----------------------------------------------------------------------
cat >"$T/agent/agent.toml" <<TOML
rack = "bench"
data_dir = "data"
coordinators = []
[http]
listen = "10.99.0.1:8080"
[http.discovery]
kernel = "marker/vmlinuz"
initrd = "marker/initrd.img"
cmdline = "console=ttyS0 quiet marker=agent"
[dhcp]
[[dhcp.subnets]]
network = "10.99.0.0/24"
interface = "br0"
server_ip = "10.99.0.1"
router = "10.99.0.1"
pools = ["10.99.0.100-10.99.0.200"]
discovery = true
TOML
in_ns "$AGENT" run --config "$T/agent/agent.toml" >"$T/agent.log" 2>&1 &
agent_pid=$!
pids+=($agent_pid)
for _ in $(seq 100); do
    in_ns bash -c 'exec 3<>/dev/tcp/10.99.0.1/8080' 2>/dev/null && break
    sleep 0.1
done
agent_bios=$(run_rounds bios agent-bios)
agent_uefi=$(run_rounds uefi agent-uefi)

printf '\n%-8s %14s %14s %8s\n' firmware "dnsmasq+nginx" "rack-agent" ratio
printf '%-8s %13.2fs %13.2fs %7.2fx\n' BIOS "$base_bios" "$agent_bios" "$(echo "$agent_bios / $base_bios" | bc -l)"
printf '%-8s %13.2fs %13.2fs %7.2fx\n' UEFI "$base_uefi" "$agent_uefi" "$(echo "$agent_uefi / $base_uefi" | bc -l)"
echo "(median of $ROUNDS boots each, QEMU start to marker, TCG; ratio = agent / baseline, target <= 1.0)"
