"""The runtime's depth machinery: continuation in the very-high band (fewer block calls, the same
tokens as the reference), both recursion orders, input injection, the depth probe and its
trigger, and the THINK default read from the manifest."""

import numpy as np
import pytest
import torch

from lantern_edge import Runtime
from lantern_edge.benchmark.bands import FORCED
from lantern_edge.model.incremental import IncrementalDecoder

from depth_models import sequence_ids


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def reference_greedy(model, prompt, n, think: bool):
    """Greedy decoding with every token sent deep, over the torch reference: continuation
    (think=False) or a THINK token at steps_reasoning (think=True, while a global slot is
    free), THINK never emitted."""
    cfg = model.config
    decoder = IncrementalDecoder(model)
    decoder.forward(torch.from_numpy(prompt), cfg.steps_base)
    tokens = []
    for _ in range(n):
        room = decoder.buffers[0][0].glob_count < cfg.max_global_tokens
        if think and room:
            logits = decoder.forward(torch.tensor([cfg.think_token_id]), cfg.steps_reasoning)
        else:
            logits = decoder.deepen(cfg.steps_reasoning)
        logits = logits.logits[0, -1].clone()
        logits[cfg.think_token_id] = float("-inf")
        tokens.append(int(logits.argmax()))
        decoder.forward(torch.tensor([tokens[-1]]), cfg.steps_base)
    return tokens


@pytest.mark.parametrize("think", [False, True])
def test_forced_deep_greedy_matches_the_reference_past_the_window(depth_artifacts, think):
    """3x the window with every token deep: continued (or THINK), the reference's tokens."""
    model, root = depth_artifacts
    cfg = model.config
    runtime = Runtime(root)
    prompt = sequence_ids()[:4]
    n = 3 * cfg.window_size + 2
    result = runtime.generate(prompt.tolist(), max_new_tokens=n, eos_token_id=None,
                              inject_think=think, **FORCED["very_high"])
    assert result.token_ids == reference_greedy(model, prompt, n, think)
    if not think:
        assert all(t.deepened and not t.think_injected for t in result.trace)


def test_continuation_runs_fewer_block_iterations(depth_artifacts):
    """Forced deep, no THINK: cycle order costs steps_reasoning per block; sequence order the
    rest of block 0 plus block 1 again (2 + 2 and 2 + 4 at steps 2/4)."""
    model, root = depth_artifacts
    cfg = model.config
    result = Runtime(root).generate(sequence_ids()[:4].tolist(), max_new_tokens=12,
                                    eos_token_id=None, inject_think=False, **FORCED["very_high"])
    expected = [2, 2] if cfg.recursion_order == "cycle" else [2, 4]
    assert all(t.iterations == [2, 2] and t.deep_iterations == expected for t in result.trace)
    per_block = 4.0 if cfg.recursion_order == "cycle" else 5.0
    assert result.stats["mean_iterations_per_block"] == pytest.approx(per_block)


def test_probe_trigger_and_p_benefit_in_the_trace(depth_artifacts):
    model, root = depth_artifacts
    cfg = model.config
    runtime = Runtime(root)
    prompt = sequence_ids()[:4].tolist()
    # tau_probe 0: every token deep whatever U says; 1: none (p_benefit < 1 for this model)
    everyone = runtime.generate(prompt, max_new_tokens=10, eos_token_id=None, inject_think=False,
                                deep_trigger="probe", tau_probe=0.0, **FORCED["confident"])
    nobody = runtime.generate(prompt, max_new_tokens=10, eos_token_id=None,
                              deep_trigger="probe", tau_probe=1.0, **FORCED["very_high"])
    assert all(t.deepened and t.band == "very_high" for t in everyone.trace)
    assert not any(t.deepened or t.think_injected for t in nobody.trace)
    # p_benefit is the probe's output on the cheap pass, for every token
    decoder = IncrementalDecoder(model)
    out = decoder.forward(torch.tensor(prompt), cfg.steps_base)
    for entry in nobody.trace:
        with torch.no_grad():
            want = float(model.depth_probe(out.hidden[0, -1:], out.logits[0, -1:],
                                           model.token_embedding.weight)[0])
        assert entry.p_benefit == pytest.approx(want, abs=1e-5)
        out = decoder.forward(torch.tensor([entry.token_id]), cfg.steps_base)


def test_inject_think_defaults_to_the_manifest(depth_artifacts, tiny_artifacts):
    _, root = depth_artifacts
    assert Runtime(root).options().inject_think is True           # written by the fixture
    shipped = Runtime()
    assert shipped.options().inject_think is False                # a manifest without the field
    result = shipped.generate("def f(x):", max_new_tokens=3, **FORCED["very_high"])
    assert all(t.deepened and not t.think_injected and t.p_benefit is None for t in result.trace)


def test_probe_trigger_needs_a_probe(tiny_artifacts):
    with pytest.raises(ValueError, match="deep_trigger='probe' needs a model with a depth probe"):
        Runtime(tiny_artifacts).generate("def", max_new_tokens=1, deep_trigger="probe")


def test_sequence_order_forced_deep_costs_five_iterations_per_block_not_six(tiny_artifacts):
    """Sequence order, steps 2/4, 2 blocks (the tiny preset): a continued token runs block 0
    two more iterations and block 1 all four again: 5 per block, not the 6 of a re-run."""
    result = Runtime(tiny_artifacts).generate([5, 6, 7], max_new_tokens=8, eos_token_id=None,
                                              inject_think=False, **FORCED["very_high"])
    assert [t.deep_iterations for t in result.trace] == [[2, 4]] * 8
    assert result.stats["mean_iterations_per_block"] == pytest.approx(5.0)
    assert np.isfinite([t.u for t in result.trace]).all()


@pytest.mark.parametrize("path", ["io_binding", "kv_on_device"])
def test_decode_paths_continue_inject_and_probe_like_the_plain_path(depth_artifacts, path):
    """IO binding and the device-resident KV (on CPU OrtValues) against session.run, in every
    order with and without injection: mixed depth, halting, THINK, continuation, p_benefit."""
    from lantern_edge.runtime.artifacts import open_artifacts
    from lantern_edge.runtime.decode import Sequence
    from lantern_edge.runtime.engine import Engine
    _, root = depth_artifacts
    artifacts = open_artifacts(root)
    cfg = artifacts.model_config
    fast = Sequence(Engine(artifacts, kv_on_device=path == "kv_on_device"))
    # the same KV layout (the device path has no fused pass, hence no scratch slot)
    plain = Sequence(Engine(artifacts, shared_kv=fast.engine.kv_scratch))
    plain.one = plain.host
    weights = np.array([1.0, 0.5, 0.5], np.float32)
    ids = sequence_ids()
    for seq in (fast, plain):
        seq.feed(ids[:4], cfg.steps_base)
    for t in range(4, len(ids)):
        depth, threshold = (cfg.steps_base, cfg.steps_reasoning, 1)[t % 3], (0.5 if t % 2 else None)
        a, b = fast.feed([ids[t]], depth, threshold), plain.feed([ids[t]], depth, threshold)
        if t % 4 == 0 and max(a.iterations) < cfg.steps_reasoning:
            a, b = fast.deepen(a, cfg.steps_reasoning), plain.deepen(b, cfg.steps_reasoning)
            assert a.ran == b.ran and sum(a.ran) < cfg.num_blocks * cfg.steps_reasoning
        assert (a.iterations, a.position, a.is_global) == (b.iterations, b.position, b.is_global)
        np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-5)
        sa = fast.signals(a.logits[-1:], weights, a.hidden)
        sb = plain.signals(b.logits[-1:], weights, b.hidden)
        assert set(sa) == set(sb) and "p_benefit" in sa
        for name in sa:
            np.testing.assert_allclose(sa[name], sb[name], rtol=1e-5, atol=1e-5)
    if path == "kv_on_device":
        fast.device.download()
    np.testing.assert_allclose(fast.kv.keys, plain.kv.keys, rtol=0, atol=1e-5)
    assert np.array_equal(fast.kv.slot_pos, plain.kv.slot_pos)
    assert fast.kv.global_count == plain.kv.global_count == 3


def test_depth_fields_may_be_absent_and_a_missing_inject_graph_is_named(
        depth_artifacts, tmp_path):
    import json
    import shutil
    from lantern_edge import ArtifactError
    from lantern_edge.runtime.artifacts import open_artifacts
    model, root = depth_artifacts
    copy = shutil.copytree(root, tmp_path / "art")
    manifest = json.loads((copy / "lantern.json").read_text())
    if model.config.input_injection:
        del manifest["graphs"]["fp32"]["inject"]
        (copy / "lantern.json").write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match="input_injection=True but the inject graph is "
                                                "missing"):
            open_artifacts(copy)
        return
    # fields older manifests lack take their defaults: the field checks pass, and the check of
    # the model.onnx copy (which has them) is what notices this edit
    for key in ("recursion_order", "input_injection"):
        manifest["model_config"].pop(key)
    (copy / "lantern.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="model_config differs from the copy in model.onnx"):
        open_artifacts(copy)
