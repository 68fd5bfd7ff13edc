"""Request bodies of /v1/completions and /v1/chat/completions, validated strictly.

Types are strict (a string is not a number, a float is not an int) and ranges follow the
OpenAI API. Unknown fields are ignored, as OpenAI-compatible servers do; known OpenAI fields
this runtime cannot honour (presence/frequency penalties, logit_bias, best_of, suffix, tools)
are rejected with a 400 naming them rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError

MAX_CHOICES = 16        # prompts x n per request
MAX_STOP = 4            # OpenAI's limit on stop sequences
MAX_LOGPROBS = 5        # OpenAI's limit on top logprobs (completions)

TokenIds = list[Annotated[int, Field(ge=0)]]

# what a union field accepts, for an error message better than pydantic's per-member list
UNION_HELP = {
    "prompt": "a string, a list of strings, a list of token ids (ints >= 0) or a list of lists "
              "of token ids",
    "stop": f"a non-empty string or a list of at most {MAX_STOP} non-empty strings",
    "content": "a string or a list of {\"type\": \"text\", \"text\": ...} parts",
}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields shared by both endpoints."""
    model: str
    temperature: float | None = Field(None, ge=0, le=2)      # 0: greedy
    top_p: float | None = Field(None, gt=0, le=1)
    # extensions, as vLLM's: the runtime's own sampling rules
    top_k: int | None = Field(None, ge=1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    ignore_eos: bool = False
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] | None = \
        Field(None, max_length=MAX_STOP)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None                                   # accepted, ignored


class CompletionRequest(_Sampling):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: int | None = Field(16, ge=1)                  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        if not p:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        return list(p)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list | None = None

    def prompt(self) -> str:
        """The chat mapping: the model completes code, so the conversation becomes the text
        to continue. System and developer messages (instructions) are dropped, user and
        assistant contents are joined with newlines; the reply continues the last one."""
        return "\n".join(m.text() for m in self.messages if m.role in ("user", "assistant"))


def parse(model: type[_Strict], body: object) -> _Strict:
    """The request, or an APIError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        request = model.model_validate(body)
    except ValidationError as e:
        error = e.errors()[0]
        loc = [str(part) for part in error["loc"]]
        field = next((p for p in loc if p in UNION_HELP), None)
        if field:                                # pydantic's per-member messages confuse
            message = f"{field} must be {UNION_HELP[field]}"
        else:
            message = f"{'.'.join(loc)}: {error['msg']}" + (
                f" (got {error['input']!r})" if "input" in error and not isinstance(
                    error["input"], (dict, list)) else "")
        raise APIError(400, message, param=loc[0] if loc else None) from None
    _reject_unsupported(request)
    return request


def _reject_unsupported(r: _Sampling) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(r, name):
            raise APIError(400, f"{name} is not supported by this server (the runtime has no "
                                "additive penalties); omit it or send 0", param=name)
    if r.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server; omit it",
                       param="logit_bias")
    if getattr(r, "best_of", None) not in (None, 1, r.n):
        raise APIError(400, "best_of is not supported by this server; omit it or use n",
                       param="best_of")
    if getattr(r, "suffix", None):
        raise APIError(400, "suffix (fill-in-the-middle) is not supported by this model; "
                            "omit it", param="suffix")
    if getattr(r, "tools", None):
        raise APIError(400, "tools are not supported: this model completes code and cannot "
                            "call functions", param="tools")


def overrides(r: _Sampling, max_tokens: int, logprobs: int | None) -> dict:
    """GenerationOptions overrides of one choice (the seed is offset per choice later)."""
    sample = r.temperature is None or r.temperature > 0       # OpenAI's default is 1: sample
    out: dict = {"max_new_tokens": max_tokens, "do_sample": sample, "seed": r.seed,
                 "ignore_eos": r.ignore_eos, "logprobs": logprobs}
    for name in ("min_p", "repetition_penalty", "no_repeat_ngram_size"):
        if getattr(r, name) is not None:
            out[name] = getattr(r, name)
    if sample:
        out["temperature"] = 1.0 if r.temperature is None else r.temperature
        out["top_p"] = r.top_p if r.top_p not in (None, 1.0) else None
        out["top_k"] = r.top_k
    if r.stop:
        out["stop"] = (r.stop,) if isinstance(r.stop, str) else tuple(r.stop)
    return out
