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
}
start_nginx "$NGX_ON" on
start_nginx "$NGX_OFF" off

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

# N concurrent downloads from port $1; prints wall seconds.
concurrent() {
    local port=$1 cpids=() start end i bad=0
    rm -f "$T"/sz*
    start=$(now)
    for i in $(seq "$N"); do
        curl -sS -o /dev/null -w '%{size_download}' "http://127.0.0.1:$port/assets/big.img" >"$T/sz$i" &
        cpids+=($!)
    done
    for p in "${cpids[@]}"; do wait "$p" || bad=$((bad + 1)); done
    end=$(now)
    for i in $(seq "$N"); do
        [ "$(cat "$T/sz$i")" = "$SIZE" ] || bad=$((bad + 1))
    done
    if ((bad)); then
        echo "port $port: $bad of $N downloads failed or were short" >&2
        exit 1
    fi
    echo "$end - $start" | bc -l
}

best() { printf '%s\n' "$@" | sort -g | head -1; }
mibps() { echo "$N * $SIZE / 1048576 / $1" | bc -l; }

echo "== $N concurrent downloads of a $SIZE_MIB MiB asset over loopback (best of $ROUNDS; $(nproc) cores) =="
ours=() on=() off=()
for r in $(seq "$ROUNDS"); do
    ours+=("$(concurrent "$OURS")")
    on+=("$(concurrent "$NGX_ON")")
    off+=("$(concurrent "$NGX_OFF")")
    printf 'round %d: rack-agent %.3f s   nginx sendfile on %.3f s   nginx sendfile off %.3f s\n' \
        "$r" "${ours[-1]}" "${on[-1]}" "${off[-1]}"
done
B_OURS=$(best "${ours[@]}")
B_ON=$(best "${on[@]}")
B_OFF=$(best "${off[@]}")
printf 'rack-agent:          %7.3f s  %8.0f MiB/s\n' "$B_OURS" "$(mibps "$B_OURS")"
printf 'nginx sendfile on:   %7.3f s  %8.0f MiB/s\n' "$B_ON" "$(mibps "$B_ON")"
printf 'nginx sendfile off:  %7.3f s  %8.0f MiB/s\n' "$B_OFF" "$(mibps "$B_OFF")"
printf 'ratio rack-agent / nginx (sendfile on):  %.2fx (target >= 0.9x)\n' "$(echo "$B_ON / $B_OURS" | bc -l)"
printf 'ratio rack-agent / nginx (sendfile off): %.2fx\n' "$(echo "$B_OFF / $B_OURS" | bc -l)"
