"""Controller thresholds that force every token into one band, or spread tokens over all four.

Shared by `lantern-edge bench` (cost shape per band) and benchmarks/bench_runtime.py. NumPy and
the runtime only: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INF = float("inf")

# GenerationOptions overrides: U always falls in the named band, whatever the model says.
# (very_high injects THINK while the global KV buffer has room when the model's inject_think
# default says so, and otherwise continues the token to steps_reasoning.)
FORCED = {
    "confident": dict(adaptive=True, tau_low=INF, tau_mid=INF, tau_high=INF),
    "moderate": dict(adaptive=True, tau_low=-INF, tau_mid=INF, tau_high=INF),
    "high": dict(adaptive=True, tau_low=-INF, tau_mid=-INF, tau_high=INF),
    "very_high": dict(adaptive=True, tau_low=-INF, tau_mid=-INF, tau_high=-INF),
}

# What each band adds to the cheap pass (README "How the controller decides").
BAND_WORK = {
    "confident": "cheap pass + uncertainty head",
    "moderate": "cheap pass + refined sampling",
    "high": "+ one MC-dropout call (S samples) and an S-row LM head",
    "very_high": "+ THINK at steps_reasoning, or the token continued to steps_reasoning "
                 "(docs/DEPTH.md)",
}


def calibrated(runtime, prompt: Sequence[int], tokens: int,
               quantiles: Sequence[float] = (0.4, 0.7, 0.9)) -> dict[str, float]:
    """Thresholds at quantiles of U measured on a greedy continuation of `prompt`.

    Every token is forced confident (so the continuation does not depend on the thresholds
    being measured) and its U recorded; tau_low/mid/high go at the given quantiles, so each
    band fires on this text, the way README "Tuning" suggests setting them.

    Args:
        runtime: a lantern_edge.Runtime.
        prompt: prompt token ids.
        tokens: new tokens to measure U on.
        quantiles: three increasing quantiles for tau_low, tau_mid, tau_high.

    Returns:
        dict: tau_low, tau_mid, tau_high (GenerationOptions overrides).
    """
    probe = runtime.generate(list(prompt), max_new_tokens=tokens, ignore_eos=True,
                             **FORCED["confident"])
    low, mid, high = np.quantile([t.u for t in probe.trace], list(quantiles))
    return dict(tau_low=float(low), tau_mid=float(mid), tau_high=float(high))
