"""lantern-export: graphs vs the reference, the artifacts layout, the CLI's contract."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lantern_edge.export import api as export_api
from lantern_edge.export.cli import main as export_main
from lantern_edge.model.checkpoint import load_checkpoint
from lantern_edge.runtime.artifacts import open_artifacts
from lantern_edge.runtime.engine import Engine

GRAPHS = ["model.onnx", "embed.onnx", "mc_step.onnx", "lm_head.onnx", "uncertainty.onnx"]


@pytest.mark.parametrize("seq", [0, 1, 2])
def test_model_onnx_alone_gives_upstream_reference_logits(upstream_artifacts, upstream_reference, seq):
    session = ort.InferenceSession(str(upstream_artifacts / "model.onnx"))
    ids = upstream_reference[f"input_ids_seq{seq}"][None]
    logits = session.run(None, {"input_ids": ids})[0]
    assert np.abs(logits - upstream_reference[f"logits_seq{seq}_steps2"]).max() <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(upstream_artifacts / "model.onnx"),
                                              load_external_data=False).metadata_props}
    assert json.loads(meta["lantern_manifest"])["model_config"]["window_size"] == 16


@pytest.mark.parametrize("which", ["upstream_artifacts", "random_artifacts"])
def test_export_recorded_parity_within_tolerance(request, which):
    artifacts = request.getfixturevalue(which)
    parity = json.loads((artifacts / "lantern.json").read_text())["parity"]
    assert set(parity) == {"decode_logits", "mc_step_logits", "uncertainty_rel", "model_onnx_logits"}
    assert all(value <= 1e-4 for value in parity.values()), parity


def test_every_graph_passes_the_full_checker(random_artifacts):
    names = GRAPHS + ["block0.onnx", "block1.onnx"]
    for name in names:
        onnx.checker.check_model(str(random_artifacts / name), full_check=True)
        model = onnx.load(str(random_artifacts / name), load_external_data=False)
        assert model.opset_import[0].version >= 18
        # weights live in the shared file, not inside each graph
        assert all(len(t.raw_data) < 1024 for t in model.graph.initializer), name


def test_weights_are_stored_once(random_artifacts, random_model):
    params = sum(p.numel() for p in random_model.parameters()) * 4
    size = (random_artifacts / "weights.bin").stat().st_size
    # the fused QKV (5C rows instead of 3C), rope tables and alignment add a little;
    # storing per graph would be ~4x the parameters
    assert size < 2.0 * params, (size, params)


def test_graph_compositions_match_reference_with_think_and_deep_tokens(random_artifacts, random_model):
    """Independent of the export's own check: prefill + decode past the window with a THINK
    token and tokens at steps_reasoning, through the runtime engine vs IncrementalDecoder."""
    from lantern_edge.model.incremental import IncrementalDecoder
    engine = Engine(open_artifacts(random_artifacts))
    reference = IncrementalDecoder(random_model)
    g = np.random.default_rng(7)
    ids = g.integers(4, 64, 30)
    ids[0], ids[12] = 0, 3
    engine.feed(ids[:5], 2)
    reference.forward(torch.from_numpy(ids[:5]), 2)
    for t in range(5, 30):
        depth = 4 if t in (12, 13, 20) else 2
        got = engine.feed(ids[t:t + 1], depth).logits
        want = reference.forward(torch.from_numpy(ids[t:t + 1]), depth).logits[0].numpy()
        assert np.abs(got - want).max() <= 1e-4, t
    assert engine.kv.global_count == 2


def test_mc_step_samples_differ_and_unit_masks_reproduce_the_plain_pass(random_artifacts):
    artifacts = open_artifacts(random_artifacts)
    cfg = artifacts.model_config
    engine = Engine(artifacts)
    step = engine.feed(np.array([0, 7, 9, 11, 5]), 2)
    stored = engine.kv.keys.shape[3]
    rng = np.random.default_rng(0)
    keep = lambda *s: ((rng.random(s) >= 0.1) / 0.9).astype(np.float32)  # noqa: E731
    masks = {"mask_attn_probs": keep(5, cfg.num_heads, 1, stored + 1),
             "mask_attn_out": keep(5, 1, cfg.hidden_size), "mask_mlp_out": keep(5, 1, cfg.hidden_size)}
    logits = engine.mc_logits(step, masks)
    assert logits.shape == (5, cfg.vocab_size)
    assert np.abs(logits[0] - logits[1]).max() > 1e-3
    ones = {k: np.ones_like(v[:1]) for k, v in masks.items()}
    plain = engine.mc_logits(step, ones)
    assert np.abs(plain[0] - step.logits[-1]).max() <= 1e-4


def test_cli_refuses_existing_output_then_force_replaces(tmp_path, random_checkpoint, capsys):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert export_main([str(random_checkpoint), "-o", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert export_main([str(random_checkpoint), "-o", str(out), "--force"]) == 0
    printed = capsys.readouterr().out
    assert "block1.onnx" in printed and "parity decode_logits" in printed
    assert not (out / "old.txt").exists()
    assert open_artifacts(out).model_config.num_blocks == 2
    assert [p.name for p in tmp_path.iterdir()] == ["art"]     # no temp or old dirs left


def test_parity_failure_exits_1_and_leaves_nothing(tmp_path, random_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(export_api, "check_parity", lambda model, art: {
        "decode_logits": 0.5, "mc_step_logits": 0.0, "uncertainty_rel": 0.0,
        "model_onnx_logits": 0.0})
    out = tmp_path / "art"
    assert export_main([str(random_checkpoint), "-o", str(out)]) == 1
    assert "decode_logits=5.00e-01 > 1e-04" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_no_partial_directory(tmp_path, random_checkpoint, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(export_api, "store_weights_once", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_api.export_checkpoint(random_checkpoint, tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "missing.pt", "checkpoint not found"),
    (lambda d: (d / "text.pt").write_text("not torch") and d / "text.pt", "not a readable PyTorch checkpoint"),
    (lambda d: torch.save({"foo": 1}, d / "foreign.pt") or d / "foreign.pt", "not a LANTERN checkpoint"),
])
def test_bad_checkpoints_exit_2_with_one_line(tmp_path, make, fragment):
    path = make(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lantern_edge.export.cli", str(path), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_upstream_checkpoint_without_vocabulary_is_refused(tmp_path, upstream_dir, capsys):
    lone = tmp_path / "checkpoint.pt"
    lone.write_bytes((upstream_dir / "checkpoint.pt").read_bytes())
    assert export_main([str(lone), "-o", str(tmp_path / "out")]) == 2
    assert "without a vocabulary" in capsys.readouterr().err


def test_opset_below_18_is_refused(tmp_path, random_checkpoint, capsys):
    assert export_main([str(random_checkpoint), "-o", str(tmp_path / "o"), "--opset", "17"]) == 2
    assert "--opset must be >= 18" in capsys.readouterr().err


def test_upstream_export_loads_the_same_weights(upstream_dir):
    ckpt = load_checkpoint(upstream_dir / "checkpoint.pt")
    assert ckpt.tokenizer_json is not None
