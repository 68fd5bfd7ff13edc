"""Does greedy output repeat itself? Five everyday prompts, 64 new tokens each.

`python -m lantern_edge.evaluation.repetition [--model PATH] [--plain] [--no-adaptive]`
prints one row per prompt and exits 1 when any output repeats itself; by default with the
repetition controls `lantern-edge generate` uses, with --plain without any. "Repeats itself" is
strict on purpose: a non-blank line that occurs twice in the new text, or a run of
NGRAM tokens that occurs twice (a loop without line breaks).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

PROMPTS = {
    "function": "def fibonacci(n):\n",
    "class": "class Stack:\n    def __init__(self):\n",
    "import block": "import os\nimport sys\n",
    "docstring": 'def read_config(path):\n    """',
    "loop": "for item in items:\n",
}
NEW_TOKENS = 64
NGRAM = 8


def repetition(text: str, tokens: list[int]) -> str | None:
    """What repeats in generated text (None: nothing): a non-blank line seen twice, or an
    NGRAM-token run seen twice."""
    lines = Counter(line.strip() for line in text.splitlines() if line.strip())
    line, count = lines.most_common(1)[0] if lines else ("", 0)
    if count > 1:
        return f"line {line!r} x{count}"
    runs = Counter(tuple(tokens[i:i + NGRAM]) for i in range(len(tokens) - NGRAM + 1))
    run, count = runs.most_common(1)[0] if runs else ((), 0)
    if count > 1:
        return f"{NGRAM}-token run x{count}"
    return None


def check(runtime, **options) -> list[tuple[str, str, str | None]]:
    """(prompt name, generated text, what repeats or None) for every prompt, greedy."""
    rows = []
    for name, prompt in PROMPTS.items():
        result = runtime.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False,
                                  ignore_eos=True, **options)
        rows.append((name, result.text, repetition(result.text, list(result.token_ids))))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lantern_edge.evaluation.repetition",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="artifacts directory (default: shipped)")
    parser.add_argument("--plain", action="store_true",
                        help="no repetition controls (default: those of lantern-edge generate)")
    parser.add_argument("--no-adaptive", action="store_true",
                        help="fixed depth (default: the model's manifest)")
    args = parser.parse_args(argv)
    from ..runtime.generate import Runtime
    runtime = Runtime(args.model)
    from ..runtime.cli import NO_REPEAT_NGRAM_SIZE, REPETITION_PENALTY
    options = {"adaptive": False} if args.no_adaptive else {}
    if not args.plain:
        options.update(repetition_penalty=REPETITION_PENALTY,
                       no_repeat_ngram_size=NO_REPEAT_NGRAM_SIZE)
    rows = check(runtime, **options)
    print("| prompt | repeats | output (first 60 characters) |\n|---|---|---|")
    for name, text, what in rows:
        print(f"| {name} | {what or 'no'} | `{text[:60]!r}` |")
    return 1 if any(what for _, _, what in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
