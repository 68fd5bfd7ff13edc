"""The server's one door to the runtime: validate, submit generations, read their tokens
asynchronously, cancel them.

The Runtime holds one generation's KV state, so generations run one at a time, first come
first served, on one worker thread that owns the Runtime. That keeps decoding off the event
loop, and a cancelled generation (its client went away) stops at its next token.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from ..runtime.generate import Runtime, StreamedToken

logger = logging.getLogger("lantern_edge.serve")


@dataclass
class Finished:
    """The last event of one choice."""
    stop_reason: str        # eos / stop / max_new_tokens / max_position / cancelled


class Job:
    """One HTTP request's generations (its prompts x n choices). The worker thread emits
    (choice index, StreamedToken | Finished | Exception); the event loop iterates them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int):
        self._loop, self._open = loop, count
        self._events: asyncio.Queue = asyncio.Queue()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Thread-safe; each unfinished generation stops before its next token."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def emit(self, index: int, item) -> None:        # called on the worker thread
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (index, item))
        except RuntimeError:                          # the loop is closed: nobody listens
            self.cancel()

    async def events(self) -> AsyncIterator[tuple[int, StreamedToken | Finished]]:
        while self._open:
            index, item = await self._events.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, Finished):
                self._open -= 1
            yield index, item


class Backend:
    """A loaded Runtime served through a job queue.

    Args:
        runtime: the loaded model.
        model_id: the name clients pass as `model`.
    """

    def __init__(self, runtime: Runtime, model_id: str):
        self.runtime, self.model_id = runtime, model_id
        self.max_position = runtime.config.max_position
        self.stats: Counter = Counter()              # generations finished / cancelled, tokens
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name="lantern-generate", daemon=True)
        self._worker.start()

    # --- called on the event loop ---------------------------------------------------------

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Prompt ids with BOS; ValueError (TokenizerError) for text or ids the model lacks."""
        return [int(i) for i in self.runtime.encode(prompt)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.runtime.tokenizer.decode(list(ids), skip_special_tokens=True)

    def check(self, overrides: dict) -> None:
        """ValueError naming the option when the runtime rejects it."""
        self.runtime.options(**overrides)

    def submit(self, generations: list[tuple[list[int], dict]]) -> Job:
        """Queue (prompt ids, GenerationOptions overrides) pairs; returns at once."""
        job = Job(asyncio.get_running_loop(), len(generations))
        for index, (ids, overrides) in enumerate(generations):
            self._pending.put((job, index, ids, overrides))
        return job

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the generations already queued (cancel their jobs first to
        drop them)."""
        self._pending.put(None)
        self._worker.join(timeout)

    # --- the worker thread ----------------------------------------------------------------

    def _work(self) -> None:
        while (item := self._pending.get()) is not None:
            job, index, ids, overrides = item
            try:
                reason = self._run(job, index, ids, overrides)
            except Exception as e:                   # report it to its request, keep serving
                logger.exception("generation failed")
                job.emit(index, e)
                continue
            self.stats["cancelled" if reason == "cancelled" else "finished"] += 1
            job.emit(index, Finished(reason))

    def _run(self, job: Job, index: int, ids: list[int], overrides: dict) -> str:
        if job.cancelled:
            return "cancelled"
        options = self.runtime.options(**overrides)
        stream = self.runtime.stream(ids, **overrides)
        count, text, last = 0, [], None
        try:
            for token in stream:
                count, last = count + 1, token.token_id
                text.append(token.text)
                self.stats["tokens"] += 1
                job.emit(index, token)
                if job.cancelled:
                    return "cancelled"
        finally:
            stream.close()
        # the runtime's own stop reason is not exposed by stream(): infer it the same way
        if last is not None and last == options.eos_token_id:
            return "eos"
        if count >= options.max_new_tokens:
            return "max_new_tokens"
        if any(s in "".join(text) for s in options.stop):
            return "stop"
        return "max_position"


def token_logprobs(token: StreamedToken, top: int) -> tuple[float, list[tuple[str, float]]]:
    """The chosen token's log probability and up to `top` alternatives as (text, logprob).

    The runtime records the chosen token's probability (under the distribution it was drawn
    from) but not the rest of that distribution, so the alternatives hold the chosen token
    only."""
    p = token.trace.probability
    lp = math.log(p) if p > 0 else -math.inf
    return lp, [(token.text, lp)][:top]
