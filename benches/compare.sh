#!/usr/bin/env bash
# One benchmark sitting, shear and PyTorch alternately on the same machine (README, "Performance"):
#   benches/compare.sh [ROUNDS]        (default 3 rounds; PYTHON=... must have torch + transformers)
# Prints every run as JSON (also kept in target/bench/) and the medians over rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
py=${PYTHON:-python3}
src=${SOURCE:-models/smollm2-135m}
pruned=${PRUNED:-runs/pruned-default}
threads=${THREADS:-2}
bin=target/release/shear
out=target/bench/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
[ -x "$bin" ] || cargo build --release --locked
"$py" -c "import torch, transformers" || { echo "compare.sh: $py lacks torch/transformers (set PYTHON)"; exit 1; }

run() { # name command...
  local name=$1; shift
  "$@" --json 2>/dev/null | tail -1 | tee -a "$out/$name.jsonl"
}
for r in $(seq "$rounds"); do
  echo "== round $r"
  run shear-train "$bin" bench train --model "$src" --shapes 4x256 --threads "$threads" --warmup 1 --runs 3
  run torch-train "$py" benches/torch_reference.py train --config "$src/config.json" --shapes 4x256 --threads "$threads" --warmup 1 --runs 3
  run shear-prune "$bin" bench prune --model "$src" --shapes 4x256 --threads "$threads" --warmup 1 --runs 3
done
for m in "$src" "$pruned"; do
  [ -f "$m/config.json" ] || continue
  tag=$(basename "$m")
  run "shear-forward-$tag" "$bin" bench forward --model "$m" --shapes 1x256,4x256 --threads "$threads" --warmup 1 --runs 5
  run "shear-generate-$tag" "$bin" bench generate --model "$m" --shapes 1x64 --threads "$threads" --warmup 1 --runs 64
  run "torch-forward-$tag" "$py" benches/torch_reference.py forward --config "$m/config.json" --shapes 1x256,4x256 --threads "$threads" --warmup 1 --runs 5
  run "torch-generate-$tag" "$py" benches/torch_reference.py generate --config "$m/config.json" --shapes 1x64 --threads "$threads" --warmup 1 --runs 64
done
echo "== medians over rounds ($out)"
"$py" - "$out" <<'PY'
import json, statistics, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.jsonl")):
    runs = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    rows = {}
    for r in runs:
        for row in r["rows"]:
            rows.setdefault((row["batch"], row["seq_len"]), []).append(row)
    for (b, s), rs in rows.items():
        tps = statistics.median(x["tokens_per_s"] for x in rs)
        ms = statistics.median(x["median_ms"] for x in rs)
        rss = max(x["peak_rss_mib"] for x in rs)
        print(f"{f.stem:28} {b}x{s:<5} {ms:10.1f} ms {tps:10.1f} tokens/s  peak RSS {rss:6.0f} MiB  ({len(rs)} runs)")
PY
