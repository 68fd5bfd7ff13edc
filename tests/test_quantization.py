"""INT8: quality bounds on the tiny model, the runtime runs it, the manifest verifies, clean refusals."""

import json
import shutil

import numpy as np
import pytest

from lantern_edge import Runtime
from lantern_edge.quantization.api import QuantizationError, quantize_artifacts
from lantern_edge.quantization.cli import main as quantize_main
from lantern_edge.runtime.artifacts import open_artifacts


@pytest.fixture(scope="module")
def int8_artifacts(tmp_path_factory, tiny_artifacts):
    root = shutil.copytree(tiny_artifacts, tmp_path_factory.mktemp("int8") / "art")
    report = quantize_artifacts(root)
    return root, report


def test_int8_quality_on_heldout_text(int8_artifacts):
    _, report = int8_artifacts
    q = report.quality
    assert q["heldout_tokens"] >= 1000
    assert q["top1_agreement"] >= 0.90
    assert abs(q["perplexity_delta_pct"]) < 3.0
    assert q["mean_abs_change_entropy"] < 0.1
    weights32, weights8 = report.sizes["weights"]
    assert weights8 <= 0.35 * weights32


def test_int8_graphs_are_recorded_with_hashes_and_the_runtime_uses_them(int8_artifacts):
    root, _ = int8_artifacts
    artifacts = open_artifacts(root, "int8")                  # verifies every sha256
    section = artifacts.manifest["graphs"]["int8"]
    assert section["blocks"][0]["file"] == "int8/block0.onnx"
    assert section["quantization"]["mode"] == "dynamic"
    assert section["blocks"][0]["inputs"] == artifacts.manifest["graphs"]["fp32"]["blocks"][0]["inputs"]
    fp32 = Runtime(root)
    int8 = Runtime(root, precision="int8")
    a = fp32.generate("def main():\n    ", max_new_tokens=24, adaptive=False)
    b = int8.generate("def main():\n    ", max_new_tokens=24, adaptive=False)
    assert len(b.token_ids) == 24
    assert np.mean(np.array(a.token_ids[:8]) == np.array(b.token_ids[:8])) >= 0.5
    adaptive = int8.generate("def main():\n    ", max_new_tokens=16, tau_low=-1e9, tau_mid=-1e9,
                             tau_high=1e9, seed=0)
    assert all(t.mc_samples for t in adaptive.trace)        # the int8 MC step runs too
    report = json.loads((root / "int8" / "quality.json").read_text())
    assert report["top1_agreement"] == pytest.approx(section["quality"]["top1_agreement"])
    assert (root / "int8" / "QUALITY.md").read_text().startswith("# INT8 quality report")


def test_refuses_what_is_not_artifacts(tmp_path, capsys):
    assert quantize_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a LANTERN artifacts directory" in err and len(err.strip().splitlines()) == 1


def test_refuses_already_quantized_input(int8_artifacts, capsys):
    root, _ = int8_artifacts
    assert quantize_main([str(root), "--no-eval"]) == 2
    assert "already has INT8 graphs; pass --force" in capsys.readouterr().err
    assert quantize_main([str(root / "int8")]) == 2
    assert "already quantized" in capsys.readouterr().err


def test_refuses_empty_calibration(tmp_path, tiny_artifacts):
    root = shutil.copytree(tiny_artifacts, tmp_path / "art")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(QuantizationError, match="calibration set is empty"):
        quantize_artifacts(root, mode="static", calibration=[str(empty)])
    assert not (root / "int8").exists()


def test_static_mode_calibrates_on_text(tmp_path, tiny_artifacts):
    root = shutil.copytree(tiny_artifacts, tmp_path / "art")
    text = tmp_path / "calib.txt"
    text.write_text("def add(a, b):\n    return a + b\n\n" * 200)
    report = quantize_artifacts(root, mode="static", calibration=[str(text)], evaluate=False)
    assert report.mode == "static"
    runtime = Runtime(root, precision="int8")
    assert len(runtime.generate("def f", max_new_tokens=8, adaptive=False).token_ids) == 8
