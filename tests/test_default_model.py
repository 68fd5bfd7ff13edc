"""The shipped default model (lantern_edge/default_model): complete, verified, and what
`Runtime()` and `lantern-edge generate` use without a path."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort

from lantern_edge import Runtime
from lantern_edge.runtime.artifacts import open_artifacts
from lantern_edge.runtime.generate import DEFAULT_MODEL_DIR

PROMPT = "def read_config(path):"


def test_shipped_artifacts_verify_and_stay_under_25_mb():
    for precision in ("fp32", "int8"):
        open_artifacts(DEFAULT_MODEL_DIR, precision)         # every sha256 checked
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert total < 25e6, total
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    for section in ("## Training", "## INT8", "## How this model was made", "## Known limits"):
        assert section in card


def test_shipped_int8_meets_the_quality_bounds():
    quality = json.loads((DEFAULT_MODEL_DIR / "int8" / "quality.json").read_text())
    assert quality["heldout_tokens"] >= 5000
    assert quality["top1_agreement"] >= 0.95
    assert abs(quality["perplexity_delta_pct"]) <= 3.0
    assert quality["decode_speedup"] >= 1.3
    fp32, int8 = (sum(pair) for pair in zip(*quality["sizes"].values()))
    assert int8 <= 0.30 * fp32
    assert quality["decode_threads"] == 1


def test_runtime_without_a_path_is_the_default_model_and_matches_model_onnx():
    runtime = Runtime()
    assert runtime.artifacts.root == DEFAULT_MODEL_DIR
    prompt = runtime.encode(PROMPT).tolist()
    result = runtime.generate(prompt, max_new_tokens=12, adaptive=False, ignore_eos=True)
    # greedy by recomputing the whole sequence with the standalone model.onnx
    session = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    ids = list(prompt)
    for _ in range(12):
        logits = session.run(None, {"input_ids": np.array([ids], dtype=np.int64)})[0][0, -1]
        logits[runtime.config.think_token_id] = -np.inf          # THINK is never an output
        ids.append(int(logits.argmax()))
    assert result.token_ids == ids[len(prompt):]
    assert result.text.startswith("\n")                        # a docstring or body follows


def test_generate_cli_uses_the_default_model():
    proc = subprocess.run([sys.executable, "-m", "lantern_edge.cli", "generate", PROMPT,
                           "--max-new-tokens", "8", "--seed", "0", "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    # the manifest makes the fixed path the default (controller.adaptive=false); --adaptive
    # runs the bands
    assert len(data["token_ids"]) == 8 and {t["band"] for t in data["trace"]} == {None}
    proc = subprocess.run([sys.executable, "-m", "lantern_edge.cli", "generate", PROMPT,
                           "--max-new-tokens", "8", "--seed", "0", "--json", "--adaptive"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    bands = {t["band"] for t in json.loads(proc.stdout)["trace"]}
    assert bands and bands <= {"confident", "moderate", "high", "very_high"}


def test_the_reference_model_rebuilt_from_the_shipped_graphs_matches_model_onnx():
    torch = __import__("pytest").importorskip("torch")
    from lantern_edge.export.reimport import checkpoint_from_artifacts
    model = checkpoint_from_artifacts(DEFAULT_MODEL_DIR).build_model()
    runtime = Runtime()
    ids = runtime.encode(PROMPT + "\n    with open(path) as f:\n").astype(np.int64)
    session = ort.InferenceSession(str(DEFAULT_MODEL_DIR / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input_ids": ids[None]})[0]
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)[None]).logits.numpy()
    assert np.abs(logits - expected).max() <= 1e-4


def test_cli_repetition_defaults_keep_greedy_output_from_repeating():
    """The five everyday prompts, greedy, 64 tokens, with `lantern-edge generate`'s default
    repetition controls: no line and no 8-token run occurs twice in any output."""
    from lantern_edge.evaluation.repetition import check, repetition
    from lantern_edge.runtime.cli import NO_REPEAT_NGRAM_SIZE, REPETITION_PENALTY
    from lantern_edge.runtime.generate import Runtime
    rows = check(Runtime(None), repetition_penalty=REPETITION_PENALTY,
                 no_repeat_ngram_size=NO_REPEAT_NGRAM_SIZE)
    assert [(name, what) for name, _, what in rows if what] == []
    assert all(len(text) > 40 for _, text, _ in rows)
    assert repetition("a = 1\nb = 2\na = 1\n", [1, 2, 3]) == "line 'a = 1' x2"
    assert repetition("x", list(range(4)) * 3) == "8-token run x2"
