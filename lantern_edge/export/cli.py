"""`lantern-export CHECKPOINT [-o OUTDIR] [--opset N] [--int8] [--force] [--vocab V] [--debug]`."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lantern-export",
        description="Export a LANTERN checkpoint (lantern-edge's own or upstream LANTERN's) to a "
                    "verified directory of ONNX graphs for the lantern-edge runtime.")
    p.add_argument("checkpoint", help="checkpoint.pt to export")
    p.add_argument("-o", "--output", default=None,
                   help="artifacts directory to create (default: artifacts/<checkpoint name>)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 18 (default 18)")
    p.add_argument("--int8", action="store_true", help="also write INT8 graphs (quantization)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--vocab", default=None,
                   help="upstream char vocabulary (vocab.json; default: the one beside the checkpoint)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _table(report) -> str:
    rows = [("file", "size")] + [(name, _size(n)) for name, n in report.sizes.items()]
    rows.append(("total", _size(sum(report.sizes.values()))))
    width = max(len(r[0]) for r in rows)
    lines = [f"  {a:<{width}}  {b:>10}" for a, b in rows]
    lines.append("")
    lines += [f"  parity {name:<20} {value:.2e}" for name, value in report.parity.items()]
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.output) if args.output else Path("artifacts") / Path(args.checkpoint).stem
    try:
        from ..errors import LanternError
        from .api import ParityError, export_checkpoint
    except ModuleNotFoundError as e:
        print(f"lantern-export: needs {e.name}: pip install torch==2.13.0 \"lantern-edge[export]\"",
              file=sys.stderr)
        return 2
    quantize = None
    if args.int8:
        try:
            from ..quantization.api import quantize_artifacts as quantize
        except ImportError:
            print("lantern-export: --int8 is not available yet: the quantization step "
                  "(lantern_edge.quantization) is not part of this version", file=sys.stderr)
            return 2
    try:
        report = export_checkpoint(args.checkpoint, out, opset=args.opset, force=args.force,
                                   vocab=args.vocab, progress=lambda m: print(f"  {m}", flush=True))
    except ParityError as e:
        print(f"lantern-export: {e}", file=sys.stderr)
        return 1
    except (LanternError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"lantern-export: {e}", file=sys.stderr)
        return 2
    print(f"exported {report.checkpoint_kind} checkpoint to {report.out_dir} "
          f"in {report.seconds:.1f} s\n{_table(report)}")
    if quantize is not None:
        return quantize(report.out_dir, progress=lambda m: print(f"  {m}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
