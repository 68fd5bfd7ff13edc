"""The training corpus: by default the running interpreter's Python standard library sources.

Both offline corpora are available on every machine with the project installed: "stdlib", and
"closure", the standard library plus the Python sources of the installed packages in the
dependency closure of ``lantern-edge[export,dev]`` (closure.py resolves it from metadata).
Test suites, vendored third-party code and machine-generated tables are excluded; files that
are not UTF-8 are skipped; a file whose content already appeared (in source order: stdlib
first, then packages by name) is dropped. Train/validation are split BY FILE (a stable hash of
the path relative to the stdlib, site-packages or the given directory), never by line, so no
validation file leaks into training, and the stdlib files held out are the same in both
corpora. The description doubles as the corpus manifest (per source: version, licence, file,
byte and token counts; a hash of the whole corpus), identical for identical installed
versions. Any directory of text files, a list of files, or a directory written by
``lantern-edge corpus -o DIR`` (corpus_cli.py) can replace the default. Imports nothing
heavier than the standard library (and `packaging`, for the closure).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .closure import DEFAULT_CLOSURE, Source, closure_sources

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
# Unmarked tables (colormaps, tuning results, numeric constants) are mostly digits; code, even
# numeric code, stays far below this share (the stdlib's highest is about 0.14).
DATA_DIGIT_SHARE = 0.25
STDLIB_SUFFIXES = (".py",)
DIRECTORY_SUFFIXES = (".py", ".txt", ".md", ".rst")
# Between files in train.txt / val.txt (ASCII "file separator"; absent from the stdlib sources).
FILE_SEPARATOR = "\n\x1c\n"
PREPARED_FILES = ("train.txt", "val.txt")
OFFLINE_CORPORA = ("stdlib", "closure")


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
    """A generated marker in the first lines, or a file that is mostly digits: data, not code."""
    head = "\n".join(text.splitlines()[:5])
    digits = sum(text.count(d) for d in "0123456789")
    return bool(GENERATED_MARKER.search(head)) or digits > DATA_DIGIT_SHARE * len(text)


def stdlib_source() -> Source:
    root = stdlib_root()
    return Source("stdlib", platform.python_version(), "PSF-2.0",
                  tuple((f.relative_to(root).as_posix(), f) for f in list_files(root)))


def offline_sources(offline: str = "stdlib", closure: str = DEFAULT_CLOSURE
                    ) -> tuple[str, list[Source], list[str]]:
    """(label, sources, missing requirements) of a built-in corpus: the standard library, or
    the standard library plus the installed packages in the dependency closure of ``closure``."""
    if offline not in OFFLINE_CORPORA:
        raise ValueError(f"the offline corpus must be one of {', '.join(OFFLINE_CORPORA)}, got "
                         f"{offline!r}")
    label = f"Python {platform.python_version()} standard library"
    if offline == "stdlib":
        return label, [stdlib_source()], []
    packages, missing = closure_sources(closure, keep=lambda rel: not is_excluded(Path(rel)))
    return (f"{label} + installed dependency closure of {closure}", [stdlib_source(), *packages],
            missing)


def load_corpus(sources: list[str | Path] | tuple[str | Path, ...] | None = None,
                val_fraction: float = 0.05, max_chars: int | None = None,
                offline: str = "stdlib", closure: str = DEFAULT_CLOSURE,
                tokenizer=None) -> Corpus:
    """Read and split the corpus.

    Args:
        sources: None or empty for the offline corpus ``offline``; one directory (its .py,
            .txt, .md and .rst files, or the train.txt/val.txt of ``lantern-edge corpus -o``);
            or a list of text files (split by file name).
        val_fraction: share of files that go to validation, by a hash of their relative path.
        max_chars: cap per split for quick runs: whole files are taken in hash order (a
            deterministic sample across the whole tree, not its alphabetical head) until the
            split holds at least this many characters.
        offline: "stdlib" (the Python standard library) or "closure" (the standard library
            plus the Python sources of the installed dependency closure of ``closure``).
        tokenizer: a `tokenizers.Tokenizer` to count tokens per source with (None: not counted).

    Returns:
        Corpus with one text per file and a description dict: checkpoint metadata and the
        corpus manifest (per source: version, licence, files, bytes, tokens; content hash).

    Raises:
        ValueError: a missing source, a bad fraction or cap, or too few files to split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be None or >= 1, got {max_chars!r}")
    paths = [Path(s) for s in sources or ()]
    if paths and offline != "stdlib":
        raise ValueError(f"corpus paths and the offline corpus {offline!r} exclude each other; "
                         f"give one or the other")
    if len(paths) == 1 and all((paths[0] / name).is_file() for name in PREPARED_FILES):
        return _load_prepared(paths[0], max_chars)
    root, missing = None, []
    if not paths:
        label, parts, missing = offline_sources(offline, closure)
    elif len(paths) == 1 and paths[0].is_dir():
        root, label = paths[0], f"directory {paths[0]}"
        parts = [Source("directory", "", "", tuple(
            (f.relative_to(root).as_posix(), f) for f in list_files(root, DIRECTORY_SUFFIXES)))]
    else:
        absent = [str(s) for s in paths if not s.is_file()]
        if absent:
            raise ValueError(f"corpus file(s) not found: {', '.join(absent[:3])}; pass one "
                             f"directory or existing text files")
        label, parts = f"{len(paths)} file(s)", [Source("files", "", "", tuple(
            (p.name, p) for p in paths))]
    if not any(part.files for part in parts):
        raise ValueError(f"no corpus files found in {root}")
    corpus = _read(parts, label, val_fraction, max_chars, not paths, tokenizer)
    corpus.description.update(root=str(root) if root else None, missing=missing)
    return corpus


def _read(parts: list[Source], label: str, val_fraction: float, max_chars: int | None,
          skip_generated: bool, tokenizer) -> Corpus:
    """Read, deduplicate by content (the first copy in source order wins) and split by path."""
    entries = [(i, relative, path) for i, part in enumerate(parts)
               for relative, path in part.files]
    if max_chars is not None:
        entries.sort(key=lambda item: _bucket("order:" + item[1]))
    splits: dict[str, list[str]] = {"train": [], "val": []}
    sizes = {"train": 0, "val": 0}
    skipped = {"not_utf8": 0, "generated": 0, "empty": 0, "duplicate": 0}
    stats = [dict(source=p.name, version=p.version, licence=p.licence, files=0, files_val=0,
                  bytes=0, duplicates=0) for p in parts]
    texts_of: list[list[str]] = [[] for _ in parts]
    seen: set[bytes] = set()
    whole = hashlib.sha256()
    for i, relative, path in entries:
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
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            skipped["duplicate"] += 1
            stats[i]["duplicates"] += 1
            continue
        seen.add(digest)
        whole.update(f"{split}\t{parts[i].name}\t{relative}\t{digest.hex()}\n".encode())
        splits[split].append(text)
        texts_of[i].append(text)
        sizes[split] += len(text)
        stats[i]["files"] += 1
        stats[i]["files_val"] += split == "val"
        stats[i]["bytes"] += len(data)
    if not splits["train"] or not splits["val"]:
        raise ValueError(
            f"the corpus ({label}) is too small to split by file: {len(splits['train'])} train "
            f"and {len(splits['val'])} validation file(s); add files or raise val_fraction")
    if tokenizer is not None:
        for entry, texts in zip(stats, texts_of):
            entry["tokens"] = count_tokens(tokenizer, texts)
    description = {
        "source": label,
        "files_train": len(splits["train"]), "files_val": len(splits["val"]),
        "chars_train": sizes["train"], "chars_val": sizes["val"],
        "split": f"by file: sha256(relative path) < {val_fraction}", "val_fraction": val_fraction,
        "max_chars": max_chars, "skipped": skipped, "sources": stats,
        "content_sha256": whole.hexdigest(),
    }
    logger.info("corpus %s: %d train / %d val files", label, len(splits["train"]),
                len(splits["val"]))
    return Corpus(splits["train"], splits["val"], description)


def count_tokens(tokenizer, texts: list[str]) -> int:
    """Tokens of all texts, encoded in batches (one batch of the whole corpus holds gigabytes)."""
    return sum(len(e.ids) for start in range(0, len(texts), 256)
               for e in tokenizer.encode_batch(texts[start:start + 256], add_special_tokens=False))


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
