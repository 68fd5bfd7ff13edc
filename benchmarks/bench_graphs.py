"""Per-call decode time of every exported graph, and what ORT's offline optimisations would add.

    python benchmarks/bench_graphs.py [ARTIFACTS_DIR] [--threads 1 2] [--calls 2000] [--json F]

Without ARTIFACTS_DIR it exports a random-weight model of the shipped default's shape (the
"small" training preset: hidden 256, 4 heads, SwiGLU 768, 2 blocks, window 128, vocab 4096)
into a temporary directory first. Times are medians over --calls calls at decode shapes (T = 1;
the MC step at S = controller.mc_samples; model.onnx at T = 16), one session per graph,
intra-op spinning off as in the runtime unless --spinning. Block steps are timed both with
`session.run(None, feeds)` and with IO binding to persistent NumPy buffers (how the runtime
calls them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
          "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


SPINNING = "0"                # --spinning turns intra-op spinning on


def make_session(path, threads=1, level="all", save_to=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", SPINNING)
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    if save_to:
        options.optimized_model_filepath = str(save_to)
        # its weights go to a file of its own beside it (the shared weights.bin stays shared)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         Path(save_to).stem + ".bin")
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_us(fn, calls: int) -> float:
    for _ in range(max(50, calls // 10)):
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def decode_feeds(manifest: dict, role: str, rng) -> dict[str, np.ndarray]:
    cfg, controller = manifest["model_config"], manifest["controller"]
    c, h, v = cfg["hidden_size"], cfg["num_heads"], cfg["vocab_size"]
    d = c // h
    stored = cfg["window_size"] + cfg["max_global_tokens"]
    position = np.array([min(cfg["window_size"] + 5, cfg["max_position"] - 1)], np.int64)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    if role == "embed":
        return {"input_ids": np.array([5], np.int64), "positions": position}
    if role in ("block", "mc_step"):
        samples = controller["mc_samples"] if role == "mc_step" else 1
        feeds = {"hidden": f32(1, 1, c), "positions": position, "past_key": f32(h, stored, d),
                 "past_value": f32(h, stored, d),
                 "attn_bias": np.zeros((1, stored + 1), np.float32)}
        if role == "mc_step":
            keep = lambda *shape: (rng.random(shape) >= 0.1).astype(np.float32) / 0.9  # noqa: E731
            feeds.update(mask_attn_probs=keep(samples, h, 1, stored + 1),
                         mask_attn_out=keep(samples, 1, c), mask_mlp_out=keep(samples, 1, c))
        return feeds
    if role == "lm_head":
        return {"hidden": f32(1, 1, c)}
    if role == "uncertainty":
        return {"logits": f32(1, v) * 3, "weights": np.array([1.0, 0.5, 0.5], np.float32)}
    return {"input_ids": rng.integers(0, v, (1, 16)).astype(np.int64)}      # model.onnx, T=16


def bound_call(session, feeds):
    """run_with_iobinding over persistent buffers (outputs preallocated at their decode shape)."""
    binding = session.io_binding()
    keep = []
    for name, array in feeds.items():
        binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
    for out, array in zip(session.get_outputs(), session.run(None, feeds)):
        buffer = np.empty_like(array)
        keep.append(buffer)
        binding.bind_output(out.name, "cpu", 0, buffer.dtype, list(buffer.shape),
                            buffer.ctypes.data)
    return lambda: session.run_with_iobinding(binding), keep


def graph_list(manifest: dict) -> list[tuple[str, str]]:
    graphs = manifest["graphs"]["fp32"]
    out = [("embed", graphs["embed"]["file"])]
    out += [("block", entry["file"]) for entry in graphs["blocks"]]
    out += [(role, graphs[role]["file"]) for role in ("mc_step", "lm_head", "uncertainty", "model")]
    return out


def node_counts(path: Path, level: str = "all") -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        make_session(path, level=level, save_to=Path(tmp) / "o.onnx")
        optimized = len(onnx.load(str(Path(tmp) / "o.onnx"), load_external_data=False).graph.node)
    return len(onnx.load(str(path), load_external_data=False).graph.node), optimized


def bench_graphs(root: Path, threads: list[int], calls: int) -> list[dict]:
    manifest = json.loads((root / "lantern.json").read_text())
    rng = np.random.default_rng(0)
    rows = []
    for role, file in graph_list(manifest):
        feeds = decode_feeds(manifest, role, rng)
        nodes, ort_nodes = node_counts(root / file)
        row = {"graph": file, "nodes": nodes, "ort_nodes": ort_nodes}
        for n in threads:
            session = make_session(root / file, threads=n)
            row[f"run_t{n}"] = median_us(lambda s=session, f=feeds: s.run(None, f), calls)
            if role == "block":
                call, _buffers = bound_call(session, feeds)
                row[f"bound_t{n}"] = median_us(call, calls)
        rows.append(row)
    return rows


def bench_offline(root: Path, file: str, role: str, calls: int) -> list[dict]:
    """The graph optimised online at session creation (what the runtime does) vs saved
    optimised offline at each level and loaded with optimisations off."""
    manifest = json.loads((root / "lantern.json").read_text())
    feeds = decode_feeds(manifest, role, np.random.default_rng(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        session = make_session(root / file)
        rows.append({"variant": "shipped graph, online ORT_ENABLE_ALL",
                     "load_ms": (time.perf_counter() - start) * 1e3,
                     "weights_mb": sum(int(np.prod(t.dims)) * 4 for t in onnx.load(
                                         str(root / file), load_external_data=False
                                     ).graph.initializer if t.external_data) / 1e6,
                     "nodes": node_counts(root / file)[1],
                     "call_us": median_us(lambda: session.run(None, feeds), calls)})
        for level in ("basic", "extended", "all"):
            saved = Path(tmp) / f"{level}.onnx"
            make_session(root / file, level=level, save_to=saved)
            start = time.perf_counter()
            session = make_session(saved, level="off")
            rows.append({"variant": f"offline {level}, loaded with optimisations off",
                         "load_ms": (time.perf_counter() - start) * 1e3,
                         "weights_mb": (Path(tmp) / f"{level}.bin").stat().st_size / 1e6,
                         "nodes": len(onnx.load(str(saved), load_external_data=False).graph.node),
                         "call_us": median_us(lambda s=session: s.run(None, feeds), calls)})
        rows.append(_transformers_fusion(root / file, manifest, feeds, Path(tmp), calls))
    return rows


def _transformers_fusion(path: Path, manifest: dict, feeds: dict, tmp: Path, calls: int) -> dict:
    """onnxruntime.transformers' GPT-2 fusions (attention, skip-LayerNorm, ...) on the graph."""
    import logging
    from onnxruntime.transformers.optimizer import optimize_model
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)   # "producer not matched"
    cfg = manifest["model_config"]
    optimized = optimize_model(str(path), model_type="gpt2", num_heads=cfg["num_heads"],
                               hidden_size=cfg["hidden_size"], opt_level=0)
    out = tmp / "fused.onnx"
    optimized.save_model_to_file(str(out), use_external_data_format=True)
    session = make_session(out)
    start = time.perf_counter()
    make_session(out)
    before = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return {"variant": "onnxruntime.transformers gpt2 fusions, then online ALL",
            "load_ms": (time.perf_counter() - start) * 1e3,
            "nodes": len(optimized.model.graph.node),
            "call_us": median_us(lambda: session.run(None, feeds), calls),
            "fused": sorted({n.op_type for n in optimized.model.graph.node} - before)}


def default_artifacts(tmp: Path) -> Path:
    """A random-weight model of the shipped default's shape, exported (needs torch)."""
    import torch
    from lantern_edge.export.api import export_checkpoint
    from lantern_edge.model.checkpoint import save_checkpoint
    from lantern_edge.model.config import ControllerConfig, ModelConfig
    from lantern_edge.model.modeling import LanternModel
    from lantern_edge.model.tokenizer import char_tokenizer
    from lantern_edge.model.training import PRESETS
    shape = {k: PRESETS["small"][k] for k in (
        "vocab_size", "hidden_size", "num_heads", "intermediate_size", "num_blocks",
        "window_size", "max_position", "max_global_tokens")}
    torch.manual_seed(0)
    model = LanternModel(ModelConfig(**shape, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                                     think_token_id=3)).eval()
    chars = [chr(0x100 + i) for i in range(shape["vocab_size"])]
    save_checkpoint(tmp / "default.pt", model, ControllerConfig(), char_tokenizer(chars).to_str())
    export_checkpoint(tmp / "default.pt", tmp / "artifacts")
    return tmp / "artifacts"


def print_tables(rows: list[dict], offline: list[dict], threads: list[int], root: Path) -> None:
    sizes = {p.name: p.stat().st_size for p in root.iterdir() if p.is_file()}
    print("| graph | nodes (ORT-optimised) | " +
          " | ".join(f"run t{n} µs | bound t{n} µs" for n in threads) + " |")
    print("|---" * (2 + 2 * len(threads)) + "|")
    for r in rows:
        cells = []
        for n in threads:
            bound = r.get(f"bound_t{n}")
            cells += [f"{r[f'run_t{n}']:.1f}", "" if bound is None else f"{bound:.1f}"]
        print(f"| {r['graph']} | {r['nodes']} ({r['ort_nodes']}) | " + " | ".join(cells) + " |")
    print(f"\nweights.bin {sizes.get('weights.bin', 0) / 1e6:.2f} MB, all files "
          f"{sum(sizes.values()) / 1e6:.2f} MB")
    print("\n| block0 variant | nodes | weights MB | session load ms | run t1 µs |\n"
          "|---|---|---|---|---|")
    for r in offline:
        extra = f" (adds {', '.join(r['fused'])})" if r.get("fused") else ""
        weights = f"{r['weights_mb']:.2f}" if "weights_mb" in r else ""
        print(f"| {r['variant']}{extra} | {r['nodes']} | {weights} | {r['load_ms']:.1f} | "
              f"{r['call_us']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("artifacts", nargs="?", help="artifacts directory (default: export a "
                                                "random model of the default shape)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads")
    p.add_argument("--calls", type=int, default=2000, help="timed calls per graph")
    p.add_argument("--spinning", action="store_true",
                   help="let intra-op threads spin (the runtime turns spinning off)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    global SPINNING
    SPINNING = "1" if args.spinning else "0"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.artifacts) if args.artifacts else default_artifacts(Path(tmp))
        rows = bench_graphs(root, args.threads, args.calls)
        offline = bench_offline(root, "block0.onnx", "block", args.calls)
        print_tables(rows, offline, args.threads, root)
    if args.json:
        Path(args.json).write_text(json.dumps({"graphs": rows, "offline": offline}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
