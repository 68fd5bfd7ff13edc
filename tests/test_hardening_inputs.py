"""Bad generation inputs and hostile tokenizers: a clear error or a defined behaviour."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Regex, pre_tokenizers

from lantern_edge import Runtime
from lantern_edge.errors import ArtifactError, TokenizerError
from lantern_edge.model.tokenizer import char_tokenizer

REPO = Path(__file__).resolve().parents[1]
CHARS = [chr(c) for c in range(ord("0"), ord("0") + 64)]      # the random model's vocabulary


@pytest.fixture(scope="module")
def runtime(random_artifacts):
    return Runtime(random_artifacts)


def with_tokenizer(tmp_path: Path, random_artifacts: Path, tokenizer) -> Path:
    out = tmp_path / "art"
    shutil.copytree(random_artifacts, out)
    (out / "tokenizer.json").write_text(tokenizer.to_str())
    manifest = json.loads((out / "lantern.json").read_text())
    manifest["files"]["tokenizer.json"] = hashlib.sha256(
        (out / "tokenizer.json").read_bytes()).hexdigest()
    (out / "lantern.json").write_text(json.dumps(manifest))
    return out


# --- 8. generation inputs ----------------------------------------------------------------------

@pytest.mark.parametrize("prompt,message", [(b"012", "bytes"), ([True, False], "ints in")])
def test_prompt_of_the_wrong_type_is_refused(runtime, prompt, message):
    with pytest.raises(ValueError, match=message):
        runtime.generate(prompt, max_new_tokens=2)


def test_weight_that_overflows_float32_is_refused(runtime):
    with pytest.raises(ValueError, match="weight_entropy must be a finite number in"):
        runtime.generate([5, 6], max_new_tokens=2, weight_entropy=1e39)


@pytest.mark.parametrize("options", [{"temperature": 1e-45}, {"top_p": 1e-300},
                                     {"temperature": 1e-45, "top_p": 5e-324}])
def test_tiny_temperature_or_top_p_decode_greedily(runtime, options):
    greedy = runtime.generate([5, 6, 7], max_new_tokens=10, adaptive=False).token_ids
    sampled = runtime.generate([5, 6, 7], max_new_tokens=10, adaptive=False, do_sample=True,
                               seed=0, **options).token_ids
    assert sampled == greedy


def test_empty_provider_list_is_refused(random_artifacts):
    with pytest.raises(ValueError, match="providers must be a non-empty list"):
        Runtime(random_artifacts, providers=[])


def test_thousands_of_threads_are_refused(random_artifacts):
    # in a child: an unchecked runtime starts 6 x 5000 threads and never exits
    code = f"""
from lantern_edge import Runtime
try:
    Runtime({str(random_artifacts)!r}, intra_op_threads=5000)
except ValueError as e:
    print("refused:", e)
"""
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        pytest.fail("Runtime(intra_op_threads=5000) did not return")
    assert "refused: intra_op_threads must be None or an int in [1," in result.stdout


# --- 7. tokenizers -------------------------------------------------------------------------------

def test_tokenizer_with_ids_beyond_the_vocabulary_is_refused_at_load(tmp_path, random_artifacts):
    extra = CHARS + ["!", "~", "#", "&", "%", "$"]               # ids 64..69
    art = with_tokenizer(tmp_path, random_artifacts, char_tokenizer(extra))
    with pytest.raises(ArtifactError, match="token ids up to 69 but the model's vocab_size is 64"):
        Runtime(art)


def test_rust_panic_in_the_tokenizer_is_a_clear_error(tmp_path, random_artifacts):
    tokenizer = char_tokenizer(CHARS)
    # catastrophic backtracking: Oniguruma gives up and tokenizers panics
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("(a+a+)+y"), behavior="isolated")
    runtime = Runtime(with_tokenizer(tmp_path, random_artifacts, tokenizer))
    with pytest.raises(TokenizerError, match="the tokenizer failed on this prompt"):
        runtime.generate("a" * 40, max_new_tokens=2)


def test_terminal_escapes_in_generated_text_are_shown_not_executed(tmp_path, random_artifacts):
    controls = [chr(c) for c in range(32) if chr(c) not in "\t\n"] + ["\x7f", "\x9b"]
    vocab = controls + [ch for ch in CHARS if ch not in "0123"][:64 - len(controls)]
    art = with_tokenizer(tmp_path, random_artifacts, char_tokenizer(vocab))
    result = subprocess.run(
        [sys.executable, "-m", "lantern_edge.cli", "generate", vocab[40] * 3, "--model", str(art),
         "--max-new-tokens", "40", "--no-adaptive"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    shown = result.stdout
    assert "\\x" in shown                                     # control tokens were generated
    assert not any(ch in shown for ch in controls if ch != "\n")
