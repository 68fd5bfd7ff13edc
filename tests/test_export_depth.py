"""Export of the depth machinery: both recursion orders, input injection (inject.onnx),
continuation of a token through the step graphs, and the depth probe in uncertainty.onnx."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lantern_edge.export.graphs import uncertainty_graph
from lantern_edge.model.incremental import IncrementalDecoder

from contract_driver import ContractDriver
from depth_models import depth_model, sequence_ids

WEIGHTS = np.array([1.0, 0.5, 0.5], np.float32)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def exported(depth_artifacts):
    return depth_artifacts


def test_manifest_records_order_injection_probe_and_recorded_parity(exported):
    model, root = exported
    cfg = model.config
    manifest = json.loads((root / "lantern.json").read_text())
    config = manifest["model_config"]
    assert (config["recursion_order"], config["input_injection"], config["depth_probe_hidden"]) \
        == (cfg.recursion_order, cfg.input_injection, 16)
    assert manifest["controller"]["inject_think"] is True
    assert {"deep_trigger", "tau_probe"} <= set(manifest["controller"])
    graphs = manifest["graphs"]["fp32"]
    assert ("inject" in graphs) == cfg.input_injection
    assert [o["name"] for o in graphs["uncertainty"]["outputs"]][-1] == "p_benefit"
    assert "hidden" in [i["name"] for i in graphs["uncertainty"]["inputs"]]
    assert all(value <= 1e-4 for value in manifest["parity"].values()), manifest["parity"]


def test_model_onnx_follows_the_recursion_order(exported):
    model, root = exported
    ids = sequence_ids()[None]
    got = ort.InferenceSession(str(root / "model.onnx")).run(None, {"input_ids": ids})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(ids), model.config.steps_base).logits.numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_step_graphs_continue_tokens_like_the_reference(exported):
    """Decode 3x past the window at steps_base; every fourth token (THINK at 12 among them)
    continued to steps_reasoning; then the block calls a continuation costs."""
    model, root = exported
    cfg = model.config
    ids = sequence_ids()
    driver, reference = ContractDriver(root), IncrementalDecoder(model)
    worst = np.abs(driver.feed(ids[:5], 2) - reference.forward(torch.from_numpy(ids[:5]), 2)
                   .logits[0].numpy()).max()
    for t in range(5, len(ids)):
        got = driver.feed(ids[t:t + 1], cfg.steps_base)
        want = reference.forward(torch.from_numpy(ids[t:t + 1]), cfg.steps_base)
        if t % 4 == 0:
            calls = driver.calls
            got, want = driver.deepen(cfg.steps_reasoning), reference.deepen(cfg.steps_reasoning)
            # cycle order: the missing cycles only; sequence order: block 0 resumes, block 1 re-runs
            expected = ((cfg.steps_reasoning - cfg.steps_base) * cfg.num_blocks
                        if cfg.recursion_order == "cycle"
                        else cfg.steps_reasoning - cfg.steps_base
                        + cfg.steps_reasoning * (cfg.num_blocks - 1))
            assert driver.calls - calls == expected
        worst = max(worst, np.abs(got - want.logits[0].numpy()).max())
    assert worst <= 1e-4


def test_greedy_tokens_with_continuation_and_think_match_the_reference(exported):
    """Greedy decoding 3x past the window through the graphs and through the reference: THINK
    injected at one step, continuation at others; identical tokens. (The untrained model
    cycles through a few tokens, so the last three emitted are excluded: still deterministic.)"""
    model, root = exported
    cfg = model.config
    driver, reference = ContractDriver(root), IncrementalDecoder(model)
    prompt = sequence_ids()[:4]
    got_logits = driver.feed(prompt, cfg.steps_base)[-1]
    want_logits = reference.forward(torch.from_numpy(prompt), cfg.steps_base).logits[0, -1]
    got_tokens, want_tokens = [], []
    for step in range(3 * cfg.window_size):
        if step % 5 == 2:                                   # very high: continue deeper
            got_logits = driver.deepen(cfg.steps_reasoning)[-1]
            want_logits = reference.deepen(cfg.steps_reasoning).logits[0, -1]
        elif step == 9:                                     # very high: THINK
            got_logits = driver.feed(np.array([cfg.think_token_id]), cfg.steps_reasoning)[-1]
            want_logits = reference.forward(torch.tensor([cfg.think_token_id]),
                                            cfg.steps_reasoning).logits[0, -1]
        for banned in [cfg.think_token_id] + got_tokens[-3:]:
            got_logits[banned] = want_logits[banned] = -np.inf
        got, want = int(np.argmax(got_logits)), int(torch.argmax(want_logits))
        got_tokens.append(got)
        want_tokens.append(want)
        got_logits = driver.feed(np.array([got]), cfg.steps_base)[-1]
        want_logits = reference.forward(torch.tensor([want]), cfg.steps_base).logits[0, -1]
    assert got_tokens == want_tokens
    assert len(set(got_tokens)) > 3


def test_artifacts_reimport_with_injection_and_probe(exported):
    from lantern_edge.export.reimport import checkpoint_from_artifacts
    model, root = exported
    back = checkpoint_from_artifacts(root)
    state = model.state_dict()
    assert set(back.state_dict) == set(state)
    for name, tensor in state.items():
        torch.testing.assert_close(back.state_dict[name], tensor, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("probe_k, top_k", [(10, 10), (4, 10), (12, 5)])
def test_probe_in_the_uncertainty_graph_matches_the_reference(probe_k, top_k):
    model = depth_model("cycle", True, probe=16, probe_top_k=probe_k, seed=1)
    rng = np.random.default_rng(0)
    hidden = rng.normal(0, 2, (6, 32)).astype(np.float32)
    logits = rng.normal(0, 3, (6, 64)).astype(np.float32)
    session = ort.InferenceSession(
        uncertainty_graph(model.token_embedding.weight, top_k, 18, model).SerializeToString())
    out = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"logits": logits, "weights": WEIGHTS, "hidden": hidden})))
    with torch.no_grad():
        normed = model.final_norm(torch.from_numpy(hidden))
        want = model.depth_probe(normed, torch.from_numpy(logits), model.token_embedding.weight)
    assert np.abs(out["p_benefit"] - want.numpy()).max() <= 1e-5
    assert np.ptp(out["p_benefit"]) > 1e-3                    # it reads its inputs
    plain = ort.InferenceSession(
        uncertainty_graph(model.token_embedding.weight, top_k, 18).SerializeToString())
    for name, value in zip(("entropy", "p_max", "dispersion", "score"),
                           plain.run(None, {"logits": logits, "weights": WEIGHTS})):
        assert np.abs(out[name] - value).max() <= 1e-6, name      # the signals are unchanged
