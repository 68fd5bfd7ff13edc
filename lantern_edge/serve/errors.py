"""OpenAI-style errors, the request body limit and the API key.

Every error response is `{"error": {"message", "type", "param", "code"}}`, the shape the
OpenAI clients parse into their exception types; nothing else (no traceback) is ever sent.
"""

from __future__ import annotations

import hmac
import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("lantern_edge.serve")

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": TYPES.get(self.status, "api_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers)


async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route 404, wrong method 405) in the OpenAI shape."""
    return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                    headers=exc.headers).response()


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return APIError(500, f"internal server error ({type(exc).__name__}); the server log has "
                         "the details").response()


class Guard:
    """ASGI middleware: 401 on /v1/ without `Authorization: Bearer <api_key>` when a key is
    set; 413 for a body over `max_body_bytes`.

    The body is read here, whole, before the app runs (it is small: prompts), so that a 413
    is sent after the client finished sending: answering mid-upload makes clients see a reset
    connection instead of the error. Past DRAIN_FACTOR times the limit reading stops and the
    connection is dropped after the 413."""

    DRAIN_FACTOR = 16

    def __init__(self, app: ASGIApp, max_body_bytes: int, api_key: str | None):
        self.app, self.max_body_bytes, self.api_key = app, max_body_bytes, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        error = self._check(scope["path"], headers)
        chunks, seen, more = [], 0, True
        while more and seen <= self.max_body_bytes * self.DRAIN_FACTOR:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            seen += len(message.get("body", b""))
            more = message.get("more_body", False)
            if error is None and seen <= self.max_body_bytes:
                chunks.append(message.get("body", b""))
        if error is None and seen > self.max_body_bytes:
            error = self._too_large()
        if error is not None:
            return await _send_error(error, send)
        body: bytes | None = b"".join(chunks)

        async def replay() -> Message:
            nonlocal body
            if body is None:                          # later calls: wait for a disconnect
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message
        await self.app(scope, replay, send)

    def _check(self, path: str, headers: dict) -> APIError | None:
        if self.api_key is not None and path.startswith("/v1/"):
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.strip().encode(), self.api_key.encode()):
                return APIError(401, "missing or wrong API key: send the header "
                                     "'Authorization: Bearer <key>' with the key given to "
                                     "--api-key", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})
        return None

    def _too_large(self) -> APIError:
        return APIError(413, f"request body over the limit of {self.max_body_bytes} bytes",
                        code="request_too_large")


async def _send_error(error: APIError, send: Send) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
