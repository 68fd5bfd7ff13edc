"""The PyTorch rows: the reference model decoding greedily, as upstream does and with KV state.

- full recompute: the plain full forward over the whole sequence for every new token (how the
  original LANTERN generates); its cost per token grows with the sequence, so a run is
  time-boxed and the steps it did not reach are timed at a few sampled sequence lengths and
  interpolated (the result says how many tokens were timed in the loop).
- incremental: `IncrementalDecoder`, one token per call at steps_base iterations per block.

Imports torch (the worker processes of these rows only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from ..extras import install_hint
from .timing import interpolate_tail, latency_summary, sample_lengths

logger = logging.getLogger(__name__)
WARMUP_TOKENS = 4


def _import_torch():
    try:
        import torch
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the PyTorch rows of `lantern-edge bench` need PyTorch: "
                                  f"{install_hint('torch')}", name=e.name) from e
    return torch


def _checkpoint(checkpoint: str | Path | None, artifacts: str | Path):
    """The checkpoint file, or (None) the one rebuilt from the artifacts' fp32 graphs."""
    from ..export.reimport import load_reference
    return load_reference(artifacts if checkpoint is None else checkpoint)


def load_model(checkpoint: str | Path | None, artifacts: str | Path, threads: int):
    """The reference model in eval mode, torch limited to `threads` threads.

    Args:
        checkpoint: the checkpoint the artifacts were exported from; None: rebuild it from
            the artifacts' fp32 graphs (lantern_edge.export.reimport, needs onnx).
        artifacts: the artifacts directory.
        threads: torch intra-op threads.
    """
    torch = _import_torch()
    torch.set_num_threads(threads)
    return _checkpoint(checkpoint, artifacts).build_model()


def describe_checkpoint(checkpoint: str | Path | None, artifacts: str | Path) -> dict:
    """The reference's model config and torch's version, for the suite to check against the
    artifacts before timing anything."""
    torch = _import_torch()
    ckpt = _checkpoint(checkpoint, artifacts)
    return dict(model_config=ckpt.model_config.to_dict(), torch_version=torch.__version__,
                parameters=sum(v.numel() for v in ckpt.state_dict.values()))


def _greedy(model, logits) -> int:
    """argmax of the last position's logits (B, T, V), never THINK: as in the runtime, THINK
    is the controller's to inject, so the greedy tokens of every row can be compared."""
    row = logits[0, -1]
    think = model.config.think_token_id
    if think is not None:
        row = row.clone()
        row[think] = float("-inf")
    return int(row.argmax())


def _full_step(model, sequence: Sequence[int]) -> int:
    torch = _import_torch()
    return _greedy(model, model(torch.tensor([list(sequence)])).logits)


def full_recompute(model, prompt: Sequence[int], tokens: int, time_box: float,
                   tail_samples: int = 8) -> dict:
    """Greedy decoding by a full forward over the whole sequence per new token.

    Args:
        model: a LanternModel in eval mode.
        prompt: prompt token ids.
        tokens: new tokens.
        time_box: seconds the decode loop may run; at least one token is always timed.
        tail_samples: sequence lengths timed to estimate the steps past the time box.

    Returns:
        dict: latency_summary fields over all `tokens` steps (timed or estimated), prefill_ms,
        measured_tokens (timed in the loop), estimated (bool), sampled_lengths, token_ids
        (the ones generated in the loop).
    """
    torch = _import_torch()
    sequence = list(prompt)
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model(torch.tensor([sequence])).logits
        prefilled = time.perf_counter()
        token = _greedy(model, logits)
        previous = time.perf_counter()
        latencies, generated = [(previous - prefilled) * 1e6], [token]
        while len(generated) < tokens and previous - prefilled < time_box:
            sequence.append(token)
            token = _full_step(model, sequence)
            now = time.perf_counter()
            latencies.append((now - previous) * 1e6)
            generated.append(token)
            previous = now
        measured = len(generated)
        sampled: list[int] = []
        if measured < tokens:
            # step k (0-based) runs over prompt + k tokens; time the remaining lengths at a few
            # points (best of two: the machine is shared) and interpolate between them
            first, last = len(prompt) + measured, len(prompt) + tokens - 1
            sampled = sample_lengths(first, last, tail_samples)
            filler = (sequence * (last // max(len(sequence), 1) + 1))[:last]
            costs = []
            for length in sampled:
                runs = []
                for _ in range(2):
                    began = time.perf_counter()
                    _full_step(model, filler[:length])
                    runs.append((time.perf_counter() - began) * 1e6)
                costs.append(min(runs))
            latencies += interpolate_tail(sampled, costs, range(first, last + 1))
            logger.info("full recompute: %d of %d tokens timed in %.0f s; the rest estimated "
                        "from %d sampled lengths", measured, tokens, time_box, len(sampled))
    row = latency_summary(latencies)
    row.update(tokens_requested=tokens, prefill_ms=(prefilled - start) * 1e3,
               measured_tokens=measured, estimated=measured < tokens, sampled_lengths=sampled,
               token_ids=generated)
    return row


def incremental(model, prompt: Sequence[int], tokens: int) -> dict:
    """Greedy decoding with the reference's KV state: prefill, then one token per call."""
    torch = _import_torch()
    from ..model.incremental import IncrementalDecoder
    with torch.inference_mode():
        start = time.perf_counter()
        decoder = IncrementalDecoder(model)
        logits = decoder.forward(torch.tensor(list(prompt))).logits
        prefilled = time.perf_counter()
        token = _greedy(model, logits)
        previous = time.perf_counter()
        latencies, generated = [(previous - prefilled) * 1e6], [token]
        while len(generated) < tokens:
            token = _greedy(model, decoder.forward(torch.tensor([token])).logits)
            now = time.perf_counter()
            latencies.append((now - previous) * 1e6)
            generated.append(token)
            previous = now
    row = latency_summary(latencies, previous - prefilled)
    row.update(tokens_requested=tokens, prefill_ms=(prefilled - start) * 1e3,
               measured_tokens=len(generated), estimated=False, token_ids=generated)
    return row


def measure_decode(model, prompt: Sequence[int], tokens: int, repeats: int, method: str,
                   time_box: float, tail_samples: int = 8) -> dict:
    """The fastest of up to `repeats` runs of `method` ("full" or "incremental").

    These rows are the slow ones, so they repeat only while their runs together stay within
    `time_box` seconds: short runs get best-of-N, a long one runs once (and a full-recompute
    run past the time box is partly an estimate already).
    """
    full = method == "full"
    if full:
        full_recompute(model, prompt, min(WARMUP_TOKENS, tokens), time_box)
    else:
        incremental(model, prompt, min(WARMUP_TOKENS, tokens))
    best, began = None, time.perf_counter()
    for repeat in range(repeats):
        row = (full_recompute(model, prompt, tokens, time_box, tail_samples) if full
               else incremental(model, prompt, tokens))
        row["runs"] = repeat + 1
        if best is None or row["tok_s"] > best["tok_s"]:
            best = row
        if row["estimated"] or time.perf_counter() - began > time_box:
            break
    best["runs"] = row["runs"]
    return best


def measure_ttft(model, prompts: dict[int, Sequence[int]], repeats: int,
                 method: str) -> dict[int, dict]:
    """Prefill plus the first greedy token per prompt: one untimed run, then the fastest of
    `repeats` (full: one forward over the prompt; incremental: a fresh decoder's prefill)."""
    torch = _import_torch()
    from ..model.incremental import IncrementalDecoder
    out = {}
    for length, prompt in prompts.items():
        ids = torch.tensor(list(prompt))
        times = []
        with torch.inference_mode():
            for _ in range(repeats + 1):
                start = time.perf_counter()
                if method == "incremental":
                    logits = IncrementalDecoder(model).forward(ids).logits
                else:
                    logits = model(ids[None]).logits
                _greedy(model, logits)
                times.append(time.perf_counter() - start)
        ms = min(times[1:]) * 1e3
        out[length] = dict(ttft_ms=ms, prefill_ms=ms)
    return out
