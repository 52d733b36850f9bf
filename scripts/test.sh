#!/usr/bin/env bash
# The test command (README, .ci/run): build, fetch the embedded default model if missing (the parity tests
# need it), run every test in release mode (numeric tests are slow unoptimized).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
./scripts/fetch-default-model.sh
cargo test --release --locked "$@"
