"""The server's one door to the runtime: validate, submit generations, read their tokens
asynchronously, cancel them.

The Runtime is the shared, immutable model. Every generation (each choice of each request) is
one request to a Batcher, whose background thread decodes all running generations together,
one batched step at a time, admitting new ones between steps; so decoding stays off the event
loop and concurrent requests share each graph call. A Batcher handle is a blocking iterator:
a small pump thread per handle moves its tokens onto the event loop. A cancelled generation
(its client went away) leaves the batch before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..runtime.batching import Batcher, Handle
from ..runtime.generate import Runtime, StreamedToken

logger = logging.getLogger("lantern_edge.serve")


@dataclass
class Finished:
    """The last event of one choice."""
    stop_reason: str        # eos / stop / max_new_tokens / max_position / cancelled


class Job:
    """One HTTP request's generations (its prompts x n choices). Pump threads emit (choice
    index, StreamedToken | Finished | Exception); the event loop iterates them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int):
        self._loop, self._open = loop, count
        self._events: asyncio.Queue = asyncio.Queue()
        self.handles: list[Handle] = []

    def cancel(self) -> None:
        """Each unfinished generation leaves the batch before the next decode step."""
        for handle in self.handles:
            handle.cancel()

    def emit(self, index: int, item) -> None:        # called on a worker thread
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (index, item))
        except RuntimeError:                          # the loop is closed: nobody listens
            self.handles[index].cancel()

    async def events(self) -> AsyncIterator[tuple[int, StreamedToken | Finished]]:
        while self._open:
            index, item = await self._events.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, Finished):
                self._open -= 1
            yield index, item


class Backend:
    """A loaded Runtime served by a Batcher.

    Args:
        runtime: the loaded model.
        model_id: the name clients pass as `model`.
        max_batch_size: generations decoded together; more wait for a slot, in order.
    """

    def __init__(self, runtime: Runtime, model_id: str, max_batch_size: int = 16):
        self.runtime, self.model_id = runtime, model_id
        self.max_position = runtime.config.max_position
        self.stats: Counter = Counter()              # generations finished / cancelled, tokens
        self._stats_lock = threading.Lock()          # pumps count concurrently
        self._batcher = Batcher(runtime, max_batch_size)
        # one pump per generation in flight: blocked on its handle, it costs no CPU; threads
        # are started as needed and reused
        self._pumps = ThreadPoolExecutor(1024, thread_name_prefix="lantern-pump")

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
        try:
            for ids, overrides in generations:
                job.handles.append(self._batcher.submit(ids, **overrides))
        except BaseException:
            job.cancel()                             # none of the request runs
            raise
        for index in range(len(generations)):
            self._pumps.submit(self._pump, job, index)
        return job

    def close(self) -> None:
        """After the server let in-flight requests finish: cancel what is left, stop."""
        self._batcher.close(cancel=True)
        self._pumps.shutdown(wait=True)

    # --- on a pump thread -----------------------------------------------------------------

    def _pump(self, job: Job, index: int) -> None:
        handle = job.handles[index]
        try:
            for token in handle:
                self._count("tokens")
                job.emit(index, token)
        except Exception as e:                       # report it to its request, keep serving
            logger.exception("generation failed")
            job.emit(index, e)
            return
        self._count("cancelled" if handle.stop_reason == "cancelled" else "finished")
        job.emit(index, Finished(handle.stop_reason))

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1


def token_logprobs(token: StreamedToken, top: int) -> tuple[float, list[tuple[str, float]]]:
    """The chosen token's log probability and the `top` most likely tokens as (text, logprob),
    under the model's distribution for that position (before temperature and filters; the
    MC-dropout mean in the high band). Needs the generation's `logprobs` option >= top."""
    trace = token.trace
    return trace.logprob, [(text, lp) for _, text, lp in (trace.top_logprobs or [])[:top]]
