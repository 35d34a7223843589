#!/usr/bin/env bash
# Switch driver benchmark: VLAN changes for N (default 48) ports on one switch, applied as one
# batch (one OVSDB transaction / one CLI configuration session) versus one port per apply
# (N transactions / N sessions), each apply verified by read-back as in production.
#  1. Real Open vSwitch, userspace datapath (ovs-vswitchd in its own network namespace, N
#     internal ports on br0), driven over OVSDB's unix socket.
#  2. The simulated vendor CLI over SSH (rack-agent/tests/switch_support/cli_switch.py,
#     asyncssh) for each dialect, through the OpenSSH client (one master connection, one
#     session per apply).
# Prints per-round times, the best of ROUNDS, and the one-by-one / batched ratio.
#
# Usage: tests/bench/switch.sh [N] [ROUNDS] [DIALECTS]   (DIALECTS default "nxos eos os10 junos")
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-48}
ROUNDS=${2:-3}
DIALECTS=${3:-nxos eos os10 junos}

pkgs=()
for p in ovsdb-server:openvswitch-switch ssh:openssh-client python3:python3; do
    command -v "${p%%:*}" >/dev/null || pkgs+=("${p##*:}")
done
if ((${#pkgs[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
python3 -c 'import asyncssh' 2>/dev/null || pip install -q asyncssh
cargo build --release -q -p rack-agent --example switch_bench
BENCH=$PWD/target/release/examples/switch_bench

T=$(mktemp -d)
NS=mfbench-sw-$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

wait_for() { # wait_for <what> <command...>: poll up to 20 s
    local what=$1; shift
    for _ in $(seq 1 400); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "timed out waiting for $what" >&2; exit 1
}

echo "== Open vSwitch (userspace datapath), $N ports, $ROUNDS rounds"
export OVS_RUNDIR=$T OVS_DBDIR=$T OVS_LOGDIR=$T
ip netns add "$NS"
ip -n "$NS" link set lo up
ovsdb-tool create "$T/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovsdb-server --remote="punix:$T/db.sock" --unixctl="$T/ovsdb.ctl" --log-file="$T/ovsdb.log" \
    --no-chdir "$T/conf.db" >"$T/ovsdb.out" 2>&1 &
pids+=($!)
wait_for "ovsdb socket" test -S "$T/db.sock"
VSCTL=(ovs-vsctl --db="unix:$T/db.sock" --timeout=30)
"${VSCTL[@]}" --no-wait init
ip netns exec "$NS" ovs-vswitchd "unix:$T/db.sock" --unixctl="$T/vswitchd.ctl" \
    --log-file="$T/vswitchd.log" --no-chdir >"$T/vswitchd.out" 2>&1 &
pids+=($!)
"${VSCTL[@]}" add-br br0 -- set bridge br0 datapath_type=netdev
args=()
ports=()
for i in $(seq 1 "$N"); do
    args+=(-- add-port br0 "bp$i" -- set interface "bp$i" type=internal)
    ports+=("bp$i")
done
"${VSCTL[@]}" "${args[@]}"
PORTS=$(IFS=,; echo "${ports[*]}")
"$BENCH" --driver ovs --address "unix:$T/db.sock" --bridge br0 --ports "$PORTS" --rounds "$ROUNDS"

for d in $DIALECTS; do
    echo "== SSH CLI fixture ($d), $N ports, $ROUNDS rounds"
    case $d in
        nxos) names=$(for i in $(seq 1 "$N"); do echo "Ethernet1/$i"; done) ;;
        eos) names=$(for i in $(seq 1 "$N"); do echo "Ethernet$i"; done) ;;
        os10) names=$(for i in $(seq 1 "$N"); do echo "ethernet1/1/$i"; done) ;;
        junos) names=$(for i in $(seq 0 $((N - 1))); do echo "ge-0/0/$i"; done) ;;
    esac
    PORTS=$(echo "$names" | paste -sd,)
    mkdir -p "$T/$d"
    echo "bench-pass" >"$T/$d/password"
    python3 rack-agent/tests/switch_support/cli_switch.py --dialect "$d" \
        --password-file "$T/$d/password" --ports "$PORTS" --state-dir "$T/$d" \
        --ready-file "$T/$d/ready" >"$T/$d/log" 2>&1 &
    pid=$!
    pids+=($pid)
    wait_for "cli_switch.py ($d)" test -s "$T/$d/ready"
    port=$(sed -n 1p "$T/$d/ready")
    key=$(sed -n 2p "$T/$d/ready")
    "$BENCH" --driver ssh-cli --address "127.0.0.1:$port" --dialect "$d" \
        --password-file "$T/$d/password" --known-host-key "$key" --ports "$PORTS" --rounds "$ROUNDS"
    kill "$pid"; wait "$pid" 2>/dev/null || true
done
