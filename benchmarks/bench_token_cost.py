"""Where one decoded token's time goes: the fused graph call, the Python around it, and ONNX
Runtime's cost per graph node.

    python benchmarks/bench_token_cost.py                     # int8, 1 thread, 256 tokens, 7 rounds
    python benchmarks/bench_token_cost.py --precision fp32 --threads 2
    python benchmarks/bench_token_cost.py --genai /tmp/peers/genai-int8   # a model peers.py built

For the shipped model (or --model), greedy, EOS ignored, in one process, rounds interleaved:
- `stream`: a whole `Runtime.stream()` per token (what an app sees; fixed depth and adaptive);
- `graph call`: the bound fused cheap-pass call alone, in a loop (what the graph costs), at
  fixed depth and with the adaptive path's uncertainty head;
- `bare loop`: the fused call with only what the next call needs between two calls (the new
  KV rows into their slots, the slot committed, the greedy token, its position and bias row),
  written out here against the runtime's internals: the least Python a token can cost in this
  design. `stream` minus `bare loop` is the rest of the runtime (controller, trace, detokenizer,
  stop strings), which runs between the calls too;
- `graph call, another Python thread busy`: the fused call in a loop while a second Python
  thread computes: what moving the runtime's Python off the calling thread would meet. ONNX
  Runtime lets go of the GIL during the call, but getting it back waits for the busy thread's
  switch interval (`sys.getswitchinterval()`, 5 ms by default);
- `python (warm)`: the same stream with the fused call replaced by nothing, so only the runtime's
  own Python runs (controller, KV bookkeeping, detokenizer), with its data in cache. Its tokens
  are meaningless (the logits never change: one ordinary token again and again; adaptive: every
  token held confident); only its time is read;
- `ORT node`: a chain of 150 Add nodes on 256 floats against a chain of 1, per node: ORT's cost
  per node beyond its arithmetic at decode sizes;
- with `--genai DIR` (an onnxruntime-genai model that `peers.py` built, of the same precision):
  its decoder graph call alone, in a plain ONNX Runtime session with its KV buffers bound as both
  past and present (as onnxruntime-genai runs it) at a past of 16 + tokens / 2 positions, and a
  whole token of its own generator (`generate_next_token`, greedy, the peers' prompt). Each
  system's whole token minus its graph call is what it spends per token outside the graph: its
  host loop.
Prints microseconds per token, best / median over rounds, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
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
GENAI_CALL = "onnxruntime-genai: graph call (its decoder, KV bound in place)"
GENAI_TOKEN = "onnxruntime-genai: whole token (generate_next_token)"


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


def bare_loop_us(rt: Runtime, tokens: int, chosen: list[int] | None = None) -> float:
    """Fixed-depth greedy tokens through the fused call with only the bookkeeping the next call
    needs (what FusedPass.feed and the controller do for it, less everything else); chosen: a
    list that gets the token ids (a test holds them to stream()'s)."""
    seq = decode.Sequence(rt.engine)
    token = int(seq.feed(rt.encode(PROMPT), rt.config.steps_base).logits[-1].argmax())
    fused, kv = seq.fused, seq.kv
    bound = fused.bound
    session, binding = fused.bindings[False]
    start = time.perf_counter()
    for _ in range(tokens):
        bound.start_token(token)
        session.run_with_iobinding(binding)
        kv.keys[:, :, :, bound.slot] = fused.new_keys[:, fused.source]
        kv.values[:, :, :, bound.slot] = fused.new_values[:, fused.source]
        kv.commit_slot(bound.position_, bound.slot, bound.is_global)
        token = int(bound.logits.argmax())
        if chosen is not None:
            chosen.append(token)
    return (time.perf_counter() - start) / tokens * 1e6


def graph_call_beside_thread_us(rt: Runtime, tokens: int) -> float:
    """graph_call_us while another Python thread computes (tokens // 8 calls: each can wait
    for the GIL for a switch interval)."""
    done = threading.Event()

    def busy():
        total = 0
        while not done.is_set():
            total += 1
    thread = threading.Thread(target=busy)
    thread.start()
    try:
        return graph_call_us(rt, max(tokens // 8, 2))
    finally:
        done.set()
        thread.join()


def python_us(rt: Runtime, tokens: int, adaptive: bool) -> float:
    real = decode.Sequence.run_bound
    # the token every step then chooses: an ordinary one, whose text the detokenizer emits at
    # once (a special token would skip it)
    plain = int(rt.encode("x", bos=False)[0])

    def skip_fused(self, name, session, binding):
        if name != "fused":
            return real(self, name, session, binding)
        self.fused.bound.logits[..., plain] = 1.0
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


def genai_graph_call(path: Path, threads: int, tokens: int):
    """onnxruntime-genai's decoder graph in a plain session, one token at a past of
    16 + tokens // 2 positions, KV buffers bound as past and present (its shared buffer)."""
    config = json.loads((path / "genai_config.json").read_text())["model"]
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path / config["decoder"]["filename"]), options,
                                   providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    past, longest = 16 + tokens // 2, 16 + tokens
    binding = session.io_binding()
    keep = [np.array([[1]], np.int64), np.ones((1, past + 1), np.int64)]
    binding.bind_cpu_input("input_ids", keep[0])
    binding.bind_cpu_input("attention_mask", keep[1])
    for name, info in inputs.items():
        if name.startswith("past_key_values."):
            heads, dim = info.shape[1], config["decoder"]["head_size"]
            value = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, longest, dim), np.float32))
            keep.append(value)
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past_key_values.", "present."), value)
    logits = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 1, config["vocab_size"]), np.float32))
    keep.append(logits)
    binding.bind_ortvalue_output("logits", logits)

    def call_us() -> float:
        start = time.perf_counter()
        for _ in range(tokens):
            session.run_with_iobinding(binding)
        return (time.perf_counter() - start) / tokens * 1e6
    call_us.buffers = keep                               # alive as long as the binding
    return call_us


def genai_token(path: Path, threads: int, tokens: int):
    """A whole token of onnxruntime-genai's own generator, as peers.py times it."""
    from peers_worker import genai

    run, _ = genai({"path": str(path), "threads": threads, "hf": str(path)})
    return lambda: 1e6 / run(tokens)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="artifacts (default: shipped model)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--genai", type=Path, default=None,
                   help="an onnxruntime-genai model directory (peers.py's --work has them)")
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
        "bare loop (graph call + the next call's bookkeeping only)":
            lambda: bare_loop_us(rt, args.tokens),
        "graph call, another Python thread busy": lambda: graph_call_beside_thread_us(rt, args.tokens),
        "python (warm), fixed depth": lambda: python_us(rt, args.tokens, False),
        "python (warm), adaptive": lambda: python_us(rt, args.tokens, True),
        "ORT node (Add on 256 floats)": lambda: (chain_us(long) - chain_us(short)) / (NODES - 1),
    }
    if args.genai is not None:
        if not (args.genai / "genai_config.json").is_file():
            p.error(f"--genai {args.genai}: no genai_config.json there; pass a model directory "
                    f"that peers.py built (its --work directory, e.g. genai-int8)")
        try:
            token = genai_token(args.genai, args.threads, args.tokens)
        except ImportError as e:
            p.error(f"--genai needs onnxruntime-genai ({e}): pip install onnxruntime-genai")
        rows[GENAI_CALL] = genai_graph_call(args.genai, args.threads, args.tokens)
        rows[GENAI_TOKEN] = token
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
    if args.genai is not None:
        def outside(token: str, call: str) -> str:
            # per round (the two were measured seconds apart, under the same load)
            differences = [t - c for t, c in zip(times[token], times[call])]
            return f"{min(differences):.0f} / {statistics.median(differences):.0f}"
        ours = outside("stream, fixed depth", "graph call (fused, fixed depth)")
        theirs = outside(GENAI_TOKEN, GENAI_CALL)
        print(f"\nper token outside the graph call (whole token - graph call in each round; "
              f"least / median over the rounds): "
              f"lantern-edge fixed depth {ours} us, onnxruntime-genai {theirs} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
