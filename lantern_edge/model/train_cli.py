"""`lantern-edge train`: corpus -> tokenizer -> LANTERN checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from ..errors import LanternError


def _parser() -> argparse.ArgumentParser:
    from .training import PRESETS, TrainConfig
    p = argparse.ArgumentParser(
        prog="lantern-edge train",
        description="Train a byte-level BPE tokenizer and a LANTERN model (random depth, THINK "
                    "insertion, halting objective); writes a lantern-edge checkpoint.",
        argument_default=argparse.SUPPRESS)   # only flags the user typed override the preset
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--corpus", nargs="+", help="a directory or text files (default: the Python stdlib)")
    p.add_argument("-o", "--output", help="checkpoint path (default: checkpoint.pt)")
    p.add_argument("--resume", help="continue from this checkpoint (written by lantern-edge train)")
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("output", "corpus"):
            continue
        flag = "--" + field.name.replace("_", "-")
        p.add_argument(flag, type=_arg_type(str(field.type)), dest=field.name)
    p.add_argument("-q", "--quiet", action="store_true", default=False)
    return p


def _arg_type(annotation: str):
    """argparse type for a TrainConfig annotation ("int", "float | None", "bool", ...)."""
    for prefix, kind in (("bool", _bool), ("int", int), ("float", float)):
        if annotation.startswith(prefix):
            return kind
    return str


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    from .training import PRESETS, TrainConfig, train
    args = vars(_parser().parse_args(argv))
    preset = args.pop("preset", "small")
    resume = args.pop("resume", None)
    quiet = args.pop("quiet", False)
    if "corpus" in args:
        args["corpus"] = tuple(args["corpus"])
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        cfg = TrainConfig(**{**PRESETS[preset], **args})
        meta = train(cfg, resume=resume, progress=not quiet)
    except (ValueError, LanternError, OSError) as e:
        print(f"lantern-edge train: {e}", file=sys.stderr)
        return 2
    final = meta["eval_loss_per_depth"]
    print(f"saved {cfg.output}: {meta['parameters']} parameters, {meta['steps']} steps, "
          f"{meta['train_seconds']:.0f} s; validation loss per depth: "
          + ", ".join(f"{d}: {v:.3f}" for d, v in final.items()))
    return 0
