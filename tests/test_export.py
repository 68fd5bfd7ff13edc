"""lantern-export: graphs vs the reference, the artifacts layout, the CLI's contract.

The decode tests drive the step graphs with their own NumPy KV bookkeeping written from
docs/ARTIFACTS.md (tests/contract_driver.py), independent of both the exporter's parity check and
the runtime.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lantern_edge.export import api as export_api
from lantern_edge.export.cli import main as export_main
from lantern_edge.export.onnx_export import ort_node_count
from lantern_edge.export.parity import PARITY_KEYS, keep_masks, reference_masks
from lantern_edge.model.checkpoint import load_checkpoint
from lantern_edge.model.incremental import IncrementalDecoder

from contract_driver import ContractDriver

RANDOM_GRAPHS = ["model.onnx", "embed.onnx", "block0.onnx", "block1.onnx", "mc_step.onnx",
                 "lm_head.onnx", "uncertainty.onnx"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def depth_pattern(t, cfg):
    """steps_reasoning every third token, a single iteration every seventh, else steps_base."""
    return cfg.steps_reasoning if t % 3 == 0 else 1 if t % 7 == 0 else cfg.steps_base


def run_decode_parity(artifacts, model, ids, prefill):
    """Prefill, then one token at a time at mixed depth; returns the max abs logit diff."""
    cfg = model.config
    driver, reference = ContractDriver(artifacts), IncrementalDecoder(model)
    worst = np.abs(driver.feed(ids[:prefill], cfg.steps_base) - reference.forward(
        torch.from_numpy(ids[:prefill]), cfg.steps_base).logits[0].numpy()).max()
    for t in range(prefill, len(ids)):
        depth = depth_pattern(t, cfg)
        got = driver.feed(ids[t:t + 1], depth)
        want = reference.forward(torch.from_numpy(ids[t:t + 1]), depth).logits[0].numpy()
        worst = max(worst, np.abs(got - want).max())
    return float(worst), driver, reference


# --- parity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seq", [0, 1, 2])
def test_model_onnx_alone_gives_upstream_reference_logits(upstream_artifacts, upstream_reference,
                                                          seq):
    session = ort.InferenceSession(str(upstream_artifacts / "model.onnx"))
    ids = upstream_reference[f"input_ids_seq{seq}"][None]
    logits = session.run(None, {"input_ids": ids})[0]
    assert np.abs(logits - upstream_reference[f"logits_seq{seq}_steps2"]).max() <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(upstream_artifacts / "model.onnx"),
                                              load_external_data=False).metadata_props}
    manifest = json.loads(meta["lantern_manifest"])
    assert manifest["model_config"]["window_size"] == 16 and "files" not in manifest
    assert manifest["parity"]["model_onnx_logits"] <= 1e-4


@pytest.mark.parametrize("steps", [2, 4])
def test_step_graphs_reproduce_upstream_logits_prefill_then_decode(upstream_artifacts,
                                                                   upstream_reference, steps):
    """Upstream's own numbers: 48 tokens (3x the window), 8 prefilled, 40 decoded one by one."""
    ids = upstream_reference["input_ids_seq1"]
    driver = ContractDriver(upstream_artifacts)
    logits = [driver.feed(ids[:8], steps)] + [driver.feed(ids[t:t + 1], steps)
                                              for t in range(8, len(ids))]
    got = np.concatenate(logits)
    assert np.abs(got - upstream_reference[f"logits_seq1_steps{steps}"][0]).max() <= 1e-4


def test_upstream_mixed_depth_decode_matches_reference(upstream_artifacts, upstream_dir,
                                                       upstream_reference):
    model = load_checkpoint(upstream_dir / "checkpoint.pt").build_model()
    ids = upstream_reference["greedy_seq1_full_ids"]                 # 88 tokens, window 16
    worst, _, _ = run_decode_parity(upstream_artifacts, model, ids, prefill=8)
    assert worst <= 1e-4


@pytest.fixture(scope="module")
def think_sequence():
    """3x the window of the random model, BOS first, THINK tokens at 12 and 19."""
    ids = np.random.default_rng(7).integers(4, 64, 30)
    ids[0], ids[12], ids[19] = 0, 3, 3
    return ids


def test_random_model_decode_with_think_and_deep_tokens(random_artifacts, random_model,
                                                        think_sequence):
    worst, driver, reference = run_decode_parity(random_artifacts, random_model, think_sequence,
                                                 prefill=5)
    assert worst <= 1e-4
    assert driver.globals == 3 == reference.buffers[0][0].glob_count   # BOS + two THINK


def test_prefill_longer_than_the_window_then_decode(random_artifacts, random_model, think_sequence):
    worst, _, _ = run_decode_parity(random_artifacts, random_model, think_sequence, prefill=20)
    assert worst <= 1e-4


def test_tiny_model_export_parity(tiny_artifacts, tiny_checkpoint):
    """The trained tiny model: recorded parity, and decode 3x past the window with THINK."""
    parity = json.loads((tiny_artifacts / "lantern.json").read_text())["parity"]
    assert all(value <= 1e-4 for value in parity.values()), parity
    model = load_checkpoint(tiny_checkpoint).build_model()
    cfg = model.config
    ids = np.random.default_rng(3).integers(4, cfg.vocab_size, 3 * cfg.window_size + 2)
    ids[0], ids[cfg.window_size + 3] = cfg.bos_token_id, cfg.think_token_id
    worst, _, _ = run_decode_parity(tiny_artifacts, model, ids, prefill=6)
    assert worst <= 1e-4


def test_mc_step_samples_differ_and_match_reference_block_step(random_artifacts, random_model,
                                                               think_sequence):
    cfg = random_model.config
    _, driver, reference = run_decode_parity(random_artifacts, random_model, think_sequence, 5)
    hidden, i, position, _ = driver.mc
    masks = keep_masks(cfg, 4, 1, np.random.default_rng(0))
    got = driver.mc_hidden(masks)                                     # (S, 1, C)
    b = cfg.num_blocks - 1
    last = torch.from_numpy(think_sequence[-1:])
    want = reference.block_step(b, i, torch.from_numpy(hidden), last, position,
                                reference_masks(masks, b, i))[0].numpy()
    assert np.abs(got - want).max() <= 1e-4
    logits = driver.lm_head.run(None, {"hidden": got})[0][:, 0]
    assert all(np.abs(logits[s] - logits[0]).max() > 1e-3 for s in range(1, 4))
    # keep-everything masks reproduce the deterministic iteration
    ones = {name: np.ones_like(m[:1]) for name, m in masks.items()}
    plain = reference.block_step(b, i, torch.from_numpy(hidden), last, position)[0].numpy()
    assert np.abs(driver.mc_hidden(ones) - plain).max() <= 1e-4


@pytest.mark.parametrize("which", ["upstream_artifacts", "random_artifacts"])
def test_export_recorded_parity_within_tolerance(request, which):
    artifacts = request.getfixturevalue(which)
    parity = json.loads((artifacts / "lantern.json").read_text())["parity"]
    assert set(parity) == set(PARITY_KEYS)
    assert all(value <= 1e-4 for value in parity.values()), parity


# --- the artifacts layout -------------------------------------------------------------------------

def test_every_graph_passes_the_full_checker_with_weights_outside(random_artifacts):
    manifest = json.loads((random_artifacts / "lantern.json").read_text())
    for name in RANDOM_GRAPHS:
        onnx.checker.check_model(str(random_artifacts / name), full_check=True)
        model = onnx.load(str(random_artifacts / name), load_external_data=False)
        assert model.opset_import[0].version == 18
        assert all(len(t.raw_data) < 1024 for t in model.graph.initializer), name
    assert set(manifest["files"]) == {p.name for p in random_artifacts.iterdir()} - {"lantern.json"}
    assert manifest["format_version"] == 1 and manifest["producer"]["opset"] == 18


def test_weights_are_stored_once(random_artifacts, random_model):
    cfg = random_model.config
    params = sum(p.numel() for p in random_model.parameters()) * 4
    # tensors under 1 kB stay inline in the graph files
    matrices = sum(p.numel() for p in random_model.parameters() if p.numel() * 4 >= 1024) * 4
    rope = cfg.head_dim * 4 + cfg.head_dim ** 2 * 4
    size = (random_artifacts / "weights.bin").stat().st_size
    # every graph reads the tied embedding and the block weights from this one file; what is
    # added is RoPE's frequencies and rotation matrix and 64-byte alignment (vectors with equal
    # bytes, such as fresh LayerNorm weights, are stored once too: hence matrices as the floor)
    assert matrices <= size <= params + rope + 64 * 40, (size, params)


def test_block_graph_is_trimmed(random_artifacts):
    """The decode-time cost is mostly per node (~0.5 us each): keep the step graph small."""
    # 42 on the default shape: 37 for the block proper + 5 that compute RoPE from positions
    assert ort_node_count(random_artifacts / "block0.onnx") <= 42
    assert ort_node_count(random_artifacts / "mc_step.onnx") <= 43


def test_opset_17_export_passes(tmp_path, random_checkpoint):
    report = export_api.export_checkpoint(random_checkpoint, tmp_path / "art17", opset=17)
    assert all(value <= 1e-4 for value in report.parity.values())
    model = onnx.load(str(tmp_path / "art17" / "block0.onnx"), load_external_data=False)
    assert model.opset_import[0].version == 17


# --- the command --------------------------------------------------------------------------------

def test_cli_refuses_existing_output_then_force_replaces(tmp_path, random_checkpoint, capsys):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert export_main([str(random_checkpoint), "-o", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "old.txt").exists()
    assert export_main([str(random_checkpoint), "-o", str(out), "--force"]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.index("graph "):]
    for name in RANDOM_GRAPHS + ["weights.bin", "tokenizer.json", "lantern.json", "total"]:
        assert name in table
    assert "decode_logits" in table and "ORT nodes" in table
    assert not (out / "old.txt").exists() and (out / "block1.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["art"]     # no temp or old dirs left


def test_default_output_is_artifacts_checkpoint_stem(tmp_path, random_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert export_main([str(random_checkpoint)]) == 0
    assert (tmp_path / "artifacts" / random_checkpoint.stem / "lantern.json").exists()


def test_parity_failure_exits_1_and_leaves_nothing(tmp_path, random_checkpoint, monkeypatch,
                                                   capsys):
    monkeypatch.setattr(export_api, "check_parity", lambda model, root: dict(
        dict.fromkeys(PARITY_KEYS, 0.0), decode_logits=0.5))
    out = tmp_path / "art"
    assert export_main([str(random_checkpoint), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "decode_logits=5.00e-01 > 1e-04" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_failed_forced_export_keeps_the_previous_artifacts(tmp_path, random_checkpoint,
                                                           monkeypatch):
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    monkeypatch.setattr(export_api, "check_parity", lambda model, root: dict(
        dict.fromkeys(PARITY_KEYS, 0.0), mc_step_logits=float("nan")))
    assert export_main([str(random_checkpoint), "-o", str(out), "--force"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["art"] and (out / "keep.txt").exists()


def test_interrupted_export_leaves_no_partial_directory(tmp_path, random_checkpoint, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(export_api, "check_graphs", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_api.export_checkpoint(random_checkpoint, tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lantern_edge.export.cli", *map(str, args)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "missing.pt", "checkpoint not found"),
    (lambda d: (d / "text.pt").write_text("not torch") and d / "text.pt",
     "not a readable PyTorch checkpoint"),
    (lambda d: torch.save({"foo": 1}, d / "foreign.pt") or d / "foreign.pt",
     "not a LANTERN checkpoint"),
])
def test_bad_checkpoints_exit_2_with_one_line(tmp_path, make, fragment):
    proc = _run_cli(make(tmp_path), "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unwritable_output_exits_2_with_one_line(tmp_path, random_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the parent directory should be")
    proc = _run_cli(random_checkpoint, "-o", blocker / "art")
    assert proc.returncode == 2 and "cannot write" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    proc = _run_cli(tmp_path / "missing.pt", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_upstream_checkpoint_without_vocabulary_is_refused(tmp_path, upstream_dir, capsys):
    lone = tmp_path / "checkpoint.pt"
    lone.write_bytes((upstream_dir / "checkpoint.pt").read_bytes())
    assert export_main([str(lone), "-o", str(tmp_path / "out")]) == 2
    assert "without a vocabulary" in capsys.readouterr().err
    assert export_main([str(lone), "-o", str(tmp_path / "out"),
                        "--vocab", str(upstream_dir / "vocab.json")]) == 0


@pytest.mark.parametrize("opset", ["16", "99"])
def test_unsupported_opset_is_refused(tmp_path, random_checkpoint, capsys, opset):
    assert export_main([str(random_checkpoint), "-o", str(tmp_path / "o"), "--opset", opset]) == 2
    assert "--opset must be in [17, " in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_int8_runs_the_quantization_step_on_the_new_artifacts(tmp_path, random_checkpoint,
                                                              monkeypatch, capsys):
    import lantern_edge.quantization.api as quantization
    calls = []
    monkeypatch.setattr(quantization, "quantize_artifacts",
                        lambda path, **kw: calls.append(path) or "REPORT")
    monkeypatch.setattr(quantization, "main_summary", lambda report: f"summary of {report}")
    assert export_main([str(random_checkpoint), "-o", str(tmp_path / "o"), "--int8"]) == 0
    assert calls == [tmp_path / "o"] and "summary of REPORT" in capsys.readouterr().out


def test_artifacts_reimport_to_the_checkpoint_they_came_from(random_artifacts, random_checkpoint):
    from lantern_edge.export.reimport import checkpoint_from_artifacts
    from lantern_edge.model.checkpoint import load_checkpoint
    original = load_checkpoint(random_checkpoint)
    back = checkpoint_from_artifacts(random_artifacts / "model.onnx")
    assert back.model_config == original.model_config
    assert back.controller_config == original.controller_config
    assert set(back.state_dict) == set(original.state_dict)
    for name, tensor in original.state_dict.items():
        # head_dim 8: dividing 1/sqrt(8) back out of the q rows is exact to an ulp, not bitwise
        torch.testing.assert_close(back.state_dict[name], tensor, rtol=1e-6, atol=1e-7)
    back.build_model()                                   # loads strictly


def test_reimport_names_a_broken_artifacts_directory(tmp_path, random_artifacts):
    from lantern_edge.errors import ArtifactError
    from lantern_edge.export.reimport import checkpoint_from_artifacts
    broken = shutil.copytree(random_artifacts, tmp_path / "art")
    (broken / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ArtifactError, match="weights.bin does not match its sha256"):
        checkpoint_from_artifacts(broken)
