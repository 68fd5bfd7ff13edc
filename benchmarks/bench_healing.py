"""Token healing on prompts that end in a newline: does the model write the block's body?

    python benchmarks/bench_healing.py                       # the shipped model, 60 prompts
    python benchmarks/bench_healing.py --model artifacts/tiny --prompts 20

Prompts: `def`/`class` header lines from the held-out split of the standard-library corpus,
each followed by "\\n" (how a user types a prompt). The right continuation is an indented body.
For each prompt, greedy, the manifest's controller: the share of completions whose first
non-empty line is indented deeper than the header, and the share that start a new top-level
statement instead, with token healing off and on, and for the same header without the newline
(the model writes the newline itself: what healing should recover).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lantern_edge import Runtime  # noqa: E402
from lantern_edge.model.corpus import load_corpus  # noqa: E402

HEADER = re.compile(r"^(\s*)(def|class) \w+.*:$")


def headers(count: int) -> list[str]:
    """The first `count` distinct one-line def/class headers of the held-out files."""
    seen: list[str] = []
    for text in load_corpus().val:
        for line in text.splitlines():
            if HEADER.match(line) and line not in seen:
                seen.append(line)
                if len(seen) == count:
                    return seen
    return seen


def indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def verdict(header: str, completion: str) -> str:
    """'body' (first non-empty line indented deeper), 'top' (a column-0 line), or 'other'."""
    for line in completion.split("\n"):
        if line.strip():
            if indent(line) > indent(header):
                return "body"
            return "top" if indent(line) == 0 else "other"
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="artifacts directory (default: the shipped model)")
    p.add_argument("--prompts", type=int, default=60, help="header lines to try (default: 60)")
    p.add_argument("--tokens", type=int, default=24, help="new tokens per prompt (default: 24)")
    args = p.parse_args()
    runtime = Runtime(args.model)
    prompts = headers(args.prompts)
    rows = {"newline, healing off": [], "newline, healing on": [], "no newline": []}
    for header in prompts:
        for name, prompt, healing in (("newline, healing off", header + "\n", False),
                                      ("newline, healing on", header + "\n", True),
                                      ("no newline", header, False)):
            text = runtime.generate(prompt, max_new_tokens=args.tokens, seed=0,
                                    token_healing=healing).text
            if name == "no newline":          # the model's own newline starts the completion
                text = text.split("\n", 1)[1] if "\n" in text else ""
            rows[name].append(verdict(header, text))
    print(f"{len(prompts)} def/class headers from the held-out stdlib files, greedy, "
          f"{args.tokens} new tokens")
    print(f"{'prompt':<22} {'indented body':>14} {'new top-level line':>19} {'other':>6}")
    for name, verdicts in rows.items():
        share = {v: verdicts.count(v) / len(verdicts) for v in ("body", "top", "other")}
        print(f"{name:<22} {share['body']:>14.0%} {share['top']:>19.0%} {share['other']:>6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
