"""Checkpoint I/O: our format round-trips, upstream loads, bad files fail with one clear error."""

import pickle

import pytest
import torch

from lantern_edge.errors import CheckpointError
from lantern_edge.model.checkpoint import load_checkpoint, save_checkpoint
from lantern_edge.model.config import ControllerConfig
from lantern_edge.model.tokenizer import char_tokenizer


def test_own_checkpoint_round_trips(tmp_path, random_model):
    tok = char_tokenizer([chr(ord("a") + i) for i in range(26)]).to_str()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, random_model, ControllerConfig(tau_low=0.5), tok,
                    training={"steps": 3, "eval_loss_per_depth": {"1": 2.5}})
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "lantern-edge"
    assert ckpt.model_config == random_model.config
    assert ckpt.controller_config.tau_low == 0.5
    assert ckpt.training["eval_loss_per_depth"] == {"1": 2.5}
    model = ckpt.build_model()
    ids = torch.arange(4, 20)[None]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, random_model(ids).logits)


def test_upstream_checkpoint_loads_with_its_vocabulary(upstream_dir):
    ckpt = load_checkpoint(upstream_dir / "checkpoint.pt")
    assert ckpt.kind == "upstream"
    cfg = ckpt.model_config
    assert (cfg.rope_style, cfg.norm_eps, cfg.final_norm_eps) == ("upstream_pairs", 1e-6, 1e-5)
    assert cfg.bos_token_id is None          # upstream's bos id 0 is the character '\n'
    assert ckpt.controller_config.weight_p_max == 0.5   # upstream p_max_weight = -0.5
    assert ckpt.training["step"] == 400
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(ckpt.tokenizer_json)
    assert tok.encode(" or Deri").ids == [1, 59, 62, 1, 25, 49, 62, 53]


def _expect(path, fragment):
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.pt", "checkpoint not found")


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, I am text")
    _expect(path, "not a readable PyTorch checkpoint")


def test_truncated_file(tmp_path, upstream_dir):
    path = tmp_path / "cut.pt"
    path.write_bytes((upstream_dir / "checkpoint.pt").read_bytes()[:50_000])
    _expect(path, "not a readable PyTorch checkpoint")


def test_dict_without_expected_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    _expect(path, "not a LANTERN checkpoint.*found keys: weights")


def test_state_dict_that_does_not_fit(tmp_path, upstream_dir):
    raw = torch.load(upstream_dir / "checkpoint.pt", weights_only=True)
    raw["config"]["hidden_size"] = 32
    raw["config"]["num_heads"] = 2
    path = tmp_path / "bad.pt"
    torch.save(raw, path)
    _expect(path, "does not fit its config.*wrong shapes")


def test_rope_tables_that_are_not_upstreams_are_refused_with_their_difference(tmp_path,
                                                                              upstream_dir):
    raw = torch.load(upstream_dir / "checkpoint.pt", weights_only=True)
    state = raw["model_state_dict"]
    for key in [k for k in state if k.endswith("cos_cached")]:
        state[key] = state[key] * 1.001
    path = tmp_path / "rope.pt"
    torch.save(raw, path)
    _expect(path, r"RoPE tables differ from upstream's standard ones \(max \|difference\| 0\.001\)")


class _RunsCode:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_pickle_that_tries_to_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = {"model_state_dict": _RunsCode(), "config": {}}
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(payload, f, protocol=2)
    torch.save(payload, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        _expect(tmp_path / name, "refused to load .* references the Python object posix.system")
    assert not (tmp_path / "PWNED").exists()
    with open(tmp_path / "evil3.pt", "wb") as f:
        pickle.dump(payload, f, protocol=4)         # framed pickles are not torch files at all
    _expect(tmp_path / "evil3.pt", "not a readable PyTorch checkpoint")
    assert not (tmp_path / "PWNED").exists()
