"""Single-stream decode speed of this checkout's runtime against another git revision's, in one
run: interleaved rounds, a fresh process per measurement, best and median.

    python benchmarks/bench_old_vs_new.py                      # against main, default model
    python benchmarks/bench_old_vs_new.py --old main --tokens 256 --rounds 7
    python benchmarks/bench_old_vs_new.py --precision int8
    python benchmarks/bench_old_vs_new.py --old HEAD~1 --prompt peers --rounds 7

The old revision is checked out once with `git worktree add` (into --old-path); both read the
same artifacts (this checkout's default model unless --model). Each measurement is a new Python
process importing one of the two trees: load, one short warm-up generation, then one timed
generation of --tokens new tokens (greedy, EOS ignored), reporting decode tok/s (prefill
excluded). Rounds alternate the order of old and new, so load from other processes hits both.
Also printed: the adaptive defaults' cost against fixed depth (fixed tok/s / adaptive tok/s,
the median over rounds of each round's ratio), and what one high-band token (MC dropout) costs
from its trace (microseconds: feeding the previous token and deciding this one), best / median
over all such tokens of all rounds. `--prompt peers` decodes benchmarks/peers_worker.py's
16-token prompt (three high-band tokens in 128 on the shipped model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, dataclasses
from lantern_edge import GenerationOptions, Runtime
model, tokens, adaptive, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
text, limit = json.loads(sys.argv[5])
rt = Runtime(model, providers=["CPUExecutionProvider"], precision=precision)
names = {f.name for f in dataclasses.fields(GenerationOptions)}
no_eos = {"ignore_eos": True} if "ignore_eos" in names else {"eos_token_id": None}
prompt = rt.encode(text).tolist()[:limit]
rt.generate(prompt, max_new_tokens=8, adaptive=adaptive, **no_eos)
result = rt.generate(prompt, max_new_tokens=tokens, adaptive=adaptive, seed=0, **no_eos)
print(json.dumps({"tok_s": result.stats["decode_tokens_per_second"],
                  "tokens": len(result.token_ids),
                  "high_us": [t.microseconds for t in result.trace if t.band == "high"]}))
"""
PROMPTS = {"default": ("def read_config(path):\n    with open(path) as f:", None)}


def checkout(ref: str, path: Path) -> Path:
    if not (path / "lantern_edge").exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref],
                       check=True, capture_output=True, text=True)
    return path


def measure(tree: Path, model: Path, tokens: int, adaptive: bool, precision: str,
            prompt: tuple[str, int | None]) -> dict:
    """{"tok_s", "tokens", "high_us"} of one generation in a fresh process importing tree."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(model), str(tokens),
                           "1" if adaptive else "0", precision, json.dumps(prompt)],
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", default="main", help="git revision to compare against")
    p.add_argument("--old-path", type=Path, default=Path("/tmp/oldrt"),
                   help="where the old revision is checked out (git worktree)")
    p.add_argument("--model", type=Path, default=REPO / "lantern_edge" / "default_model")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--prompt", choices=("default", "peers"), default="default")
    args = p.parse_args(argv)
    if args.prompt == "peers":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from peers_worker import PROMPT_TEXT, PROMPT_TOKENS
        PROMPTS["peers"] = (PROMPT_TEXT, PROMPT_TOKENS)
    trees = {"old": checkout(args.old, args.old_path), "new": REPO}
    runs: dict[tuple[str, str], list[float]] = {}
    high: dict[str, list[float]] = {"old": [], "new": []}
    for round_ in range(args.rounds):
        order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
        for mode in ("fixed", "adaptive"):
            for name in order:
                row = measure(trees[name], args.model, args.tokens, mode == "adaptive",
                              args.precision, PROMPTS[args.prompt])
                runs.setdefault((name, mode), []).append(row["tok_s"])
                high[name] += row.get("high_us", [])
                print(f"round {round_ + 1} {mode:8} {name}: {row['tok_s']:,.0f} tok/s",
                      file=sys.stderr)
    print(f"\nsingle-stream decode tok/s, {args.precision}, {args.tokens} new tokens, "
          f"{args.rounds} rounds, load average {os.getloadavg()[0]:.1f} at the end "
          f"(old = {args.old}, new = this checkout)\n")
    print("| mode | old best | new best | new/old best | old median | new median | "
          "new/old median |\n|---|---|---|---|---|---|---|")
    for mode in ("fixed", "adaptive"):
        old, new = runs[("old", mode)], runs[("new", mode)]
        print(f"| {mode} | {max(old):,.0f} | {max(new):,.0f} | {max(new) / max(old):.2f}x | "
              f"{statistics.median(old):,.0f} | {statistics.median(new):,.0f} | "
              f"{statistics.median(new) / statistics.median(old):.2f}x |")
    cost = {name: statistics.median(f / a for f, a in zip(runs[(name, "fixed")],
                                                          runs[(name, "adaptive")]))
            for name in trees}
    print(f"\nadaptive defaults' cost / fixed depth's (median of the rounds' ratios): "
          f"old {cost['old']:.2f}x, new {cost['new']:.2f}x")
    if high["old"] and high["new"]:
        print(f"one high-band token (MC dropout), us, best / median of "
              f"{len(high['old'])} (old) and {len(high['new'])} (new) tokens: old "
              f"{min(high['old']):,.0f} / {statistics.median(high['old']):,.0f}, new "
              f"{min(high['new']):,.0f} / {statistics.median(high['new']):,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
