"""`lantern-edge eval`: is the uncertainty signal a good controller? (main(argv) -> exit code)

Writes OUTPUT/eval.json (every number), OUTPUT/EVAL.md (tables and plain statements) and one
PNG per figure. `--figure NAME` recomputes only what that figure needs and updates its section
of an existing eval.json from the same run settings. Bad input exits with code 2 and one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import LanternError
from ..cli_help import HelpFormatter

PROG = "lantern-edge eval"
FORMAT, FORMAT_VERSION = "lantern-edge-eval", 1
# figure -> the section (part of the evaluation) that computes it
FIGURES = {"reliability": "signals", "risk_coverage": "signals", "compute": "compute",
           "think": "think", "retrieval": "retrieval"}
SECTIONS = ("signals", "compute", "think", "retrieval")
METHOD = (
    "Teacher-forced on the PyTorch reference (the model the ONNX graphs are held equal to).",
    "Signals come from the cheap pass (steps_base), as the runtime computes them.",
    "Extra compute per token is the runtime's very-high action with carried KV: a THINK token "
    "run at steps_reasoning (the token continued to steps_reasoning once the window's global "
    "buffer is full: the logits of a re-run at the cost of a continuation); MC averaging "
    "re-runs the last block's last cheap iteration with the runtime's dropout-mask recipe.",
    "Each held-out window is one generation: its global buffer starts empty.",
    "Adaptive points run one joint pass in which later tokens see the deep tokens' KV. The "
    "sweep's strategies decide from the cheap pass over an all-cheap context (\"flipped\" "
    "measures how many decisions the real context would change); the checkpoint's own "
    "controller decides on-policy, from the context its earlier decisions left (a fixed "
    "point, exact), when the deep action continues the token. Halting is off, as the "
    "runtime's default.",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Measure whether the uncertainty signals are a good compute controller: "
                    "AUROC and calibration, accuracy vs compute against fixed depth, random "
                    "and oracle allocation, THINK utility, sliding-window retrieval.",
        epilog="Example: lantern-edge eval --checkpoint tiny.pt --tokens 2048 -o eval_tiny")
    parser.add_argument("--checkpoint", "--model", metavar="PATH", default=None,
                        help="checkpoint or artifacts directory to evaluate (default: the "
                             "shipped model, its reference rebuilt from its fp32 graphs)")
    parser.add_argument("-o", "--output", default="eval_results", metavar="DIR",
                        help="where eval.json, EVAL.md and the PNGs go")
    parser.add_argument("--figure", choices=sorted(FIGURES), default=None,
                        help="compute and draw only this figure; its section of eval.json and "
                             "EVAL.md is updated (default: all figures)")
    parser.add_argument("--tokens", type=int, default=4096,
                        help="held-out tokens to predict (rounded up to whole windows)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="tokens per window, BOS included (default: the training seq_len, "
                             "leaving room for THINK tokens)")
    parser.add_argument("--mc-samples", type=int, default=None,
                        help="MC-dropout samples per token (default: the checkpoint's)")
    parser.add_argument("--fractions", type=float, nargs="+", default=None, metavar="F",
                        help="shares of tokens sent deep in the sweep (default: 2, 5, 10, 20%% "
                             "and the shares whose cost equals a fixed depth)")
    parser.add_argument("--retrieval-examples", type=int, default=24,
                        help="retrieval examples per distance and condition")
    parser.add_argument("--corpus", nargs="+", default=None, metavar="DIR|FILE",
                        help="held-out source (default: the checkpoint's own validation split)")
    parser.add_argument("--text", nargs="+", default=None, metavar="FILE",
                        help="evaluate on these text files, whole (e.g. a package outside "
                             "the training corpus) instead of a validation split (default: none)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of dropout masks, random allocation, bootstrap, retrieval")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (one is fastest for small models on a busy machine)")
    parser.add_argument("--no-think", action="store_true",
                        help="the very-high action continues the token deep instead of "
                             "injecting THINK (the runtime's inject_think=False; the default "
                             "for checkpoints whose controller has inject_think false)")
    parser.add_argument("--no-figures", action="store_true", help="write no PNGs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check(parser, args)
    except SystemExit as e:           # argparse printed the usage and the problem, or --help
        return int(e.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        written = run(args)
    except ModuleNotFoundError as e:
        if e.name == "matplotlib":
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2
        raise
    except (LanternError, ValueError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


def _check(parser: argparse.ArgumentParser, args) -> None:
    """Ranges argparse cannot express; parser.error exits with code 2 and the usage line."""
    for name in ("tokens", "retrieval_examples", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.mc_samples is not None and args.mc_samples < 2:
        parser.error(f"--mc-samples must be >= 2, got {args.mc_samples}")
    if args.text and args.corpus:
        parser.error("--text and --corpus both choose the held-out text; give one")
    if args.fractions and not all(0 < f <= 1 for f in args.fractions):
        parser.error(f"--fractions must lie in (0, 1], got {args.fractions}")


def run(args) -> list[Path]:
    """Compute the asked sections, merge them into eval.json, write EVAL.md and figures."""
    import torch

    from . import compute, heldout, quality, retrieval, signals, think
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    evaluated = heldout.load_evaluated(args.checkpoint)
    cfg, controller = evaluated.config, evaluated.controller
    mc_samples = args.mc_samples or controller.mc_samples
    # the runtime's very-high action: THINK when the checkpoint's controller says so
    inject_think = controller.inject_think and not args.no_think
    length = args.seq_len or heldout.default_window_length(evaluated)
    wanted = [FIGURES[args.figure]] if args.figure else list(SECTIONS)
    progress(f"{evaluated.path}: {evaluated.model.num_parameters():,} parameters; sections "
             f"{', '.join(wanted)}")
    if args.text:
        stream, info = heldout.text_stream(evaluated, args.text)
    else:
        stream, info = heldout.heldout_stream(evaluated, args.corpus)
    windows = heldout.make_windows(stream, info, cfg, args.tokens, length)
    run_info = {
        "checkpoint": str(args.checkpoint or evaluated.path), "sha256": evaluated.sha256,
        "flags": _flags(args),
        "model": {**cfg.to_dict(), "parameters": evaluated.model.num_parameters()},
        "controller": controller.to_dict(), "heldout": windows.description,
        "mc_samples": mc_samples, "seed": args.seed, "inject_think": inject_think,
        "method": list(METHOD)}
    out = Path(args.output)
    results = _previous(out / "eval.json", run_info) if args.figure else None
    results = results or {"format": FORMAT, "format_version": FORMAT_VERSION, "run": run_info,
                          "sections": {}, "seconds": {}}

    columns = None
    if set(wanted) & {"signals", "compute", "think"}:
        section_start = time.perf_counter()
        columns = signals.collect(evaluated.model, controller, windows.inputs, windows.targets,
                                  mc_samples, args.seed, progress)
        results["seconds"]["per_token_signals"] = time.perf_counter() - section_start
    for name in wanted:
        section_start = time.perf_counter()
        progress(f"section {name}")
        if name == "signals":
            section = quality.signal_quality(columns, cfg.steps_base)
        elif name == "compute":
            sweep = compute.Sweep(evaluated.model, controller, windows.inputs, windows.targets,
                                  columns, mc_samples, args.seed, inject_think=inject_think)
            fractions = args.fractions or compute.default_fractions(
                cfg.steps_base, cfg.steps_reasoning, sweep.extra)
            section = compute.accuracy_vs_compute(sweep, sorted(set(fractions)), progress)
        elif name == "think":
            section = {"utility": think.utility(columns, controller, cfg.steps_base, args.seed),
                       "attention": think.attention_to_think(evaluated.model, windows.inputs,
                                                             windows.targets, columns, controller)}
        else:
            section = retrieval.retrieval(evaluated.model, evaluated.tokenizer_json, stream,
                                          args.retrieval_examples, args.seed, progress)
        results["sections"][name] = section
        if name == "compute":
            results.setdefault("summary", {})["adaptive_vs_fixed"] = section["adaptive_vs_fixed"]
        results["seconds"][name] = time.perf_counter() - section_start
    return _write(out, results, args, wanted)


# flags that change the numbers, as typed on a command line that reproduces them
RESULT_FLAGS = ("checkpoint", "output", "tokens", "seq_len", "mc_samples", "fractions",
                "retrieval_examples", "corpus", "text", "seed", "no_think")


def _flags(args) -> str:
    """The result-changing flags that differ from their defaults, for "Reproduce" lines."""
    defaults = build_parser().parse_args([])
    parts = []
    for name in RESULT_FLAGS:
        value = getattr(args, name)
        if value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag)
        elif isinstance(value, list):
            parts.append(" ".join([flag, *map(str, value)]))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _previous(path: Path, run_info: dict) -> dict | None:
    """An existing eval.json of the same run settings, to update one section of."""
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if previous.get("format_version") != FORMAT_VERSION or _jsonable(run_info) != previous.get("run"):
        logging.getLogger(__name__).warning(
            "%s was written by a run with other settings (checkpoint, tokens, seed...); "
            "starting it afresh", path)
        return None
    return previous


def _write(out: Path, results: dict, args, wanted: list[str]) -> list[Path]:
    from . import plots, report
    out.mkdir(parents=True, exist_ok=True)
    results = _jsonable(results)
    (out / "eval.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "EVAL.md").write_text(report.render(results), encoding="utf-8")
    written = [out / "eval.json", out / "EVAL.md"]
    if not args.no_figures:
        figures = [args.figure] if args.figure else [f for f, s in FIGURES.items() if s in wanted]
        for figure in figures:
            draw = getattr(plots, figure)
            written.append(draw(results["sections"][FIGURES[figure]], out / f"{figure}.png"))
    return written


def _jsonable(value):
    """Plain JSON types: NumPy scalars and arrays converted, NaN and inf as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    return value


if __name__ == "__main__":
    raise SystemExit(main())
