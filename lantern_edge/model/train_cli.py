"""`lantern-edge train`: corpus -> tokenizer -> LANTERN checkpoint (main(argv) -> exit code).

Flags mirror TrainConfig fields; only the flags typed override the preset (or, with --resume,
the run's own stored config). Bad values exit with code 2 and one line, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from ..errors import LanternError
from .corpus import OFFLINE_CORPORA

PROG = "lantern-edge train"
# Help for the TrainConfig fields that become flags (the rest is in training.TrainConfig).
FIELD_HELP = {
    "offline_corpus": "without --corpus: stdlib, or closure (the stdlib plus the Python sources "
                      "of the installed dependency closure of lantern-edge[export,dev])",
    "corpus_max_chars": "cap on characters per split (a deterministic sample of files)",
    "val_fraction": "share of files held out for validation (split by file)",
    "vocab_size": "byte-level BPE vocabulary size, special tokens included",
    "init_from": "start from these weights: a checkpoint, or an artifacts directory such as the "
                 "shipped model's (its tokenizer and shape; halting heads and probe dropped "
                 "unless kept)",
    "tokenizer": "reuse this tokenizer.json (e.g. the shipped model's, so that models compare "
                 "token for token) instead of training one",
    "max_global_tokens": "global KV slots: BOS + at most this - 1 THINK tokens per sample",
    "steps_base": "iterations per block on the cheap path",
    "steps_reasoning": "most iterations per block; depths 1..this are trained and evaluated",
    "recursion_order": "sequence (block0 x d, block1 x d) or cycle (d cycles of all blocks)",
    "input_injection": "feed the token embedding back in: h = W [h ; e] (true or false)",
    "seq_len": "tokens per training sample, <bos> included",
    "lr": "peak learning rate (AdamW, linear warm-up then cosine)",
    "min_lr_ratio": "the cosine ends at lr * this",
    "max_steps": "optimizer steps in the run (the cosine spans them)",
    "max_minutes": "training-loop wall-time budget; the cosine follows it if it ends first",
    "weight_decay": "AdamW weight decay on matrices and embeddings (not norms or biases)",
    "grad_clip": "max global gradient norm",
    "dtype": "fp32, or bf16 autocast (losses stay fp32)",
    "device": "auto picks CUDA when torch sees a GPU",
    "think_rate": "chance per position of a <think> token inserted before it",
    "mixed_depth_fraction": "share of batches trained with a random depth per token",
    "late_position_fraction": "share of batches placed at a random position offset (trains "
                              "every learned position row, not only the first seq_len)",
    "halting_weight": "weight of the halting-head loss",
    "deep_supervision": "a loss at every depth's exit, weights rising with depth (true/false)",
    "think_placement": "random positions, or hard: after the tokens of highest cheap-pass loss",
    "corrector_steps": "error-corrector phase steps after the main loop (0: none)",
    "corrector_minutes": "wall-time budget of the error-corrector phase",
    "corrector_weight": "deep-continuation loss weight on tokens the cheap pass gets wrong",
    "corrector_lr_ratio": "error-corrector peak learning rate = lr * this",
    "probe_hidden": "probe phase: width of the depth probe trained on the frozen model (0: none)",
    "probe_steps": "probe phase steps",
    "probe_minutes": "probe phase wall-time budget",
    "probe_lr": "probe phase learning rate",
    "probe_label": "positive when going deep lowers the loss by > gamma (gain), fixes the "
                   "top-1 (fix), or either",
    "probe_gamma": "loss drop in nats that labels a token positive (gain, either)",
    "main_output": "also keep the checkpoint as the main loop left it (before the corrector "
                   "and probe phases) at this path",
    "mc_refinement": "keep the MC-averaging band next to the probe trigger (true/false)",
    "deep_budget": "share of tokens the calibrated tau_probe sends deep",
    "eval_interval": "steps between validation runs and checkpoints",
    "eval_batches": "fixed validation batches per depth",
    "threads": "torch CPU threads while training (default: torch's choice; tiny preset: 1)",
}
CHOICES = {"dtype": ("fp32", "bf16"), "device": ("auto", "cpu", "cuda"),
           "offline_corpus": OFFLINE_CORPORA, "recursion_order": ("sequence", "cycle"),
           "think_placement": ("random", "hard"), "probe_label": ("gain", "fix", "either")}


class UsageError(Exception):
    """A bad command line (raised instead of argparse's print-and-exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    from .training import PRESETS, TrainConfig
    parser = _Parser(
        prog=PROG,
        description="Train a byte-level BPE tokenizer and a LANTERN model (random recursion "
                    "depth, THINK insertion, halting objective) and write a checkpoint.",
        epilog="Example: lantern-edge train --preset tiny --max-minutes 1 -o tiny.pt",
        argument_default=argparse.SUPPRESS)        # only typed flags override the preset
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="starting configuration (default: small; with --resume, the run's own)")
    parser.add_argument("--corpus", nargs="+", metavar="DIR|FILE",
                        help="a directory or text files (default: the Python standard library)")
    parser.add_argument("-o", "--output", metavar="CHECKPOINT",
                        help="checkpoint path (default: checkpoint.pt)")
    parser.add_argument("--resume", metavar="CHECKPOINT",
                        help="continue a run from its checkpoint: optimizer, schedule, RNG "
                             "(default: a new run)")
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("output", "corpus"):
            continue
        kind = _arg_type(str(field.type))
        parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=kind,
                            choices=CHOICES.get(field.name),
                            metavar=None if field.name in CHOICES else field.name.upper(),
                            help=_field_help(field, PRESETS))
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar; warnings only")
    return parser


def _field_help(field: dataclasses.Field, presets: dict) -> str:
    """The field's help and its default per preset (the flags' own default is "not typed")."""
    if "(default" in FIELD_HELP.get(field.name, ""):
        return FIELD_HELP[field.name]
    text = FIELD_HELP.get(field.name, field.name.replace("_", " "))
    small, tiny = (presets[p].get(field.name, field.default) for p in ("small", "tiny"))
    show = lambda v: "none" if v is None else v  # noqa: E731
    if small == tiny:
        return f"{text} (default: {show(small)})"
    return f"{text} (default: {show(small)}; tiny preset: {show(tiny)})"


def _arg_type(annotation: str):
    """The argparse type of a TrainConfig annotation ("int", "float | None", "bool", ...)."""
    for prefix, kind in (("bool", _bool), ("int", int), ("float", float)):
        if annotation.startswith(prefix):
            return kind
    return str


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        print(f"{PROG}: {e} (see {PROG} --help)", file=sys.stderr)
        return 2
    except SystemExit as e:          # --help
        return int(e.code or 0)
    from .training import PRESETS, TrainConfig, resume_config, train

    quiet = args.pop("quiet", False)
    preset, resume = args.pop("preset", None), args.pop("resume", None)
    if "corpus" in args:
        args["corpus"] = tuple(args["corpus"])
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if resume and preset:
            raise ValueError("--preset cannot be combined with --resume: a resumed run keeps "
                             "its own config; override single fields instead")
        cfg = resume_config(resume, **args) if resume else TrainConfig(
            **{**PRESETS[preset or "small"], **args})
        meta = train(cfg, resume=resume, progress=not quiet)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the checkpoint written so far can be continued with "
              f"--resume", file=sys.stderr)
        return 130
    except (ValueError, LanternError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    losses = meta["eval_loss_per_depth"]
    print(f"saved {cfg.output}: {meta['parameters']:,} parameters, {meta['steps']} steps, "
          f"{meta['tokens_seen']:,} tokens, {meta['train_seconds']:.0f} s; validation loss per "
          f"depth: " + ", ".join(f"{d}: {v:.3f}" for d, v in losses.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
