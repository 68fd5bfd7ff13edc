"""Concurrent streams on one shared Runtime: aggregate decode speed.

Runtime dependencies only (these run in the ONNX worker processes). Two ways to serve S
streams at once from one loaded model:
- "threads": S threads each call generate() on the shared Runtime (each generation its own
  state, unbatched graph calls; the threads share the cores);
- "batched": a Batcher with max_batch_size=S decodes the S requests together, one graph call
  per kind per step for all of them.
Greedy, EOS ignored, the manifest's adaptive controller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

MODES = ("threads", "batched")


def _threads(runtime, prompt: list[int], tokens: int, streams: int) -> tuple[float, int]:
    start = threading.Barrier(streams + 1)
    counts = [0] * streams

    def work(i: int) -> None:
        start.wait()
        counts[i] = len(runtime.generate(prompt, max_new_tokens=tokens, ignore_eos=True).token_ids)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(streams)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - began, sum(counts)


def _batched(batcher, prompt: list[int], tokens: int, streams: int) -> tuple[float, int]:
    began = time.perf_counter()
    handles = [batcher.submit(prompt, max_new_tokens=tokens, ignore_eos=True)
               for _ in range(streams)]
    count = sum(len(h.wait().token_ids) for h in handles)
    return time.perf_counter() - began, count


def measure_concurrency(runtime, prompt: Sequence[int], tokens: int, streams: int, mode: str,
                        repeats: int) -> dict:
    """The fastest of `repeats` rounds of `streams` concurrent generations of `tokens` new
    tokens each (after one short warm-up round).

    Returns:
        dict: mode, streams, tokens (new tokens in all), seconds (wall time from the start of
        the first to the end of the last, prefills included), tok_s (aggregate).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    prompt = list(prompt)
    batcher = None
    if mode == "batched":
        from ..runtime.batching import Batcher
        batcher = Batcher(runtime, max_batch_size=streams)

    def round_(n: int) -> tuple[float, int]:
        if batcher is not None:
            return _batched(batcher, prompt, n, streams)
        return _threads(runtime, prompt, n, streams)

    try:
        round_(min(8, tokens))
        best = None
        for _ in range(repeats):
            seconds, count = round_(tokens)
            if best is None or count / seconds > best[1] / best[0]:
                best = (seconds, count)
    finally:
        if batcher is not None:
            batcher.close()
    seconds, count = best
    return dict(mode=mode, streams=streams, tokens=count, seconds=seconds, tok_s=count / seconds)
