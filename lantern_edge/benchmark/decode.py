"""Measurements on lantern_edge.Runtime: decode speed, time to first token, cost per band.

Runtime dependencies only (numpy, onnxruntime, tokenizers): these run in the worker processes
of the ONNX rows, which never import torch. Every function takes a ready Runtime; greedy
decoding with EOS ignored, so each run produces exactly the tokens asked for (unless the model's
max_position ends it, which the result's stop_reason says).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from .bands import FORCED
from .memory import peak_rss_mib
from .timing import latency_summary

logger = logging.getLogger(__name__)
WARMUP_TOKENS = 8


def _summary(result, tokens_requested: int) -> dict:
    """One generation's numbers from the runtime's own stats and trace."""
    stats = result.stats
    decode_seconds = result.seconds - result.prefill_seconds
    row = latency_summary([t.microseconds for t in result.trace], decode_seconds)
    row.update(
        tokens_requested=tokens_requested, stop_reason=result.stop_reason,
        prefill_ms=stats["prefill_ms"], controller_overhead=stats["controller_overhead"],
        mean_iterations=stats["mean_iterations_per_block"], bands=stats["band_counts"],
        mc_calls=stats["mc_calls"], think=stats["think_injections"], deepened=stats["deepened"],
        token_ids=list(result.token_ids))
    return row


def measure_modes(runtime, prompt: Sequence[int], tokens: int, repeats: int,
                  modes: dict[str, dict], warmup: bool = True) -> dict[str, dict]:
    """Fastest of `repeats` runs of each mode (GenerationOptions overrides), modes interleaved
    so that a change in machine load hits all of them alike.

    Args:
        runtime: a lantern_edge.Runtime.
        prompt: prompt token ids (BOS first when the model has one).
        tokens: new tokens per run.
        repeats: runs per mode (>= 1).
        modes: name -> overrides (e.g. {"fixed": {"adaptive": False}}).
        warmup: first one short untimed run per mode.

    Returns:
        dict: name -> summary of the run with the highest decode tokens/s (latency_summary
        fields, prefill_ms, controller_overhead, mean_iterations, bands, mc_calls, think,
        deepened, stop_reason, token_ids).
    """
    common = dict(max_new_tokens=tokens, ignore_eos=True, seed=0)
    prompt = list(prompt)
    for overrides in modes.values() if warmup else ():
        runtime.generate(prompt, **{**common, **overrides,
                                    "max_new_tokens": min(WARMUP_TOKENS, tokens)})
    best: dict[str, dict] = {}
    for repeat in range(repeats):
        for name, overrides in modes.items():
            row = _summary(runtime.generate(prompt, **{**common, **overrides}), tokens)
            logger.debug("%s repeat %d: %.0f tok/s", name, repeat, row["tok_s"])
            if name not in best or row["tok_s"] > best[name]["tok_s"]:
                best[name] = row
    return best


def measure_decode(runtime, prompt: Sequence[int], tokens: int, repeats: int,
                   adaptive: bool) -> dict:
    """Decode speed of one configuration: the fastest of `repeats` runs (see measure_modes),
    and peak_rss_stream_mib: this process's peak RSS after a warm-up and one stream() of all
    the tokens that keeps nothing, i.e. before any timed generate() builds its trace (about
    2 KB per token that the caller holds, not runtime state)."""
    options = dict(max_new_tokens=tokens, ignore_eos=True, seed=0, adaptive=adaptive)
    runtime.generate(list(prompt), **{**options, "max_new_tokens": min(WARMUP_TOKENS, tokens)})
    for _ in runtime.stream(list(prompt), **options):
        pass
    streamed = peak_rss_mib()
    row = measure_modes(runtime, prompt, tokens, repeats, {"run": {"adaptive": adaptive}},
                        warmup=False)["run"]
    row["peak_rss_stream_mib"] = streamed
    return row


def measure_bands(runtime, prompt: Sequence[int], tokens: int, repeats: int) -> dict[str, dict]:
    """Cost shape: the fixed path, the manifest's adaptive defaults, and every token forced
    into each band in turn (bands.FORCED)."""
    modes = {"fixed": {"adaptive": False}, "adaptive": {},
             **{band: dict(overrides) for band, overrides in FORCED.items()}}
    return measure_modes(runtime, prompt, tokens, repeats, modes)


def measure_ttft(runtime, prompts: dict[int, Sequence[int]], repeats: int,
                 adaptive: bool) -> dict[int, dict]:
    """Time to first token per prompt: prefill plus the first token decided (its MC or deep
    pass included in the adaptive configuration). One untimed run per prompt first (ORT sizes
    its buffers for a new prompt length on the first call), then the fastest of `repeats`.

    Args:
        runtime: a lantern_edge.Runtime.
        prompts: prompt length -> prompt token ids.
        repeats: timed runs per prompt.
        adaptive: the adaptive controller on or off.

    Returns:
        dict: prompt length -> ttft_ms, prefill_ms.
    """
    out = {}
    for length, prompt in prompts.items():
        ids = list(prompt)
        options = dict(max_new_tokens=1, ignore_eos=True, seed=0, adaptive=adaptive)
        runtime.generate(ids, **options)
        runs = [runtime.generate(ids, **options) for _ in range(repeats)]
        fastest = min(runs, key=lambda r: r.seconds)
        out[length] = dict(ttft_ms=fastest.seconds * 1e3, prefill_ms=fastest.prefill_seconds * 1e3)
    return out


def stream_tok_s(runtime, prompt: Sequence[int], tokens: int, **options) -> float:
    """Decode tok/s of one streamed generation, timed as the peers are timed
    (benchmarks/peers_worker.py): (N - 1) / (time the last token was decided - time the first
    was), so the prefill is left out and every interval is one full step. Options: overrides."""
    if tokens < 2:
        raise ValueError(f"a decode rate needs at least 2 new tokens (one full step), got {tokens}")
    stamps = []
    for _ in runtime.stream(list(prompt), max_new_tokens=tokens, **options):
        stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])
