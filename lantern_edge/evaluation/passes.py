"""Teacher-forced forward passes of the reference model that emulate the runtime's decisions.

- `uniform`: the fixed-depth model (model.forward at one depth).
- `capture` (model.counterfactual): records each (block, iteration)'s keys, values and
  queries during model.forward, by wrapping Block.finish (the model's own code runs).
- `isolated_deep`: every token's extra-compute counterfactual at once, each query alone over
  the cheap pass's context: the token itself at steps_reasoning ("deepened": the runtime
  continues it, with the same logits as a re-run), or a THINK
  token after it run at steps_reasoning. This is exactly the runtime's very-high action for a
  token whose earlier tokens all stayed cheap (their deeper KV is carried, as the runtime's is).
- `adaptive`: one joint pass with chosen tokens deep: THINK inserted after the first
  max_global_tokens - 1 of them in a window (the runtime's global buffer), the rest deepened,
  everything else at steps_base; later tokens see the deep tokens' KV, as in the runtime.
- `monte_carlo`: S dropout samples of the cheap pass's last block's last iteration per token,
  with the runtime's mask recipe (runtime.controller.dropout_masks) and its MC statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.counterfactual import capture, solo
from ..model.modeling import LanternModel
from ..runtime.controller import dropout_masks
from ..runtime.sampling import mc_summary, softmax

# Logits per chunk kept in memory at once (rows x T x V floats): 64 MB in float32, twice that
# for the float64 log-softmax; bounds memory whatever the model's vocabulary.
CHUNK_FLOATS = 16_000_000


@dataclass
class Outcome:
    """Per-token result of one way of predicting: (B, T) arrays."""

    top1: np.ndarray           # int64 argmax, THINK excluded (the runtime never emits THINK)
    correct: np.ndarray        # bool, top1 == target
    nll: np.ndarray            # float64 -log p(target) in nats
    confidence: np.ndarray     # float64 probability of top1


def outcome_of(logits: torch.Tensor, targets: torch.Tensor, suppress: int | None) -> Outcome:
    """Outcome of logits (B, T, V) against targets (B, T)."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return outcome_of_log_probs(log_probs, targets, suppress)


def outcome_of_log_probs(log_probs: torch.Tensor, targets: torch.Tensor,
                         suppress: int | None) -> Outcome:
    """Outcome of log-probabilities (B, T, V); suppress: an id never chosen as top-1."""
    ranked = log_probs.clone() if suppress is not None else log_probs
    if suppress is not None:
        ranked[..., suppress] = float("-inf")
    best, top1 = ranked.max(dim=-1)
    nll = -log_probs.gather(-1, targets[..., None])[..., 0]
    return Outcome(top1.numpy(), (top1 == targets).numpy(), nll.numpy(), best.exp().numpy())


def chunks(rows: int, per_row_floats: int):
    step = max(1, CHUNK_FLOATS // max(per_row_floats, 1))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def _concat(parts: list[Outcome]) -> Outcome:
    return Outcome(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("top1", "correct", "nll", "confidence")))


@torch.no_grad()
def uniform(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor, depth: int,
            keep=None) -> Outcome:
    """The fixed-depth model at `depth` iterations per block.

    keep: optional callable(rows: slice, output: ModelOutput) for extra per-chunk statistics.
    """
    cfg = model.config
    parts = []
    for rows in chunks(len(inputs), inputs.shape[1] * cfg.vocab_size):
        out = model(inputs[rows], depth)
        if keep is not None:
            keep(rows, out)
        parts.append(outcome_of(out.logits, targets[rows], cfg.think_token_id))
    return _concat(parts)


@torch.no_grad()
def isolated_deep(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor,
                  think: bool) -> Outcome:
    """Each token's prediction had it alone gone deep over the cheap pass's context.

    think=False: token t at steps_reasoning (the runtime's "deepened" path: it continues the
    token, with the same logits as this re-run);
    think=True: a THINK at position t + 1 run at steps_reasoning, whose logits predict
    targets[:, t] (the runtime's THINK injection). The context (every other token) ran
    steps_base iterations; iterations past steps_base see its carried KV
    (model.counterfactual.solo).
    """
    cfg = model.config
    parts = []
    for rows in chunks(len(inputs), inputs.shape[1] * cfg.vocab_size):
        _, logits, _ = solo(model, inputs[rows], cfg.steps_reasoning, think)
        parts.append(outcome_of(logits, targets[rows], cfg.think_token_id))
    return _concat(parts)


@dataclass
class Layout:
    """Sequences with THINK tokens inserted, as the runtime would have run them."""

    ids: torch.Tensor           # (B, L) padded at the end
    depth: torch.Tensor         # (B, L) iterations per block of each token
    read: torch.Tensor          # (B, T) index in ids whose logits predict targets[:, t]
    think: torch.Tensor         # (B, L) bool, an injected THINK
    thinks: int                 # THINK tokens inserted in all
    deepened: int               # deep tokens continued in place (no THINK slot left, or none)


def layout(model: LanternModel, inputs: torch.Tensor, deep: np.ndarray, use_think: bool) -> Layout:
    """Where each deep token's extra compute goes: a THINK after it while the window's global
    buffer has room (max_global_tokens, position 0 included), else the token continued deep."""
    cfg = model.config
    base, top = cfg.steps_base, cfg.steps_reasoning
    think_id = cfg.think_token_id if use_think else None
    pad = next(i for i in (cfg.pad_token_id, cfg.eos_token_id, 0, 1) if i is not None
               and i != cfg.think_token_id)
    rows, depths, reads, flags = [], [], [], []
    thinks = deepened = 0
    for ids, chosen in zip(inputs.tolist(), deep):
        free = cfg.max_global_tokens - 1
        row, depth, read, flag = [], [], [], []
        for t, token in enumerate(ids):
            inject = bool(chosen[t]) and think_id is not None and free > 0
            row.append(token)
            depth.append(top if chosen[t] and not inject else base)
            flag.append(False)
            if inject:
                free -= 1
                row.append(think_id)
                depth.append(top)
                flag.append(True)
            thinks += inject
            deepened += bool(chosen[t]) and not inject
            read.append(len(row) - 1)
        rows.append(row)
        depths.append(depth)
        reads.append(read)
        flags.append(flag)
    width = max(map(len, rows))
    if width > cfg.max_position:
        raise ValueError(f"windows with THINK tokens reach {width} positions, more than "
                         f"max_position={cfg.max_position}; use a shorter --seq-len")
    fill = lambda seqs, value: torch.tensor([s + [value] * (width - len(s)) for s in seqs])  # noqa: E731
    return Layout(fill(rows, pad), fill(depths, base), torch.tensor(reads), fill(flags, False),
                  thinks, deepened)


@torch.no_grad()
def adaptive(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor,
             deep: np.ndarray, use_think: bool = True, keep=None,
             score=None) -> tuple[Outcome, Layout, np.ndarray | None]:
    """One joint pass in which the tokens marked in deep (B, T) bool got the very-high action.

    keep: optional callable(rows: slice, plan: Layout, record) run with the captured
    attention inputs of each chunk (for THINK attention statistics); None captures nothing.
    score: optional callable(logits (N, V)) -> (N,) scores, applied to the logits each token's
    target is read from; returned as (B, T) (None without it).
    """
    cfg = model.config
    plan = layout(model, inputs, np.asarray(deep, dtype=bool), use_think)
    parts, scores = [], []
    for rows in chunks(len(inputs), plan.ids.shape[1] * cfg.vocab_size):
        grid = plan.depth[rows][None].expand(cfg.num_blocks, -1, -1)
        if keep is None:
            logits = model(plan.ids[rows], grid).logits
        else:
            with capture(model, queries=True) as record:
                logits = model(plan.ids[rows], grid).logits
            keep(rows, plan, record)
        read = plan.read[rows]
        picked = logits.gather(1, read[..., None].expand(-1, -1, logits.shape[-1]))
        parts.append(outcome_of(picked, targets[rows], cfg.think_token_id))
        if score is not None:
            scores.append(score(picked.flatten(0, 1)).view(picked.shape[:2]).double().numpy())
    return _concat(parts), plan, (np.concatenate(scores) if score is not None else None)


@torch.no_grad()
def monte_carlo(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor, samples: int,
                seed: int) -> tuple[Outcome, np.ndarray]:
    """MC-dropout refinement of every token: the mean distribution of `samples` masked re-runs
    of the last block's last cheap iteration, and its mutual information (B, T).

    Masks follow runtime.controller.dropout_masks (seeded by (seed, window), position);
    dropout at that one iteration changes only the token's own output, never the context's
    keys and values, so one masked full forward equals S runtime MC steps per token.
    """
    cfg = model.config
    length = inputs.shape[1]
    site = (cfg.num_blocks - 1, cfg.steps_base - 1)
    parts, information = [], []
    for rows in chunks(len(inputs), samples * length * cfg.vocab_size):
        ids = inputs[rows]
        masks = {"attn_probs": [], "attn_out": [], "mlp_out": []}
        for window in range(rows.start, rows.stop):
            per_position = [dropout_masks(cfg, samples, length - 1, seed * 1_000_003 + window, t)
                            for t in range(length)]
            masks["attn_probs"].append(np.concatenate([m["mask_attn_probs"] for m in per_position], 2))
            masks["attn_out"].append(np.concatenate([m["mask_attn_out"] for m in per_position], 1))
            masks["mlp_out"].append(np.concatenate([m["mask_mlp_out"] for m in per_position], 1))
        # rows ordered (window, sample)
        dropout = {(name, *site): torch.from_numpy(np.concatenate(arrays)) for name, arrays in masks.items()}
        logits = model(ids.repeat_interleave(samples, 0), cfg.steps_base, dropout_masks=dropout).logits
        logits = logits.view(len(ids), samples, length, -1).permute(0, 2, 1, 3).numpy()
        mean = np.empty(logits.shape[:2] + logits.shape[3:])
        info = np.empty(logits.shape[:2])
        for w in range(logits.shape[0]):
            for t in range(length):
                mean[w, t], info[w, t] = mc_summary(softmax(logits[w, t]))
        log_mean = torch.from_numpy(np.log(np.maximum(mean, 1e-30)))
        parts.append(outcome_of_log_probs(log_mean, targets[rows], cfg.think_token_id))
        information.append(info)
    return _concat(parts), np.concatenate(information)
