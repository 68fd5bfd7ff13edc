"""The reference model: config validation, upstream parity, incremental == full forward."""

import re

import numpy as np
import pytest
import torch

from lantern_edge.model.checkpoint import load_checkpoint
from lantern_edge.model.config import ControllerConfig, ModelConfig
from lantern_edge.model.incremental import IncrementalDecoder
from lantern_edge.model.modeling import LanternModel


@pytest.fixture(scope="module")
def upstream_model(upstream_dir):
    return load_checkpoint(upstream_dir / "checkpoint.pt").build_model()


@pytest.mark.parametrize("field, value, fragment", [
    ("num_heads", 5, "hidden_size must be divisible by num_heads=5"),
    ("window_size", 0, "window_size must be an int >= 1"),
    ("steps_reasoning", 1, "steps_reasoning must be an int >= steps_base=2"),
    ("think_token_id", 64, "think_token_id must be None or an id in [0, vocab_size=64)"),
    ("rope_style", "interleaved", "rope_style must be one of"),
    ("dropout", 1.0, "dropout must be in [0, 1)"),
])
def test_config_rejects_bad_values_naming_the_field(field, value, fragment):
    kwargs = dict(vocab_size=64, hidden_size=32, num_heads=4, steps_base=2, steps_reasoning=4)
    kwargs[field] = value
    with pytest.raises(ValueError, match=re.escape(fragment)):
        ModelConfig(**kwargs)


def test_controller_config_rejects_unordered_thresholds():
    with pytest.raises(ValueError, match="tau_low/tau_mid/tau_high must be non-decreasing"):
        ControllerConfig(tau_low=2.0, tau_mid=1.0)


def test_config_round_trips_through_dict():
    config = ModelConfig(vocab_size=100, think_token_id=7)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({**config.to_dict(), "bogus": 1})


@pytest.mark.parametrize("seq", [0, 1, 2])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_upstream_logits_match_reference(upstream_model, upstream_reference, seq, steps):
    ids = torch.from_numpy(upstream_reference[f"input_ids_seq{seq}"])[None]
    with torch.no_grad():
        out = upstream_model(ids, steps)
    expected = upstream_reference[f"logits_seq{seq}_steps{steps}"]
    assert np.abs(out.logits.numpy() - expected).max() <= 1e-5
    if steps == 2:
        hidden = upstream_reference[f"hidden_seq{seq}_steps2"]
        assert np.abs(out.hidden.numpy() - hidden).max() <= 1e-5


@pytest.mark.parametrize("seq", [0, 1])
def test_upstream_greedy_continuations_exact(upstream_model, upstream_reference, seq):
    """Upstream recomputes the whole sequence per token; so do we here."""
    ids = torch.from_numpy(upstream_reference[f"input_ids_seq{seq}"])[None]
    new = []
    with torch.no_grad():
        for _ in range(40):
            token = upstream_model(ids, 2).logits[0, -1].argmax()
            new.append(int(token))
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
    assert new == upstream_reference[f"greedy_seq{seq}_new_ids"].tolist()


def test_upstream_incremental_greedy_matches_reference(upstream_model, upstream_reference):
    """Prefill + one-token decode with the ring buffer (88 tokens, window 16)."""
    prompt = torch.from_numpy(upstream_reference["input_ids_seq1"])
    decoder = IncrementalDecoder(upstream_model)
    logits = decoder.forward(prompt).logits[0, -1]
    new = []
    for _ in range(40):
        token = logits.argmax().view(1)
        new.append(int(token))
        logits = decoder.forward(token).logits[0, -1]
    assert new == upstream_reference["greedy_seq1_new_ids"].tolist()


def _incremental(model, ids, depth, chunks):
    decoder = IncrementalDecoder(model)
    outs, start = [], 0
    for end in chunks + [len(ids)]:
        d = depth if isinstance(depth, int) else depth[:, start:end]
        outs.append(decoder.forward(ids[start:end], d).logits[0])
        start = end
    return torch.cat(outs), decoder


def _sequence(length, think_at=()):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 64, (length,), generator=g)
    ids[0] = 0
    ids[list(think_at)] = 3
    return ids


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_incremental_equals_full_forward_uniform_depth(random_model, depth):
    ids = _sequence(30)                        # > 3x the window of 8
    with torch.no_grad():
        full = random_model(ids[None], depth).logits[0]
    inc, _ = _incremental(random_model, ids, depth, chunks=[11])
    assert full.abs().max() > 1.0              # the comparison is not between near-zeros
    assert (inc - full).abs().max() <= 1e-5


def test_incremental_equals_full_forward_with_think_and_mixed_depth(random_model):
    ids = _sequence(40, think_at=(9, 21, 22))
    depth = torch.randint(1, 5, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = random_model(ids[None], depth[:, None, :]).logits[0]
    inc, decoder = _incremental(random_model, ids, depth, chunks=[5, 17])
    assert (inc - full).abs().max() <= 1e-5
    # position 0 and three THINK tokens live in the global buffer of every (block, iteration)
    assert all(buf.glob_count == 4 for row in decoder.buffers for buf in row)


def test_carried_kv_policy_changes_deep_tokens(random_model):
    """Deep tokens really read the carried KV: a shallow context differs from a deep one."""
    ids = _sequence(20)
    shallow = torch.full((2, 20), 2)
    shallow[:, -1] = 4
    with torch.no_grad():
        mixed = random_model(ids[None], shallow[:, None, :]).logits[0, -1]
        deep = random_model(ids[None], 4).logits[0, -1]
    assert (mixed - deep).abs().max() > 1e-3


def test_think_token_is_seen_beyond_the_window(random_model):
    """A THINK token beyond every token's reach (window 8, 2 blocks x 2 iterations: 28 positions)
    still changes the last logits; an ordinary token there changes nothing."""
    base = _sequence(60)
    with_think = base.clone()
    with_think[3] = 3
    changed = base.clone()
    changed[3] = 5 if base[3] != 5 else 6
    with torch.no_grad():
        last = [random_model(ids[None]).logits[0, -1] for ids in (base, with_think, changed)]
    assert (last[0] - last[1]).abs().max() > 1e-4
    assert torch.equal(last[0], last[2])


def test_late_positions_equal_the_same_tokens_inside_a_long_sequence(random_model):
    """[<bos>, text at off+1..] (how the trainer places late windows) computes what the full
    sequence computes there, once a token's reach (window 8 x 4 layers) lies inside the text."""
    ids = _sequence(100)
    offset, length = 60, 40
    positions = torch.cat([torch.tensor([0]), torch.arange(offset + 1, offset + length)])
    window_ids = torch.cat([ids[:1], ids[offset + 1:offset + length]])
    with torch.no_grad():
        late = random_model(window_ids[None], positions=positions).logits[0]
        full = random_model(ids[None]).logits[0, offset + 1:offset + length]
        shifted = random_model(window_ids[None]).logits[0]        # positions 0..39 instead
    reach = 4 * 7
    assert (late[1 + reach:] - full[reach:]).abs().max() <= 1e-5
    assert (late[1 + reach:] - shifted[1 + reach:]).abs().max() > 1e-3   # positions matter
    with pytest.raises(ValueError, match=r"positions must have shape \(40,\)"):
        random_model(window_ids[None], positions=positions[:-1])
    with pytest.raises(ValueError, match="max_position=160"):
        random_model(window_ids[None], positions=positions + 130)


def test_mc_block_step_with_explicit_masks_is_reproducible(random_model):
    ids = _sequence(12)
    decoder = IncrementalDecoder(random_model)
    decoder.forward(ids)
    cfg = random_model.config
    g = torch.Generator().manual_seed(3)
    keep = lambda *shape: (torch.rand(*shape, generator=g) >= cfg.dropout).float() / (1 - cfg.dropout)  # noqa: E731
    samples, keys = 4, cfg.window_size + cfg.max_global_tokens + 1
    masks = {("attn_probs", 1, 1): keep(samples, cfg.num_heads, 1, keys),
             ("attn_out", 1, 1): keep(samples, 1, cfg.hidden_size),
             ("mlp_out", 1, 1): keep(samples, 1, cfg.hidden_size)}
    x = torch.randn(1, 1, cfg.hidden_size)
    a = decoder.block_step(1, 1, x, ids[-1:], start=11, dropout_masks=masks)[0]
    b = decoder.block_step(1, 1, x, ids[-1:], start=11, dropout_masks=masks)[0]
    plain = decoder.block_step(1, 1, x, ids[-1:], start=11)[0]
    assert a.shape == (samples, 1, cfg.hidden_size)
    assert torch.equal(a, b)
    assert (a[0] - a[1]).abs().max() > 1e-4    # samples differ
    assert (a - plain).abs().max() > 1e-4


def test_rerunning_the_latest_position_reproduces_the_pass(random_model):
    """MC refinement re-runs a position whose KV is stored: without masks it must match."""
    ids = _sequence(15)
    decoder = IncrementalDecoder(random_model)
    model = random_model
    decoder.forward(ids, 1)
    x = model.embed(ids[None], torch.arange(15)[None])
    step_out = decoder.block_step(0, 0, x[:, -1:], ids[-1:], start=14)[0]
    full_block0 = _block0_output(model, ids)
    assert (step_out[0, -1] - full_block0[-1]).abs().max() <= 1e-5


def _block0_output(model, ids):
    with torch.no_grad():
        positions = torch.arange(len(ids))
        x = model.embed(ids[None], positions[None])
        cos, sin = model.rope(positions)
        glob = model.is_global(ids, positions)
        from lantern_edge.model.modeling import visibility
        vis = visibility(positions, positions, glob, model.config.window_size)
        q, k, v = model.blocks[0].project(x, cos, sin, model.rope_perm, model.rope_sign)
        return model.blocks[0].finish(x, q, k, v, vis, (0, 0), 0.0, None)[0][0]


def test_position_past_max_position_is_a_clear_error(random_model):
    ids = torch.zeros(random_model.config.max_position + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_position=160"):
        random_model(ids[None])


def test_training_mode_dropout_is_active_and_eval_is_deterministic(random_model):
    model = LanternModel(random_model.config)
    model.load_state_dict(random_model.state_dict())
    ids = _sequence(10)[None]
    model.train()
    a, b = model(ids).logits, model(ids).logits
    assert (a - b).abs().max() > 1e-4
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_rewind_then_deeper_run_equals_a_deep_token_from_the_start(random_model):
    ids = _sequence(20)
    decoder = IncrementalDecoder(random_model)
    decoder.forward(ids[:19])
    decoder.forward(ids[19:], 2)
    decoder.rewind()
    deep = decoder.forward(ids[19:], 4).logits[0, -1]
    fresh = IncrementalDecoder(random_model)
    fresh.forward(ids[:19])
    expected = fresh.forward(ids[19:], 4).logits[0, -1]
    assert torch.equal(deep, expected)
    assert decoder.length == 20
