"""Summaries of per-token timings, and the interpolation that completes a time-boxed run.

NumPy only. A "latency" is the wall time from one token being decided to the next one being
decided (feeding the previous token plus deciding this one), as in the runtime's trace.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_summary(microseconds: Sequence[float], decode_seconds: float | None = None) -> dict:
    """Median, p90, mean and max per-token latency, and decode tokens/s.

    Args:
        microseconds: per-token latencies (us).
        decode_seconds: wall time of the decode loop (prefill excluded); None: the sum of the
            latencies.

    Returns:
        dict: tokens, tok_s, us_mean, us_median, us_p90, us_max (0 for an empty run).
    """
    values = np.asarray(microseconds, dtype=np.float64)
    if values.size == 0:
        return dict(tokens=0, tok_s=0.0, us_mean=0.0, us_median=0.0, us_p90=0.0, us_max=0.0)
    seconds = float(values.sum()) / 1e6 if decode_seconds is None else decode_seconds
    return dict(tokens=int(values.size),
                tok_s=values.size / seconds if seconds > 0 else 0.0,
                us_mean=float(values.mean()), us_median=float(np.median(values)),
                us_p90=float(np.percentile(values, 90)), us_max=float(values.max()))


def sample_lengths(first: int, last: int, count: int) -> list[int]:
    """Up to `count` distinct sequence lengths spread evenly over [first, last], both included."""
    if last < first:
        return []
    return sorted({int(round(x)) for x in np.linspace(first, last, max(count, 1))} | {last})


def interpolate_tail(known_lengths: Sequence[int], known_us: Sequence[float],
                     tail_lengths: Sequence[int]) -> list[float]:
    """Per-token cost at `tail_lengths`, interpolated linearly in sequence length.

    The cost of one full-recompute step depends on the sequence length only (not on which
    tokens are in it), and grows smoothly with it (linear layers ~L, attention ~L^2), so a
    piecewise-linear interpolation between timed lengths that bracket the tail is close.

    Args:
        known_lengths: sequence lengths that were timed (increasing after sorting).
        known_us: their per-step cost in microseconds.
        tail_lengths: lengths to estimate; must lie within the timed range.

    Returns:
        list[float]: estimated microseconds per step, one per tail length.

    Raises:
        ValueError: a tail length outside the timed range (that would be extrapolation).
    """
    order = np.argsort(known_lengths)
    xs = np.asarray(known_lengths, dtype=np.float64)[order]
    ys = np.asarray(known_us, dtype=np.float64)[order]
    tail = np.asarray(tail_lengths, dtype=np.float64)
    if tail.size and (tail.min() < xs[0] or tail.max() > xs[-1]):
        raise ValueError(f"tail lengths [{tail.min():.0f}, {tail.max():.0f}] are outside the "
                         f"timed lengths [{xs[0]:.0f}, {xs[-1]:.0f}]: time the ends too")
    return np.interp(tail, xs, ys).tolist()
