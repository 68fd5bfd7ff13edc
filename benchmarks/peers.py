"""lantern-edge against its peers on the same work: decode tok/s, best / median, Markdown table.

    pip install -e ".[peers]"      # onnxruntime-genai, llama-cpp-python, transformers, torch
    python benchmarks/peers.py --rounds 5
    python benchmarks/peers.py --rounds 3 --tokens 128 512 --threads 1 2 \
        --gguf-converter /path/to/llama-cpp-python-src/vendor/llama.cpp/convert_hf_to_gguf.py

The peers run a Llama with random weights and the shipped model's cost per token (4 layers =
2 shared blocks x steps_base 2, hidden 256, 4 heads, SwiGLU 768, vocabulary 4096), built with
library code (benchmarks/peers_build.py; nothing is downloaded). lantern-edge runs the shipped
model, at fixed depth (adaptive=False) and with the adaptive controller (its defaults).

Every configuration (system, precision, threads) runs in a fresh process per round
(benchmarks/peers_worker.py), rounds interleaved so that a change in machine load hits all
configurations alike; a cell is best / median over the rounds. Greedy, EOS ignored, 16-token
prompt, prefill excluded. A peer that is not installed, or whose model could not be built,
gets a row that says why. The load average is printed before and after: on a shared machine
compare rows within one table, not across tables. Never needed by the runtime.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


HINTS = {"llama_cpp": " (no wheels on PyPI: pip builds llama-cpp-python from source, which needs "
                      "cmake and a C++ compiler and takes ~10 min on 2 cores)"}


def _missing(*modules: str) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    hints = "".join(HINTS.get(m, "") for m in absent)
    return f"not installed ({', '.join(absent)}): pip install -e \".[peers]\"{hints}" if absent else None


def configurations(prepared: dict | None, prepare_error: str | None) -> list[dict]:
    """Every row of the table: name, job (without threads/tokens) or error."""
    rows = [dict(name=f"lantern-edge {p}, {mode}",
                 job=dict(system="lantern", precision=p, adaptive=mode == "adaptive"))
            for p in ("fp32", "int8") for mode in ("fixed depth", "adaptive")]

    def peer(name, system, modules, model_key=None, model=None, **job):
        error = _missing(*modules) or prepare_error
        if error is None and model_key:
            entry = prepared[model_key][model]
            error = entry.get("error")
            job["path"] = entry.get("path")
        if error is None:
            job["hf"] = prepared["hf"]
        rows.append(dict(name=name, error=error, job=dict(system=system, **job)))

    for p in ("fp32", "int8", "int4"):
        peer(f"onnxruntime-genai {p}", "genai", ["onnxruntime_genai"], "genai", p)
    for t in ("f32", "q8_0"):
        peer(f"llama.cpp (llama-cpp-python) {t}", "llamacpp", ["llama_cpp"], "gguf", t)
    peer("transformers generate fp32", "transformers", ["transformers", "torch"])
    return rows


def prepare(work: Path, converter: str | None) -> tuple[dict | None, str | None]:
    """Build the peers' models in a subprocess (it imports torch; this process never does)."""
    missing = _missing("torch", "transformers")
    if missing:
        return None, f"cannot build the peers' Llama: {missing}"
    command = [sys.executable, str(HERE / "peers_build.py"), str(work)] + ([converter] if converter else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return None, "building the peers' Llama failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads((work / "prepared.json").read_text()), None


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.system()


def run_worker(job: dict, timeout: float) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path,
           "OMP_NUM_THREADS": str(job["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run([sys.executable, str(HERE / "peers_worker.py")], input=json.dumps(job),
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return dict(error=f"worker failed: {tail[:160]}")
    return json.loads(lines[-1])


def measure(rows: list[dict], tokens: list[int], threads: list[int], rounds: int,
            timeout: float, save: Path | None = None) -> None:
    """Fill each row's results[(tokens, threads)] with the tok/s of every round, in place;
    after each round the raw numbers so far go to `save` (a long run keeps what it measured)."""
    runnable = [(row, t) for row in rows if not row.get("error") for t in threads]
    for r in range(rounds):
        shift = r % max(len(runnable), 1)              # a different first configuration per round
        for row, t in runnable[shift:] + runnable[:shift]:
            out = run_worker({**row["job"], "threads": t, "tokens": tokens}, timeout)
            results = row.setdefault("results", {})
            if "error" in out:
                row.setdefault("failures", []).append(f"{t} thread(s): {out['error']}")
                for n in tokens:                # None keeps the rounds aligned (paired ratios)
                    results.setdefault((n, t), []).append(None)
                continue
            row["version"] = out["version"]
            for n in tokens:
                results.setdefault((n, t), []).append(out["tok_s"].get(str(n)))
        print(f"round {r + 1}/{rounds} done, load average {os.getloadavg()[0]:.2f}",
              file=sys.stderr, flush=True)
        if save:
            save.write_text(json.dumps([
                {**{k: v for k, v in row.items() if k != "results"},
                 "results": {f"{n}x{t}": v for (n, t), v in row.get("results", {}).items()}}
                for row in rows], indent=1))


def table(rows: list[dict], tokens: list[int], threads: list[int]) -> str:
    columns = [(n, t) for n in tokens for t in threads]
    lines = ["| system | " + " | ".join(f"{n} new, {t} thread{'s' if t > 1 else ''}"
                                         for n, t in columns) + " |",
             "|---|" + "---|" * len(columns)]
    notes = []
    for row in rows:
        name = row["name"] + (f" ({row['version']})" if row.get("version") else "")
        if row.get("error"):                 # the row itself says why it was not run
            reason = row["error"].replace("|", "/")
            lines.append(f"| {name} | not run: {reason} |" + " – |" * (len(columns) - 1))
            continue
        cells = []
        for key in columns:
            values = [v for v in row.get("results", {}).get(key, []) if v is not None]
            cells.append(f"{max(values):.0f} / {statistics.median(values):.0f}" if values else "failed")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        notes.extend(f"- {row['name']}, {f}" for f in sorted(set(row.get("failures", []))))
    return "\n".join(lines + ([""] + notes if notes else []))


ADAPTIVE_COST_LIMIT = 1.15


def _best_per_round(row: dict | None, n: int, threads: list[int]) -> list[float | None]:
    """Per round, the row's tok/s at n new tokens at its best thread count in that round."""
    per_thread = [(row or {}).get("results", {}).get((n, t), []) for t in threads]
    rounds = max(map(len, per_thread), default=0)
    best = []
    for r in range(rounds):
        values = [v[r] for v in per_thread if r < len(v) and v[r] is not None]
        best.append(max(values) if values else None)
    return best


def goal(rows: list[dict], tokens: list[int], threads: list[int]) -> str:
    """The issue's targets, computed from this run: lantern-edge at fixed depth against
    onnxruntime-genai at the same precision, each at its best thread count (best over the
    rounds, and the median of the per-round ratios: rounds are interleaved, so a round's two
    numbers share the machine's load); the adaptive defaults' cost against fixed depth."""
    by_name = {row["name"]: row for row in rows if not row.get("error")}
    lines = ["| target | " + " | ".join(f"{n} new" for n in tokens) + " |",
             "|---|" + "---|" * len(tokens)]
    verdicts = []

    def ratios(top: str, bottom: str) -> list[tuple]:
        out = []
        for n in tokens:
            a = _best_per_round(by_name.get(top), n, threads)
            b = _best_per_round(by_name.get(bottom), n, threads)
            pairs = [x / y for x, y in zip(a, b) if x is not None and y is not None]
            seen_a, seen_b = [x for x in a if x is not None], [y for y in b if y is not None]
            best = max(seen_a) / max(seen_b) if seen_a and seen_b else None
            out.append((best, statistics.median(pairs) if pairs else None))
        return out

    def cells(values: list[tuple]) -> str:
        return " | ".join("–" if best is None else f"{best:.2f}x (paired median {paired:.2f}x)"
                          for best, paired in values)

    for p in ("fp32", "int8"):
        values = ratios(f"lantern-edge {p}, fixed depth", f"onnxruntime-genai {p}")
        lines.append(f"| {p}: lantern-edge fixed depth / onnxruntime-genai, tok/s (>= 1.00x) | "
                     f"{cells(values)} |")
        verdicts.append((f"{p} fixed depth >= onnxruntime-genai", values, lambda x: x >= 1.0))
    for p in ("fp32", "int8"):
        # cost = time per token: fixed depth's tok/s over the adaptive defaults'
        values = ratios(f"lantern-edge {p}, fixed depth", f"lantern-edge {p}, adaptive")
        lines.append(f"| {p}: adaptive defaults' cost / fixed depth's "
                     f"(<= {ADAPTIVE_COST_LIMIT:.2f}x) | {cells(values)} |")
        verdicts.append((f"{p} adaptive cost <= {ADAPTIVE_COST_LIMIT:.2f}x", values,
                         lambda x: x <= ADAPTIVE_COST_LIMIT))
    lines.append("")
    for name, values, ok in verdicts:
        if any(best is None for best, _ in values):
            lines.append(f"- {name}: not measured in this run")
            continue
        best_ok = all(ok(best) for best, _ in values)
        paired_ok = all(ok(paired) for _, paired in values)
        lines.append(f"- {name}: {'met' if best_ok else 'NOT met'} by best, "
                     f"{'met' if paired_ok else 'NOT met'} by paired median")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "peers",
                        help="where the peers' models are built (reused when present)")
    parser.add_argument("--gguf-converter", help="llama.cpp's convert_hf_to_gguf.py (the "
                        "llama-cpp-python sdist has it under vendor/llama.cpp)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per worker")
    parser.add_argument("--json", type=Path, help="also write the raw tok/s here, after every round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or min(args.tokens) < 2 or min(args.threads) < 1:
        print("peers: --rounds >= 1, --tokens >= 2 and --threads >= 1, please", file=sys.stderr)
        return 2

    args.work.mkdir(parents=True, exist_ok=True)
    prepared, error = prepare(args.work, args.gguf_converter)
    rows = configurations(prepared, error)
    load_before, began = os.getloadavg(), time.time()
    measure(rows, args.tokens, args.threads, args.rounds, args.timeout, args.json)
    load_after = os.getloadavg()
    print(f"Decode tok/s, best / median of {args.rounds} interleaved rounds, one fresh process "
          f"per configuration and round; greedy, 16-token prompt, prefill excluded. "
          f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_name()}); "
          f"load average (1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_before)} before, "
          f"{'/'.join(f'{x:.1f}' for x in load_after)} after; {time.time() - began:.0f} s.\n")
    print(table(rows, args.tokens, args.threads))
    print()
    print(goal(rows, args.tokens, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
