"""The training recipe's objectives beyond plain language modelling (docs/TRAINING_RECIPE.md).

- deep supervision: a loss at every depth's exit (LanternModel.exits: the cheap depths are
  the first steps of the deep ones, so one pass serves all), weights rising with depth, full
  backprop through every iteration;
- THINK where it is used: inserted after the positions whose cheap-pass loss is highest
  (measured without grad), so the THINK predicts what the cheap pass got worst;
- the error-corrector phase: the cheap loss on every token plus each token's deep
  continuation (the token alone run to steps_reasoning over the cheap context, as the runtime
  continues it) with its loss up-weighted where the cheap pass's top-1 is wrong;
- run_phases: the phases after the main loop, in order (the corrector, then the probe of
  probe_training.py, which must see the corrected model).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .counterfactual import solo
from .modeling import LanternModel
from .probe_training import run_probe_phase
from .train_data import IGNORE
from .train_schedule import adamw

logger = logging.getLogger(__name__)


def depth_weights(depths: int) -> list[float]:
    """Weights of the exits 1..depths: proportional to the depth, summing to 1."""
    total = depths * (depths + 1) / 2
    return [d / total for d in range(1, depths + 1)]


def deep_supervision_loss(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor,
                          autocast=None, positions: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(weighted loss, per-depth losses) over the exits at depths 1..steps_reasoning."""
    with autocast or contextlib.nullcontext():
        exits = model.exits(inputs, positions)
    losses = [F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(),
                              ignore_index=IGNORE) for out in exits]
    total = sum(w * loss for w, loss in zip(depth_weights(len(losses)), losses))
    return total, losses


@torch.no_grad()
def cheap_losses(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor,
                 autocast=None) -> torch.Tensor:
    """(B, T) cross-entropy of the cheap pass (steps_base, eval mode: no dropout noise)."""
    was_training = model.training
    model.eval()
    with autocast or contextlib.nullcontext():
        logits = model(inputs, model.config.steps_base).logits
    model.train(was_training)
    return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE,
                           reduction="none")


def insert_think_at_hard(inputs: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor,
                         think: int, rate: float, max_count: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """THINK inserted after the positions with the highest cheap loss, keeping the length.

    Row r = inputs[r] + targets[r, -1]. Position t predicting row[t + 1] badly gets a THINK at
    t + 1 (the runtime injects THINK after an uncertain token); the THINK then predicts
    row[t + 1] and the label that would predict THINK is IGNORE. At most
    min(round(rate * T), max_count) THINKs per row.
    """
    rows = torch.cat((inputs, targets[:, -1:]), dim=1).cpu().numpy()
    count = min(int(round(rate * inputs.shape[1])), max_count)
    order = torch.argsort(losses.float().cpu(), dim=1, descending=True).numpy()
    out = []
    for row, ranked in zip(rows, order):
        chosen = np.sort(ranked[:count]) + 1
        out.append(np.insert(row, chosen, think)[:len(row)] if count else row)
    batch = torch.from_numpy(np.stack(out)).to(inputs.device)
    new_inputs, new_targets = batch[:, :-1].clone(), batch[:, 1:].clone()
    new_targets[new_targets == think] = IGNORE
    return new_inputs, new_targets


def corrector_loss(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor,
                   weight: float, autocast=None) -> tuple[torch.Tensor, dict[str, float]]:
    """Cheap CE on every token + the deep continuation's CE, weight x on cheap-wrong tokens.

    The deep continuation is each token alone run to steps_reasoning over the cheap context
    (model.counterfactual.solo): what the runtime's very-high action computes. Gradients flow
    through every iteration of both. The deep term is a weighted mean (weights 1 and weight).
    """
    with autocast or contextlib.nullcontext():
        out, deep_logits, _ = solo(model, inputs, model.config.steps_reasoning)
    valid = targets != IGNORE
    safe = targets.clamp(min=0)
    cheap = F.cross_entropy(out.logits.float().transpose(1, 2), safe, reduction="none")
    deep = F.cross_entropy(deep_logits.float().transpose(1, 2), safe, reduction="none")
    wrong = (out.logits.detach().argmax(-1) != targets) & valid
    w = torch.where(wrong, float(weight), 1.0) * valid
    deep_term = (w * deep).sum() / w.sum()
    loss = cheap[valid].mean() + deep_term
    stats = {"cheap": cheap[valid].mean().item(), "deep": deep[valid].mean().item(),
             "deep_on_wrong": deep[wrong].mean().item() if wrong.any() else float("nan"),
             "cheap_wrong": wrong.sum().item() / max(1, valid.sum().item())}
    return loss, stats


def run_corrector(model: LanternModel, cfg, next_batch, device: torch.device,
                  autocast=None) -> dict:
    """The error-corrector phase: corrector_loss for corrector_steps steps (or
    corrector_minutes), AdamW at lr * corrector_lr_ratio, 10% linear warm-up then cosine to
    zero. cfg: the TrainConfig. Returns its report (steps, seconds, first/last statistics)."""
    optimizer = adamw(model, cfg.lr * cfg.corrector_lr_ratio, cfg.weight_decay)
    peak, total = cfg.lr * cfg.corrector_lr_ratio, cfg.corrector_steps
    warmup = max(1, total // 10)
    model.train()
    started, step, first, window = time.perf_counter(), 0, None, []
    while step < total:
        elapsed = time.perf_counter() - started
        if cfg.corrector_minutes and elapsed > 60 * cfg.corrector_minutes:
            break
        progress = (step - warmup) / max(1, total - warmup)
        if cfg.corrector_minutes:
            progress = max(progress, elapsed / (60 * cfg.corrector_minutes))
        lr = peak * (step + 1) / warmup if step < warmup else \
            peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = next_batch()
        loss, stats = corrector_loss(model, inputs.to(device), targets.to(device),
                                     cfg.corrector_weight, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        first = first or stats
        window = (window + [stats])[-20:]
        step += 1
    last = {k: float(np.nanmean([s[k] for s in window])) for k in window[0]} if window else {}
    return {"steps": step, "seconds": round(time.perf_counter() - started, 2),
            "weight": cfg.corrector_weight, "lr": peak, "first": first, "last_20_mean": last}


def run_phases(model: LanternModel, cfg, next_batch, val_batches, device: torch.device,
               autocast=None) -> tuple[LanternModel, dict]:
    """The error-corrector phase, then the probe phase (each when cfg configures it).
    Returns (the model, with its probe after the probe phase; {phase name: report})."""
    phases: dict = {}
    if cfg.corrector_steps:
        phases["corrector"] = run_corrector(model, cfg, next_batch, device, autocast)
        logger.info("corrector: %s", phases["corrector"])
    if cfg.probe_hidden:
        model, phases["probe"] = run_probe_phase(model, cfg, next_batch, val_batches, device,
                                                 autocast)
    return model, phases
