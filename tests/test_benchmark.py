"""`lantern-edge bench` end to end on the tiny artifacts, its skip reasons, and the pieces that
make its numbers (forced bands, the time-boxed full recompute, worker isolation from torch).

No timing is asserted: only that every configuration is measured or skipped with a reason, and
that the numbers are there and consistent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lantern_edge.benchmark import suite
from lantern_edge.benchmark.bands import FORCED
from lantern_edge.benchmark.timing import interpolate_tail, latency_summary, sample_lengths
from lantern_edge.cli import main as lantern_main

LABELS = ("PyTorch full recompute", "PyTorch + KV state", "ONNX fp32, adaptive off",
          "ONNX fp32, adaptive on", "ONNX INT8, adaptive off", "ONNX INT8, adaptive on")


@pytest.fixture(scope="module")
def bench_artifacts(tmp_path_factory, tiny_artifacts, tiny_checkpoint):
    """The tiny artifacts with INT8 graphs, and their checkpoint as DIR/checkpoint.pt (so the
    PyTorch rows find it without --checkpoint)."""
    from lantern_edge.quantization.api import quantize_artifacts
    out = tmp_path_factory.mktemp("bench") / "artifacts"
    shutil.copytree(tiny_artifacts, out)
    quantize_artifacts(out, evaluate=False)
    shutil.copy(tiny_checkpoint, out / "checkpoint.pt")
    return out


def test_bench_end_to_end(bench_artifacts, tmp_path, capsys):
    out = tmp_path / "results"
    rc = lantern_main(["bench", "--model", str(bench_artifacts), "--tokens", "4", "12",
                       "--prompt-lengths", "8", "300", "--threads", "1", "--repeats", "1",
                       "--band-tokens", "6", "--time-box", "0", "--concurrency", "1", "3",
                       "--concurrency-tokens", "5", "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "bench.json").read_text())
    markdown = (out / "BENCH.md").read_text()
    assert results["schema"] == suite.SCHEMA
    assert results["model"]["checkpoint"].endswith("checkpoint.pt")
    assert [c["skipped"] for c in results["configurations"]] == [None] * 6

    # decode: every configuration at every token count, measured, with ratios and memory
    decode = {(r["configuration"], r["tokens_requested"]): r for r in results["decode"]}
    assert set(decode) == {(name, n) for name in suite.NAMES for n in (4, 12)}
    for (name, tokens), row in decode.items():
        assert not row["skipped"] and "error" not in row, row
        assert row["tokens"] == tokens and row["tok_s"] > 0 and row["peak_rss_mib"] > 0
        assert 0 < row["us_median"] <= row["us_p90"] <= row["us_max"]
        assert row["speedup_vs_full"] > 0 and row["speedup_vs_kv"] > 0
        if name.startswith("onnx"):
            assert 0 <= row["controller_overhead"] < 1
    assert decode[("pytorch-full", 12)]["speedup_vs_full"] == pytest.approx(1.0)
    # --time-box 0: one token timed in the loop, the rest interpolated from sampled lengths
    full = decode[("pytorch-full", 12)]
    assert full["estimated"] and full["measured_tokens"] == 1
    assert full["sampled_lengths"][-1] == results["settings"]["decode_prompt_tokens"] + 11
    # the reference with KV state and the runtime pick the same greedy tokens
    kv = decode[("pytorch-kv", 12)]
    assert kv["tokens_agree"] == kv["tokens_compared"] == 12
    assert "token_ids" not in kv

    # time to first token: the prompt that fits is measured, the other skipped with the reason
    for row in results["ttft"]:
        assert row["prompts"]["8"]["ttft_ms"] > 0 and row["peak_rss_mib"] > 0
        assert "max_position=256" in row["too_long"]["300"]

    # peak RSS per configuration, 4 vs 12 tokens
    memory = {m["configuration"]: m for m in results["memory"]}
    assert set(memory) == set(suite.NAMES)
    for entry in memory.values():
        assert set(entry["peak_rss_mib"]) == {"4", "12"} and isinstance(entry["flat"], bool)

    # cost shape: forcing puts every token in its band
    assert [r["precision"] for r in results["cost_shape"]] == ["fp32", "int8"]
    for row in results["cost_shape"]:
        modes = row["modes"]
        assert set(modes) == {"fixed", "adaptive", *FORCED}
        for band in ("confident", "moderate", "high"):
            assert modes[band]["bands"][band] == 6
        assert modes["high"]["mc_calls"] == 6
        assert modes["very_high"]["think"] + modes["very_high"]["deepened"] == 6
        assert modes["very_high"]["mean_iterations"] > modes["fixed"]["mean_iterations"]
    for bound in results["bounds"]:
        assert 0 < bound["lower_us"] <= bound["upper_us"] <= bound["worst_token_us"]

    # concurrency: S streams on one model, by threads and batched, every token there
    rows = {(r["mode"], r["streams"]): r for r in results["concurrency"]}
    assert set(rows) == {(mode, s) for mode in ("threads", "batched") for s in (1, 3)}
    for (_mode, streams), row in rows.items():
        assert row["tokens"] == 5 * streams and row["tok_s"] > 0 and row["peak_rss_mib"] > 0

    for heading in ("## Decode", "## Time to first token", "## Peak RSS", "## Cost shape",
                    "## Concurrent streams"):
        assert heading in markdown
    assert all(label in markdown for label in LABELS)
    assert " est. [" in markdown and "does not fit max_position=256" in markdown
    assert "## Decode" in printed


def test_bench_rebuilds_the_reference_and_skips_what_it_cannot_run(tiny_artifacts, tmp_path):
    """The plain tiny artifacts have no INT8 graphs and no checkpoint beside them: the PyTorch
    reference is rebuilt from the fp32 graphs, the INT8 rows are skipped with the fix."""
    out = tmp_path / "results"
    rc = lantern_main(["bench", "--model", str(tiny_artifacts), "--tokens", "4",
                       "--prompt-lengths", "8", "--threads", "1", "--repeats", "1",
                       "--configs", "pytorch-kv", "onnx-fp32", "onnx-int8", "--concurrency",
                       "-o", str(out)])
    assert rc == 0
    results = json.loads((out / "bench.json").read_text())
    reasons = {c["name"]: c["skipped"] for c in results["configurations"]}
    assert reasons == {"pytorch-kv": None, "onnx-fp32": None, "onnx-int8": reasons["onnx-int8"]}
    assert "lantern-edge quantize" in reasons["onnx-int8"]
    assert results["model"]["checkpoint"] == "rebuilt from the fp32 graphs"
    decode = {r["configuration"]: r for r in results["decode"]}
    assert decode["onnx-int8"]["skipped"] == reasons["onnx-int8"]
    assert decode["pytorch-kv"]["tokens_agree"] == decode["pytorch-kv"]["tokens_compared"] == 4
    assert [r["precision"] for r in results["cost_shape"]] == ["fp32", "int8"]
    assert results["cost_shape"][1]["skipped"] == reasons["onnx-int8"]
    markdown = (out / "BENCH.md").read_text()
    assert "skipped [" in markdown and reasons["onnx-int8"] in markdown


@pytest.mark.parametrize("missing, reason", [
    ("torch", "torch is not installed"),
    ("onnx", "pass --checkpoint PT"),
])
def test_bench_without_torch_or_a_way_to_the_reference_skips_the_pytorch_rows(
        tiny_artifacts, monkeypatch, missing, reason):
    monkeypatch.setattr(suite, "installed", lambda module: module != missing)
    settings = suite.BenchSettings(model=tiny_artifacts, tokens=(4,), prompt_lengths=(8,),
                                   repeats=1, configurations=("pytorch-full", "pytorch-kv"))
    results = suite.run_benchmark(settings)
    for row in results["decode"] + results["ttft"]:
        assert reason in row["skipped"]
    assert results["cost_shape"] == [] and results["memory"] == []
    assert results["model"]["checkpoint"] is None


def test_worker_runs_the_onnx_rows_without_torch(tiny_artifacts):
    job = dict(kind="decode", engine="onnx", model=str(tiny_artifacts), precision="fp32",
               adaptive=True, threads=1, prompt=[0, 40, 41, 42], tokens=5, repeats=1)
    code = ("import json, sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
            "from lantern_edge.benchmark.worker import run_job\n"
            f"print(json.dumps(run_job({job!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    out = json.loads(done.stdout)
    assert out["result"]["tokens"] == 5 and out["peak_rss_mib"] > 0


def test_full_recompute_past_its_time_box_interpolates_the_rest(tiny_checkpoint):
    from lantern_edge.benchmark.reference import full_recompute, incremental, load_model
    model = load_model(tiny_checkpoint, None, threads=1)
    prompt = [0, 40, 41, 42, 43]
    boxed = full_recompute(model, prompt, tokens=9, time_box=0.0, tail_samples=3)
    assert boxed["estimated"] and boxed["measured_tokens"] == 1 and boxed["tokens"] == 9
    assert boxed["sampled_lengths"] == [6, 10, 13]
    whole = full_recompute(model, prompt, tokens=9, time_box=60.0)
    assert not whole["estimated"] and whole["measured_tokens"] == 9
    assert whole["token_ids"][0] == boxed["token_ids"][0]
    assert incremental(model, prompt, tokens=9)["token_ids"] == whole["token_ids"]


def test_timing_helpers():
    assert sample_lengths(10, 20, 3) == [10, 15, 20]
    assert sample_lengths(10, 10, 8) == [10]
    assert interpolate_tail([10, 20], [100.0, 200.0], [10, 15, 20]) == [100.0, 150.0, 200.0]
    with pytest.raises(ValueError, match="outside the timed lengths"):
        interpolate_tail([10, 20], [1.0, 2.0], [21])
    summary = latency_summary([100.0, 200.0, 300.0, 400.0])
    assert summary["tok_s"] == pytest.approx(4 / 1e-3) and summary["us_median"] == 250.0


def test_decode_rounds_keep_the_fastest_run_and_the_highest_peak():
    row = {}
    suite._merge_round(row, dict(tok_s=100.0, us_median=10.0, peak_rss_mib=50.0,
                                 peak_rss_stream_mib=40.0))
    suite._merge_round(row, dict(tok_s=200.0, us_median=5.0, peak_rss_mib=49.0,
                                 peak_rss_stream_mib=41.0))
    suite._merge_round(row, dict(tok_s=150.0, us_median=7.0, peak_rss_mib=48.0,
                                 peak_rss_stream_mib=39.0))
    assert row == dict(tok_s=200.0, us_median=5.0, peak_rss_mib=50.0, peak_rss_stream_mib=41.0,
                       runs=3)


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/artifacts"], "artifacts not found"),
    (["--tokens", "0"], "tokens must be"),
    (["--band-tokens", "0"], "band_tokens must be"),
])
def test_bench_bad_input_exits_2(tiny_artifacts, args, message, tmp_path, capsys):
    argv = ["bench", "--model", str(tiny_artifacts), "-o", str(tmp_path)] + args
    assert lantern_main(argv) == 2
    assert message in capsys.readouterr().err


def test_stream_tok_s_times_decode_steps_only(tiny_artifacts):
    """The peers' timing: N - 1 full steps between the first and the last token decided, so
    the rate is above what the whole stream (prefill included) would give."""
    import time
    from lantern_edge import Runtime
    from lantern_edge.benchmark.decode import stream_tok_s
    runtime = Runtime(tiny_artifacts, providers=["CPUExecutionProvider"])
    prompt = runtime.encode("def main():\n" * 20).tolist()
    start = time.perf_counter()
    rate = stream_tok_s(runtime, prompt, 12, ignore_eos=True, adaptive=False)
    whole = 12 / (time.perf_counter() - start)
    assert rate > whole
    with pytest.raises(ValueError, match="at least 2 new tokens"):
        stream_tok_s(runtime, prompt, 1)


def _benchmark_module(name: str):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peers_module():
    return _benchmark_module("peers")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bench_token_cost_bare_loop_decodes_what_stream_decodes(precision):
    """The bare loop (the least Python a token needs) is a real decode: its greedy tokens are
    stream()'s at fixed depth, so its time is that of the work a token needs."""
    from lantern_edge import Runtime
    bench = _benchmark_module("bench_token_cost")
    runtime = Runtime(precision=precision)
    chosen: list[int] = []
    bench.bare_loop_us(runtime, 40, chosen)
    streamed = [t.token_id for t in runtime.stream(bench.PROMPT, max_new_tokens=41,
                                                   ignore_eos=True, adaptive=False,
                                                   token_healing=False)]
    assert len(chosen) == 40
    assert chosen == streamed[1:]


def test_peers_goal_pairs_rounds_at_each_systems_best_thread_count():
    """The issue's targets from one run: best over rounds at each system's best thread count,
    and the median of per-round ratios (a failed run is None and drops only its own pair)."""
    peers = _peers_module()

    def row(name, by_threads):
        return dict(name=name, results={(128, t): v for t, v in by_threads.items()})
    rows = [
        row("lantern-edge fp32, fixed depth", {1: [100.0, 200.0, 90.0], 2: [150.0, 90.0, None]}),
        row("lantern-edge fp32, adaptive", {1: [100.0, 160.0, 80.0], 2: [120.0, 80.0, 70.0]}),
        row("onnxruntime-genai fp32", {1: [120.0, 100.0, 100.0], 2: [160.0, 210.0, 80.0]}),
        row("lantern-edge int8, fixed depth", {1: [300.0, 300.0, 300.0]}),
        dict(name="onnxruntime-genai int8", error="not installed"),
    ]
    text = peers.goal(rows, [128], [1, 2])
    # fp32: best 200 / 210; rounds 150/160, 200/210, 90/100 -> median 0.9375
    assert "| fp32: lantern-edge fixed depth / onnxruntime-genai, tok/s (>= 1.00x) | " \
           "0.95x (paired median 0.94x) |" in text
    # adaptive cost: best 200 / 160 = 1.25; rounds 150/120, 200/160, 90/80 -> 1.25, 1.25, 1.125
    assert "| fp32: adaptive defaults' cost / fixed depth's (<= 1.15x) | " \
           "1.25x (paired median 1.25x) |" in text
    assert "- fp32 fixed depth >= onnxruntime-genai: NOT met by best, NOT met by paired median" \
        in text
    assert "- int8 fixed depth >= onnxruntime-genai: not measured in this run" in text
    assert "- fp32 adaptive cost <= 1.15x: NOT met by best, NOT met by paired median" in text


def test_bench_onnx_loop_runs_its_four_ways_and_checks_the_loop_wrote(capsys):
    """The Loop benchmark measures a Loop that really stores its rows (it refuses otherwise)
    and prints one row per way."""
    bench = _benchmark_module("bench_onnx_loop")
    assert bench.main(["--iterations", "6", "--rounds", "1"]) == 0
    table = capsys.readouterr().out
    for row in ("| Loop, no buffer |", "| Loop, buffer carried unchanged |",
                "| Loop, buffer carried, one row written |", "| Python loop of bound calls |"):
        assert row in table
    written = bench.session(3, "write", 1).run(None, {
        "x": np.ones((1, bench.HIDDEN), np.float32),
        "kv": np.zeros(bench.BUFFER, np.float32)})[1]
    assert written[:, :, :3].any(axis=-1).all() and not written[:, :, 3:].any()
