"""Decode speed of lantern_edge.Runtime: fixed path vs adaptive, per band, controller overhead.

    python benchmarks/bench_runtime.py                          # builds its models (needs torch)
    python benchmarks/bench_runtime.py --model artifacts/tiny --tokens 256 --threads 1 2

For each model and intra-op thread setting it generates `--tokens` new tokens, greedy, and
reports decode tokens/s (prefill excluded), microseconds per token, the controller overhead
(share of the decode wall time spent outside ONNX Runtime calls: NumPy, Python, tokenizer),
mean block iterations per token and the band mix, for:

- fixed:      adaptive=False, the steps_base path (no signals computed);
- adaptive:   the manifest's controller defaults;
- calibrated: thresholds at the 40/70/90% quantiles of U measured on this prompt, so every band
              fires (the way the README suggests tuning them);
- confident / moderate / high / very_high: every token forced into that band (cost per band;
              very_high injects THINK until the global buffer is full, then deepens).

Each run is repeated `--repeats` times, modes interleaved, and the fastest kept: the machine is
shared, so compare ratios within one invocation rather than absolute numbers across runs.
Without --model it exports (into a temporary directory) a randomly initialised model of the
default shape (hidden 256, 4 heads, SwiGLU 768, 2 blocks, window 128, vocab 4096, steps 2/4)
and, when present, the upstream fixture (a trained char-level model: a real band mix).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

from lantern_edge import Runtime
from lantern_edge.benchmark.bands import FORCED, calibrated
from lantern_edge.errors import ArtifactError, TokenizerError

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = REPO / "tests" / "fixtures" / "upstream_lantern_small" / "checkpoint.pt"


def build_models(out: Path) -> dict[str, Path]:
    """A random default-shaped model and the upstream fixture, exported into out."""
    try:
        import torch
    except ModuleNotFoundError as e:
        raise SystemExit("building benchmark models needs torch (pip install torch==2.13.0 "
                         "'lantern-edge[export]'), or pass --model ARTIFACTS") from e
    from lantern_edge.export.api import export_checkpoint
    from lantern_edge.model.checkpoint import save_checkpoint
    from lantern_edge.model.config import ControllerConfig, ModelConfig
    from lantern_edge.model.modeling import LanternModel
    from lantern_edge.model.tokenizer import char_tokenizer

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=4096, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                         think_token_id=3)
    model = LanternModel(config).eval()
    with torch.no_grad():                    # larger weights than the init: varied attention
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    chars = [chr(0x4E00 + i) for i in range(config.vocab_size)]
    save_checkpoint(out / "random.pt", model, ControllerConfig(), char_tokenizer(chars).to_str())
    models = {"random-default-shape": export_checkpoint(out / "random.pt", out / "random").out_dir}
    if UPSTREAM.exists():
        models["upstream-fixture"] = export_checkpoint(UPSTREAM, out / "upstream").out_dir
    return models


def prompt_ids(runtime: Runtime, text: str) -> list[int]:
    try:
        return runtime.encode(text).tolist()
    except TokenizerError:                   # a vocabulary without these characters
        return list(range(10, 10 + len(text)))


def measure(runtime: Runtime, prompt: list[int], tokens: int, repeats: int,
            modes: dict[str, dict]) -> dict[str, dict]:
    best: dict[str, dict] = {}
    common = dict(max_new_tokens=tokens, ignore_eos=True, seed=0)
    for overrides in modes.values():                             # warm-up
        runtime.generate(prompt, **{**common, **overrides, "max_new_tokens": 8})
    for _ in range(repeats):
        for name, overrides in modes.items():
            result = runtime.generate(prompt, **{**common, **overrides})
            stats = result.stats
            if name not in best or stats["decode_tokens_per_second"] > best[name]["tok_s"]:
                best[name] = {
                    "tok_s": stats["decode_tokens_per_second"],
                    "us_per_token": 1e6 / stats["decode_tokens_per_second"],
                    "overhead": stats["controller_overhead"],
                    "iterations": stats["mean_iterations_per_block"],
                    "bands": stats["band_counts"], "mc_calls": stats["mc_calls"],
                    "think": stats["think_injections"], "deepened": stats["deepened"],
                    "tokens": stats["new_tokens"]}
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", action="append", help="artifacts directory (repeatable)")
    p.add_argument("--prompt", default=" License, each Contributor hereby grants to You ")
    p.add_argument("--tokens", type=int, default=200, help="new tokens per run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="intra-op threads per session (0: the runtime's default)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "int8"],
                   help="graph precisions to run (int8: built with `lantern-edge quantize`)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        models = ({Path(m).name: Path(m) for m in args.model} if args.model
                  else build_models(Path(tmp)))
        results = []
        for (name, path), precision, threads in itertools.product(
                models.items(), args.precision, args.threads):
            try:
                runtime = Runtime(path, intra_op_threads=threads or None, precision=precision,
                                  providers=["CPUExecutionProvider"])
            except ArtifactError as e:                  # e.g. no int8 graphs: say so, go on
                print(f"{name} {precision}: skipped: {e}")
                continue
            prompt = prompt_ids(runtime, args.prompt)
            modes = {"fixed": dict(adaptive=False), "adaptive": {},
                     "calibrated": calibrated(runtime, prompt, args.tokens),
                     **FORCED}
            for mode, row in measure(runtime, prompt, args.tokens, args.repeats,
                                     modes).items():
                results.append({"model": name + ("" if precision == "fp32" else "/int8"),
                                "threads": threads or "default",
                                "mode": mode, **row})
                print_row(results[-1], results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def print_row(row: dict, results: list[dict]) -> None:
    if len(results) == 1:
        print(f"{'model':<22} {'thr':>3} {'mode':<10} {'tok/s':>7} {'us/tok':>7} {'vs fixed':>8} "
              f"{'overhead':>8} {'iters':>5}  bands c/m/h/vh  MC THINK deep")
    fixed = next((r for r in results if r["model"] == row["model"] and
                  r["threads"] == row["threads"] and r["mode"] == "fixed"), row)
    b = row["bands"]
    print(f"{row['model']:<22} {row['threads']!s:>3} {row['mode']:<10} {row['tok_s']:>7.0f} "
          f"{row['us_per_token']:>7.0f} {row['tok_s'] / fixed['tok_s']:>8.2f} "
          f"{row['overhead']:>8.1%} {row['iterations']:>5.2f}  "
          f"{b['confident']}/{b['moderate']}/{b['high']}/{b['very_high']}  "
          f"{row['mc_calls']} {row['think']} {row['deepened']}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
