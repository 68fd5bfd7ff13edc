"""The fused pass's attention: one GroupQueryAttention node on a shared KV buffer
(runtime/attention.py, the fp32 default) against the exported attention nodes spliced in
(`shared_kv=False`).

    python benchmarks/bench_attention.py                     # fp32, 1 and 2 threads, 7 rounds
    python benchmarks/bench_attention.py --threads 2 --tokens 512 --rounds 9

For the shipped model (or --model), greedy, EOS ignored, both Runtimes in this process, rounds
interleaved (the order alternating), per thread count:
- `graph call`: the bound fused cheap-pass call alone, in a loop (what the graph costs);
- `stream`: a whole `Runtime.stream()` at fixed depth, per token (what an app sees).
Prints microseconds per token, best / median over rounds, and the ratio exported / GQA of each
(above 1: GroupQueryAttention is faster), with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_token_cost import graph_call_us, stream_us  # noqa: E402

from lantern_edge import Runtime  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="artifacts (default: shipped model)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    if args.tokens < 2 or args.rounds < 1 or min(args.threads) < 1:
        p.error("--tokens must be >= 2, --rounds >= 1 and --threads >= 1")
    load_before = os.getloadavg()
    print(f"{args.precision}, {args.tokens} tokens, {args.rounds} rounds\n")
    print("| threads | what | GQA, us best / median | exported, us best / median | "
          "exported / GQA (best, median) |\n|---|---|---|---|---|")
    for threads in args.threads:
        runtimes = {shared: Runtime(args.model, precision=args.precision, shared_kv=shared,
                                    intra_op_threads=threads,
                                    providers=["CPUExecutionProvider"])
                    for shared in (True, False)}
        if not runtimes[True].engine.kv_scratch:
            p.error(f"this model keeps the exported attention: "
                    f"{runtimes[True].engine.spliced_attention}")
        rows = {"graph call": lambda rt: graph_call_us(rt, args.tokens),
                "stream, fixed depth": lambda rt: stream_us(rt, args.tokens, False)}
        times = {(what, shared): [] for what in rows for shared in runtimes}
        for rt in runtimes.values():                           # warm-up
            for measure in rows.values():
                measure(rt)
        for round_ in range(args.rounds):
            order = list(runtimes.items())[::-1 if round_ % 2 else 1]
            for what, measure in rows.items():
                for shared, rt in order:
                    times[(what, shared)].append(measure(rt))
        for what in rows:
            gqa, spliced = times[(what, True)], times[(what, False)]
            print(f"| {threads} | {what} | {min(gqa):,.0f} / {statistics.median(gqa):,.0f} | "
                  f"{min(spliced):,.0f} / {statistics.median(spliced):,.0f} | "
                  f"{min(spliced) / min(gqa):.2f}x, "
                  f"{statistics.median(spliced) / statistics.median(gqa):.2f}x |")
    print(f"\nload average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_before)} before, "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
