"""Where one decoded token's time goes: the fused graph call, the Python around it, and ONNX
Runtime's cost per graph node.

    python benchmarks/bench_token_cost.py                     # int8, 1 thread, 256 tokens, 7 rounds
    python benchmarks/bench_token_cost.py --precision fp32 --threads 2

For the shipped model (or --model), greedy, EOS ignored, in one process, rounds interleaved:
- `stream`: a whole `Runtime.stream()` per token (what an app sees; fixed depth and adaptive);
- `graph call`: the bound fused cheap-pass call alone, in a loop (what the graph costs), at
  fixed depth and with the adaptive path's uncertainty head;
- `python (warm)`: the same stream with the fused call replaced by nothing, so only the runtime's
  own Python runs (controller, KV bookkeeping, detokenizer), with its data in cache. Its tokens
  are meaningless (the logits never change; adaptive: every token held confident); only its
  time is read;
- `ORT node`: a chain of 150 Add nodes on 256 floats against a chain of 1, per node: ORT's cost
  per node beyond its arithmetic at decode sizes.
Prints microseconds per token, best / median over rounds, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lantern_edge import Runtime  # noqa: E402
from lantern_edge.runtime import decode  # noqa: E402

PROMPT = "def read_config(path):\n    with open(path) as f:\n"
NODES = 150
INF = float("inf")


def stream_us(rt: Runtime, tokens: int, adaptive: bool, **overrides) -> float:
    rt._idle[:] = [decode.Sequence(rt.engine)]          # the same fresh state for every run
    stamps = [time.perf_counter() for _ in rt.stream(PROMPT, max_new_tokens=tokens,
                                                      ignore_eos=True, adaptive=adaptive, seed=0,
                                                      **overrides)]
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e6


def graph_call_us(rt: Runtime, tokens: int, signals: bool = False) -> float:
    """The fused call alone; signals: the adaptive path's graph, with the uncertainty head."""
    seq = decode.Sequence(rt.engine)
    seq.feed(rt.encode(PROMPT), rt.config.steps_base)
    session, binding = seq.fused.bindings[signals]
    start = time.perf_counter()
    for _ in range(tokens):
        session.run_with_iobinding(binding)
    return (time.perf_counter() - start) / tokens * 1e6


def python_us(rt: Runtime, tokens: int, adaptive: bool) -> float:
    real = decode.Sequence.run_bound

    def skip_fused(self, name, session, binding):
        if name != "fused":
            return real(self, name, session, binding)
        self.timer.add(name, 0.0)

    decode.Sequence.run_bound = skip_fused
    # the signals never change either: every token confident, so that no MC or deep call runs
    confident = dict(tau_low=INF, tau_mid=INF, tau_high=INF) if adaptive else {}
    try:
        return stream_us(rt, tokens, adaptive, **confident)
    finally:
        decode.Sequence.run_bound = real


def add_chain(nodes: int, threads: int):
    """A session of `nodes` Add nodes in a chain on [1, 256], bound to persistent buffers."""
    from onnx import TensorProto, helper, numpy_helper

    names = ["x"] + [f"y{i}" for i in range(nodes)]
    graph = helper.make_graph(
        [helper.make_node("Add", [a, "c"], [b]) for a, b in zip(names, names[1:])], "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, [1, 256])],
        [numpy_helper.from_array(np.ones((1, 256), np.float32), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    x, y = np.zeros((1, 256), np.float32), np.zeros((1, 256), np.float32)
    binding = session.io_binding()
    binding.bind_input("x", "cpu", 0, np.float32, [1, 256], x.ctypes.data)
    binding.bind_output(names[-1], "cpu", 0, np.float32, [1, 256], y.ctypes.data)
    return session, binding, (x, y)                      # the buffers live as long as the binding


def chain_us(chain, calls: int = 1000) -> float:
    session, binding, _ = chain
    start = time.perf_counter()
    for _ in range(calls):
        session.run_with_iobinding(binding)
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="artifacts (default: shipped model)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    if args.tokens < 2 or args.rounds < 1:
        p.error("--tokens must be >= 2 and --rounds >= 1")
    load_before = os.getloadavg()
    rt = Runtime(args.model, precision=args.precision, intra_op_threads=args.threads,
                 providers=["CPUExecutionProvider"])
    if rt.engine.fused is None:
        p.error(f"this model decodes without the fused pass ({rt.engine.unfused})")
    short, long = add_chain(1, args.threads), add_chain(NODES, args.threads)
    rows = {
        "stream, fixed depth": lambda: stream_us(rt, args.tokens, False),
        "stream, adaptive": lambda: stream_us(rt, args.tokens, True),
        "graph call (fused, fixed depth)": lambda: graph_call_us(rt, args.tokens),
        "graph call (fused, adaptive: with the uncertainty head)":
            lambda: graph_call_us(rt, args.tokens, signals=True),
        "python (warm), fixed depth": lambda: python_us(rt, args.tokens, False),
        "python (warm), adaptive": lambda: python_us(rt, args.tokens, True),
        "ORT node (Add on 256 floats)": lambda: (chain_us(long) - chain_us(short)) / (NODES - 1),
    }
    for measure in rows.values():                        # warm-up
        measure()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, measure in rows.items():
            times[name].append(measure())
    print(f"{args.precision}, {args.threads} thread(s), {args.tokens} tokens, {args.rounds} "
          f"rounds; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| what | us per token (per node), best | median |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
