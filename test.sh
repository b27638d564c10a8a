#!/usr/bin/env bash
# The whole test suite: build every target once, run the doc examples, then every test
# (real processes, real sockets, real signals) with nextest, each bounded by
# .config/nextest.toml.
set -euo pipefail
cd "$(dirname "$0")"
# The real peer programs (uvicorn, gunicorn) into a virtual environment under target/.
tests/peers/install.sh
cargo build --workspace --all-targets --locked
cargo test --workspace --doc --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
