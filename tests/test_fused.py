"""The fused cheap pass (runtime/fusion.py, bindings.FusedPass): one session call per token that
computes what the separate graph calls compute. Held against the unfused runtime (`fuse=False`)
on the shipped model (fp32, INT8) and on small models of both recursion orders with and without
input injection: the same tokens and traces, the same logits, signals, KV, and the states
continuation and MC read; and the fused session must actually run. "The same" is bitwise with
the exported attention spliced in (INT8, and `shared_kv=False`), and within 1e-4 with fp32's
GroupQueryAttention on a shared KV buffer (runtime/attention.py)."""

import dataclasses

import numpy as np
import onnx
import pytest

from lantern_edge import Runtime
from lantern_edge.runtime.artifacts import open_artifacts
from lantern_edge.runtime.decode import Sequence
from lantern_edge.runtime.engine import Engine
from lantern_edge.runtime.generate import DEFAULT_MODEL_DIR

from depth_models import sequence_ids

WEIGHTS = np.array([1.0, 0.5, 0.5], np.float32)


def traces(result) -> list[dict]:
    """The trace entries without their wall time."""
    return [{k: v for k, v in dataclasses.asdict(t).items() if k != "microseconds"}
            for t in result.trace]


def assert_traces_match(a, b, exact: bool) -> None:
    """Bitwise-equal traces, or (exact=False) every float within 1e-4 and the rest equal."""
    ta, tb = traces(a), traces(b)
    if exact:
        assert ta == tb
        return
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-5), key
            else:
                assert x[key] == y[key], key


def assert_same(x, y, exact: bool, name: str) -> None:
    if exact:
        assert np.array_equal(x, y), name
    else:
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4, err_msg=name)


def generate(rt: Runtime, prompt, **options):
    """A generation on a fresh Sequence of rt, and that Sequence's calls per graph."""
    seq = Sequence(rt.engine)
    rt._idle[:] = [seq]                                # the generation takes this state
    result = rt.generate(prompt, ignore_eos=True, **options)
    assert rt._idle == [seq]
    return result, seq.timer.calls_by_graph


@pytest.fixture(scope="module", params=["fp32", "int8"])
def shipped(request):
    return (Runtime(precision=request.param),
            Runtime(precision=request.param, fuse=False))


RUNS = {"fixed depth": dict(adaptive=False),
        "adaptive greedy": dict(adaptive=True, seed=0),   # the seed fixes the MC-dropout masks
        "adaptive sampled": dict(adaptive=True, do_sample=True, temperature=1.2, top_p=0.95,
                                 seed=3)}


@pytest.mark.parametrize("run", RUNS)
def test_shipped_model_fused_tokens_and_traces_equal_the_separate_calls(shipped, run):
    fused, plain = shipped
    tokens = 48
    a, calls = generate(fused, "def fibonacci(n):", max_new_tokens=tokens, **RUNS[run])
    b, plain_calls = generate(plain, "def fibonacci(n):", max_new_tokens=tokens, **RUNS[run])
    assert a.token_ids == b.token_ids and len(a.token_ids) == tokens
    # fp32 attends with GroupQueryAttention (within 1e-4), INT8 with the exported nodes (bitwise)
    assert fused.engine.kv_scratch == (fused.precision == "fp32")
    assert_traces_match(a, b, exact=not fused.engine.kv_scratch)
    cfg = fused.config
    # every token after the first is fed through the fused graph, and only there: the block
    # graphs run for the prompt (one call per (block, iteration)) and the deep band only
    deep = sum(sum(t.deep_iterations or ()) for t in a.trace)
    assert calls["fused"] == tokens - 1
    assert calls["block"] == cfg.num_blocks * cfg.steps_base + deep
    assert "fused" not in plain_calls
    assert plain_calls["block"] == cfg.num_blocks * cfg.steps_base * tokens + deep
    # adaptive: the signals came with the fused call, the uncertainty session ran once (the
    # prompt's token); fixed depth: never
    assert calls.get("uncertainty", 0) == (0 if run == "fixed depth" else 1)
    if run != "fixed depth":
        assert sum(t.band in ("high", "very_high") for t in a.trace) > 0   # MC and deepen ran


def feed_both(root, steps: int, deepen_every: int = 0, shared_kv: bool = False):
    """Feed the same ids one at a time into a fused and an unfused Sequence of root's model,
    alternating the fixed-depth and the adaptive fused graph; compare everything each returns
    (bitwise, or within 1e-4 with GroupQueryAttention)."""
    artifacts = open_artifacts(root)
    cfg = artifacts.model_config
    fast = Sequence(Engine(artifacts, shared_kv=shared_kv))
    plain = Sequence(Engine(open_artifacts(root), fuse=False))
    assert fast.fused is not None and plain.fused is None
    exact = not shared_kv
    assert fast.engine.kv_scratch == shared_kv and fast.engine.fused[0][0].shared_kv == shared_kv
    ids = sequence_ids(steps)
    for seq in (fast, plain):
        seq.feed(ids[:4], cfg.steps_base)
    worst = 0.0
    for t in range(4, len(ids)):
        fast.signal_weights = plain.signal_weights = WEIGHTS if t % 2 else None
        a, b = fast.feed([ids[t]], cfg.steps_base), plain.feed([ids[t]], cfg.steps_base)
        worst = max(worst, float(np.abs(a.logits - b.logits).max()))
        assert (a.iterations, a.position, a.is_global, a.ran) == \
            (b.iterations, b.position, b.is_global, b.ran)
        assert_same(np.array(a.halting, float), np.array(b.halting, float), exact, "halting")
        for name in ("logits", "mc_input", "resume", "embedded", "hidden"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert_same(x, y, exact, name)
        sa = fast.signals(a.logits[-1:], WEIGHTS, a.hidden)
        sb = plain.signals(b.logits[-1:], WEIGHTS, b.hidden)
        assert set(sa) == set(sb)
        for name in sa:
            assert_same(sa[name], sb[name], exact, name)
        if deepen_every and t % deepen_every == 0:      # continuation from a fused token
            a, b = fast.deepen(a, cfg.steps_reasoning), plain.deepen(b, cfg.steps_reasoning)
            assert_same(a.logits, b.logits, exact, "deepened logits")
            assert a.ran == b.ran
    stored = plain.kv.keys.shape[3]                     # the scratch slot is fast's alone
    assert_same(fast.kv.keys[..., :stored, :], plain.kv.keys, exact, "keys")
    assert_same(fast.kv.values[..., :stored, :], plain.kv.values, exact, "values")
    assert np.array_equal(fast.kv.slot_pos[:stored], plain.kv.slot_pos)
    return fast, worst


@pytest.mark.parametrize("shared_kv", [False, True], ids=["spliced", "gqa"])
def test_depth_models_fused_pass_equals_the_separate_calls(depth_artifacts, shared_kv):
    """Both recursion orders, with and without input injection, a depth probe (p_benefit in
    the fused signals), THINK tokens (global slots) and continuation after fused tokens:
    bitwise with the spliced attention, within 1e-4 (measured ~1e-6) with
    GroupQueryAttention."""
    _, root = depth_artifacts
    fast, worst = feed_both(root, 30, deepen_every=5, shared_kv=shared_kv)
    assert worst == 0.0 if not shared_kv else 0.0 < worst <= 1e-4
    assert fast.timer.calls_by_graph["fused"] == 30 - 4
    assert "p_benefit" in fast.one.signal_buffers


def test_depth_models_generate_the_same_tokens_and_traces_fused(depth_artifacts):
    _, root = depth_artifacts
    fused, plain = Runtime(root), Runtime(root, fuse=False)
    ids = sequence_ids()[:10].tolist()
    for options in (dict(adaptive=False), dict(seed=1), dict(do_sample=True, seed=2)):
        a, calls = generate(fused, ids, max_new_tokens=24, **options)
        b, _ = generate(plain, ids, max_new_tokens=24, **options)
        assert a.token_ids == b.token_ids
        assert_traces_match(a, b, exact=not fused.engine.kv_scratch)
        assert calls["fused"] >= 1


def test_halting_other_depths_and_device_kv_keep_the_separate_calls(tiny_artifacts):
    """The fused graph is the cheap pass without halting: a halting threshold or another
    depth must take the separate calls (and still give the unfused tokens; on fp32 the
    separate calls of a fusing runtime attend over the scratch slot too, masked: the same
    numbers to ~1e-6, not bitwise)."""
    cases = [(DEFAULT_MODEL_DIR, "import os\n", dict(steps_base=1, adaptive=True, seed=0)),
             (DEFAULT_MODEL_DIR, "import os\n", dict(steps_base=1, adaptive=False)),
             (tiny_artifacts, [5, 6, 7], dict(use_halting=True, adaptive=True, seed=0)),
             (tiny_artifacts, [5, 6, 7], dict(steps_base=3, adaptive=False))]
    for root, prompt, options in cases:
        fused, plain = Runtime(root), Runtime(root, fuse=False)
        a, calls = generate(fused, prompt, max_new_tokens=12, **options)
        b, _ = generate(plain, prompt, max_new_tokens=12, **options)
        assert a.token_ids == b.token_ids
        assert_traces_match(a, b, exact=not fused.engine.kv_scratch)
        assert "fused" not in calls, options
    device = Engine(open_artifacts(DEFAULT_MODEL_DIR), kv_on_device=True)
    assert device.fused is None and "host" in device.unfused


@pytest.mark.parametrize("shared_kv", [False, True], ids=["spliced", "gqa"])
def test_fused_graph_shares_weights_and_checks(tmp_path, shared_kv):
    """One copy of every weight (the iterations of a block read the same initializers), every
    node of every instance present (with GroupQueryAttention: each block's 17 attention nodes
    replaced by 6), and a graph the ONNX checker accepts."""
    from lantern_edge.runtime.attention import EXPORTED_ATTENTION
    artifacts = open_artifacts(DEFAULT_MODEL_DIR)
    engine = Engine(artifacts, shared_kv=shared_kv)
    cfg = engine.config
    graph = onnx.load_from_string(engine.fused[1][0].model)
    names = [t.name for t in graph.graph.initializer]
    assert len(names) == len(set(names))
    for weight in ("block0.qkv_weight", "block1.down_weight", "token_embedding",
                   "position_embedding", "final_norm.weight"):
        assert names.count(weight) == 1, weight
    assert [n for n in names if "/" in n] == ["fused/rows_of_logits"]   # nothing per instance
    def nodes(name: str) -> int:
        return len(onnx.load_from_string(artifacts.blobs[name]).graph.node)
    blocks = sum(nodes(artifacts.graph_name("fp32", "blocks", b)) for b in range(cfg.num_blocks))
    expected = (sum(nodes(artifacts.graph_name("fp32", role))
                    for role in ("embed", "lm_head", "uncertainty"))
                + cfg.steps_base * blocks + 2)   # + the softmax, the Reshape of logits into the head
    if shared_kv:
        instances = cfg.steps_base * cfg.num_blocks
        expected -= instances * (sum(EXPORTED_ATTENTION.values()) - 6)
        ops = [n.op_type for n in graph.graph.node]
        assert ops.count("GroupQueryAttention") == instances
        assert [i.name for i in graph.graph.input if i.name.startswith("past_key")] == \
            [f"past_key.{b}.{i}" for b, i in engine.fused[1][0].kv]
    assert len(graph.graph.node) == expected
    (tmp_path / "fused.onnx").write_bytes(engine.fused[1][0].model)   # beside its weights
    (tmp_path / "weights.bin").write_bytes((DEFAULT_MODEL_DIR / "weights.bin").read_bytes())
    onnx.checker.check_model(str(tmp_path / "fused.onnx"), full_check=True)
    assert [i.name for i in graph.graph.input][:3] == ["input_ids", "positions", "attn_bias"]


def test_unspliceable_graphs_fall_back_with_a_reason():
    from lantern_edge.runtime.fusion import cheap_pass_graph
    artifacts = open_artifacts(DEFAULT_MODEL_DIR)
    cfg = artifacts.model_config
    blobs = artifacts.blobs
    graphs = {"embed": blobs["embed.onnx"], "blocks": [b"\x00garbage"] * cfg.num_blocks,
              "lm_head": blobs["lm_head.onnx"], "uncertainty": blobs["uncertainty.onnx"]}
    with pytest.raises(ValueError, match="cannot be spliced"):
        cheap_pass_graph(cfg, graphs, signals=False)


def test_int8_fused_graph_shares_every_weight():
    """The shipped INT8 (MatMulNBits): the iterations of a block read one copy of each weight,
    so ONNX Runtime packs it once and the second iteration finds it in cache."""
    engine = Engine(open_artifacts(DEFAULT_MODEL_DIR, "int8"), "int8")
    graph = onnx.load_from_string(engine.fused[0][0].model)
    names = [t.name for t in graph.graph.initializer]
    assert len(names) == len(set(names))
    for weight in ("qkv_weight", "out_weight", "gate_up_weight", "down_weight"):
        for b in (0, 1):
            name = f"block{b}.{weight}_nbits"
            assert names.count(name) == 1, name
            assert sum(list(n.input[1:2]) == [name] for n in graph.graph.node) == 2, name
    assert not [n for n in names if "/" in n and "nbits" in n]        # no weight per instance


def test_dynamic_int8_fused_graph_shares_all_but_the_dequantized_weights(tmp_path):
    """The dynamic INT8 mode: the MatMulInteger weights are shared like the fp32 ones; a weight
    that goes through DequantizeLinear (the down projection) is named per instance, since ORT
    fuses each DequantizeLinear into its one MatMul (as in the separate graphs) and bitwise
    parity needs that same kernel."""
    import shutil
    from lantern_edge.quantization.api import quantize_artifacts
    root = shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "model")
    quantize_artifacts(root, mode="dynamic", force=True, evaluate=False)
    engine = Engine(open_artifacts(root, "int8"), "int8")
    graph = onnx.load_from_string(engine.fused[0][0].model)
    names = [t.name for t in graph.graph.initializer]
    assert names.count("block0.qkv_weight_quantized") == 1
    assert names.count("block1.gate_up_weight_quantized") == 1
    assert sorted(n for n in names if n.endswith("down_weight_int8")) == [
        f"block{b}.{i}/block{b}.down_weight_int8" for b in (0, 1) for i in (0, 1)]


@pytest.mark.parametrize("threads", [1, 2])
def test_only_the_fused_sessions_spin_and_only_with_a_second_thread(threads):
    """A token is one call of a fused session: with 2+ threads its pool spins between calls;
    every other session (several may run per token) never spins, so they cannot fight."""
    engine = Engine(open_artifacts(DEFAULT_MODEL_DIR), intra_op_threads=threads)
    key = "session.intra_op.allow_spinning"

    def spins(session) -> str:
        return session.get_session_options().get_session_config_entry(key)
    assert [spins(s) for _, s in engine.fused] == ["1" if threads > 1 else "0"] * 2
    others = [*engine.blocks, engine.mc, engine.embed, engine.lm_head, engine.uncertainty]
    assert {spins(s) for s in others} == {"0"}


@pytest.mark.parametrize("opset", [17, 18])
def test_every_pass_gives_the_softmax_of_its_logits(tiny_checkpoint, tmp_path, opset):
    """The LM head (edited at load, fusion.lm_head_graph) and the fused graph give the softmax
    of each token's logits, which the controller reads the chosen token's probability from:
    the prompt (host pass), bound one-token calls and fused calls, at the oldest and the
    default opset the exporter writes."""
    from lantern_edge.export.api import export_checkpoint
    export_checkpoint(tiny_checkpoint, tmp_path / "art", opset=opset)
    for fuse in (True, False):
        seq = Sequence(Engine(open_artifacts(tmp_path / "art"), fuse=fuse))
        assert seq.engine.has_probabilities
        depth = seq.config.steps_base
        for ids in ([1, 2, 3, 4], [5], [6], [7]):
            step = seq.feed(ids, depth)         # its logits: valid until the next feed
            row = step.logits[-1].astype(np.float64)
            expected = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            assert step.probabilities.shape == row.shape
            assert np.abs(step.probabilities - expected).max() < 1e-6
        assert seq.timer.calls_by_graph.get("fused", 0) == (3 if fuse else 0)


def test_trace_probability_is_the_softmax_of_the_logits():
    """The trace's probability (read from the LM head's softmax) is softmax(logits)[token]."""
    rt = Runtime()
    gen = rt.generator("def parse(line):", adaptive=False)
    for _ in range(12):
        row = gen.logits.astype(np.float64)
        token = gen.step()
        softmax = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        assert token.trace.probability == pytest.approx(softmax[token.token_id], rel=1e-5)


def test_an_lm_head_that_cannot_be_edited_loads_as_it_is(monkeypatch):
    """Where the softmax cannot be added to the LM head, the runtime keeps the head as it is and
    reads the probability from the logits: the same tokens, probabilities within 1e-5."""
    from lantern_edge.runtime import engine as engine_module
    from lantern_edge.runtime.fusion import lm_head_graph
    with pytest.raises(ValueError, match="cannot be edited"):
        lm_head_graph(b"\x00garbage", 4096)
    expected = Runtime(fuse=False).generate("import os\n", max_new_tokens=16, adaptive=False)

    def refuse(graph, vocab):
        raise ValueError("the LM head graph cannot be edited (test)")
    monkeypatch.setattr(engine_module, "lm_head_graph", refuse)
    for fuse in (False, True):
        rt = Runtime(fuse=fuse)
        assert not rt.engine.has_probabilities
        got = rt.generate("import os\n", max_new_tokens=16, adaptive=False)
        assert got.token_ids == expected.token_ids
        for a, b in zip(got.trace, expected.trace):
            assert a.probability == pytest.approx(b.probability, rel=1e-5)


def _block_feeds(cfg, stored: int, rng) -> dict:
    """One new token's inputs for a block graph over `stored` random KV slots, the newest
    ones masked, the token seeing itself."""
    heads, head_dim = cfg.num_heads, cfg.head_dim
    bias = np.zeros((1, stored + 1), np.float32)
    bias[0, stored - 20:stored] = -np.inf
    return {"hidden": rng.standard_normal((1, 1, cfg.hidden_size)).astype(np.float32),
            "positions": np.array([77], np.int64),
            "past_key": rng.standard_normal((heads, stored, head_dim)).astype(np.float32),
            "past_value": rng.standard_normal((heads, stored, head_dim)).astype(np.float32),
            "attn_bias": bias}


@pytest.mark.parametrize("model", ["shipped", "tiny"])
def test_shared_kv_block_is_the_exported_attention_writing_in_place(model, tiny_artifacts):
    """attention.shared_kv_block alone, against the exported block graph: the same hidden state
    (1e-5), and the new key/value written into the scratch slot of the buffer bound as both
    input and output, the stored slots untouched."""
    import onnxruntime as ort
    from lantern_edge.runtime.attention import shared_kv_block
    from lantern_edge.runtime.sessions import create_session, verified_bytes
    artifacts = open_artifacts(DEFAULT_MODEL_DIR if model == "shipped" else tiny_artifacts)
    cfg = artifacts.model_config
    stored = cfg.window_size + cfg.max_global_tokens
    path = artifacts.graph("fp32", "blocks", 0)
    exported = verified_bytes(artifacts, path)
    rewritten = shared_kv_block(exported, stored, cfg.num_heads, cfg.head_dim)
    assert "GroupQueryAttention" in [n.op_type for n in onnx.load_from_string(rewritten).graph.node]
    feeds = _block_feeds(cfg, stored, np.random.default_rng(0))
    cpu = ["CPUExecutionProvider"]
    reference = create_session(artifacts, path, ort.SessionOptions(), cpu)   # as exported
    expected = dict(zip([o.name for o in reference.get_outputs()], reference.run(None, feeds)))
    session = create_session(artifacts, path, ort.SessionOptions(), cpu, "fp32", rewritten)
    heads, head_dim = cfg.num_heads, cfg.head_dim
    buffers = {kind: np.zeros((1, heads, stored + 1, head_dim), np.float32)
               for kind in ("key", "value")}
    for kind in buffers:
        buffers[kind][0, :, :stored] = feeds[f"past_{kind}"]
    hidden = np.zeros((1, 1, cfg.hidden_size), np.float32)
    bias = np.concatenate([feeds["attn_bias"][:, :stored], [[-np.inf, 0.0]]], axis=1)
    binding = session.io_binding()
    for name, array in {"hidden": feeds["hidden"], "positions": feeds["positions"],
                        "attn_bias": bias.astype(np.float32),
                        "past_key": buffers["key"], "past_value": buffers["value"]}.items():
        binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
    binding.bind_output("hidden_out", "cpu", 0, np.float32, list(hidden.shape), hidden.ctypes.data)
    for kind, array in buffers.items():
        binding.bind_output(f"present_{kind}", "cpu", 0, np.float32, list(array.shape),
                            array.ctypes.data)
    for name in {o.name for o in session.get_outputs()} - {"hidden_out", "present_key",
                                                          "present_value"}:
        binding.bind_output(name, "cpu")                    # halt, on models with halting
    session.run_with_iobinding(binding)
    np.testing.assert_allclose(hidden, expected["hidden_out"], atol=1e-5, rtol=1e-5)
    for kind in ("key", "value"):
        np.testing.assert_allclose(buffers[kind][0, :, stored], expected[kind][0, :, 0],
                                   atol=1e-6)
        assert np.array_equal(buffers[kind][0, :, :stored], feeds[f"past_{kind}"])


def test_an_attention_that_is_not_the_exporters_keeps_the_spliced_nodes(monkeypatch):
    """A scaled attention (one Mul more in it) is refused by name of the problem, and an Engine
    whose blocks cannot be rewritten keeps the exported attention: no scratch slot, bitwise
    the separate calls."""
    from lantern_edge.runtime import engine as engine_module
    from lantern_edge.runtime.attention import shared_kv_block
    from lantern_edge.runtime.sessions import verified_bytes
    artifacts = open_artifacts(DEFAULT_MODEL_DIR)
    cfg = artifacts.model_config
    model = onnx.load_from_string(verified_bytes(artifacts, artifacts.graph("fp32", "blocks", 0)))
    scores = next(n for n in model.graph.node if n.op_type == "Softmax")
    scores.input[0], original = "scaled_scores", scores.input[0]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.float32(0.5), "half"))
    model.graph.node.insert(list(model.graph.node).index(scores),
                            onnx.helper.make_node("Mul", [original, "half"], ["scaled_scores"]))
    with pytest.raises(ValueError, match="is the exporter's attention"):
        shared_kv_block(model.SerializeToString(), cfg.window_size + cfg.max_global_tokens,
                        cfg.num_heads, cfg.head_dim)

    def refuse(*args):
        raise ValueError("not the exporter's attention (test)")
    monkeypatch.setattr(engine_module, "shared_kv_block", refuse)
    fused, plain = Runtime(), Runtime(fuse=False)
    assert not fused.engine.kv_scratch and fused.engine.fused is not None
    assert fused.engine.spliced_attention == "not the exporter's attention (test)"
    a, calls = generate(fused, "def fibonacci(n):", max_new_tokens=16, adaptive=False)
    b, _ = generate(plain, "def fibonacci(n):", max_new_tokens=16, adaptive=False)
    assert calls["fused"] == 15 and a.token_ids == b.token_ids and traces(a) == traces(b)
    assert Runtime(precision="int8").engine.spliced_attention.startswith("INT8 keeps")


def test_a_groupqueryattention_onnxruntime_cannot_load_falls_back_to_the_exported(monkeypatch):
    """An onnxruntime that cannot run the rewritten attention (here: an op it does not know)
    loads the fused pass with the exported attention, and says why."""
    from lantern_edge.runtime import engine as engine_module
    real = engine_module.shared_kv_block

    def unknown_op(*args):
        return real(*args).replace(b"GroupQueryAttention", b"GroupQueryAttentioX")
    monkeypatch.setattr(engine_module, "shared_kv_block", unknown_op)
    fused = Runtime()
    assert fused.engine.fused is not None and not fused.engine.kv_scratch
    assert fused.engine.spliced_attention.startswith("GroupQueryAttention did not load")
    assert "GroupQueryAttentioX" in fused.engine.spliced_attention
    plain = Runtime(fuse=False)
    a, calls = generate(fused, "def fibonacci(n):", max_new_tokens=8, adaptive=False)
    b, _ = generate(plain, "def fibonacci(n):", max_new_tokens=8, adaptive=False)
    assert calls["fused"] == 7 and a.token_ids == b.token_ids and traces(a) == traces(b)


def test_a_rewrite_that_computes_something_else_is_caught_at_load(monkeypatch):
    """The exporter's nodes with other arithmetic (here GroupQueryAttention scaled by 0.5): the
    load-time check against the exported block refuses it, with the difference, and the fused
    pass keeps the exported attention."""
    import struct
    from lantern_edge.runtime import engine as engine_module
    from lantern_edge.runtime.protobuf import bytes_field, varint
    real = engine_module.shared_kv_block
    scale = bytes_field(1, "scale") + varint(2 << 3 | 5)

    def halved(*args):
        graph = real(*args)
        assert graph.count(scale + struct.pack("<f", 1.0)) == 1
        return graph.replace(scale + struct.pack("<f", 1.0), scale + struct.pack("<f", 0.5))
    monkeypatch.setattr(engine_module, "shared_kv_block", halved)
    runtime = Runtime()
    assert runtime.engine.fused is not None and not runtime.engine.kv_scratch
    assert runtime.engine.spliced_attention.startswith(
        "the rewritten attention differs from the exported one by")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_mc_pass_is_the_mc_step_then_the_lm_head_in_one_call(precision, monkeypatch):
    """The high band's MC samples: the MC step and the LM head spliced into one graph
    (fusion.mc_pass_graph) give the logits of the two graphs run one after the other, and the
    softmax of each sample; one call where there were two. A graph that cannot be spliced
    keeps the two calls."""
    from lantern_edge.runtime import engine as engine_module
    from lantern_edge.runtime.controller import dropout_masks
    from lantern_edge.runtime.fusion import mc_pass_graph

    def samples(engine):
        seq = Sequence(engine)
        step = seq.feed(Runtime().encode("def parse(line):").tolist(), engine.config.steps_base)
        masks = dropout_masks(engine.config, 5, seq.kv.window + seq.kv.globals, 7,
                              step.position)
        before = dict(seq.timer.calls_by_graph)
        out = seq.mc_distributions(step, masks)
        calls = {k: v - before.get(k, 0) for k, v in seq.timer.calls_by_graph.items()}
        return out, {k: v for k, v in calls.items() if v}

    artifacts = lambda: open_artifacts(DEFAULT_MODEL_DIR, precision)    # noqa: E731
    (logits, probs), calls = samples(Engine(artifacts(), precision))
    assert calls == {"mc_step": 1} and logits.shape == probs.shape == (5, 4096)
    with pytest.raises(ValueError, match="cannot be spliced"):
        mc_pass_graph(b"\x00garbage", b"", 4096)

    def refuse(*args):
        raise ValueError("the MC step and the LM head cannot be spliced (test)")
    monkeypatch.setattr(engine_module, "mc_pass_graph", refuse)
    separate = Engine(artifacts(), precision)
    assert not separate.mc_has_head
    (want, want_probs), calls = samples(separate)
    assert calls == {"mc_step": 1, "lm_head": 1}
    assert np.array_equal(logits, want) and np.array_equal(probs, want_probs)
    rows = want.astype(np.float64)
    expected = np.exp(rows - rows.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), rtol=1e-5,
                               atol=1e-7)
    assert np.abs(logits[0] - logits[1]).max() > 1e-3                  # the samples differ
