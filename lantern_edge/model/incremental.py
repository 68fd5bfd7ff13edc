"""Incremental decoding reference: prefill T tokens, then decode one at a time.

Each (block, iteration) owns a KV state: a ring buffer of ``window_size`` slots for ordinary
tokens (slot = position % window_size) and a global buffer of ``max_global_tokens`` slots for
global tokens (position 0 and THINK tokens), which are never written to the ring. Memory is
O(window + globals) whatever the sequence length. A token that ran d < steps_reasoning
iterations of a block gets its last computed keys/values copied into the deeper iterations'
buffers (carried-KV policy, see modeling.py). This is the oracle the ONNX runtime is tested
against, so it stays plain: no tricks, batch 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .modeling import (DropoutMasks, LanternModel, ModelOutput, depth_grid, stack_halting,
                       visibility)


@dataclass
class KVBuffer:
    """KV state of one (block, iteration)."""

    ring_k: torch.Tensor        # (1, H, W, D)
    ring_v: torch.Tensor
    ring_pos: torch.Tensor      # (W,) absolute position held by each slot, -1 when empty
    glob_k: torch.Tensor        # (1, H, G, D)
    glob_v: torch.Tensor
    glob_pos: torch.Tensor      # (G,) absolute position of each global slot, -1 when empty
    glob_count: int = 0

    @classmethod
    def empty(cls, heads: int, window: int, globals_: int, head_dim: int) -> "KVBuffer":
        zeros = lambda n: torch.zeros(1, heads, n, head_dim)  # noqa: E731
        empty = lambda n: torch.full((n,), -1, dtype=torch.long)  # noqa: E731
        return cls(zeros(window), zeros(window), empty(window), zeros(globals_), zeros(globals_),
                   empty(globals_))

    def context(self, positions: torch.Tensor, window: int):
        """Keys, values (1, H, W+G, D) and visibility (T, W+G) of the stored context.

        A stored entry at position j is visible to a query at i when 0 <= j < i (strictly: the
        new tokens bring their own keys) and, for ring entries, i - j < window. Judging by
        stored positions lets a caller re-run the latest position (MC refinement) after its
        KV was written.
        """
        delta = positions[:, None] - self.ring_pos[None, :]
        ring_ok = (self.ring_pos[None, :] >= 0) & (delta > 0) & (delta < window)
        glob_ok = (self.glob_pos[None, :] >= 0) & (self.glob_pos[None, :] < positions[:, None])
        keys = torch.cat((self.ring_k, self.glob_k), dim=2)
        values = torch.cat((self.ring_v, self.glob_v), dim=2)
        return keys, values, torch.cat((ring_ok, glob_ok), dim=1)

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
              is_global: torch.Tensor) -> None:
        """Store the new tokens' k, v (1, H, T, D) in order; later positions overwrite slots."""
        window = self.ring_k.shape[2]
        for t in range(k.shape[2]):
            if is_global[t] and self.glob_count and self.glob_pos[self.glob_count - 1] == positions[t]:
                # the newest global token run again (continued deeper): overwrite its slot
                self.glob_k[:, :, self.glob_count - 1] = k[:, :, t]
                self.glob_v[:, :, self.glob_count - 1] = v[:, :, t]
            elif is_global[t]:
                if self.glob_count >= self.glob_k.shape[2]:
                    raise ValueError(
                        f"the global KV buffer is full ({self.glob_k.shape[2]} slots: position 0 "
                        f"and THINK tokens); raise max_global_tokens or inject fewer THINK tokens")
                self.glob_k[:, :, self.glob_count] = k[:, :, t]
                self.glob_v[:, :, self.glob_count] = v[:, :, t]
                self.glob_pos[self.glob_count] = positions[t]
                self.glob_count += 1
            else:
                slot = int(positions[t]) % window
                self.ring_k[:, :, slot] = k[:, :, t]
                self.ring_v[:, :, slot] = v[:, :, t]
                self.ring_pos[slot] = positions[t]


class IncrementalDecoder:
    """Feeds tokens to a LanternModel chunk by chunk, keeping per-(block, iteration) KV state."""

    def __init__(self, model: LanternModel):
        cfg = model.config
        self.model = model
        self.length = 0
        self.buffers = [[KVBuffer.empty(cfg.num_heads, cfg.window_size, cfg.max_global_tokens,
                                        cfg.head_dim) for _ in range(cfg.steps_reasoning)]
                        for _ in range(cfg.num_blocks)]
        self._last: dict | None = None       # the newest token's state, for `deepen`

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, depth: int | torch.Tensor | None = None,
                halting_threshold: float | None = None) -> ModelOutput:
        """Run new tokens ids (T,) at the next positions and store their KV.

        depth: iterations per block, an int or a LongTensor broadcastable to (num_blocks, T),
        at most steps_reasoning. halting_threshold (one token only): a block stops after an
        iteration whose p_halt >= threshold (cycle order: all blocks stop after a cycle whose
        last block says so). Returns logits (1, T, V), hidden (1, T, C), halting; afterwards
        `iterations` holds the last token's iterations per block and `mc_input` the hidden
        state entering the last block's last iteration (the MC-dropout step's input).
        """
        model, cfg = self.model, self.model.config
        length = ids.shape[0]
        positions = torch.arange(self.length, self.length + length)
        model.check_positions(int(positions[-1]))
        depth = cfg.steps_base if depth is None else depth
        depth = torch.as_tensor(depth, dtype=torch.long)
        grid = depth_grid(depth.unsqueeze(-2) if depth.dim() else depth,
                          cfg.num_blocks, 1, length)[:, 0].clone()          # (num_blocks, T)
        if int(grid.max()) > cfg.steps_reasoning:
            raise ValueError(f"depth {int(grid.max())} exceeds steps_reasoning={cfg.steps_reasoning}")
        x = model.embed(ids[None], positions[None])
        start = [0] * cfg.num_blocks
        out = self._run(ids, positions, x, x, grid, start, halting_threshold)
        self.length += length
        return out

    @torch.no_grad()
    def deepen(self, depth: int) -> ModelOutput:
        """Continue the newest token to `depth` iterations per block instead of re-running it.

        Sequence order: block 0 resumes from its state after the iterations it ran (their KV
        is stored already) and runs on to `depth`; the following blocks re-run from their new
        input. Cycle order: cycles continue from where the token stopped to `depth`; nothing
        is re-run. The result equals rewinding the token and feeding it at `depth`.
        """
        cfg, last = self.model.config, self._last
        if last is None:
            raise ValueError("nothing to deepen: no token has been fed")
        done = last["iterations"]
        if not max(done) < depth <= cfg.steps_reasoning:
            raise ValueError(f"depth must be in ({max(done)}, steps_reasoning="
                             f"{cfg.steps_reasoning}] to deepen a token that ran {done}")
        grid = torch.full((cfg.num_blocks, 1), depth, dtype=torch.long)
        if cfg.recursion_order == "cycle":
            start, x = [min(done)] * cfg.num_blocks, last["final"]
        else:
            start, x = [done[0]] + [0] * (cfg.num_blocks - 1), last["block_out"][0]
        return self._run(last["ids"], last["positions"], x, last["embedded"], grid, start, None)

    def _run(self, ids, positions, x, embedded, grid, start, halting_threshold) -> ModelOutput:
        """Iterations start[b]..grid[b]-1 of every block in recursion order from state x, the
        KV of each written (carried past a token's depth); iterations below start[b] are
        stored already."""
        model, cfg = self.model, self.model.config
        length = ids.shape[0]
        is_global = model.is_global(ids, positions)
        cos, sin = model.rope(positions)
        new_visible = visibility(positions, positions, is_global, cfg.window_size)
        halting: list[list[torch.Tensor]] = [[] for _ in range(cfg.num_blocks)]
        carried: dict = {}
        block_out = [None] * cfg.num_blocks
        for b, i in cfg.schedule(cfg.steps_reasoning):
            if i < start[b]:
                continue
            if i < int(grid[b].max()):
                active = (grid[b] > i)[None, None, :, None]                   # (1, 1, T, 1)
                if cfg.injects(b, i):
                    x = torch.where(active[:, 0], model.inject(x, embedded), x)
                if b == cfg.num_blocks - 1 and int(grid[b, -1]) > i:
                    self.mc_input = x[:, -1:].clone()      # kept: the last one run wins
                x, k, v, halt = self._step(b, i, x, *carried.get(b, (None, None)), active,
                                           positions, cos, sin, new_visible, None)
                carried[b] = (k, v)
                block_out[b] = x[:, -1:]
                if halt is not None:
                    halting[b].append(halt)
                    if halting_threshold is not None and length == 1:
                        stop = float(halt[0, -1]) >= halting_threshold
                        if stop and cfg.recursion_order == "sequence":
                            grid[b] = i + 1
                        elif stop and b == cfg.num_blocks - 1:
                            grid[:] = i + 1
            # carried[b] holds each token's deepest computed KV (carried for shallow tokens)
            self.buffers[b][i].write(*carried[b], positions, is_global)
        self.iterations = grid[:, -1].tolist()
        self._last = {"ids": ids[-1:], "positions": positions[-1:], "embedded": embedded[:, -1:],
                      "final": x[:, -1:], "block_out": block_out, "iterations": self.iterations}
        logits, hidden = model.lm_head(x)
        return ModelOutput(logits, hidden, stack_halting(halting))

    def rewind(self) -> None:
        """Forget the latest token so it can be run again (deeper). Its ring slot held position
        p - window before, which no query at p or later can see, so nothing is lost."""
        if self.length == 0:
            raise ValueError("nothing to rewind: no token has been fed")
        self.length -= 1
        p = self.length
        for row in self.buffers:
            for buf in row:
                slot = p % buf.ring_pos.shape[0]
                if buf.ring_pos[slot] == p:
                    buf.ring_pos[slot] = -1
                if buf.glob_count and buf.glob_pos[buf.glob_count - 1] == p:
                    buf.glob_count -= 1
                    buf.glob_pos[buf.glob_count] = -1

    def _step(self, b, i, x, carried_k, carried_v, active, positions, cos, sin, new_visible,
              masks: DropoutMasks | None):
        model = self.model
        block = model.blocks[b]
        q, k, v = block.project(x, cos, sin, model.rope_perm, model.rope_sign)
        if carried_k is not None:
            k = torch.where(active, k, carried_k)
            v = torch.where(active, v, carried_v)
        ctx_k, ctx_v, ctx_visible = self.buffers[b][i].context(positions, model.config.window_size)
        keys = torch.cat((ctx_k.expand(k.shape[0], -1, -1, -1), k), dim=2)
        values = torch.cat((ctx_v.expand(v.shape[0], -1, -1, -1), v), dim=2)
        visible = torch.cat((ctx_visible, new_visible), dim=1)
        out, halt = block.finish(x, q, keys, values, visible, (b, i), model.config.dropout, masks)
        return torch.where(active[:, 0], out, x), k, v, halt

    @torch.no_grad()
    def block_step(self, block: int, iteration: int, x: torch.Tensor, ids: torch.Tensor,
                   start: int, dropout_masks: DropoutMasks | None = None):
        """One iteration of one block for tokens ids (T,) at positions start.., storing nothing.

        x: (S, T, C) hidden states entering that iteration (S samples share the KV state).
        start may be an already-stored position (re-running the latest token for MC refinement).
        Returns (out (S, T, C), k, v (S, H, T, D), p_halt (S, T) or None). With dropout_masks
        this is the MC-dropout step the exported stochastic graph must reproduce.
        """
        model, cfg = self.model, self.model.config
        length = x.shape[1]
        positions = torch.arange(start, start + length)
        cos, sin = model.rope(positions)
        is_global = model.is_global(ids, positions)
        new_visible = visibility(positions, positions, is_global, cfg.window_size)
        active = torch.ones(1, 1, length, 1, dtype=torch.bool)
        return self._step(block, iteration, x, None, None, active, positions, cos, sin,
                          new_visible, dropout_masks)
