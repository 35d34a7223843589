#!/usr/bin/env bash
# Rack-agent fleet benchmark: many simulated rack agents in one process against 3 coordinator
# processes on loopback (release build). Prints setup time, initial sync time, coordinator RSS
# per connected agent, and reconnect + catch-up time after a coordinator SIGKILL and restart.
# Extra arguments go to the driver (e.g. --agents 1000 --nodes 100 --kill follower).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p coordinator --bins -p metalfleet-tests --bin fleet-bench
METALFLEET_BIN_DIR="$PWD/target/release" ./target/release/fleet-bench "$@"
