#!/usr/bin/env bash
# `lantern-edge serve` driven by curl, as a shell user or a non-Python client would: health,
# models, a completion, a chat completion, a stream ending in `data: [DONE]`, OpenAI-style
# errors (400, 401), then SIGTERM. Run from anywhere: bash tests/test_serve_curl.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
lantern-edge serve --port 0 --api-key curl-key --log-level warning >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT

for _ in $(seq 600); do                 # wait for the line naming the port
    grep -q "http://" "$log" && break
    kill -0 "$server" 2>/dev/null || { cat "$log"; echo "FAIL: the server exited" >&2; exit 1; }
    sleep 0.1
done
base=$(grep -o 'http://[^ ]*/v1' "$log")
root=${base%/v1}
auth=(-H "Authorization: Bearer curl-key" -H "Content-Type: application/json")

fail() { echo "FAIL: $*" >&2; exit 1; }
# json FILE EXPR: evaluate a Python expression over the parsed JSON (as `j`)
json() { python3 -c "import json, sys; j = json.load(open(sys.argv[1])); print($2)" "$1"; }

out=$(mktemp)
code=$(curl -s -o "$out" -w '%{http_code}' "$root/health")
[ "$code" = 200 ] && [ "$(json "$out" 'j["status"]')" = ok ] || fail "health: $code"

code=$(curl -s -o "$out" -w '%{http_code}' "${auth[@]}" "$base/models")
[ "$(json "$out" 'j["data"][0]["id"]')" = lantern-edge ] || fail "models: $code $(cat "$out")"

code=$(curl -s -o "$out" -w '%{http_code}' "${auth[@]}" "$base/completions" \
    -d '{"model": "lantern-edge", "prompt": "def fibonacci(n):", "max_tokens": 16, "seed": 0}')
[ "$code" = 200 ] || fail "completion: $code $(cat "$out")"
[ "$(json "$out" 'j["usage"]["completion_tokens"]')" = 16 ] || fail "completion: $(cat "$out")"
[ "$(json "$out" 'len(j["choices"][0]["lantern"]["trace"])')" = 16 ] || fail "no trace"

code=$(curl -s -o "$out" -w '%{http_code}' "${auth[@]}" "$base/chat/completions" \
    -d '{"model": "lantern-edge", "max_tokens": 8,
         "messages": [{"role": "user", "content": "def fibonacci(n):"}]}')
[ "$(json "$out" 'j["choices"][0]["message"]["role"]')" = assistant ] || fail "chat: $code"

curl -sN "${auth[@]}" "$base/completions" -o "$out" \
    -d '{"model": "lantern-edge", "prompt": "def fibonacci(n):", "max_tokens": 8, "stream": true}'
[ "$(grep -c '^data: {' "$out")" = 9 ] || fail "stream: 8 token events + 1 final expected"
[ "$(grep '^data: ' "$out" | tail -1)" = "data: [DONE]" ] || fail "stream does not end in [DONE]"

code=$(curl -s -o "$out" -w '%{http_code}' "${auth[@]}" "$base/completions" \
    -d '{"model": "lantern-edge", "prompt": "x", "temperature": "hot"}')
[ "$code" = 400 ] && [ "$(json "$out" 'j["error"]["param"]')" = temperature ] \
    || fail "400 expected: $code $(cat "$out")"

code=$(curl -s -o "$out" -w '%{http_code}' "$base/completions" -d '{}')
[ "$code" = 401 ] && [ "$(json "$out" 'j["error"]["code"]')" = invalid_api_key ] \
    || fail "401 expected: $code"

kill -TERM "$server"
wait "$server" || true                  # uvicorn re-raises SIGTERM once it has shut down
kill -0 "$server" 2>/dev/null && fail "the server did not stop on SIGTERM"
rm -f "$out"
echo "serve via curl: ok"
