"""`lantern-edge serve` with the official openai client: a real server process on 127.0.0.1
and an ephemeral port, serving the shipped default model; completions compared token for
token with Runtime.generate."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the server tests need `pip install -e .[dev]`")
pytest.importorskip("uvicorn", reason="the server needs `pip install -e .[serve]`")

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key"
MODEL = "lantern-edge"
PROMPT = "def fibonacci(n):"


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """A `lantern-edge serve --port 0` process and its base URL (read from its first line)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "lantern_edge.cli", "serve", "--port", "0",
                             "--log-level", "warning", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline() if ready else ""
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"the server did not start: {line!r} {proc.stderr.read()}")
    return proc, line.split(" on ", 1)[1].strip()        # http://127.0.0.1:PORT/v1


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("--api-key", KEY, "--max-concurrency", "2", "--max-queue", "1",
                             "--max-tokens-limit", "2500", "--max-body-bytes", "100000")
    yield url
    assert stop_server(proc) == -signal.SIGTERM    # uvicorn re-raises it once shut down


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def runtime():
    from lantern_edge import Runtime
    return Runtime()


def health(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=30) as r:
        return json.loads(r.read())


def wait_for(url: str, condition, what: str) -> dict:
    """Poll /health until condition(health) holds (a state, not a time, is asserted)."""
    for _ in range(600):
        state = health(url)
        if condition(state):
            return state
        time.sleep(0.1)
    pytest.fail(f"the server never reached: {what}; last /health: {state}")


def post(url: str, path: str, body: bytes, key: str | None = KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def lantern(choice) -> dict:
    return choice.model_extra["lantern"]         # the extension field, kept by the client


# --- completions equal Runtime.generate -----------------------------------------------------

@pytest.mark.parametrize("temperature", [0, 0.8])
def test_completion_equals_runtime(client, runtime, temperature):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, seed=7,
                                    temperature=temperature)
    expected = runtime.generate(PROMPT, max_new_tokens=12, seed=7, do_sample=temperature > 0,
                                temperature=temperature or 1.0)
    choice = out.choices[0]
    assert choice.text == expected.text and choice.finish_reason == "length"
    assert out.usage.completion_tokens == 12 and out.usage.prompt_tokens == expected.prompt_tokens
    trace = lantern(choice)["trace"]
    assert [t["token_id"] for t in trace] == expected.token_ids
    assert [t["band"] for t in trace] == [t.band for t in expected.trace]
    assert lantern(choice)["stop_reason"] == "max_new_tokens"


def test_stream_equals_runtime(client, runtime):
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, seed=11,
                                            stream=True, extra_body={"ignore_eos": True}))
    expected = runtime.generate(PROMPT, max_new_tokens=12, seed=11, do_sample=True,
                                ignore_eos=True)
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "length"
    ids = [t["token_id"] for c in chunks for t in lantern(c.choices[0])["trace"]]
    assert ids == expected.token_ids                 # each chunk carries its tokens' entries


def test_n_2_seeds_each_choice(client, runtime):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=3, n=2)
    assert [c.index for c in out.choices] == [0, 1]
    for i, choice in enumerate(out.choices):          # choice i is seeded seed + i
        assert choice.text == runtime.generate(PROMPT, max_new_tokens=8, seed=3 + i,
                                               do_sample=True).text
    streamed = {0: "", 1: ""}
    for chunk in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, seed=3, n=2,
                                           stream=True):
        streamed[chunk.choices[0].index] += chunk.choices[0].text
    assert [streamed[0], streamed[1]] == [c.text for c in out.choices]


def test_prompt_list_and_token_ids(client, runtime):
    prompts = [PROMPT, "def add(a, b):"]
    ids = [runtime.tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    expected = [runtime.generate(p, max_new_tokens=6, seed=2).text for p in prompts]
    for prompt in (prompts, ids):
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                        seed=2)
        assert [c.text for c in out.choices] == expected


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_is_removed(client, runtime, stream):
    full = runtime.generate(PROMPT, max_new_tokens=24, seed=4).text     # greedy
    stop = full.split()[2]              # a word the greedy text reaches after a few tokens
    assert full.index(stop) > 0
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                    seed=4, stop=[stop, "never seen"], stream=stream)
    if stream:
        chunks = list(out)
        text = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        text, finish = out.choices[0].text, out.choices[0].finish_reason
    assert text == full[:full.index(stop)] and finish == "stop"


def test_logprobs_and_echo(client, runtime):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                                    logprobs=2, echo=True, seed=5)
    expected = runtime.generate(PROMPT, max_new_tokens=6, seed=5, logprobs=2)   # seeds MC masks
    choice = out.choices[0]
    assert choice.text == PROMPT + expected.text
    lp = choice.logprobs
    prompt_tokens = len(lp.tokens) - 6
    assert "".join(lp.tokens) == choice.text and lp.text_offset[prompt_tokens] == len(PROMPT)
    assert lp.token_logprobs[:prompt_tokens] == [None] * prompt_tokens   # prompt: not scored
    # the server decodes in a batch (the exported attention), generate() alone (fp32: the fused
    # pass's GroupQueryAttention, within ~1e-5)
    close = dict(rel=1e-4, abs=1e-5)
    assert lp.token_logprobs[prompt_tokens:] == pytest.approx([t.logprob for t in expected.trace],
                                                              **close)
    for top, trace in zip(lp.top_logprobs[prompt_tokens:], expected.trace):
        assert top == pytest.approx({text: v for _, text, v in trace.top_logprobs}, **close)
        assert len(top) == 2


def test_chat_maps_messages_to_a_prompt(client, runtime):
    out = client.chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0, seed=6, logprobs=True, top_logprobs=1,
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "import math"},
                  {"role": "user", "content": PROMPT}])
    expected = runtime.generate("import math\n" + PROMPT, max_new_tokens=8, seed=6)
    message = out.choices[0].message
    assert message.role == "assistant" and message.content == expected.text
    assert len(out.choices[0].logprobs.content) == 8
    chunks = list(client.chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0, seed=6, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "import math"}, {"role": "user", "content": PROMPT}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == 8


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert health(server)["status"] == "ok"


# --- bad requests -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, param, words", [
    ({"model": "gpt-4"}, "model", "not served here"),
    ({"temperature": 3.0}, "temperature", "less than or equal to 2"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_tokens": 3000}, "max_tokens", "--max-tokens-limit"),
    ({"max_tokens": "16"}, "max_tokens", "valid integer"),
    ({"n": 1.5}, "n", "valid integer"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"prompt": [1, "x"]}, "prompt", "a list of token ids"),
    ({"prompt": list(range(5, 3105))}, "prompt", "max_position=3072"),
    ({"prompt": list(range(5, 3005)), "max_tokens": 100}, "max_tokens", "context is 3072"),
    ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"frequency_penalty": -1.0}, "frequency_penalty", "not supported"),
])
def test_bad_request_is_a_400_naming_the_field(client, kwargs, param, words):
    request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**request)
    error = e.value.body if "message" in e.value.body else e.value.body["error"]
    assert e.value.status_code == 400 and error["param"] == param
    assert error["type"] == "invalid_request_error" and words in error["message"]


def test_raw_errors_are_openai_json(server):
    status, body = post(server, "/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = post(server, "/completions", json.dumps({"model": MODEL, "prompt": "x" * 200_000})
                        .encode())
    assert status == 413 and body["error"]["code"] == "request_too_large"
    status, body = post(server, "/completions", b"{}", key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = post(server, "/nowhere", b"{}")
    assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}


def test_wrong_key_is_401(server):
    bad = openai.OpenAI(base_url=server, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)


# --- load, disconnects, shutdown ----------------------------------------------------------------

def test_over_capacity_is_429_and_disconnects_free_generations(client, server):
    """--max-concurrency 2 --max-queue 1: three long streams fill it, a fourth gets 429;
    closing the streams cancels their generations (the worker stops at the next token)."""
    before = health(server)["generations"]
    release, streams = threading.Event(), []

    def hold():
        stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2000,
                                           temperature=0, stream=True)
        streams.append(stream)
        release.wait()
        stream.close()                           # a disconnect mid-stream

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    wait_for(server, lambda h: h["requests"]["running"] == 2 and h["requests"]["queued"] == 1,
             "2 running + 1 queued")
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1)
    release.set()
    for t in threads:
        t.join(120)
    after = wait_for(server, lambda h: h["requests"]["running"] == h["requests"]["queued"] == 0
                     and h["generations"].get("cancelled", 0) - before.get("cancelled", 0) == 3,
                     "3 generations cancelled")
    assert after["requests"]["rejected"] >= 1
    # none of the three ran to its 2000 tokens
    assert after["generations"]["tokens"] - before.get("tokens", 0) < 3 * 2000


def test_client_gone_before_a_non_streamed_answer_cancels_it(client, server):
    before = health(server)["generations"]
    impatient = client.with_options(timeout=1.0)      # gives up long before 2000 tokens
    with pytest.raises(openai.APITimeoutError):
        impatient.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2000, temperature=0)
    after = wait_for(server, lambda h: h["generations"].get("cancelled", 0)
                     > before.get("cancelled", 0), "the generation cancelled")
    assert after["generations"]["tokens"] - before.get("tokens", 0) < 2000


def test_sigterm_finishes_in_flight_requests(runtime):
    proc, url = start_server()
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
        stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=200,
                                           temperature=0, seed=1, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        proc.send_signal(signal.SIGTERM)         # while 199 tokens are still to come
        rest = list(chunks)
    finally:
        code = stop_server(proc) if proc.poll() is None else proc.wait()
    text = "".join(c.choices[0].text for c in [first, *rest])
    assert text == runtime.generate(PROMPT, max_new_tokens=200, seed=1).text
    assert rest[-1].choices[0].finish_reason == "length" and code == -signal.SIGTERM


# --- packaging ------------------------------------------------------------------------------

def test_import_lantern_edge_does_not_import_the_server_stack():
    code = ("import sys, lantern_edge; bad = [m for m in ('starlette', 'uvicorn', 'pydantic', "
            "'lantern_edge.serve') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_extra_is_one_line_naming_it():
    code = ("import sys; sys.modules['uvicorn'] = None; from lantern_edge.cli import main; "
            "sys.exit(main(['serve']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        'lantern-edge serve needs uvicorn: pip install "lantern-edge[serve]"']

