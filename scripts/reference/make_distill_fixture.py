"""Freeze PyTorch's distillation loss and its gradient on fixed logits (tests/fixtures/distill/kl.json).

The loss per position is  A * T^2 * KL(p_t || p_s) + (1 - A) * CE(z, target)  with p_t = softmax(u / T),
p_s = softmax(z / T), computed here with `torch.nn.functional.kl_div` (which takes log p_s and p_t and
returns p_t * (log p_t - log p_s)) and `cross_entropy`, in float64; the gradient is autograd's of the sum
over positions. With top-k, p_t is the softmax of the teacher's k largest logits (zero elsewhere) and the
student's log-probabilities are the full log_softmax gathered at those k ids.

    /work/venv-ref/bin/python scripts/reference/make_distill_fixture.py
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

ROWS, VOCAB = 6, 50
CASES = [
    dict(weight=1.0, temperature=1.0, top_k=None),
    dict(weight=1.0, temperature=2.0, top_k=None),
    dict(weight=0.5, temperature=2.0, top_k=None),
    dict(weight=1.0, temperature=1.0, top_k=5),
    dict(weight=0.7, temperature=2.0, top_k=8),
]


def case(z0, u, targets, weight, temperature, top_k):
    z = z0.clone().requires_grad_(True)
    logp_s = F.log_softmax(z / temperature, dim=-1)
    if top_k is None:
        p_t = F.softmax(u / temperature, dim=-1)
        kl = F.kl_div(logp_s, p_t, reduction="none").sum(-1)
    else:
        top, ids = u.topk(top_k, dim=-1)
        p_t = F.softmax(top / temperature, dim=-1)
        kl = F.kl_div(logp_s.gather(-1, ids), p_t, reduction="none").sum(-1)
    nll = F.cross_entropy(z, targets, reduction="none")
    loss = weight * temperature**2 * kl + (1 - weight) * nll
    loss.sum().backward()
    return dict(
        weight=weight,
        temperature=temperature,
        top_k=top_k,
        nll=nll.tolist(),
        kl=kl.tolist(),
        loss=loss.tolist(),
        grad=z.grad.flatten().tolist(),
    )


def main():
    g = torch.Generator().manual_seed(0)
    # float32 values, so that the Rust side reads exactly these logits.
    z = (3 * torch.randn(ROWS, VOCAB, generator=g)).float().double()
    u = (3 * torch.randn(ROWS, VOCAB, generator=g)).float().double()
    targets = torch.randint(0, VOCAB, (ROWS,), generator=g)
    out = dict(
        rows=ROWS,
        vocab=VOCAB,
        student=z.flatten().tolist(),
        teacher=u.flatten().tolist(),
        targets=targets.tolist(),
        cases=[case(z, u, targets, **c) for c in CASES],
        torch=torch.__version__,
    )
    path = Path(__file__).resolve().parents[2] / "tests/fixtures/distill/kl.json"
    path.write_text(json.dumps(out) + "\n")
    for c in out["cases"]:
        print(f"A {c['weight']} T {c['temperature']} top-k {c['top_k']}: mean KL {sum(c['kl']) / ROWS:.6f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
