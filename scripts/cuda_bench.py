"""Decode speed of the shipped model on CUDA against CPU, in one process, one Markdown table.

    python scripts/cuda_bench.py [--tokens 256] [--repeats 5]

For each execution provider (CPU, then CUDA when onnxruntime offers it) and precision, it
loads lantern_edge.Runtime and times greedy generation, EOS ignored, with the fixed path and
the adaptive defaults interleaved (lantern_edge.benchmark.decode.measure_modes: the fastest of
--repeats runs): decode tok/s and the per-token latency median and p90. It also checks that
CUDA fp32 produces CPU fp32's tokens on the fixed path. Exit status 1 when CUDA is not
available or its tokens differ; the table is printed either way.
"""

from __future__ import annotations

import argparse
import sys

import onnxruntime as ort

from lantern_edge import Runtime
from lantern_edge.benchmark.decode import measure_modes

PROMPT = "def read_config(path):"
MODES = {"fixed": {"adaptive": False}, "adaptive": {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"] + (["CUDAExecutionProvider"]
                                            if "CUDAExecutionProvider" in available else [])
    print(f"onnxruntime {ort.__version__}, providers {available}; {args.tokens} new tokens, "
          f"best of {args.repeats}\n")
    print("| provider | precision | mode | tok/s | µs/token median | µs/token p90 |")
    print("|---|---|---|---|---|---|")
    tokens = {}
    for provider in providers:
        for precision in ("fp32", "int8"):
            runtime = Runtime(precision=precision, providers=[provider])
            prompt = runtime.encode(PROMPT).tolist()
            rows = measure_modes(runtime, prompt, args.tokens, args.repeats, MODES)
            for mode, row in rows.items():
                print(f"| {provider.removesuffix('ExecutionProvider')} | {precision} | {mode} | "
                      f"{row['tok_s']:.0f} | {row['us_median']:.0f} | {row['us_p90']:.0f} |")
            tokens[provider, precision] = rows["fixed"]["token_ids"]
    if len(providers) < 2:
        print("\nFAIL: no CUDAExecutionProvider in this onnxruntime")
        return 1
    same = tokens["CUDAExecutionProvider", "fp32"] == tokens["CPUExecutionProvider", "fp32"]
    print(f"\nCUDA fp32 tokens {'==' if same else '!='} CPU fp32 tokens (fixed path, "
          f"{args.tokens} tokens)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
