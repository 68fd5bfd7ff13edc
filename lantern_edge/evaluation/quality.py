"""How good each uncertainty signal is: AUROC for errors and for the effect of extra compute,
calibration of p_max, and risk-coverage (PRR), from the per-token columns of signals.collect.
"""

from __future__ import annotations

import numpy as np

from .gains import decomposition as gains_decomposition
from .gains import fix_given_change
from .metrics import auroc, prediction_rejection_ratio, rejection_curve, reliability
from .signals import SIGNALS, signal_names

RELIABILITY_BINS = 15


def targets(columns: dict[str, np.ndarray], steps_base: int) -> dict[str, tuple[str, np.ndarray]]:
    """Binary events a controller could want to predict: name -> (label, per-token bools).

    "changes": extra compute gives a different top-1 than the cheap pass; "fixes": the cheap
    top-1 was wrong and the extra compute's is right (what a compute controller needs).
    """
    wrong = ~columns[f"correct_d{steps_base}"]
    events = {"error": ("top-1 wrong", wrong)}
    names = {"deepened": "continued deep", "think": "THINK + deep", "mc": "MC averaging"}
    for action, label in names.items():
        if f"top1_{action}" not in columns:
            continue
        changes = columns[f"top1_{action}"] != columns["top1_base"]
        events[f"{action}_changes"] = (f"{label} changes top-1", changes)
        events[f"{action}_fixes"] = (f"{label} fixes top-1", wrong & columns[f"correct_{action}"])
    return events


def signal_quality(columns: dict[str, np.ndarray], steps_base: int) -> dict:
    """AUROC table, ECE with its reliability bins, PRR and risk-coverage curves.

    Returns:
        JSON-ready dict: "events" (label, positive rate, count), "auroc" {signal: {event: x}},
        "prr" {signal: x}, "ece", "reliability" (bins), "risk_coverage" (curves for plots),
        "effect" (how often each extra-compute action fixes or breaks the top-1).
    """
    events = targets(columns, steps_base)
    names = signal_names(columns)
    wrong = events["error"][1]
    table = {name: {event: auroc(columns[name], labels) for event, (_, labels) in events.items()}
                for name in names}
    calibration = reliability(columns["confidence"], ~wrong, RELIABILITY_BINS)
    errors = wrong.astype(np.float64)
    prr = {name: prediction_rejection_ratio(columns[name], errors) for name in names}
    n = len(errors)
    coverage = 1.0 - np.arange(n + 1) / n
    curves = {"coverage": _thin(coverage)}
    for name in ("composite", "entropy"):
        curves[name] = _thin(_selective_risk(rejection_curve(columns[name], errors), coverage))
    curves["random"] = _thin(np.full(n + 1, errors.mean()))
    curves["oracle"] = _thin(_selective_risk(rejection_curve(errors, errors), coverage))
    effect = {}
    for action in ("deepened", "think", "mc"):
        if f"correct_{action}" in columns:
            right = columns[f"correct_{action}"]
            effect[action] = {"accuracy": float(right.mean()),
                              "fixes": float((wrong & right).mean()),
                              "breaks": float((~wrong & ~right).mean()),
                              "changes": float((columns[f"top1_{action}"] != columns["top1_base"]).mean()),
                              "loss": float(columns[f"nll_{action}"].mean())}
    fix_change = {action: fix_given_change(columns, names, action)
                  for action in ("deepened", "think") if f"top1_{action}" in columns}
    everyone = np.ones(n, dtype=bool)
    decomposition = {action: gains_decomposition(everyone, ~wrong, columns["top1_base"],
                                                 columns[f"top1_{action}"],
                                                 columns[f"correct_{action}"])
                     for action in fix_change}
    return {
        "tokens": n,
        "fix_given_change": fix_change,
        "decomposition_all_tokens": decomposition,
        "signals": {name: SIGNALS[name] for name in names},
        "events": {event: {"label": label, "rate": float(labels.mean()), "count": int(labels.sum())}
                   for event, (label, labels) in events.items()},
        "auroc": table,
        "prr": prr,
        "ece": calibration.ece,
        "accuracy_base": float((~wrong).mean()),
        "mean_confidence": float(columns["confidence"].mean()),
        "reliability": {"edges": calibration.edges.tolist(),
                        "confidence": calibration.confidence.tolist(),
                        "accuracy": calibration.accuracy.tolist(),
                        "counts": calibration.counts.tolist()},
        "risk_coverage": curves,
        "effect": effect,
    }


def _selective_risk(curve: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Error rate among the kept tokens: curve is kept loss over all N (rejection_curve)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        risk = curve / coverage
    risk[coverage == 0] = 0.0
    return risk


def _thin(values: np.ndarray, points: int = 101) -> list[float]:
    """At most `points` evenly spaced samples of a curve (the JSON stays small)."""
    index = np.linspace(0, len(values) - 1, min(points, len(values))).round().astype(int)
    return [round(float(v), 6) for v in values[index]]
