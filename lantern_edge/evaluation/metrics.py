"""Scoring metrics for uncertainty signals: AUROC, calibration (ECE), prediction-rejection ratio.

Pure NumPy. Ties are handled exactly (average ranks, expected rejection order), so a constant
score is exactly "random" (AUROC 0.5, PRR 0) rather than depending on the input order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check_pair(scores: np.ndarray, labels: np.ndarray, label_name: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and {label_name} must have the same length, got "
                         f"{scores.size} and {labels.size}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite (no NaN or inf)")
    return scores, labels


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of values, ties sharing the mean of their ranks (as scipy's rankdata)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # start index of each run of equal values, and the run each sorted element belongs to
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + 1 + ends) / 2.0                 # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of scores for the binary labels (higher score = positive).

    The Mann-Whitney statistic: the probability that a random positive scores above a random
    negative, ties counting one half.

    Args:
        scores: (N,) finite floats.
        labels: (N,) bools or 0/1.

    Returns:
        AUROC in [0, 1]; NaN when all labels are equal (the area is undefined).
    """
    scores, labels = _check_pair(scores, labels, "labels")
    positive = labels.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass
class Reliability:
    """Equal-width confidence bins: what a reliability diagram draws."""

    edges: np.ndarray          # (bins + 1,) from 0 to 1
    confidence: np.ndarray     # (bins,) mean confidence in each bin (NaN when empty)
    accuracy: np.ndarray       # (bins,) share correct in each bin (NaN when empty)
    counts: np.ndarray         # (bins,) samples in each bin
    ece: float                 # sum_b (n_b / N) |accuracy_b - confidence_b|


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> Reliability:
    """Expected calibration error and the per-bin numbers of a reliability diagram.

    Args:
        confidence: (N,) predicted probability of the top-1 prediction, in [0, 1].
        correct: (N,) whether the top-1 prediction was right.
        bins: equal-width bins over [0, 1]; a confidence of exactly 1 falls in the last one.

    Returns:
        Reliability with the bins and the ECE.
    """
    confidence, correct = _check_pair(confidence, correct, "correct")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if len(confidence) == 0:
        raise ValueError("reliability needs at least one sample")
    if confidence.min() < 0 or confidence.max() > 1:
        raise ValueError("confidence must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    correct = correct.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, confidence, bins) / counts
        accuracy = np.bincount(index, correct, bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] / len(confidence)
                       * np.abs(accuracy[filled] - mean_conf[filled])))
    return Reliability(edges, mean_conf, accuracy, counts, ece)


def rejection_curve(scores: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Mean loss over all N samples after rejecting the k highest-scored ones, k = 0..N.

    A rejected sample counts as loss 0 (it goes to a fallback). Within a run of tied scores the
    rejection order is random, so the curve there is the expectation: linear across the run.

    Args:
        scores: (N,) uncertainty, higher = reject first.
        losses: (N,) non-negative losses (e.g. 0/1 top-1 error).

    Returns:
        (N + 1,) floats, from mean(losses) at k = 0 down to 0 at k = N.
    """
    scores, losses = _check_pair(scores, losses, "losses")
    losses = losses.astype(np.float64)
    n = len(scores)
    order = np.argsort(-scores, kind="mergesort")
    s, l_sorted = scores[order], losses[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], n]
    run_sums = np.add.reduceat(l_sorted, starts) if n else np.zeros(0)
    # removed loss after k rejections: whole earlier runs, plus a share of the current run
    run_of = np.repeat(np.arange(len(starts)), ends - starts)
    before = np.r_[0.0, np.cumsum(run_sums)][run_of]
    within = (np.arange(n) - starts[run_of] + 1) / (ends - starts)[run_of]
    removed = np.r_[0.0, before + within * run_sums[run_of]]
    return (losses.sum() - removed) / max(n, 1)


def prediction_rejection_ratio(scores: np.ndarray, losses: np.ndarray) -> float:
    """PRR: area between the random and the score's rejection curves, divided by the area
    between the random and the oracle's (reject the largest losses first).

    0 = no better than rejecting at random, 1 = as good as the oracle, < 0 = worse than random.

    Args:
        scores: (N,) uncertainty, higher = reject first.
        losses: (N,) non-negative losses (e.g. 0/1 top-1 error).

    Returns:
        PRR; NaN when every loss is equal (the oracle is no better than random).
    """
    scores, losses = _check_pair(scores, losses, "losses")
    losses = losses.astype(np.float64)
    if len(losses) == 0:
        raise ValueError("prediction_rejection_ratio needs at least one sample")
    random_area = np.mean(np.linspace(losses.mean(), 0.0, len(losses) + 1))
    model_area = np.mean(rejection_curve(scores, losses))
    oracle_area = np.mean(rejection_curve(losses, losses))
    if np.isclose(random_area, oracle_area, rtol=0, atol=1e-15):
        return float("nan")
    return float((random_area - model_area) / (random_area - oracle_area))


def cluster_bootstrap_ci(values: np.ndarray, clusters: np.ndarray, resamples: int = 1000,
                         seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of values with a percentile confidence interval, resampling whole clusters.

    Tokens of one text window are correlated, so windows (not tokens) are resampled.

    Args:
        values: (N,) per-sample values (e.g. a paired accuracy difference in {-1, 0, 1}).
        clusters: (N,) integer cluster id of each sample.
        resamples: bootstrap resamples.
        seed: seed of the resampling generator.
        level: coverage of the interval.

    Returns:
        (mean, low, high).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    clusters = np.asarray(clusters).ravel()
    if values.shape != clusters.shape or len(values) == 0:
        raise ValueError("values and clusters must be non-empty and of the same length")
    ids, inverse = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inverse, values, len(ids))
    sizes = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(resamples, len(ids)))
    means = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(values.mean()), float(low), float(high)
