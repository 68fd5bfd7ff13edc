"""INT8 modes side by side on one model: size, quality against fp32, decode speed.

    python benchmarks/bench_quantize.py                          # the shipped model
    python benchmarks/bench_quantize.py --model DIR --rounds 6 --tokens 256

Each configuration (`--mode dynamic`, and `--mode nbits` at each block size in --block-sizes)
quantizes a copy of the model's directory with `lantern-edge quantize`'s own code, which writes
the quality report (held-out stdlib text, teacher-forced: top-1 agreement with fp32, perplexity
change, band agreement). Then every configuration decodes greedily at fixed depth, EOS ignored,
in interleaved rounds at 1 and 2 intra-op threads (one Runtime each, all in this process), timed
from the stream's token stamps like benchmarks/peers.py. Prints a Markdown table, best / median
tok/s, with the load average. Needs the `quantize` extra (onnx).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lantern_edge import Runtime  # noqa: E402
from lantern_edge.benchmark.decode import stream_tok_s  # noqa: E402
from lantern_edge.quantization.api import quantize_artifacts  # noqa: E402
from lantern_edge.runtime.generate import DEFAULT_MODEL_DIR  # noqa: E402

PROMPT = "def read_config(path):\n    with open(path) as f:\n"


def decode_rate(runtime: Runtime, prompt: list[int], tokens: int) -> float:
    return stream_tok_s(runtime, prompt, tokens, ignore_eos=True, adaptive=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args(argv)
    configs = [("dynamic", None)] + [("nbits", b) for b in args.block_sizes]
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for mode, block in configs:
            root = Path(work) / f"{mode}{block or ''}"
            shutil.copytree(args.model, root)
            report = quantize_artifacts(root, mode=mode, force=True, block_size=block)
            weights32, weights8 = report.sizes["weights"]
            rows[(mode, block)] = dict(quality=report.quality, size=weights8 / weights32,
                                       runtimes={}, rates={1: [], 2: []})
            for threads in (1, 2):
                runtime = Runtime(root, precision="int8", intra_op_threads=threads,
                                  providers=["CPUExecutionProvider"])
                prompt = runtime.encode(PROMPT).tolist()
                decode_rate(runtime, prompt, 16)                          # warm-up
                rows[(mode, block)]["runtimes"][threads] = (runtime, prompt)
        before = os.getloadavg()
        for _ in range(args.rounds):
            for row in rows.values():
                for threads, (runtime, prompt) in row["runtimes"].items():
                    row["rates"][threads].append(decode_rate(runtime, prompt, args.tokens))
        after = os.getloadavg()
    print(f"INT8 modes of {args.model}: quality on held-out text against fp32 (the quantize "
          f"report), fixed-path greedy decode of {args.tokens} tokens, best / median tok/s of "
          f"{args.rounds} interleaved rounds; load average {before[0]:.1f} before, "
          f"{after[0]:.1f} after.\n")
    print("| mode | int8 / fp32 weights | top-1 agreement | perplexity change | band agreement "
          "| decode, 1 thread | decode, 2 threads |")
    print("|---|---|---|---|---|---|---|")
    for (mode, block), row in rows.items():
        q = row["quality"]
        name = f"nbits, block {block}" if block else mode
        cells = [f"{max(v):.0f} / {statistics.median(v):.0f}" for v in row["rates"].values()]
        print(f"| {name} | {row['size']:.2f} | {q['top1_agreement']:.2%} | "
              f"{q['perplexity_delta_pct']:+.2f}% | {q['band_agreement']:.2%} | "
              f"{cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
