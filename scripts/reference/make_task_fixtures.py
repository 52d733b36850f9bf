#!/usr/bin/env python3
"""Reference log-likelihoods for `shear eval --tasks`, computed once with PyTorch + transformers.

Run by hand, not in CI (it needs torch, transformers and gguf):

    python -m venv .venv-ref && .venv-ref/bin/pip install torch transformers gguf accelerate
    ./scripts/fetch-default-model.sh && ./scripts/fetch-eval-tasks.sh
    .venv-ref/bin/python scripts/reference/make_task_fixtures.py --gguf models/smollm2-135m.gguf

transformers reads SmolLM2 from the GGUF with its own loader and tokenizer builder, so nothing here comes
from shear. Each request is scored on its own, the way lm-evaluation-harness scores a causal LM: the
context's trailing whitespace moves into the continuation, the continuation's tokens are
encode(context + continuation) after len(encode(context)) (without special tokens), the model reads (context + continuation)[:-1],
and the log-likelihood is the sum over the continuation's tokens (greedy: each is the argmax).

Writes tests/fixtures/tasks/smollm2.json: for the first DOCS documents of a few tasks, every request's
tokens, log-likelihood and greedy flag. With --report, also scores the first N documents of the given
tasks and prints acc / acc_norm (the by-hand comparison of the README), without writing anything.
"""

import argparse
import gzip
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = ROOT / "data" / "cache" / "eval" / "tasks"
OUT = ROOT / "tests" / "fixtures" / "tasks" / "smollm2.json"
# (task, variant, documents): a few dozen documents of tasks with different shapes (shared contexts,
# winogrande's differing contexts, a 5-shot context, LAMBADA's single greedy continuation).
SUBSET = [
    ("arc_easy", "rc_0shot", 24),
    ("hellaswag", "rc_0shot", 16),
    ("piqa", "rc_0shot", 16),
    ("winogrande", "rc_0shot", 16),
    ("arc_challenge", "rc_5shot", 8),
    ("lambada", "bpb_0shot", 16),
]


def load_docs(task, variant, limit):
    cfg = json.loads((TASKS_DIR / task / variant / "config.json").read_text())
    # Absent or null (BoolQ, SciQ): no unconditional requests to leave out.
    uncond = (cfg["task_config"].get("metric_kwargs") or {}).get("uncond_docid_offset") or 1 << 62
    docs, order = {}, []
    with gzip.open(TASKS_DIR / task / variant / "requests.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["doc_id"] >= uncond:
                continue
            if r["doc_id"] not in docs:
                if len(order) >= limit:
                    continue
                order.append(r["doc_id"])
                docs[r["doc_id"]] = {"doc_id": r["doc_id"], "label": r["label"], "requests": []}
            docs[r["doc_id"]]["requests"].append((r["idx"], r["request"]))
    out = []
    for d in order:
        doc = docs[d]
        doc["requests"] = [req for _, req in sorted(doc["requests"], key=lambda x: x[0])]
        out.append(doc)
    return out


def encode_pair(tok, context, continuation):
    n = len(context) - len(context.rstrip())
    if n > 0:
        continuation = context[-n:] + continuation
        context = context[:-n]
    # As lm-evaluation-harness encodes for a causal LM: no special tokens.
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return whole[:-1], whole[len(ctx):]


def score(model, tok, request):
    inp, cont = encode_pair(tok, request["context"], request["continuation"])
    with torch.no_grad():
        logits = model(torch.tensor([inp])).logits[0, -len(cont):].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(cont)
    ll = logp.gather(1, target.unsqueeze(1)).squeeze(1).double().sum().item()
    greedy = bool((logp.argmax(-1) == target).all())
    return inp, cont, ll, greedy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--report", help="comma-separated tasks to score and print instead of writing fixtures")
    ap.add_argument("--limit", type=int, default=100)
    args = ap.parse_args()
    gguf = Path(args.gguf).resolve()
    torch.set_num_threads(os.cpu_count() or 1)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.eval()

    if args.report:
        for task in args.report.split(","):
            variant = "bpb_0shot" if task == "lambada" else "rc_0shot"
            hits = hits_norm = 0
            docs = load_docs(task, variant, args.limit)
            for doc in docs:
                scored = [score(model, tok, r) for r in doc["requests"]]
                if task == "lambada":
                    hits += scored[0][3]
                    continue
                lls = [s[2] for s in scored]
                norm = [s[2] / max(1, len(r["continuation"].removeprefix(" "))) for s, r in zip(scored, doc["requests"])]
                hits += max(range(len(lls)), key=lambda i: (lls[i], -i)) == doc["label"]
                hits_norm += max(range(len(norm)), key=lambda i: (norm[i], -i)) == doc["label"]
            print(f"{task}: {len(docs)} docs, acc {hits / len(docs):.4f}, acc_norm {hits_norm / len(docs):.4f}")
        return

    fixture = {"model": gguf.name, "tasks": {}}
    for task, variant, n in SUBSET:
        docs = load_docs(task, variant, n)
        rows = []
        for doc in docs:
            for idx, r in enumerate(doc["requests"]):
                inp, cont, ll, greedy = score(model, tok, r)
                rows.append({"doc_id": doc["doc_id"], "idx": idx, "label": doc["label"], "context": r["context"],
                             "continuation": r["continuation"], "input": inp, "targets": cont, "loglik": ll,
                             "greedy": greedy})
        fixture["tasks"][task] = {"variant": variant, "docs": len(docs), "requests": rows}
        print(f"{task}/{variant}: {len(docs)} docs, {len(rows)} requests")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, separators=(",", ":")))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
