"""Would several tokens per ONNX Runtime call pay? What an ONNX `Loop` costs per iteration when
its body writes one row of a KV-sized buffer, as a decode loop inside the graph would.

    python benchmarks/bench_onnx_loop.py                  # 64 iterations, 7 rounds, 1 thread

A toy body stands in for a token's graph: a [1, 256] x [256, 256] MatMul and a Tanh. Four ways,
rounds interleaved, microseconds per iteration, best / median:
- `Loop, no buffer`: the body alone, iterated by ONNX Runtime;
- `Loop, buffer carried unchanged`: the body plus a loop-carried float buffer the size of the
  shipped model's stored keys and values ([8, 4, 145, 64], 1.2 MB), passed through;
- `Loop, buffer carried, one row written`: the same buffer with the iteration's row
  written into slot i % 145 of every [4, 145, 64] part (ScatterElements), the way each token's
  new KV rows would be stored;
- `Python loop of bound calls`: the body as a one-iteration graph, called from Python with IO
  binding (what the runtime does per token, less its bookkeeping).
The Loop's output buffer is checked to hold the written rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HIDDEN = 256
BUFFER = [8, 4, 145, 64]            # (blocks x iterations x K/V) x heads x slots x head_dim
ROW = BUFFER[-1]


def _constant(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _body(buffer: str | None) -> object:
    """The loop body; buffer None, "carry" (passed through) or "write" (one row written)."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    nodes = [helper.make_node("MatMul", ["x_in", "w"], ["y"]),
             helper.make_node("Tanh", ["y"], ["x_out"]),
             helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    inputs = [helper.make_tensor_value_info("i", i64, []),
              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
              helper.make_tensor_value_info("x_in", f, [1, HIDDEN])]
    outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
               helper.make_tensor_value_info("x_out", f, [1, HIDDEN])]
    if buffer == "carry":
        nodes.append(helper.make_node("Identity", ["kv_in"], ["kv_out"]))
    elif buffer == "write":
        nodes += [helper.make_node("Slice", ["x_out", "zero", "row", "one"], ["row_values"]),
                  helper.make_node("Reshape", ["row_values", "row_shape"], ["row4"]),
                  helper.make_node("Expand", ["row4", "update_shape"], ["update"]),
                  helper.make_node("Mod", ["i", "slots"], ["slot"]),
                  helper.make_node("Reshape", ["slot", "scalar4"], ["slot4"]),
                  helper.make_node("Expand", ["slot4", "update_shape"], ["index"]),
                  helper.make_node("ScatterElements", ["kv_in", "index", "update"], ["kv_out"],
                                   axis=2)]
    if buffer is not None:
        inputs.append(helper.make_tensor_value_info("kv_in", f, BUFFER))
        outputs.append(helper.make_tensor_value_info("kv_out", f, BUFFER))
    return helper.make_graph(nodes, "body", inputs, outputs)


def session(iterations: int, buffer: str | None, threads: int) -> ort.InferenceSession:
    rng = np.random.default_rng(0)
    constants = [
        _constant("w", (rng.standard_normal((HIDDEN, HIDDEN)) * 0.05).astype(np.float32)),
        _constant("zero", np.array([0], np.int64)), _constant("row", np.array([ROW], np.int64)),
        _constant("one", np.array([1], np.int64)),
        _constant("row_shape", np.array([1, 1, 1, ROW], np.int64)),
        _constant("update_shape", np.array(BUFFER[:2] + [1, ROW], np.int64)),
        _constant("slots", np.array(BUFFER[2], np.int64)),
        _constant("scalar4", np.array([1, 1, 1, 1], np.int64)),
        _constant("trip", np.array(iterations, np.int64)), _constant("cond", np.array(True))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, HIDDEN])]
    outputs = [helper.make_tensor_value_info("x_final", TensorProto.FLOAT, [1, HIDDEN])]
    loop_inputs, loop_outputs = ["trip", "cond", "x"], ["x_final"]
    if buffer is not None:
        inputs.append(helper.make_tensor_value_info("kv", TensorProto.FLOAT, BUFFER))
        outputs.append(helper.make_tensor_value_info("kv_final", TensorProto.FLOAT, BUFFER))
        loop_inputs.append("kv")
        loop_outputs.append("kv_final")
    graph = helper.make_graph(
        [helper.make_node("Loop", loop_inputs, loop_outputs, body=_body(buffer))], "loop",
        inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3                    # the unused constants of some variants
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.iterations < 1 or args.rounds < 1 or args.threads < 1:
        p.error("--iterations, --rounds and --threads must be >= 1")
    load_before = os.getloadavg()
    n = args.iterations
    x = np.random.default_rng(1).standard_normal((1, HIDDEN)).astype(np.float32)
    kv = np.zeros(BUFFER, np.float32)
    loops = {name: session(n, buffer, args.threads) for name, buffer in (
        ("Loop, no buffer", None), ("Loop, buffer carried unchanged", "carry"),
        ("Loop, buffer carried, one row written", "write"))}
    written = loops["Loop, buffer carried, one row written"].run(None, {"x": x, "kv": kv})[1]
    if np.count_nonzero(written[:, :, :min(n, BUFFER[2])].any(axis=-1)) != \
            BUFFER[0] * BUFFER[1] * min(n, BUFFER[2]):
        raise SystemExit("the Loop did not write its rows: the measurement would be wrong")
    step = session(1, None, args.threads)
    out = np.zeros((1, HIDDEN), np.float32)
    binding = step.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("x_final", "cpu", 0, np.float32, [1, HIDDEN], out.ctypes.data)

    def python_loop():
        for _ in range(n):
            step.run_with_iobinding(binding)
    rows = {name: (lambda s=s: s.run(None, {"x": x, **({"kv": kv} if len(s.get_inputs()) > 1
                                                           else {})}))
            for name, s in loops.items()}
    rows["Python loop of bound calls"] = python_loop
    times: dict[str, list[float]] = {name: [] for name in rows}
    for run in rows.values():                             # warm-up
        run()
    for _ in range(args.rounds):
        for name, run in rows.items():
            start = time.perf_counter()
            for _ in range(20):
                run()
            times[name].append((time.perf_counter() - start) / 20 / n * 1e6)
    print(f"{n} iterations, {args.rounds} rounds, {args.threads} thread(s); load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| what | us per iteration, best | median |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
