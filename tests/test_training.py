"""The trainer: objectives as specified, a real tiny run that learns, exactly resumable runs."""

import copy
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lantern_edge.model import training
from lantern_edge.model.checkpoint import load_checkpoint
from lantern_edge.model.config import ModelConfig
from lantern_edge.model.train_cli import main as train_main
from lantern_edge.model.training import (IGNORE, PRESETS, TrainConfig, compute_losses, evaluate,
                                         halting_bce, halting_targets, insert_think,
                                         learning_rate, make_batch, sample_depth,
                                         sample_positions, schedule_progress)

# A run small enough for a few seconds: used by the resume and CLI tests.
QUICK = dict(PRESETS["tiny"], hidden_size=32, intermediate_size=64, seq_len=32, batch_size=4,
             max_steps=8, eval_interval=4, eval_batches=2, corpus_max_chars=60_000,
             warmup_steps=2)


def _model_cfg(**overrides):
    values = dict(vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                  think_token_id=3, window_size=8, max_position=64, max_global_tokens=6)
    return ModelConfig(**{**values, **overrides})


# --- the tiny preset (the session fixture other parts' tests use) --------------------------

def test_tiny_preset_is_small_and_learns(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    meta = ckpt.training
    model = ckpt.build_model()
    assert model.num_parameters() <= 200_000
    assert meta["steps"] == PRESETS["tiny"]["max_steps"]
    assert [h["step"] for h in meta["eval_history"]] == [0, 200, 400]
    first, last = meta["eval_history"][0]["loss_per_depth"], meta["eval_loss_per_depth"]
    assert set(last) == {"1", "2", "3", "4"}
    assert first["2"] > math.log(512) - 0.1                 # starts at chance
    for depth in last:                                      # and learns at every depth
        assert last[depth] < first[depth] - 1.0, (depth, first, last)
    assert last["4"] <= last["1"] + 0.02                    # extra depth does not hurt
    assert set(meta["halting_eval"]) == {"2", "3", "4"}
    assert meta["data"]["split"].startswith("by file")
    assert meta["train_config"]["seed"] == 0 and "optimizer" in ckpt.resume_state
    cfg = ckpt.model_config
    assert cfg.think_token_id == 3 and cfg.bos_token_id == 0 and cfg.use_halting


def test_tiny_model_uses_context(tiny_checkpoint):
    """On held-out stdlib code the model beats the best context-free (unigram) predictor."""
    from tokenizers import Tokenizer

    from lantern_edge.model.corpus import load_corpus
    ckpt = load_checkpoint(tiny_checkpoint)
    model = ckpt.build_model()
    tokenizer = Tokenizer.from_str(ckpt.tokenizer_json)
    cfg = TrainConfig(**PRESETS["tiny"])
    corpus = load_corpus(max_chars=cfg.corpus_max_chars)
    eos = ckpt.model_config.eos_token_id
    train_stream = training.tokenize(tokenizer, corpus.train, eos)
    val_stream = training.tokenize(tokenizer, corpus.val, eos)
    inputs, targets = make_batch(val_stream, cfg, ckpt.model_config, np.random.default_rng(7), False)
    counts = np.bincount(train_stream, minlength=cfg.vocab_size) + 1.0
    unigram_loss = -np.log(counts / counts.sum())[targets.numpy()].mean()
    unigram_top1 = (targets == int(counts.argmax())).float().mean().item()
    with torch.no_grad():
        logits = model(inputs, ckpt.model_config.steps_base).logits
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
    top1 = (logits.argmax(-1) == targets).float().mean().item()
    assert loss < unigram_loss - 0.4, (loss, unigram_loss)
    assert top1 > 1.5 * unigram_top1, (top1, unigram_top1)


# --- THINK insertion ------------------------------------------------------------------------

def test_think_insertion_keeps_length_order_and_position_0():
    row = np.arange(10, 74)
    out = insert_think(row, think=3, rate=0.2, rng=np.random.default_rng(0))
    assert len(out) == len(row) and out[0] == 10 and (out == 3).sum() >= 5
    real = out[out != 3]
    assert np.array_equal(real, row[:len(real)])            # order of real tokens preserved
    capped = insert_think(row, think=3, rate=0.4, rng=np.random.default_rng(0), max_count=4)
    assert (capped == 3).sum() <= 4                         # the global KV buffer is finite


def test_labels_never_predict_think_and_think_predicts_the_next_real_token():
    cfg = TrainConfig(seq_len=32, batch_size=8, think_rate=0.2, max_position=64, window_size=8,
                      hidden_size=32, intermediate_size=64)
    model_cfg = _model_cfg()
    stream = np.arange(4, 100)
    inputs, targets = make_batch(stream, cfg, model_cfg, np.random.default_rng(1), think=True)
    assert inputs.shape == targets.shape == (8, 32)
    assert (inputs[:, 0] == 0).all()                        # <bos> at position 0
    assert not (targets == 3).any()
    assert ((inputs == 3).sum(1) <= model_cfg.max_global_tokens - 1).all()
    rows, cols = torch.nonzero(inputs == 3, as_tuple=True)
    assert len(rows) >= 8
    for r, c in zip(rows.tolist(), cols.tolist()):
        assert targets[r, c - 1] == IGNORE                  # the label that would be THINK
        if c + 1 < inputs.shape[1] and inputs[r, c + 1] != 3:
            assert targets[r, c] == inputs[r, c + 1]        # THINK predicts the next real token
    real = targets[targets != IGNORE]
    assert (real >= 4).all()                                # everything else is an ordinary label
    plain_inputs, plain_targets = make_batch(stream, cfg, model_cfg, np.random.default_rng(1),
                                             think=False)
    assert not (plain_inputs == 3).any() and not (plain_targets == IGNORE).any()
    assert torch.equal(plain_targets[:, :-1], plain_inputs[:, 1:])


def test_mixed_depth_batches_run_think_tokens_at_reasoning_depth():
    cfg = TrainConfig(mixed_depth_fraction=1.0)
    model_cfg = _model_cfg(num_blocks=2, steps_reasoning=4)
    inputs = torch.randint(4, 100, (3, 20))
    inputs[:, 5] = 3
    depth = sample_depth(cfg, inputs, model_cfg, np.random.default_rng(0))
    assert depth.shape == (2, 3, 20) and depth.min() >= 1 and depth.max() <= 4
    assert (depth[:, :, 5] == 4).all() and len(depth.unique()) == 4
    uniform = [sample_depth(TrainConfig(mixed_depth_fraction=0.0), inputs, model_cfg,
                            np.random.default_rng(s)) for s in range(40)]
    assert set(uniform) == {1, 2, 3, 4}


def test_late_position_batches_keep_bos_at_0_and_cover_every_position():
    cfg = TrainConfig(seq_len=16, max_position=64, late_position_fraction=0.5)
    model_cfg = _model_cfg()
    drawn = [sample_positions(cfg, model_cfg, np.random.default_rng(s)) for s in range(400)]
    late = [p for p in drawn if p is not None]
    assert 120 < len(late) < 280                        # about half the batches
    for p in late:
        assert p[0] == 0 and p.shape == (16,) and (p[1:].diff() == 1).all() and p[-1] < 64
    assert max(int(p[-1]) for p in late) == 63          # the last learned row is reached
    assert min(int(p[1]) for p in late) == 1
    never = TrainConfig(seq_len=16, max_position=64, late_position_fraction=0.0)
    assert all(sample_positions(never, model_cfg, np.random.default_rng(s)) is None
               for s in range(50))


# --- the halting objective ------------------------------------------------------------------

def test_halting_target_is_argmax_agreement():
    shallow = torch.tensor([[[0.0, 1.0], [2.0, 1.0]]])
    deep = torch.tensor([[[0.0, 3.0], [0.0, 1.0]]])
    assert halting_targets(shallow, deep).tolist() == [[1.0, 0.0]]


def test_halting_loss_uses_p_halt_after_iteration_d_minus_1(random_model):
    model = copy.deepcopy(random_model).train()             # dropout on, as in training
    torch.manual_seed(0)
    inputs = torch.randint(4, 64, (2, 24))
    inputs[:, 0] = 0
    targets = torch.randint(4, 64, (2, 24))
    targets[0, :5] = IGNORE
    depth = 3
    losses = compute_losses(model, inputs, targets, depth)
    assert model.training                                   # restored after the target passes
    model.eval()
    with torch.no_grad():
        expected = (model(inputs, depth - 1).logits.argmax(-1)
                    == model(inputs, depth).logits.argmax(-1)).float()
    # eval-mode target: deterministic although the model trains with dropout
    assert torch.equal(losses.halting_target, expected)
    assert 0 < expected.mean() < 1
    again = compute_losses(model.train(), inputs, targets, depth)
    assert torch.equal(again.halting_target, expected)
    # the loss reads halting[:, d-2] over the non-ignored positions; check against a recompute
    # with the same dropout draw
    torch.manual_seed(1)
    losses = compute_losses(model, inputs, targets, depth)
    torch.manual_seed(1)
    halting = model(inputs, depth).halting                 # (blocks, depth, B, T)
    valid = targets != IGNORE
    probs = halting[:, depth - 2].clamp(1e-6, 1 - 1e-6)
    manual = F.binary_cross_entropy(probs[:, valid], expected[valid].expand(2, -1))
    assert torch.allclose(losses.halting, manual, atol=1e-6)
    wrong = halting_bce(halting, depth + 1, expected, valid)
    assert not torch.allclose(losses.halting, wrong)
    # the halting loss reaches only the halting heads (they read a detached state)
    model.zero_grad()
    losses.halting.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(".halting." in n for n in with_grad)


def test_no_halting_loss_at_depth_1_or_on_mixed_depth(random_model):
    inputs = torch.randint(4, 64, (2, 12))
    targets = torch.randint(4, 64, (2, 12))
    assert compute_losses(random_model, inputs, targets, 1).halting.item() == 0.0
    mixed = torch.randint(1, 5, (2, 2, 12))
    losses = compute_losses(random_model, inputs, targets, mixed)
    assert losses.halting.item() == 0.0 and losses.halting_target is None


# --- schedule, evaluation, config ------------------------------------------------------------

def test_learning_rate_warms_up_then_follows_the_cosine():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s, schedule_progress(cfg, s, 0.0)) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3) and lrs[60] == pytest.approx(0.55e-3)
    assert lrs[110] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    timed = TrainConfig(max_minutes=2.0, max_steps=10_000, warmup_steps=0)
    assert schedule_progress(timed, 10, 60.0) == pytest.approx(0.5)   # the budget ends first


def test_evaluate_reports_every_depth(random_model):
    batches = [(torch.randint(4, 64, (2, 16)), torch.randint(4, 64, (2, 16)))]
    result = evaluate(random_model, batches, torch.device("cpu"))
    assert list(result["loss_per_depth"]) == ["1", "2", "3", "4"]
    assert len(set(result["loss_per_depth"].values())) > 1
    assert set(result["halting"]) == {"2", "3", "4"}
    assert not random_model.training


@pytest.mark.parametrize("field, value", [
    ("dtype", "fp16"), ("device", "tpu"), ("seq_len", 2048), ("think_rate", 0.7),
    ("num_heads", 3), ("steps_reasoning", 1), ("vocab_size", 100), ("lr", 0.0),
])
def test_train_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


# --- checkpoints, resume, CLI ------------------------------------------------------------------

def test_resume_continues_exactly(tmp_path, monkeypatch):
    """An interrupted run resumed from its step-4 checkpoint ends with the very same weights."""
    snapshot = tmp_path / "step4.pt"
    real_save = training.save_checkpoint

    def save_and_snapshot(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        if args[3]["steps"] == 4:
            shutil.copy(path, snapshot)
    monkeypatch.setattr(training, "save_checkpoint", save_and_snapshot)
    whole = tmp_path / "whole.pt"
    training.train(TrainConfig(output=str(whole), **QUICK), progress=False)
    resumed = tmp_path / "resumed.pt"
    cfg = training.resume_config(snapshot, output=str(resumed))
    assert cfg.max_steps == 8 and cfg.hidden_size == 32
    training.train(cfg, resume=snapshot, progress=False)
    a, b = load_checkpoint(whole), load_checkpoint(resumed)
    assert a.training["steps"] == b.training["steps"] == 8
    assert b.training["tokens_seen"] == a.training["tokens_seen"] == 8 * 4 * 32
    assert a.training["eval_history"] == b.training["eval_history"]
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert b.resume_state["scheduler"]["step"] == 8


def test_cli_trains_resumes_and_rejects_bad_values(tmp_path, capsys, random_checkpoint):
    out = tmp_path / "c.pt"
    quick = ["--preset", "tiny", "-o", str(out), "-q", "--corpus-max-chars", "60000",
             "--hidden-size", "32", "--intermediate-size", "64", "--seq-len", "32",
             "--batch-size", "4", "--eval-interval", "2", "--eval-batches", "1"]
    assert train_main(quick + ["--max-steps", "3"]) == 0
    assert load_checkpoint(out).training["steps"] == 3
    assert "saved" in capsys.readouterr().out
    assert train_main(["--resume", str(out), "--max-steps", "5", "-q"]) == 0
    resumed = load_checkpoint(out)
    assert resumed.training["steps"] == 5
    assert [h["step"] for h in resumed.training["eval_history"]] == [0, 2, 3, 4, 5]
    assert resumed.model_config.hidden_size == 32        # the run's own config was reused
    capsys.readouterr()
    for argv, message in [
        (["--preset", "tiny", "--dtype", "fp8"], "invalid choice: 'fp8'"),
        (["--preset", "tiny", "--think-rate", "0.9", "-q"], "think_rate must be in [0, 0.5)"),
        (["--preset", "tiny", "--seq-len", "many"], "invalid int value: 'many'"),
        (["--resume", str(out), "--preset", "tiny"], "--preset cannot be combined"),
        (["--resume", str(out), "--hidden-size", "64", "-q"], "hidden_size=64 differs"),
        (["--resume", str(random_checkpoint)], "holds no trainer state"),
        (["--preset", "tiny", "--corpus", str(tmp_path / "missing")], "not found"),
    ]:
        assert train_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_interrupt_saves_a_resumable_checkpoint(tmp_path, monkeypatch):
    real = training.compute_losses
    calls = {"n": 0}

    def interrupt_at_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(training, "compute_losses", interrupt_at_step_3)
    out = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        training.train(TrainConfig(output=str(out), **QUICK), progress=False)
    saved = load_checkpoint(out)
    assert saved.training["steps"] == 3 and saved.training["final"] is False
    monkeypatch.setattr(training, "compute_losses", real)
    meta = training.train(training.resume_config(out), resume=out, progress=False)
    assert meta["steps"] == 8 and meta["final"] is True


def test_bf16_autocast_trains(tmp_path):
    cfg = TrainConfig(**{**QUICK, "output": str(tmp_path / "b.pt"), "dtype": "bf16",
                         "max_steps": 2, "eval_interval": 2})
    meta = training.train(cfg, progress=False)
    assert meta["steps"] == 2
    assert all(math.isfinite(v) for v in meta["eval_loss_per_depth"].values())
    ckpt = load_checkpoint(cfg.output)
    assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values() if t.is_floating_point())


def test_controller_thresholds_are_calibrated_to_the_model(tiny_checkpoint):
    """A fresh model's U scale is its own: the bands split held-out tokens ~60/25/10/5."""
    ckpt = load_checkpoint(tiny_checkpoint)
    ctl = ckpt.controller_config
    assert ctl.tau_low < ctl.tau_mid < ctl.tau_high
    assert [ctl.tau_low, ctl.tau_mid, ctl.tau_high] == ckpt.training["controller_calibration"]["tau"]
    assert (ctl.tau_low, ctl.tau_mid, ctl.tau_high) != (1.0, 2.0, 3.0)


def test_init_from_starts_at_the_initial_weights_and_names_a_shape_mismatch(tmp_path):
    """--init-from: step 0 validates the initial model's weights (same loss as the run that
    wrote them), its tokenizer is reused, halting heads it had are dropped, and a run of
    another shape is refused naming the field."""
    first = tmp_path / "first.pt"
    training.train(TrainConfig(output=str(first), **QUICK), progress=False)
    start = load_checkpoint(first)
    assert start.model_config.use_halting
    second = tmp_path / "second.pt"
    training.train(TrainConfig(output=str(second), init_from=str(first),
                               **{**QUICK, "use_halting": False, "max_steps": 1}),
                   progress=False)
    after = load_checkpoint(second)
    assert after.tokenizer_json == start.tokenizer_json
    assert not after.model_config.use_halting
    assert (after.training["eval_history"][0]["loss_per_depth"]
            == start.training["eval_history"][-1]["loss_per_depth"])
    assert not any(".halting." in k for k in after.state_dict)
    with pytest.raises(ValueError, match=r"hidden_size \(run 48, init 32\)"):
        training.train(TrainConfig(output=str(tmp_path / "x.pt"), init_from=str(first),
                                   **{**QUICK, "hidden_size": 48}), progress=False)
    with pytest.raises(ValueError, match="tokenizer must be None with init_from"):
        TrainConfig(init_from=str(first), tokenizer="tokenizer.json")
