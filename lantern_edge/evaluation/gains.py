"""Where the gain of extra depth comes from, and adaptive against fixed depth at equal cost.

- decomposition: the accuracy a deep action adds on a set of tokens is exactly
  share_deep x P(change) x [P(fix | change) - P(break | change)]: how many tokens go deep, how
  often going deep changes their top-1, and whether a change is more often a fix than a break.
- fix_given_change: AUROC of every signal for "fixes" among the tokens whose top-1 the deep
  action changes (a trigger that finds changes but not which way they go is useless).
- adaptive_vs_fixed: the default controller's accuracy and NLL at its measured cost c against
  fixed depth interpolated at c between its neighbouring depths, paired per token, with 95%
  intervals resampling whole windows.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import auroc, cluster_bootstrap_ci


def decomposition(deep: np.ndarray, base_correct: np.ndarray, base_top1: np.ndarray,
                  deep_top1: np.ndarray, deep_correct: np.ndarray) -> dict:
    """The gain factors of sending the tokens in deep (flat bools) to the deep action."""
    deep = np.asarray(deep, bool)
    change = deep & (deep_top1 != base_top1)
    fix, brk = change & ~base_correct & deep_correct, change & base_correct & ~deep_correct
    n, n_change = len(deep), int(change.sum())
    share, p_change = deep.mean(), (n_change / deep.sum() if deep.any() else 0.0)
    p_fix = fix.sum() / n_change if n_change else 0.0
    p_break = brk.sum() / n_change if n_change else 0.0
    return {"share_deep": float(share), "p_change": float(p_change), "p_fix_given_change":
            float(p_fix), "p_break_given_change": float(p_break),
            "gain": float(share * p_change * (p_fix - p_break)),
            "measured_gain": float((fix.sum() - brk.sum()) / n), "tokens": n,
            "changes": n_change}


def fix_given_change(columns: dict[str, np.ndarray], names: list[str], action: str) -> dict:
    """{signal: AUROC for "fixes" among the tokens the action changes}, and the counts."""
    change = columns[f"top1_{action}"] != columns["top1_base"]
    fixes = change & columns[f"correct_{action}"]
    table = {name: auroc(columns[name][change], fixes[change]) for name in names}
    return {"auroc": table, "changes": int(change.sum()), "fixes": int(fixes.sum())}


def adaptive_vs_fixed(cost: float, correct: np.ndarray, nll: np.ndarray,
                      columns: dict[str, np.ndarray], steps_reasoning: int, seed: int) -> dict:
    """The summary block: top-1 in percent, deltas in points, NLL in nats per token.

    Fixed depth at cost c is the per-token mix (1 - w) * depth floor(c) + w * depth ceil(c),
    w = c - floor(c) (the line between the neighbouring fixed-depth points), clamped to
    depths 1..steps_reasoning.
    """
    c = min(max(cost, 1.0), float(steps_reasoning))
    low, high = int(math.floor(c)), int(math.ceil(c))
    w = c - low
    fixed_correct = ((1 - w) * columns[f"correct_d{low}"].astype(np.float64)
                     + w * columns[f"correct_d{high}"].astype(np.float64))
    fixed_nll = (1 - w) * columns[f"nll_d{low}"] + w * columns[f"nll_d{high}"]
    windows = columns["window"]
    d_top1 = cluster_bootstrap_ci(100 * (correct.astype(np.float64) - fixed_correct), windows,
                                  seed=seed)
    d_nll = cluster_bootstrap_ci(nll - fixed_nll, windows, seed=seed)
    return {"cost": float(cost), "adaptive_top1": float(100 * correct.mean()),
            "adaptive_nll": float(nll.mean()), "fixed_top1": float(100 * fixed_correct.mean()),
            "fixed_nll": float(fixed_nll.mean()), "delta_top1": d_top1[0],
            "delta_top1_ci95": [d_top1[1], d_top1[2]], "delta_nll": d_nll[0],
            "delta_nll_ci95": [d_nll[1], d_nll[2]], "tokens": int(len(correct)),
            "fixed_depths": [low, high], "fixed_weight": float(w),
            "clamped": bool(c != cost)}
