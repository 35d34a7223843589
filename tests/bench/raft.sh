#!/usr/bin/env bash
# Raft/API benchmark: 3 coordinator processes on loopback (release build). Prints mutations/s
# (single and batched), write and linearizable read latency, and failover time after SIGKILL.
# Extra arguments go to the driver (e.g. --single 10000 --concurrency 128).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p coordinator --bins -p metalfleet-tests --bin raft-bench
METALFLEET_BIN_DIR="$PWD/target/release" ./target/release/raft-bench "$@"
