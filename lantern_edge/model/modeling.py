"""The LANTERN reference model in PyTorch: the oracle every exported graph is checked against.

Shapes use B (batch), T (new tokens), K (keys), H (heads), D (head dim), C (hidden), V (vocab).

Attention rule (shared by the full forward and the incremental decoder): key j is visible to
query i when j <= i and (i - j < window_size or j is global). Global tokens are position 0
(BOS in our models; whatever token comes first in upstream checkpoints) and every THINK token.

Recursion order (config.recursion_order): "sequence" runs block0 x d, then block1 x d, ...;
"cycle" runs d cycles of block0, block1, .... With input injection, h = W [h ; e] (e the
embedding output) runs before every cycle (cycle order) or before every iteration after a
block's first (sequence order). Either way KV is kept per (block, iteration).

Per-token depth: a token may run fewer iterations of a block than its neighbours. Its keys and
values at an iteration it never ran are the ones of its last iteration, carried forward (the
"carried KV" policy, the same one upstream's KV cache uses); its hidden state stays at its
block output. ``forward`` and ``IncrementalDecoder`` both implement this, and tests hold them
equal.

Dropout sites (as upstream): the embedding sum ("embed"), attention probabilities
("attn_probs"), the attention branch output ("attn_out") and the MLP branch output
("mlp_out"). In training mode they are ordinary dropout; for MC dropout the caller passes the
scaled keep masks (0 or 1/(1-p)) explicitly, keyed (site, block, iteration), so the ONNX graph
can be fed the very same masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .probe import DepthProbe

# (site, block, iteration) -> scaled keep mask broadcastable to the tensor at that site.
# The embedding site uses block = iteration = -1.
DropoutMasks = dict[tuple[str, int, int], torch.Tensor]
EMBED_SITE = ("embed", -1, -1)


@dataclass
class ModelOutput:
    logits: torch.Tensor            # (B, T, V)
    hidden: torch.Tensor            # (B, T, C), after the final LayerNorm (what the LM head reads)
    halting: torch.Tensor | None    # (num_blocks, iterations, B, T) p_halt after each iteration


def rope_frequencies(config: ModelConfig) -> torch.Tensor:
    """(head_dim,) float32 angle per position of each RoPE dimension (the half-split layout:
    the dim/2 inverse frequencies, twice), computed as upstream does."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return torch.cat((inv_freq, inv_freq))


def rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (max_position, head_dim) in float32: angle = position * frequency."""
    t = torch.arange(config.max_position, dtype=torch.float32)
    angles = t[:, None] * rope_frequencies(config)[None, :]
    return angles.cos(), angles.sin()


def rope_rotation(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The partner vector of RoPE as a signed permutation: rot(x) = x[..., perm] * sign.

    half_split (ours, the textbook GPT-NeoX layout): rot = cat(-x[D/2:], x[:D/2]).
    upstream_pairs (upstream LANTERN): rot[2i] = -x[2i+1], rot[2i+1] = x[2i], with the same
    half-split tables, so neighbours mix two frequencies. Both are x*cos + rot(x)*sin.
    """
    dim = config.head_dim
    half = dim // 2
    if config.rope_style == "half_split":
        perm = torch.cat((torch.arange(half, dim), torch.arange(0, half)))
        sign = torch.cat((-torch.ones(half), torch.ones(half)))
    else:
        perm = torch.arange(dim).view(half, 2).flip(-1).reshape(dim)
        sign = torch.tensor([-1.0, 1.0]).repeat(half)
    return perm, sign


def _dropout(x: torch.Tensor, site: str, block: int, iteration: int, p: float, training: bool,
             masks: DropoutMasks | None) -> torch.Tensor:
    if masks is not None:
        mask = masks.get((site, block, iteration))
        return x if mask is None else x * mask
    if training and p > 0:
        return F.dropout(x, p, training=True)
    return x


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(c, c)
        self.k_proj = nn.Linear(c, c)
        self.v_proj = nn.Linear(c, c)
        self.out_proj = nn.Linear(c, c)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:        # (B, T, C) -> (B, H, T, D)
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)


class Block(nn.Module):
    """One weight-shared pre-norm block: x + attn(LN(x)), then + SwiGLU(LN(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c, inner = config.hidden_size, config.intermediate_size
        self.attn_norm = nn.LayerNorm(c, eps=config.norm_eps)
        self.attention = Attention(config)
        self.mlp_norm = nn.LayerNorm(c, eps=config.norm_eps)
        self.gate_proj = nn.Linear(c, inner, bias=False)
        self.up_proj = nn.Linear(c, inner, bias=False)
        self.down_proj = nn.Linear(inner, c, bias=False)
        self.halting = nn.Linear(c, 1) if config.use_halting else None

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, perm: torch.Tensor,
                sign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values (B, H, T, D) of LN(x), RoPE applied at the rows of cos/sin (T, D)."""
        attn = self.attention
        h = self.attn_norm(x)
        q, k, v = attn._heads(attn.q_proj(h)), attn._heads(attn.k_proj(h)), attn._heads(attn.v_proj(h))
        q = q * cos + q[..., perm] * sign * sin
        k = k * cos + k[..., perm] * sign * sin
        return q, k, v

    def finish(self, x: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               visible: torch.Tensor, site: tuple[int, int], p: float,
               masks: DropoutMasks | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of q over keys/values (visible: bool (T, K)), residuals and MLP.

        Returns the block output (B, T, C) and p_halt (B, T) when the block has a halting head.
        """
        attn = self.attention
        block, iteration = site
        scores = (q @ keys.transpose(-1, -2)) / math.sqrt(attn.head_dim)        # (B, H, T, K)
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        probs = _dropout(probs, "attn_probs", block, iteration, p, self.training, masks)
        out = probs @ values                                                    # (B, H, T, D)
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)       # (B, T, C)
        out = _dropout(attn.out_proj(out), "attn_out", block, iteration, p, self.training, masks)
        x = x + out
        h = self.mlp_norm(x)
        mlp = self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        x = x + _dropout(mlp, "mlp_out", block, iteration, p, self.training, masks)
        # The halting head reads a detached state: it is a probe trained on its own target and
        # must not pull the language model's representation towards it.
        halt = torch.sigmoid(self.halting(x.detach())).squeeze(-1) if self.halting is not None else None
        return x, halt


def visibility(positions_q: torch.Tensor, positions_k: torch.Tensor, global_k: torch.Tensor,
               window_size: int) -> torch.Tensor:
    """bool (Tq, Tk): key j visible to query i iff j <= i and (i - j < window or j global)."""
    delta = positions_q[:, None] - positions_k[None, :]
    return (delta >= 0) & ((delta < window_size) | global_k[None, :])


def depth_grid(depth: int | torch.Tensor, num_blocks: int, batch: int, length: int) -> torch.Tensor:
    """Per-token iteration counts as a LongTensor (num_blocks, B, T), each >= 1."""
    grid = torch.as_tensor(depth, dtype=torch.long).expand(num_blocks, batch, length)
    if int(grid.min()) < 1:
        raise ValueError(f"depth must be >= 1 iteration per block, got min {int(grid.min())}")
    return grid


class LanternModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.final_norm_eps)
        self.injection = (nn.Linear(2 * config.hidden_size, config.hidden_size)
                          if config.input_injection else None)
        self.depth_probe = DepthProbe(config) if config.has_depth_probe else None
        cos, sin = rope_tables(config)
        perm, sign = rope_rotation(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_perm", perm, persistent=False)
        self.register_buffer("rope_sign", sign, persistent=False)
        self.apply(self._init_weights)
        if self.injection is not None:
            # Start as h' = h (the identity on h, nothing from e): a model trained without
            # injection keeps its function when the adapter is added.
            with torch.no_grad():
                c = config.hidden_size
                self.injection.weight.zero_()
                self.injection.weight[:, :c] = torch.eye(c)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- pieces shared with the incremental decoder and the exporter ---------------------------

    def check_positions(self, last_position: int) -> None:
        if last_position >= self.config.max_position:
            raise ValueError(
                f"sequence reaches position {last_position} but the model has max_position="
                f"{self.config.max_position} learned positions; shorten the prompt or "
                f"max_new_tokens")

    def is_global(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """bool like ids: position 0 and THINK tokens are global."""
        glob = positions == 0
        if self.config.think_token_id is not None:
            glob = glob | (ids == self.config.think_token_id)
        return glob

    def embed(self, ids: torch.Tensor, positions: torch.Tensor,
              masks: DropoutMasks | None = None) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding(positions)
        return _dropout(x, *EMBED_SITE, self.config.dropout, self.training, masks)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope_cos[positions], self.rope_sin[positions]

    def lm_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final LayerNorm and the tied projection: (logits, normed hidden)."""
        hidden = self.final_norm(x)
        return hidden @ self.token_embedding.weight.T, hidden

    # --- depth: recursion order and input injection -------------------------------------------

    def inject(self, x: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """h = W [h ; e]: the input injection adapter (a Linear 2C -> C)."""
        return self.injection(torch.cat((x, embedded.expand_as(x)), dim=-1))

    def iterate(self, x: torch.Tensor, embedded: torch.Tensor, b: int, i: int,
                active: torch.Tensor, carried: dict, cos: torch.Tensor, sin: torch.Tensor,
                visible: torch.Tensor, masks: DropoutMasks | None):
        """Iteration i of block b on x (B, T, C) in the full forward (no stored context).

        active (B, T): tokens that run it; the others keep their state, and their keys/values
        are those of their last iteration of this block (carried[b], the carried-KV policy).
        Returns (x, p_halt or None).
        """
        cfg = self.config
        block = self.blocks[b]
        run = active[..., None]                                                 # (B, T, 1)
        if cfg.injects(b, i):
            x = torch.where(run, self.inject(x, embedded), x)
        q, k, v = block.project(x, cos, sin, self.rope_perm, self.rope_sign)
        if b in carried:
            k = torch.where(run[:, None], k, carried[b][0])
            v = torch.where(run[:, None], v, carried[b][1])
        out, halt = block.finish(x, q, k, v, visible, (b, i), cfg.dropout, masks)
        carried[b] = (k, v)
        return torch.where(run, out, x), halt

    # --- full-sequence forward --------------------------------------------------------------

    def _prepare(self, ids: torch.Tensor, positions: torch.Tensor | None,
                 masks: DropoutMasks | None):
        """Embedding, RoPE rows and per-row visibility (B, 1, T, T) of a full forward."""
        cfg = self.config
        length = ids.shape[1]
        if positions is None:
            positions = torch.arange(length, device=ids.device)
        elif positions.shape != (length,):
            raise ValueError(f"positions must have shape ({length},), got {tuple(positions.shape)}")
        self.check_positions(int(positions[-1]))
        x = self.embed(ids, positions[None, :], masks)
        cos, sin = self.rope(positions)
        glob = self.is_global(ids, positions[None, :])
        # Batches may place THINK tokens differently: one visibility per row, broadcast on heads.
        visible = torch.stack([visibility(positions, positions, g, cfg.window_size) for g in glob])
        return x, cos, sin, visible[:, None]

    def forward(self, ids: torch.Tensor, depth: int | torch.Tensor | None = None,
                dropout_masks: DropoutMasks | None = None,
                positions: torch.Tensor | None = None) -> ModelOutput:
        """Full forward over ids (B, T), by default at positions 0..T-1.

        depth: iterations per block; an int (uniform, default steps_base) or a LongTensor
        broadcastable to (num_blocks, B, T) for per-token depth (carried-KV policy). The
        (block, iteration) order follows config.recursion_order.
        positions: increasing LongTensor (T,) shared by the batch. The trainer places windows
        late in the sequence this way ([0, off+1, off+2, ...]: BOS at 0, then text far past
        the window), so every learned position row is trained.
        """
        cfg = self.config
        batch, length = ids.shape
        depth = cfg.steps_base if depth is None else depth
        grid = depth_grid(depth, cfg.num_blocks, batch, length).to(ids.device)
        x, cos, sin, visible = self._prepare(ids, positions, dropout_masks)
        embedded, carried = x, {}
        halting: list[list[torch.Tensor]] = [[] for _ in self.blocks]
        for b, i in cfg.schedule(int(grid.max())):
            if i >= int(grid[b].max()):
                continue
            x, halt = self.iterate(x, embedded, b, i, grid[b] > i, carried, cos, sin, visible,
                                   dropout_masks)
            if halt is not None:
                halting[b].append(halt)
        logits, hidden = self.lm_head(x)
        return ModelOutput(logits, hidden, stack_halting(halting))

    def exits(self, ids: torch.Tensor, positions: torch.Tensor | None = None
              ) -> list[ModelOutput]:
        """The outputs at every uniform depth 1..steps_reasoning, each equal to
        ``forward(ids, d)``, at the cost of continuing rather than restarting.

        Cycle order: the LM head reads the state after each cycle. Sequence order: block 0
        continues one iteration per depth; the blocks after it re-run from its new output.
        Halting is left out (None).
        """
        cfg = self.config
        x, cos, sin, visible = self._prepare(ids, positions, None)
        embedded, active = x, torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
        out = []
        if cfg.recursion_order == "cycle":
            for i in range(cfg.steps_reasoning):
                for b in range(cfg.num_blocks):
                    x = self.iterate(x, embedded, b, i, active, {}, cos, sin, visible, None)[0]
                out.append(ModelOutput(*self.lm_head(x), None))
            return out
        for d in range(1, cfg.steps_reasoning + 1):
            x = self.iterate(x, embedded, 0, d - 1, active, {}, cos, sin, visible, None)[0]
            y = x
            for b in range(1, cfg.num_blocks):
                for i in range(d):
                    y = self.iterate(y, embedded, b, i, active, {}, cos, sin, visible, None)[0]
            out.append(ModelOutput(*self.lm_head(y), None))
        return out


def stack_halting(halting: list[list[torch.Tensor]]) -> torch.Tensor | None:
    """(num_blocks, iterations, B, T), padding blocks that ran fewer iterations with NaN."""
    if not halting or not halting[0]:
        return None
    iterations = max(len(h) for h in halting)
    rows = []
    for h in halting:
        pad = [torch.full_like(h[0], float("nan"))] * (iterations - len(h))
        rows.append(torch.stack(h + pad))
    return torch.stack(rows)
