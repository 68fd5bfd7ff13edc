"""Uncertainty signals of next-token distributions in torch (the reference of uncertainty.onnx).

For logits l (N, V), with z = l - max(l) and p = softmax(l):
- entropy = -sum p log p (nats) = log(sum e^z) - sum(e^z z) / sum(e^z)
- p_max = 1 / sum e^z
- dispersion: the top-k candidates' embeddings e_i with probabilities renormalised over the top
  k, w_i = p_i / sum_topk p: sum_i w_i ||e_i - mu||^2, mu = sum_i w_i e_i
- score U = a*entropy + b*dispersion - c*p_max, weights = (a, b, c)

Numerically safe for huge logits, all-equal logits and -inf entries (while one logit is
finite): logits are clipped to +-1e38, so every z is finite (>= -2e38) and e^z * z is 0 * finite
where e^z underflows, never 0 * -inf. export/graphs.py `uncertainty_graph` is the same
computation node for node.
"""

from __future__ import annotations

import torch
from torch import nn

CLIP = 1e38


def signals(logits: torch.Tensor, embedding: torch.Tensor, top_k: int):
    """logits (N, V) -> entropy, p_max, dispersion (N,) and the top-k probabilities (N, k),
    highest first (the depth probe reads them)."""
    logits = logits.clamp(-CLIP, CLIP)
    top = logits.max(dim=-1, keepdim=True)[0]
    z = logits - top                                                # in [-2e38, 0]
    e = torch.exp(z)
    total = e.sum(dim=-1)                                           # >= 1
    entropy = torch.log(total) - (e * z).sum(dim=-1) / total
    p_max = 1.0 / total
    top_logits, top_ids = torch.topk(logits, top_k, dim=-1)
    top_probs = torch.exp(top_logits - top) / total[:, None]
    w = torch.softmax(top_logits, dim=-1)                           # p renormalised over top k
    emb = embedding[top_ids]                                        # (N, k, C)
    mean = (w.unsqueeze(-1) * emb).sum(dim=1, keepdim=True)
    dispersion = (w * ((emb - mean) ** 2).sum(dim=-1)).sum(dim=-1)
    return entropy, p_max, dispersion, top_probs


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
        entropy, p_max, dispersion, _ = signals(logits, self.embedding, self.top_k)
        score = weights[0] * entropy + weights[1] * dispersion - weights[2] * p_max
        return entropy, p_max, dispersion, score
