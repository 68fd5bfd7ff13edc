"""THINK utility: on the tokens the controller sends deep, deep recursion through a THINK token
vs deep recursion alone vs the cheap pass; and how much attention later tokens pay to THINKs.

The comparison uses each token's isolated counterfactuals (signals.collect). The attention
statistics come from one joint pass with the shipped controller's THINK tokens in place: for
every cheap token after a THINK, the attention mass on THINK keys (mean over heads, blocks and
the cheap iterations), against the mass uniform attention over its visible keys would give.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..model.config import ControllerConfig
from ..model.modeling import LanternModel, visibility
from . import passes
from .compute import shipped_bands
from .metrics import cluster_bootstrap_ci

# distance from a query back to a THINK key, in positions: bins [low, high) with edges as
# multiples of the window; the last bin, >= window, is what a THINK reaches only as a global
DISTANCE_EDGES = (0.125, 0.25, 0.5, 1.0)


def utility(columns: dict[str, np.ndarray], controller: ControllerConfig, steps_base: int,
            seed: int = 0) -> dict:
    """Accuracy and loss of base / deepened / THINK on the controller's deep tokens and on all.

    Returns:
        {"deep_tokens": count, "rows": [{"group", "action", "tokens", "accuracy", "loss",
        "versus_base": paired accuracy difference (mean, low, high), windows resampled}]}.
    """
    deep = shipped_bands(columns, controller)["deep"]
    groups = {"sent deep by the controller": deep, "all tokens": np.ones_like(deep)}
    actions = {"base (steps_base)": f"d{steps_base}", "deep recursion alone": "deepened",
               "THINK + deep recursion": "think"}
    base = columns[f"correct_d{steps_base}"].astype(np.float64)
    rows = []
    for group, mask in groups.items():
        for label, key in actions.items():
            correct, nll = columns.get(f"correct_{key}"), columns.get(f"nll_{key}")
            if correct is None:
                continue
            count = int(mask.sum())
            row = {"group": group, "action": label, "tokens": count,
                   "accuracy": float(correct[mask].mean()) if count else None,
                   "loss": float(nll[mask].mean()) if count else None, "versus_base": None}
            if count:
                row["versus_base"] = list(cluster_bootstrap_ci(
                    correct[mask] - base[mask], columns["window"][mask], seed=seed))
            rows.append(row)
    return {"deep_tokens": int(deep.sum()), "rows": rows}


@torch.no_grad()
def attention_to_think(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor,
                       columns: dict[str, np.ndarray], controller: ControllerConfig) -> dict:
    """Attention later cheap tokens pay to the THINK tokens the shipped controller injects.

    Returns:
        JSON-ready dict: THINKs injected, queries measured, overall mass on THINK keys vs the
        uniform baseline, the mass on position 0 (the other global), and per distance bin the
        mean attention to one THINK key vs uniform.
    """
    cfg = model.config
    if cfg.think_token_id is None:
        return {"available": False, "reason": "the model has no THINK token"}
    deep = shipped_bands(columns, controller)["deep"].reshape(targets.shape)
    edges = [e * cfg.window_size for e in DISTANCE_EDGES] + [math.inf]
    sums = {"think": 0.0, "uniform": 0.0, "first": 0.0, "queries": 0}
    per_bin = np.zeros((len(edges), 3))      # attention, uniform share, count per (query, THINK)

    def keep(rows: slice, plan: passes.Layout, record) -> None:
        ids, think = plan.ids[rows], plan.think[rows]
        depth = plan.depth[rows]
        length = ids.shape[1]
        positions = torch.arange(length)
        glob = model.is_global(ids, positions[None])
        visible = torch.stack([visibility(positions, positions, g, cfg.window_size) for g in glob])
        seen_think = (think[:, None, :] & visible)                               # (B, Tq, K)
        # queries: cheap tokens (not THINK, not past the window's end) with a THINK behind them
        real = torch.zeros_like(think)
        for r, read in enumerate(plan.read[rows]):
            real[r, read] = True
        query = real & ~think & (depth == cfg.steps_base) & seen_think.any(-1)
        if not query.any():
            return
        distance = positions[:, None] - positions[None, :]                      # (Tq, K)
        counts = visible.sum(-1, keepdim=True).double()                         # (B, Tq, 1)
        mass = torch.zeros(visible.shape, dtype=torch.float64)
        sites = [(b, i) for b in range(cfg.num_blocks) for i in range(cfg.steps_base)]
        for site in sites:
            keys, _, q = record[site]
            scores = (q @ keys.transpose(-1, -2)) / math.sqrt(cfg.head_dim)      # (B, H, Tq, K)
            scores = scores.masked_fill(~visible[:, None], float("-inf"))
            mass += torch.softmax(scores.double(), dim=-1).mean(1) / len(sites)
        uniform = visible / counts
        on_think = (mass * seen_think).sum(-1)
        sums["think"] += float(on_think[query].sum())
        sums["uniform"] += float((uniform * seen_think).sum(-1)[query].sum())
        sums["first"] += float(mass[..., 0][query].sum())
        sums["queries"] += int(query.sum())
        pair = query[..., None] & seen_think                                     # (B, Tq, K)
        bins = np.searchsorted(edges, distance.numpy(), side="right")            # (Tq, K)
        for index in range(len(edges)):
            select = pair & torch.from_numpy(bins == index)[None]
            per_bin[index] += (float(mass[select].sum()), float(uniform[select].sum()),
                               int(select.sum()))

    _, plan, _ = passes.adaptive(model, inputs, targets, deep, use_think=True, keep=keep)
    n = max(sums["queries"], 1)
    lows = [0.0] + edges[:-1]
    return {
        "available": True, "thinks": plan.thinks, "queries": sums["queries"],
        "mass_on_thinks": sums["think"] / n, "uniform_mass_on_thinks": sums["uniform"] / n,
        "mass_on_position_0": sums["first"] / n,
        "by_distance": [{"from": low, "to": None if math.isinf(high) else high,
                         "pairs": int(c), "attention": a / c if c else None,
                         "uniform": u / c if c else None}
                        for low, high, (a, u, c) in zip(lows, edges, per_bin)],
    }
