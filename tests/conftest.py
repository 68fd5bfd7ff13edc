"""Shared fixtures. Heavy ones are session-scoped and built from real code paths.

Ownership: the fixture blocks below are grouped by the part of the pipeline that builds them;
each part's tests add their fixtures in their own block.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Reference data from the upstream LANTERN trainer (provenance in its README.md), committed so
# that a clone with nothing beside it runs every test.
UPSTREAM_DIR = REPO / "tests" / "fixtures" / "upstream_lantern_small"


@pytest.fixture(scope="session")
def upstream_dir() -> Path:
    if not (UPSTREAM_DIR / "checkpoint.pt").exists():
        pytest.fail(f"upstream fixture missing at {UPSTREAM_DIR}: it is committed in the repository; "
                    "restore it with `git checkout -- tests/fixtures`")
    return UPSTREAM_DIR


@pytest.fixture(scope="session")
def upstream_reference(upstream_dir):
    import numpy as np
    return dict(np.load(upstream_dir / "reference.npz"))


# --- model ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def random_model():
    """A small untrained model with THINK, halting and 2 blocks, weights scaled up so that
    attention patterns and depth matter (parity tests need non-trivial activations)."""
    import torch
    from lantern_edge.model.config import ModelConfig
    from lantern_edge.model.modeling import LanternModel
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, hidden_size=32, num_heads=4, intermediate_size=64,
                         num_blocks=2, window_size=8, max_position=160, max_global_tokens=8,
                         steps_base=2, steps_reasoning=4, bos_token_id=0, eos_token_id=1,
                         pad_token_id=2, think_token_id=3, dropout=0.1)
    model = LanternModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def _save_random_checkpoint(model, path):
    from lantern_edge.model.checkpoint import save_checkpoint
    from lantern_edge.model.config import ControllerConfig
    from lantern_edge.model.tokenizer import char_tokenizer
    # 64 distinct printable characters: ids 0-3 double as bos/eos/pad/think for this model
    chars = [chr(c) for c in range(ord("0"), ord("0") + 64)]
    save_checkpoint(path, model, ControllerConfig(), char_tokenizer(chars).to_str())
    return path


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory, random_model):
    return _save_random_checkpoint(random_model, tmp_path_factory.mktemp("random") / "random.pt")


# --- export -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def upstream_artifacts(tmp_path_factory, upstream_dir):
    from lantern_edge.export.api import export_checkpoint
    out = tmp_path_factory.mktemp("upstream") / "artifacts"
    export_checkpoint(upstream_dir / "checkpoint.pt", out)
    return out


@pytest.fixture(scope="session")
def random_artifacts(tmp_path_factory, random_checkpoint):
    from lantern_edge.export.api import export_checkpoint
    out = tmp_path_factory.mktemp("random_art") / "artifacts"
    export_checkpoint(random_checkpoint, out)
    return out


# --- depth (recursion order, input injection, depth probe) --------------------------------------

@pytest.fixture(scope="module")
def single_torch_thread():
    """The reference decodes one token at a time: tiny ops, where a second thread only adds
    synchronisation (and the machine is shared)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _depth_variant_name(variant) -> str:
    return f"{variant[0]}-{'inject' if variant[1] else 'plain'}"


@pytest.fixture(scope="session", params=[("sequence", False), ("sequence", True),
                                         ("cycle", False), ("cycle", True)],
                ids=_depth_variant_name)
def depth_artifacts(request, tmp_path_factory):
    """(model, artifacts dir) of a small untrained model (tests/depth_models.py) with a depth
    probe, in each recursion order with and without input injection, exported for real
    (parity through the runtime included); THINK injection on by default in its manifest."""
    from depth_models import depth_model
    from lantern_edge.export.api import export_checkpoint
    from lantern_edge.model.checkpoint import save_checkpoint
    from lantern_edge.model.config import ControllerConfig
    from lantern_edge.model.tokenizer import char_tokenizer
    order, injection = request.param
    model = depth_model(order, injection, probe=16)
    root = tmp_path_factory.mktemp(f"depth_{_depth_variant_name(request.param)}")
    chars = [chr(c) for c in range(ord("0"), ord("0") + 64)]
    save_checkpoint(root / "model.pt", model, ControllerConfig(inject_think=True),
                    char_tokenizer(chars).to_str())
    export_checkpoint(root / "model.pt", root / "artifacts")
    return model, root / "artifacts"


# --- training ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The tiny preset (~130k parameters, THINK + halting, 2 blocks, window 16, depths 1..4)
    trained for real on a 300k-character sample of the stdlib corpus: seeded and
    deterministic, one torch thread, about 30 s on a 2-core machine. Validation loss falls
    from ~6.2 (chance) to ~4.7 nats."""
    from lantern_edge.model.training import PRESETS, TrainConfig, train
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    train(TrainConfig(output=str(path), **{**PRESETS["tiny"], "seed": 0}), progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory, tiny_checkpoint):
    from lantern_edge.export.api import export_checkpoint
    out = tmp_path_factory.mktemp("tiny_art") / "artifacts"
    export_checkpoint(tiny_checkpoint, out)
    return out
