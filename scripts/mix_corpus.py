"""Write a prepared corpus whose training split repeats one corpus's files K times over another's.

    python scripts/mix_corpus.py OUT --base runs/closure-corpus --add runs/stdlib-corpus --times 8

The trainer samples windows uniformly over its training stream, so repeating a corpus's training
files K times weighs it K times (a fine-tune from the stdlib-only default model keeps its
standard-library quality this way while it learns the other packages). The validation split
is the base corpus's, unchanged; corpus.json records both sources and K.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lantern_edge.model.corpus import FILE_SEPARATOR


def read_texts(directory: Path, name: str) -> list[str]:
    return [t for t in (directory / name).read_text(encoding="utf-8").split(FILE_SEPARATOR)
            if t.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, required=True, help="prepared corpus directory")
    parser.add_argument("--add", type=Path, required=True, help="prepared corpus directory")
    parser.add_argument("--times", type=int, required=True,
                        help="extra copies of --add's training files (>= 1)")
    args = parser.parse_args()
    if args.times < 1:
        parser.error("--times must be >= 1")
    base_val = read_texts(args.base, "val.txt")
    added = read_texts(args.add, "train.txt")
    leaked = set(added) & set(base_val)
    if leaked:
        parser.error(f"{len(leaked)} of --add's training files are in --base's validation split")
    train = read_texts(args.base, "train.txt") + added * args.times
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.txt").write_text(FILE_SEPARATOR.join(train), encoding="utf-8")
    (args.out / "val.txt").write_text(FILE_SEPARATOR.join(base_val), encoding="utf-8")
    meta = {"source": f"{args.base} + {args.times} extra copies of {args.add}'s training files",
            "base": json.loads((args.base / "corpus.json").read_text(encoding="utf-8")),
            "added": json.loads((args.add / "corpus.json").read_text(encoding="utf-8")),
            "times": args.times, "files_train": len(train), "files_val": len(base_val)}
    (args.out / "corpus.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    print(f"wrote {args.out}: {len(train)} training files ({len(added)} x {args.times} added), "
          f"{len(base_val)} validation files")


if __name__ == "__main__":
    main()
