"""Small untrained models of every recursion order, with and without input injection and the
depth probe (tests/test_depth.py, tests/test_export_depth.py)."""

import numpy as np
import torch

from lantern_edge.model.config import ModelConfig
from lantern_edge.model.modeling import LanternModel

VARIANTS = [("sequence", False), ("sequence", True), ("cycle", False), ("cycle", True)]


def depth_model(order: str, injection: bool, probe: int = 0, seed: int = 0,
                probe_top_k: int = 10) -> LanternModel:
    """Window 8, THINK, halting, 2 blocks at depths 2/4; weights scaled up as in conftest so
    that attention patterns and depth matter."""
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=64, hidden_size=32, num_heads=4, intermediate_size=64,
                         num_blocks=2, window_size=8, max_position=160, max_global_tokens=8,
                         steps_base=2, steps_reasoning=4, bos_token_id=0, eos_token_id=1,
                         pad_token_id=2, think_token_id=3, recursion_order=order,
                         input_injection=injection, depth_probe_hidden=probe,
                         depth_probe_top_k=probe_top_k)
    model = LanternModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def sequence_ids(length: int = 30, seed: int = 7) -> np.ndarray:
    """More than 3x the window, BOS first, THINK tokens at 12 and 19."""
    ids = np.random.default_rng(seed).integers(4, 64, length)
    ids[0], ids[12], ids[19] = 0, 3, 3
    return ids
