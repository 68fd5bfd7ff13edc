"""The OpenAI-compatible ASGI app: routes, admission (concurrency, queue), server-sent events.

    app = create_app(Backend(Runtime(), "lantern-edge"), Settings())

Each request is validated and tokenized on the event loop (400s come before any queueing),
admitted (at most `max_concurrency` running and `max_queue` waiting, 429 beyond), then its
generations go to the backend, which runs them off the loop. A streamed response sends one
event per token; a client that goes away cancels its generations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import schemas
from .backend import Backend, Finished
from .choices import Choice, Delta, chat_choice, completion_choice
from .errors import APIError, Guard, on_api_error, on_http_error, on_unexpected

logger = logging.getLogger("lantern_edge.serve")
RUNTIME_NAMES = {"max_new_tokens": "max_tokens"}     # GenerationOptions name -> request field


@dataclass(frozen=True)
class Settings:
    max_concurrency: int = 16         # requests generating at once
    max_queue: int = 64               # requests waiting for a slot; 429 beyond
    max_tokens_limit: int = 1024      # the largest max_tokens a request may ask for
    max_body_bytes: int = 1 << 20
    api_key: str | None = None


class Admission:
    """Counts requests in (running + waiting); the semaphore bounds the running ones."""

    def __init__(self, settings: Settings):
        self.limit = settings.max_concurrency + settings.max_queue
        self.slots = asyncio.Semaphore(settings.max_concurrency)
        self.inside = self.running = self.rejected = 0

    def enter(self) -> None:
        if self.inside >= self.limit:
            self.rejected += 1
            raise APIError(429, f"the server is busy: {self.running} requests running and "
                                f"{self.inside - self.running} queued (--max-concurrency, "
                                "--max-queue); retry shortly", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        self.inside += 1

    async def wait(self) -> None:
        try:
            await self.slots.acquire()
        except BaseException:
            self.inside -= 1
            raise
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self.inside -= 1
        self.slots.release()


class EventStream(StreamingResponse):
    """Server-sent events; `on_close` runs however the response ends (done, client gone)."""
    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def event(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def create_app(backend: Backend, settings: Settings = Settings()) -> Starlette:
    admission: Admission | None = None
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        nonlocal admission
        admission = Admission(settings)          # made on the serving loop
        yield
        backend.close()                          # after uvicorn finished in-flight requests

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": backend.model_id,
                             "requests": {"running": admission.running,
                                          "queued": admission.inside - admission.running,
                                          "rejected": admission.rejected},
                             "generations": dict(backend.stats)})

    def model_card() -> dict:
        return {"id": backend.model_id, "object": "model", "created": created,
                "owned_by": "lantern-edge",
                "lantern": {"max_position": backend.max_position,
                            "precision": backend.runtime.precision}}

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request) -> JSONResponse:
        if request.path_params["name"] != backend.model_id:
            raise APIError(404, f"model {request.path_params['name']!r} is not served here; "
                                f"this server serves {backend.model_id!r}",
                           param="model", code="model_not_found")
        return JSONResponse(model_card())

    async def completions(request: Request) -> Response:
        r = schemas.parse(schemas.CompletionRequest, await _json(request))
        prompts = [_encode(p) for p in _check_model(r).prompts()]
        max_tokens = _max_tokens(r.max_tokens, prompts, "max_tokens")
        choices = [Choice(r.logprobs, *_echo(r, p, ids)) for p, ids in prompts
                   for _ in range(r.n)]

        def render(index: int, delta: Delta, first: bool) -> dict:
            return completion_choice(index, delta, r.logprobs is not None)
        return await _serve(request, r, prompts, max_tokens, r.logprobs, choices, render,
                            "text_completion", "cmpl")

    async def chat(request: Request) -> Response:
        r = schemas.parse(schemas.ChatRequest, await _json(request))
        prompts = [_encode(_check_model(r).prompt())]
        limit = r.max_completion_tokens or r.max_tokens
        max_tokens = _max_tokens(limit, prompts, "max_completion_tokens" if
                                 r.max_completion_tokens else "max_tokens")
        top = (r.top_logprobs or 0) if r.logprobs else None
        choices = [Choice(top) for _ in range(r.n)]

        def render(index: int, delta: Delta, first: bool) -> dict:
            return chat_choice(index, delta, r.logprobs, r.stream, first)
        return await _serve(request, r, prompts, max_tokens, top, choices, render,
                            "chat.completion", "chatcmpl")

    # --- shared steps ----------------------------------------------------------------------

    def _check_model(r):
        if r.model != backend.model_id:
            raise APIError(400, f"model {r.model!r} is not served here; this server serves "
                                f"{backend.model_id!r} (GET /v1/models)", param="model",
                           code="model_not_found")
        return r

    def _encode(prompt) -> tuple[str | list[int], list[int]]:
        try:
            return prompt, backend.encode(prompt)
        except ValueError as e:
            raise APIError(400, str(e), param="prompt",
                           code="context_length_exceeded" if "max_position" in str(e)
                           else None) from None

    def _echo(r, prompt, ids) -> tuple[str, list[str] | None]:
        """Echoed text and, for logprobs, its tokens (listed with null logprobs: the runtime
        does not score prompt tokens)."""
        if not r.echo:
            return "", None
        texts = [backend.decode([i]) for i in ids]          # BOS decodes to ""
        return (prompt if isinstance(prompt, str) else backend.decode(ids),
                [t for t in texts if t] if r.logprobs is not None else None)

    def _max_tokens(asked: int | None, prompts, param: str) -> int:
        if asked is not None and asked > settings.max_tokens_limit:
            raise APIError(400, f"{param} must be <= {settings.max_tokens_limit} (the server's "
                                f"--max-tokens-limit), got {asked}", param=param)
        longest = max(len(ids) for _, ids in prompts)
        room = backend.max_position - longest
        if asked is None:                        # chat: as much as fits
            return min(settings.max_tokens_limit, room)
        if asked > room:
            raise APIError(400, f"this model's context is {backend.max_position} tokens, but "
                                f"the prompt has {longest} and {param} is {asked}: shorten the "
                                f"prompt or ask for at most {room} tokens", param=param,
                           code="context_length_exceeded")
        return asked

    async def _serve(request, r, prompts, max_tokens, logprobs, choices, render, kind, prefix):
        if len(prompts) * r.n > schemas.MAX_CHOICES:
            raise APIError(400, f"prompts x n must be <= {schemas.MAX_CHOICES}, got "
                                f"{len(prompts)} x {r.n}", param="n")
        base = schemas.overrides(r, max_tokens, logprobs)
        try:
            backend.check(base)
        except ValueError as e:                  # "top_k must be <= vocab_size=..., got ..."
            name = str(e).split(" ", 1)[0]
            raise APIError(400, str(e), param=RUNTIME_NAMES.get(name, name)) from None
        # choice i of each prompt is seeded seed + i: choice 0 equals Runtime.generate(seed)
        generations = [(ids, {**base, "seed": None if r.seed is None else r.seed + i})
                       for _, ids in prompts for i in range(r.n)]
        head = {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": backend.model_id}
        usage = {"prompt_tokens": sum(len(ids) for _, ids in prompts)}
        admission.enter()
        await admission.wait()
        try:
            job = backend.submit(generations)
        except BaseException:
            admission.leave()
            raise
        if r.stream:
            def close() -> None:
                job.cancel()
                admission.leave()
            stream_usage = r.stream_options is not None and r.stream_options.include_usage
            return EventStream(_events(job, choices, render, head, kind, usage, stream_usage),
                               close)
        try:
            if not await _collect(request, job, choices):
                return Response(status_code=499)     # the client is gone: nobody reads this
        finally:
            job.cancel()
            admission.leave()
        deltas = [c.whole() for c in choices]
        return JSONResponse({**head, "choices": [render(i, d, True) for i, d in enumerate(deltas)],
                             "usage": _usage(usage, choices)})

    async def _events(job, choices, render, head, kind, usage, include_usage):
        chunk = {**head, "object": kind + ".chunk" if kind == "chat.completion" else kind}
        started: set[int] = set()
        try:
            async for index, item in job.events():
                c = choices[index]
                delta = c.finish(item.stop_reason) if isinstance(item, Finished) else c.add(item)
                yield event({**chunk, "choices": [render(index, delta, index not in started)]})
                started.add(index)
            if include_usage:
                yield event({**chunk, "choices": [], "usage": _usage(usage, choices)})
        except Exception as e:                   # the stream has started: report in-band
            logger.error("streamed generation failed", exc_info=e)
            yield event(APIError(500, f"generation failed ({type(e).__name__}); the server "
                                      "log has the details").body())
        yield event("[DONE]")

    routes = [Route("/health", health), Route("/v1/models", models),
              Route("/v1/models/{name:path}", model),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     middleware=[Middleware(Guard, max_body_bytes=settings.max_body_bytes,
                                            api_key=settings.api_key)],
                     exception_handlers={APIError: on_api_error, HTTPException: on_http_error,
                                         Exception: on_unexpected})


async def _json(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None


def _usage(usage: dict, choices: list[Choice]) -> dict:
    completion = sum(c.tokens for c in choices)
    return {**usage, "completion_tokens": completion,
            "total_tokens": usage["prompt_tokens"] + completion}


async def _collect(request: Request, job, choices: list[Choice]) -> bool:
    """Feed a non-streamed job's events to its choices; False when the client disconnected
    first (its generations are then cancelled by the caller)."""
    async def consume() -> None:
        async for index, item in job.events():
            if isinstance(item, Finished):
                choices[index].finish(item.stop_reason)
            else:
                choices[index].add(item)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    consumer, watcher = asyncio.ensure_future(consume()), asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not consumer.done():
            consumer.cancel()
    if consumer not in done:
        return False
    consumer.result()                            # raises the generation's error, if any
    return True
