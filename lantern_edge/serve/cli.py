"""`lantern-edge serve [--model DIR] [--host H] [--port P] ...`: the OpenAI-compatible server.

Prints one line, `lantern-edge serve: MODEL on http://HOST:PORT/v1`, once the port is bound
(with --port 0 it names the port the system chose). SIGTERM or Ctrl-C stops accepting
connections, lets in-flight requests finish for up to --shutdown-timeout seconds, then exits.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from ..errors import LanternError
from ..runtime.generate import DEFAULT_MODEL_DIR, Runtime
from .app import Settings, create_app
from .backend import Backend

DEFAULTS = Settings()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lantern-edge serve",
                                description="Serve a LANTERN model over the OpenAI API "
                                            "(/v1/completions, /v1/chat/completions).")
    p.add_argument("--model", default=None,
                   help="artifacts directory or its model.onnx (default: the shipped model)")
    p.add_argument("--model-name", default=None,
                   help="the id clients pass as `model` (default: lantern-edge for the shipped "
                        "model, else the directory's name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--int8", action="store_true", help="use the INT8 graphs")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per session")
    p.add_argument("--max-concurrency", type=int, default=DEFAULTS.max_concurrency,
                   help="requests generating at once (the batch size of the decode)")
    p.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue,
                   help="requests waiting for a slot; more get 429")
    p.add_argument("--max-tokens-limit", type=int, default=DEFAULTS.max_tokens_limit,
                   help="the largest max_tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULTS.max_body_bytes,
                   help="larger request bodies get 413")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/ (/health stays open)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish after SIGTERM")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    return p


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)            # connections wait in the backlog until the server starts
    return sock


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("max_concurrency", "max_tokens_limit", "max_body_bytes"):
        if getattr(args, name) < 1:
            print(f"lantern-edge serve: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.max_queue < 0 or args.port < 0 or args.shutdown_timeout < 0:
        print("lantern-edge serve: --max-queue, --port and --shutdown-timeout must be >= 0",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    try:
        runtime = Runtime(args.model, precision="int8" if args.int8 else "fp32",
                          intra_op_threads=args.threads)
    except (LanternError, ValueError) as e:
        print(f"lantern-edge serve: {e}", file=sys.stderr)
        return 2
    name = args.model_name or ("lantern-edge" if runtime.artifacts.root == DEFAULT_MODEL_DIR
                               else Path(runtime.artifacts.root).name)
    try:
        sock = _bind(args.host, args.port)
    except OSError as e:
        print(f"lantern-edge serve: cannot listen on {args.host}:{args.port}: {e.strerror or e}; "
              "pick another --port (0: any free one)", file=sys.stderr)
        return 2
    settings = Settings(max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                        max_tokens_limit=args.max_tokens_limit,
                        max_body_bytes=args.max_body_bytes, api_key=args.api_key)
    app = create_app(Backend(runtime, name, max_batch_size=args.max_concurrency), settings)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"lantern-edge serve: {name} on http://{url_host}:{port}/v1", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, lifespan="on",
                            timeout_graceful_shutdown=args.shutdown_timeout)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
