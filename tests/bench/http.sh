#!/usr/bin/env bash
# HTTP asset benchmark on loopback: our rack agent (release build, `rack-agent run` with an
# [http] section) against nginx (nginx-light, foreground, `daemon off`) serving the same
# 64 MiB file. N (default 64) concurrent `curl -o /dev/null` downloads of it; wall time and
# aggregate throughput of the best of ROUNDS rounds for each server, and the ratio
# (target: ours >= 0.9x nginx). nginx runs twice: with `sendfile on` (Debian's packaged
# default, zero-copy) and `sendfile off` (nginx's built-in default, a userspace copy like ours).
# One fetch from each server is checked by sha256 first; every timed download must have
# received exactly the file's size.
#
# Usage: tests/bench/http.sh [N] [ROUNDS] [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-64}
ROUNDS=${2:-3}
SIZE_MIB=${3:-64}

pkgs=()
for p in curl:curl nginx:nginx-light python3:python3 bc:bc; do
    command -v "${p%%:*}" >/dev/null || pkgs+=("${p##*:}")
done
if ((${#pkgs[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
cargo build --release -q -p rack-agent --bin rack-agent
AGENT=$PWD/target/release/rack-agent

T=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT
ASSETS=$T/data/assets
mkdir -p "$ASSETS" "$T/nginx"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$ASSETS/big.img"
SIZE=$(stat -c %s "$ASSETS/big.img")
SUM=$(sha256sum <"$ASSETS/big.img" | cut -d' ' -f1)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
OURS=$(free_port)
NGX_ON=$(free_port)
NGX_OFF=$(free_port)

cat >"$T/agent.toml" <<EOF
rack = "bench"
data_dir = "$T/data"
coordinators = []

[http]
listen = "127.0.0.1:$OURS"
assets_dir = "$ASSETS"
EOF
RUST_LOG=warn "$AGENT" run --config "$T/agent.toml" >"$T/agent.log" 2>&1 &
pids+=($!)
AGENT_PID=$!

# One nginx per sendfile setting; everything it writes stays in $T.
start_nginx() {
    local port=$1 sendfile=$2 dir=$T/nginx/$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
user root;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile $sendfile;
    tcp_nopush on;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    types { application/octet-stream img; }
    server {
        listen 127.0.0.1:$port;
        location /assets/ { alias $ASSETS/; }
    }
}
EOF
    nginx -c "$dir/nginx.conf" -p "$dir" >"$dir/stdout.log" 2>&1 &
    pids+=($!)
    NGINX_PID=$!
}
start_nginx "$NGX_ON" on
NGX_ON_PID=$NGINX_PID
start_nginx "$NGX_OFF" off
NGX_OFF_PID=$NGINX_PID

wait_ready() {
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:$1/assets/big.img" -r 0-0 -o /dev/null 2>/dev/null && return 0
        sleep 0.05
    done
    echo "server on port $1 did not answer" >&2
    cat "$T/agent.log" >&2
    exit 1
}
for p in "$OURS" "$NGX_ON" "$NGX_OFF"; do
    wait_ready "$p"
    got=$(curl -sS "http://127.0.0.1:$p/assets/big.img" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$SUM" ] || { echo "port $p served different content" >&2; exit 1; }
done

now() { date +%s.%N; }
TICK=$(getconf CLK_TCK)
# CPU seconds (user + system) used so far by process $1 and its children (nginx workers).
cpu() {
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        [ -r "/proc/$p/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total / $TICK" | bc -l
}

# N concurrent downloads from port $1 (server pid $2); prints wall seconds and the server's
# CPU seconds.
concurrent() {
    local port=$1 spid=$2 cpids=() start end i bad=0 c0 c1
    rm -f "$T"/sz*
    c0=$(cpu "$spid")
    start=$(now)
    for i in $(seq "$N"); do
        curl -sS -o /dev/null -w '%{size_download}' "http://127.0.0.1:$port/assets/big.img" >"$T/sz$i" &
        cpids+=($!)
    done
    for p in "${cpids[@]}"; do wait "$p" || bad=$((bad + 1)); done
    end=$(now)
    c1=$(cpu "$spid")
    for i in $(seq "$N"); do
        [ "$(cat "$T/sz$i")" = "$SIZE" ] || bad=$((bad + 1))
    done
    if ((bad)); then
        echo "port $port: $bad of $N downloads failed or were short" >&2
        exit 1
    fi
    echo "$(echo "$end - $start" | bc -l) $(echo "$c1 - $c0" | bc -l)"
}

best() { printf '%s\n' "$@" | sort -g | head -1; }
mibps() { echo "$N * $SIZE / 1048576 / $1" | bc -l; }

echo "== $N concurrent downloads of a $SIZE_MIB MiB asset over loopback (best of $ROUNDS; $(nproc) cores; load $(cut -d' ' -f1 /proc/loadavg)) =="
declare -A wall cpus
for r in $(seq "$ROUNDS"); do
    line="round $r:"
    for s in ours:$OURS:$AGENT_PID on:$NGX_ON:$NGX_ON_PID off:$NGX_OFF:$NGX_OFF_PID; do
        IFS=: read -r name port spid <<<"$s"
        out=$(concurrent "$port" "$spid")
        read -r w c <<<"$out"
        wall[$name]+="$w "
        cpus[$name]+="$c "
        line+=$(printf '  %s %.3f s (server CPU %.2f s)' "$name" "$w" "$c")
    done
    echo "$line"
done
declare -A B C
# shellcheck disable=SC2086
for name in ours on off; do
    B[$name]=$(best ${wall[$name]})
    C[$name]=$(best ${cpus[$name]})
done
label() { case $1 in ours) echo "rack-agent";; on) echo "nginx sendfile on";; off) echo "nginx sendfile off";; esac; }
for name in ours on off; do
    printf '%-20s best wall %7.3f s  %6.0f MiB/s   least server CPU %6.2f s (%.3f s/GiB)\n' \
        "$(label $name):" "${B[$name]}" "$(mibps "${B[$name]}")" "${C[$name]}" \
        "$(echo "${C[$name]} * 1073741824 / ($N * $SIZE)" | bc -l)"
done
printf 'throughput ratio rack-agent / nginx (sendfile on):  %.2fx (target >= 0.9x)\n' "$(echo "${B[on]} / ${B[ours]}" | bc -l)"
printf 'throughput ratio rack-agent / nginx (sendfile off): %.2fx\n' "$(echo "${B[off]} / ${B[ours]}" | bc -l)"
echo "(wall time includes the $N curl clients on the same cores; server CPU is the server's own user+system time)"
