"""The training corpus: by default the running interpreter's Python standard library sources.

Available offline on every machine. Test suites, vendored third-party code and installed
packages are excluded; files that are not UTF-8 are skipped. Train/validation are split BY
FILE (a stable hash of the relative path), never by line, so no validation file leaks into
training. Any directory of text files, or a list of files, can replace the default.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

# Directory names whose contents are tests, vendored code, installed packages or build output.
EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "_bundled",
                 "_vendor", "vendor", "__pycache__", "lib-dynload", "turtledemo"}
DEFAULT_SUFFIXES = (".py",)


@dataclass
class Corpus:
    train: list[str]
    val: list[str]
    description: dict = field(default_factory=dict)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _excluded(relative: Path) -> bool:
    parts = relative.parts
    if any(p in EXCLUDED_DIRS or p.startswith("config-") for p in parts[:-1]):
        return True
    name = parts[-1]
    return name.startswith("test_") or name == "conftest.py"


def list_files(source: Path, suffixes: tuple[str, ...] = DEFAULT_SUFFIXES) -> list[Path]:
    """Source files under `source`, sorted, without tests and vendored code."""
    return sorted(p for p in source.rglob("*")
                  if p.is_file() and p.suffix in suffixes and not _excluded(p.relative_to(source)))


def is_validation(relative: str, val_fraction: float) -> bool:
    bucket = int(hashlib.sha256(relative.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < val_fraction


def load_corpus(sources: list[str | Path] | None = None, val_fraction: float = 0.05,
                max_chars: int | None = None) -> Corpus:
    """Read the corpus. sources: None (the stdlib), one directory, or text files.

    max_chars caps each split's size (for quick runs), taking whole files in sorted order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not sources:
        root, files, suffixes = stdlib_root(), None, DEFAULT_SUFFIXES
        label = f"Python {sys.version.split()[0]} standard library ({root})"
    elif len(sources) == 1 and Path(sources[0]).is_dir():
        root, files = Path(sources[0]), None
        suffixes = (".py", ".txt", ".md", ".rst")
        label = f"directory {root}"
    else:
        root, files, suffixes = None, [Path(s) for s in sources], ()
        label = f"{len(files)} file(s)"
    if files is None:
        if not root.is_dir():
            raise ValueError(f"corpus directory not found: {root}")
        files = list_files(root, suffixes)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"corpus file(s) not found: {', '.join(missing[:3])}")
    train, val, skipped = [], [], 0
    sizes = {"train": 0, "val": 0}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        if not text.strip():
            continue
        relative = path.relative_to(root).as_posix() if root else path.name
        split = "val" if is_validation(relative, val_fraction) else "train"
        if max_chars is not None and sizes[split] >= max_chars:
            continue
        (val if split == "val" else train).append(text)
        sizes[split] += len(text)
    if not train or not val:
        raise ValueError(f"the corpus ({label}) is too small to split: {len(train)} train and "
                         f"{len(val)} validation files; add files or raise val_fraction")
    description = {"source": label, "files_train": len(train), "files_val": len(val),
                   "chars_train": sizes["train"], "chars_val": sizes["val"],
                   "skipped_not_utf8": skipped, "split": f"by file, sha256(path) < {val_fraction}",
                   "excluded_dirs": sorted(EXCLUDED_DIRS)}
    return Corpus(train, val, description)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lantern-edge corpus",
                                description="Assemble the training corpus and write train/val text.")
    p.add_argument("--source", nargs="*", default=None,
                   help="a directory or text files (default: the Python standard library)")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("-o", "--output", default=None, help="directory for train.txt and val.txt")
    args = p.parse_args(argv)
    try:
        corpus = load_corpus(args.source, args.val_fraction)
    except ValueError as e:
        print(f"lantern-edge corpus: {e}", file=sys.stderr)
        return 2
    for key, value in corpus.description.items():
        print(f"{key:>18}: {value}")
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.txt").write_text("\n".join(corpus.train), encoding="utf-8")
        (out / "val.txt").write_text("\n".join(corpus.val), encoding="utf-8")
        print(f"wrote {out / 'train.txt'} and {out / 'val.txt'}")
    return 0
