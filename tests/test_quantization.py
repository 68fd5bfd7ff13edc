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
    """The default mode (nbits)."""
    root = shutil.copytree(tiny_artifacts, tmp_path_factory.mktemp("int8") / "art")
    report = quantize_artifacts(root)
    return root, report


@pytest.fixture(scope="module")
def dynamic_artifacts(tmp_path_factory, tiny_artifacts):
    root = shutil.copytree(tiny_artifacts, tmp_path_factory.mktemp("dynamic") / "art")
    report = quantize_artifacts(root, mode="dynamic", evaluate=False)
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
    cfg = artifacts.model_config
    assert section["quantization"]["mode"] == "nbits"
    block = section["quantization"]["block_size"]
    assert block in (16, 32, 64, 128) and cfg.hidden_size % block == cfg.intermediate_size % block == 0
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


def test_static_calibration_sees_a_full_window_of_past_keys_and_is_deterministic(tmp_path,
                                                                                  tiny_artifacts):
    from lantern_edge.quantization.calibration import collect_feeds
    artifacts = open_artifacts(tiny_artifacts, "fp32")
    text = "def add(a, b):\n    return a + b\n\n" * 200
    feeds = collect_feeds(artifacts, [text])
    window = artifacts.model_config.window_size
    # a prefill chunk past the first window runs with the ring of stored keys full
    assert max(int(f["positions"][0]) for f in feeds["block0.onnx"]) >= window
    roots = [shutil.copytree(tiny_artifacts, tmp_path / name) for name in ("a", "b")]
    calibration = tmp_path / "calib.txt"
    calibration.write_text(text)
    for root in roots:
        quantize_artifacts(root, mode="static", calibration=[str(calibration)], evaluate=False)
    for path in sorted((roots[0] / "int8").iterdir()):
        assert path.read_bytes() == (roots[1] / "int8" / path.name).read_bytes(), path.name


def test_weight_only_int8_keeps_float_activations_and_rounds_each_column():
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from lantern_edge.quantization.weight_only import matmuls_reading, to_int8_weight_only

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 5)).astype(np.float32)
    weight[:, 2] *= 100.0                          # one loud column: its scale is its own
    weight[:, 4] = 0.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "proj.down_weight"], ["y"], name="down"),
         helper.make_node("MatMul", ["x", "other"], ["z"], name="other")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None, 5]) for n in "yz"],
        [numpy_helper.from_array(weight, "proj.down_weight"), numpy_helper.from_array(weight, "other")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    nodes = matmuls_reading(model, ("down_weight",))
    assert [n.name for n in nodes] == ["down"]
    to_int8_weight_only(model, nodes)
    onnx.checker.check_model(model, full_check=True)
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert stored["proj.down_weight_int8"].dtype == np.int8 and "other" in stored
    x = rng.normal(size=(3, 8)).astype(np.float32)
    dequantized = stored["proj.down_weight_int8"] * stored["proj.down_weight_scale"]
    step = np.abs(weight).max(0) / 127
    assert (np.abs(dequantized - weight) <= step / 2 + 1e-6).all()  # per-column rounding
    assert np.array_equal(dequantized[:, 4], np.zeros(8))
    basic = ort.SessionOptions()
    basic.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    y, z = ort.InferenceSession(model.SerializeToString(), basic).run(None, {"x": x})
    assert np.array_equal(z, x @ weight)                           # untouched MatMul
    np.testing.assert_allclose(y, x @ dequantized, rtol=1e-5, atol=1e-4)
    # fully optimised, ORT runs it as an 8-bit MatMulNBits (activations quantized per block)
    y_fused = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(y_fused - x @ weight).max() <= 0.02 * np.abs(x @ weight).max()


def test_dynamic_blocks_keep_rope_halting_and_down_activations_float(dynamic_artifacts):
    import onnx
    root, _ = dynamic_artifacts
    model = onnx.load(str(root / "int8" / "block0.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    float_matmul_weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul"}
    assert "rope_rotation" in float_matmul_weights
    assert "block0.down_weight_dequantized" in float_matmul_weights
    assert ops.count("DequantizeLinear") == 1
    assert sum(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in ops) == 3  # qkv, out, gate/up


def test_dynamic_embedding_table_is_stored_once_and_gathered_exactly(dynamic_artifacts):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from lantern_edge.quantization.shared_table import SHARED_TABLE
    root, _ = dynamic_artifacts

    def table(graph, name=None):
        model = onnx.load(str(root / "int8" / graph), load_external_data=False)
        if name is None:
            name = next(n.input[0] for n in model.graph.node
                        if n.op_type == "Gather" and "position" not in n.input[0])
        tensor = next(t for t in model.graph.initializer if t.name == name)
        return {e.key: e.value for e in tensor.external_data}, list(tensor.dims)

    cfg = open_artifacts(root).model_config
    head = table("lm_head.onnx", SHARED_TABLE)
    assert head[1] == [cfg.vocab_size, cfg.hidden_size]
    for graph in ("embed.onnx", "uncertainty.onnx"):
        assert table(graph) == head                   # same bytes of int8/weights.bin, same shape
    vocab = cfg.vocab_size
    # the int8 embedding rows are the fp32 rows to within half a quantization step
    ids = np.arange(0, vocab, max(1, vocab // 50), dtype=np.int64)
    feeds = {"input_ids": ids, "positions": np.arange(len(ids), dtype=np.int64)}
    out8 = ort.InferenceSession(str(root / "int8" / "embed.onnx")).run(None, feeds)[0]
    out32 = ort.InferenceSession(str(root / "embed.onnx")).run(None, feeds)[0]
    head_model = onnx.load(str(root / "int8" / "lm_head.onnx"))
    scales = [numpy_helper.to_array(t) for t in head_model.graph.initializer
              if t.name.endswith("_scale")]
    embed_model = onnx.load(str(root / "int8" / "embed.onnx"))
    scales += [numpy_helper.to_array(t) for t in embed_model.graph.initializer
               if t.name.startswith("position") and t.name.endswith("_scale")]
    assert np.abs(out8 - out32).max() <= sum(float(s.max()) for s in scales) / 2 + 1e-6


def test_per_channel_mode_runs(tmp_path, tiny_artifacts):
    root = shutil.copytree(tiny_artifacts, tmp_path / "art")
    report = quantize_artifacts(root, mode="dynamic", per_channel=True, evaluate=False)
    assert report.per_channel
    runtime = Runtime(root, precision="int8")
    result = runtime.generate("def f", max_new_tokens=8, tau_low=-1e9, tau_mid=-1e9, tau_high=1e9,
                              seed=0)
    assert len(result.token_ids) == 8 and all(t.mc_samples for t in result.trace)


def test_nbits_blocks_are_matmulnbits_that_the_fused_pass_shares(int8_artifacts):
    """nbits: every weight MatMul of a block (qkv, out, gate/up, down) and the LM head is an
    8-bit MatMulNBits; RoPE's rotation and the halting heads stay float; in the fused cheap
    pass the iterations of a block read one copy of each weight."""
    import onnx
    from lantern_edge.runtime.engine import Engine
    root, _ = int8_artifacts
    section = open_artifacts(root, "int8").manifest["graphs"]["int8"]["quantization"]
    model = onnx.load(str(root / "int8" / "block0.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert sorted(n.input[1] for n in nbits) == sorted(
        f"block0.{w}_nbits" for w in ("qkv_weight", "out_weight", "gate_up_weight", "down_weight"))
    for n in nbits:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (
            8, section["block_size"], 4)
    assert {n.input[1] for n in model.graph.node if n.op_type == "MatMul"} >= {"rope_rotation"}
    assert not [n for n in model.graph.node if n.op_type in ("MatMulInteger", "DequantizeLinear")]
    head = onnx.load(str(root / "int8" / "lm_head.onnx"), load_external_data=False)
    assert [n.op_type for n in head.graph.node if "MatMul" in n.op_type] == ["MatMulNBits"]
    engine = Engine(open_artifacts(root, "int8"), "int8")
    fused = onnx.load_from_string(engine.fused[0][0].model)
    names = [t.name for t in fused.graph.initializer]
    assert names.count("block0.qkv_weight_nbits") == 1 and names.count("block1.down_weight_nbits") == 1
    uses = sum(list(n.input[1:2]) == ["block0.qkv_weight_nbits"] for n in fused.graph.node)
    assert uses == engine.config.steps_base


def test_matmul_nbits_rounds_each_block_of_each_column():
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from lantern_edge.quantization.weight_only import to_matmul_nbits

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 24)).astype(np.float32)
    weight[:32, 5] *= 50.0                     # one loud block: only its own scale grows
    weight[32:, 7] = 0.0                       # an all-zero block
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="a"),
         helper.make_node("MatMul", ["x", "w"], ["z"], name="b")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [None, 24]) for n in "yz"],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    to_matmul_nbits(model, list(model.graph.node), 32)
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert sorted(stored) == ["w_nbits", "w_nbits_scale"]          # both nodes read one copy
    q, scale = stored["w_nbits"], stored["w_nbits_scale"].reshape(24, 2)
    assert q.shape == (24, 2, 32) and q.dtype == np.uint8
    dequantized = ((q.astype(np.float32) - 128) * scale[:, :, None]).reshape(24, 64).T
    step = np.abs(weight.reshape(2, 32, 24)).max(1).T / 127           # [N, blocks]
    assert (np.abs(dequantized - weight) <= np.repeat(step.T, 32, 0) / 2 + 1e-6).all()
    assert np.array_equal(dequantized[32:, 7], np.zeros(32))
    assert step[0, 0] < step[5, 0] / 10                       # column 0's scale is its own
    x = rng.normal(size=(3, 64)).astype(np.float32)
    y, z = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    assert np.array_equal(y, z)
    # activations are quantized per block at run time (accuracy level 4)
    assert np.abs(y - x @ dequantized).max() <= 0.02 * np.abs(x @ dequantized).max()
    with pytest.raises(ValueError, match="multiple of the block size 128"):
        to_matmul_nbits(helper.make_model(graph), list(graph.node), 128)


@pytest.mark.parametrize("args, message", [
    (["--mode", "dynamic", "--block-size", "32"], "--block-size applies to --mode nbits only"),
    (["--block-size", "48"], "--block-size must be one of"),
    (["--block-size", "256"], "does not divide the model's weight input sizes"),
    (["--per-channel"], "--per-channel does not apply to --mode nbits"),
])
def test_nbits_refuses_block_sizes_that_do_not_fit(tmp_path, tiny_artifacts, capsys, args, message):
    root = shutil.copytree(tiny_artifacts, tmp_path / "art")
    assert quantize_main([str(root), "--no-eval", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (root / "int8").exists()


def test_nbits_embedding_rows_come_from_the_lm_head_table(int8_artifacts):
    """nbits: embed and uncertainty gather rows of the LM head's MatMulNBits table (stored once)
    and dequantize them per block: each value within half its block's step of fp32."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    root, _ = int8_artifacts
    cfg = open_artifacts(root).model_config

    def located(graph):
        model = onnx.load(str(root / "int8" / graph), load_external_data=False)
        tables = [t for t in model.graph.initializer if t.name.endswith("_nbits")
                  and t.dims[0] == cfg.vocab_size]
        assert len(tables) == 1, graph
        return {e.key: e.value for e in tables[0].external_data}, list(tables[0].dims)
    head = located("lm_head.onnx")
    for graph in ("embed.onnx", "uncertainty.onnx"):
        assert located(graph) == head                     # same bytes of int8/weights.bin
    embed = onnx.load(str(root / "int8" / "embed.onnx"), load_external_data=False)
    assert "token_embedding_quantized" not in {t.name for t in embed.graph.initializer}
    ids = np.arange(cfg.vocab_size, dtype=np.int64)
    zero = np.zeros(cfg.vocab_size, np.int64)             # position 0 for every row
    feeds = {"input_ids": ids, "positions": zero}
    out8 = ort.InferenceSession(str(root / "int8" / "embed.onnx")).run(None, feeds)[0][0]
    out32 = ort.InferenceSession(str(root / "embed.onnx")).run(None, feeds)[0][0]
    lm = onnx.load(str(root / "int8" / "lm_head.onnx"))
    scales = next(numpy_helper.to_array(t) for t in lm.graph.initializer
                  if t.name.endswith("_nbits_scale")).reshape(cfg.vocab_size, -1)
    blocks = scales.shape[1]
    row_step = np.repeat(scales, cfg.hidden_size // blocks, axis=1)
    position = [numpy_helper.to_array(t) for t in embed.graph.initializer
                if t.name == "position_embedding_scale"][0]
    assert (np.abs(out8 - out32) <= row_step / 2 + float(position) / 2 + 1e-6).all()


def test_nbits_block_size_is_the_largest_that_divides_the_model():
    from types import SimpleNamespace
    from lantern_edge.quantization.api import _block_size
    shape = lambda hidden, inner: SimpleNamespace(hidden_size=hidden, intermediate_size=inner)  # noqa: E731
    assert _block_size(shape(256, 768), None) == 128          # the default model
    assert _block_size(shape(96, 192), None) == 32
    assert _block_size(shape(256, 768), 256) == 256           # asked, and it divides both
    with pytest.raises(QuantizationError, match="--mode dynamic"):
        _block_size(shape(24, 40), None)
