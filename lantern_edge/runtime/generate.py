"""lantern_edge.Runtime: the loaded model, shared by every generate() and stream() on it."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence as Ids
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, TokenizerError
from .artifacts import open_artifacts
from .controller import Controller, TraceEntry
from .decode import Sequence
from .engine import Engine
from .options import GenerationOptions
from .generator import Generator
from .pool import Pool
from .sessions import is_rust_panic, load_tokenizer, special_ids
from .stream import Generation, GenerationResult, StreamedToken, TokenStream, decide, feed

__all__ = ["Runtime", "Generator", "GenerationResult", "StreamedToken", "TokenStream",
           "TraceEntry", "DEFAULT_MODEL_DIR"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"
PRECISIONS = ("fp32", "int8")
IDLE_STATES = 4          # finished generations' states kept for reuse (each ~KV size)


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
        intra_op_threads: threads per session; None: one (INT8's fastest here; fp32 decodes
            1.35-1.5x faster with 2: docs/PERFORMANCE.md, "Thread settings").
        fuse: decode a token's cheap pass in one call of a graph spliced from the model's
            graphs at load time (runtime/fusion.py) wherever it computes what the separate
            calls compute; False: always the separate calls (for comparison).
        shared_kv: on fp32, the fused pass attends with one GroupQueryAttention node that
            writes the new key/value in place (runtime/attention.py; logits within ~1e-5 of
            the separate calls); False: the exported attention nodes, bitwise equal to the
            separate calls (for comparison).

    Raises:
        ArtifactError: missing or corrupt artifacts (names the file and the fix).
        ValueError: an unknown precision or an unavailable provider.

    The Runtime is immutable after loading (sessions, tokenizer, manifest, defaults) and safe to
    share across threads: every generate()/stream() owns its own state (KV buffers, bindings,
    RNG), so concurrent calls give exactly the tokens and traces each would give alone.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, providers: list[str] | None = None,
                 precision: str = "fp32", intra_op_threads: int | None = None,
                 kv_on_device: bool | None = None, fuse: bool = True, shared_kv: bool = True):
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
        self.engine = Engine(self.artifacts, precision, providers, intra_op_threads,
                             kv_on_device=kv_on_device, fuse=fuse, shared_kv=shared_kv)
        self.controller = Controller(self.config)
        self.tokenizer = load_tokenizer(self.artifacts)
        self.special_ids = special_ids(self.tokenizer)      # the detokenizer skips them
        self.artifacts.blobs.clear()         # the sessions hold their own copies now
        # the model's values of GenerationOptions' None fields, by name, from the manifest
        self.model_values = {**self.config.to_dict(), **self.artifacts.controller.to_dict()}
        self.defaults = GenerationOptions().resolved(self.model_values)
        self._idle: list[Sequence] = []
        self._lock = threading.Lock()

    @classmethod
    def default(cls, **kwargs) -> "Runtime":
        return cls(None, **kwargs)

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    def options(self, options: GenerationOptions | None = None, **overrides) -> GenerationOptions:
        """`options` (default: GenerationOptions()) with `overrides` applied and every None
        model field filled from the manifest; checked against this model."""
        if options is not None and not isinstance(options, GenerationOptions):
            raise ValueError(f"options must be a GenerationOptions or None, got "
                             f"{type(options).__name__}; pass single fields as keyword arguments")
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GenerationOptions)})
        if unknown:
            raise ValueError(f"unknown generation option(s): {', '.join(unknown)}")
        if isinstance(overrides.get("stop"), str):
            overrides["stop"] = (overrides["stop"],)
        elif overrides.get("stop") is not None:
            overrides["stop"] = tuple(overrides["stop"])
        options = dataclasses.replace(options or GenerationOptions(), **overrides)
        options = options.resolved(self.model_values)
        options.check_model(self.config.steps_reasoning, self.config.vocab_size)
        if options.use_halting and not self.config.use_halting:
            raise ValueError("use_halting=True but this model has no halting heads")
        if options.deep_trigger == "probe" and not self.engine.has_probe:
            raise ValueError("deep_trigger='probe' needs a model with a depth probe "
                             "(depth_probe_hidden > 0); use deep_trigger='u' with this model")
        return options

    def encode(self, prompt: str | Ids[int], bos: bool = True) -> np.ndarray:
        """Prompt ids, BOS first when the model has one (and bos=True: a prompt's start)."""
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
        if (bos and self.config.bos_token_id is not None
                and (not ids or ids[0] != self.config.bos_token_id)):
            ids = [self.config.bos_token_id] + ids
        if not ids:
            raise ValueError("the prompt is empty and this model has no BOS token to start from")
        if len(ids) >= self.config.max_position:
            raise ValueError(f"the prompt is {len(ids)} tokens but the model has max_position="
                             f"{self.config.max_position}; shorten it to at most "
                             f"{self.config.max_position - 1} tokens")
        return np.asarray(ids, dtype=np.int64)

    def stream(self, prompt: str | Ids[int], options: GenerationOptions | None = None,
               **overrides) -> TokenStream:
        """A TokenStream: StreamedToken (text piece, id, trace entry) as each is decided; once
        exhausted its stop_reason, stats and result are set. Options and prompt are checked
        now, not at the first next()."""
        ids, options = self.request(prompt, options, **overrides)
        if options.num_return_sequences != 1:
            raise ValueError("num_return_sequences must be 1 for stream(); use generate() for "
                             "several sequences, or one stream per seed")
        return TokenStream(self, ids, options)

    def request(self, prompt: str | Ids[int], options: GenerationOptions | None = None,
                **overrides) -> tuple[np.ndarray, GenerationOptions]:
        """The checked prompt ids and options of one request (stream, generate, Batcher)."""
        options = self.options(options, **overrides)
        if not isinstance(prompt, str):           # token ids are taken as given: never healed
            options = dataclasses.replace(options, token_healing=False)
        return self.encode(prompt), options

    def generate(self, prompt: str | Ids[int], options: GenerationOptions | None = None,
                 **overrides) -> GenerationResult:
        """Generate up to max_new_tokens new tokens after the prompt.

        Args:
            prompt: text, or token ids (BOS is prepended when the model has one).
            options: a GenerationOptions; None: the defaults. Its None fields take the model's
                values from the manifest.
            **overrides: GenerationOptions fields, applied over `options`.

        Returns:
            GenerationResult: new text and ids only, the per-token trace, stop_reason, stats;
            with num_return_sequences=n > 1, a list of n, sequence k sampled with seed + k
            (seed None: each its own random seed), all decoded as one batch.

        Raises:
            ValueError: a bad option (named, with its valid range) or prompt.
        """
        ids, options = self.request(prompt, options, **overrides)
        if options.num_return_sequences > 1:
            return self._generate_many(ids, options)
        stream = TokenStream(self, ids, options)
        for _ in stream:
            pass
        return stream.result

    def generator(self, prompt: str | Ids[int] | None = None,
                  options: GenerationOptions | None = None, **overrides) -> Generator:
        """A step-by-step Generator (its own KV state, kept across turns), the prompt appended
        when given: gen.append(text_or_ids), gen.logits, gen.signals, gen.step()."""
        gen = Generator(self, self.options(options, **overrides))
        if prompt is not None:
            gen.append(prompt)
        return gen

    def _generate_many(self, ids: np.ndarray, options: GenerationOptions) -> list[GenerationResult]:
        count = options.num_return_sequences
        pool = Pool(self.engine, count)
        gens = [Generation(self, ids, dataclasses.replace(
            options, num_return_sequences=1,
            seed=None if options.seed is None else options.seed + k), pool.acquire())
            for k in range(count)]
        for gen in gens:
            gen.prefill()
        running = gens
        while running:
            decide(self, pool, running)
            running = [g for g in running if g.stop_reason is None]
            if running:
                feed(pool, running)
        return [g.result() for g in gens]

    def _acquire(self) -> Sequence:
        """A generation's own state: an idle one from an earlier generation, or a new one."""
        with self._lock:
            seq = self._idle.pop() if self._idle else None
        if seq is None:
            return Sequence(self.engine)
        seq.reset()
        return seq

    def _release(self, seq: Sequence) -> None:
        with self._lock:
            if len(self._idle) < IDLE_STATES:
                self._idle.append(seq)
