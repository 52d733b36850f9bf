#!/usr/bin/env python3
"""Check by hand that a model directory written by shear loads unchanged in transformers and gives the same
NLL as `shear eval` (within 1e-4 relative). Not run in CI (needs torch + transformers):

    .venv-ref/bin/python scripts/reference/check_hf_dir.py models/smollm2-135m [--text data/eval/sonnets.txt]

Loads DIR with AutoModelForCausalLM / AutoTokenizer.from_pretrained (no arguments besides dtype), runs the
eval protocol of make_fixtures.py, runs `target/release/shear eval --json` on the same files, and compares.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import ROOT, eval_protocol  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--text", default=str(ROOT / "data" / "eval" / "sonnets.txt"))
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--shear", default=str(ROOT / "target" / "release" / "shear"))
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    text = Path(args.text).read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    hf_nll, hf_tokens = eval_protocol(model, ids, args.seq_len)

    out = subprocess.run(
        [args.shear, "eval", "--model", args.model_dir, "--text", args.text, "--seq-len", str(args.seq_len), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    shear = json.loads(out)
    rel = abs(shear["mean_nll"] - hf_nll) / hf_nll
    report = {
        "model_dir": args.model_dir, "transformers_class": type(model).__name__,
        "tokenizer_class": type(tok).__name__, "num_parameters": sum(p.numel() for p in model.parameters()),
        "transformers": {"tokens": hf_tokens, "mean_nll": hf_nll},
        "shear": {"tokens": shear["tokens"], "mean_nll": shear["mean_nll"]}, "relative_difference": rel,
    }
    print(json.dumps(report, indent=1))
    if hf_tokens != shear["tokens"] or rel > 1e-4:
        sys.exit("MISMATCH")


if __name__ == "__main__":
    main()
