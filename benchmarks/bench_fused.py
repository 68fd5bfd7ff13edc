"""The fused cheap pass against the separate graph calls, and what the adaptive path costs on it.

    python benchmarks/bench_fused.py                       # fp32 and int8, 300 tokens, 6 rounds
    python benchmarks/bench_fused.py --precision int8 --tokens 512 --rounds 8

For each precision, two Runtimes of the shipped model (or --model) in this process:
`fuse=True` (the default: one session call per token, runtime/fusion.py) and `fuse=False`
(embed, each block iteration, LM head and uncertainty head as separate calls), each decoding
greedily with EOS ignored in three modes: fixed depth (`adaptive=False`), adaptive with every
token forced confident (thresholds at +inf: the uncertainty head and the controller's reading
of it, no MC call, no deep pass) and the adaptive defaults (seed 0). Rounds interleave every
(pass, mode), so a burst of load hits all alike. Prints decode tok/s and microseconds per
token of CPU time (best / median over rounds; CPU time is robust to other processes on a
shared machine, wall time is not), and the ratios fused/separate and adaptive/fixed on CPU
time, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lantern_edge import Runtime  # noqa: E402
from lantern_edge.runtime.decode import Sequence  # noqa: E402

INF = float("inf")
MODES = {"fixed": dict(adaptive=False),
         "adaptive, all confident": dict(tau_low=INF, tau_mid=INF, tau_high=INF),
         "adaptive (defaults)": dict(seed=0)}
PROMPT = "def read_config(path):\n    with open(path) as f:\n"


def decode(rt: Runtime, tokens: int, options: dict) -> tuple[float, float]:
    """(decode tok/s, CPU µs per token) of one fresh generation, from the first token decided to
    the last (prefill left out). CPU time is this process's: with one intra-op thread ORT runs
    on the calling thread, so it counts the work and not the time other processes held the
    core (the wall-clock rate on a shared machine mostly measures the load)."""
    rt._idle[:] = [Sequence(rt.engine)]                 # the same fresh state for every run
    wall, cpu = [], []
    for _ in rt.stream(PROMPT, max_new_tokens=tokens, ignore_eos=True, **options):
        wall.append(time.perf_counter())
        cpu.append(time.process_time())
    return (len(wall) - 1) / (wall[-1] - wall[0]), (cpu[-1] - cpu[0]) / (len(cpu) - 1) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="artifacts (default: shipped model)")
    p.add_argument("--precision", nargs="+", choices=("fp32", "int8"), default=["fp32", "int8"])
    p.add_argument("--tokens", type=int, default=300)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    for precision in args.precision:
        runtimes = {fuse: Runtime(args.model, precision=precision, fuse=fuse,
                                  providers=["CPUExecutionProvider"]) for fuse in (True, False)}
        assert runtimes[True].engine.fused is not None, runtimes[True].engine.unfused
        runs: dict[tuple[bool, str], list[tuple[float, float]]] = {}
        for rt in runtimes.values():                     # warm-up, untimed
            decode(rt, 16, MODES["fixed"])
        for round_ in range(args.rounds):
            order = list(runtimes.items())
            if round_ % 2:
                order.reverse()
            for fuse, rt in order:
                for mode, options in MODES.items():
                    runs.setdefault((fuse, mode), []).append(decode(rt, args.tokens, options))
        cpu = {key: min(c for _, c in v) for key, v in runs.items()}
        print(f"\n{precision}, {args.tokens} new tokens, {args.rounds} rounds, 1 thread\n")
        print("| pass | mode | tok/s best / median | CPU µs/token best / median | "
              "fused / separate (CPU, best) | cost against fixed (CPU, best) |\n"
              "|---|---|---|---|---|---|")
        for (fuse, mode), values in runs.items():
            rates, cpus = [r for r, _ in values], [c for _, c in values]
            print(f"| {'fused' if fuse else 'separate'} | {mode} | {max(rates):,.0f} / "
                  f"{statistics.median(rates):,.0f} | {min(cpus):,.0f} / "
                  f"{statistics.median(cpus):,.0f} | "
                  f"{cpu[(False, mode)] / cpu[(fuse, mode)]:.2f}x | "
                  f"{cpu[(fuse, mode)] / cpu[(fuse, 'fixed')]:.2f}x |")
    print(f"\nload average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_before)} before, "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} after")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
