"""KV state in NumPy: per (block, iteration) preallocated [H, W+G, D] key and value buffers.

Slots 0..W-1 are the ring (slot = position % W), W..W+G-1 the global buffer in arrival order
(position 0 and THINK tokens). Every token is written into every (block, iteration), at the
same slot (carried-KV policy: iterations a token did not run get its deepest computed KV), so
one table of slot positions serves all buffers. Memory never grows with the sequence.

With `scratch`, one more slot W+G follows the globals: the fused cheap pass's attention
(attention.py, GroupQueryAttention on a KV buffer it shares with its output) writes each new
token's key/value there, and the host moves the row to its slot. It never holds a position,
so every attention bias masks it, and the graphs that attend over it compute what they would
without it (to ~1e-6: their softmax sums one more exact zero, in another order).
"""

from __future__ import annotations

import numpy as np

from ..model.config import ModelConfig


class KVState:
    """keys/values: [blocks, R, H, W+G, D] arrays to use (views into a batch's shared pool,
    pool.py); None: new ones, with the scratch slot when `scratch`."""

    def __init__(self, config: ModelConfig, keys: np.ndarray | None = None,
                 values: np.ndarray | None = None, scratch: bool = False):
        self.window = config.window_size
        self.globals = config.max_global_tokens
        scratch = scratch and keys is None
        stored = self.window + self.globals + (1 if scratch else 0)
        self.scratch = stored - 1 if scratch else None        # the scratch slot, if any
        shape = (config.num_blocks, config.steps_reasoning, config.num_heads, stored,
                 config.head_dim)
        self.keys = np.zeros(shape, np.float32) if keys is None else keys
        self.values = np.zeros(shape, np.float32) if values is None else values
        # position held by each stored slot, -1 when empty; ring slots first, then globals
        self.slot_pos = np.full(stored, -1, np.int64)
        self.is_global_slot = np.arange(stored) >= self.window
        self.global_count = 0
        self.length = 0          # next position
        # decode_bias of the next one-token step, kept up to date by commit_slot: from one
        # token to the next only two slots change visibility (see commit_slot)
        self._next_bias = np.zeros(stored + 1, np.float32)
        self._next_position = -1         # the position _next_bias is for; -1: none

    def reset(self) -> None:
        self.slot_pos[:] = -1
        self.global_count = 0
        self.length = 0
        self._next_position = -1

    @property
    def globals_free(self) -> int:
        return self.globals - self.global_count

    def attn_bias(self, positions: np.ndarray, new_global: np.ndarray) -> np.ndarray:
        """Additive mask [T, W+G+T]: 0 where visible, -inf where not (docs/ARTIFACTS.md)."""
        q = positions[:, None]
        stored = self.slot_pos[None, :]
        delta = q - stored
        see_stored = (stored >= 0) & (delta > 0) & ((delta < self.window) | self.is_global_slot)
        delta_new = q - positions[None, :]
        see_new = (delta_new >= 0) & ((delta_new < self.window) | new_global[None, :])
        visible = np.concatenate([see_stored, see_new], axis=1)
        return np.where(visible, np.float32(0), np.float32(-np.inf)).astype(np.float32)

    def decode_bias(self, position: int, out: np.ndarray) -> None:
        """attn_bias for one new token at `position`, written into out [W+G+1] (no allocation
        beyond a few small temporaries); equal to attn_bias([position], ...)[0]. A copy of the
        row commit_slot kept up to date when it is for this position; computed otherwise."""
        if position == self._next_position:
            np.copyto(out, self._next_bias)
            return
        stored = self.slot_pos
        delta = position - stored
        visible = (stored >= 0) & (delta > 0) & ((delta < self.window) | self.is_global_slot)
        out.fill(-np.inf)
        out[:-1][visible] = 0.0
        out[-1] = 0.0                                   # the token sees itself
        np.copyto(self._next_bias, out)
        self._next_position = position

    def begin_token(self, token: int, think_id: int | None, bias_row: np.ndarray):
        """One-token decode: (position, is_global, slot) of the next token, with its attention
        bias written into bias_row [W+G+1]. Shared by the CPU and the device decode paths."""
        position = self.length
        is_global = position == 0 or token == think_id
        slot = self.slot_for(position, is_global)
        self.decode_bias(position, bias_row)
        return position, is_global, slot

    def slot_for(self, position: int, is_global: bool) -> int:
        """The slot one new token's KV goes to (see slots_for)."""
        if not is_global:
            return position % self.window
        if self.global_count >= self.globals:
            raise ValueError(self._full_message())
        return self.window + self.global_count

    def commit_slot(self, position: int, slot: int, is_global: bool) -> None:
        """commit for one token."""
        self.slot_pos[slot] = position
        self.global_count += bool(is_global)
        self.length = position + 1
        if self._next_position == position:
            # the next token's row differs from this one's in two slots: this token's own
            # becomes visible, and the ring slot of position + 1 - W leaves the window (if
            # that token was global it sits in a global slot and stays visible; the ring slot
            # then holds an older position or nothing, invisible either way)
            self._next_bias[slot] = 0.0
            self._next_bias[(position + 1) % self.window] = -np.inf
            self._next_position = position + 1
        else:
            self._next_position = -1

    def _full_message(self) -> str:
        return (f"the global KV buffer is full ({self.globals} slots for position 0 and THINK "
                f"tokens); no more THINK tokens can be added")

    def slots_for(self, positions: np.ndarray, new_global: np.ndarray):
        """(token indices, slots) that the new tokens' KV go to; only the last W ordinary tokens
        of a long chunk keep a ring slot. Raises when the global buffer would overflow."""
        ordinary = np.flatnonzero(~new_global)
        ordinary = ordinary[positions[ordinary] > positions[-1] - self.window]
        glob = np.flatnonzero(new_global)
        if self.global_count + len(glob) > self.globals:
            raise ValueError(self._full_message())
        tokens = np.concatenate([ordinary, glob])
        slots = np.concatenate([positions[ordinary] % self.window,
                                self.window + self.global_count + np.arange(len(glob))])
        return tokens, slots

    def write(self, block: int, iteration: int, key: np.ndarray, value: np.ndarray,
              tokens: np.ndarray, slots: np.ndarray) -> None:
        """Store key/value [1, H, T, D] of the chosen tokens into (block, iteration)."""
        self.keys[block, iteration][:, slots] = key[0][:, tokens]
        self.values[block, iteration][:, slots] = value[0][:, tokens]

    def commit(self, positions: np.ndarray, tokens: np.ndarray, slots: np.ndarray,
               new_global: np.ndarray) -> None:
        """Record the positions now held by the written slots; advance the length."""
        self.slot_pos[slots] = positions[tokens]
        self.global_count += int(new_global.sum())
        self.length = int(positions[-1]) + 1
        self._next_position = -1

    def rewind(self) -> None:
        """Forget the latest token (to run it again deeper). Its ring slot held position
        p - W before, which no later query can see, so nothing is lost."""
        if self.length == 0:
            raise ValueError("nothing to rewind")
        p = self.length - 1
        held = np.flatnonzero(self.slot_pos == p)
        if len(held) and self.is_global_slot[held[0]]:
            self.global_count -= 1
        self.slot_pos[held] = -1
        self.length = p
        self._next_position = -1
