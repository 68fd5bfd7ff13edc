"""From generated tokens to OpenAI response choices: echo, logprobs, the LANTERN trace.

One Choice follows one generation. `add(token)` returns what a stream sends for that token,
`finish(reason)` the end; `whole()` is everything, for a non-streamed response. The same
Choice serves both endpoints; `completion_choice` and `chat_choice` write the two OpenAI
shapes. Stop strings need nothing here: the runtime's text already ends before them, and it
holds back a piece that could start one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..runtime.generate import StreamedToken, TraceEntry
from .backend import token_logprobs

MIN_LOGPROB = -9999.0       # as OpenAI: JSON has no -Infinity
FINISH = {"eos": "stop", "stop": "stop", "max_new_tokens": "length", "max_position": "length"}


@dataclass
class Delta:
    text: str = ""
    logprobs: list[tuple[str, float | None, list[tuple[str, float]] | None, int]] = \
        field(default_factory=list)          # (token text, logprob, top alternatives, offset)
    trace: list[dict] = field(default_factory=list)
    finish_reason: str | None = None         # stop / length (OpenAI's)
    stop_reason: str | None = None           # the runtime's: eos / stop / max_new_tokens / ...


def trace_entry(trace: TraceEntry) -> dict:
    """The runtime's TraceEntry as JSON: its field names, non-finite floats as null."""
    out = dataclasses.asdict(trace)
    out.pop("top_logprobs", None)            # the logprobs section carries those
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()}


class Choice:
    """Args: top logprobs wanted (None: no logprobs), echoed prompt text and its token texts
    (echo with logprobs lists them with null logprobs)."""

    def __init__(self, top_logprobs: int | None = None, echo: str = "",
                 echo_tokens: list[str] | None = None):
        self.top = top_logprobs
        self.tokens = 0
        self.length = len(echo)                  # characters of text so far, echo included
        self.all = Delta()                       # everything sent so far
        self.pending = Delta(text=echo)          # sent with the first delta
        if echo_tokens is not None and top_logprobs is not None:
            offset = 0
            for text in echo_tokens:
                self.pending.logprobs.append((text, None, None, offset))
                offset += len(text)

    def add(self, token: StreamedToken) -> Delta:
        delta, self.pending = self.pending, Delta()
        self.tokens += 1
        if self.top is not None:
            lp, top = token_logprobs(token, self.top)
            delta.logprobs.append((token.text, max(lp, MIN_LOGPROB),
                                   [(t, max(v, MIN_LOGPROB)) for t, v in top] if self.top else None,
                                   self.length))
        delta.trace.append(trace_entry(token.trace))
        delta.text += token.text
        self.length += len(token.text)
        self._keep(delta)
        return delta

    def finish(self, stop_reason: str) -> Delta:
        delta, self.pending = self.pending, Delta()
        delta.stop_reason, delta.finish_reason = stop_reason, FINISH.get(stop_reason)
        self._keep(delta)
        return delta

    def whole(self) -> Delta:
        return self.all

    def _keep(self, delta: Delta) -> None:
        self.all.text += delta.text
        self.all.logprobs += delta.logprobs
        self.all.trace += delta.trace
        self.all.finish_reason = delta.finish_reason or self.all.finish_reason
        self.all.stop_reason = delta.stop_reason or self.all.stop_reason


def completion_choice(index: int, delta: Delta, logprobs: bool) -> dict:
    lp = None
    if logprobs:
        lp = {"tokens": [t for t, _, _, _ in delta.logprobs],
              "token_logprobs": [v for _, v, _, _ in delta.logprobs],
              "top_logprobs": [dict(top) if top is not None else None
                               for _, _, top, _ in delta.logprobs],
              "text_offset": [o for _, _, _, o in delta.logprobs]}
    return {"index": index, "text": delta.text, "logprobs": lp,
            "finish_reason": delta.finish_reason, "lantern": _lantern(delta)}


def chat_choice(index: int, delta: Delta, logprobs: bool, stream: bool,
                first: bool = False) -> dict:
    lp = None
    if logprobs:
        lp = {"content": [{"token": t, "logprob": v, "bytes": list(t.encode()),
                           "top_logprobs": [{"token": a, "logprob": b, "bytes": list(a.encode())}
                                            for a, b in top or ()]}
                          for t, v, top, _ in delta.logprobs]}
    if stream:
        message = {"role": "assistant", "content": delta.text} if first else \
            ({"content": delta.text} if delta.text or not delta.finish_reason else {})
        key = "delta"
    else:
        message, key = {"role": "assistant", "content": delta.text}, "message"
    return {"index": index, key: message, "logprobs": lp, "finish_reason": delta.finish_reason,
            "lantern": _lantern(delta)}


def _lantern(delta: Delta) -> dict:
    """The extension field standard clients ignore: the per-token trace of the tokens this
    choice (or chunk) carries, and the runtime's stop reason once finished."""
    out: dict = {"trace": delta.trace}
    if delta.stop_reason is not None:
        out["stop_reason"] = delta.stop_reason
    return out
