"""The default controller's decisions made on-policy: from the context the adaptive run leaves.

In the runtime a token's cheap pass sees the KV of the tokens before it as they actually ran,
deep ones included; whether it goes deep depends on that. Teacher-forced, the decisions are
found by iterating to a fixed point: decide every token from its cheap pass over the context
of the previous round's decisions (model.counterfactual.solo: each token alone at steps_base
over a context run at the per-token depths), until nothing changes. Token t's decision depends
only on the decisions before it, so after k rounds the first k positions are exact and a fixed
point is the sequential decision itself. In cycle order a cheap pass never sees iterations past
steps_base, so the first round is already on-policy; sequence order re-runs later blocks of a
deep token, and there the context matters.

The controller (runtime.controller.Controller.decide, greedy): deep_trigger "probe" sends a
token deep when p_benefit >= tau_probe and refines U in [tau_mid, tau_high) with MC (no
escalation); "u" sends U >= tau_high deep and escalates MC tokens whose U + lambda * MI
reaches tau_high (MI from the all-cheap context, as signals.collect measured it).
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.config import ControllerConfig
from ..model.counterfactual import solo
from ..model.modeling import LanternModel
from ..model.uncertainty import UncertaintyHead
from . import passes
from .signals import controller_weights

MAX_ROUNDS = 12


@torch.no_grad()
def cheap_signals(model: LanternModel, controller: ControllerConfig, inputs: torch.Tensor,
                  deep: np.ndarray | None) -> dict[str, np.ndarray]:
    """(B, T) composite U and p_benefit (None without a probe) of every token's cheap pass over
    the context where the tokens in deep (B, T) ran steps_reasoning (None: all cheap)."""
    cfg = model.config
    head = UncertaintyHead(model.token_embedding.weight, controller.top_k_dispersion)
    weights = controller_weights(controller)
    u, p_benefit = [], []
    for rows in passes.chunks(len(inputs), inputs.shape[1] * cfg.vocab_size):
        grid = cfg.steps_base if deep is None else torch.from_numpy(
            np.where(deep[rows], cfg.steps_reasoning, cfg.steps_base))[None].expand(
                cfg.num_blocks, -1, -1)
        _, logits, hidden = solo(model, inputs[rows], cfg.steps_base, context_depth=grid)
        flat_logits, flat_hidden = logits.flatten(0, 1), hidden.flatten(0, 1)
        u.append(head(flat_logits, weights)[3].view(logits.shape[:2]).double().numpy())
        if model.depth_probe is not None:
            p = model.depth_probe(flat_hidden, flat_logits, model.token_embedding.weight)
            p_benefit.append(p.view(logits.shape[:2]).double().numpy())
    return {"u": np.concatenate(u), "p_benefit": np.concatenate(p_benefit) if p_benefit else None}


def bands(signals: dict[str, np.ndarray], u_total: np.ndarray,
          controller: ControllerConfig) -> dict[str, np.ndarray]:
    """{"deep", "mc", "escalated"} bools of the controller for these cheap-pass signals
    (escalated: ran MC, then went deep)."""
    u = signals["u"]
    high = (u >= controller.tau_mid) & (u < controller.tau_high)
    if controller.deep_trigger == "probe":
        if signals["p_benefit"] is None:
            raise ValueError("the controller's deep_trigger is 'probe' but the model has no "
                             "depth probe")
        deep = signals["p_benefit"] >= controller.tau_probe
        return {"deep": deep, "mc": (high | (u >= controller.tau_high)) & ~deep,
                "escalated": np.zeros_like(deep)}
    escalated = high & (u_total >= controller.tau_high)
    return {"deep": (u >= controller.tau_high) | escalated, "mc": high & ~escalated,
            "escalated": escalated}


def decide(model: LanternModel, controller: ControllerConfig, inputs: torch.Tensor,
           mutual_information: np.ndarray) -> dict:
    """The controller's on-policy decisions (fixed point). Returns bands' (B, T) bools,
    "rounds" run, "converged" and "changed_after_first" (share of tokens whose decision the
    adaptive context changed against the all-cheap one)."""
    lam = controller.lambda_epistemic
    signals = cheap_signals(model, controller, inputs, None)
    first = current = bands(signals, signals["u"] + lam * mutual_information, controller)
    rounds, converged = 1, False
    while rounds < MAX_ROUNDS:
        signals = cheap_signals(model, controller, inputs, current["deep"])
        new = bands(signals, signals["u"] + lam * mutual_information, controller)
        rounds += 1
        if np.array_equal(new["deep"], current["deep"]) and np.array_equal(new["mc"], current["mc"]):
            converged = True
            break
        current = new
    changed = (current["deep"] != first["deep"]) | (current["mc"] != first["mc"])
    return {**current, "rounds": rounds,
            "converged": converged, "changed_after_first": float(changed.mean())}
