#!/usr/bin/env bash
# The README's "run the system" command (until the virtual datacenter lab lands): builds the
# binaries, bootstraps a 3-coordinator Raft cluster on loopback (init, join, add-learner,
# promote), loads example sites/racks/inventory with metalctl, shows the cluster and the
# fleet, and keeps running until Ctrl-C. Every process it starts it stops by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
command -v cargo >/dev/null || { echo "cargo is required (rustup toolchain)"; exit 1; }
cargo build --release -p coordinator -p rack-agent --bins
BIN="$ROOT/target/release"
DEMO=${DEMO_DIR:-$ROOT/lab-state/demo}
rm -rf "$DEMO"; mkdir -p "$DEMO"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for i in 1 2 3; do
  cat > "$DEMO/c$i.toml" <<TOML
id = $i
data_dir = "d$i"
api_listen = "127.0.0.1:$((17440 + i))"
raft_listen = "127.0.0.1:$((17450 + i))"
fleet_listen = "127.0.0.1:$((17460 + i))"
TOML
done
echo "== coordinator init (1)"
"$BIN/coordinator" init -c "$DEMO/c1.toml" | tee "$DEMO/init.out"
TOKEN=$(tail -n 1 "$DEMO/init.out")
CA="$DEMO/d1/tls/ca.crt"
start() { "$BIN/coordinator" run -c "$DEMO/c$1.toml" >"$DEMO/c$1.log" 2>&1 & PIDS+=($!); }
wait_ready() { for _ in $(seq 100); do curl -sf --cacert "$CA" "https://127.0.0.1:$((17440 + $1))/readyz" >/dev/null && return 0; sleep 0.1; done; echo "coordinator $1 not ready"; tail "$DEMO/c$1.log"; exit 1; }
start 1; wait_ready 1
cat > "$DEMO/metalctl.toml" <<TOML
coordinators = ["https://127.0.0.1:17441", "https://127.0.0.1:17442", "https://127.0.0.1:17443"]
token = "$TOKEN"
ca_cert = "$CA"
TOML
export METALCTL_CONFIG="$DEMO/metalctl.toml"
for i in 2 3; do
  echo "== coordinator join ($i)"
  METALFLEET_TOKEN=$TOKEN "$BIN/coordinator" join -c "$DEMO/c$i.toml" --via https://127.0.0.1:17441 --ca-cert "$CA"
  start "$i"
  "$BIN/metalctl" cluster add-learner "$i" "127.0.0.1:$((17450 + i))" "https://127.0.0.1:$((17440 + i))" \
    --fleet-addr "127.0.0.1:$((17460 + i))" >/dev/null
  "$BIN/metalctl" cluster promote "$i" >/dev/null
done
echo "== cluster"
"$BIN/metalctl" cluster status
echo "== fleet"
"$BIN/metalctl" site create ams1 --description "Amsterdam 1"
"$BIN/metalctl" rack create ams1-r01 --site ams1
"$BIN/metalctl" rack create ams1-r02 --site ams1
"$BIN/metalctl" inventory import examples/inventory.csv --dry-run
"$BIN/metalctl" inventory import examples/inventory.csv
"$BIN/metalctl" inventory list
"$BIN/metalctl" node create DEMO-0001 --rack ams1-r01 --mac 52:54:00:a0:00:01 >/dev/null
"$BIN/metalctl" node list
"$BIN/metalctl" audit --limit 10
echo "== rack agents"
for rack in ams1-r01 ams1-r02; do
  mkdir -p "$DEMO/agent-$rack"
  cat > "$DEMO/agent-$rack.toml" <<TOML
rack = "$rack"
data_dir = "agent-$rack"
coordinators = ["127.0.0.1:17461", "127.0.0.1:17462", "127.0.0.1:17463"]
TOML
  ENROLL=$("$BIN/metalctl" rack enroll-token "$rack" | tail -n 1)
  METALFLEET_ENROLL_TOKEN=$ENROLL "$BIN/rack-agent" enroll --config "$DEMO/agent-$rack.toml" \
    --api https://127.0.0.1:17441 --ca-cert "$CA"
  "$BIN/rack-agent" run --config "$DEMO/agent-$rack.toml" >"$DEMO/agent-$rack.log" 2>&1 & PIDS+=($!)
  # Wait for its control socket (data_dir/agent.sock) before any one-shot command: run
  # earlier, `rack-agent status` would open the store itself and keep the starting agent out.
  for _ in $(seq 100); do
    [ -S "$DEMO/agent-$rack/agent.sock" ] && break
    sleep 0.1
  done
done
"$BIN/rack-agent" emit --config "$DEMO/agent-ams1-r02.toml" --checkins 3 --serial-prefix DEMO-R02 >/dev/null
for _ in $(seq 150); do
  [ "$("$BIN/metalctl" rack list -o json | grep -c '"connected": true')" -ge 2 ] && break
  sleep 0.1
done
for _ in $(seq 100); do
  [ "$("$BIN/metalctl" node list --rack ams1-r02 -o json | grep -c '"serial"')" -ge 3 ] && break
  sleep 0.1
done
"$BIN/metalctl" rack list
"$BIN/metalctl" node list
"$BIN/rack-agent" status --config "$DEMO/agent-ams1-r01.toml"
echo
echo "Metalfleet is running: 3 coordinators, API at https://127.0.0.1:17441 (CA $CA), 2 rack agents."
echo "Try: METALCTL_CONFIG=$DEMO/metalctl.toml $BIN/metalctl node list"
echo "Ctrl-C stops everything."
if [ -n "${DEMO_EXIT:-}" ]; then exit 0; fi
wait
