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
      pruning to the target {layers 3, hidden 24, heads 2, kv_heads 1, intermediate 32} keeps;
  untied/model/config.json, untied/model/model.safetensors, untied/scores.json
      the same for an UNTIED variant: same shapes and init rule, a different seed (1 instead of 0),
      tie_word_embeddings false and a separate lm_head.weight [vocab, d] (initialized like every other
      matrix), scored on the same calibration ids (stored again in its scores.json, same layout).

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

The LM head: E is the embedding [vocab, d], W_lm the LM head lm_head.weight [vocab, d] (W_lm = E when
tied). Magnitude's hidden channel c owns column c of E and, untied, also column c of W_lm (tied, the shared
matrix is counted once); Wanda-sp's hidden channel c owns input feature c of the LM head, W_lm[:, c] with
input hf (the embedding is not counted: it is a lookup, not a matrix applied to an activation). Nothing
else reads E or W_lm.

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


def out_dir(tied):
    """tests/fixtures/oneshot/ for the tied model, tests/fixtures/oneshot/untied/ for the untied one."""
    return OUT if tied else OUT / "untied"


def model_dir(tied):
    return out_dir(tied) / "model"

L, D, M, V = 4, 32, 48, 64  # layers, hidden size, intermediate size, vocabulary
H, KV, HD = 4, 2, 8  # query heads, KV groups (heads), head_dim
PER_GROUP = H // KV  # query heads per KV group
SEQS, SEQ_LEN = 3, 16  # calibration: 3 sequences of 16 tokens, N = 48
TARGET = {"layers": 3, "hidden": 24, "heads": 2, "kv_heads": 1, "intermediate": 32}
MATRICES = ["q", "k", "v", "o", "gate", "up", "down"]


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------


def build_model(tied):
    """A seeded random Llama with weights large enough (std 0.2) that scores are well separated, and
    RMSNorm weights 1 + 0.3 * normal so the norms' scales show in every activation-based score. Seed 0 for
    the tied model, 1 for the untied one."""
    torch.manual_seed(0 if tied else 1)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=M,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=KV,
        head_dim=HD,
        tie_word_embeddings=tied,
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
    # embeddings lm_head.weight is embed_tokens.weight and named_parameters lists it once; untied, it is a
    # matrix of its own (listed last) and drawn like the others.
    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            names.append(name)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    shared = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert shared == tied, f"tied={tied} but lm_head shares embed_tokens' storage: {shared}"
    assert ("lm_head.weight" in names) == (not tied), names
    return model


def save_model(model, tied):
    mdir = model_dir(tied)
    mdir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(mdir, safe_serialization=True)
    # The file must hold model.embed_tokens.weight; tied, no separate lm_head.weight; untied, one.
    with safe_open(mdir / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
        assert "model.embed_tokens.weight" in keys, sorted(keys)
        if tied:
            assert "lm_head.weight" not in keys, "tied embeddings saved a separate lm_head.weight"
        else:
            assert "lm_head.weight" in keys, "untied model saved no lm_head.weight"
            assert not torch.equal(f.get_tensor("lm_head.weight"), f.get_tensor("model.embed_tokens.weight"))
        for k in keys:
            assert f.get_tensor(k).dtype == torch.float32, k
        # The saved weights are the in-memory ones, bit for bit.
        sd = model.state_dict()
        for k in keys:
            assert torch.equal(f.get_tensor(k), sd[k]), k
    cfg = json.loads((mdir / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied and cfg["num_key_value_heads"] == KV and cfg["head_dim"] == HD


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


def weights(model, tied):
    """float64 copies of every matrix: W[l][name] ([out, in]), E [vocab, d] and the LM head [vocab, d]
    (the same array as E when tied)."""
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
    lm_head = E if tied else f64(model.lm_head.weight)
    norms = [(f64(ly.input_layernorm.weight), f64(ly.post_attention_layernorm.weight)) for ly in model.model.layers]
    return W, E, lm_head, norms, f64(model.model.norm.weight)


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


def magnitude(W, E, lm_head, tied):
    head = [[math.sqrt(sq(w["q"][head_cols(h), :]) + sq(w["o"][:, head_cols(h)])) for h in range(H)] for w in W]
    kv = [[math.sqrt(sq(w["k"][group_rows(g), :]) + sq(w["v"][group_rows(g), :])) for g in range(KV)] for w in W]
    inter = [
        [math.sqrt(sq(w["gate"][j, :]) + sq(w["up"][j, :]) + sq(w["down"][:, j])) for j in range(M)] for w in W
    ]
    hidden = []
    for c in range(D):
        # Tied, E is both the embedding and the LM head: counted once. Untied, the embedding E and the LM
        # head are both counted. RMSNorm weights are not counted.
        s = sq(E[:, c])
        if not tied:
            s += sq(lm_head[:, c])
        for w in W:
            s += sq(w["q"][:, c]) + sq(w["k"][:, c]) + sq(w["v"][:, c]) + sq(w["o"][c, :])
            s += sq(w["gate"][:, c]) + sq(w["up"][:, c]) + sq(w["down"][c, :])
        hidden.append(math.sqrt(s))
    layer = [math.sqrt(sum(sq(w[n]) for n in MATRICES)) for w in W]
    return {"layer": layer, "kv_group": kv, "head": head, "intermediate": inter, "hidden": hidden}


def col_norms(X):
    """||X_j||: the L2 norm over the N calibration tokens of each input feature j, [in]."""
    return np.sqrt(np.sum(X * X, axis=0))


def wanda(W, lm_head, acts):
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
    # The LM head (E when tied): hidden channel c is its input feature c (input hf). The embedding is a
    # lookup, not a matrix applied to an activation: not counted.
    hidden += np.abs(lm_head).sum(axis=0) * col_norms(acts["hf"])
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


def sanity(W, E, lm_head, norms, wf, acts, res, tied):
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
    # logits = hf @ E^T when tied, hf @ W_lm^T untied (and then not hf @ E^T).
    assert (lm_head is E) == tied
    assert np.allclose(acts["logits"], acts["hf"] @ lm_head.T, rtol=1e-4, atol=1e-4)
    if not tied:
        assert not np.allclose(acts["logits"], acts["hf"] @ E.T, rtol=1e-4, atol=1e-4)
    # Magnitude hidden: the squares sum to ||E||^2 (plus ||W_lm||^2 untied) plus every layer's 7 matrices (each
    # weight is owned by exactly one hidden channel, through its input or output side).
    total = sq(E) + (0.0 if tied else sq(lm_head)) + sum(sq(w[n]) for w in W for n in MATRICES)
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


def make(tied, ids):
    """Build, save and score one model (tied or untied) on the calibration ids."""
    model = build_model(tied)
    save_model(model, tied)

    acts = capture(model, ids)
    W, E, lm_head, norms, wf = weights(model, tied)

    res = {
        "magnitude": magnitude(W, E, lm_head, tied),
        "wanda_sp": wanda(W, lm_head, acts),
        "activation": activation(acts),
        "block_influence": {"layer": block_influence(acts)},
    }
    sanity(W, E, lm_head, norms, wf, acts, res, tied)
    for s in res.values():
        s["kept"] = kept(s)

    doc = {"calibration": ids.tolist(), "target": TARGET}
    doc.update(res)
    odir, mdir = out_dir(tied), model_dir(tied)
    (odir / "scores.json").write_text(json.dumps(doc, indent=1) + "\n")

    print(f"{'tied' if tied else 'untied'}: wrote {mdir}/config.json, {mdir}/model.safetensors, {odir}/scores.json")
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


def main():
    # One calibration set for both models (its own generator, independent of the models' seeds).
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (SEQS, SEQ_LEN), generator=gen)
    make(True, ids)
    make(False, ids)


if __name__ == "__main__":
    main()
