"""`lantern-edge generate PROMPT [--model PATH] [...]`: stream a completion, optionally traced."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys

from ..cli_help import HelpFormatter
from ..errors import LanternError

# ANSI colours per band; plain text when stdout is not a terminal or NO_COLOR is set.
COLOURS = {"confident": "32", "moderate": "36", "high": "33", "very_high": "35", None: "0"}
# Repetition controls on by default in the CLI (the Python API and the server keep Hugging
# Face's and OpenAI's defaults, off): without them greedy output of the small shipped model
# loops on everyday prompts. Measured with `python -m lantern_edge.evaluation.repetition`.
REPETITION_PENALTY = 1.15
NO_REPEAT_NGRAM_SIZE = 6


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lantern-edge generate", formatter_class=HelpFormatter,
                                description="Generate text with a LANTERN artifacts directory.")
    p.add_argument("prompt", help="the text to complete; - reads it from stdin")
    p.add_argument("--model", default=None,
                   help="artifacts directory or its model.onnx (default: the shipped model)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of sampling and MC-dropout masks (default: a fresh random seed)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop before TEXT, which is cut from the output; repeatable (default: none)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature, with --do-sample (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample among the k most likely tokens (default: all)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set with this mass, in (0, 1] (default: off)")
    p.add_argument("--min-p", type=float, default=None,
                   help="drop tokens below this share of the top token's probability (default: off)")
    p.add_argument("--repetition-penalty", type=float, default=REPETITION_PENALTY,
                   help="divide the logits of tokens already in the text by this, > 0; 1 turns "
                        f"it off (default: {REPETITION_PENALTY})")
    p.add_argument("--no-repeat-ngram-size", type=int, default=NO_REPEAT_NGRAM_SIZE,
                   help="never repeat an n-gram of this many tokens; 0 turns it off "
                        f"(default: {NO_REPEAT_NGRAM_SIZE})")
    p.add_argument("--deep-trigger", choices=("u", "probe"), default=None,
                   help="what sends a token deep: the U bands, or the learned depth probe "
                        "(default: the model's manifest)")
    p.add_argument("--tau-probe", type=float, default=None,
                   help="with --deep-trigger probe: go deep when p_benefit >= this "
                        "(default: the model's manifest)")
    p.add_argument("--int8", action="store_true", help="use the INT8 graphs (default: fp32)")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--adaptive", dest="adaptive", action="store_const", const=True,
                       default=None, help="the adaptive controller: uncertainty signals, "
                       "extra compute where unsure (default: the model's manifest)")
    depth.add_argument("--no-adaptive", dest="adaptive", action="store_const", const=False,
                       help="the fixed steps_base path, no uncertainty signals (default: the "
                            "model's manifest)")
    p.add_argument("--no-token-healing", action="store_true",
                   help="keep a prompt's trailing whitespace tokens as they are (default: "
                        "regenerate them, so 'def f(x):\\n' gets an indented body)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per ONNX Runtime session (default: 1)")
    p.add_argument("--trace", action="store_true",
                   help="colour each token by band and print a per-band summary")
    p.add_argument("--json", action="store_true", help="print the result and its trace as JSON")
    return p


def visible(text: str) -> str:
    """Control characters (ESC, BEL, CR, C1 ...) as \\x.. escapes: generated text is shown,
    never executed by the terminal. Newlines and tabs pass."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _colour(text: str, band: str | None, enabled: bool) -> str:
    return f"\x1b[{COLOURS[band]}m{text}\x1b[0m" if enabled and text else text


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.prompt == "-":
        args.prompt = sys.stdin.read()
    from .generate import Runtime
    overrides = {"max_new_tokens": args.max_new_tokens, "seed": args.seed,
                 "adaptive": args.adaptive, "do_sample": args.do_sample,
                 "token_healing": not args.no_token_healing}
    for name in ("temperature", "top_k", "top_p", "stop", "min_p", "repetition_penalty",
                 "no_repeat_ngram_size", "deep_trigger", "tau_probe"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    try:
        runtime = Runtime(args.model, precision="int8" if args.int8 else "fp32",
                          intra_op_threads=args.threads)
        if args.json:
            result = runtime.generate(args.prompt, **overrides)
            out = {k: v for k, v in dataclasses.asdict(result).items()}
            print(json.dumps(out, indent=1))
            return 0
        colour = args.trace and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        trace = []
        for token in runtime.stream(args.prompt, **overrides):
            trace.append(token.trace)
            text = visible(token.text)
            piece = _colour(text, token.trace.band, colour) if args.trace else text
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except (LanternError, ValueError) as e:
        print(f"lantern-edge generate: {e}", file=sys.stderr)
        return 2
    if args.trace:
        print(_summary(trace, colour))
    return 0


def _summary(trace, colour: bool) -> str:
    """Per-band table: tokens, mean U, block iterations per token (cheap + deep), MC, THINK."""
    lines = ["", f"{'band':<10} {'tokens':>6} {'mean U':>7} {'iters/blk':>9} {'MC':>3} "
                 f"{'THINK':>5} {'deep':>4}"]
    for band in ("confident", "moderate", "high", "very_high", None):
        rows = [t for t in trace if t.band == band]
        if not rows:
            continue
        name = band or "fixed"
        # the fixed path computes no signals: no U to average
        mean_u = f"{sum(t.u for t in rows) / len(rows):>7.2f}" if band else f"{'-':>7}"
        iters = sum((sum(t.iterations) + sum(t.deep_iterations or ())) / len(t.iterations)
                    for t in rows) / len(rows)
        lines.append(f"{_colour(f'{name:<10}', band, colour)} {len(rows):>6} "
                     f"{mean_u} {iters:>9.2f} {sum(t.mc_samples > 0 for t in rows):>3} "
                     f"{sum(t.think_injected for t in rows):>5} {sum(t.deepened for t in rows):>4}")
    total_us = sum(t.microseconds for t in trace)
    if trace:
        lines.append(f"{len(trace)} tokens, {len(trace) / (total_us / 1e6):.0f} tok/s")
    return "\n".join(lines)
