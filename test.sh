#!/usr/bin/env bash
# The whole test suite: build every target once, run every test (real processes, real
# sockets, real signals) with nextest, then the doc examples.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
cargo test --workspace --doc --locked
