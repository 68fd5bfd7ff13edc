"""Choosing a token from logits: greedy, temperature, top-k, top-p; seeded NumPy generator."""

from __future__ import annotations

import numpy as np


# Below this a temperature means greedy: logits / 1e-45 overflow float32 to inf, and inf - inf
# is NaN; the limit of sampling as the temperature falls is the argmax anyway.
MIN_TEMPERATURE = 1e-4


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row; 0 * log 0 counts as 0."""
    logp = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logp).sum(axis=-1)


def mc_summary(logits: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean probabilities p_bar [V] (float64) of S sampled distributions given as logits [S, V],
    and their mutual information H(p_bar) - mean_s H(p_s) in nats (the epistemic score, >= 0).

    The S log-softmaxes are computed in float32 (exp/log dominate the cost); sums and the mean
    distribution are accumulated in float64.
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    probs = np.exp(log_probs)
    sample_entropy = -(probs * log_probs).sum(axis=-1, dtype=np.float64)
    mean = probs.mean(axis=0, dtype=np.float64)
    mean /= mean.sum()
    information = float(entropy(mean) - sample_entropy.mean())
    return mean, max(information, 0.0)       # rounding can leave -1e-9 where they agree


def filter_logits(logits: np.ndarray, top_k: int | None, top_p: float | None) -> np.ndarray:
    """-inf outside the top-k / nucleus; always keeps the most likely token."""
    out = logits.astype(np.float32, copy=True)
    if top_k is not None and top_k < len(out):
        cutoff = np.partition(out, -top_k)[-top_k]
        out[out < cutoff] = -np.inf
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-out)
        probs = softmax(out[order])
        keep = np.cumsum(probs) - probs < top_p      # mass before this token is still short
        keep[0] = True                               # rounding must not drop the top token
        out[order[~keep]] = -np.inf
    return out


def choose(logits: np.ndarray, do_sample: bool, temperature: float, top_k: int | None,
           top_p: float | None, rng: np.random.Generator, suppress: int | None = None) -> int:
    """A token id from logits [V]: argmax, or a seeded draw after temperature, top-k, top-p.

    suppress: an id never chosen (the THINK token, which only the controller may inject).
    A temperature below MIN_TEMPERATURE decodes greedily.
    """
    if not do_sample or temperature < MIN_TEMPERATURE:
        token = int(np.argmax(logits))
        if token != suppress:
            return token
        masked = logits.copy()
        masked[suppress] = -np.inf
        return int(np.argmax(masked))
    scaled = logits / np.float32(temperature)           # a new array: safe to mask in place
    if suppress is not None:
        scaled[suppress] = -np.inf
    filtered = filter_logits(scaled, top_k, top_p)
    probs = softmax(filtered.astype(np.float64))
    return int(rng.choice(len(probs), p=probs))
