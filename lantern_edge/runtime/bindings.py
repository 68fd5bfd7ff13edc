"""One-token decode through IO binding: every graph bound once to persistent NumPy buffers.

The hot loop of generation feeds one token at a time. Here each session's inputs and outputs
are bound, at construction, to buffers that live as long as the engine: the token id and its
position, the attention bias row, two hidden-state buffers used in turn (the output of one block
iteration is the input of the next, so nothing is copied between iterations), the KV arrays
of every (block, iteration) themselves, the new key/value, the logits and the uncertainty
signals. A decode step then writes a few scalars, runs the bound sessions and copies the new
key/value into their ring slots; ORT allocates nothing (PERF_NOTES.md: a bound call costs
~2.6 us against ~5.5 us for `session.run`). numpy + onnxruntime only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:                      # engine.py imports this module
    from .engine import Engine, FeedResult

SIGNALS = ("entropy", "p_max", "dispersion", "score")


def bind(session: ort.InferenceSession, inputs: dict[str, np.ndarray],
         outputs: dict[str, np.ndarray | None]) -> ort.IOBinding:
    """An IOBinding of session with each named input/output on the given CPU array."""
    binding = session.io_binding()
    for name, array in inputs.items():
        binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
    for name, array in outputs.items():
        if array is not None:
            binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape),
                                array.ctypes.data)
    return binding


class DecodeBindings:
    """The bound buffers and bindings of one Engine (CPU provider)."""

    def __init__(self, engine: Engine):
        cfg, kv = engine.config, engine.kv
        self.engine = engine
        hidden, heads, head_dim = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        stored = kv.keys.shape[3]
        self.ids = np.zeros(1, np.int64)
        self.position = np.zeros(1, np.int64)
        self.bias = np.zeros((1, stored + 1), np.float32)                 # [T, K + T]
        self.hidden = (np.zeros((1, 1, hidden), np.float32), np.zeros((1, 1, hidden), np.float32))
        self.key = np.zeros((1, heads, 1, head_dim), np.float32)           # [S, H, T, D]
        self.value = np.zeros((1, heads, 1, head_dim), np.float32)
        has_halt = {o.name for o in engine.blocks[0].get_outputs()} >= {"halt"}
        self.halt = np.zeros((1, 1), np.float32) if has_halt else None
        self.logits = np.zeros((1, 1, cfg.vocab_size), np.float32)
        self.weights = np.zeros(3, np.float32)
        self.signal_buffers = {name: np.zeros(1, np.float32) for name in SIGNALS}

        self.embed = bind(engine.embed, {"input_ids": self.ids, "positions": self.position},
                          {"hidden": self.hidden[0]})
        # blocks[b][i][p]: iteration i of block b reading hidden[p], writing hidden[1 - p]
        self.blocks = [[[bind(session,
                              {"hidden": self.hidden[p], "positions": self.position,
                               "past_key": kv.keys[b, i], "past_value": kv.values[b, i],
                               "attn_bias": self.bias},
                              {"hidden_out": self.hidden[1 - p], "key": self.key,
                               "value": self.value, "halt": self.halt})
                         for p in (0, 1)]
                        for i in range(cfg.steps_reasoning)]
                       for b, session in enumerate(engine.blocks)]
        self.lm_head = [bind(engine.lm_head, {"hidden": self.hidden[p]}, {"logits": self.logits})
                        for p in (0, 1)]
        self.uncertainty = bind(engine.uncertainty,
                                {"logits": self.logits[0], "weights": self.weights},
                                self.signal_buffers)

    def _run(self, name: str, session: ort.InferenceSession, binding: ort.IOBinding) -> None:
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        self.engine.timer.add(name, time.perf_counter() - start)

    def feed(self, token: int, depth: int, halting_threshold: float | None,
             min_iterations: int) -> FeedResult:
        """Engine.feed for one token (already validated by the engine)."""
        from .engine import FeedResult

        engine, kv = self.engine, self.engine.kv
        position, is_global, slot = kv.begin_token(token, engine.think_id, self.bias[0])
        self.ids[0], self.position[0] = token, position
        self._run("embed", engine.embed, self.embed)
        keys, values, key, value = kv.keys, kv.values, self.key[0, :, 0], self.value[0, :, 0]
        last_block, deepest = len(self.blocks) - 1, kv.keys.shape[1]
        parity = mc_parity = 0                      # hidden[parity] holds the current state
        iterations, halting = [], []
        for b, rows in enumerate(self.blocks):
            session, done, p_halt = engine.blocks[b], 0, None
            for i in range(depth):
                mc_parity = parity if b == last_block else mc_parity
                self._run("block", session, rows[i][parity])
                parity = 1 - parity
                keys[b, i, :, slot] = key
                values[b, i, :, slot] = value
                done = i + 1
                if self.halt is not None:
                    p_halt = float(self.halt[0, 0])
                if (halting_threshold is not None and p_halt is not None
                        and done >= min_iterations and p_halt >= halting_threshold):
                    break
            if done < deepest:                      # carried-KV policy: deeper iterations
                keys[b, done:, :, slot] = key
                values[b, done:, :, slot] = value
            iterations.append(done)
            halting.append(p_halt)
        kv.commit_slot(position, slot, is_global)
        self._run("lm_head", engine.lm_head, self.lm_head[parity])
        # the input of the last block's last iteration was not overwritten since: copy it out
        return FeedResult(self.logits[0], iterations, halting, position, is_global,
                          self.hidden[mc_parity].copy())

    def holds(self, logits: np.ndarray) -> bool:
        """Whether logits [1, V] is the bound logits buffer (the latest decode's)."""
        return (logits.ndim == 2 and logits.shape[0] == 1
                and logits.ctypes.data == self.logits.ctypes.data)

    def signals(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        np.copyto(self.weights, weights)
        self._run("uncertainty", self.engine.uncertainty, self.uncertainty)
        return self.signal_buffers
