"""Batched decode (pool.py, batching.py) equals unbatched decode, per sequence; the Batcher's
continuous batching, cancel and thread safety; num_return_sequences and the sampling options."""

import threading

import numpy as np
import onnxruntime as ort
import pytest

from lantern_edge import Runtime
from lantern_edge.benchmark.bands import FORCED
from lantern_edge.runtime.batching import Batcher
from lantern_edge.runtime.protobuf import stored_slots_variable

PROMPTS = ["def f(x):", "import os\n", "class A:\n    ", "for i in range(", "x = [",
           "return ", "while True:\n", "print("]
EXACT = ("token_id", "text", "band", "iterations", "deep_iterations", "mc_samples",
         "think_injected", "deepened", "think_skipped")
CLOSE = ("probability", "entropy", "p_max", "dispersion", "u", "u_epistemic", "u_total")


@pytest.fixture(scope="module")
def tiny(tiny_artifacts):
    return Runtime(tiny_artifacts)


def _requests():
    """(prompt, overrides): adaptive on with seeded sampling, every band forced, halting."""
    modes = [FORCED["confident"], FORCED["moderate"], FORCED["high"], FORCED["very_high"],
             dict(use_halting=True, tau_low=-1.0, tau_mid=4.0, tau_high=4.6),
             dict(FORCED["very_high"], inject_think=False), dict(adaptive=False),
             dict(FORCED["high"], use_halting=True, mc_samples=3)]
    return [(prompt, dict(mode, max_new_tokens=12 + 3 * i, ignore_eos=True, seed=i,
                          do_sample=i % 4 != 3, temperature=1.2))
            for i, (prompt, mode) in enumerate(zip(PROMPTS, modes))]


def assert_same_generation(batched, alone):
    assert (batched.token_ids, batched.text, batched.stop_reason) == (
        alone.token_ids, alone.text, alone.stop_reason)
    for a, b in zip(batched.trace, alone.trace):
        assert [getattr(a, f) for f in EXACT] == [getattr(b, f) for f in EXACT]
        for name in CLOSE:          # the batched attention sums over more (all-zero) terms
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None) and (x is None or abs(x - y) <= 1e-4), name


def test_batched_decode_equals_unbatched_per_sequence(tiny):
    requests = _requests()
    alone = [tiny.generate(prompt, **kw) for prompt, kw in requests]
    bands = {t.band for r in alone for t in r.trace}
    assert bands == {None, "confident", "moderate", "high", "very_high"}
    assert any(t.iterations != [2, 2] for r in alone for t in r.trace)        # halting cut some
    # 3 slots for 8 requests of different lengths: requests join and leave between steps
    with Batcher(tiny, max_batch_size=3) as batcher:
        handles = [batcher.submit(prompt, **kw) for prompt, kw in requests]
        streamed = [[t.token_id for t in h] for h in handles]
    for handle, tokens, expected in zip(handles, streamed, alone):
        assert tokens == handle.result.token_ids
        assert_same_generation(handle.result, expected)


def test_the_variable_slot_graph_equals_the_exported_one(tiny_artifacts, tiny):
    cfg = tiny.config
    stored = cfg.window_size + cfg.max_global_tokens
    path = tiny_artifacts / "block0.onnx"
    options = ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(path.parent))
    edited = ort.InferenceSession(stored_slots_variable(path.read_bytes(), stored), options,
                                  providers=["CPUExecutionProvider"])
    exported = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"hidden": rng.standard_normal((1, 1, cfg.hidden_size), np.float32),
             "positions": np.array([9]),
             "past_key": rng.standard_normal((cfg.num_heads, stored, cfg.head_dim), np.float32),
             "past_value": rng.standard_normal((cfg.num_heads, stored, cfg.head_dim), np.float32),
             "attn_bias": np.where(rng.random((1, stored + 1)) < 0.5, 0, -np.inf).astype(np.float32)}
    for a, b in zip(exported.run(None, feeds),
                    edited.run(None, {**feeds, "stored_slots": np.array([stored])})):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="does not split attention at one constant K=7"):
        stored_slots_variable(path.read_bytes(), 7)


def test_cancel_frees_the_slot_for_the_next_request(tiny):
    with Batcher(tiny, max_batch_size=1) as batcher:
        long = batcher.submit("def f(x):", max_new_tokens=200, ignore_eos=True)
        waiting = batcher.submit("x = [", max_new_tokens=5, ignore_eos=True)
        never = batcher.submit("y = 1", max_new_tokens=5)
        never.cancel()                                       # before it got a slot
        tokens = iter(long)
        first = [next(tokens).token_id for _ in range(3)]
        long.cancel()
        rest = list(tokens)
        assert [t.token_id for t in waiting] == tiny.generate(
            "x = [", max_new_tokens=5, ignore_eos=True).token_ids
    assert long.stop_reason == "cancelled" and long.result.token_ids[:3] == first
    assert len(first) + len(rest) < 200 and waiting.stop_reason == "max_new_tokens"
    assert list(never) == [] and never.stop_reason == "cancelled" and never.result is None


def test_batcher_takes_requests_from_many_threads(tiny):
    expected = {i: tiny.generate(PROMPTS[i], max_new_tokens=8, seed=i, do_sample=True).token_ids
                for i in range(8)}
    got = {}
    with Batcher(tiny, max_batch_size=4) as batcher:
        def client(i):
            handle = batcher.submit(PROMPTS[i], max_new_tokens=8, seed=i, do_sample=True)
            got[i] = [t.token_id for t in handle]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got == expected
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("x")


def test_num_return_sequences_are_the_seeded_single_runs(tiny):
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, ignore_eos=True,
              **FORCED["high"])
    results = tiny.generate("def f(x):", num_return_sequences=3, seed=7, **kw)
    assert len(results) == 3
    for k, result in enumerate(results):
        assert_same_generation(result, tiny.generate("def f(x):", seed=7 + k, **kw))
    assert len({tuple(r.token_ids) for r in results}) > 1
    with pytest.raises(ValueError, match="num_return_sequences must be 1 with greedy"):
        tiny.generate("x", num_return_sequences=2)
    with pytest.raises(ValueError, match="num_return_sequences must be 1 for stream"):
        tiny.stream("x", num_return_sequences=2, do_sample=True)


def test_logprobs_are_the_top_n_of_the_distribution_chosen_from(tiny):
    result = tiny.generate("def f(x):", max_new_tokens=6, logprobs=3, adaptive=False)
    for t in result.trace:
        ids = [i for i, _, _ in t.top_logprobs]
        values = [lp for _, _, lp in t.top_logprobs]
        assert len(ids) == 3 and values == sorted(values, reverse=True)
        assert ids[0] == t.token_id and values[0] == pytest.approx(t.logprob, abs=1e-5)
        assert t.logprob == pytest.approx(np.log(t.probability))
        assert t.top_logprobs[0][1] == tiny.tokenizer.decode([ids[0]])
    assert tiny.generate("x", max_new_tokens=2).trace[0].top_logprobs is None


def test_repetition_rules_and_min_p(tiny):
    kw = dict(max_new_tokens=40, adaptive=False, ignore_eos=True)
    prompt = tiny.encode("a = a + a + a").tolist()
    result = tiny.generate(prompt, no_repeat_ngram_size=2, **kw)

    def repeats(new):                 # new tokens completing a bigram seen before (prompt too)
        ids = prompt + new
        return sum((ids[t - 1], ids[t]) in set(zip(ids[:t - 1], ids[1:t]))
                   for t in range(len(prompt), len(ids)))
    assert repeats(result.token_ids) == 0
    plain = tiny.generate(prompt, **kw)
    assert repeats(plain.token_ids) > 5
    penalized = tiny.generate(prompt, repetition_penalty=5.0, **kw)
    assert len(set(penalized.token_ids)) > len(set(plain.token_ids))
    # min_p=1 keeps only the most likely token: sampling becomes greedy
    sampled = tiny.generate(prompt, do_sample=True, temperature=2.0, min_p=1.0, seed=3, **kw)
    assert sampled.token_ids == plain.token_ids
    with pytest.raises(ValueError, match="repetition_penalty must be a finite number > 0"):
        tiny.generate("x", repetition_penalty=0)


def _batched_and_alone(runtime, requests, batch_size):
    alone = [runtime.generate(prompt, **kw) for prompt, kw in requests]
    with Batcher(runtime, max_batch_size=batch_size) as batcher:
        handles = [batcher.submit(prompt, **kw) for prompt, kw in requests]
        for handle in handles:
            handle.wait()
    for handle, expected in zip(handles, alone):
        assert_same_generation(handle.result, expected)
    return alone


def test_batched_equals_unbatched_on_the_default_model():
    """Healing (a prompt ending in a newline), every band, the deep action both ways (THINK and
    the continued token), as the shipped model decodes them alone."""
    runtime = Runtime()
    modes = [FORCED["confident"], FORCED["high"], dict(FORCED["very_high"], inject_think=True),
             dict(FORCED["very_high"], inject_think=False), dict(adaptive=False)]
    requests = [(prompt, dict(mode, max_new_tokens=6, ignore_eos=True, seed=i,
                              do_sample=i % 2 == 0))
                for i, (prompt, mode) in enumerate(zip(
                    ["def f(x):\n", "import os\n", "class A:", "x = [", "for i in"], modes))]
    alone = _batched_and_alone(runtime, requests, 3)
    assert {t.band for r in alone for t in r.trace} >= {"confident", "high", "very_high"}
    assert any(t.deepened for r in alone for t in r.trace)
    assert any(t.think_injected for r in alone for t in r.trace)


def test_batched_equals_unbatched_on_depth_models(depth_artifacts):
    """Both recursion orders, with and without input injection, the depth probe as trigger,
    continuation and THINK, halting: each request decodes in a batch as it does alone."""
    _, root = depth_artifacts
    runtime = Runtime(root)
    modes = [FORCED["very_high"], dict(FORCED["very_high"], inject_think=False),
             dict(deep_trigger="probe", tau_probe=0.5),
             dict(FORCED["high"], use_halting=True, halting_threshold=0.3, steps_base=4),
             dict(FORCED["very_high"], use_halting=True, halting_threshold=0.001, steps_base=3),
             dict(adaptive=False)]
    requests = [(prompt, dict(mode, max_new_tokens=14, ignore_eos=True, seed=i,
                              do_sample=i % 2 == 1))
                for i, (prompt, mode) in enumerate(zip(
                    ["0123", "abc", "=>?@", "5555", "hello", "ok"], modes))]
    alone = _batched_and_alone(runtime, requests, 3)
    traces = [t for r in alone for t in r.trace]
    assert any(t.deepened for t in traces) and any(t.think_injected for t in traces)
    assert all(t.p_benefit is not None for t in traces if t.band is not None)
    assert any(min(t.iterations) < kw.get("steps_base", 2)                  # halting cut some
               for (_, kw), r in zip(requests, alone) for t in r.trace)
