"""The server's one door to the runtime: validate, submit generations, read their tokens
asynchronously, cancel them.

The Runtime is the shared, immutable model; each generation is its own TokenStream (its own KV
state and RNG), run on a worker thread of a pool, so decoding stays off the event loop and
generations of different requests run at once (ONNX Runtime releases the GIL inside its
calls). A cancelled generation (its client went away) is closed before its next token, which
returns its state to the runtime.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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

    def emit(self, index: int, item) -> None:        # called on a worker thread
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
    """A loaded Runtime whose generations run on a pool of worker threads.

    Args:
        runtime: the loaded model.
        model_id: the name clients pass as `model`.
        workers: generations decoding at once; more wait in the pool's queue, in order.
    """

    def __init__(self, runtime: Runtime, model_id: str, workers: int = 16):
        self.runtime, self.model_id = runtime, model_id
        self.max_position = runtime.config.max_position
        self.stats: Counter = Counter()              # generations finished / cancelled, tokens
        self._stats_lock = threading.Lock()          # workers count concurrently
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="lantern-generate")

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
            self._pool.submit(self._work, job, index, ids, overrides)
        return job

    def close(self) -> None:
        """Wait for running generations (cancel their jobs first to stop them), drop queued
        ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- on a worker thread ---------------------------------------------------------------

    def _work(self, job: Job, index: int, ids: list[int], overrides: dict) -> None:
        try:
            reason = self._run(job, index, ids, overrides)
        except Exception as e:                       # report it to its request, keep serving
            logger.exception("generation failed")
            job.emit(index, e)
            return
        self._count("cancelled" if reason == "cancelled" else "finished")
        job.emit(index, Finished(reason))

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1

    def _run(self, job: Job, index: int, ids: list[int], overrides: dict) -> str:
        if job.cancelled:
            return "cancelled"
        stream = self.runtime.stream(ids, **overrides)
        try:
            for token in stream:
                self._count("tokens")
                job.emit(index, token)
                if job.cancelled:
                    break
        finally:
            stream.close()                           # stop_reason "cancelled" if not done
        return stream.stop_reason


def token_logprobs(token: StreamedToken, top: int) -> tuple[float, list[tuple[str, float]]]:
    """The chosen token's log probability and up to `top` alternatives as (text, logprob).

    The runtime records the chosen token's probability (under the distribution it was drawn
    from) but not the rest of that distribution, so the alternatives hold the chosen token
    only."""
    p = token.trace.probability
    lp = math.log(p) if p > 0 else -math.inf
    return lp, [(token.text, lp)][:top]
