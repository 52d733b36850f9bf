#!/usr/bin/env python3
"""PyTorch eager reference for `shear bench`: the same steps on the same shapes, to run back to back on one
machine. Not run by CI (it needs torch + transformers; e.g. `pip install torch transformers`).

  python benches/torch_reference.py train    --config models/smollm2-135m/config.json --shapes 4x256 --threads 2
  python benches/torch_reference.py forward  --config models/smollm2-135m/config.json --shapes 1x256
  python benches/torch_reference.py generate --config models/smollm2-135m/config.json --shapes 1x64 --runs 32

`train` is one optimizer step as `shear bench train` times it: forward over `seq-1` positions, mean
next-token cross-entropy, backward, `clip_grad_norm_(1.0)`, AdamW (betas 0.9/0.95, eps 1e-8, no weight
decay) over every parameter, f32, random weights of the config's shape, the same token ids. Prints the
median step time, tokens/s (batch × seq per step) and the process's peak RSS, as a table or `--json`.
"""
import argparse
import json
import resource
import statistics
import time


def peak_rss_mib():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_ids(torch, vocab, batch, seq):
    # The ids `shear bench` uses: a multiplicative hash of the position, modulo the vocabulary.
    n = batch * seq
    ids = [(i * 2654435761) % 2**32 % vocab for i in range(n)]
    return torch.tensor(ids, dtype=torch.long).reshape(batch, seq)


def timed(warmup, runs, fn):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(runs, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", choices=["train", "forward", "generate"])
    ap.add_argument("--config", required=True, help="an HF config.json (LLaMA architecture)")
    ap.add_argument("--shapes", default="4x256", help="BATCHxSEQ, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention kernel")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig.from_json_file(a.config)
    cfg._attn_implementation = a.attn
    model = LlamaForCausalLM(cfg).float()
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for shape in a.shapes.split(","):
        batch, seq = (int(x) for x in shape.split("x"))
        ids = bench_ids(torch, cfg.vocab_size, batch, seq)
        if a.bench == "train":
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)

            def step():
                logits = model(input_ids=ids[:, :-1]).logits
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)

            secs, runs = timed(a.warmup, a.runs, step)
            tokens = batch * seq
        elif a.bench == "forward":
            model.eval()

            def fwd():
                with torch.no_grad():
                    model(input_ids=ids).logits

            secs, runs = timed(a.warmup, a.runs, fwd)
            tokens = batch * seq
        else:
            model.eval()
            assert batch == 1, "generate decodes one sequence: use 1xPROMPT"
            stamps = []

            def gen():
                # Greedy decoding with the KV cache, timing each new token; the first one includes the prefill.
                stamps.clear()
                with torch.no_grad():
                    t = time.perf_counter()
                    out = model(input_ids=ids, use_cache=True)
                    past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                    stamps.append(time.perf_counter() - t)
                    for _ in range(a.runs):
                        t = time.perf_counter()
                        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                        stamps.append(time.perf_counter() - t)

            for _ in range(a.warmup):
                gen()
            gen()
            secs, runs, tokens = statistics.median(stamps[1:]), len(stamps) - 1, 1
        rows.append({
            "bench": a.bench, "batch": batch, "seq_len": seq, "runs": runs, "median_ms": secs * 1e3,
            "tokens_per_s": tokens / secs, "peak_rss_mib": peak_rss_mib(),
        })
        if not a.json:
            if len(rows) == 1:
                print(f"torch {torch.__version__} {a.bench}: {a.config}, {params / 1e6:.1f}M parameters, f32, "
                      f"{torch.get_num_threads()} threads, attention {a.attn}")
                print(f"{'batch':>6} {'seq_len':>8} {'runs':>6} {'median ms':>12} {'tokens/s':>12} {'peak RSS MiB':>14}")
            r = rows[-1]
            print(f"{batch:>6} {seq:>8} {runs:>6} {r['median_ms']:>12.1f} {r['tokens_per_s']:>12.1f} {r['peak_rss_mib']:>14.0f}")
    if a.json:
        print(json.dumps({"bench": a.bench, "framework": f"torch {torch.__version__}", "parameters": params,
                          "threads": torch.get_num_threads(), "attention": a.attn, "rows": rows}))


if __name__ == "__main__":
    main()
