"""`lantern-edge serve`: an OpenAI-compatible HTTP server over the runtime (extra `[serve]`).

Nothing here is imported by `import lantern_edge`: the ASGI stack (Starlette, uvicorn,
pydantic) is only needed by the server. Modules: backend (the one door to the runtime),
schemas (request validation), errors (OpenAI-style errors, body limit, API key), choices
(tokens to response choices: echo, logprobs, the LANTERN trace), app (routes,
admission, streaming), cli (the command).
"""
