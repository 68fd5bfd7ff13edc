"""Which ONNX Runtime thread settings pay for the shipped model: decode tok/s per variant.

    python benchmarks/bench_threads.py --rounds 3 --tokens 256
    python benchmarks/bench_threads.py --rounds 8 --tokens 512 --variants t1 t2 t2-nospin

Variants:

- t1:          1 intra-op thread, spinning off (the runtime's default);
- t1-spin:     1 thread, every session spinning (ONNX Runtime's own default);
- t2:          2 threads per session (`intra_op_threads=2`), the runtime's own choice of
               spinning: only the fused cheap-pass sessions spin;
- t2-nospin:   2 threads per session, no session spins;
- t2-spin:     2 threads per session, every session spinning;
- global2:     one process-wide pool of 2 threads shared by all sessions
               (set_global_thread_pool_sizes + use_per_session_threads=False; that pool spins).

Each (variant, precision) runs in a fresh process per round (the global pool must be set
before the first session), rounds interleaved; greedy fixed path, EOS ignored. The variant's
options replace lantern_edge.runtime.engine.session_options in the worker, so the runtime's
code is measured unchanged otherwise. Prints best / median tok/s and the load average.
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
# threads, spin (None: the runtime's choice), global pool
VARIANTS = {"t1": (1, None, False), "t1-spin": (1, True, False), "t2": (2, None, False),
            "t2-nospin": (2, False, False), "t2-spin": (2, True, False), "global2": (2, True, True)}


def worker(variant: str, precision: str, tokens: int) -> dict:
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state

    import lantern_edge.runtime.engine as engine
    from lantern_edge import Runtime
    from lantern_edge.benchmark.decode import measure_modes

    threads, spin, shared = VARIANTS[variant]
    if shared:
        _pybind_state.set_global_thread_pool_sizes(threads, 1)

    def options(_threads: int, spinning: bool = False) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if shared:
            opts.use_per_session_threads = False
        else:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            chosen = spinning if spin is None else spin
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if chosen else "0")
        return opts

    if not hasattr(engine, "session_options"):
        raise SystemExit("lantern_edge.runtime.engine.session_options is gone: update this script")
    engine.session_options = options
    runtime = Runtime(precision=precision, providers=["CPUExecutionProvider"])
    prompt = runtime.encode("def read_config(path):").tolist()
    row = measure_modes(runtime, prompt, tokens, 2, {"fixed": {"adaptive": False}})["fixed"]
    return {"tok_s": row["tok_s"], "us_median": row["us_median"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="the variants to run (default: all)")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.tokens)))
        return 0
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    results: dict[tuple[str, str], list[float]] = {}
    before = os.getloadavg()
    for _ in range(args.rounds):
        for variant in args.variants:
            for precision in ("fp32", "int8"):
                done = subprocess.run([sys.executable, __file__, "--tokens", str(args.tokens),
                                       "--worker", variant, precision],
                                      capture_output=True, text=True, env=env, check=False)
                if done.returncode != 0:
                    print(f"{variant} {precision}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                    continue
                rate = json.loads(done.stdout.strip().splitlines()[-1])["tok_s"]
                results.setdefault((variant, precision), []).append(rate)
    after = os.getloadavg()
    print(f"Fixed-path decode tok/s, best / median of {args.rounds} rounds, {args.tokens} tokens; "
          f"load average {before[0]:.1f} before, {after[0]:.1f} after.\n")
    print("| variant | fp32 | int8 |\n|---|---|---|")
    for variant in args.variants:
        cells = []
        for precision in ("fp32", "int8"):
            v = results.get((variant, precision), [])
            cells.append(f"{max(v):.0f} / {statistics.median(v):.0f}" if v else "failed")
        print(f"| {variant} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
