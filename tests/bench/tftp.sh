#!/usr/bin/env bash
# TFTP benchmark on loopback, our rack agent (release build, `rack-agent run` with a [tftp]
# section) against tftpd-hpa (`in.tftpd -L`, foreground) serving the same directory:
#  1. N (default 100) concurrent fetches of the same 1 MiB file, with curl --tftp-blksize 1428
#     and with atftp --option "blksize 1428": wall time (best of ROUNDS rounds) for each
#     server and the ratio (target >= 1.5x), plus the CPU time each server used (cgroup v1
#     cpuacct, when available: tftpd-hpa forks a child per transfer, which plain rusage of the
#     parent misses). On 2 cores the clients' own CPU bounds the wall-time ratio.
#  2. One client fetching a 64 MiB file from our agent with RFC 7440 windowsize 16 versus
#     windowsize 1 (blksize 1428), using a small Python TFTP client embedded below (curl does
#     not send windowsize); wall time and ratio (target >= 3x).
# Every fetched file is checked by sha256.
#
# Usage: tests/bench/tftp.sh [N] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100}
ROUNDS=${2:-3}

pkgs=()
for p in curl:curl atftp:atftp in.tftpd:tftpd-hpa python3:python3 bc:bc; do
    command -v "${p%%:*}" >/dev/null || pkgs+=("${p##*:}")
done
if ((${#pkgs[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
cargo build --release -q -p rack-agent --bin rack-agent
AGENT=$PWD/target/release/rack-agent

T=$(mktemp -d)
pids=()
CG=/sys/fs/cgroup/cpuacct
cgroups=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for g in "${cgroups[@]}"; do rmdir "$g" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT
# tftpd-hpa drops to user nobody: the served tree must be world-readable.
chmod 755 "$T"
ROOT=$T/data/tftp
mkdir -p "$ROOT" "$T/out"
chmod -R a+rX "$T/data"
head -c $((1024 * 1024)) /dev/urandom >"$ROOT/boot.img"
head -c $((64 * 1024 * 1024)) /dev/urandom >"$ROOT/big.img"
echo ready >"$ROOT/ping"
chmod a+r "$ROOT"/*
SUM1=$(sha256sum <"$ROOT/boot.img" | cut -d' ' -f1)
SUM64=$(sha256sum <"$ROOT/big.img" | cut -d' ' -f1)

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
OURS=$(free_port)
HPA=$(free_port)
NOCACHE=$(free_port)

cat >"$T/agent.toml" <<EOF
rack = "bench"
data_dir = "$T/data"
coordinators = []

[tftp]
listen = "127.0.0.1:$OURS"
EOF
RUST_LOG=warn "$AGENT" run --config "$T/agent.toml" >"$T/agent.log" 2>&1 &
pids+=($!)
AGENT_PID=$!
# The same agent with the file cache off (reads the file per transfer, in 256 KiB chunks).
mkdir -p "$T/data-nocache"
cat >"$T/agent-nocache.toml" <<EOF
rack = "bench"
data_dir = "$T/data-nocache"
coordinators = []

[tftp]
listen = "127.0.0.1:$NOCACHE"
root = "$ROOT"
cache_bytes = 0
EOF
RUST_LOG=warn "$AGENT" run --config "$T/agent-nocache.toml" >"$T/agent-nocache.log" 2>&1 &
pids+=($!)
NOCACHE_PID=$!
in.tftpd -L -s "$ROOT" -a "127.0.0.1:$HPA" >"$T/hpa.log" 2>&1 &
pids+=($!)
HPA_PID=$!

# Per-server CPU accounting: each server (and every child it forks) in its own cgroup.
cpu_of() { echo 0; }
if [ -w "$CG" ] && mkdir "$CG/tftpbench-$OURS-$$" "$CG/tftpbench-$HPA-$$" "$CG/tftpbench-$NOCACHE-$$" 2>/dev/null; then
    cgroups+=("$CG/tftpbench-$OURS-$$" "$CG/tftpbench-$HPA-$$" "$CG/tftpbench-$NOCACHE-$$")
    echo "$AGENT_PID" >"$CG/tftpbench-$OURS-$$/cgroup.procs"
    echo "$HPA_PID" >"$CG/tftpbench-$HPA-$$/cgroup.procs"
    echo "$NOCACHE_PID" >"$CG/tftpbench-$NOCACHE-$$/cgroup.procs"
    # Nanoseconds of CPU used so far by the server on port $1.
    cpu_of() { cat "$CG/tftpbench-$1-$$/cpuacct.usage"; }
else
    echo "(no writable cgroup v1 cpuacct: server CPU not measured)"
fi

wait_ready() {
    for _ in $(seq 200); do
        curl -s "tftp://127.0.0.1:$1/ping" -o /dev/null 2>/dev/null && return 0
        sleep 0.05
    done
    echo "server on port $1 did not answer" >&2
    cat "$T/agent.log" >&2
    exit 1
}
wait_ready "$OURS"
wait_ready "$HPA"
wait_ready "$NOCACHE"

now() { date +%s.%N; }

# N concurrent fetches of boot.img from port $1 with client $2 (curl|atftp); prints wall
# seconds and server CPU seconds.
concurrent() {
    local port=$1 client=$2 cpids=() start end i bad=0 c0 c1
    rm -f "$T"/out/c*
    c0=$(cpu_of "$port")
    start=$(now)
    for i in $(seq "$N"); do
        if [ "$client" = curl ]; then
            curl -sS --tftp-blksize 1428 "tftp://127.0.0.1:$port/boot.img" -o "$T/out/c$i" &
        else
            atftp --option "blksize 1428" -g -r boot.img -l "$T/out/c$i" 127.0.0.1 "$port" >/dev/null 2>&1 &
        fi
        cpids+=($!)
    done
    for p in "${cpids[@]}"; do wait "$p" || bad=$((bad + 1)); done
    end=$(now)
    c1=$(cpu_of "$port")
    for i in $(seq "$N"); do
        [ "$(sha256sum <"$T/out/c$i" | cut -d' ' -f1)" = "$SUM1" ] || bad=$((bad + 1))
    done
    if ((bad)); then
        echo "port $port: $bad of $N fetches failed or differ" >&2
        exit 1
    fi
    echo "$(echo "$end - $start" | bc -l) $(echo "($c1 - $c0) / 1000000000" | bc -l)"
}

best() { printf '%s\n' "$@" | sort -g | head -1; }

for client in curl atftp; do
    echo "== $N concurrent 1 MiB fetches, $client blksize 1428 (best of $ROUNDS) =="
    ours=() hpa=() ours_cpu=() hpa_cpu=() nc=() nc_cpu=()
    for r in $(seq "$ROUNDS"); do
        read -r w c <<<"$(concurrent "$OURS" "$client")"
        ours+=("$w") ours_cpu+=("$c")
        read -r w c <<<"$(concurrent "$HPA" "$client")"
        hpa+=("$w") hpa_cpu+=("$c")
        read -r w c <<<"$(concurrent "$NOCACHE" "$client")"
        nc+=("$w") nc_cpu+=("$c")
        printf 'round %d: rack-agent %.3f s (CPU %.3f s)   tftpd-hpa %.3f s (CPU %.3f s)   rack-agent, no cache %.3f s (CPU %.3f s)\n' \
            "$r" "${ours[-1]}" "${ours_cpu[-1]}" "${hpa[-1]}" "${hpa_cpu[-1]}" "${nc[-1]}" "${nc_cpu[-1]}"
    done
    B_OURS=$(best "${ours[@]}") B_HPA=$(best "${hpa[@]}")
    C_OURS=$(best "${ours_cpu[@]}") C_HPA=$(best "${hpa_cpu[@]}")
    printf '%s: wall rack-agent %.3f s, tftpd-hpa %.3f s, ratio %.2fx (target >= 1.5x); server CPU rack-agent %.3f s, tftpd-hpa %.3f s, ratio %.2fx\n' \
        "$client" "$B_OURS" "$B_HPA" "$(echo "$B_HPA / $B_OURS" | bc -l)" \
        "$C_OURS" "$C_HPA" "$(echo "if ($C_OURS > 0) $C_HPA / $C_OURS else 0" | bc -l)"
    printf '%s: rack-agent with cache_bytes = 0: wall %.3f s, server CPU %.3f s\n' "$client" "$(best "${nc[@]}")" "$(best "${nc_cpu[@]}")"
done

cat >"$T/client.py" <<'EOF'
# Minimal RFC 1350/2347/2348/7440 read client: ACKs the last block of each window, and on a
# gap or a timeout ACKs the last block received in order (the server resends from there).
import hashlib, socket, struct, sys, time

host, port, name, blksize, window = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.settimeout(1.0)
opts = [b"blksize", str(blksize).encode(), b"windowsize", str(window).encode(), b"tsize", b"0"]
rrq = struct.pack("!H", 1) + name.encode() + b"\0octet\0" + b"".join(o + b"\0" for o in opts)
start = time.monotonic()
s.sendto(rrq, (host, port))
pkt, tid = s.recvfrom(70000)
op = struct.unpack("!H", pkt[:2])[0]
if op != 6:
    sys.exit(f"expected OACK, got opcode {op}: {pkt[:60]!r}")
f = pkt[2:].split(b"\0")
granted = {f[i].decode().lower(): f[i + 1].decode() for i in range(0, len(f) - 1, 2)}
blksize = int(granted.get("blksize", 512))
window = int(granted.get("windowsize", 1))
ack = lambda n: s.sendto(struct.pack("!HH", 4, n & 0xFFFF), tid)
ack(0)
h = hashlib.sha256()
total = 0
expect = 1
inwin = 0
nacked = 0
while True:
    try:
        pkt, addr = s.recvfrom(70000)
    except socket.timeout:
        ack(expect - 1)
        inwin = 0
        continue
    if addr != tid:
        continue
    op, blk = struct.unpack("!HH", pkt[:4])
    if op == 5:
        sys.exit(f"server error {blk}: {pkt[4:-1].decode(errors='replace')}")
    if op != 3:
        continue
    if blk != expect & 0xFFFF:
        if nacked != expect:
            ack(expect - 1)
            nacked = expect
            inwin = 0
        continue
    data = pkt[4:]
    h.update(data)
    total += len(data)
    inwin += 1
    last = len(data) < blksize
    if last or inwin == window:
        ack(blk)
        inwin = 0
    if last:
        break
    expect += 1
print(f"{time.monotonic() - start:.4f} {total} {h.hexdigest()} {blksize} {window}")
EOF

# One fetch of big.img with windowsize $1; prints seconds. $PIN prefixes the client command.
window_run() {
    local out
    out=$($PIN python3 "$T/client.py" 127.0.0.1 "$OURS" big.img 1428 "$1")
    read -r secs bytes sum bs ws <<<"$out"
    if [ "$sum" != "$SUM64" ]; then
        echo "windowsize $1: content differs ($bytes bytes)" >&2
        exit 1
    fi
    [ "$ws" = "$1" ] || echo "note: server granted windowsize $ws for $1" >&2
    echo "$secs"
}

windows() {
    local w16=() w1=() r B16 B1
    for r in $(seq "$ROUNDS"); do
        w16+=("$(window_run 16)")
        w1+=("$(window_run 1)")
        printf 'round %d: windowsize 16 %.3f s   windowsize 1 %.3f s\n' "$r" "${w16[-1]}" "${w1[-1]}"
    done
    B16=$(best "${w16[@]}")
    B1=$(best "${w1[@]}")
    printf 'windowsize 16: %.3f s (%.0f MiB/s)   windowsize 1: %.3f s (%.0f MiB/s)   ratio: %.2fx (target >= 3x)\n' \
        "$B16" "$(echo "64 / $B16" | bc -l)" "$B1" "$(echo "64 / $B1" | bc -l)" "$(echo "$B1 / $B16" | bc -l)"
}

echo "== one client, 64 MiB, blksize 1428, rack-agent: windowsize 16 vs 1 (best of $ROUNDS) =="
PIN=""
windows
# On loopback the kernel wakes the client on the server's core (a sync wakeup), so client and
# server mostly take turns on one core. Pinned to different cores they overlap as two hosts
# would (each lockstep ACK then costs a cross-core wakeup, as it costs a network round trip).
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    echo "== the same, client pinned to CPU 0 and the agent to CPU 1 =="
    taskset -a -p -c 1 "$AGENT_PID" >/dev/null
    PIN="taskset -c 0"
    windows
fi
