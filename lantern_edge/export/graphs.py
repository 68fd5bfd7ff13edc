"""The ONNX graphs of an artifacts directory (docs/ARTIFACTS.md), built from a LanternModel.

Each graph restates the reference computation (lantern_edge.model.modeling) with its weights
rearranged for few nodes per call (at decode each node costs ~0.5 us whatever its size); tests
hold every graph to the reference.
- Block step: one MatMul produces q, k, v (1/sqrt(head_dim) folded into the q rows); RoPE is
  q,k * cos + (q,k @ R) * sin with R RoPE's (D, D) signed permutation and cos/sin rows gathered
  by `positions` from in-graph tables (measured: cheaper per call, and 2C^2 fewer weights per
  block, than folding R into extra projection rows); gate and up are one MatMul. Attention
  runs over the stored context and the new tokens as two score blocks, so the shared
  [H, K, D] context is read in place, never copied per call or per sample; the caller supplies
  the additive mask `attn_bias`.
- Weights are named initializers (`block0.qkv_weight`, `token_embedding`, ...): the same tensor
  has the same name and bytes in every graph, and the writer stores it once (onnx_export.py).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch

from ..model.modeling import LanternModel, rope_frequencies
from .builder import INT64_MAX, GraphBuilder

F32 = np.float32


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


def block_weights(model: LanternModel, b: int) -> dict[str, np.ndarray]:
    """Fused, pre-transposed weights of block b (MatMul reads [in, out] directly)."""
    cfg = model.config
    block = model.blocks[b]
    attn = block.attention
    d = cfg.head_dim
    scale = 1.0 / math.sqrt(d)
    wq, bq = attn.q_proj.weight * scale, attn.q_proj.bias * scale
    # rows (outputs) grouped per head: [q, k, v], each C = H*D wide
    weight = torch.cat([wq, attn.k_proj.weight, attn.v_proj.weight])
    bias = torch.cat([bq, attn.k_proj.bias, attn.v_proj.bias])
    w = {
        "attn_norm.weight": block.attn_norm.weight, "attn_norm.bias": block.attn_norm.bias,
        "qkv_weight": weight.T, "qkv_bias": bias,
        "out_weight": attn.out_proj.weight.T, "out_bias": attn.out_proj.bias,
        "mlp_norm.weight": block.mlp_norm.weight, "mlp_norm.bias": block.mlp_norm.bias,
        "gate_up_weight": torch.cat([block.gate_proj.weight, block.up_proj.weight]).T,
        "down_weight": block.down_proj.weight.T,
    }
    if block.halting is not None:
        w["halt_weight"] = block.halting.weight[0]             # (C,): MatMul drops the axis
        w["halt_bias"] = block.halting.bias
    return {k: _np(v) for k, v in w.items()}


def rope_matrix(model: LanternModel) -> np.ndarray:
    """(D, D) signed permutation R with x @ R = rot(x) = x[perm] * sign (modeling.rope_rotation)."""
    d = model.config.head_dim
    matrix = np.zeros((d, d), np.float32)
    matrix[model.rope_perm.numpy(), np.arange(d)] = model.rope_sign.numpy()
    return matrix


def _block_body(g: GraphBuilder, model: LanternModel, b: int, x: str, cos: str, sin: str,
                bias: str, past: tuple[str, str] | None = None, masks: dict | None = None,
                halting: bool = False, names: dict | None = None) -> dict[str, str]:
    """Emit one iteration of block b on hidden x (S, T, C); returns the value names produced.

    past: (past_key, past_value) [H, K, D] stored context (the step graph) or None (the full
    forward: attention over the T tokens only). bias broadcasts to (S, H, T, K + T).
    masks: the three MC-dropout keep masks. names: graph-output names for hidden/key/value/halt.
    """
    cfg = model.config
    c, h, d, inner = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
    names = names or {}
    w = {k: g.weight(f"block{b}.{k}", v) for k, v in block_weights(model, b).items()
         if halting or not k.startswith("halt_")}

    # 1. q, k (RoPE applied), v: one projection; RoPE in (S, T, heads, D), one Transpose after
    hn = g.layer_norm(x, w["attn_norm.weight"], w["attn_norm.bias"], cfg.norm_eps)
    qkv = g.op("Add", g.op("MatMul", hn, w["qkv_weight"]), w["qkv_bias"])     # (S, T, 3C)
    qkv = g.op("Reshape", qkv, g.const([0, 0, 3 * h, d]))                      # (S, T, 3H, D)
    qk, v = g.split(qkv, [2 * h, h], axis=2)
    qk_rot = g.op("MatMul", qk, g.weight("rope_rotation", rope_matrix(model)))
    qk = g.op("Add", g.op("Mul", qk, cos), g.op("Mul", qk_rot, sin))          # cos: (T, 1, D)
    qk = g.op("Transpose", qk, perm=[0, 2, 1, 3])                              # (S, 2H, T, D)
    q, k = g.split(qk, [h, h], axis=1,
                   names=[g.fresh("q"), names.get("key", g.fresh("k"))])
    v = g.op("Transpose", v, perm=[0, 2, 1, 3],
             outputs=[names.get("value", g.fresh("v"))])[0]                     # (S, H, T, D)

    # 2. attention (scores already scaled: 1/sqrt(D) lives in the q rows)
    new_scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))     # (S, H, T, T)
    if past is not None:
        past_key, past_value = past
        stored = cfg.window_size + cfg.max_global_tokens
        old_scores = g.op("MatMul", q, g.op("Transpose", past_key, perm=[0, 2, 1]))
        scores = g.op("Concat", old_scores, new_scores, axis=-1)              # (S, H, T, K + T)
    else:
        scores = new_scores
    probs = g.op("Softmax", g.op("Add", scores, bias), axis=-1)
    if masks:
        probs = g.op("Mul", probs, masks["attn_probs"])
    if past is not None:
        old = g.op("Slice", probs, g.const([0]), g.const([stored]), g.const([-1]))
        new = g.op("Slice", probs, g.const([stored]), g.const([INT64_MAX]), g.const([-1]))
        out = g.op("Add", g.op("MatMul", old, past_value), g.op("MatMul", new, v))
    else:
        out = g.op("MatMul", probs, v)                                         # (S, H, T, D)
    out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), g.const([0, 0, c]))
    out = g.op("Add", g.op("MatMul", out, w["out_weight"]), w["out_bias"])
    if masks:
        out = g.op("Mul", out, masks["attn_out"])
    x = g.op("Add", x, out)

    # 3. SwiGLU MLP
    hn = g.layer_norm(x, w["mlp_norm.weight"], w["mlp_norm.bias"], cfg.norm_eps)
    gate, up = g.split(g.op("MatMul", hn, w["gate_up_weight"]), [inner, inner], axis=-1)
    act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
    mlp = g.op("MatMul", act, w["down_weight"])
    if masks:
        mlp = g.op("Mul", mlp, masks["mlp_out"])
    x = g.op("Add", x, mlp, outputs=[names["hidden"]] if "hidden" in names else 1)
    x = x[0] if isinstance(x, list) else x
    result = {"hidden": x, "key": k, "value": v}
    if halting:
        logit = g.op("Add", g.op("MatMul", x, w["halt_weight"]), w["halt_bias"])
        result["halt"] = g.op("Sigmoid", logit,
                              outputs=[names.get("halt", g.fresh("halt"))])[0]
    return result


def _rope_rows(g: GraphBuilder, model: LanternModel, positions: str) -> tuple[str, str]:
    # cos/sin of position * frequency computed in the graph, as modeling.rope_tables does:
    # stored (max_position, D) tables would cost 1.5 MB at the default shape, in every precision.
    frequencies = _np(rope_frequencies(model.config))[None, None]                # (1, 1, D)
    where = g.op("Unsqueeze", g.op("Cast", positions, to=onnx.TensorProto.FLOAT), g.const([1, 2]))
    angles = g.op("Mul", where, g.weight("rope_frequencies", frequencies))      # (T, 1, D)
    return g.op("Cos", angles), g.op("Sin", angles)                              # (T, 1, D)


def block_step_graph(model: LanternModel, b: int, opset: int, mc: bool = False) -> onnx.ModelProto:
    """block{b}.onnx, or (mc=True, last block) mc_step.onnx; I/O as in docs/ARTIFACTS.md."""
    cfg = model.config
    c, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    stored = cfg.window_size + cfg.max_global_tokens
    g = GraphBuilder("mc_step" if mc else f"block{b}", opset)
    hidden = g.input("hidden", "float32", [1 if mc else "samples", "tokens", c])
    positions = g.input("positions", "int64", ["tokens"])
    past = (g.input("past_key", "float32", [h, stored, d]),
            g.input("past_value", "float32", [h, stored, d]))
    bias = g.input("attn_bias", "float32", ["tokens", "stored_plus_tokens"])
    masks = None
    if mc:
        masks = {"attn_probs": g.input("mask_attn_probs", "float32",
                                       ["samples", h, "tokens", "stored_plus_tokens"]),
                 "attn_out": g.input("mask_attn_out", "float32", ["samples", "tokens", c]),
                 "mlp_out": g.input("mask_mlp_out", "float32", ["samples", "tokens", c])}
    halting = cfg.use_halting and not mc
    cos, sin = _rope_rows(g, model, positions)
    names = {"hidden": "hidden_out"} if mc else \
        {"hidden": "hidden_out", "key": "key", "value": "value", "halt": "halt"}
    _block_body(g, model, b, hidden, cos, sin, bias, past, masks, halting, names)
    g.output("hidden_out", "float32", ["samples", "tokens", c])
    if not mc:
        g.output("key", "float32", ["samples", h, "tokens", d])
        g.output("value", "float32", ["samples", h, "tokens", d])
        if halting:
            g.output("halt", "float32", ["samples", "tokens"])
    doc = ("MC-dropout step: the last block's iteration with scaled keep masks as inputs"
           if mc else f"one recursion iteration of block {b} over the stored KV context")
    return g.model(doc)


def embed_graph(model: LanternModel, opset: int) -> onnx.ModelProto:
    cfg = model.config
    g = GraphBuilder("embed", opset)
    ids = g.input("input_ids", "int64", ["tokens"])
    positions = g.input("positions", "int64", ["tokens"])
    x = _embed(g, model, ids, positions)
    g.op("Unsqueeze", x, g.const([0]), outputs=["hidden"])
    g.output("hidden", "float32", [1, "tokens", cfg.hidden_size])
    return g.model("token + position embedding")


def _embed(g: GraphBuilder, model: LanternModel, ids: str, positions: str) -> str:
    tokens = g.op("Gather", g.weight("token_embedding", _np(model.token_embedding.weight)), ids)
    where = g.op("Gather", g.weight("position_embedding", _np(model.position_embedding.weight)),
                 positions)
    return g.op("Add", tokens, where)


def _lm_head(g: GraphBuilder, model: LanternModel, x: str, output: str) -> None:
    cfg = model.config
    hn = g.layer_norm(x, g.weight("final_norm.weight", _np(model.final_norm.weight)),
                      g.weight("final_norm.bias", _np(model.final_norm.bias)), cfg.final_norm_eps)
    # The tied embedding is stored once, [V, C], as in embed.onnx; ORT folds this Transpose
    # into a [C, V] copy at session creation.
    table = g.op("Transpose", g.weight("token_embedding", _np(model.token_embedding.weight)),
                 perm=[1, 0])
    g.op("MatMul", hn, table, outputs=[output])


def lm_head_graph(model: LanternModel, opset: int) -> onnx.ModelProto:
    cfg = model.config
    g = GraphBuilder("lm_head", opset)
    hidden = g.input("hidden", "float32", ["samples", "tokens", cfg.hidden_size])
    _lm_head(g, model, hidden, "logits")
    g.output("logits", "float32", ["samples", "tokens", cfg.vocab_size])
    return g.model("final LayerNorm + tied projection")


def full_forward_graph(model: LanternModel, opset: int) -> onnx.ModelProto:
    """model.onnx: input_ids (B, T) -> logits (B, T, V) at steps_base from position 0."""
    cfg = model.config
    g = GraphBuilder("lantern", opset)
    ids = g.input("input_ids", "int64", ["batch", "tokens"])
    length = g.op("Squeeze", g.op("Shape", ids, start=1, end=2), g.const([0]))
    positions = g.op("Range", g.const(0), length, g.const(1))                   # (T,)
    x = _embed(g, model, ids, positions)                                         # (B, T, C)
    cos, sin = _rope_rows(g, model, positions)
    # visibility (modeling.visibility): j <= i and (i - j < W or j global), per batch row
    glob = g.op("Equal", positions, g.const(0))
    if cfg.think_token_id is not None:
        glob = g.op("Or", glob, g.op("Equal", ids, g.const(cfg.think_token_id)))
    glob = g.op("Unsqueeze", glob, g.const([-2, -3]))                           # (B|1, 1, 1, T)
    delta = g.op("Sub", g.op("Unsqueeze", positions, g.const([1])),
                 g.op("Unsqueeze", positions, g.const([0])))                     # (T, T)
    near = g.op("Less", delta, g.const(cfg.window_size))
    visible = g.op("And", g.op("GreaterOrEqual", delta, g.const(0)), g.op("Or", near, glob))
    bias = g.op("Where", visible, g.const(0.0, F32), g.const(-np.inf, F32))     # (B, 1, T, T)
    embedded = x
    for b, i in cfg.schedule(cfg.steps_base):
        if cfg.injects(b, i):
            x = _inject(g, model, x, embedded)
        x = _block_body(g, model, b, x, cos, sin, bias)["hidden"]
    _lm_head(g, model, x, "logits")
    g.output("logits", "float32", ["batch", "tokens", cfg.vocab_size])
    return g.model(f"LANTERN forward at steps_base={cfg.steps_base} ({cfg.recursion_order} "
                   f"order): input_ids -> logits")


def injection_weights(model: LanternModel) -> dict[str, np.ndarray]:
    """W [h ; e] + bias as h @ W_h + e @ W_e + bias: no Concat, and e broadcasts over samples."""
    c = model.config.hidden_size
    weight = model.injection.weight                                            # (C, 2C)
    return {"injection.hidden_weight": _np(weight[:, :c].T),
            "injection.embed_weight": _np(weight[:, c:].T),
            "injection.bias": _np(model.injection.bias)}


def _inject(g: GraphBuilder, model: LanternModel, x: str, embedded: str,
            output: str | None = None) -> str:
    w = {k: g.weight(k, v) for k, v in injection_weights(model).items()}
    mixed = g.op("Add", g.op("MatMul", x, w["injection.hidden_weight"]),
                 g.op("MatMul", embedded, w["injection.embed_weight"]))
    out = g.op("Add", mixed, w["injection.bias"], outputs=[output] if output else 1)
    return out[0] if isinstance(out, list) else out


def inject_graph(model: LanternModel, opset: int) -> onnx.ModelProto:
    """inject.onnx (models with input injection): hidden [S, T, C] and the embedding output
    embedded [1, T, C] -> hidden_out = W [hidden ; embedded]."""
    c = model.config.hidden_size
    g = GraphBuilder("inject", opset)
    hidden = g.input("hidden", "float32", ["samples", "tokens", c])
    embedded = g.input("embedded", "float32", [1, "tokens", c])
    _inject(g, model, hidden, embedded, "hidden_out")
    g.output("hidden_out", "float32", ["samples", "tokens", c])
    return g.model("input injection: hidden_out = W [hidden ; embedded], W a Linear 2C -> C")


def uncertainty_graph(embedding: torch.Tensor, top_k: int, opset: int,
                      probe: LanternModel | None = None) -> onnx.ModelProto:
    """uncertainty.onnx: logits [N, V], weights [3] = (a, b, c) -> entropy, p_max, dispersion,
    score [N] (lantern_edge.model.uncertainty; exact formulas in docs/ARTIFACTS.md).
    probe: a model with a depth probe adds the input hidden [N, C] (the cheap pass's final
    hidden state, before the final norm) and the output p_benefit [N] (model/probe.py).

    Safe for huge, all-equal and -inf logits: logits are clipped to +-1e38 (so +-inf become
    finite and every shifted logit z = l - max stays >= -2e38, never -inf), and e^z * z is then
    0 * finite for the underflowed entries instead of 0 * -inf = NaN.
    """
    vocab, hidden = embedding.shape
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k_dispersion must be in [1, vocab_size={vocab}], got {top_k}")
    probe_k = probe.config.depth_probe_top_k if probe is not None else 0
    g = GraphBuilder("uncertainty", opset)
    logits = g.input("logits", "float32", ["rows", vocab])
    weights = g.input("weights", "float32", [3])
    big = 1e38
    logits = g.op("Clip", logits, g.const(-big, F32), g.const(big, F32))
    top = g.reduce("ReduceMax", logits, [-1], keepdims=True)                      # (N, 1)
    z = g.op("Sub", logits, top)                                                   # <= 0
    e = g.op("Exp", z)
    total = g.reduce("ReduceSum", e, [-1], keepdims=False)                        # (N,) >= 1
    ez = g.reduce("ReduceSum", g.op("Mul", e, z), [-1], keepdims=False)
    # entropy = -sum p log p with p = e / total, log p = z - log(total)
    entropy = g.op("Sub", g.op("Log", total), g.op("Div", ez, total), outputs=["entropy"])[0]
    p_max = g.op("Reciprocal", total, outputs=["p_max"])[0]
    # one TopK serves the dispersion signal and the probe (sorted: the first k are the top k)
    top_values, top_ids = g.op("TopK", logits, g.const([max(top_k, probe_k)]), outputs=2,
                               axis=-1)
    table = g.weight("token_embedding", _np(embedding))
    dispersion = _dispersion(g, table, top_values, top_ids, top_k, top_k < probe_k,
                             "dispersion")
    a, b, c = g.split(weights, [1, 1, 1], axis=0)
    score = g.op("Add", g.op("Mul", a, entropy), g.op("Mul", b, dispersion))
    g.op("Sub", score, g.op("Mul", c, p_max), outputs=["score"])
    for name in ("entropy", "p_max", "dispersion", "score"):
        g.output(name, "float32", ["rows"])
    if probe is not None:
        _depth_probe(g, probe, table, total, top, top_values, top_ids, top_k)
    return g.model(f"entropy (nats), p_max, top-{top_k} embedding dispersion, "
                   f"score = a*entropy + b*dispersion - c*p_max"
                   + (", p_benefit of the depth probe" if probe is not None else ""))


def _first(g: GraphBuilder, x: str, k: int) -> str:
    return g.op("Slice", x, g.const([0]), g.const([k]), g.const([-1]))


def _dispersion(g: GraphBuilder, table: str, top_values: str, top_ids: str, k: int,
                slice_: bool, output: str | None = None) -> str:
    """sum_i w_i ||e_i - mu||^2 over the top k (the first k of top_values/ids when slice_),
    w the probabilities renormalised over those k."""
    if slice_:
        top_values, top_ids = _first(g, top_values, k), _first(g, top_ids, k)
    w = g.op("Softmax", top_values, axis=-1)                                      # (N, k)
    emb = g.op("Gather", table, top_ids)                                          # (N, k, C)
    mean = g.op("MatMul", g.op("Unsqueeze", w, g.const([1])), emb)              # (N, 1, C)
    spread = g.reduce("ReduceSumSquare", g.op("Sub", emb, mean), [-1], keepdims=False)
    return g.reduce("ReduceSum", g.op("Mul", w, spread), [-1], keepdims=False, output=output)


def _depth_probe(g: GraphBuilder, model: LanternModel, table: str, total: str, top: str,
                 top_values: str, top_ids: str, top_k: int) -> None:
    """p_benefit [N] from hidden [N, C]: the MLP of model/probe.py on the normed hidden, the
    top-k probabilities, entropy, top-1/top-2 margin and top-k dispersion."""
    cfg = model.config
    k = cfg.depth_probe_top_k
    hidden = g.input("hidden", "float32", ["rows", cfg.hidden_size])
    normed = g.layer_norm(hidden, g.weight("final_norm.weight", _np(model.final_norm.weight)),
                          g.weight("final_norm.bias", _np(model.final_norm.bias)),
                          cfg.final_norm_eps)
    column = lambda x: g.op("Unsqueeze", x, g.const([-1]))                   # noqa: E731
    values = _first(g, top_values, k) if k < top_k else top_values
    probs = g.op("Div", g.op("Exp", g.op("Sub", values, top)), column(total))     # (N, k)
    p1, p2 = (g.op("Slice", probs, g.const([j]), g.const([j + 1]), g.const([-1]))
              for j in (0, 1))
    dispersion = "dispersion" if k == top_k else \
        _dispersion(g, table, top_values, top_ids, k, k < max(k, top_k))
    features = g.op("Concat", normed, probs, column("entropy"), g.op("Sub", p1, p2),
                    column(dispersion), axis=-1)
    probe = model.depth_probe
    w1 = g.weight("depth_probe.hidden_weight", _np(probe.hidden_layer.weight.T))
    b1 = g.weight("depth_probe.hidden_bias", _np(probe.hidden_layer.bias))
    w2 = g.weight("depth_probe.output_weight", _np(probe.output_layer.weight[0]))
    b2 = g.weight("depth_probe.output_bias", _np(probe.output_layer.bias))
    inner = g.op("Relu", g.op("Add", g.op("MatMul", features, w1), b1))
    g.op("Sigmoid", g.op("Add", g.op("MatMul", inner, w2), b2), outputs=["p_benefit"])
    g.output("p_benefit", "float32", ["rows"])


def build_graphs(model: LanternModel, top_k: int,
                 opset: int) -> list[tuple[str, str, onnx.ModelProto]]:
    """(role, file name, graph) for every graph of docs/ARTIFACTS.md, in manifest order."""
    cfg = model.config
    out = [("model", "model.onnx", full_forward_graph(model, opset)),
           ("embed", "embed.onnx", embed_graph(model, opset))]
    out += [("block", f"block{b}.onnx", block_step_graph(model, b, opset))
            for b in range(cfg.num_blocks)]
    out += [("mc_step", "mc_step.onnx",
             block_step_graph(model, cfg.num_blocks - 1, opset, mc=True)),
            ("lm_head", "lm_head.onnx", lm_head_graph(model, opset)),
            ("uncertainty", "uncertainty.onnx",
             uncertainty_graph(model.token_embedding.weight, min(top_k, cfg.vocab_size), opset,
                               model if cfg.has_depth_probe else None))]
    if cfg.input_injection:
        out.append(("inject", "inject.onnx", inject_graph(model, opset)))
    return out
