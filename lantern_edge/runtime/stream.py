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
from tokenizers.decoders import DecodeStream

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
    stop_reason: str                      # max_new_tokens / eos / stop / max_position / cancelled
    prompt_tokens: int
    seconds: float
    session_seconds: float                # time inside session calls (a batch's shared ones too)
    prefill_seconds: float = 0.0          # the prompt's forward pass, part of seconds
    prefill_session_seconds: float = 0.0  # the part of session_seconds spent in the prefill
    stats: dict = field(default_factory=dict)


class _TextOut:
    """The text a generation returns: detokenised pieces with stop strings cut off.

    As llama.cpp and OpenAI do, the text ends before the first stop string, and a piece that
    might begin one is held back until the following tokens tell (so no streamed piece is ever
    taken back)."""

    def __init__(self, tokenizer: Tokenizer, silent: frozenset[int], stop: tuple[str, ...],
                 healing=None):
        # tokenizers' own incremental decoder: it holds a piece back while it ends inside a
        # UTF-8 sequence (byte-level BPE)
        self.tokenizer, self.detok = tokenizer, DecodeStream(skip_special_tokens=True)
        # the special tokens' ids (sessions.special_ids): they add no text and never reach the
        # decoder, which re-decodes every id it holds until its text grows, so a run of them
        # (an EOS repeated under ignore_eos) would cost more with every token
        self.silent = silent
        self.stop, self.healing = stop, healing
        self.pending, self.text, self.stopped = "", "", False

    def push(self, token: int, last: bool) -> str:
        """The text token adds (held back pieces included); everything pending when last."""
        piece = "" if token in self.silent else self.detok.step(self.tokenizer, token) or ""
        if self.healing is not None:         # the prompt already has the regenerated text
            piece = self.healing.accept(token, piece)
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if found:
            self.stopped, last = True, True
            self.pending = self.pending[:min(found)]
        keep = 0 if last else max((n for s in self.stop for n in range(1, len(s))
                                    if self.pending.endswith(s[:n])), default=0)
        cut = len(self.pending) - keep
        piece, self.pending = self.pending[:cut], self.pending[cut:]
        self.text += piece
        return piece


class Generation:
    """One generation's own state around its Sequence: options, RNG, text, tokens so far, the
    pending FeedResult, timings and why it stopped. TokenStream drives one alone; the Batcher
    drives many together. `decide` and `feed` below are the two halves of one decode step."""

    def __init__(self, runtime, ids: np.ndarray, options: GenerationOptions, seq):
        self.runtime, self.ids, self.options, self.seq = runtime, ids, options, seq
        self.eos = None if options.ignore_eos else options.eos_token_id
        self.rng = np.random.default_rng(options.seed)
        self.mask_seed = (options.seed if options.seed is not None
                          else int(self.rng.integers(2**31)))
        self.halting = (options.halting_threshold if options.adaptive and options.use_halting
                        else None)
        # the adaptive controller reads every token's signals with these weights (decode.py's
        # fused pass computes them in the same call as the token)
        seq.signal_weights = (np.array([options.weight_entropy, options.weight_dispersion,
                                        options.weight_p_max], np.float32)
                              if options.adaptive else None)
        # token healing (healing.py): the prompt fed without its trailing whitespace tokens,
        # whose text the first choices must regenerate
        self.fed, self.healing = (heal(ids, runtime.tokenizer.decode, runtime.config.vocab_size)
                                  if options.token_healing else (ids, None))
        self.text = _TextOut(runtime.tokenizer, runtime.special_ids, options.stop, self.healing)
        self.tokens: list[StreamedToken] = []
        self.history = self.fed.tolist()           # ids fed + output ids, for repetition rules
        self.stop_reason: str | None = None
        self.step = None
        self.began = self.started = time.perf_counter()
        self.prefill_seconds = self.prefill_session = 0.0

    def prefill(self) -> None:
        self.began = time.perf_counter()
        self.step = self.seq.feed(self.fed, self.options.steps_base)
        self.prefill_seconds = time.perf_counter() - self.began
        self.prefill_session = self.seq.timer.seconds
        self.started = self.began + self.prefill_seconds

    def accept(self, entry: TraceEntry) -> StreamedToken:
        """Record the controller's decision; sets stop_reason when it is the last token."""
        token, count = entry.token_id, len(self.tokens) + 1
        reason = ("eos" if token == self.eos else "max_new_tokens"
                  if count == self.options.max_new_tokens else "max_position"
                  if self.seq.kv.length >= self.runtime.config.max_position else None)
        entry.text = self.text.push(token, last=reason is not None)
        if entry.top_logprobs is not None:
            decode = self.runtime.tokenizer.decode
            entry.top_logprobs = [(i, decode([i]), lp) for i, _, lp in entry.top_logprobs]
        self.stop_reason = "stop" if self.text.stopped else reason
        entry.microseconds = (time.perf_counter() - self.started) * 1e6
        self.tokens.append(StreamedToken(entry.text, token, entry))
        self.history.append(token)
        return self.tokens[-1]

    def result(self) -> GenerationResult:
        result = GenerationResult(
            text=self.text.text, token_ids=[t.token_id for t in self.tokens],
            trace=[t.trace for t in self.tokens], stop_reason=self.stop_reason or "cancelled",
            prompt_tokens=len(self.ids), seconds=time.perf_counter() - self.began,
            session_seconds=self.seq.timer.seconds, prefill_seconds=self.prefill_seconds,
            prefill_session_seconds=self.prefill_session)
        result.stats = summarize(result, self.runtime.config.num_blocks)
        return result


def decide(runtime, runner, gens: list[Generation]) -> list[StreamedToken]:
    """The next token of each generation (each due one: prefilled or fed since)."""
    entries = runtime.controller.decide(runner, gens)
    return [g.accept(e) for g, e in zip(gens, entries)]


def feed(runner, gens: list[Generation]) -> None:
    """Feed each running generation's newest token, in one runner call per depth."""
    now = time.perf_counter()
    for depth in sorted({g.options.steps_base for g in gens}):
        group = [g for g in gens if g.options.steps_base == depth]
        steps = runner.feed([g.seq for g in group], [g.history[-1] for g in group], depth,
                            [g.halting for g in group])
        for g, step in zip(group, steps):
            g.step, g.started = step, now


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
        if self.stop_reason is None:              # closed before its first token
            self.stop_reason = "cancelled"

    def _run(self, ids: np.ndarray):
        from .decode import SINGLE

        runtime = self._runtime
        gen = Generation(runtime, ids, self.options, runtime._acquire())
        try:
            gen.prefill()
            while True:
                token = decide(runtime, SINGLE, [gen])[0]
                yield token
                if gen.stop_reason is not None:
                    return
                feed(SINGLE, [gen])
        finally:
            self.result = gen.result()
            self.stop_reason, self.stats = self.result.stop_reason, self.result.stats
            runtime._release(gen.seq)


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
