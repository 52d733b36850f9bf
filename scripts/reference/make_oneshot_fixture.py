#!/usr/bin/env python3
"""Reference importance scores for shear's one-shot pruning baselines, computed once with PyTorch + transformers.

Run by hand from the repository root, not in CI (it needs torch, transformers, safetensors and numpy):

    .venv-ref/bin/python scripts/reference/make_oneshot_fixture.py

Writes tests/fixtures/oneshot/:

  model/config.json, model/model.safetensors
      a tiny random LlamaForCausalLM (4 layers, d = 32, 4 query heads in 2 KV groups of head_dim 8,
      m = 48, vocab 64, tied embeddings), f32, saved by transformers' own `save_pretrained`;
  scores.json
      the calibration ids, and for each method below the importance score of every prunable structure
      (layers, KV groups, query heads, intermediate channels, hidden channels) and the structures a one-shot
      pruning to the target {layers 3, hidden 24, heads 2, kv_heads 1, intermediate 32} keeps.

Methods, written from their papers' definitions (not from any implementation):

  magnitude        the L2 norm of the weights a structure owns (the classic magnitude-pruning baseline,
                   as in LLM-Pruner's / Sheared-LLaMA's comparisons, here per structure);
  wanda_sp         "A Simple and Effective Pruning Approach for Large Language Models" (Sun et al., 2023,
                   Wanda): weight |W_ij| times the L2 norm over calibration tokens of its input feature
                   ||X_j||, summed over the weights a structure owns (the structured variant, Wanda-sp, as
                   in An et al., "Fluctuation-based Adaptive Structured Pruning for LLMs", 2024);
  activation       "Compact Language Models via Pruning and Knowledge Distillation" (Muralidharan et al.,
                   2024, Minitron): mean over calibration tokens of the structure's activation magnitude
                   (heads: the L2 norm of the head's attention output; neurons: |act|; embedding channels:
                   |RMSNorm output| summed over every norm) and, for depth, Block Influence;
  block_influence  "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect" (Men et
                   al., 2024): BI_l = 1 - mean_tokens cos(x_l, y_l), x_l / y_l a block's input / output.

Every score is computed in float64 from the float32 weights and the float32 activations of the model run
by transformers (eager attention). The calibration set is 3 sequences x 16 tokens, every position counted
(no shift), N = 48 tokens.

Notation (per layer l, per calibration token): x_l block input [d]; y_l block output [d]; a_l
input_layernorm output [d]; ctx_l o_proj input [H*hd] (head h owns columns h*hd .. (h+1)*hd); h_l
post_attention_layernorm output [d]; act_l down_proj input [m] (= silu(gate) * up); hf model.norm output.
KV group g owns query heads g*(H/KV) .. (g+1)*(H/KV) (transformers' repeat_kv order) and rows g*hd ..
(g+1)*hd of k_proj and v_proj. Weights are [out, in] as PyTorch stores them.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "oneshot"
MODEL_DIR = OUT / "model"

L, D, M, V = 4, 32, 48, 64  # layers, hidden size, intermediate size, vocabulary
H, KV, HD = 4, 2, 8  # query heads, KV groups (heads), head_dim
PER_GROUP = H // KV  # query heads per KV group
SEQS, SEQ_LEN = 3, 16  # calibration: 3 sequences of 16 tokens, N = 48
TARGET = {"layers": 3, "hidden": 24, "heads": 2, "kv_heads": 1, "intermediate": 32}
MATRICES = ["q", "k", "v", "o", "gate", "up", "down"]


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------


def build_model():
    """A seeded random Llama with weights large enough (std 0.2) that scores are well separated, and
    RMSNorm weights 1 + 0.3 * normal so the norms' scales show in every activation-based score."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=M,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=KV,
        head_dim=HD,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=64,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    assert model.config._attn_implementation == "eager"
    # Re-initialize every parameter in named_parameters order (deterministic under the seed). With tied
    # embeddings lm_head.weight is embed_tokens.weight and named_parameters lists it once.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "embeddings not tied"
    return model


def save_model(model):
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    # Tied: the file must hold model.embed_tokens.weight and no separate lm_head.weight.
    with safe_open(MODEL_DIR / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
        assert "model.embed_tokens.weight" in keys, sorted(keys)
        assert "lm_head.weight" not in keys, "tied embeddings saved a separate lm_head.weight"
        for k in keys:
            assert f.get_tensor(k).dtype == torch.float32, k
        # The saved weights are the in-memory ones, bit for bit.
        sd = model.state_dict()
        for k in keys:
            assert torch.equal(f.get_tensor(k), sd[k]), k
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["num_key_value_heads"] == KV and cfg["head_dim"] == HD


# --------------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------------


def capture(model, ids):
    """Run the batch once and return every activation the scores need, as float64 [N, features] arrays
    (N = 3 * 16 tokens, batch-major). Pre-hooks give o_proj's and down_proj's inputs; forward hooks give
    the RMSNorm outputs; a pre-hook / hook on each decoder layer gives its input and output."""
    acts = {k: [None] * L for k in ("x", "y", "a", "ctx", "h", "act")}
    acts["hf"] = None
    handles = []

    def store(key, l):
        def put(t):
            t = t[0] if isinstance(t, tuple) else t
            assert t.dtype == torch.float32
            flat = t.detach().reshape(-1, t.shape[-1]).to(torch.float64).numpy().copy()
            if l is None:
                acts[key] = flat
            else:
                acts[key][l] = flat

        return put

    for l, layer in enumerate(model.model.layers):
        # Decoder layer input: positional or keyword (hidden_states), whichever transformers uses.
        def layer_in(_m, args, kwargs, put=store("x", l)):
            put(args[0] if args else kwargs["hidden_states"])

        handles.append(layer.register_forward_pre_hook(layer_in, with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda _m, _i, out, put=store("y", l): put(out)))
        handles.append(layer.input_layernorm.register_forward_hook(lambda _m, _i, o, put=store("a", l): put(o)))
        handles.append(
            layer.post_attention_layernorm.register_forward_hook(lambda _m, _i, o, put=store("h", l): put(o))
        )
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, i, put=store("ctx", l): put(i[0])))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(lambda _m, i, put=store("act", l): put(i[0])))
    handles.append(model.model.norm.register_forward_hook(lambda _m, _i, o, put=store("hf", None): put(o)))

    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    for hd in handles:
        hd.remove()

    # Cross-check the hooks against output_hidden_states: entries 0..L-1 are the blocks' inputs; the last
    # entry is taken AFTER the final norm in this transformers, hence y_{L-1} from the hook.
    hs = [t.reshape(-1, D).to(torch.float64).numpy() for t in out.hidden_states]
    assert len(hs) == L + 1
    for l in range(L):
        assert np.array_equal(hs[l], acts["x"][l]), f"hidden_states[{l}] != input of layer {l}"
        if l + 1 < L:
            assert np.array_equal(acts["y"][l], acts["x"][l + 1]), f"output of layer {l} != input of {l + 1}"
    last_is_normed = np.array_equal(hs[L], acts["hf"])
    assert last_is_normed or np.array_equal(hs[L], acts["y"][L - 1])
    acts["logits"] = out.logits.reshape(-1, V).to(torch.float64).numpy()
    acts["last_hidden_state_is_normed"] = last_is_normed
    return acts


def weights(model):
    """float64 copies of every matrix: W[l][name] ([out, in]) and E [vocab, d]."""
    f64 = lambda t: t.detach().to(torch.float64).numpy().copy()  # noqa: E731
    W = []
    for layer in model.model.layers:
        at, mlp = layer.self_attn, layer.mlp
        W.append({
            "q": f64(at.q_proj.weight), "k": f64(at.k_proj.weight), "v": f64(at.v_proj.weight),
            "o": f64(at.o_proj.weight), "gate": f64(mlp.gate_proj.weight), "up": f64(mlp.up_proj.weight),
            "down": f64(mlp.down_proj.weight),
        })
    E = f64(model.model.embed_tokens.weight)
    norms = [(f64(ly.input_layernorm.weight), f64(ly.post_attention_layernorm.weight)) for ly in model.model.layers]
    return W, E, norms, f64(model.model.norm.weight)


def matrix_input(acts, l, name):
    """The input X [N, in] of a layer's matrix."""
    return {"q": acts["a"], "k": acts["a"], "v": acts["a"], "o": acts["ctx"],
            "gate": acts["h"], "up": acts["h"], "down": acts["act"]}[name][l]


def head_cols(h):
    return slice(h * HD, (h + 1) * HD)


def group_rows(g):
    return slice(g * HD, (g + 1) * HD)


def group_heads(g):
    return range(g * PER_GROUP, (g + 1) * PER_GROUP)


# --------------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------------


def sq(x):
    """Squared L2 / Frobenius norm."""
    return float(np.sum(x * x))


def magnitude(W, E):
    head = [[math.sqrt(sq(w["q"][head_cols(h), :]) + sq(w["o"][:, head_cols(h)])) for h in range(H)] for w in W]
    kv = [[math.sqrt(sq(w["k"][group_rows(g), :]) + sq(w["v"][group_rows(g), :])) for g in range(KV)] for w in W]
    inter = [
        [math.sqrt(sq(w["gate"][j, :]) + sq(w["up"][j, :]) + sq(w["down"][:, j])) for j in range(M)] for w in W
    ]
    hidden = []
    for c in range(D):
        # E is both the embedding and (tied) the LM head: counted once. RMSNorm weights are not counted.
        s = sq(E[:, c])
        for w in W:
            s += sq(w["q"][:, c]) + sq(w["k"][:, c]) + sq(w["v"][:, c]) + sq(w["o"][c, :])
            s += sq(w["gate"][:, c]) + sq(w["up"][:, c]) + sq(w["down"][c, :])
        hidden.append(math.sqrt(s))
    layer = [math.sqrt(sum(sq(w[n]) for n in MATRICES)) for w in W]
    return {"layer": layer, "kv_group": kv, "head": head, "intermediate": inter, "hidden": hidden}


def col_norms(X):
    """||X_j||: the L2 norm over the N calibration tokens of each input feature j, [in]."""
    return np.sqrt(np.sum(X * X, axis=0))


def wanda(W, E, acts):
    head, kv, inter, hidden, layer = [], [], [], np.zeros(D), []
    for l, w in enumerate(W):
        na, nh = col_norms(acts["a"][l]), col_norms(acts["h"][l])
        # |W_ij| * ||X_j||, the Wanda metric of every weight, per matrix.
        S = {n: np.abs(w[n]) * col_norms(matrix_input(acts, l, n))[None, :] for n in MATRICES}
        head.append([float(S["o"][:, head_cols(h)].sum()) for h in range(H)])
        kv.append([float(S["k"][group_rows(g), :].sum() + S["v"][group_rows(g), :].sum()) for g in range(KV)])
        inter.append([float(S["down"][:, j].sum()) for j in range(M)])
        # Hidden channel c as an input feature of q, k, v (input a_l) and gate, up (input h_l).
        hidden += sum(np.abs(w[n]).sum(axis=0) for n in ("q", "k", "v")) * na
        hidden += sum(np.abs(w[n]).sum(axis=0) for n in ("gate", "up")) * nh
        layer.append(float(sum(S[n].sum() for n in MATRICES)))
    # The tied LM head: hidden channel c is input feature c of E (input hf).
    hidden += np.abs(E).sum(axis=0) * col_norms(acts["hf"])
    return {"layer": layer, "kv_group": kv, "head": head, "intermediate": inter, "hidden": hidden.tolist()}


def block_influence(acts):
    """ShortGPT's BI_l = 1 - mean over tokens of cos(x_l, y_l)."""
    bi = []
    for l in range(L):
        x, y = acts["x"][l], acts["y"][l]
        cos = np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        bi.append(float(1.0 - cos.mean()))
    return bi


def activation(acts):
    head, kv, inter, hidden = [], [], [], np.zeros(D)
    for l in range(L):
        ctx = acts["ctx"][l]
        hs = [float(np.linalg.norm(ctx[:, head_cols(h)], axis=1).mean()) for h in range(H)]
        head.append(hs)
        kv.append([float(sum(hs[h] for h in group_heads(g))) for g in range(KV)])
        inter.append(np.abs(acts["act"][l]).mean(axis=0).tolist())
        hidden += np.abs(acts["a"][l]).mean(axis=0) + np.abs(acts["h"][l]).mean(axis=0)
    hidden += np.abs(acts["hf"]).mean(axis=0)
    return {"layer": block_influence(acts), "kv_group": kv, "head": head, "intermediate": inter,
            "hidden": hidden.tolist()}


# --------------------------------------------------------------------------------------------------------
# One-shot selection
# --------------------------------------------------------------------------------------------------------


def top_k(scores, k):
    """Indices of the k largest scores (ties to the lower index), sorted ascending."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:k])


def kept(s):
    out = {"layer": top_k(s["layer"], TARGET["layers"])}
    if "kv_group" not in s:
        return out
    out["kv_group"] = [top_k(s["kv_group"][l], TARGET["kv_heads"]) for l in range(L)]
    out["intermediate"] = [top_k(s["intermediate"][l], TARGET["intermediate"]) for l in range(L)]
    out["hidden"] = top_k(s["hidden"], TARGET["hidden"])
    # Heads: within each kept KV group, the top (heads / kv_heads) of its own query heads by head score.
    per = TARGET["heads"] // TARGET["kv_heads"]
    heads = []
    for l in range(L):
        keep = []
        for g in out["kv_group"][l]:
            cand = list(group_heads(g))
            keep += [cand[i] for i in top_k([s["head"][l][h] for h in cand], per)]
        heads.append(sorted(keep))
    out["head"] = heads
    return out


# --------------------------------------------------------------------------------------------------------
# Independent sanity checks
# --------------------------------------------------------------------------------------------------------


def silu(x):
    return x / (1.0 + np.exp(-x))


def rmsnorm(x, w, eps=1e-5):
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def sanity(W, E, norms, wf, acts, res):
    tol = dict(rtol=1e-4, atol=1e-5)  # f32 activations against f64 recomputation
    for l, w in enumerate(W):
        # The hooked activations are what the definitions say they are (recomputed here in f64).
        assert np.allclose(acts["a"][l], rmsnorm(acts["x"][l], norms[l][0]), **tol)
        mid = acts["x"][l] + acts["ctx"][l] @ w["o"].T
        assert np.allclose(acts["h"][l], rmsnorm(mid, norms[l][1]), **tol)
        act = silu(acts["h"][l] @ w["gate"].T) * (acts["h"][l] @ w["up"].T)
        assert np.allclose(acts["act"][l], act, **tol)
        assert np.allclose(acts["y"][l], mid + acts["act"][l] @ w["down"].T, **tol)
        # Magnitude: the layer score is the norm of all its weights, flattened and concatenated; the
        # structure scores partition those weights.
        flat = np.concatenate([w[n].ravel() for n in MATRICES])
        mg = res["magnitude"]
        assert math.isclose(mg["layer"][l], float(np.linalg.norm(flat)), rel_tol=1e-12)
        assert math.isclose(sum(s * s for s in mg["head"][l]), sq(w["q"]) + sq(w["o"]), rel_tol=1e-12)
        assert math.isclose(sum(s * s for s in mg["kv_group"][l]), sq(w["k"]) + sq(w["v"]), rel_tol=1e-12)
        assert math.isclose(sum(s * s for s in mg["intermediate"][l]),
                            sq(w["gate"]) + sq(w["up"]) + sq(w["down"]), rel_tol=1e-12)
        # Wanda-sp: the layer score as a matrix product, sum |W| @ ||X||, per matrix.
        wl = sum(float(np.sum(np.abs(w[n]) @ col_norms(matrix_input(acts, l, n)))) for n in MATRICES)
        assert math.isclose(res["wanda_sp"]["layer"][l], wl, rel_tol=1e-10)
        # Activation: each KV group's score is the sum of its heads'.
        for g in range(KV):
            assert math.isclose(res["activation"]["kv_group"][l][g],
                                sum(res["activation"]["head"][l][h] for h in group_heads(g)), rel_tol=1e-12)
    assert np.allclose(acts["hf"], rmsnorm(acts["y"][L - 1], wf), **tol)
    # Tied head: logits = hf @ E^T.
    assert np.allclose(acts["logits"], acts["hf"] @ E.T, rtol=1e-4, atol=1e-4)
    # Magnitude hidden: the squares sum to ||E||^2 plus every layer's 7 matrices (each weight is owned by
    # exactly one hidden channel, through its input or output side).
    total = sq(E) + sum(sq(w[n]) for w in W for n in MATRICES)
    assert math.isclose(sum(s * s for s in res["magnitude"]["hidden"]), total, rel_tol=1e-12)
    # BI in [0, 2]; activation's layer score is the same BI as ShortGPT's.
    for bi in res["block_influence"]["layer"]:
        assert 0.0 <= bi <= 2.0, bi
    assert res["activation"]["layer"] == res["block_influence"]["layer"]
    # Every score finite and positive (BI may in principle be ~0, but not here).
    for method, s in res.items():
        for key in ("layer", "kv_group", "head", "intermediate", "hidden"):
            if key in s:
                v = np.asarray(s[key], dtype=np.float64)
                assert np.all(np.isfinite(v)) and np.all(v > 0), (method, key)
    # No ties anywhere a top-k decides (the definitions break them by index, but random floats should not tie).
    for method, s in res.items():
        rows = [s["layer"]] + ([s["hidden"]] + s["kv_group"] + s["head"] + s["intermediate"] if "hidden" in s else [])
        for r in rows:
            assert len(set(r)) == len(r), f"tie in {method}"


# --------------------------------------------------------------------------------------------------------


def main():
    model = build_model()
    save_model(model)

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (SEQS, SEQ_LEN), generator=gen)
    acts = capture(model, ids)
    W, E, norms, wf = weights(model)

    res = {
        "magnitude": magnitude(W, E),
        "wanda_sp": wanda(W, E, acts),
        "activation": activation(acts),
        "block_influence": {"layer": block_influence(acts)},
    }
    sanity(W, E, norms, wf, acts, res)
    for s in res.values():
        s["kept"] = kept(s)

    doc = {"calibration": ids.tolist(), "target": TARGET}
    doc.update(res)
    (OUT / "scores.json").write_text(json.dumps(doc, indent=1) + "\n")

    print(f"wrote {MODEL_DIR}/config.json, {MODEL_DIR}/model.safetensors, {OUT}/scores.json")
    print(f"calibration[0] = {doc['calibration'][0]}")
    print(f"hidden_states[-1] is after the final norm: {acts['last_hidden_state_is_normed']}")
    for name, s in res.items():
        line = f"{name:16s} layer {[round(v, 5) for v in s['layer']]} kept layers {s['kept']['layer']}"
        if "head" in s:
            line += (f"\n{'':16s} head[0] {[round(v, 5) for v in s['head'][0]]} kv_group[0] "
                     f"{[round(v, 5) for v in s['kv_group'][0]]} kept heads {s['kept']['head']}"
                     f"\n{'':16s} hidden[:4] {[round(v, 5) for v in s['hidden'][:4]]} kept hidden "
                     f"{s['kept']['hidden']}")
        print(line)


if __name__ == "__main__":
    main()
