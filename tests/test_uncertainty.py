"""uncertainty.onnx and its torch reference vs a NumPy computation of the same signals."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lantern_edge.export.graphs import uncertainty_graph
from lantern_edge.model.uncertainty import UncertaintyHead

VOCAB, HIDDEN, TOP_K = 64, 32, 10
WEIGHTS = np.array([1.0, 0.5, 0.5], np.float32)
NAMES = ("entropy", "p_max", "dispersion", "score")


def numpy_signals(logits, embedding, top_k, weights):
    """float64 NumPy statement of docs/ARTIFACTS.md: entropy (nats), p_max, top-k dispersion
    (probabilities renormalised over the top k), score = a*H + b*D - c*p_max."""
    x = logits.astype(np.float64)
    z = x - x.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    entropy = -plogp.sum(-1)
    p_max = p.max(-1)
    top = np.argsort(-x, -1, kind="stable")[:, :top_k]
    w = np.take_along_axis(p, top, -1)
    w = w / w.sum(-1, keepdims=True)
    e = embedding.astype(np.float64)[top]                                  # (N, k, C)
    mean = (w[..., None] * e).sum(1, keepdims=True)
    dispersion = (w * ((e - mean) ** 2).sum(-1)).sum(-1)
    a, b, c = weights.astype(np.float64)
    return dict(zip(NAMES, (entropy, p_max, dispersion, a * entropy + b * dispersion - c * p_max)))


@pytest.fixture(scope="module")
def embedding():
    return np.random.default_rng(0).normal(0, 1, (VOCAB, HIDDEN)).astype(np.float32)


@pytest.fixture(scope="module", params=[17, 18])
def graph(request, embedding):
    model = uncertainty_graph(torch.from_numpy(embedding), TOP_K, request.param)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(logits, weights=WEIGHTS):
        out = session.run(None, {"logits": np.asarray(logits, np.float32), "weights": weights})
        return dict(zip(NAMES, out))
    return run


def torch_signals(embedding, logits, weights=WEIGHTS):
    head = UncertaintyHead(torch.from_numpy(embedding), TOP_K)
    out = head(torch.from_numpy(np.asarray(logits, np.float32)), torch.from_numpy(weights))
    return {name: t.numpy() for name, t in zip(NAMES, out)}


def random_logits(seed, rows=32, scale=3.0):
    return (np.random.default_rng(seed).normal(0, scale, (rows, VOCAB))).astype(np.float32)


def peaked_logits(seed, rows=32):
    """One candidate 12-30 logits above the rest: p_max near 1, entropy small but not 0."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (rows, VOCAB)).astype(np.float32)
    logits[np.arange(rows), rng.integers(0, VOCAB, rows)] += rng.uniform(12, 30, rows)
    return logits


def assert_close(got, want, rtol=1e-5):
    """Relative error <= rtol per value; values below float32 resolution of the signal (entropy
    and dispersion of near-one-hot rows, ~1e-7) are compared with an absolute 1e-6."""
    for name in NAMES:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("make", [random_logits, peaked_logits])
def test_graph_and_torch_match_numpy(graph, embedding, make):
    logits = make(0)
    want = numpy_signals(logits, embedding, TOP_K, WEIGHTS)
    assert_close(graph(logits), want)
    assert_close(torch_signals(embedding, logits), want)


def test_peaked_rows_are_confident(graph, embedding):
    got = graph(peaked_logits(1))
    assert (got["p_max"] > 0.99).all() and (got["entropy"] < 0.1).all()


def test_score_uses_the_weights_input(graph, embedding):
    logits = random_logits(2, rows=4)
    weights = np.array([0.3, -2.0, 4.0], np.float32)
    got = graph(logits, weights)
    assert_close(got, numpy_signals(logits, embedding, TOP_K, weights))


def _check_finite_and_sane(got):
    for name in NAMES:
        assert np.isfinite(got[name]).all(), (name, got[name])
    assert (got["entropy"] >= -1e-6).all() and (got["entropy"] <= np.log(VOCAB) + 1e-5).all()
    assert ((got["p_max"] > 0) & (got["p_max"] <= 1 + 1e-6)).all()
    assert (got["dispersion"] >= 0).all()


@pytest.mark.parametrize("scale", [1e6, 1e30, 3e38])
def test_huge_logits_stay_finite(graph, embedding, scale):
    with np.errstate(over="ignore"):                               # 3e38 * N(0, 1) -> +-inf
        logits = random_logits(3, rows=8, scale=1.0) * np.float32(scale)
    logits[0] = np.float32(3e38)                                   # ties at the largest float
    logits[1, ::2] = np.float32(-3e38)
    got = graph(logits)
    _check_finite_and_sane(got)
    if scale == 1e30:                                              # one-hot in float32
        assert np.allclose(got["p_max"][2:], 1.0) and np.allclose(got["entropy"][2:], 0.0)
    _check_finite_and_sane(torch_signals(embedding, logits))


@pytest.mark.parametrize("value", [0.0, -7.5, 1e30])
def test_all_equal_logits_are_uniform(graph, embedding, value):
    got = graph(np.full((3, VOCAB), value, np.float32))
    _check_finite_and_sane(got)
    np.testing.assert_allclose(got["entropy"], np.log(VOCAB), rtol=1e-6)
    np.testing.assert_allclose(got["p_max"], 1.0 / VOCAB, rtol=1e-6)


def test_minus_inf_entries(graph, embedding):
    logits = random_logits(4, rows=6)
    logits[0, 1::2] = -np.inf                                      # half the vocabulary banned
    logits[1, 1:] = -np.inf                                        # a single candidate left
    logits[2, TOP_K // 2:] = -np.inf                               # fewer candidates than top k
    logits[3, 0] = np.inf                                          # +inf wins outright
    got = graph(logits)
    _check_finite_and_sane(got)
    assert got["entropy"][1] == 0 and got["p_max"][1] == 1 and got["dispersion"][1] == 0
    assert got["p_max"][3] == 1 and got["dispersion"][3] == 0
    finite = [0, 2, 4, 5]
    want = numpy_signals(logits[finite], embedding, TOP_K, WEIGHTS)
    assert_close({k: v[finite] for k, v in got.items()}, want)
    _check_finite_and_sane(torch_signals(embedding, logits))


def test_top_k_is_validated(embedding):
    for k in (0, VOCAB + 1):
        with pytest.raises(ValueError, match="top_k_dispersion"):
            uncertainty_graph(torch.from_numpy(embedding), k, 18)
        with pytest.raises(ValueError, match="top_k_dispersion"):
            UncertaintyHead(torch.from_numpy(embedding), k)


def test_exported_uncertainty_graph_uses_the_tied_embedding(random_artifacts, random_model):
    session = ort.InferenceSession(str(random_artifacts / "uncertainty.onnx"))
    logits = random_logits(5, rows=8)
    got = dict(zip(NAMES, session.run(None, {"logits": logits, "weights": WEIGHTS})))
    embedding = random_model.token_embedding.weight.detach().numpy()
    assert_close(got, numpy_signals(logits, embedding, TOP_K, WEIGHTS))
