"""`lantern-edge corpus`: assemble a corpus, print its size per source, optionally write it.

Bad input (an unwritable output directory, a missing source, a bad requirement) exits with
code 2 and one line, checked before the build where it can be (a closure build takes minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from ..cli_help import HelpFormatter
from .closure import DEFAULT_CLOSURE
from .corpus import OFFLINE_CORPORA, load_corpus, write_corpus
from .train_cli import UsageError, _Parser

# token counts in the manifest are measured with the shipped model's tokenizer by default
SHIPPED_TOKENIZER = Path(__file__).resolve().parents[1] / "default_model" / "tokenizer.json"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lantern-edge corpus",
        description="Assemble the training corpus (default: this Python's standard library, "
                    "without tests, vendored and generated code), deduplicate it, split it by "
                    "file and print its size per source.",
        formatter_class=HelpFormatter)
    parser.add_argument("--source", nargs="+", default=None, metavar="DIR|FILE",
                        help="a directory or text files instead of an offline corpus (default: "
                             "the offline corpus)")
    parser.add_argument("--offline-corpus", choices=OFFLINE_CORPORA, default="stdlib",
                        help="stdlib, or closure: the stdlib plus the installed packages in the "
                             "dependency closure of --closure-of")
    parser.add_argument("--closure-of", default=DEFAULT_CLOSURE, metavar="REQUIREMENT",
                        help="the installed distribution (with extras) whose closure is read")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of files (by path hash) held out for validation")
    parser.add_argument("--max-chars", type=int, default=None,
                        help="cap on characters per split, a deterministic sample of files "
                             "(default: no cap)")
    parser.add_argument("--tokenizer", default=str(SHIPPED_TOKENIZER), metavar="TOKENIZER_JSON",
                        help="tokenizer the token counts are measured with")
    parser.add_argument("-o", "--output", default=None, metavar="OUT_DIR",
                        help="write train.txt, val.txt and corpus.json (the manifest) here "
                             "(default: print the sizes only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`lantern-edge corpus`: build the corpus, print its size per source, optionally write it."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"lantern-edge corpus: {e} (see lantern-edge corpus --help)", file=sys.stderr)
        return 2
    except SystemExit as e:        # --help
        return int(e.code or 0)
    try:
        if args.output:            # fail before a long build, not after it
            _check_writable(Path(args.output))
        tokenizer, counted_with = _counting_tokenizer(args.tokenizer)
        corpus = load_corpus(args.source, args.val_fraction, args.max_chars,
                             args.offline_corpus, args.closure_of, tokenizer)
        corpus.description["tokens_counted_with"] = counted_with
        written = write_corpus(corpus, args.output) if args.output else []
    except (ValueError, ImportError, OSError) as e:
        print(f"lantern-edge corpus: {e}", file=sys.stderr)
        return 2
    print(size_table(corpus.description))
    for path in written:
        print(f"wrote {path}")
    return 0


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output directory {directory} ({e.strerror}); pass "
                         f"a writable -o OUT_DIR") from e
    if not os.access(directory, os.W_OK):
        raise ValueError(f"output directory {directory} is not writable; pass a writable "
                         f"-o OUT_DIR")


def _counting_tokenizer(path: str):
    from tokenizers import Tokenizer
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"tokenizer {path} not found; pass --tokenizer TOKENIZER_JSON")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:         # tokenizers raises a bare Exception on a bad file
        raise ValueError(f"{path} is not a tokenizer.json ({e}); pass --tokenizer "
                         f"TOKENIZER_JSON") from e
    data = file.read_bytes()
    return tokenizer, {"tokenizer": file.name, "sha256": hashlib.sha256(data).hexdigest(),
                       "vocab_size": tokenizer.get_vocab_size()}


def size_table(description: dict) -> str:
    """The manifest as a table: one row per source, then the totals and the split."""
    rows = [f"{'source':<20} {'version':<12} {'licence':<28} {'files':>7} {'val':>5} "
            f"{'MB':>8} {'tokens':>11} {'dups':>5}"]
    sources = description["sources"]
    total = {key: sum(s.get(key, 0) for s in sources)
             for key in ("files", "files_val", "bytes", "tokens", "duplicates")}
    for s in [*sources, dict(source="total", version="", licence="", **total)]:
        rows.append(f"{s['source']:<20} {s['version'][:12]:<12} {s['licence'][:28]:<28} "
                    f"{s['files']:>7} {s['files_val']:>5} {s['bytes'] / 1e6:>8.2f} "
                    f"{s.get('tokens', 0):>11,} {s['duplicates']:>5}")
    rows += [f"corpus: {description['source']}",
             f"files_train: {description['files_train']}, files_val: {description['files_val']}"
             f"; split {description['split']}",
             f"skipped: {description['skipped']}; missing requirements: "
             f"{', '.join(description.get('missing') or []) or 'none'}",
             f"content sha256: {description['content_sha256']}"]
    counted = description.get("tokens_counted_with")
    if counted:
        rows.append(f"tokens counted with {counted['tokenizer']} (vocab {counted['vocab_size']}, "
                    f"sha256 {counted['sha256'][:16]})")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
