"""Depth as a continuation: recursion orders, input injection, exits and the depth probe in the
PyTorch reference (full forward vs incremental decoder vs continuation)."""

import pytest
import torch

from lantern_edge.model.config import ControllerConfig, ModelConfig
from lantern_edge.model.incremental import IncrementalDecoder
from lantern_edge.model.modeling import LanternModel

from depth_models import VARIANTS, depth_model
from depth_models import sequence_ids as _ids


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def sequence_ids() -> torch.Tensor:
    return torch.from_numpy(_ids())


def test_old_configs_load_as_sequence_order_without_injection_or_probe():
    data = ModelConfig(vocab_size=64).to_dict()
    for key in ("recursion_order", "input_injection", "depth_probe_hidden", "depth_probe_top_k"):
        data.pop(key)
    config = ModelConfig.from_dict(data)
    assert (config.recursion_order, config.input_injection, config.has_depth_probe) == \
        ("sequence", False, False)
    controller = ControllerConfig.from_dict({})
    assert (controller.deep_trigger, controller.tau_probe, controller.inject_think) == \
        ("u", 0.5, False)


@pytest.mark.parametrize("field, value, fragment", [
    ("recursion_order", "zigzag", "recursion_order must be one of ('sequence', 'cycle')"),
    ("input_injection", 1, "input_injection must be True or False"),
    ("depth_probe_hidden", -1, "depth_probe_hidden must be an int >= 0"),
    ("depth_probe_top_k", 1, "depth_probe_top_k must be an int in [2, vocab_size=64]")])
def test_bad_depth_fields_are_named(field, value, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        ModelConfig(vocab_size=64, **{field: value})


def test_schedules_and_injection_sites():
    seq = ModelConfig(vocab_size=16, hidden_size=8, num_heads=2, input_injection=True)
    cyc = ModelConfig(vocab_size=16, hidden_size=8, num_heads=2, input_injection=True,
                      recursion_order="cycle")
    assert seq.schedule(2) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert cyc.schedule(2) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [seq.injects(b, i) for b, i in seq.schedule(2)] == [False, True, False, True]
    assert [cyc.injects(b, i) for b, i in cyc.schedule(2)] == [True, False, True, False]


def test_cycle_order_is_a_different_function():
    ids = sequence_ids()[None]
    seq, cyc = depth_model("sequence", False), depth_model("cycle", False)
    with torch.no_grad():
        assert torch.equal(seq(ids, 1).logits, cyc(ids, 1).logits)     # one iteration: same
        assert (seq(ids, 2).logits - cyc(ids, 2).logits).abs().max() > 1e-2


@pytest.mark.parametrize("order, injection", VARIANTS)
def test_incremental_decode_matches_full_forward_at_mixed_depth(order, injection):
    model, ids = depth_model(order, injection), sequence_ids()
    depth = torch.tensor([4 if t % 3 == 0 else 1 if t % 7 == 0 else 2 for t in range(len(ids))])
    with torch.no_grad():
        full = model(ids[None], depth[None, None].expand(2, 1, -1)).logits[0]
    decoder = IncrementalDecoder(model)
    got = [decoder.forward(ids[:5], depth[:5]).logits[0]]
    got += [decoder.forward(ids[t:t + 1], int(depth[t])).logits[0] for t in range(5, len(ids))]
    assert float((torch.cat(got) - full).abs().max()) <= 1e-5


@pytest.mark.parametrize("order, injection", VARIANTS)
def test_continuing_a_token_equals_re_running_it_deep(order, injection):
    """deepen() == rewind + feed at steps_reasoning, on THINK (12, 19) and ordinary tokens,
    and every later token sees the same KV."""
    model, ids = depth_model(order, injection), sequence_ids()
    cont, rerun = IncrementalDecoder(model), IncrementalDecoder(model)
    deep = {3, 9, 12, 19, 26}
    worst = 0.0
    for t in range(len(ids)):
        a, b = cont.forward(ids[t:t + 1], 2), rerun.forward(ids[t:t + 1], 2)
        if t in deep:
            a = cont.deepen(4)
            rerun.rewind()
            b = rerun.forward(ids[t:t + 1], 4)
            assert cont.iterations == rerun.iterations == [4, 4]
            assert torch.equal(cont.mc_input, rerun.mc_input)
        worst = max(worst, float((a.logits - b.logits).abs().max()))
    assert worst <= 1e-5
    assert cont.buffers[0][0].glob_count == 3 == rerun.buffers[0][0].glob_count


def test_deepen_refuses_what_it_cannot_continue():
    decoder = IncrementalDecoder(depth_model("sequence", False))
    with pytest.raises(ValueError, match="nothing to deepen"):
        decoder.deepen(4)
    decoder.forward(torch.tensor([0, 5]), 2)
    with pytest.raises(ValueError, match=r"depth must be in \(2, steps_reasoning=4\]"):
        decoder.deepen(2)


@pytest.mark.parametrize("order, injection", VARIANTS)
def test_exits_at_every_depth_equal_the_forward_at_that_depth(order, injection):
    model, ids = depth_model(order, injection), sequence_ids()[None]
    with torch.no_grad():
        exits = model.exits(ids)
        assert len(exits) == model.config.steps_reasoning
        for d, out in enumerate(exits, start=1):
            assert float((out.logits - model(ids, d).logits).abs().max()) <= 1e-5


def test_injection_starts_as_the_identity_on_the_hidden_state():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, hidden_size=32, num_heads=4, intermediate_size=64,
                         window_size=8, max_position=32)
    plain = LanternModel(config).eval()
    injected = LanternModel(ModelConfig.from_dict({**config.to_dict(), "input_injection": True}))
    state = {**plain.state_dict(), **{k: v for k, v in injected.state_dict().items()
                                      if k.startswith("injection.")}}
    injected.load_state_dict(state)
    ids = torch.arange(4, 20)[None]
    with torch.no_grad():
        assert float((plain(ids, 4).logits - injected.eval()(ids, 4).logits).abs().max()) <= 1e-5


def test_depth_probe_reads_the_cheap_pass_and_stays_off_the_model():
    model, ids = depth_model("cycle", True, probe=16), sequence_ids()[None]
    out = model(ids, 2)
    p = model.depth_probe(out.hidden[0], out.logits[0], model.token_embedding.weight)
    assert p.shape == (ids.shape[1],) and bool(((p > 0) & (p < 1)).all())
    p.sum().backward()
    assert model.token_embedding.weight.grad is None          # inputs are detached
    assert model.depth_probe.hidden_layer.weight.grad is not None
    assert "depth_probe.hidden_layer.weight" in model.state_dict()


@pytest.mark.parametrize("order, injection", [("cycle", True), ("sequence", True)])
def test_training_runs_in_either_order_with_injection(tmp_path, order, injection):
    from lantern_edge.model.checkpoint import load_checkpoint
    from lantern_edge.model.training import PRESETS, TrainConfig, train
    out = tmp_path / "depth.pt"
    train(TrainConfig(**{**PRESETS["tiny"], "hidden_size": 32, "intermediate_size": 64,
                         "seq_len": 32, "batch_size": 4, "max_steps": 4, "eval_interval": 4,
                         "eval_batches": 1, "corpus_max_chars": 40_000, "warmup_steps": 1},
                      output=str(out), recursion_order=order, input_injection=injection),
          progress=False)
    ckpt = load_checkpoint(out)
    assert (ckpt.model_config.recursion_order, ckpt.model_config.input_injection) == \
        (order, injection)
    assert ckpt.controller_config.inject_think            # trained with THINK tokens
    model = ckpt.build_model()
    assert not torch.equal(model.injection.weight[:, 32:], torch.zeros(32, 32))   # it learned


@pytest.mark.parametrize("order, injection", [("cycle", True), ("sequence", True)])
def test_eval_deep_counterfactual_is_the_runtime_continuation(order, injection):
    """passes.isolated_deep (every token alone sent deep over the cheap context) gives each
    token the prediction the decoder's continuation gives it."""
    from lantern_edge.evaluation import passes
    model, ids = depth_model(order, injection), sequence_ids()[:20]
    outcome = passes.isolated_deep(model, ids[None], torch.roll(ids, -1)[None], think=False)
    for t in range(len(ids)):
        decoder = IncrementalDecoder(model)
        decoder.forward(ids[:t + 1], 2)
        logits = decoder.deepen(4).logits[0, -1]
        logits[model.config.think_token_id] = float("-inf")
        assert int(torch.argmax(logits)) == int(outcome.top1[0, t])
