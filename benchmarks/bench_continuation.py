"""Going deep by continuation vs by re-running the token, on one artifacts directory.

    python benchmarks/bench_continuation.py                    # the shipped model
    python benchmarks/bench_continuation.py --model DIR --tokens 128 --repeats 5

Every token is forced into the very-high band with inject_think=False, greedy. "continue" is
the runtime (Sequence.deepen: block 0 resumes, later blocks re-run in sequence order; the
missing cycles in cycle order); "re-run" replaces deepen with what the runtime did before:
rewind the token and feed it again at steps_reasoning. Runs are interleaved and repeated; the
table gives block iterations per token and block, block-graph calls per token, and the best
and median microseconds per decoded token. Both must produce the same tokens (checked).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from lantern_edge import Runtime
from lantern_edge.benchmark.bands import FORCED
from lantern_edge.runtime.decode import Sequence


def rerun(self: Sequence, step, depth: int):
    """The former very-high action: forget the token, feed it again from iteration 1."""
    self.kv.rewind()
    deep = self.feed(np.array([step.token], np.int64), depth)
    deep.ran = list(deep.iterations)
    return deep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="artifacts directory (default: shipped)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt", default="def read_config(path):\n    ")
    args = parser.parse_args(argv)
    runtime = Runtime(args.model, intra_op_threads=1)
    options = dict(max_new_tokens=args.tokens, ignore_eos=True, inject_think=False,
                   **FORCED["very_high"])
    continued = Sequence.deepen
    rows: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, deepen in (("continue", continued), ("re-run", rerun)):
            Sequence.deepen = deepen
            try:
                result = runtime.generate(args.prompt, **options)
            finally:
                Sequence.deepen = continued
            row = rows.setdefault(name, {"us": [], "tokens": result.token_ids})
            if row["tokens"] != result.token_ids or rows["continue"]["tokens"] != result.token_ids:
                print(f"{name}: different tokens", file=sys.stderr)
                return 1
            n = len(result.trace)
            row["us"].append((result.seconds - result.prefill_seconds) / n * 1e6)
            row["iters"] = result.stats["mean_iterations_per_block"]
            row["calls"] = sum(sum(t.iterations) + sum(t.deep_iterations) for t in result.trace) / n
    print(f"model: {runtime.artifacts.root} ({runtime.config.recursion_order} order, steps "
          f"{runtime.config.steps_base}/{runtime.config.steps_reasoning}), {args.tokens} tokens "
          f"all very high, inject_think=False, {args.repeats} interleaved repeats")
    print("| deep action | iters/blk | block calls/token | µs/token best | median |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['iters']:.2f} | {row['calls']:.2f} | {min(row['us']):,.0f} | "
              f"{statistics.median(row['us']):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
