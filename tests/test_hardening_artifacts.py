"""Hostile or damaged artifacts directories: what the runtime reads, and what it refuses.

Every test works on a copy of the tiny random-model artifacts (tests/conftest.py). Cases that
hang or kill the process on an unprotected runtime (a FIFO, /dev/zero, a truncated memory-mapped
file) run in a subprocess with a timeout, so a regression fails the test instead of the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lantern_edge import Runtime
from lantern_edge.errors import ArtifactError
from lantern_edge.runtime import artifacts as artifacts_module
from lantern_edge.runtime.artifacts import open_artifacts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def art(tmp_path, random_artifacts) -> Path:
    out = tmp_path / "art"
    shutil.copytree(random_artifacts, out)
    return out


def edit(root: Path, change) -> None:
    path = root / "lantern.json"
    manifest = json.loads(path.read_text())
    result = change(manifest)
    path.write_text(json.dumps(result if isinstance(result, (list, dict)) else manifest))


def rehash(root: Path, name: str) -> None:
    digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
    edit(root, lambda m: m["files"].__setitem__(name, digest))


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s (the runtime blocked on a file)")


# --- 1. the bytes that are hashed are the bytes that run ------------------------------------

def test_weights_overwritten_under_a_running_model_change_nothing(art):
    runtime = Runtime(art)
    before = runtime.generate([5, 6, 7], max_new_tokens=12, adaptive=False).token_ids
    weights = art / "weights.bin"
    with open(weights, "r+b") as f:                    # in place: same inode, same size
        f.write(b"\0" * weights.stat().st_size)
    assert runtime.generate([5, 6, 7], max_new_tokens=12, adaptive=False).token_ids == before


def test_weights_truncated_under_a_running_model_do_not_crash_it(art):
    result = run_python(f"""
import os
from lantern_edge import Runtime
rt = Runtime({str(art)!r})
before = rt.generate([5, 6, 7], max_new_tokens=12, adaptive=False).token_ids
os.truncate({str(art / "weights.bin")!r}, 0)
after = rt.generate([5, 6, 7], max_new_tokens=12, adaptive=False).token_ids
print(before == after)
""")
    assert result.returncode == 0, result.stderr[-2000:]      # -7: SIGBUS
    assert result.stdout.strip() == "True"


# --- 3. paths stay inside the directory -------------------------------------------------------

def _outside_copy(art: Path, name: str) -> Path:
    outside = art.parent / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(art / name, outside / name)
    return outside / name


def test_absolute_path_in_the_manifest_is_refused_before_reading(art):
    target = _outside_copy(art, "tokenizer.json")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    edit(art, lambda m: (m.__setitem__("tokenizer", str(target)),
                         m["files"].__setitem__(str(target), digest)))
    with pytest.raises(ArtifactError, match="only plain relative names"):
        open_artifacts(art)


def test_parent_path_to_another_directorys_graph_is_refused(art):
    target = _outside_copy(art, "lm_head.onnx")
    name = "../outside/lm_head.onnx"
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    edit(art, lambda m: (m["graphs"]["fp32"]["lm_head"].__setitem__("file", name),
                         m["files"].__setitem__(name, digest)))
    with pytest.raises(ArtifactError, match="only plain relative names"):
        open_artifacts(art)


def test_symlink_to_a_file_outside_is_refused(art):
    target = _outside_copy(art, "tokenizer.json")
    (art / "tokenizer.json").unlink()
    (art / "tokenizer.json").symlink_to(target)
    with pytest.raises(ArtifactError, match="symlink"):
        open_artifacts(art)


def test_symlinked_subdirectory_is_refused(art):
    outside = art.parent / "elsewhere"
    outside.mkdir()
    shutil.move(str(art / "tokenizer.json"), outside / "tokenizer.json")
    (art / "sub").symlink_to(outside)
    edit(art, lambda m: (m.__setitem__("tokenizer", "sub/tokenizer.json"),
                         m["files"].__setitem__("sub/tokenizer.json",
                                                m["files"]["tokenizer.json"])))
    with pytest.raises(ArtifactError, match="symlink"):
        open_artifacts(art)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_fifo_or_device_does_not_hang_the_runtime(art, kind):
    tokenizer = art / "tokenizer.json"
    tokenizer.unlink()
    if kind == "fifo":
        os.mkfifo(tokenizer)
    else:
        tokenizer.symlink_to("/dev/zero")
    result = run_python(f"""
from lantern_edge.errors import ArtifactError
from lantern_edge.runtime.artifacts import open_artifacts
try:
    open_artifacts({str(art)!r})
except ArtifactError as e:
    print("refused:", e)
""", timeout=60)
    assert "refused:" in result.stdout, result.stderr[-2000:]
    assert "tokenizer.json" in result.stdout


def test_file_above_the_size_cap_is_refused_before_reading(art, monkeypatch):
    monkeypatch.setattr(artifacts_module, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ArtifactError, match="above the limit"):
        open_artifacts(art)


def _relocate_external_data(art: Path, graph: str, location: str) -> None:
    """Rewrite one graph so that its weights come from `location` (a copy of weights.bin),
    and record the graph's new hash, as a manifest writer would."""
    import onnx
    model = onnx.load(str(art / graph), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(art / graph))
    rehash(art, graph)


@pytest.mark.parametrize("where", ["unlisted", "absolute", "parent"])
def test_external_data_outside_the_manifest_list_is_never_read(art, where):
    if where == "unlisted":
        shutil.copy(art / "weights.bin", art / "extra.bin")
        location = "extra.bin"
    elif where == "absolute":
        location = str(_outside_copy(art, "weights.bin"))
    else:
        _outside_copy(art, "weights.bin")
        location = "../outside/weights.bin"
    _relocate_external_data(art, "lm_head.onnx", location)
    with pytest.raises(ArtifactError, match="external data"):
        Runtime(art)


# --- 4. artifacts without recorded parity -------------------------------------------------------

def test_artifacts_without_recorded_parity_are_refused(art):
    edit(art, lambda m: m.__setitem__("parity", {}))
    with pytest.raises(ArtifactError, match="lantern.json records no parity"):
        Runtime(art)


def test_artifacts_with_failed_parity_are_refused(art):
    edit(art, lambda m: m["parity"].__setitem__("decode_logits", 0.5))
    with pytest.raises(ArtifactError, match="failed parity"):
        Runtime(art)


# --- 5. manifest fields that no hash covers -----------------------------------------------------

def _swap_blocks(m):
    blocks = m["graphs"]["fp32"]["blocks"]
    blocks[0], blocks[1] = blocks[1], blocks[0]


FIELD_EDITS = {
    "block order swapped": (_swap_blocks, "block order"),
    "num_blocks 1": (lambda m: m["model_config"].__setitem__("num_blocks", 1), "num_blocks"),
    "steps_reasoning 1000": (lambda m: m["model_config"].__setitem__("steps_reasoning", 1000),
                             "steps_reasoning"),
    "steps_reasoning 5": (lambda m: m["model_config"].__setitem__("steps_reasoning", 5),
                          "model_config differs from the copy"),
    "think id = bos id": (lambda m: (m["model_config"].__setitem__("think_token_id", 0),
                                     m["special_tokens"].__setitem__("think_token_id", 0)),
                          "same id"),
    "use_halting 'no'": (lambda m: m["model_config"].__setitem__("use_halting", "no"),
                         "use_halting must be of type bool"),
    "format_version true": (lambda m: m.__setitem__("format_version", True), "format_version"),
    "weight_entropy 1e39": (lambda m: m["controller"].__setitem__("weight_entropy", 1e39),
                            "weight_entropy"),
}


@pytest.mark.parametrize("name", list(FIELD_EDITS))
def test_manifest_fields_are_checked_against_the_graphs(art, name):
    change, message = FIELD_EDITS[name]
    edit(art, change)
    with pytest.raises(ArtifactError, match=message):
        Runtime(art)


# --- 6. every malformed manifest is one clear error, exit 2 from the CLI -------------------------

def _delete(*keys):
    def change(m):
        target = m
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return change


def _set(value, *keys):
    def change(m):
        target = m
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change


MALFORMED = {
    "not an object": lambda m: [],
    "no format_version": _delete("format_version"),
    "no model_config": _delete("model_config"),
    "no controller": _delete("controller"),
    "no special_tokens": _delete("special_tokens"),
    "no tokenizer": _delete("tokenizer"),
    "no graphs": _delete("graphs"),
    "no files": _delete("files"),
    "no parity": _delete("parity"),
    "graphs a list": _set([], "graphs"),
    "fp32 a string": _set("x", "graphs", "fp32"),
    "no embed": _delete("graphs", "fp32", "embed"),
    "blocks a dict": _set({}, "graphs", "fp32", "blocks"),
    "block a string": _set("block0.onnx", "graphs", "fp32", "blocks", 0),
    "block without file": _delete("graphs", "fp32", "blocks", 0, "file"),
    "external_data a string": _set("weights.bin", "graphs", "fp32", "external_data"),
    "files a list": _set([], "files"),
    "hash a number": _set(5, "files", "weights.bin"),
    "model_config a list": _set([], "model_config"),
    "model_config missing a field": _delete("model_config", "window_size"),
    "vocab_size a string": _set("64", "model_config", "vocab_size"),
    "vocab_size against the graphs": _set(32, "model_config", "vocab_size"),
    "window_size against the graphs": _set(4, "model_config", "window_size"),
    "num_heads against the graphs": _set(8, "model_config", "num_heads"),
    "hidden_size against the graphs": _set(64, "model_config", "hidden_size"),
    "use_halting against the graphs": _set(False, "model_config", "use_halting"),
    "controller tau a string": _set("a", "controller", "tau_low"),
    "controller null": _set(None, "controller"),
    "tokenizer a number": _set(5, "tokenizer"),
    "mc_samples 1000": _set(1000, "controller", "mc_samples"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_manifest_is_one_artifact_error(art, name):
    edit(art, MALFORMED[name])
    with pytest.raises(ArtifactError) as info:
        Runtime(art)
    assert "\n" not in str(info.value) and "lantern-export" in str(info.value)


@pytest.mark.parametrize("name", ["no embed", "window_size against the graphs", "hash a number"])
def test_malformed_manifest_cli_exits_2_with_one_line(art, name, capsys):
    from lantern_edge.cli import main
    edit(art, MALFORMED[name])
    assert main(["generate", "012", "--model", str(art), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lantern-edge generate: ") and err.count("\n") == 1


def test_manifest_adaptive_false_makes_fixed_depth_the_default(tmp_path, random_model):
    """A checkpoint whose controller says adaptive=False exports a manifest whose default is
    the fixed path (no band, no signals) unless a call asks for adaptive; a non-bool there is
    refused naming the field. (Manifests without the field load as adaptive: the others.)"""
    import dataclasses

    from conftest import _save_random_checkpoint
    from lantern_edge import Runtime
    from lantern_edge.errors import ArtifactError
    from lantern_edge.export.api import export_checkpoint
    from lantern_edge.model.checkpoint import load_checkpoint, save_checkpoint
    ckpt = _save_random_checkpoint(random_model, tmp_path / "fixed.pt")
    loaded = load_checkpoint(ckpt)
    save_checkpoint(ckpt, random_model,
                    dataclasses.replace(loaded.controller_config, adaptive=False),
                    loaded.tokenizer_json)
    export_checkpoint(ckpt, tmp_path / "fixed")
    runtime = Runtime(tmp_path / "fixed")
    assert {e.band for e in runtime.generate([5, 6, 7], max_new_tokens=6, seed=0).trace} == {None}
    forced = {e.band for e in runtime.generate([5, 6, 7], max_new_tokens=6, seed=0,
                                               adaptive=True).trace}
    assert forced and None not in forced
    edit(tmp_path / "fixed", _set("no", "controller", "adaptive"))
    with pytest.raises(ArtifactError, match="controller.adaptive must be of type bool"):
        Runtime(tmp_path / "fixed")
