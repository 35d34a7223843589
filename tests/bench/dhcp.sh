#!/usr/bin/env bash
# DHCP benchmark: perfdhcp (kea-admin) acting as a relay against Kea (kea-dhcp4, memfile
# persisted) and against the rack agent's DHCP server (the real binary, relayed discovery
# subnet, leases persisted with group commit), each in a server namespace joined to the
# perfdhcp namespace by a veth. At offered rates of 5,000/s, 10,000/s and unlimited: drops,
# average/max latency, completed 4-way exchanges per second, and server CPU time
# (utime+stime from /proc/<pid>/stat) per 1,000 leases. Prints a table and ours/Kea ratios.
#
# Usage: tests/bench/dhcp.sh [SECONDS]   (default 10 per run; perfdhcp -p)
# Needs root (network namespaces). Installs kea-admin / kea-dhcp4-server when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
RATES=(${RATES:-5000 10000 0}) # 0 = unlimited

pkgs=()
command -v perfdhcp >/dev/null || pkgs+=(kea-admin)
command -v kea-dhcp4 >/dev/null || pkgs+=(kea-dhcp4-server)
if ((${#pkgs[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
cargo build --release -q -p rack-agent --bin rack-agent
AGENT=$PWD/target/release/rack-agent

T=$(mktemp -d)
SNS=mfds$$
CNS=mfdc$$
cleanup() {
    for ns in "$SNS" "$CNS"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ -n "${KEEP:-}" ]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT

ip netns add "$SNS"
ip netns add "$CNS"
ip link add srv0 netns "$SNS" type veth peer name cli0 netns "$CNS"
for ns in "$SNS" "$CNS"; do ip netns exec "$ns" ip link set lo up; done
ip netns exec "$SNS" ip addr add 10.64.0.1/14 dev srv0
ip netns exec "$CNS" ip addr add 10.64.0.2/14 dev cli0
ip netns exec "$SNS" ip link set srv0 up
ip netns exec "$CNS" ip link set cli0 up

CLK=$(getconf CLK_TCK)
# UDP datagrams the kernel dropped because a socket's receive buffer was full, in a namespace:
# in the server namespace that is the server falling behind, in the client namespace it is
# perfdhcp itself (it needs more than the cores it shares with the server).
rcvbuf_errors() { ip netns exec "$1" awk '/^Udp:/ { n++; if (n == 2) print $6 }' /proc/net/snmp; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The one process of the server namespace (started with setsid, so no wrapper remains).
server_pid() {
    local p
    for _ in $(seq 100); do
        p=$(ip netns pids "$SNS" | head -1)
        [ -n "$p" ] && { echo "$p"; return; }
        sleep 0.05
    done
    echo "server did not start" >&2
    return 1
}

wait_port67() {
    for _ in $(seq 200); do
        ip netns exec "$SNS" ss -Huln 'sport = :67' | grep -q . && return 0
        sleep 0.05
    done
    echo "nothing listens on port 67" >&2
    return 1
}

stop_server() {
    for p in $(ip netns pids "$SNS"); do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 100); do
        [ -z "$(ip netns pids "$SNS")" ] && return 0
        sleep 0.05
    done
    for p in $(ip netns pids "$SNS"); do kill -9 "$p" 2>/dev/null || true; done
}

start_kea() { # run-dir
    local d=$1
    mkdir -p "$d"
    cat >"$d/kea.json" <<EOF
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["srv0"], "dhcp-socket-type": "udp"},
  "lease-database": {"type": "memfile", "persist": true, "name": "$d/leases.csv", "lfc-interval": 0},
  "valid-lifetime": 3600,
  "multi-threading": {"enable-multi-threading": false},
  "subnet4": [{"id": 1, "subnet": "10.64.0.0/14", "pools": [{"pool": "10.65.0.0 - 10.67.255.254"}]}],
  "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "$d/kea.log"}], "severity": "WARN"}]
}}
EOF
    KEA_PIDFILE_DIR=$d KEA_LOCKFILE_DIR=$d ip netns exec "$SNS" setsid kea-dhcp4 -c "$d/kea.json" \
        >"$d/stdout.log" 2>&1 </dev/null &
}

start_agent() { # run-dir
    local d=$1
    mkdir -p "$d"
    cat >"$d/agent.toml" <<EOF
rack = "bench"
data_dir = "$d/data"
coordinators = []

[dhcp]
lease_secs = 3600

[[dhcp.subnets]]
network = "10.64.0.0/14"
server_ip = "10.64.0.1"
pools = ["10.65.0.0-10.67.255.254"]
discovery = true
EOF
    RUST_LOG=warn ip netns exec "$SNS" setsid "$AGENT" run --config "$d/agent.toml" \
        >"$d/stdout.log" 2>&1 </dev/null &
}

# perfdhcp output → "drops% avg_ms max_ms rate acks"
parse() {
    awk '
        /Statistics for: DISCOVER-OFFER/ { s = "do" }
        /Statistics for: REQUEST-ACK/ { s = "ra" }
        /^sent packets:/ { sent[s] = $3 }
        /^received packets:/ { recv[s] = $3 }
        /^avg delay:/ { avg[s] = $3 }
        /^max delay:/ { max[s] = $3 }
        /^Rate:/ { rate = $2 }
        END {
            lost = (sent["do"] - recv["do"]) + (sent["ra"] - recv["ra"])
            total = sent["do"] + sent["ra"]
            pct = (total > 0) ? 100 * lost / total : 0
            a = avg["do"] + avg["ra"]
            m = (max["do"] > max["ra"]) ? max["do"] : max["ra"]
            printf "%.3f %.3f %.3f %.0f %d\n", pct, a, m, rate, recv["ra"]
        }'
}

results=()
run_one() { # server rate
    local server=$1 rate=$2 d="$T/$1-$2" pid c0 c1 out rc=0
    "start_$server" "$d"
    pid=$(server_pid)
    wait_port67
    c0=$(cpu_ticks "$pid")
    local s0 p0 s1 p1
    s0=$(rcvbuf_errors "$SNS")
    p0=$(rcvbuf_errors "$CNS")
    local rflag=()
    [ "$rate" != 0 ] && rflag=(-r "$rate")
    out=$(ip netns exec "$CNS" timeout 40 perfdhcp -4 -l cli0 -p "$SECS" -R 100000 "${rflag[@]}" 10.64.0.1 2>&1) || rc=$?
    c1=$(cpu_ticks "$pid")
    s1=$(rcvbuf_errors "$SNS")
    p1=$(rcvbuf_errors "$CNS")
    stop_server
    echo "$out" >"$d/perfdhcp.txt"
    if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
        echo "perfdhcp against $server at $rate/s failed ($rc):" >&2
        tail -5 "$d/perfdhcp.txt" >&2
        tail -5 "$d/stdout.log" >&2 || true
        exit 1
    fi
    local p
    p=$(echo "$out" | parse)
    read -r drops avg max xrate acks <<<"$p"
    local cpu_ms=$(( (c1 - c0) * 1000 / CLK ))
    local per1k
    per1k=$(awk -v c="$cpu_ms" -v a="$acks" 'BEGIN { printf "%.1f", (a > 0) ? c * 1000 / a : 0 }')
    local sdrop=$((s1 - s0)) pdrop=$((p1 - p0))
    results+=("$server $rate $drops $avg $max $xrate $acks $cpu_ms $per1k $sdrop $pdrop")
    printf '%-6s rate %-9s drops %6s%%  avg %7s ms  max %8s ms  %6s exch/s  %7s leases  cpu %6s ms  %6s ms/1k leases  rcvbuf drops server %s perfdhcp %s\n' \
        "$server" "$([ "$rate" = 0 ] && echo unlimited || echo "$rate/s")" "$drops" "$avg" "$max" "$xrate" "$acks" "$cpu_ms" "$per1k" "$sdrop" "$pdrop" >&2
}

for rate in "${RATES[@]}"; do
    run_one kea "$rate"
    run_one agent "$rate"
done

echo
echo "uptime: $(uptime)"
printf '%-6s %-10s %8s %9s %9s %9s %8s %12s %12s %12s\n' server offered drops% avg_ms max_ms exch/s leases cpu_ms/1k srv_rcvbuf perf_rcvbuf
for r in "${results[@]}"; do
    read -r s rate drops avg max xrate acks cpu per1k sdrop pdrop <<<"$r"
    printf '%-6s %-10s %8s %9s %9s %9s %8s %12s %12s %12s\n' "$s" "$([ "$rate" = 0 ] && echo unlimited || echo "$rate/s")" \
        "$drops" "$avg" "$max" "$xrate" "$acks" "$per1k" "$sdrop" "$pdrop"
done
echo "(srv_rcvbuf: datagrams the server's sockets overflowed; perf_rcvbuf: replies perfdhcp"
echo " itself could not read in time — drops there are the load generator's, not the server's)"
echo
echo "ratios (agent / kea):"
for rate in "${RATES[@]}"; do
    k=$(printf '%s\n' "${results[@]}" | awk -v r="$rate" '$1 == "kea" && $2 == r')
    a=$(printf '%s\n' "${results[@]}" | awk -v r="$rate" '$1 == "agent" && $2 == r')
    read -r _ _ kd ka km kx _ _ kc _ _ <<<"$k"
    read -r _ _ ad aa am ax _ _ ac _ _ <<<"$a"
    awk -v r="$rate" -v kd="$kd" -v ad="$ad" -v ka="$ka" -v aa="$aa" -v kx="$kx" -v ax="$ax" -v kc="$kc" -v ac="$ac" 'BEGIN {
        label = r == 0 ? "unlimited" : r "/s"
        printf "  %-10s drops %s%% vs %s%%  avg latency x%.2f  exchanges/s x%.2f  cpu per lease x%.2f\n",
            label, ad, kd, (ka > 0 ? aa / ka : 0), (kx > 0 ? ax / kx : 0), (kc > 0 ? ac / kc : 0)
    }'
done
