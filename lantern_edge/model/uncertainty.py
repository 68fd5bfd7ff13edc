"""The uncertainty signals of one next-token distribution, in torch (exported as uncertainty.onnx).

entropy (nats), p_max, semantic dispersion of the top-k candidates (probability-weighted
variance of their embeddings, probabilities renormalised over the top k, as upstream LANTERN
computes it) and the composite score U = a*entropy + b*dispersion - c*p_max.

Numerically safe for huge logits, all-equal logits and -inf entries (as long as one logit is
finite): everything is computed from logits shifted by their maximum.
"""

from __future__ import annotations

import torch
from torch import nn


class UncertaintyHead(nn.Module):
    def __init__(self, embedding: torch.Tensor, top_k: int):
        super().__init__()
        if not 1 <= top_k <= embedding.shape[0]:
            raise ValueError(f"top_k_dispersion must be in [1, vocab_size={embedding.shape[0]}], "
                             f"got {top_k}")
        self.embedding = nn.Parameter(embedding.detach().clone(), requires_grad=False)
        self.top_k = top_k

    def forward(self, logits: torch.Tensor, weights: torch.Tensor):
        """logits (N, V), weights (3,) = (a, b, c) -> entropy, p_max, dispersion, score (N,)."""
        top = logits.max(dim=-1, keepdim=True)[0]
        shifted = logits - top                                          # <= 0, max exactly 0
        log_norm = torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))
        log_probs = shifted - log_norm
        probs = torch.exp(log_probs)
        # p * log p is 0 where p underflows to 0 (and -inf logits must not give 0 * -inf = NaN)
        entropy = -torch.where(probs > 0, probs * log_probs, torch.zeros_like(probs)).sum(dim=-1)
        p_max = torch.exp(-log_norm).squeeze(-1)
        top_logits, top_ids = torch.topk(logits, self.top_k, dim=-1)
        top_probs = torch.exp(top_logits - top - log_norm)              # (N, k)
        weights_k = top_probs / top_probs.sum(dim=-1, keepdim=True)
        emb = self.embedding[top_ids]                                    # (N, k, C)
        centroid = (weights_k.unsqueeze(-1) * emb).sum(dim=1, keepdim=True)
        dispersion = (weights_k * ((emb - centroid) ** 2).sum(dim=-1)).sum(dim=-1)
        score = weights[0] * entropy + weights[1] * dispersion - weights[2] * p_max
        return entropy, p_max, dispersion, score
