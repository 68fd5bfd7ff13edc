"""The trainer: objectives as specified, a real tiny run that learns, resumable checkpoints."""

import numpy as np
import torch

from lantern_edge.model.checkpoint import load_checkpoint
from lantern_edge.model.config import ModelConfig
from lantern_edge.model.train_cli import main as train_main
from lantern_edge.model.training import (IGNORE, PRESETS, TrainConfig, halting_targets,
                                         insert_think, make_batch)


def test_tiny_preset_is_small_and_learns(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    meta = ckpt.training
    assert ckpt.build_model().num_parameters() <= 200_000
    first, last = meta["eval_history"][0]["loss_per_depth"], meta["eval_loss_per_depth"]
    assert last["2"] < first["2"] - 0.8                    # validation loss falls
    assert last["4"] <= last["1"]                          # depth does not hurt
    assert meta["steps"] == PRESETS["tiny"]["max_steps"]
    assert meta["data"]["split"].startswith("by file")
    assert ckpt.model_config.think_token_id == 3 and ckpt.model_config.use_halting


def test_think_insertion_keeps_length_and_never_touches_position_0():
    rng = np.random.default_rng(0)
    row = np.arange(10, 74)
    out = insert_think(row, think=3, rate=0.2, rng=rng)
    assert len(out) == len(row) and out[0] == 10 and (out == 3).sum() >= 3
    real = out[out != 3]
    assert np.array_equal(real, row[:len(real)])           # order of real tokens preserved


def test_labels_never_predict_think_and_think_predicts_the_next_real_token():
    cfg = TrainConfig(seq_len=32, batch_size=4, think_rate=0.2, max_position=64,
                      window_size=8, hidden_size=32, intermediate_size=64)
    model_cfg = ModelConfig(vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                            think_token_id=3, window_size=8, max_position=64)
    stream = np.arange(4, 100).repeat(3)
    inputs, targets = make_batch(stream, cfg, model_cfg, np.random.default_rng(1), think=True)
    assert (inputs[:, 0] == 0).all()
    assert not (targets == 3).any()
    think_rows, think_cols = torch.nonzero(inputs == 3, as_tuple=True)
    assert len(think_rows) > 0
    for r, c in zip(think_rows.tolist(), think_cols.tolist()):
        # the label before a THINK is ignored; the THINK's own label is the next real token
        assert targets[r, c - 1] == IGNORE
        if c + 1 < inputs.shape[1] and inputs[r, c + 1] != 3:
            assert targets[r, c] == inputs[r, c + 1]


def test_halting_target_is_argmax_agreement():
    shallow = torch.tensor([[[0.0, 1.0], [2.0, 1.0]]])
    deep = torch.tensor([[[0.0, 3.0], [0.0, 1.0]]])
    assert halting_targets(shallow, deep).tolist() == [[1.0, 0.0]]


def test_cli_trains_resumes_and_rejects_bad_values(tmp_path, capsys):
    out = tmp_path / "c.pt"
    common = ["--preset", "tiny", "-o", str(out), "--eval-interval", "5", "-q",
              "--corpus-max-chars", "100000"]
    assert train_main(common + ["--max-steps", "6"]) == 0
    assert load_checkpoint(out).training["steps"] == 6
    assert train_main(common + ["--max-steps", "9", "--resume", str(out)]) == 0
    resumed = load_checkpoint(out)
    assert resumed.training["steps"] == 9
    assert [h["step"] for h in resumed.training["eval_history"]] == [0, 5, 6, 9]
    assert "optimizer" in resumed.resume_state
    capsys.readouterr()
    assert train_main(["--preset", "tiny", "--dtype", "fp8", "-q"]) == 2
    assert "dtype must be 'fp32' or 'bf16'" in capsys.readouterr().err
