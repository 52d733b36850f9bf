#!/usr/bin/env bash
# The notebooks (README's main command): install what is missing, fetch the embedded default model, the
# text and the lite corpus, then open Jupyter on notebooks/.
#
#   scripts/notebooks.sh            set up and open Jupyter (http://localhost:8888)
#   scripts/notebooks.sh open ARGS  the same, passing ARGS to `jupyter notebook` (e.g. --no-browser --port 8899)
#   scripts/notebooks.sh --check    set up and execute every notebook headlessly in quick mode (CI)
#   scripts/notebooks.sh --execute  execute every notebook in default mode and keep the outputs (committed)
#                                   (both take notebook paths to run only those, in the order given)
#   scripts/notebooks.sh --setup    only install and fetch
#
# Installs: evcxr_jupyter 0.22.0 (`cargo install --locked`: ~10-12 min on 2 cores, once), Jupyter pieces
# from PyPI into .venv-nb (pinned in notebooks/requirements*.txt), and a kernel spec inside .venv-nb that
# points evcxr at notebooks/.evcxr (build cache) and target/evcxr (its build dir, kept between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-open}
[ $# -gt 0 ] && shift
root=$PWD

if ! command -v evcxr_jupyter >/dev/null; then
  echo "notebooks: installing evcxr_jupyter 0.22.0 (about 10 minutes, once)"
  cargo install --locked --version 0.22.0 evcxr_jupyter
fi
evcxr=$(command -v evcxr_jupyter)

if [ ! -x .venv-nb/bin/python ]; then
  python3 -m venv .venv-nb
fi
.venv-nb/bin/pip install --quiet --disable-pip-version-check -r notebooks/requirements.txt
if [ "$mode" = open ]; then
  .venv-nb/bin/pip install --quiet --disable-pip-version-check -r notebooks/requirements-ui.txt
fi

# Kernel spec inside the venv (found first by the venv's jupyter). evcxr_jupyter rewrites its spec when the
# spec's version.txt differs from its own, so install it properly first, then add the environment that keeps
# evcxr's build products (its build dir and cache) between kernels; the same variables are exported below
# for the kernels this script starts.
export JUPYTER_PATH=$root/.venv-nb/share/jupyter
export EVCXR_CONFIG_DIR=$root/notebooks/.evcxr EVCXR_TMPDIR=$root/target/evcxr
if [ "$mode" = --check ]; then
  # One check runs every notebook against the one build dir, so evcxr's `:cache` would only be a second
  # copy of its artifacts (0.7 GB of disk, which a CI machine may not have): the same init without it.
  EVCXR_CONFIG_DIR=$root/target/evcxr-config-check
  mkdir -p "$EVCXR_CONFIG_DIR"
  grep -v '^:cache' notebooks/.evcxr/init.evcxr >"$EVCXR_CONFIG_DIR/init.evcxr"
fi
# evcxr builds at opt-level 2 but with debug assertions and overflow checks on, which makes candle's CPU
# kernels several times slower; cargo's environment overrides the profile evcxr writes.
export CARGO_PROFILE_DEV_DEBUG_ASSERTIONS=false CARGO_PROFILE_DEV_OVERFLOW_CHECKS=false
mkdir -p "$EVCXR_TMPDIR"
# evcxr regenerates its crate's manifest and sources; an interrupted kernel can leave them half-written.
rm -rf "$EVCXR_TMPDIR/Cargo.toml" "$EVCXR_TMPDIR/src"
"$evcxr" --install >/dev/null
.venv-nb/bin/python - "$JUPYTER_PATH/kernels/rust/kernel.json" <<PY
import json, sys
spec = json.load(open(sys.argv[1]))
spec["env"] = {
    "EVCXR_CONFIG_DIR": "$EVCXR_CONFIG_DIR",
    "EVCXR_TMPDIR": "$EVCXR_TMPDIR",
    "CARGO_PROFILE_DEV_DEBUG_ASSERTIONS": "false",
    "CARGO_PROFILE_DEV_OVERFLOW_CHECKS": "false",
}
json.dump(spec, open(sys.argv[1], "w"), indent=2)
PY

# What the notebooks read: the source model, Shakespeare, the zero-shot task requests, the lite corpus.
[ -x target/release/shear ] || cargo build --release --locked
./scripts/fetch-default-model.sh
./scripts/fetch-text.sh
./scripts/fetch-eval-tasks.sh
[ -f data/corpus/manifest.json ] || target/release/shear corpus build --out data/corpus --profile lite

notebooks=(notebooks/0*.ipynb)
if [ "$mode" = --check ] || [ "$mode" = --execute ]; then
  [ $# -gt 0 ] && notebooks=("$@")
fi
case "$mode" in
  --check)
    SHEAR_QUICK=1 .venv-nb/bin/python notebooks/check.py --out target/notebooks-quick "${notebooks[@]}"
    ;;
  --execute)
    .venv-nb/bin/python notebooks/check.py --inplace "${notebooks[@]}"
    ;;
  --setup)
    ;;
  open)
    # Jupyter renders the SVG charts of an untrusted notebook as empty space, and a notebook cloned from a
    # repository is untrusted: sign the committed notebooks (their outputs come from our own runs) in this
    # user's notebook database, so their charts show on first open.
    .venv-nb/bin/jupyter trust notebooks/0*.ipynb
    # Jupyter refuses to run as root without being told (containers often are root).
    root_flag=()
    [ "$(id -u)" = 0 ] && root_flag=(--allow-root)
    exec .venv-nb/bin/jupyter notebook --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 "${root_flag[@]}" "$@"
    ;;
  *)
    echo "usage: scripts/notebooks.sh [--check | --execute | --setup]" >&2
    exit 2
    ;;
esac
