"""The torch modules that become ONNX graphs (docs/ARTIFACTS.md), built from a LanternModel.

The block step is a trimmed re-statement of `Block.project` + `Block.finish` with fused weights,
because every node costs ~0.5 us per call at decode (PERF_NOTES.md):
- one QKV projection producing q, rot(q), k, rot(k), v: RoPE's signed permutation is folded into
  extra weight rows, so RoPE is two Muls and an Add; 1/sqrt(head_dim) is folded into q;
- one gate/up projection; RoPE tables are in-graph constants gathered by `positions`;
- attention over the stored context and the new tokens as two score blocks, so the shared
  [H, K, D] context is never copied per sample.
Tests hold every graph to the reference model (tests/test_export.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..model.modeling import LanternModel
from ..model.uncertainty import UncertaintyHead


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=False)


class EmbedGraph(nn.Module):
    def __init__(self, model: LanternModel):
        super().__init__()
        self.token_embedding = _frozen(model.token_embedding.weight)
        self.position_embedding = _frozen(model.position_embedding.weight)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding[input_ids] + self.position_embedding[positions]
        return x.unsqueeze(0)


class BlockStepGraph(nn.Module):
    """One iteration of block `index` for T new tokens over the stored context (contract I/O).

    With `mc=True` it also takes the three dropout keep masks (the MC-dropout step graph).
    """

    def __init__(self, model: LanternModel, index: int, mc: bool = False):
        super().__init__()
        cfg = model.config
        block = model.blocks[index]
        attn = block.attention
        self.num_heads, self.head_dim, self.hidden = cfg.num_heads, cfg.head_dim, cfg.hidden_size
        self.mc = mc
        self.has_halting = block.halting is not None and not mc
        scale = 1.0 / math.sqrt(cfg.head_dim)
        # rot(x) = x[perm] * sign within each head, so rot(W x + b) = (W' x + b') with rows permuted
        head_perm = model.rope_perm
        perm = torch.cat([h * cfg.head_dim + head_perm for h in range(cfg.num_heads)])
        sign = model.rope_sign.repeat(cfg.num_heads)[:, None]
        wq, bq = attn.q_proj.weight * scale, attn.q_proj.bias * scale
        wk, bk = attn.k_proj.weight, attn.k_proj.bias
        weight = torch.cat([wq, wq[perm] * sign, wk, wk[perm] * sign, attn.v_proj.weight])
        bias = torch.cat([bq, bq[perm] * sign[:, 0], bk, bk[perm] * sign[:, 0], attn.v_proj.bias])
        self.qkv_weight = _frozen(weight.T)                       # (C, 5C): MatMul, no Transpose
        self.qkv_bias = _frozen(bias)
        self.out_weight = _frozen(attn.out_proj.weight.T)
        self.out_bias = _frozen(attn.out_proj.bias)
        self.gate_up_weight = _frozen(torch.cat([block.gate_proj.weight, block.up_proj.weight]).T)
        self.down_weight = _frozen(block.down_proj.weight.T)
        self.attn_norm_w, self.attn_norm_b = _frozen(block.attn_norm.weight), _frozen(block.attn_norm.bias)
        self.mlp_norm_w, self.mlp_norm_b = _frozen(block.mlp_norm.weight), _frozen(block.mlp_norm.bias)
        self.eps = cfg.norm_eps
        self.inner = cfg.intermediate_size
        if self.has_halting:
            self.halt_weight = _frozen(block.halting.weight.T)    # (C, 1)
            self.halt_bias = _frozen(block.halting.bias)
        self.rope_cos = _frozen(model.rope_cos)
        self.rope_sin = _frozen(model.rope_sin)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:            # (S, T, C) -> (S, H, T, D)
        s, t, _ = x.shape
        return x.reshape(s, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden, positions, past_key, past_value, attn_bias,
                mask_attn_probs=None, mask_attn_out=None, mask_mlp_out=None):
        c = self.hidden
        h = F.layer_norm(hidden, (c,), self.attn_norm_w, self.attn_norm_b, self.eps)
        qkv = h @ self.qkv_weight + self.qkv_bias                  # (S, T, 5C)
        q, q_rot, k, k_rot, v = qkv.split(c, dim=-1)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]   # (T, D)
        q = self._heads(q) * cos + self._heads(q_rot) * sin
        k = self._heads(k) * cos + self._heads(k_rot) * sin
        v = self._heads(v)
        scores = torch.cat([q @ past_key.transpose(-1, -2), q @ k.transpose(-1, -2)], dim=-1)
        probs = torch.softmax(scores + attn_bias, dim=-1)          # (S, H, T, K + T)
        if self.mc:
            probs = probs * mask_attn_probs
        stored = past_key.shape[1]
        out = probs[..., :stored] @ past_value + probs[..., stored:] @ v
        s, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(s, t, c) @ self.out_weight + self.out_bias
        if self.mc:
            out = out * mask_attn_out
        x = hidden + out
        h = F.layer_norm(x, (c,), self.mlp_norm_w, self.mlp_norm_b, self.eps)
        gate, up = (h @ self.gate_up_weight).split(self.inner, dim=-1)
        mlp = (F.silu(gate) * up) @ self.down_weight
        if self.mc:
            return (x + mlp * mask_mlp_out,)
        x = x + mlp
        if self.has_halting:
            halt = torch.sigmoid(x @ self.halt_weight + self.halt_bias).squeeze(-1)
            return x, k, v, halt
        return x, k, v


class LMHeadGraph(nn.Module):
    def __init__(self, model: LanternModel):
        super().__init__()
        self.norm_w, self.norm_b = _frozen(model.final_norm.weight), _frozen(model.final_norm.bias)
        self.eps = model.config.final_norm_eps
        self.embedding = _frozen(model.token_embedding.weight)   # (V, C), stored as in embed

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(hidden, (hidden.shape[-1],), self.norm_w, self.norm_b, self.eps)
        return F.linear(h, self.embedding)


class UncertaintyGraph(nn.Module):
    def __init__(self, model: LanternModel, top_k: int):
        super().__init__()
        self.head = UncertaintyHead(model.token_embedding.weight, top_k)

    def forward(self, logits: torch.Tensor, weights: torch.Tensor):
        return self.head(logits, weights)


class FullForwardGraph(nn.Module):
    """model.onnx: input_ids (B, T) -> logits (B, T, V) at steps_base, from position 0."""

    def __init__(self, model: LanternModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        model, cfg = self.model, self.model.config
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        x = model.embed(input_ids, positions[None])
        cos, sin = model.rope(positions)
        glob = model.is_global(input_ids, positions[None])                    # (B, T)
        delta = positions[:, None] - positions[None, :]
        visible = (delta >= 0) & ((delta < cfg.window_size) | glob[:, None, None, :])
        for b, block in enumerate(model.blocks):
            for i in range(cfg.steps_base):
                q, k, v = block.project(x, cos, sin, model.rope_perm, model.rope_sign)
                x, _ = block.finish(x, q, k, v, visible, (b, i), 0.0, None)
        return model.lm_head(x)[0]
