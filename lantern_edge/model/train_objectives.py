"""The main loop's objectives and their validation.

Chosen so that every branch of the runtime's controller has something real to do:
- language modelling at a random recursion depth per batch (uniform in 1..steps_reasoning),
  and on a fraction of batches a random depth PER TOKEN (the carried-KV policy the runtime
  uses when tokens run different depths), so deeper recursion improves predictions;
- THINK insertion: <think> tokens at random positions; the label that would predict THINK is
  ignored and the THINK position predicts the next real token (the runtime injects THINK when
  it is very uncertain and reads the next token from it);
- halting: on a uniform-depth batch at depth d >= 2, each block's halting head after iteration
  d-1 learns whether one more iteration leaves the argmax unchanged (target from no-grad,
  eval-mode passes at depths d-1 and d). The head reads a detached state, so it never
  disturbs the language model.
The recipe's objectives beyond these (deep supervision, THINK at hard tokens, the
error-corrector phase) live in recipe.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig
from .modeling import LanternModel
from .train_config import TrainConfig
from .train_data import IGNORE


def sample_depth(cfg: TrainConfig, inputs: torch.Tensor, model_cfg: ModelConfig,
                 rng: np.random.Generator) -> int | torch.Tensor:
    """An int depth for the batch (uniform in 1..steps_reasoning), or on mixed batches a
    LongTensor (num_blocks, B, T) of per-token depths where THINK tokens run steps_reasoning
    iterations, as they do at runtime."""
    top = model_cfg.steps_reasoning
    if rng.random() >= cfg.mixed_depth_fraction:
        return int(rng.integers(1, top + 1))
    depth = torch.from_numpy(rng.integers(1, top + 1, size=(model_cfg.num_blocks, *inputs.shape)))
    if model_cfg.think_token_id is not None:
        depth = torch.where(inputs == model_cfg.think_token_id, top, depth)
    return depth


def sample_positions(cfg: TrainConfig, model_cfg: ModelConfig,
                     rng: np.random.Generator) -> torch.Tensor | None:
    """None (positions 0..seq_len-1), or on late_position_fraction of batches
    [0, off+1, ..., off+seq_len-1] with off uniform in [0, max_position - seq_len]: <bos> stays
    at 0 and the text sits far past it, as in a long generation, so that the learned position
    rows past seq_len are trained too (windows never see further back than window_size)."""
    room = model_cfg.max_position - cfg.seq_len
    # no draw when off: runs without late positions keep the random stream they always had
    if room <= 0 or cfg.late_position_fraction == 0 or rng.random() >= cfg.late_position_fraction:
        return None
    offset = int(rng.integers(0, room + 1))
    positions = torch.arange(offset, offset + cfg.seq_len)
    positions[0] = 0
    return positions


def halting_targets(logits_shallow: torch.Tensor, logits_deep: torch.Tensor) -> torch.Tensor:
    """1 where one more iteration leaves the argmax unchanged ("halt now"), else 0; (B, T)."""
    return (logits_shallow.argmax(-1) == logits_deep.argmax(-1)).float()


def halting_bce(halting: torch.Tensor, depth: int, target: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
    """Mean BCE of every block's p_halt after iteration depth-1 (halting[:, depth-2]) against
    target (B, T), over the valid positions. halting: (num_blocks, depth, B, T)."""
    probs = halting[:, depth - 2].float().clamp(1e-6, 1 - 1e-6)             # (num_blocks, B, T)
    bce = F.binary_cross_entropy(probs, target.expand_as(probs), reduction="none")
    return bce[:, valid].mean()


@dataclass
class StepLosses:
    lm: torch.Tensor                       # cross-entropy over non-ignored labels
    halting: torch.Tensor                  # 0 when the batch trains no halting
    halting_target: torch.Tensor | None    # (B, T), for inspection


def compute_losses(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor,
                   depth: int | torch.Tensor, autocast=None,
                   positions: torch.Tensor | None = None) -> StepLosses:
    """The training losses of one batch at ``depth`` (forward under ``autocast``, losses fp32)."""
    autocast = autocast or contextlib.nullcontext()
    with autocast:
        out = model(inputs, depth, positions=positions)
    lm = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
    zero = torch.zeros((), device=inputs.device)
    if out.halting is None or not isinstance(depth, int) or depth < 2:
        return StepLosses(lm, zero, None)
    # The target comes from no-grad passes in eval mode (dropout off, as at inference): with
    # dropout on, noise alone flips the argmax between two passes and the head learns that.
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast:
        shallow = model(inputs, depth - 1, positions=positions).logits
        deep = model(inputs, depth, positions=positions).logits
    model.train(was_training)
    target = halting_targets(shallow.float(), deep.float())
    return StepLosses(lm, halting_bce(out.halting, depth, target, targets != IGNORE), target)


@torch.no_grad()
def evaluate(model: LanternModel, val_batches, device: torch.device) -> dict[str, Any]:
    """Validation loss at every uniform depth 1..steps_reasoning (eval mode, fixed batches),
    and how well the halting head after iteration d-1 predicts "depth d keeps the argmax"."""
    was_training = model.training
    model.eval()
    losses, halting = {}, {}
    previous: list[torch.Tensor] = []
    for depth in range(1, model.config.steps_reasoning + 1):
        total, argmaxes, agree, correct, bce, count = 0.0, [], 0.0, 0.0, 0.0, 0
        for b, (inputs, targets) in enumerate(val_batches):
            inputs, targets = inputs.to(device), targets.to(device)
            out = model(inputs, depth)
            total += F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(),
                                     ignore_index=IGNORE).item()
            argmaxes.append(out.logits.argmax(-1))
            if previous and out.halting is not None:
                target = (previous[b] == argmaxes[-1]).float()              # (B, T)
                probs = out.halting[:, depth - 2].float()                   # (num_blocks, B, T)
                valid = targets != IGNORE
                agree += target[valid].sum().item()
                correct += ((probs >= 0.5).float() == target).float()[:, valid].mean().item()
                bce += halting_bce(out.halting, depth, target, valid).item()
                count += int(valid.sum())
        losses[str(depth)] = round(total / len(val_batches), 4)
        if count:
            n = len(val_batches)
            halting[str(depth)] = {"target_rate": round(agree / count, 4),
                                   "accuracy": round(correct / n, 4), "bce": round(bce / n, 4)}
        previous = argmaxes
    model.train(was_training)
    return {"loss_per_depth": losses, "halting": halting}
