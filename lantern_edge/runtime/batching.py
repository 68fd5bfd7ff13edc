"""Continuous batching: concurrent requests decoded together by one background thread.

    batcher = Batcher(runtime, max_batch_size=16)
    handle = batcher.submit("def f(x):", max_new_tokens=32)      # any thread; returns at once
    for token in handle: ...                                      # StreamedToken as decided
    handle.result                                                 # GenerationResult at the end
    batcher.close()

The decode thread runs one step at a time for every running request together (pool.py: one
graph call per kind for all of them), and between steps admits waiting requests (their prompt
fed on joining) and drops finished or cancelled ones, so a request never waits for another to
end. Each request gets exactly the tokens and trace decisions it would get alone (the trace's
float signals agree to rounding: the batched attention sums over more, all-zero, terms).
"""

from __future__ import annotations

import queue
import threading
from collections import deque

from .options import GenerationOptions
from .pool import Pool
from .stream import Generation, GenerationResult, StreamedToken, decide, feed

_END = object()


class Handle:
    """One submitted request: iterate it for its StreamedTokens (blocking until each is
    decided); once it ends, stop_reason, stats and result are set."""

    def __init__(self, ids, options: GenerationOptions):
        self.ids, self.options = ids, options
        self.stop_reason: str | None = None
        self.stats: dict | None = None
        self.result: GenerationResult | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled = False
        self._done = threading.Event()

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise RuntimeError(f"the batch decode thread failed: {item}") from item
            yield item

    def cancel(self) -> None:
        """End the request; its slot is freed before the next decode step."""
        self._cancelled = True

    def wait(self, timeout: float | None = None) -> GenerationResult | None:
        """Block until the request ends; its result (None on timeout)."""
        self._done.wait(timeout)
        return self.result

    def _put(self, token: StreamedToken) -> None:
        self._queue.put(token)

    def _finish(self, result: GenerationResult | None, error: BaseException | None = None):
        """End the request: result None when it was cancelled before it started."""
        if result is not None:
            self.result, self.stop_reason, self.stats = result, result.stop_reason, result.stats
        else:
            self.stop_reason = "cancelled"
        self._queue.put(error if error is not None else _END)
        self._done.set()


class Batcher:
    """Decodes every submitted request in shared batches of up to max_batch_size on one
    background thread (started here). Thread-safe: submit, iterate and cancel from anywhere."""

    def __init__(self, runtime, max_batch_size: int = 16):
        self.runtime = runtime
        self.pool = Pool(runtime.engine, max_batch_size)
        self._waiting: deque[Handle] = deque()
        self._wake = threading.Condition()
        self._closing = self._cancel_all = False
        self._thread = threading.Thread(target=self._loop, name="lantern-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt, options: GenerationOptions | None = None, **overrides) -> Handle:
        """Queue a request (prompt and options checked now, in the caller's thread)."""
        ids, options = self.runtime.request(prompt, options, **overrides)
        if options.num_return_sequences != 1:
            raise ValueError("num_return_sequences must be 1 in a Batcher request; submit the "
                             "prompt once per sequence, each with its own seed")
        handle = Handle(ids, options)
        with self._wake:
            if self._closing:
                raise RuntimeError("this Batcher is closed")
            self._waiting.append(handle)
            self._wake.notify()
        return handle

    def close(self, cancel: bool = False) -> None:
        """Stop taking requests and end the thread once in-flight work is finished (cancel=True:
        cancelled at the next step)."""
        with self._wake:
            self._closing, self._cancel_all = True, cancel
            self._wake.notify()
        self._thread.join()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close(cancel=exc[0] is not None)

    def _admit(self, running: list) -> list:
        """Waiting requests that fit into the pool, as (handle, Generation) pairs."""
        joining = []
        with self._wake:
            while not running and not self._waiting and not self._closing:
                self._wake.wait()
            while self._waiting and (self.pool.free or self._cancel_all):
                handle = self._waiting.popleft()
                if handle._cancelled or self._cancel_all:       # never started
                    handle._finish(None)
                    continue
                joining.append((handle, Generation(self.runtime, handle.ids, handle.options,
                                                   self.pool.acquire())))
        return joining

    def _end(self, handle: Handle, gen: Generation, error: BaseException | None = None) -> None:
        self.pool.release(gen.seq)
        handle._finish(gen.result(), error)

    def _loop(self) -> None:
        running: list = []
        while True:
            joining = self._admit(running)
            for handle, gen in joining:
                try:
                    gen.prefill()
                    running.append((handle, gen))
                except BaseException as e:      # a bad prompt ends its own request only
                    self._end(handle, gen, e)
            for pair in [p for p in running if p[0]._cancelled or self._cancel_all]:
                running.remove(pair)
                self._end(*pair)
            if not running:
                with self._wake:
                    if self._closing and not self._waiting:
                        return
                continue
            gens = [g for _, g in running]
            try:
                tokens = decide(self.runtime, self.pool, gens)
                for (handle, _), token in zip(running, tokens):
                    handle._put(token)
                for pair in [p for p in running if p[1].stop_reason is not None]:
                    running.remove(pair)
                    self._end(*pair)
                if running:
                    feed(self.pool, [g for _, g in running])
            except BaseException as e:          # never leave a consumer blocked
                for pair in running:
                    self._end(*pair, e)
                running = []
