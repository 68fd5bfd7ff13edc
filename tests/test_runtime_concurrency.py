"""One shared Runtime, many generations at once: threads and interleaved streams give exactly
what each generation gives alone (tokens and traces)."""

import threading

import pytest

from lantern_edge import Runtime
from lantern_edge.benchmark.bands import FORCED

PROMPTS = ["def f(x):", "import os\n", "class A:\n    ", "for i in range(", "x = [",
           "return ", "while True:\n", "print("]


@pytest.fixture(scope="module")
def tiny(tiny_artifacts):
    return Runtime(tiny_artifacts)


def _jobs(tiny):
    """8 (prompt, overrides): greedy and seeded sampling, every band forced, halting on."""
    modes = [dict(adaptive=False), FORCED["confident"], FORCED["moderate"], FORCED["high"],
             FORCED["very_high"], dict(use_halting=True, tau_low=-1.0, tau_mid=4.0, tau_high=4.6),
             dict(FORCED["very_high"], inject_think=False), FORCED["high"]]
    return [(prompt, dict(mode, max_new_tokens=20, ignore_eos=True, seed=i,
                          do_sample=i % 2 == 1, temperature=1.3))
            for i, (prompt, mode) in enumerate(zip(PROMPTS, modes))]


def _exact(result):
    """Everything a generation returns but timings."""
    return (result.text, result.token_ids, result.stop_reason,
            [{k: v for k, v in vars(t).items() if k != "microseconds"} for t in result.trace])


def test_eight_threads_give_exactly_what_sequential_runs_give(tiny):
    jobs = _jobs(tiny)
    expected = [_exact(tiny.generate(prompt, **kw)) for prompt, kw in jobs]
    bands = {t["band"] for _, _, _, trace in expected for t in trace}
    assert bands == {None, "confident", "moderate", "high", "very_high"}
    for _ in range(2):
        results: list = [None] * len(jobs)
        start = threading.Barrier(len(jobs))

        def work(i, start=start, results=results):
            start.wait()
            results[i] = _exact(tiny.generate(jobs[i][0], **jobs[i][1]))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == expected


def test_interleaved_streams_on_one_model_both_complete_correctly(tiny):
    a_kw = dict(max_new_tokens=15, seed=3, do_sample=True, **FORCED["high"])
    b_kw = dict(max_new_tokens=9, **FORCED["very_high"])
    alone = [_exact(tiny.generate("def f(x):", **a_kw)), _exact(tiny.generate("x = [", **b_kw))]
    a, b = tiny.stream("def f(x):", **a_kw), tiny.stream("x = [", **b_kw)
    pieces = {id(a): [], id(b): []}
    live = [a, b]
    while live:                                    # one token of each in turn
        for stream in list(live):
            token = next(stream, None)
            if token is None:
                live.remove(stream)
            else:
                pieces[id(stream)].append(token.text)
    assert [_exact(a.result), _exact(b.result)] == alone
    assert a.stop_reason == b.stop_reason == "max_new_tokens"
    assert "".join(pieces[id(a)]) == a.result.text and a.stats["mc_calls"] == 15
