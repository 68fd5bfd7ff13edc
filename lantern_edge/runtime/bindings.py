"""One-token decode through IO binding: every graph bound once to persistent NumPy buffers.

The hot loop of generation feeds one token at a time. Here each session's inputs and outputs
are bound, when the Sequence is made, to buffers that live as long as it: the token id and its
position, the attention bias row, two hidden-state buffers used in turn (the output of one block
iteration is the input of the next, so nothing is copied between iterations), the KV arrays
of every (block, iteration) themselves, the new key/value, the logits and the uncertainty
signals. A decode step then writes a few scalars, runs the bound sessions and copies the new
key/value into their ring slots; ORT allocates nothing (a bound call costs ~2.6 us against
~5.5 us for `session.run`). numpy + onnxruntime only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .engine import SIGNALS
from .fusion import PROBABILITIES

from .decode import FeedResult     # decode.py imports this module only when a Sequence is made

if TYPE_CHECKING:
    from .decode import Sequence


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


class BoundPass:
    """The bound buffers and bindings of one Sequence (CPU provider); a pass of decode.py."""

    def __init__(self, seq: Sequence):
        engine, cfg, kv = seq.engine, seq.config, seq.kv
        self.seq = seq
        hidden, heads, head_dim = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        stored = kv.keys.shape[3]
        self.ids = np.zeros(1, np.int64)
        self.position = np.zeros(1, np.int64)
        self.bias = np.zeros((1, stored + 1), np.float32)                 # [T, K + T]
        self.hidden = (np.zeros((1, 1, hidden), np.float32), np.zeros((1, 1, hidden), np.float32))
        self.key = np.zeros((1, heads, 1, head_dim), np.float32)           # [S, H, T, D]
        self.value = np.zeros((1, heads, 1, head_dim), np.float32)
        self.halt = np.zeros((1, 1), np.float32) if engine.has_halt else None
        self.logits = np.zeros((1, 1, cfg.vocab_size), np.float32)
        self.probabilities = (np.zeros((1, 1, cfg.vocab_size), np.float32)
                              if engine.has_probabilities else None)
        self.weights = np.zeros(3, np.float32)
        outputs = SIGNALS + (("p_benefit",) if engine.has_probe else ())
        self.signal_buffers = {name: np.zeros(1, np.float32) for name in outputs}
        self.embedded = np.zeros((1, 1, hidden), np.float32)   # input injection's e
        # signal_buffers already hold the signals of the logits buffer for self.weights (the
        # fused pass computes them in its call)
        self.signals_ready = False

        self.embed = bind(engine.embed, {"input_ids": self.ids, "positions": self.position},
                          {"hidden": self.hidden[0]})
        # blocks[b][i][p]: iteration i of block b reading hidden[p], writing hidden[1 - p]
        self.blocks = [[[bind(session,
                              {"hidden": self.hidden[p], "positions": self.position,
                               "past_key": kv.keys[b, i], "past_value": kv.values[b, i],
                               "attn_bias": self.bias, **seq.stored_slots},
                              {"hidden_out": self.hidden[1 - p], "key": self.key,
                               "value": self.value, "halt": self.halt})
                         for p in (0, 1)]
                        for i in range(cfg.steps_reasoning)]
                       for b, session in enumerate(engine.blocks)]
        self.lm_head = [bind(engine.lm_head, {"hidden": self.hidden[p]},
                             {"logits": self.logits, PROBABILITIES: self.probabilities})
                        for p in (0, 1)]
        # uncertainty[p]: the probe (if any) reads the final hidden state in hidden[p]
        self.uncertainty = [bind(engine.uncertainty,
                                 {"logits": self.logits[0], "weights": self.weights,
                                  **({"hidden": self.hidden[p][0]} if engine.has_probe else {})},
                                 self.signal_buffers)
                            for p in (0, 1)]
        # inject[p]: W [hidden[p] ; embedded] -> hidden[1 - p]
        self.inject_bindings = ([bind(engine.inject, {"hidden": self.hidden[p],
                                                      "embedded": self.embedded},
                                      {"hidden_out": self.hidden[1 - p]}) for p in (0, 1)]
                                if engine.inject is not None else None)

    def start_token(self, token: int) -> None:
        """Claim the token's KV slot and position and fill its id/position/bias inputs."""
        seq = self.seq
        self.position_, self.is_global, self.slot = seq.kv.begin_token(
            token, seq.engine.think_id, self.bias[0])
        self.ids[0], self.position[0] = token, self.position_
        self.parity = self.mc_parity = 0              # hidden[parity] holds the current state
        self.signals_ready = False

    def begin(self, ids: np.ndarray, resume: FeedResult | None = None) -> None:
        seq = self.seq
        self.start_token(int(ids[0]))
        if resume is not None:                        # continuation: its saved state
            np.copyto(self.hidden[0], resume.resume)
            if resume.embedded is not None:
                np.copyto(self.embedded, resume.embedded)
            return
        seq.run_bound("embed", seq.engine.embed, self.embed)
        if self.inject_bindings is not None:
            np.copyto(self.embedded, self.hidden[0])

    def inject(self) -> None:
        self.seq.run_bound("inject", self.seq.engine.inject, self.inject_bindings[self.parity])
        self.parity = 1 - self.parity

    def state(self) -> np.ndarray:
        return self.hidden[self.parity].copy()

    def last_embedded(self) -> np.ndarray:
        return self.embedded.copy()

    def final_hidden(self) -> np.ndarray:
        """[1, C] view of the final hidden state (valid until the next call)."""
        return self.hidden[self.parity][0]

    def block(self, b: int, i: int) -> float | None:
        seq, kv = self.seq, self.seq.kv
        if b == len(self.blocks) - 1:
            self.mc_parity = self.parity
        seq.run_bound("block", seq.engine.blocks[b], self.blocks[b][i][self.parity])
        self.parity = 1 - self.parity
        kv.keys[b, i, :, self.slot] = self.key[0, :, 0]
        kv.values[b, i, :, self.slot] = self.value[0, :, 0]
        return float(self.halt[0, 0]) if self.halt is not None else None

    def end_block(self, b: int, done: int) -> None:
        kv = self.seq.kv
        if done < kv.keys.shape[1]:                  # carried-KV policy: deeper iterations
            kv.keys[b, done:, :, self.slot] = self.key[0, :, 0]
            kv.values[b, done:, :, self.slot] = self.value[0, :, 0]

    def finish(self) -> tuple[np.ndarray, int, bool, np.ndarray, np.ndarray | None]:
        seq = self.seq
        seq.kv.commit_slot(self.position_, self.slot, self.is_global)
        seq.run_bound("lm_head", seq.engine.lm_head, self.lm_head[self.parity])
        # the input of the last block's last iteration was not overwritten since: copy it out
        return (self.logits[0], self.position_, self.is_global,
                self.hidden[self.mc_parity].copy(),
                None if self.probabilities is None else self.probabilities[0, 0])

    def holds(self, logits: np.ndarray) -> bool:
        """Whether logits [1, V] is the bound logits buffer (the latest decode's)."""
        # a [1, V] view of the [1, 1, V] buffer with its strides can only be all of it (numpy
        # views keep the owning array as their base; cheaper than comparing data pointers)
        return (logits.base is self.logits and logits.shape == self.logits.shape[1:]
                and logits.strides == self.logits.strides[1:])

    def signals(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        if not (self.signals_ready and weights.tobytes() == self.weights.tobytes()):
            np.copyto(self.weights, weights)
            self.seq.run_bound("uncertainty", self.seq.engine.uncertainty,
                               self.uncertainty[self.parity])
            self.signals_ready = True
        return self.signal_buffers


class FusedPass:
    """One token's cheap pass (embed, every (block, iteration) of steps_base, lm_head and, on
    the adaptive path, the uncertainty head) in one call of the fused graph (fusion.py). Used by
    Sequence.feed only where it computes what the separate calls compute (depth steps_base, no
    halting threshold, a new token, not a continuation), so it needs none of Sequence._loop's
    per-(block, iteration) decisions: `feed` is the whole token.

    It shares the BoundPass's buffers: token id, position, bias row, logits and their softmax,
    weights and signals, and hidden[0] as the final state, so that everything that reads a one-token
    decode's results (signals of the bound logits, the depth probe's input, continuation) reads
    them the same way whichever pass ran. The stored KV of every (block, iteration) is bound in
    place; the new rows come back in the scratch slot (GroupQueryAttention, attention.py) or in
    one small buffer per kind (the spliced attention) and are stored into their slot right
    after the call.
    """

    def __init__(self, seq: Sequence, bound: BoundPass):
        engine, cfg, kv = seq.engine, seq.config, seq.kv
        self.seq, self.bound = seq, bound
        hidden, depth = cfg.hidden_size, cfg.steps_base
        graph = engine.fused[0][0]
        # the new K/V rows of every (block, iteration) [blocks, R, H, D], which the fused call
        # writes for iterations < steps_base: with GroupQueryAttention the scratch slot of the
        # KV arrays (a view), else a buffer whose [H, D] rows the call's outputs are bound to
        # (the same memory as [1, H, 1, D]). Each token, one assignment per kind stores every
        # iteration in its slot, the deeper ones the last computed (carried-KV policy: source)
        if graph.shared_kv:
            self.new_keys = kv.keys[:, :, :, kv.scratch]
            self.new_values = kv.values[:, :, :, kv.scratch]
        else:
            rows = kv.keys.shape[:3] + kv.keys.shape[4:]
            self.new_keys = np.zeros(rows, np.float32)
            self.new_values = np.zeros(rows, np.float32)
        # (all iterations computed: a view, no copy)
        self.source = (slice(None) if depth == cfg.steps_reasoning
                       else np.minimum(np.arange(cfg.steps_reasoning), depth - 1))
        self.halts = np.zeros((cfg.num_blocks, depth), np.float32) if engine.has_halt else None
        self.depth, self.blocks = depth, cfg.num_blocks
        self.injects, self.probe = cfg.input_injection, engine.has_probe
        self.resume = np.zeros((1, 1, hidden), np.float32)
        self.mc_input = np.zeros((1, 1, hidden), np.float32)
        # the fused graph always has the softmax output; the bound LM head has it unless its
        # graph could not be edited (engine.has_probabilities)
        self.probabilities = (bound.probabilities if bound.probabilities is not None
                              else np.zeros_like(bound.logits))
        buffers = {"logits": bound.logits, PROBABILITIES: self.probabilities,
                   "final": bound.hidden[0], "resume": self.resume,
                   "mc_input": self.mc_input, "embedded": bound.embedded,
                   **bound.signal_buffers}
        inputs = {"input_ids": bound.ids, "positions": bound.position, "attn_bias": bound.bias}
        row = (1, cfg.num_heads, 1, cfg.head_dim)
        for (b, i) in graph.kv:
            if graph.shared_kv:
                # GroupQueryAttention reads the stored slots and writes the new row into the
                # scratch slot of the same buffer: input and output bound to one memory
                for kind, array in (("key", kv.keys), ("value", kv.values)):
                    inputs[f"past_{kind}.{b}.{i}"] = buffers[f"present_{kind}.{b}.{i}"] = \
                        array[b, i][None]
            else:
                buffers[f"key.{b}.{i}"] = self.new_keys[b, i].reshape(row)          # views
                buffers[f"value.{b}.{i}"] = self.new_values[b, i].reshape(row)
                inputs[f"past_key.{b}.{i}"] = kv.keys[b, i]
                inputs[f"past_value.{b}.{i}"] = kv.values[b, i]
            if self.halts is not None:
                buffers[f"halt.{b}.{i}"] = self.halts[b, i:i + 1].reshape(1, 1)
        self.bindings = []
        for fused, session in engine.fused:
            outputs = {}
            for role, name in fused.outputs.items():
                # roles that share an output (the resume state is the final one in cycle
                # order) are bound once, to the first role's buffer
                outputs.setdefault(name, buffers[role])
            self.bindings.append((session, bind(
                session, {**inputs, **({"weights": bound.weights} if fused.signals else {})},
                outputs)))
        self.state_buffer = {role: buffers[next(r for r, n in graph.outputs.items()
                                                if n == graph.outputs[role])]
                             for role in ("resume", "mc_input", "embedded")}

    def feed(self, token: int) -> FeedResult:
        """Token (a new one, at the next position) through the cheap pass: what
        Sequence._loop returns for it at depth steps_base without halting."""
        seq, bound, kv = self.seq, self.bound, self.seq.kv
        bound.start_token(token)                     # hidden[0] will hold the final state
        weights = seq.signal_weights
        if weights is not None:
            np.copyto(bound.weights, weights)
        session, binding = self.bindings[weights is not None]
        seq.run_bound("fused", session, binding)
        bound.signals_ready = weights is not None
        # the call has read the stored KV: store the new rows of every (block, iteration) now
        depth, slot = self.depth, bound.slot
        kv.keys[:, :, :, slot] = self.new_keys[:, self.source]
        kv.values[:, :, :, slot] = self.new_values[:, self.source]
        kv.commit_slot(bound.position_, slot, bound.is_global)
        # the states are views of the bound buffers, valid until this Sequence's next call
        # (like the logits): whatever reads them (MC step, continuation) runs before that
        state = self.state_buffer
        return FeedResult(
            bound.logits[0], [depth] * self.blocks,
            [None] * self.blocks if self.halts is None else self.halts[:, -1].tolist(),
            bound.position_, bound.is_global, state["mc_input"], token,
            [depth] * self.blocks, state["resume"],
            state["embedded"] if self.injects else None,
            bound.hidden[0][0] if self.probe else None, self.probabilities[0, 0])
