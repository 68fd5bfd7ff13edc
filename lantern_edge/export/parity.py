"""Verify exported graphs against the PyTorch reference, through the runtime's own engine.

The graphs are driven exactly as `lantern_edge.Runtime` drives them (runtime/engine.py), so a
passing check means the artifacts and the runtime's KV bookkeeping agree with the reference:
prefill, one-token decode past the window, tokens run to steps_reasoning (carried KV), a THINK
token, the MC-dropout step with shared masks, the uncertainty head, and model.onnx alone.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from ..model.incremental import IncrementalDecoder
from ..model.modeling import LanternModel
from ..model.uncertainty import UncertaintyHead
from ..runtime.artifacts import Artifacts
from ..runtime.engine import Engine

LOGIT_TOLERANCE = 1e-4
SIGNAL_TOLERANCE = 1e-4     # relative


def parity_sequence(model: LanternModel, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Token ids 3x the window long (capped by max_position) with BOS first and a THINK token,
    and a per-token depth: every fifth token runs steps_reasoning, one runs a single iteration."""
    cfg = model.config
    length = min(3 * cfg.window_size + 4, cfg.max_position)
    rng = np.random.default_rng(seed)
    specials = {cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.think_token_id} - {None}
    ordinary = np.array([i for i in range(cfg.vocab_size) if i not in specials])
    ids = rng.choice(ordinary, size=length)
    if cfg.bos_token_id is not None:
        ids[0] = cfg.bos_token_id
    if cfg.think_token_id is not None and length > cfg.window_size + 3:
        ids[cfg.window_size + 2] = cfg.think_token_id
    depth = [cfg.steps_reasoning if t % 5 == 0 else cfg.steps_base for t in range(length)]
    depth[-2] = 1
    return ids.astype(np.int64), depth


def check_parity(model: LanternModel, artifacts: Artifacts, precision: str = "fp32") -> dict:
    """Max abs logit differences (and relative signal differences) per check."""
    cfg = model.config
    ids, depth = parity_sequence(model)
    prefill = max(1, cfg.window_size // 2)
    engine = Engine(artifacts, precision, providers=["CPUExecutionProvider"])
    reference = IncrementalDecoder(model)
    errors: dict[str, float] = {}

    # prefill at steps_base, then one token at a time at its own depth
    step = engine.feed(ids[:prefill], cfg.steps_base)
    with torch.no_grad():
        ref = reference.forward(torch.from_numpy(ids[:prefill]), cfg.steps_base).logits[0]
    worst = float(np.abs(step.logits - ref.numpy()).max())
    for t in range(prefill, len(ids)):
        step = engine.feed(ids[t:t + 1], depth[t])
        ref = reference.forward(torch.from_numpy(ids[t:t + 1]), depth[t]).logits[0]
        worst = max(worst, float(np.abs(step.logits - ref.numpy()).max()))
    errors["decode_logits"] = worst

    # MC dropout: the last token's final iteration of the last block, shared masks
    samples = 3
    rng = np.random.default_rng(1)
    stored = engine.kv.keys.shape[3]
    keep = lambda *shape: ((rng.random(shape) >= cfg.dropout) /  # noqa: E731
                           (1.0 - cfg.dropout)).astype(np.float32)
    masks = {"mask_attn_probs": keep(samples, cfg.num_heads, 1, stored + 1),
             "mask_attn_out": keep(samples, 1, cfg.hidden_size),
             "mask_mlp_out": keep(samples, 1, cfg.hidden_size)}
    mc = engine.mc_logits(step, masks)
    b, i = cfg.num_blocks - 1, step.iterations[-1] - 1
    torch_masks = {("attn_probs", b, i): torch.from_numpy(masks["mask_attn_probs"]),
                   ("attn_out", b, i): torch.from_numpy(masks["mask_attn_out"]),
                   ("mlp_out", b, i): torch.from_numpy(masks["mask_mlp_out"])}
    with torch.no_grad():
        out = reference.block_step(b, i, torch.from_numpy(step.mc_input),
                                   torch.from_numpy(ids[-1:]), step.position, torch_masks)[0]
        ref_mc = model.lm_head(out)[0][:, 0]
    errors["mc_step_logits"] = float(np.abs(mc - ref_mc.numpy()).max())

    # uncertainty head on the MC logits (varied rows) vs the torch module
    weights = np.array([1.0, 0.5, 0.5], np.float32)
    signals = engine.signals(mc, weights)
    head = UncertaintyHead(model.token_embedding.weight, artifacts.controller.top_k_dispersion)
    with torch.no_grad():
        expected = head(torch.from_numpy(mc), torch.from_numpy(weights))
    errors["uncertainty_rel"] = max(
        float(np.abs(signals[name] - want.numpy()).max() / max(1e-6, float(want.abs().max())))
        for name, want in zip(("entropy", "p_max", "dispersion", "score"), expected))

    # model.onnx alone, plain onnxruntime, batch 2
    session = ort.InferenceSession(str(artifacts.root / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    batch = np.stack([ids, np.roll(ids, 1)])
    if cfg.bos_token_id is not None:
        batch[:, 0] = cfg.bos_token_id
    with torch.no_grad():
        ref_full = model(torch.from_numpy(batch), cfg.steps_base).logits.numpy()
    full = session.run(None, {"input_ids": batch})[0]
    errors["model_onnx_logits"] = float(np.abs(full - ref_full).max())
    return errors


def parity_failures(errors: dict[str, float]) -> list[str]:
    limits = {"uncertainty_rel": SIGNAL_TOLERANCE}
    return [f"{name}={value:.2e} > {limits.get(name, LOGIT_TOLERANCE):.0e}"
            for name, value in errors.items()
            if not value <= limits.get(name, LOGIT_TOLERANCE)]
