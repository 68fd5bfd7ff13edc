"""The training corpus: by default the running interpreter's Python standard library sources.

Available offline on every machine. Test suites, vendored third-party code, installed packages
and (for the stdlib) machine-generated tables are excluded; files that are not UTF-8 are
skipped. Train/validation are split BY FILE (a stable hash of the relative path), never by
line, so no validation file leaks into training. Any directory of text files, a list of
files, or a directory written by ``lantern-edge corpus -o DIR`` can replace the default.
Imports nothing heavier than the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# A path component (directory) that holds tests: test, tests, testing, test_x, x_test, testmock...
TEST_DIR = re.compile(r"^(tests?|testing|test_.*|.*_tests?|testmock)$", re.IGNORECASE)
TEST_FILE = re.compile(r"^(test_.*|.*_test|conftest)\.py$", re.IGNORECASE)
# Vendored third-party code, installed packages, build output, compiled extensions.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "_bundled", "_vendor", "vendor",
                           "vendored", "third_party", "__pycache__", "lib-dynload"})
# Machine-generated files (codec tables, Sphinx topic dumps, sysconfig data): data, not code.
GENERATED_MARKER = re.compile(r"auto-?generated|automatically generated|this file is generated|"
                              r"generated (from|and used|on)|gencodec|character mapping codec|"
                              r"do not edit", re.IGNORECASE)
STDLIB_SUFFIXES = (".py",)
DIRECTORY_SUFFIXES = (".py", ".txt", ".md", ".rst")
# Between files in train.txt / val.txt (ASCII "file separator"; absent from the stdlib sources).
FILE_SEPARATOR = "\n\x1c\n"
PREPARED_FILES = ("train.txt", "val.txt")


@dataclass
class Corpus:
    train: list[str]                     # one text per file
    val: list[str]
    description: dict[str, Any] = field(default_factory=dict)   # checkpoint metadata


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_excluded(relative: Path) -> bool:
    """True for tests, vendored/installed packages and build output (relative to the root)."""
    directories = relative.parts[:-1]
    if any(d in EXCLUDED_DIRS or d.startswith("config-") or TEST_DIR.match(d)
           for d in directories):
        return True
    return bool(TEST_FILE.match(relative.name))


def list_files(source: Path, suffixes: tuple[str, ...] = STDLIB_SUFFIXES) -> list[Path]:
    """Files under ``source`` with one of ``suffixes``, sorted, without tests and vendored code."""
    found = []
    for directory, subdirs, names in os.walk(source):
        here = Path(directory)
        # prune excluded trees (site-packages alone can hold gigabytes) instead of filtering
        subdirs[:] = [d for d in subdirs if not is_excluded((here / d / "x").relative_to(source))]
        found.extend(here / n for n in names
                     if Path(n).suffix in suffixes and not is_excluded((here / n).relative_to(source)))
    return sorted(p for p in found if p.is_file())


def _bucket(relative: str) -> float:
    """A stable number in [0, 1) from a path: the split and the sampling order depend on it."""
    return int(hashlib.sha256(relative.encode("utf-8")).hexdigest()[:12], 16) / 16 ** 12


def is_validation(relative: str, val_fraction: float) -> bool:
    return _bucket(relative) < val_fraction


def is_generated(text: str) -> bool:
    head = "\n".join(text.splitlines()[:5])
    return bool(GENERATED_MARKER.search(head))


def load_corpus(sources: list[str | Path] | tuple[str | Path, ...] | None = None,
                val_fraction: float = 0.05, max_chars: int | None = None) -> Corpus:
    """Read and split the corpus.

    Args:
        sources: None or empty for the Python standard library; one directory (its .py, .txt,
            .md and .rst files, or the train.txt/val.txt of ``lantern-edge corpus -o``); or
            a list of text files (split by file name).
        val_fraction: share of files that go to validation, by a hash of their relative path.
        max_chars: cap per split for quick runs: whole files are taken in hash order (a
            deterministic sample across the whole tree, not its alphabetical head) until the
            split holds at least this many characters.

    Returns:
        Corpus with one text per file and a description dict for checkpoint metadata.

    Raises:
        ValueError: a missing source, a bad fraction or cap, or too few files to split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be None or >= 1, got {max_chars!r}")
    sources = [Path(s) for s in sources or ()]
    if len(sources) == 1 and all((sources[0] / name).is_file() for name in PREPARED_FILES):
        return _load_prepared(sources[0], max_chars)
    skip_generated = not sources
    if not sources:
        root = stdlib_root()
        label = f"Python {sys.version.split()[0]} standard library"
        files = list_files(root, STDLIB_SUFFIXES)
    elif len(sources) == 1 and sources[0].is_dir():
        root, label = sources[0], f"directory {sources[0]}"
        files = list_files(root, DIRECTORY_SUFFIXES)
    else:
        missing = [str(s) for s in sources if not s.is_file()]
        if missing:
            raise ValueError(f"corpus file(s) not found: {', '.join(missing[:3])}; pass one "
                             f"directory or existing text files")
        root, label, files = None, f"{len(sources)} file(s)", sources
    if not files:
        raise ValueError(f"no corpus files found in {root}")

    named = [(path.relative_to(root).as_posix() if root else path.name, path) for path in files]
    if max_chars is not None:
        named.sort(key=lambda item: _bucket("order:" + item[0]))
    splits: dict[str, list[str]] = {"train": [], "val": []}
    sizes = {"train": 0, "val": 0}
    skipped = {"not_utf8": 0, "generated": 0, "empty": 0}
    for relative, path in named:
        split = "val" if is_validation(relative, val_fraction) else "train"
        if max_chars is not None and sizes[split] >= max_chars:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"] += 1
            continue
        if not text.strip():
            skipped["empty"] += 1
            continue
        if skip_generated and is_generated(text):
            skipped["generated"] += 1
            continue
        splits[split].append(text)
        sizes[split] += len(text)
    if not splits["train"] or not splits["val"]:
        raise ValueError(
            f"the corpus ({label}) is too small to split by file: {len(splits['train'])} train "
            f"and {len(splits['val'])} validation file(s); add files or raise val_fraction")
    description = {
        "source": label, "root": str(root) if root else None,
        "files_train": len(splits["train"]), "files_val": len(splits["val"]),
        "chars_train": sizes["train"], "chars_val": sizes["val"],
        "split": f"by file: sha256(relative path) < {val_fraction}", "val_fraction": val_fraction,
        "max_chars": max_chars, "skipped": skipped,
    }
    logger.info("corpus %s: %d train / %d val files", label, len(splits["train"]),
                len(splits["val"]))
    return Corpus(splits["train"], splits["val"], description)


def write_corpus(corpus: Corpus, out_dir: str | Path) -> list[Path]:
    """Write train.txt, val.txt (files joined by FILE_SEPARATOR) and corpus.json to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, texts in zip(PREPARED_FILES, (corpus.train, corpus.val)):
        (out / name).write_text(FILE_SEPARATOR.join(texts), encoding="utf-8")
        written.append(out / name)
    (out / "corpus.json").write_text(json.dumps(corpus.description, indent=1) + "\n",
                                     encoding="utf-8")
    return written + [out / "corpus.json"]


def _load_prepared(directory: Path, max_chars: int | None) -> Corpus:
    """A directory written by write_corpus: its own split, kept as is."""
    splits = {}
    for name in PREPARED_FILES:
        texts = [t for t in (directory / name).read_text(encoding="utf-8").split(FILE_SEPARATOR)
                 if t.strip()]
        if max_chars is not None:
            kept, size = [], 0
            for text in texts:
                if size >= max_chars:
                    break
                kept.append(text)
                size += len(text)
            texts = kept
        if not texts:
            raise ValueError(f"{directory / name} holds no text; rebuild it with "
                             f"`lantern-edge corpus -o {directory}`")
        splits[name] = texts
    train, val = splits["train.txt"], splits["val.txt"]
    description = {"source": f"prepared corpus {directory}", "root": str(directory),
                   "files_train": len(train), "files_val": len(val),
                   "chars_train": sum(map(len, train)), "chars_val": sum(map(len, val)),
                   "split": "as prepared (train.txt / val.txt)", "max_chars": max_chars}
    made_by = directory / "corpus.json"
    if made_by.is_file():
        description["prepared_from"] = json.loads(made_by.read_text(encoding="utf-8"))
    return Corpus(train, val, description)


def main(argv: list[str] | None = None) -> int:
    """`lantern-edge corpus`: assemble the corpus, print its summary, optionally write it."""
    parser = argparse.ArgumentParser(
        prog="lantern-edge corpus",
        description="Assemble the training corpus (default: this Python's standard library, "
                    "without tests and vendored code), split by file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--source", nargs="+", default=None, metavar="DIR|FILE",
                        help="a directory or text files instead of the standard library")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of files (by path hash) held out for validation")
    parser.add_argument("--max-chars", type=int, default=None,
                        help="cap on characters per split (a deterministic sample of files)")
    parser.add_argument("-o", "--output", default=None, metavar="OUT_DIR",
                        help="write train.txt, val.txt and corpus.json here")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:        # argparse already printed the usage line and the problem
        return int(e.code or 0)
    try:
        corpus = load_corpus(args.source, args.val_fraction, args.max_chars)
        written = write_corpus(corpus, args.output) if args.output else []
    except (ValueError, OSError) as e:
        print(f"lantern-edge corpus: {e}", file=sys.stderr)
        return 2
    for key, value in corpus.description.items():
        if key != "prepared_from":
            print(f"{key:>12}: {value}")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
