"""Generator: step-by-step generation for apps that drive the loop themselves.

    gen = runtime.generator("def f(x):")
    gen.logits, gen.signals            # the next token's distribution and uncertainty signals
    token = gen.step()                 # the controller decides one token (StreamedToken)
    gen.append("\n\ndef g(y):")        # the app's own tokens: a user turn, an edit, a choice
    gen.close()

The KV state lives as long as the Generator, across turns: appending costs only the new tokens.
Every token in `gen.ids` has been fed, so `logits` always belongs to the next position.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .options import GenerationOptions
from .stream import Generation, GenerationResult, StreamedToken, decide, feed


class Generator:
    def __init__(self, runtime, options: GenerationOptions):
        if options.num_return_sequences != 1:
            raise ValueError("num_return_sequences must be 1 for a Generator")
        # what the app appends is fed exactly as given: no token healing of a text prompt's
        # trailing whitespace (generate() and stream() heal; here the app sees every logit)
        self.runtime = runtime
        self.options = dataclasses.replace(options, token_healing=False)
        self._gen: Generation | None = None

    def _require(self) -> Generation:
        if self._gen is None:
            raise ValueError("append a prompt first: gen.append(text_or_ids)")
        if self._gen.seq is None:
            raise ValueError("this Generator is closed")
        return self._gen

    @property
    def ids(self) -> list[int]:
        """Every id fed so far (prompt, appended and generated; BOS included, THINK not)."""
        return list(self._gen.history) if self._gen else []

    @property
    def text(self) -> str:
        """The text of the generated tokens (appended text not included)."""
        return self._gen.text.text if self._gen else ""

    @property
    def stop_reason(self) -> str | None:
        """Why the latest step() would end a generate() call ("eos", "stop", ...), else None."""
        return self._gen.stop_reason if self._gen else None

    def append(self, tokens) -> None:
        """Feed text or ids at the next positions (BOS first only at the very start)."""
        runtime = self.runtime
        if self._gen is None:
            self._gen = Generation(runtime, runtime.encode(tokens), self.options,
                                   runtime._acquire())
            self._gen.prefill()
            return
        gen = self._require()
        ids = runtime.encode(tokens, bos=False)
        if gen.seq.kv.length + len(ids) > runtime.config.max_position:
            raise ValueError(f"appending {len(ids)} tokens at position {gen.seq.kv.length} "
                             f"passes the model's max_position={runtime.config.max_position}")
        gen.step = gen.seq.feed(ids, self.options.steps_base)
        gen.history += ids.tolist()

    @property
    def logits(self) -> np.ndarray:
        """[V] logits of the next token (a copy)."""
        return self._require().step.logits[-1].copy()

    @property
    def signals(self) -> dict[str, float]:
        """entropy, p_max, dispersion and U (score) of the next token's distribution, with this
        Generator's weights, and the depth probe's p_benefit on models with a probe."""
        from .decode import SINGLE

        gen, o = self._require(), self.options
        weights = np.array([o.weight_entropy, o.weight_dispersion, o.weight_p_max], np.float32)
        return {name: float(value[0]) for name, value in SINGLE.signals([gen], weights).items()}

    def step(self) -> StreamedToken:
        """Let the controller decide the next token (its band's extra compute included) and
        feed it."""
        from .decode import SINGLE

        gen = self._require()
        if gen.seq.kv.length >= self.runtime.config.max_position:
            raise ValueError(f"the sequence is at the model's max_position="
                             f"{self.runtime.config.max_position}")
        token = decide(self.runtime, SINGLE, [gen])[0]
        if gen.seq.kv.length < self.runtime.config.max_position:
            feed(SINGLE, [gen])
        return token

    def result(self) -> GenerationResult:
        """The generated tokens so far as a GenerationResult."""
        return self._require().result()

    def close(self) -> None:
        """Return the KV state to the Runtime's pool."""
        if self._gen is not None and self._gen.seq is not None:
            self.runtime._release(self._gen.seq)
            self._gen.seq = None

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
