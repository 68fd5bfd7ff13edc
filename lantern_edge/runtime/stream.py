"""One generation: TokenStream (what stream() returns, and generate() drains), its results.

A TokenStream owns a Sequence (decode.py: KV state, bindings) taken from its Runtime's pool,
its RNG and its text state; nothing of it lives on the Runtime, so any number of streams run at
once, from any threads, each exactly as it would alone.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from .controller import TraceEntry
from .healing import heal
from .options import GenerationOptions

@dataclass
class StreamedToken:
    text: str
    token_id: int
    trace: TraceEntry


@dataclass
class GenerationResult:
    text: str                             # new text only
    token_ids: list[int]                  # new ids only (no THINK)
    trace: list[TraceEntry]
    stop_reason: str                      # max_new_tokens / eos / stop / max_position
    prompt_tokens: int
    seconds: float
    session_seconds: float                # time inside session.run
    prefill_seconds: float = 0.0          # the prompt's forward pass, part of seconds
    prefill_session_seconds: float = 0.0  # the part of session_seconds spent in the prefill
    stats: dict = field(default_factory=dict)


class _TextStream:
    """Incremental detokenisation (as Hugging Face's TextStreamer): decode only the ids since the
    last emitted piece, against a short prefix, and hold text back while it ends in an
    incomplete UTF-8 sequence (byte-level BPE). Special tokens (<eos>) add no text."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], ""
        self.prefix = self.read = 0          # ids[prefix:read] decoded already, as context

    def push(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        text = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        piece = text[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        self.emitted += piece
        return piece


class _TextOut:
    """The text a generation returns: detokenised pieces with stop strings cut off.

    As llama.cpp and OpenAI do, the text ends before the first stop string, and a piece that
    might begin one is held back until the following tokens tell (so no streamed piece is ever
    taken back)."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...], healing=None):
        self.detok, self.stop, self.healing = _TextStream(tokenizer), stop, healing
        self.pending, self.text, self.stopped = "", "", False

    def push(self, token: int, last: bool) -> str:
        """The text token adds (held back pieces included); everything pending when last."""
        piece = self.detok.push(token)
        if self.healing is not None:         # the prompt already has the regenerated text
            piece = self.healing.accept(token, piece)
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if found:
            self.stopped, last = True, True
            self.pending = self.pending[:min(found)]
        keep = 0 if last else max((n for s in self.stop for n in range(1, len(s))
                                    if self.pending.endswith(s[:n])), default=0)
        piece, self.pending = self.pending[:len(self.pending) - keep], self.pending[
            len(self.pending) - keep:]
        self.text += piece
        return piece


class TokenStream:
    """An iterator of StreamedToken, each yielded as soon as it is decided.

    Once exhausted (or closed), `stop_reason`, `stats` and `result` (a GenerationResult) are
    set. `close()` ends it early (stop_reason "cancelled") and returns its state to the pool.
    """

    def __init__(self, runtime, ids: np.ndarray, options: GenerationOptions):
        self.options, self.prompt_tokens = options, len(ids)
        self.stop_reason: str | None = None
        self.stats: dict | None = None
        self.result: GenerationResult | None = None
        self._runtime = runtime
        self._steps = self._run(ids)

    def __iter__(self):
        return self

    def __next__(self) -> StreamedToken:
        return next(self._steps)

    def close(self) -> None:
        self._steps.close()

    def _run(self, ids: np.ndarray):
        runtime, options = self._runtime, self.options
        eos = None if options.ignore_eos else options.eos_token_id
        rng = np.random.default_rng(options.seed)
        mask_seed = options.seed if options.seed is not None else int(rng.integers(2**31))
        halting = options.halting_threshold if (options.adaptive and options.use_halting) else None
        fed, healing = (heal(ids, runtime.tokenizer.decode, runtime.config.vocab_size)
                        if options.token_healing else (ids, None))
        text = _TextOut(runtime.tokenizer, options.stop, healing)
        tokens: list[StreamedToken] = []
        seq = runtime._acquire()
        timer = seq.timer
        stop_reason = "cancelled"
        began = started = time.perf_counter()
        prefill_seconds = prefill_session = 0.0
        try:
            step = seq.feed(fed, options.steps_base)                 # prefill
            prefill_seconds, prefill_session = time.perf_counter() - began, timer.seconds
            started += prefill_seconds
            for count in range(1, options.max_new_tokens + 1):
                entry = runtime.controller.decide(seq, step, options, rng, mask_seed, healing)
                token = entry.token_id
                reason = ("eos" if token == eos else "max_new_tokens"
                          if count == options.max_new_tokens else "max_position"
                          if seq.kv.length >= runtime.config.max_position else None)
                entry.text = text.push(token, last=reason is not None)
                reason = "stop" if text.stopped else reason
                now = time.perf_counter()
                entry.microseconds = (now - started) * 1e6
                tokens.append(StreamedToken(entry.text, token, entry))
                if reason is not None:
                    stop_reason = reason
                    yield tokens[-1]
                    return
                yield tokens[-1]
                started = time.perf_counter()
                step = seq.feed(np.array([token]), options.steps_base, halting)
        finally:
            self.stop_reason = stop_reason
            result = GenerationResult(
                text=text.text, token_ids=[t.token_id for t in tokens],
                trace=[t.trace for t in tokens], stop_reason=stop_reason,
                prompt_tokens=len(ids), seconds=time.perf_counter() - began,
                session_seconds=timer.seconds, prefill_seconds=prefill_seconds,
                prefill_session_seconds=prefill_session)
            result.stats = self.stats = summarize(result, runtime.config.num_blocks)
            self.result = result
            runtime._release(seq)


def summarize(result: GenerationResult, num_blocks: int) -> dict:
    n = len(result.trace)
    decode = result.seconds - result.prefill_seconds
    decode_session = result.session_seconds - result.prefill_session_seconds
    bands = Counter(t.band for t in result.trace if t.band is not None)
    return {
        "new_tokens": n,
        "tokens_per_second": n / result.seconds if result.seconds > 0 else 0.0,
        "decode_tokens_per_second": n / decode if decode > 0 else 0.0,
        "prefill_ms": result.prefill_seconds * 1e3,
        # compute spent per token: the cheap pass plus any THINK pass or continuation (what ran)
        "mean_iterations_per_block": (sum(sum(t.iterations) + sum(t.deep_iterations or ())
                                          for t in result.trace) / (n * num_blocks)) if n else 0.0,
        "band_counts": {b: bands.get(b, 0) for b in ("confident", "moderate", "high", "very_high")},
        "mc_calls": sum(1 for t in result.trace if t.mc_samples),
        "think_injections": sum(t.think_injected for t in result.trace),
        "deepened": sum(t.deepened for t in result.trace),
        # share of the decode wall time spent outside session calls (NumPy, Python, tokenizer)
        "controller_overhead": (1.0 - decode_session / decode if decode > 0 else 0.0),
    }
