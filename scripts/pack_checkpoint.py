"""Move a trained checkpoint through a channel that takes only small files, and back.

    python scripts/pack_checkpoint.py pack CHECKPOINT OUTDIR [--part-mb 15] [--name model]
    python scripts/pack_checkpoint.py unpack OUTDIR CHECKPOINT [--name model]

`pack` writes the checkpoint without its trainer state (optimizer moments: the model, its
controller, tokenizer and training metadata stay) as OUTDIR/NAME.pt.part-0, -1, ... of at most
--part-mb MiB each, and for NAME "model" OUTDIR/training.json (the metadata, readable without
torch).
`unpack` joins the parts and checks the result loads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PART = ".pt.part-"


def pack(checkpoint: Path, out: Path, part_mb: float, name: str = "model",
         half: bool = False) -> list[Path]:
    from lantern_edge.model.checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(checkpoint)
    slim = out / f"{name}.pt"
    out.mkdir(parents=True, exist_ok=True)
    model = ckpt.build_model()
    if half:      # fp16 storage (half the bytes); loading casts back to fp32
        model = model.half()
    save_checkpoint(slim, model, ckpt.controller_config, ckpt.tokenizer_json, ckpt.training,
                    None)
    data, size = slim.read_bytes(), int(part_mb * 2**20)
    slim.unlink()
    parts = []
    for i, start in enumerate(range(0, len(data), size)):
        parts.append(out / f"{name}{PART}{i}")
        parts[-1].write_bytes(data[start:start + size])
    if name == "model":
        (out / "training.json").write_text(json.dumps(ckpt.training, indent=1, default=str)
                                           + "\n")
    return parts


def unpack(folder: Path, checkpoint: Path, name: str = "model") -> Path:
    from lantern_edge.model.checkpoint import load_checkpoint
    parts = sorted(folder.glob(f"{name}{PART}*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    if not parts:
        raise ValueError(f"no {name}{PART}N files in {folder}")
    checkpoint.write_bytes(b"".join(p.read_bytes() for p in parts))
    load_checkpoint(checkpoint)
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--part-mb", type=float, default=15.0)
    p.add_argument("--name", default="model", help="file name stem of the parts")
    p.add_argument("--half", action="store_true",
                   help="store the weights in fp16 (for checkpoints that are only evaluated)")
    u = sub.add_parser("unpack")
    u.add_argument("folder", type=Path)
    u.add_argument("checkpoint", type=Path)
    u.add_argument("--name", default="model")
    args = parser.parse_args(argv)
    try:
        if args.verb == "pack":
            for part in pack(args.checkpoint, args.out, args.part_mb, args.name, args.half):
                print(f"wrote {part} ({part.stat().st_size / 2**20:.1f} MiB)")
        else:
            print(f"wrote {unpack(args.folder, args.checkpoint, args.name)}")
    except (ValueError, OSError) as e:
        print(f"pack_checkpoint: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
