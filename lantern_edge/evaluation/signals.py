"""Per-token, teacher-forced signals and outcomes on the held-out windows.

One flat column per quantity, one row per predicted token (windows x positions):

- window, position: where the token is;
- correct_d{d}, nll_d{d}: the fixed-depth model at every depth 1..steps_reasoning;
- confidence: probability of the cheap pass's top-1 (THINK excluded);
- entropy, one_minus_p_max, dispersion, composite: the uncertainty head on the cheap pass
  (steps_base), with the checkpoint's controller weights, exactly the runtime's signals;
- p_benefit: the depth probe on the cheap pass, when the model has one;
- halting: 1 - p_halt of the last block after its steps_base-th iteration (the head predicts
  "one more iteration keeps the top-1"), when the model has halting heads;
- mutual_information, u_total: MC dropout (S seeded masks) and U + lambda * MI;
- correct_mc, nll_mc, top1_mc: the MC mean distribution's prediction;
- correct_deepened / nll_deepened / top1_deepened and the same for think: the token alone sent
  deep (passes.isolated_deep), re-run in place or through a THINK token;
- top1_base: the cheap pass's top-1.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..model.config import ControllerConfig
from ..model.modeling import LanternModel
from ..model.uncertainty import UncertaintyHead
from . import passes

logger = logging.getLogger(__name__)

# name -> what it is, for tables; every score is oriented "higher = less sure"
SIGNALS = {
    "entropy": "entropy H",
    "one_minus_p_max": "1 - p_max",
    "dispersion": "dispersion",
    "mutual_information": "MC mutual information",
    "composite": "composite U",
    "u_total": "U + lambda*MI",
    "halting": "1 - p_halt",
    "p_benefit": "depth probe p_benefit",
}


def controller_weights(controller: ControllerConfig) -> torch.Tensor:
    return torch.tensor([controller.weight_entropy, controller.weight_dispersion,
                         controller.weight_p_max])


@torch.no_grad()
def collect(model: LanternModel, controller: ControllerConfig, inputs: torch.Tensor,
            targets: torch.Tensor, mc_samples: int, seed: int,
            progress=lambda message: None) -> dict[str, np.ndarray]:
    """Every column of the module docstring for the windows inputs/targets (B, T).

    Args:
        model: the reference model in eval mode.
        controller: the checkpoint's controller defaults (weights, lambda, top-k).
        inputs, targets: held-out windows.
        mc_samples: dropout samples per token (>= 2).
        seed: seed of the dropout masks.
        progress: called with a short message before each stage (the CLI logs them).

    Returns:
        Flat float/int/bool columns of length B * T.
    """
    cfg = model.config
    if mc_samples < 2:
        raise ValueError(f"mc_samples must be >= 2, got {mc_samples}")
    head = UncertaintyHead(model.token_embedding.weight, controller.top_k_dispersion)
    weights = controller_weights(controller)
    columns: dict[str, np.ndarray] = {}
    batch, length = targets.shape
    columns["window"] = np.repeat(np.arange(batch), length)
    columns["position"] = np.tile(np.arange(length), batch)

    signals = {name: np.empty((batch, length)) for name in
               ("entropy", "one_minus_p_max", "dispersion", "composite", "halting", "p_benefit")}

    def keep_signals(rows: slice, out) -> None:
        flat = out.logits.flatten(0, 1)
        entropy, p_max, dispersion, score = (s.view(-1, length).double().numpy()
                                             for s in head(flat, weights))
        signals["entropy"][rows] = entropy
        signals["one_minus_p_max"][rows] = 1.0 - p_max
        signals["dispersion"][rows] = dispersion
        signals["composite"][rows] = score
        if model.depth_probe is not None:
            signals["p_benefit"][rows] = model.depth_probe(
                out.hidden.flatten(0, 1), flat, model.token_embedding.weight
            ).view(-1, length).double().numpy()
        if out.halting is not None:
            signals["halting"][rows] = 1.0 - out.halting[-1, cfg.steps_base - 1].double().numpy()

    for depth in range(1, cfg.steps_reasoning + 1):
        progress(f"fixed depth {depth}")
        keep = keep_signals if depth == cfg.steps_base else None
        result = passes.uniform(model, inputs, targets, depth, keep)
        columns[f"correct_d{depth}"] = result.correct.ravel()
        columns[f"nll_d{depth}"] = result.nll.ravel()
        if depth == cfg.steps_base:
            columns["top1_base"] = result.top1.ravel()
            columns["confidence"] = result.confidence.ravel()
    if not cfg.use_halting:
        del signals["halting"]
    if model.depth_probe is None:
        del signals["p_benefit"]
    columns.update({name: values.ravel() for name, values in signals.items()})

    progress(f"MC dropout, {mc_samples} samples")
    mc, information = passes.monte_carlo(model, inputs, targets, mc_samples, seed)
    columns["mutual_information"] = information.ravel()
    columns["u_total"] = columns["composite"] + controller.lambda_epistemic * columns["mutual_information"]
    _add(columns, "mc", mc)

    progress("each token alone continued deep")
    _add(columns, "deepened", passes.isolated_deep(model, inputs, targets, think=False))
    if cfg.think_token_id is not None:
        progress("each token alone followed by a deep THINK")
        _add(columns, "think", passes.isolated_deep(model, inputs, targets, think=True))
    return columns


def _add(columns: dict[str, np.ndarray], name: str, result: passes.Outcome) -> None:
    columns[f"correct_{name}"] = result.correct.ravel()
    columns[f"nll_{name}"] = result.nll.ravel()
    columns[f"top1_{name}"] = result.top1.ravel()


def deep_action(columns: dict[str, np.ndarray], inject_think: bool = True) -> str:
    """The runtime's very-high action for these columns: "think" when the model has THINK and
    inject_think (the runtime option) is on, else "deepened" (the token re-run deep)."""
    return "think" if inject_think and "correct_think" in columns else "deepened"


def signal_names(columns: dict[str, np.ndarray]) -> list[str]:
    """The signals present in columns, in table order."""
    return [name for name in SIGNALS if name in columns]
