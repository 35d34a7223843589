#!/usr/bin/env bash
# The README's test command: installs what the suite needs on a fresh Debian machine, then
# runs formatting, lints and every test (unit, in-process Raft cluster, multi-process
# coordinators, metalctl end to end).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v gcc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (rustup toolchain)"; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build binaries (used by the multi-process tests)"
cargo build --workspace --bins
echo "== tests"
cargo test --workspace -- --test-threads=2
