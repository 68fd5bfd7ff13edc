"""`lantern-export CHECKPOINT [-o OUTDIR] [--opset N] [--int8] [--force] [--vocab V] [--debug]`.

Exit codes: 0 exported and verified; 1 the graphs disagree with the PyTorch reference (the
numbers are printed, nothing is written) or --int8 failed after the fp32 export; 2 bad input
(checkpoint, options, output location).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from ..cli_help import HelpFormatter
from ..extras import missing_message

DEFAULT_ROOT = Path("artifacts")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lantern-export",
        formatter_class=HelpFormatter,
        description="Export a LANTERN checkpoint (lantern-edge's own or upstream LANTERN's) to a "
                    "verified directory of ONNX graphs for the lantern-edge runtime.")
    p.add_argument("checkpoint", help="checkpoint file to export")
    p.add_argument("-o", "--output", default=None,
                   help="artifacts directory to create (default: ./artifacts/<checkpoint stem>)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or newer)")
    p.add_argument("--int8", action="store_true",
                   help="also write INT8 graphs (the quantization step)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing output directory (after the new export passes)")
    p.add_argument("--vocab", default=None,
                   help="upstream char vocabulary vocab.json (default: the one beside the "
                        "checkpoint)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    return p


def format_summary(report) -> str:
    """The summary table: one row per graph, then the other files and the total."""
    header = ("graph", "file", "weights", "nodes", "ORT nodes", "parity")
    rows = [(g.file, _size(g.file_bytes), _size(g.weight_bytes), str(g.nodes), str(g.ort_nodes),
             f"{g.parity:.1e}") for g in report.graphs]
    graph_files = {g.file for g in report.graphs}
    rows += [(name, _size(n), "", "", "", "") for name, n in report.sizes.items()
             if name not in graph_files]
    rows.append(("total", _size(report.total_bytes), "", "", "", ""))
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(row) -> str:
        return "  ".join([row[0].ljust(widths[0])] +
                         [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]).rstrip()
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append("")
    out.append("parity (max abs logit diff; uncertainty: relative): " + ", ".join(
        f"{name} {value:.1e}" for name, value in report.parity.items()))
    return "\n".join(out)


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} kB"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.output) if args.output else DEFAULT_ROOT / Path(args.checkpoint).stem
    try:
        from ..errors import LanternError
        from ..quantization.api import main_summary, quantize_artifacts
        from .api import ParityError, export_checkpoint
    except ModuleNotFoundError as e:
        message = missing_message("lantern-export", e)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    try:
        report = export_checkpoint(args.checkpoint, out, opset=args.opset, force=args.force,
                                   vocab=args.vocab, progress=lambda m: print(f"  {m}", flush=True))
    except ParityError as e:
        if args.debug:
            traceback.print_exc()
        print(f"lantern-export: {e}", file=sys.stderr)
        return 1
    except (LanternError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"lantern-export: {e}", file=sys.stderr)
        return 2
    print(f"exported {report.checkpoint_kind} checkpoint {args.checkpoint} to {report.out_dir} "
          f"(opset {report.opset}) in {report.seconds:.1f} s\n\n{format_summary(report)}")
    if args.int8:
        try:
            quantized = quantize_artifacts(report.out_dir,
                                           progress=lambda m: print(f"  {m}", flush=True))
        except (LanternError, OSError) as e:
            if args.debug:
                traceback.print_exc()
            print(f"lantern-export: the fp32 artifacts are in {report.out_dir}, but --int8 "
                  f"failed: {e}", file=sys.stderr)
            return 1
        print(main_summary(quantized))
    return 0


if __name__ == "__main__":
    sys.exit(main())
