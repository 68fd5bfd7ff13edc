"""Verify exported graphs against the PyTorch reference, through the runtime's own engine.

The graphs are driven by `lantern_edge.runtime.decode.Sequence`, exactly as `Runtime` drives them
(its KV bookkeeping, attention bias, carried-KV writes and, for one-token decode, its IO-bound
path), so a passing check means the artifacts and the runtime agree with the reference.
(tests/test_export.py drives the graphs with an independent contract driver as well.)
`check_parity` runs the checks recorded in lantern.json "parity": prefill, one-token decode 3x
past the window, a chunk mid-sequence, tokens at steps_reasoning and at depth 1 (carried KV),
tokens continued from steps_base to steps_reasoning (`Sequence.deepen`), a THINK token, the
MC-dropout step with shared masks, the uncertainty head (and the depth probe's p_benefit), and
model.onnx alone; all in the model's recursion order, input injection included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..model.config import ModelConfig
from ..model.incremental import IncrementalDecoder
from ..model.modeling import LanternModel
from ..model.uncertainty import UncertaintyHead
from ..runtime.artifacts import open_artifacts
from ..runtime.decode import Sequence
from ..runtime.engine import Engine, session_options
# the tolerances live with the runtime, which refuses artifacts recorded out of them
from ..runtime.manifest_check import (LOGIT_TOLERANCE, PARITY_KEYS,  # noqa: F401
                                      SIGNAL_TOLERANCE, parity_failures)



def keep_masks(config: ModelConfig, samples: int, tokens: int, rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
    """Scaled keep masks (0 or 1/(1-p)) for mc_step.onnx, from a seeded generator."""
    stored = config.window_size + config.max_global_tokens
    p = config.dropout

    def keep(*shape):
        return ((rng.random(shape) >= p) / (1.0 - p)).astype(np.float32)
    return {"mask_attn_probs": keep(samples, config.num_heads, tokens, stored + tokens),
            "mask_attn_out": keep(samples, tokens, config.hidden_size),
            "mask_mlp_out": keep(samples, tokens, config.hidden_size)}


def reference_masks(masks: dict[str, np.ndarray], block: int, iteration: int) -> dict:
    """The same masks keyed for IncrementalDecoder.block_step."""
    return {(name[len("mask_"):], block, iteration): torch.from_numpy(array)
            for name, array in masks.items()}


def parity_sequence(config: ModelConfig, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Ids 3x the window long (capped by max_position), BOS first when the model has one, a
    THINK token past the window when it has one; per-token depth: every fifth token runs
    steps_reasoning, one runs a single iteration, the rest steps_base."""
    length = min(3 * config.window_size + 4, config.max_position)
    rng = np.random.default_rng(seed)
    specials = {config.bos_token_id, config.eos_token_id, config.pad_token_id,
                config.think_token_id} - {None}
    ordinary = np.array([i for i in range(config.vocab_size) if i not in specials])
    ids = rng.choice(ordinary, size=length)
    if config.bos_token_id is not None:
        ids[0] = config.bos_token_id
    if config.think_token_id is not None and length > config.window_size + 3:
        ids[config.window_size + 2] = config.think_token_id
    depth = [config.steps_reasoning if t % 5 == 0 else config.steps_base for t in range(length)]
    depth[-2] = 1
    return ids.astype(np.int64), depth


def check_parity(model: LanternModel, root: str | Path) -> dict[str, float]:
    """Max abs differences vs the reference, per check (keys: PARITY_KEYS)."""
    # One token at a time is hundreds of tiny torch ops: a second intra-op thread only adds
    # synchronisation (10-100x slower on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return _check_parity(model, root)
    finally:
        torch.set_num_threads(threads)


def _check_parity(model: LanternModel, root: str | Path) -> dict[str, float]:
    cfg = model.config
    ids, depth = parity_sequence(cfg)
    engine = Sequence(Engine(open_artifacts(root, require_parity=False),
                             providers=["CPUExecutionProvider"]))
    reference = IncrementalDecoder(model)
    errors = dict.fromkeys(PARITY_KEYS, 0.0)

    def compare(chunk: slice, d: int):
        step = engine.feed(ids[chunk], d)
        want = reference.forward(torch.from_numpy(ids[chunk]), d)
        errors["decode_logits"] = max(errors["decode_logits"],
                                      float(np.abs(step.logits - want.logits[0].numpy()).max()))
        if want.halting is not None:       # each block's p_halt after its last iteration
            ref = want.halting[:, d - 1, 0, -1].numpy()
            errors["decode_halt"] = max(errors["decode_halt"],
                                        float(np.abs(np.array(step.halting) - ref).max()))
        if chunk.stop - chunk.start == 1 and chunk.start % 7 == 3 and d < cfg.steps_reasoning:
            step = engine.deepen(step, cfg.steps_reasoning)       # continued, not re-run
            want = reference.deepen(cfg.steps_reasoning).logits[0].numpy()
            errors["decode_logits"] = max(errors["decode_logits"],
                                          float(np.abs(step.logits - want).max()))
        return step

    # 1. prefill, then one token at a time at its own depth; one 3-token chunk on the way
    prefill = max(1, min(cfg.window_size // 2, len(ids) - 5))
    step = compare(slice(0, prefill), cfg.steps_base)
    t = prefill
    while t < len(ids):
        size = 3 if t == prefill + 2 else 1
        step = compare(slice(t, t + size), depth[t])
        t += size

    # 2. MC dropout: the newest token's final iteration of the last block, shared masks
    masks = keep_masks(cfg, 3, 1, np.random.default_rng(1))
    mc_logits = engine.mc_distributions(step, masks)[0]
    b, i = cfg.num_blocks - 1, step.iterations[-1] - 1
    with torch.no_grad():
        out = reference.block_step(b, i, torch.from_numpy(step.mc_input),
                                   torch.from_numpy(ids[-1:]), step.position,
                                   reference_masks(masks, b, i))[0]
        want = model.lm_head(out)[0][:, 0].numpy()
    errors["mc_step_logits"] = float(np.abs(mc_logits - want).max())

    # 3. uncertainty head on varied rows (MC samples, peaked, flat) vs the torch module
    rows = np.concatenate([mc_logits, 30.0 * mc_logits[:1], np.zeros_like(mc_logits[:1])])
    weights = np.array([1.0, 0.5, 0.5], np.float32)
    hidden = np.random.default_rng(2).normal(0, 1, (len(rows), cfg.hidden_size)).astype(np.float32)
    got = engine.signals(rows, weights, hidden)
    head = UncertaintyHead(model.token_embedding.weight, engine.engine.artifacts.controller.top_k_dispersion)
    with torch.no_grad():
        expected = list(head(torch.from_numpy(rows), torch.from_numpy(weights)))
        if model.depth_probe is not None:
            expected.append(model.depth_probe(model.final_norm(torch.from_numpy(hidden)),
                                              torch.from_numpy(rows), model.token_embedding.weight))
    for name, want in zip(("entropy", "p_max", "dispersion", "score", "p_benefit"), expected):
        have, want = got[name], want.numpy()
        if name in ("dispersion", "score", "p_benefit"):  # the flat row's top k: ties, arbitrary
            have, want = have[:-1], want[:-1]
        scale = max(1.0, float(np.abs(want).max()))
        errors["uncertainty_rel"] = max(errors["uncertainty_rel"],
                                        float(np.abs(have - want).max()) / scale)

    # 4. model.onnx alone, plain onnxruntime, batch 2 with differently placed THINK tokens
    batch = np.stack([ids, np.roll(ids, 7)])
    if cfg.bos_token_id is not None:
        batch[:, 0] = cfg.bos_token_id
    alone = ort.InferenceSession(str(Path(root) / "model.onnx"), session_options(1),
                                 providers=["CPUExecutionProvider"])
    full = alone.run(None, {"input_ids": batch})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(batch), cfg.steps_base).logits.numpy()
    errors["model_onnx_logits"] = float(np.abs(full - want).max())
    return errors

