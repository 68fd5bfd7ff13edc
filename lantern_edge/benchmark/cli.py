"""`lantern-edge bench`: decode speed, time to first token, peak RSS and the cost per band of an
artifacts directory against the PyTorch reference; writes bench.json and BENCH.md."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from ..errors import ArtifactError, LanternError
from .suite import NAMES, BenchSettings
from ..cli_help import HelpFormatter

DEFAULT = "default"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lantern-edge bench", formatter_class=HelpFormatter,
        description="Benchmark an artifacts directory: decode tokens/s and per-token latency "
                    "(PyTorch full recompute, PyTorch with KV state, ONNX fp32/INT8 with the "
                    "adaptive controller off and on), time to first token, peak RSS, controller "
                    "overhead and the cost of each band. Each configuration runs in its own "
                    "process. Writes bench.json and BENCH.md and prints the tables.")
    p.add_argument("--model", default=DEFAULT, metavar="DIR|default",
                   help="artifacts directory (or its model.onnx); 'default': the shipped model")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="PT",
                   help="checkpoint the artifacts were exported from, for the PyTorch rows "
                        "(default: DIR/checkpoint.pt if present, else the reference rebuilt from "
                        "the fp32 graphs; without torch those rows are skipped with the reason)")
    p.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 2048], metavar="N",
                   help="new tokens per decode run")
    p.add_argument("--prompt-lengths", type=int, nargs="+", default=[32, 256, 1024],
                   metavar="N", help="prompt tokens for time to first token (BOS included); "
                                     "decode runs use the shortest")
    p.add_argument("--threads", type=int, nargs="+", default=[2], metavar="N",
                   help="intra-op threads per ONNX Runtime session / torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per measurement after a warm-up; the fastest is kept")
    p.add_argument("--time-box", type=float, default=60.0, metavar="SECONDS",
                   help="longest a full-recompute decode loop runs; the steps it does not reach "
                        "are timed at a few sequence lengths and interpolated (marked est.)")
    p.add_argument("--band-tokens", type=int, default=None, metavar="N",
                   help="new tokens per cost-shape run (default: the smallest --tokens)")
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16], metavar="S",
                   help="concurrent streams on one model (threads and batched); none: skip")
    p.add_argument("--concurrency-tokens", type=int, default=None, metavar="N",
                   help="new tokens per concurrent stream (default: the smallest --tokens)")
    p.add_argument("--configs", nargs="+", choices=NAMES, default=list(NAMES), metavar="NAME",
                   help=f"configurations to run, among: {', '.join(NAMES)}")
    p.add_argument("-o", "--output", type=Path, default=Path("bench_results"), metavar="DIR",
                   help="where to write bench.json and BENCH.md")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return p


def _model_dir(model: str) -> Path:
    if model != DEFAULT:
        return Path(model)
    from ..runtime.generate import DEFAULT_MODEL_DIR
    if not (DEFAULT_MODEL_DIR / "lantern.json").exists():
        raise ArtifactError(f"this install has no shipped default model ({DEFAULT_MODEL_DIR}); "
                            f"pass --model DIR (artifacts made by `lantern-export CHECKPOINT -o "
                            f"DIR`)")
    return DEFAULT_MODEL_DIR


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    from .report import render
    from .suite import run_benchmark

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        model = _model_dir(args.model)
        settings = BenchSettings(
            model=model.parent if model.is_file() else model, checkpoint=args.checkpoint,
            tokens=tuple(args.tokens), prompt_lengths=tuple(args.prompt_lengths),
            threads=tuple(args.threads), repeats=args.repeats, time_box=args.time_box,
            band_tokens=args.band_tokens, concurrency=tuple(args.concurrency),
            concurrency_tokens=args.concurrency_tokens, configurations=tuple(args.configs))
        results = run_benchmark(settings, progress,
                                " ".join(["lantern-edge bench", shlex.join(argv)]).strip())
    except (LanternError, ValueError) as e:
        print(f"lantern-edge bench: {e}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = render(results)
    (args.output / "BENCH.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"wrote {args.output / 'bench.json'} and {args.output / 'BENCH.md'}", file=sys.stderr)
    failed = [r for section in ("decode", "ttft", "cost_shape", "concurrency")
              for r in results[section]
              if r.get("error")]
    if failed:
        print(f"lantern-edge bench: {len(failed)} measurement(s) failed (see the notes)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
