#!/usr/bin/env bash
# The benchmark: installs what it needs, builds release binaries, runs every configuration
# interleaved (loopback only, bounded in time), prints the tables and ratios, draws the chart.
#   BENCH_WORKERS="2 4" BENCH_DURATION=5 BENCH_ROUNDS=3 bench/run.sh
# Also runs the fdpass and cluster-ipc microbenchmarks unless BENCH_MICRO=0.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
command -v node >/dev/null || { echo "bench: Node.js is needed for the peer configuration" >&2; exit 1; }
cargo build --release --locked -p cluster-cli -p cluster-examples -p cluster-bench --bins --examples
if [ "${BENCH_MICRO:-1}" != 0 ]; then
    cargo bench --locked -p cluster-bench --bench fdpass --bench ipc
fi
exec target/release/http-bench
