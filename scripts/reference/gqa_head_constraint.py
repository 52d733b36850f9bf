#!/usr/bin/env python3
"""Where the head constraint must act with GQA, simulated (numpy, hand-written gradients).

SmolLM2-135M's head masks: 30 layers x 9 query heads in 3 KV groups; the default target keeps 2 heads per
group (6 per layer). Materialization has to keep exactly 2 per group, so a layer whose masks settle on
3 + 2 + 1 keeps a head scored ~0 and drops one scored ~1.

The LM loss is stood in for by a fixed per-head preference: loss_LM = -push * mean(p * score), with p drawn
per head, so the heads the "model" prefers are spread unevenly over the groups (as real heads are). The
Lagrangian term, optimizer (Adam, betas 0.9/0.95, mask LR 1.0, lambda LR 1.0 ascended, one
cosine-with-warm-up factor) and target warm-up are shear's (src/prune/lagrangian.rs, src/train/pruning.rs).
Three ways to write the head term:

  layer        one element per layer, shared (lambda1, lambda2): the paper's code, and shear before GQA
               balancing
  group        one element per (layer, KV group), shared (lambda1, lambda2): shear's choice
  group-lambda one element per (layer, KV group), its own (lambda1, lambda2)

Printed per formulation, at the end of the target warm-up W and at the last step: groups whose number of
heads with P(z>0) > 0.5 is not 2 (of 90), kept heads (the top 2 of each group by log-alpha, as
materialization keeps them) with P(z>0) < 0.5 (of 180), and the largest |expected - target| sparsity.

    python3 -m pip install numpy && python3 scripts/reference/gqa_head_constraint.py

Results (2026-12-01, 5 seeds; unbalanced groups / kept heads with P<0.5 / max |E[s] - t|, at W and at the end):

    push 0.3  layer         at 600:  43.8 /  22.2 / 0.0076   at 800:  43.4 /  22.2 / 0.0000
    push 0.3  group         at 600:   0.0 /   0.0 / 0.0036   at 800:   0.0 /   0.0 / 0.0008
    push 0.3  group-lambda  at 600:   0.0 /   0.0 / 0.0060   at 800:   0.0 /   0.0 / 0.0001
    push 1.0  layer         at 600:  44.2 /  23.0 / 0.0088   at 800:  43.6 /  22.2 / 0.0000
    push 1.0  group         at 600:   0.0 /   0.0 / 0.0197   at 800:   0.0 /   0.0 / 0.0000
    push 1.0  group-lambda  at 600:   0.0 /   0.0 / 0.0249   at 800:   0.0 /   0.0 / 0.0002
    push 3.0  layer         at 600:  43.6 /  22.4 / 0.0200   at 800:  43.8 /  22.2 / 0.0000
    push 3.0  group         at 600:   0.0 /   0.0 / 0.0178   at 800:   0.0 /   0.0 / 0.0000
    push 3.0  group-lambda  at 600:   0.0 /   0.0 / 0.0173   at 800:   0.0 /   0.0 / 0.0002

A per-layer term leaves about half the groups unbalanced and ~12% of the kept heads below 0.5 (the first
800-step run on SmolLM2: 16%); per (layer, group) with shared multipliers balances every group, and
multipliers of their own per group add nothing.
"""

import math
import sys

import numpy as np

LAYERS, HEADS, GROUPS = 30, 9, 3
PER_GROUP = HEADS // GROUPS
KEEP = 2  # target heads per group
ZERO_LOGIT = (2 / 3) * math.log(1 / 11)
LIMIT = math.log(100)


def factor(t, steps, warmup_lr, alpha_f=0.1):
    if t < warmup_lr:
        return t / warmup_lr
    p = min(1.0, (t - warmup_lr) / max(1, steps - warmup_lr))
    return alpha_f + (1 - alpha_f) * 0.5 * (1 + math.cos(math.pi * p))


class Adam:
    def __init__(self, shape, lr, maximize=False):
        self.m, self.v, self.t, self.lr, self.sign = np.zeros(shape), np.zeros(shape), 0, lr, -1.0 if maximize else 1.0

    def step(self, x, g, f):
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.95 * self.v + 0.05 * g * g
        mh, vh = self.m / (1 - 0.9**self.t), self.v / (1 - 0.95**self.t)
        return x - self.sign * self.lr * f * mh / (np.sqrt(vh) + 1e-8)


def simulate(mode, steps=800, w=600, warmup_lr=80, push=1.0, seed=0):
    rng = np.random.default_rng(seed)
    la = 5.0 + 0.01 * rng.standard_normal((LAYERS, HEADS))
    pref = rng.random((LAYERS, HEADS))  # the stand-in LM loss's preference per head
    n_elems = LAYERS if mode == "layer" else LAYERS * GROUPS
    lam_shape = (2, n_elems) if mode == "group-lambda" else (2, 1)
    lam = np.zeros(lam_shape)
    opt_la, opt_lam = Adam(la.shape, 1.0), Adam(lam.shape, 1.0, maximize=True)
    final = 1 - KEEP / PER_GROUP
    out = {}
    for t in range(steps + 1):
        la = np.clip(la, -LIMIT, LIMIT)
        score = np.clip(1 / (1 + np.exp(-(la - ZERO_LOGIT))), 1e-6, 1 - 1e-6)
        dscore = score * (1 - score)
        target = final * min(1.0, t / w)
        if mode == "layer":
            s = 1 - score.mean(1)  # [L]
            per_elem = HEADS
        else:
            s = 1 - score.reshape(LAYERS, GROUPS, PER_GROUP).mean(2).reshape(-1)  # [L*G]
            per_elem = PER_GROUP
        gap = s - target
        if t in (w, steps):
            kept_scores = np.sort(score.reshape(LAYERS, GROUPS, PER_GROUP), axis=2)[:, :, -KEEP:]
            likely = (score.reshape(LAYERS, GROUPS, PER_GROUP) > 0.5).sum(2)
            out[t] = ((likely != KEEP).sum(), (kept_scores < 0.5).sum(), abs(s.mean() - target))
        if t == steps:
            break
        l1, l2 = lam[0], lam[1]
        # d lag / d s_e = (l1 + 2 l2 gap_e) / E; d s_e / d la_i = -dscore_i / per_elem.
        dlag_ds = (l1 + 2 * l2 * gap) / n_elems
        if mode == "layer":
            g_la = -dlag_ds[:, None] * dscore / per_elem
        else:
            g_la = -np.repeat(dlag_ds.reshape(LAYERS, GROUPS), PER_GROUP, axis=1) * dscore / per_elem
        g_la = g_la - push * pref * dscore / la.size
        if mode == "group-lambda":
            g_lam = np.stack([gap, gap**2]) / n_elems
        else:
            g_lam = np.array([[gap.mean()], [(gap**2).mean()]])
        f = factor(t, steps, warmup_lr)
        la = opt_la.step(la, g_la, f)
        lam = opt_lam.step(lam, g_lam, f)
    return out


if __name__ == "__main__":
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    steps, w = 800, 600
    print(f"{steps} steps, target warm-up {w}, LR warm-up 80; per formulation and stand-in LM push, mean over "
          f"{seeds} seeds: unbalanced groups (of 90) / kept heads with P<0.5 (of 180) / max |E[s] - t|")
    for push in (0.3, 1.0, 3.0):
        for mode in ("layer", "group", "group-lambda"):
            runs = [simulate(mode, steps, w, push=push, seed=s) for s in range(seeds)]
            cells = []
            for t in (w, steps):
                u, k, g = (np.mean([r[t][i] for r in runs]) for i in range(3))
                cells.append(f"at {t}: {u:5.1f} / {k:5.1f} / {g:.4f}")
            print(f"push {push:3.1f}  {mode:<12}  " + "   ".join(cells))
