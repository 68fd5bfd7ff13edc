"""Verify exported graphs against the PyTorch reference.

`GraphRunner` drives the step graphs exactly as docs/ARTIFACTS.md specifies, with its own small
NumPy KV bookkeeping (ring slot = position % W, global buffer in arrival order, carried KV for
iterations a token did not run); it shares no code with lantern_edge.runtime, so a passing
check holds the artifacts to the contract rather than to one consumer of it. `check_parity`
runs the checks recorded in lantern.json "parity": prefill, one-token decode 3x past the window,
a chunk mid-sequence, tokens at steps_reasoning and at depth 1 (carried KV), a THINK token,
the MC-dropout step with shared masks, the uncertainty head, and model.onnx alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..model.config import ControllerConfig, ModelConfig
from ..model.incremental import IncrementalDecoder
from ..model.modeling import LanternModel
from ..model.uncertainty import UncertaintyHead
from .errors import ExportError

LOGIT_TOLERANCE = 1e-4          # max abs logit difference, fp32
SIGNAL_TOLERANCE = 1e-4         # uncertainty signals, relative to each signal's magnitude
PARITY_KEYS = ("decode_logits", "decode_halt", "mc_step_logits", "uncertainty_rel",
               "model_onnx_logits")


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"onnxruntime {ort.__version__} cannot load {Path(path).name} "
                          f"({detail}); try the default --opset 18") from e


class GraphRunner:
    """The fp32 graphs of an artifacts directory, driven per the contract (batch 1)."""

    def __init__(self, root: str | Path, precision: str = "fp32"):
        self.root = Path(root)
        manifest = json.loads((self.root / "lantern.json").read_text(encoding="utf-8"))
        self.config = cfg = ModelConfig.from_dict(manifest["model_config"])
        self.controller = ControllerConfig.from_dict(manifest["controller"])
        graphs = manifest["graphs"][precision]
        self.embed = session(self.root / graphs["embed"]["file"])
        self.blocks = [session(self.root / entry["file"]) for entry in graphs["blocks"]]
        self.mc_step = session(self.root / graphs["mc_step"]["file"])
        self.head = session(self.root / graphs["lm_head"]["file"])
        self.uncertainty = session(self.root / graphs["uncertainty"]["file"])
        self.window, self.stored = cfg.window_size, cfg.window_size + cfg.max_global_tokens
        shape = (cfg.num_blocks, cfg.steps_reasoning, cfg.num_heads, self.stored, cfg.head_dim)
        self.keys = np.zeros(shape, np.float32)
        self.values = np.zeros(shape, np.float32)
        self.slot_pos = np.full(self.stored, -1, np.int64)   # position held by each slot
        self.global_count = 0
        self.length = 0

    def attn_bias(self, positions: np.ndarray, new_global: np.ndarray) -> np.ndarray:
        """[T, K + T]: stored entry j visible to query i iff 0 <= j < i and (i - j < W or j is
        in the global buffer); new token j iff j <= i and (i - j < W or j is global)."""
        q = positions[:, None]
        held = self.slot_pos[None, :]
        in_global = np.arange(self.stored) >= self.window
        see_stored = (held >= 0) & (held < q) & ((q - held < self.window) | in_global)
        delta = q - positions[None, :]
        see_new = (delta >= 0) & ((delta < self.window) | new_global[None, :])
        visible = np.concatenate([see_stored, see_new], axis=1)
        return np.where(visible, 0.0, -np.inf).astype(np.float32)

    def feed(self, ids, depth: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Run ids [T] at the next positions, `depth` iterations of every block.

        Returns logits [T, V] and p_halt [num_blocks, depth, T] (None without halting).
        (Depth is uniform within a call: the step graph computes the new tokens' keys itself,
        so tokens of different depth go in different calls.)
        """
        cfg = self.config
        ids = np.asarray(ids, np.int64)
        length = len(ids)
        if not 1 <= depth <= cfg.steps_reasoning:
            raise ValueError(f"depth must be in [1, {cfg.steps_reasoning}], got {depth}")
        positions = np.arange(self.length, self.length + length, dtype=np.int64)
        new_global = positions == 0
        if cfg.think_token_id is not None:
            new_global |= ids == cfg.think_token_id
        if self.global_count + new_global.sum() > cfg.max_global_tokens:
            raise ValueError("the global KV buffer is full")
        # globals take the next global slots, the others position % W (later tokens win)
        slots = np.where(new_global, self.window + self.global_count + np.cumsum(new_global) - 1,
                         positions % self.window)
        bias = self.attn_bias(positions, new_global)
        hidden = self.embed.run(None, {"input_ids": ids, "positions": positions})[0]
        halting = np.zeros((cfg.num_blocks, depth, length), np.float32)
        for b, block in enumerate(self.blocks):
            for i in range(cfg.steps_reasoning):
                if i < depth:       # else: carried KV, the last iteration's key/value again
                    if b == cfg.num_blocks - 1:
                        self.mc_input, self.mc_iteration = hidden[:, -1:].copy(), i
                    out = block.run(None, {"hidden": hidden, "positions": positions,
                                           "past_key": self.keys[b, i],
                                           "past_value": self.values[b, i], "attn_bias": bias})
                    hidden, key, value = out[0], out[1][0], out[2][0]      # key [H, T, D]
                    if len(out) > 3:
                        halting[b, i] = out[3][0]
                for t in range(length):
                    self.keys[b, i][:, slots[t]] = key[:, t]
                    self.values[b, i][:, slots[t]] = value[:, t]
        self.slot_pos[slots] = positions
        self.global_count += int(new_global.sum())
        self.length += length
        self.last = (int(ids[-1]), int(positions[-1]), bool(new_global[-1]))
        logits = self.head.run(None, {"hidden": hidden})[0][0]
        return logits, (halting if cfg.use_halting else None)

    def mc_hidden(self, masks: dict[str, np.ndarray]) -> np.ndarray:
        """[S, 1, C]: the newest token's last iteration of the last block, re-run with masks
        (its own stored slot is excluded by the j < i rule)."""
        b, i = self.config.num_blocks - 1, self.mc_iteration
        _, position, is_global = self.last
        positions = np.array([position], np.int64)
        return self.mc_step.run(None, {
            "hidden": self.mc_input, "positions": positions, "past_key": self.keys[b, i],
            "past_value": self.values[b, i],
            "attn_bias": self.attn_bias(positions, np.array([is_global])), **masks})[0]

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return self.head.run(None, {"hidden": hidden})[0]

    def signals(self, logits: np.ndarray, weights) -> dict[str, np.ndarray]:
        out = self.uncertainty.run(None, {"logits": np.ascontiguousarray(logits, np.float32),
                                          "weights": np.asarray(weights, np.float32)})
        return dict(zip(("entropy", "p_max", "dispersion", "score"), out))


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
    runner = GraphRunner(root)
    reference = IncrementalDecoder(model)
    errors = dict.fromkeys(PARITY_KEYS, 0.0)

    def compare(chunk: slice, d: int) -> None:
        got, halt = runner.feed(ids[chunk], d)
        want = reference.forward(torch.from_numpy(ids[chunk]), d)
        errors["decode_logits"] = max(errors["decode_logits"],
                                      float(np.abs(got - want.logits[0].numpy()).max()))
        if halt is not None:
            ref = want.halting[:, :, 0].numpy()
            seen = ~np.isnan(ref)
            errors["decode_halt"] = max(errors["decode_halt"],
                                        float(np.abs(halt[seen] - ref[seen]).max()))

    # 1. prefill, then one token at a time at its own depth; one 3-token chunk on the way
    prefill = max(1, min(cfg.window_size // 2, len(ids) - 5))
    compare(slice(0, prefill), cfg.steps_base)
    t = prefill
    while t < len(ids):
        step = 3 if t == prefill + 2 else 1
        compare(slice(t, t + step), depth[t])
        t += step

    # 2. MC dropout: the newest token's final iteration of the last block, shared masks
    masks = keep_masks(cfg, 3, 1, np.random.default_rng(1))
    mc_logits = runner.logits(runner.mc_hidden(masks))[:, 0]
    b, i = cfg.num_blocks - 1, runner.mc_iteration
    with torch.no_grad():
        out = reference.block_step(b, i, torch.from_numpy(runner.mc_input),
                                   torch.from_numpy(ids[-1:]), runner.last[1],
                                   reference_masks(masks, b, i))[0]
        want = model.lm_head(out)[0][:, 0].numpy()
    errors["mc_step_logits"] = float(np.abs(mc_logits - want).max())

    # 3. uncertainty head on varied rows (MC samples, peaked, flat) vs the torch module
    rows = np.concatenate([mc_logits, 30.0 * mc_logits[:1], np.zeros_like(mc_logits[:1])])
    weights = np.array([1.0, 0.5, 0.5], np.float32)
    got = runner.signals(rows, weights)
    head = UncertaintyHead(model.token_embedding.weight, runner.controller.top_k_dispersion)
    with torch.no_grad():
        expected = head(torch.from_numpy(rows), torch.from_numpy(weights))
    for name, want in zip(("entropy", "p_max", "dispersion", "score"), expected):
        want = want.numpy()
        if name in ("dispersion", "score"):  # ties in the flat row make its top k arbitrary
            got[name], want = got[name][:-1], want[:-1]
        scale = max(1.0, float(np.abs(want).max()))
        errors["uncertainty_rel"] = max(errors["uncertainty_rel"],
                                        float(np.abs(got[name] - want).max()) / scale)

    # 4. model.onnx alone, plain onnxruntime, batch 2 with differently placed THINK tokens
    batch = np.stack([ids, np.roll(ids, 7)])
    if cfg.bos_token_id is not None:
        batch[:, 0] = cfg.bos_token_id
    full = session(Path(root) / "model.onnx").run(None, {"input_ids": batch})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(batch), cfg.steps_base).logits.numpy()
    errors["model_onnx_logits"] = float(np.abs(full - want).max())
    return errors


def parity_failures(errors: dict[str, float]) -> list[str]:
    """'name=value > limit' for each check out of tolerance (NaN counts as a failure)."""
    limits = {"uncertainty_rel": SIGNAL_TOLERANCE}
    return [f"{name}={value:.2e} > {limits.get(name, LOGIT_TOLERANCE):.0e}"
            for name, value in errors.items()
            if not value <= limits.get(name, LOGIT_TOLERANCE)]
