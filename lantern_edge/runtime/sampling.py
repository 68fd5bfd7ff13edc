"""Choosing a token from logits: greedy, temperature, top-k, top-p, min-p, repetition rules;
seeded NumPy generator."""

from __future__ import annotations

import numpy as np


# Below this a temperature means greedy: logits / 1e-45 overflow float32 to inf, and inf - inf
# is NaN; the limit of sampling as the temperature falls is the argmax anyway.
MIN_TEMPERATURE = 1e-4


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def probability(logits: np.ndarray, token: int) -> float:
    """softmax(logits)[token] of one row [V], the same float, without dividing every entry."""
    e = np.exp(logits - logits.max())
    return float(e[token] / e.sum())


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row; 0 * log 0 counts as 0."""
    logp = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logp).sum(axis=-1)


def mc_summary(probabilities: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean probabilities p_bar [V] (float64) of S sampled distributions [S, V] (float32, each
    row a softmax: the LM head computes them in the same call as the logits), and their mutual
    information H(p_bar) - mean_s H(p_s) in nats (the epistemic score, >= 0).

    The S entropies' logs are taken in float32 (log dominates the cost; a zero probability
    counts 0 * log(tiny) = 0, tiny the smallest normal float32, so that a denormals-are-zero
    mode cannot turn it into 0 * log 0); sums and the mean distribution are accumulated in
    float64.
    """
    log_probs = np.log(np.maximum(probabilities, np.finfo(np.float32).tiny))
    sample_entropy = -np.einsum("sv,sv->s", probabilities, log_probs, dtype=np.float64)
    mean = probabilities.mean(axis=0, dtype=np.float64)
    mean /= mean.sum()
    information = float(entropy(mean) - sample_entropy.mean())
    return mean, max(information, 0.0)       # rounding can leave -1e-9 where they agree


def filter_logits(logits: np.ndarray, top_k: int | None, top_p: float | None,
                  min_p: float | None = None) -> np.ndarray:
    """-inf outside the top-k / nucleus / min-p set; always keeps the most likely token."""
    out = logits.astype(np.float32, copy=True)
    if min_p is not None and min_p > 0:
        # p >= min_p * p_max  <=>  logit >= max + log(min_p)
        out[out < out.max() + np.log(min_p)] = -np.inf
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


def penalize(logits: np.ndarray, history: list[int], repetition_penalty: float,
             no_repeat_ngram_size: int) -> np.ndarray:
    """Logits with Hugging Face's repetition rules applied over `history` (prompt + output ids):
    a seen token's logit is divided by the penalty when positive, multiplied when negative
    (CTRL); a token that would complete an n-gram already in history gets -inf."""
    if repetition_penalty == 1.0 and not no_repeat_ngram_size:
        return logits
    out = logits.astype(np.float32, copy=True)
    if repetition_penalty != 1.0 and history:
        seen = np.unique(np.asarray(history, np.int64))
        values = out[seen]
        out[seen] = np.where(values > 0, values / repetition_penalty, values * repetition_penalty)
    n = no_repeat_ngram_size
    if n and len(history) >= n:
        prefix = tuple(history[len(history) - n + 1:])
        banned = [history[i + n - 1] for i in range(len(history) - n + 1)
                  if tuple(history[i:i + n - 1]) == prefix]
        out[banned] = -np.inf
    return out


def top_logprobs(probs: np.ndarray, n: int) -> list[tuple[int, float]]:
    """The n most likely (id, logprob) of a distribution, most likely first."""
    if n <= 0:
        return []
    ids = np.argpartition(-probs, min(n, len(probs) - 1))[:n]
    ids = ids[np.argsort(-probs[ids], kind="stable")]
    return [(int(i), float(np.log(max(probs[i], 1e-45)))) for i in ids]


def choose(logits: np.ndarray, do_sample: bool, temperature: float, top_k: int | None,
           top_p: float | None, rng: np.random.Generator, suppress: int | None = None,
           min_p: float | None = None) -> int:
    """A token id from logits [V]: argmax, or a seeded draw after temperature, top-k, top-p,
    min-p.

    suppress: an id never chosen (the THINK token, which only the controller may inject).
    A temperature below MIN_TEMPERATURE decodes greedily.
    """
    if not do_sample or temperature < MIN_TEMPERATURE:
        token = int(logits.argmax())
        if token != suppress:
            return token
        masked = logits.copy()
        masked[suppress] = -np.inf
        return int(masked.argmax())
    scaled = logits / np.float32(temperature)           # a new array: safe to mask in place
    if suppress is not None:
        scaled[suppress] = -np.inf
    filtered = filter_logits(scaled, top_k, top_p, min_p)
    probs = softmax(filtered.astype(np.float64))
    return int(rng.choice(len(probs), p=probs))
