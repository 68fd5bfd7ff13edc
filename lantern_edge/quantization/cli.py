"""`lantern-edge quantize ARTIFACTS [--mode dynamic|static|nbits] [--per-channel] [--block-size N]
[--calibration F...]`."""

from __future__ import annotations

import argparse
import sys

from ..cli_help import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lantern-edge quantize", formatter_class=HelpFormatter,
                                description="Write INT8 graphs beside an artifacts directory's "
                                            "fp32 ones and print a quality report.")
    p.add_argument("artifacts", help="artifacts directory (holding lantern.json)")
    p.add_argument("--mode", choices=("nbits", "dynamic", "static"), default="nbits",
                   help="nbits: ONNX Runtime's MatMulNBits, 8-bit weights with a scale per "
                        "block of --block-size input features, activations quantized per block "
                        "(fastest, closest to fp32); dynamic: per-tensor int8 weights, "
                        "activations quantized per call; static: QDQ with activation ranges "
                        "calibrated on text")
    p.add_argument("--block-size", type=int, default=None,
                   help="nbits mode: input features per weight scale, 16, 32, 64, 128 or 256 "
                        "(default: the largest up to 128 that divides the model's sizes)")
    p.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    p.add_argument("--calibration", nargs="+", default=None,
                   help="text files for static calibration (default: the local Python standard "
                        "library's train split)")
    p.add_argument("--force", action="store_true", help="redo existing INT8 graphs")
    p.add_argument("--no-eval", action="store_true", help="skip the quality report")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..errors import LanternError
    from .api import main_summary, quantize_artifacts
    try:
        report = quantize_artifacts(args.artifacts, mode=args.mode, per_channel=args.per_channel,
                                    calibration=args.calibration, force=args.force,
                                    evaluate=not args.no_eval, block_size=args.block_size,
                                    progress=lambda m: print(f"  {m}", flush=True))
    except (LanternError, OSError) as e:
        print(f"lantern-edge quantize: {e}", file=sys.stderr)
        return 2
    print(main_summary(report))
    return 0
