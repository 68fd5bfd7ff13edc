"""The learned depth probe: will more depth help this token? (docs/DEPTH.md)

A small MLP on what the cheap pass already produced: its final hidden state (after the final
LayerNorm, as the LM head reads it) and its next-token distribution's top-k probabilities,
entropy, top-1/top-2 margin and top-k embedding dispersion. Its output p_benefit in [0, 1]
lets the controller send a token deep when p_benefit >= tau_probe instead of by the U bands.
It reads detached inputs: it is trained on the frozen model and never changes it. The
uncertainty graph (export/graphs.py) is the same computation node for node.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .uncertainty import signals


def probe_features(hidden: torch.Tensor, logits: torch.Tensor, embedding: torch.Tensor,
                   top_k: int) -> torch.Tensor:
    """(N, C + k + 3): normed hidden, top-k probabilities, entropy, margin, dispersion."""
    entropy, _, dispersion, top_probs = signals(logits, embedding, top_k)
    margin = top_probs[:, 0] - top_probs[:, 1]
    return torch.cat((hidden, top_probs, torch.stack((entropy, margin, dispersion), dim=-1)),
                     dim=-1)


class DepthProbe(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.depth_probe_top_k
        width = config.hidden_size + self.top_k + 3
        self.hidden_layer = nn.Linear(width, config.depth_probe_hidden)
        self.output_layer = nn.Linear(config.depth_probe_hidden, 1)

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor,
                embedding: torch.Tensor) -> torch.Tensor:
        """hidden (N, C) after the final norm, logits (N, V) -> p_benefit (N,)."""
        x = probe_features(hidden.detach(), logits.detach(), embedding.detach(), self.top_k)
        return torch.sigmoid(self.output_layer(torch.relu(self.hidden_layer(x)))).squeeze(-1)
