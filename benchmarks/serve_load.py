"""Load on `lantern-edge serve` over loopback: concurrent streaming clients, bounded.

    python benchmarks/serve_load.py                          # 1, 8, 32 clients x 20 x 64 tokens
    python benchmarks/serve_load.py --clients 1 4 --requests 5 --model artifacts/tiny

Starts the server (127.0.0.1, a free port, its default admission limits unless given), warms
it with one request, then for each client count runs that many clients at once, each sending
`--requests` streamed completions of exactly `--tokens` tokens (ignore_eos) one after another
(greedy, a distinct seed each). Reports per level: requests/s, aggregate tokens/s, latency and
time to first token (p50, p99), errors (non-200, error events, missing [DONE]) and the
server's peak RSS (sampled every 20 ms). Clients use http.client with one keep-alive
connection each, so that the client side costs little CPU next to the server. Each level is
bounded by --level-timeout.
Writes benchmarks/results/serve_load.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["def fibonacci(n):", "import os\n\ndef read_config(path):", "class Stack:\n",
           "def parse_args(argv=None):"]


def start_server(extra: list[str]) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "lantern_edge.cli", "serve", "--host",
                             "127.0.0.1", "--port", "0", "--log-level", "warning", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else ""
    if "http://" not in line:
        proc.kill()
        sys.exit(f"serve_load: the server did not start ({line!r})")
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


def one_request(conn: http.client.HTTPConnection, body: bytes) -> dict:
    """One streamed completion: latency, time to first token, tokens, error (or None)."""
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        response.read()
        return {"error": f"HTTP {response.status}"}
    first, tokens, done, error = None, 0, False, None
    for line in response:                       # SSE: "data: {...}\n", "\n"
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            done = True
            continue
        event = json.loads(data)
        if "error" in event:
            error = event["error"]["message"]
            continue
        new = len(event["choices"][0]["lantern"]["trace"])
        if new and first is None:
            first = time.perf_counter() - start
        tokens += new
    if not done:
        error = error or "no [DONE]"
    return {"latency": time.perf_counter() - start, "ttft": first, "tokens": tokens,
            "error": error}


def client(port: int, requests: int, tokens: int, index: int, out: list, deadline: float):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    for r in range(requests):
        if time.perf_counter() > deadline:
            out.append({"error": "level timeout"})
            continue
        body = json.dumps({"model": "lantern-edge", "prompt": PROMPTS[(index + r) % len(PROMPTS)],
                           "max_tokens": tokens, "temperature": 0, "seed": index * 1000 + r,
                           "ignore_eos": True, "stream": True}).encode()
        try:
            out.append(one_request(conn, body))
        except (OSError, http.client.HTTPException, ValueError) as e:
            out.append({"error": f"{type(e).__name__}: {e}"})
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.close()


def peak_rss(pid: int, stop: threading.Event, result: list) -> None:
    process, peak = psutil.Process(pid), 0
    while not stop.is_set():
        peak = max(peak, process.memory_info().rss)
        stop.wait(0.02)
    result.append(max(peak, process.memory_info().rss))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def level(port: int, pid: int, clients: int, requests: int, tokens: int, timeout: float) -> dict:
    results: list[dict] = []
    stop, rss = threading.Event(), []
    sampler = threading.Thread(target=peak_rss, args=(pid, stop, rss))
    sampler.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(port, requests, tokens, i, results,
                                                     start + timeout)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    ok = [r for r in results if r["error"] is None]
    return {"clients": clients, "requests": len(results), "wall_s": wall,
            "requests_per_s": len(ok) / wall, "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "latency_p50_ms": percentile([r["latency"] for r in ok], 0.5) * 1e3,
            "latency_p99_ms": percentile([r["latency"] for r in ok], 0.99) * 1e3,
            "ttft_p50_ms": percentile([r["ttft"] for r in ok if r["ttft"]], 0.5) * 1e3,
            "ttft_p99_ms": percentile([r["ttft"] for r in ok if r["ttft"]], 0.99) * 1e3,
            "mean_tokens": statistics.fmean(r["tokens"] for r in ok) if ok else 0.0,
            "errors": len(results) - len(ok),
            "error_kinds": sorted({r["error"] for r in results if r["error"]}),
            "peak_rss_mib": rss[0] / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=20, help="per client")
    p.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    p.add_argument("--level-timeout", type=float, default=600.0, help="seconds per level")
    p.add_argument("--server-args", default="", help="extra `lantern-edge serve` options, "
                                                     "e.g. '--int8 --max-concurrency 32'")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    args = p.parse_args(argv)
    proc, port = start_server(args.server_args.split())
    try:
        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        one_request(warm, json.dumps({"model": "lantern-edge", "prompt": PROMPTS[0],
                                      "max_tokens": args.tokens, "stream": True}).encode())
        warm.close()
        rows = [level(port, proc.pid, c, args.requests, args.tokens, args.level_timeout)
                for c in args.clients]
    finally:
        proc.terminate()
        proc.wait(60)
    command = "python benchmarks/serve_load.py " + " ".join(argv if argv is not None
                                                             else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command.strip(), "cpus": os.cpu_count(),
                                    "load_average": os.getloadavg(), "levels": rows}, indent=1))
    print(f"`{command.strip()}` ({os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f})\n")
    print("| clients | requests | req/s | tok/s | latency p50 / p99 ms | TTFT p50 / p99 ms "
          "| errors | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f} | "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['errors']} | "
              f"{r['peak_rss_mib']:.0f} |")
    for r in rows:
        if r["error_kinds"]:
            print(f"{r['clients']} clients: {r['error_kinds']}")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
