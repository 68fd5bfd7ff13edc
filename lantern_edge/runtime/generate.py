"""lantern_edge.Runtime: generate() and stream() over an artifacts directory."""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ..errors import ArtifactError, TokenizerError
from .artifacts import open_artifacts
from .controller import Controller, Decision
from .engine import Engine
from .options import GenerationOptions
from .sessions import is_rust_panic, load_tokenizer

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"
PRECISIONS = ("fp32", "int8")


@dataclass
class TraceEntry:
    token_id: int
    text: str                             # the piece of text this token added (may be "")
    band: str | None                      # confident / moderate / high / very_high; None if fixed
    probability: float                    # of the chosen token
    iterations: list[int]                 # iterations run per block by the cheap pass
    deep_iterations: list[int] | None = None  # per block, THINK or deepened pass (very high)
    entropy: float | None = None
    p_max: float | None = None
    dispersion: float | None = None
    u: float | None = None                # composite score U
    u_epistemic: float | None = None      # mutual information over MC samples (high band)
    u_total: float | None = None
    mc_samples: int = 0
    think_injected: bool = False
    deepened: bool = False
    think_skipped: str | None = None
    microseconds: float = 0.0             # feeding the previous token + deciding this one


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


class Runtime:
    """A LANTERN model ready to generate.

    Example:
        >>> rt = Runtime("artifacts/tiny")                       # or .../model.onnx
        >>> result = rt.generate("def fibonacci(n):", max_new_tokens=32, seed=0)
        >>> print(result.text, result.stats["band_counts"])

    Args:
        path: the artifacts directory or its model.onnx; None: the shipped default model.
        providers: ONNX Runtime execution providers; None: CUDA when available, else CPU.
        precision: "fp32", or "int8" for the quantized graphs listed in the manifest.
        intra_op_threads: threads per session; None: one (measured fastest, README).

    Raises:
        ArtifactError: missing or corrupt artifacts (names the file and the fix).
        ValueError: an unknown precision or an unavailable provider.

    One generation at a time: the KV state belongs to the Runtime, so starting a new
    generate()/stream() ends any stream still running on it (it raises on its next step).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, providers: list[str] | None = None,
                 precision: str = "fp32", intra_op_threads: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if path is None:
            if not (DEFAULT_MODEL_DIR / "lantern.json").exists():
                raise ArtifactError(
                    "this install has no shipped default model (lantern_edge/default_model) yet; "
                    "pass an artifacts directory made by `lantern-export CHECKPOINT -o DIR` "
                    "(Runtime(DIR), or `lantern-edge generate --model DIR`)")
            path = DEFAULT_MODEL_DIR
        self.artifacts = open_artifacts(path, precision)
        self.config = self.artifacts.model_config
        self.precision = precision
        self.engine = Engine(self.artifacts, precision, providers, intra_op_threads)
        self.controller = Controller(self.engine)
        self.tokenizer = load_tokenizer(self.artifacts)
        self.artifacts.blobs.clear()         # the sessions hold their own copies now
        ctl = self.artifacts.controller
        self.defaults = GenerationOptions(
            eos_token_id=self.config.eos_token_id, steps_base=self.config.steps_base,
            steps_reasoning=self.config.steps_reasoning, mc_samples=ctl.mc_samples,
            weight_entropy=ctl.weight_entropy, weight_dispersion=ctl.weight_dispersion,
            weight_p_max=ctl.weight_p_max, tau_low=ctl.tau_low, tau_mid=ctl.tau_mid,
            tau_high=ctl.tau_high, lambda_epistemic=ctl.lambda_epistemic,
            refined_temperature=ctl.refined_temperature, halting_threshold=ctl.halting_threshold)

    @classmethod
    def default(cls, **kwargs) -> "Runtime":
        return cls(None, **kwargs)

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    def options(self, **overrides) -> GenerationOptions:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GenerationOptions)})
        if unknown:
            raise ValueError(f"unknown generation option(s): {', '.join(unknown)}")
        if isinstance(overrides.get("stop"), str):
            overrides["stop"] = (overrides["stop"],)
        elif overrides.get("stop") is not None:
            overrides["stop"] = tuple(overrides["stop"])
        options = dataclasses.replace(self.defaults, **overrides)
        options.check_model(self.config.steps_reasoning, self.config.vocab_size)
        if options.use_halting and not self.config.use_halting:
            raise ValueError("use_halting=True but this model has no halting heads")
        return options

    def encode(self, prompt: str | Sequence[int]) -> np.ndarray:
        """Prompt ids, BOS first when the model has one."""
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            raise ValueError("the prompt is bytes: pass text (decode it first, e.g. "
                            "prompt.decode('utf-8')) or a list of token ids")
        if isinstance(prompt, str):
            try:
                ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
            except BaseException as e:       # a Rust panic derives from BaseException
                if not isinstance(e, Exception) and not is_rust_panic(e):
                    raise
                known = self.tokenizer.get_vocab()
                missing = sorted({ch for ch in prompt if ch not in known})
                raise TokenizerError(
                    f"the prompt has characters this model's vocabulary lacks: {missing}" if missing
                    else f"the tokenizer failed on this prompt ({e}); try a shorter or plainer "
                         f"prompt, or pass token ids") from e
        else:
            ids = list(prompt)
            bad = [i for i in ids if not isinstance(i, (int, np.integer)) or isinstance(i, bool)
                   or not 0 <= i < self.config.vocab_size]
            if bad:
                raise ValueError(f"prompt ids must be ints in [0, vocab_size="
                                 f"{self.config.vocab_size}), got {bad[:5]}")
        if self.config.bos_token_id is not None and (not ids or ids[0] != self.config.bos_token_id):
            ids = [self.config.bos_token_id] + ids
        if not ids:
            raise ValueError("the prompt is empty and this model has no BOS token to start from")
        if len(ids) >= self.config.max_position:
            raise ValueError(f"the prompt is {len(ids)} tokens but the model has max_position="
                             f"{self.config.max_position}; shorten it to at most "
                             f"{self.config.max_position - 1} tokens")
        return np.asarray(ids, dtype=np.int64)

    def stream(self, prompt: str | Sequence[int], **overrides) -> Iterator[StreamedToken]:
        """An iterator of StreamedToken (text piece, id, trace entry), each yielded as soon as
        it is decided. Options and prompt are checked now, not at the first next()."""
        options = self.options(**overrides)
        return self._stream(self.encode(prompt), options, {})

    def generate(self, prompt: str | Sequence[int], **overrides) -> GenerationResult:
        """Generate up to max_new_tokens new tokens after the prompt.

        Args:
            prompt: text, or token ids (BOS is prepended when the model has one).
            **overrides: GenerationOptions fields, over the manifest's defaults.

        Returns:
            GenerationResult: new text and ids only, the per-token trace, stop_reason, stats.

        Raises:
            ValueError: a bad option (named, with its valid range) or prompt.
        """
        options = self.options(**overrides)
        ids = self.encode(prompt)
        info: dict = {}
        start = time.perf_counter()
        session_start = self.engine.timer.seconds
        steps = list(self._stream(ids, options, info))
        seconds = time.perf_counter() - start
        trace = [s.trace for s in steps]
        result = GenerationResult(
            text="".join(s.text for s in steps), token_ids=[s.token_id for s in steps],
            trace=trace, stop_reason=info["stop_reason"], prompt_tokens=len(ids),
            seconds=seconds, session_seconds=self.engine.timer.seconds - session_start,
            prefill_seconds=info.get("prefill_seconds", 0.0),
            prefill_session_seconds=info.get("prefill_session_seconds", 0.0))
        result.stats = summarize(result, self.config.num_blocks)
        return result

    def _stream(self, ids: np.ndarray, options: GenerationOptions, info: dict):
        engine, eos = self.engine, options.eos_token_id
        rng = np.random.default_rng(options.seed)
        mask_seed = options.seed if options.seed is not None else int(rng.integers(2**31))
        self._active = active = object()
        engine.reset()
        text = _TextStream(self.tokenizer)
        halting = options.halting_threshold if (options.adaptive and options.use_halting) else None
        info["stop_reason"] = "max_new_tokens"
        longest_stop = max(map(len, options.stop), default=0)
        started, session_start = time.perf_counter(), engine.timer.seconds
        step = engine.feed(ids, options.steps_base)                  # prefill
        info["prefill_seconds"] = time.perf_counter() - started
        info["prefill_session_seconds"] = engine.timer.seconds - session_start
        started += info["prefill_seconds"]
        last_token = int(ids[-1])
        for _ in range(options.max_new_tokens):
            decision = self.controller.decide(step, last_token, options, rng, mask_seed)
            token = decision.token
            piece = text.push(token)
            now = time.perf_counter()
            yield StreamedToken(piece, token, _trace(decision, piece, (now - started) * 1e6))
            if eos is not None and token == eos:
                info["stop_reason"] = "eos"
                return
            # a stop string ends in the new piece: search only the tail of the text
            tail = text.emitted[-(len(piece) + longest_stop - 1):] if piece and longest_stop else ""
            if tail and any(s in tail for s in options.stop):
                info["stop_reason"] = "stop"
                return
            if engine.kv.length >= self.config.max_position:
                info["stop_reason"] = "max_position"
                return
            if self._active is not active:
                raise RuntimeError("another generate()/stream() started on this Runtime and "
                                   "took over its KV state; finish one generation before "
                                   "starting the next, or use one Runtime per stream")
            started = time.perf_counter()
            step = engine.feed(np.array([token]), options.steps_base, halting)
            last_token = token


def _trace(d: Decision, piece: str, microseconds: float) -> TraceEntry:
    s = d.signals
    return TraceEntry(
        token_id=d.token, text=piece, band=d.band, probability=d.probability,
        iterations=d.iterations, deep_iterations=d.deep_iterations, entropy=s.get("entropy"),
        p_max=s.get("p_max"), dispersion=s.get("dispersion"), u=s.get("score"), u_epistemic=d.u_epistemic,
        u_total=d.u_total, mc_samples=d.mc_samples, think_injected=d.think_injected,
        deepened=d.deepened, think_skipped=d.think_skipped, microseconds=microseconds)


def summarize(result: GenerationResult, num_blocks: int) -> dict:
    n = len(result.trace)
    decode = result.seconds - result.prefill_seconds
    decode_session = result.session_seconds - result.prefill_session_seconds
    bands = Counter(t.band for t in result.trace if t.band is not None)
    return {
        "new_tokens": n,
        "tokens_per_second": n / result.seconds if result.seconds > 0 else 0.0,
        "decode_tokens_per_second": (n / (result.seconds - result.prefill_seconds)
                                     if result.seconds > result.prefill_seconds else 0.0),
        "prefill_ms": result.prefill_seconds * 1e3,
        # compute spent per token: the cheap pass plus any THINK / deepened pass
        "mean_iterations_per_block": (sum(sum(t.iterations) + sum(t.deep_iterations or ())
                                          for t in result.trace) / (n * num_blocks)) if n else 0.0,
        "band_counts": {b: bands.get(b, 0) for b in ("confident", "moderate", "high", "very_high")},
        "mc_calls": sum(1 for t in result.trace if t.mc_samples),
        "think_injections": sum(t.think_injected for t in result.trace),
        "deepened": sum(t.deepened for t in result.trace),
        # share of the decode wall time spent outside session calls (NumPy, Python, tokenizer)
        "controller_overhead": (1.0 - decode_session / decode if decode > 0 else 0.0),
    }
