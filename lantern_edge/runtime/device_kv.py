"""One-token decode with the KV state resident on the accelerator (CUDA provider).

Every (block, iteration)'s keys and values live in device memory (one OrtValue [R, H, K, D] per
block and kind, R = steps_reasoning, K = W + G); the block graphs read them in place through IO
binding (a pointer into the block's buffer), the hidden states ping-pong between two device
buffers, and only a few bytes cross to the host per call (token id, position, the bias row,
p_halt) plus the logits the controller needs. New keys/values are written into their slots on
the device by a tiny ScatterND graph whose output is bound to its own input buffer, so the
write happens in place (ORT's ScatterND skips its input copy when input and output coincide;
were it to copy, the result would still be correct). Prefill and any multi-token feed run on
the host KV (decode.py's HostPass) and upload it once.

The runtime may not import onnx, so that one helper graph is encoded here directly as ONNX
protobuf bytes (a handful of fields). Run with device="cpu" the same code drives CPU OrtValues,
which is how the tests check it without a GPU. numpy + onnxruntime only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .fusion import PROBABILITIES
from .protobuf import FLOAT, INT64, bytes_field as _bytes, int_field as _int, node as _node
from .protobuf import value_info as _value_info

if TYPE_CHECKING:                      # decode.py imports this module
    from .decode import FeedResult, Sequence

# --- the KV write graph, as protobuf bytes --------------------------------------------------------

def kv_write_model() -> bytes:
    """ModelProto: key_out = ScatterND(past_key, indices, Expand(Reshape(key, update_shape),
    expand_shape)), and the same for values. indices [N, H, 3] = (iteration, head, slot)."""
    nodes, inputs, outputs = [], [], []
    for kind in ("key", "value"):
        nodes += [_node("Reshape", [kind, "update_shape"], [f"{kind}_rows"]),
                  _node("Expand", [f"{kind}_rows", "expand_shape"], [f"{kind}_updates"]),
                  _node("ScatterND", [f"past_{kind}", "indices", f"{kind}_updates"],
                        [f"{kind}_out"])]
        inputs += [_value_info(f"past_{kind}", FLOAT, ["R", "H", "K", "D"]),
                   _value_info(kind, FLOAT, ["S", "H", "T", "D"])]
        outputs.append(_value_info(f"{kind}_out", FLOAT, ["R", "H", "K", "D"]))
    inputs += [_value_info("update_shape", INT64, ["three_a"]),
               _value_info("expand_shape", INT64, ["three_b"]),
               _value_info("indices", INT64, ["N", "H", "three_c"])]
    graph = (b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "lantern_kv_write")
             + b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs))
    opset = _bytes(1, "") + _int(2, 17)
    return _int(1, 8) + _bytes(2, "lantern-edge") + _bytes(7, graph) + _bytes(8, opset)


# --- the device decode path -------------------------------------------------------------------------

class DevicePass:
    """One token with the KV state on the engine's device ("cuda", or "cpu" in tests); a pass
    of decode.py. The host KV arrays of the Sequence serve prompts (multi-token feeds), which
    the Sequence brackets with download() and upload()."""

    def __init__(self, seq: Sequence):
        engine, cfg, kv = seq.engine, seq.config, seq.kv
        self.seq, self.device = seq, engine.device or "cpu"
        blocks, depth, heads, head_dim = (cfg.num_blocks, cfg.steps_reasoning, cfg.num_heads,
                                          cfg.head_dim)
        stored = kv.keys.shape[3]
        self.item = heads * stored * head_dim * 4                      # bytes per iteration

        def on_device(shape):
            return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), self.device, 0)
        # zero-filled: masked slots still enter probs @ V, and 0 * garbage could be NaN
        self.keys = [on_device((depth, heads, stored, head_dim)) for _ in range(blocks)]
        self.values = [on_device((depth, heads, stored, head_dim)) for _ in range(blocks)]
        self.hidden = [on_device((1, 1, cfg.hidden_size)) for _ in range(2)]
        self.key, self.value = on_device((1, heads, 1, head_dim)), on_device((1, heads, 1, head_dim))
        self.ids = np.zeros(1, np.int64)
        self.position = np.zeros(1, np.int64)
        self.bias = np.zeros((1, stored + 1), np.float32)
        self.halt = np.zeros((1, 1), np.float32) if engine.has_halt else None
        self.logits = np.zeros((1, 1, cfg.vocab_size), np.float32)
        self.update_shape = np.array([1, heads, head_dim], np.int64)
        # indices[i]: rows (iteration, head, slot) for iterations i..R-1: writing the newest
        # iteration's KV into every deeper one as well is the carried-KV policy for free
        self.indices = [np.stack(np.meshgrid(np.arange(i, depth), np.arange(heads), [0],
                                             indexing="ij"), axis=-1)[:, :, 0].astype(np.int64)
                        for i in range(depth)]
        self.expand = [np.array([depth - i, heads, head_dim], np.int64) for i in range(depth)]
        writer = engine.kv_writer
        self.embed = self._bind(engine.embed, {"input_ids": self.ids, "positions": self.position},
                                {"hidden": self.hidden[0]})
        self.block_bindings = [[[self._bind(session, {
            "hidden": self.hidden[p], "positions": self.position,
            "past_key": (self.keys[b], i), "past_value": (self.values[b], i),
            "attn_bias": self.bias, **seq.stored_slots},
            {"hidden_out": self.hidden[1 - p], "key": self.key,
                                      "value": self.value, "halt": self.halt})
            for p in (0, 1)] for i in range(depth)] for b, session in enumerate(engine.blocks)]
        self.writes = [[self._bind(writer, {
            "past_key": self.keys[b], "past_value": self.values[b], "key": self.key,
            "value": self.value, "update_shape": self.update_shape,
            "expand_shape": self.expand[i], "indices": self.indices[i]},
            {"key_out": self.keys[b], "value_out": self.values[b]}) for i in range(depth)]
            for b in range(blocks)]
        self.probabilities = (np.zeros((1, 1, cfg.vocab_size), np.float32)
                              if engine.has_probabilities else None)
        self.lm_head = [self._bind(engine.lm_head, {"hidden": self.hidden[p]},
                                   {"logits": self.logits, PROBABILITIES: self.probabilities})
                        for p in (0, 1)]
        # input injection: W [hidden[p] ; embedded] -> hidden[1 - p]
        self.embedded = on_device((1, 1, cfg.hidden_size)) if engine.inject is not None else None
        self.inject_bindings = ([self._bind(engine.inject, {"hidden": self.hidden[p],
                                                            "embedded": self.embedded},
                                            {"hidden_out": self.hidden[1 - p]}) for p in (0, 1)]
                                if engine.inject is not None else None)
        self.fresh = False                   # device KV newer than the host copy

    def _bind(self, session, inputs: dict, outputs: dict) -> ort.IOBinding:
        """Bind numpy arrays (host), OrtValues (device) and (OrtValue, iteration) pointers."""
        binding = session.io_binding()
        for name, value in inputs.items():
            self._bind_one(binding.bind_input, name, value)
        for name, value in outputs.items():
            if value is not None:
                self._bind_one(binding.bind_output, name, value)
        return binding

    def _bind_one(self, bind, name, value) -> None:
        if isinstance(value, np.ndarray):
            bind(name, "cpu", 0, value.dtype, list(value.shape), value.ctypes.data)
            return
        offset = 0
        if isinstance(value, tuple):                              # one iteration of a block
            value, iteration = value
            offset = iteration * self.item
            shape = value.shape()[1:]
        else:
            shape = value.shape()
        bind(name, self.device, 0, np.float32, list(shape), value.data_ptr() + offset)

    def upload(self) -> None:
        """Host KV (after a prefill on the host) -> device."""
        for b in range(len(self.keys)):
            self.keys[b].update_inplace(self.seq.kv.keys[b])
            self.values[b].update_inplace(self.seq.kv.values[b])
        self.fresh = False

    def download(self) -> None:
        """Device KV -> host, before a multi-token feed or a host-side read."""
        if self.fresh:
            for b in range(len(self.keys)):
                self.seq.kv.keys[b] = self.keys[b].numpy()
                self.seq.kv.values[b] = self.values[b].numpy()
            self.fresh = False

    def begin(self, ids: np.ndarray, resume: FeedResult | None = None) -> None:
        seq = self.seq
        token = int(ids[0])
        self.position_, self.is_global, slot = seq.kv.begin_token(token, seq.engine.think_id,
                                                                  self.bias[0])
        self.slot = slot
        self.ids[0], self.position[0] = token, self.position_
        for rows in self.indices:
            rows[:, :, 2] = slot
        self.parity = self.mc_parity = 0
        if resume is not None:                         # continuation: its saved state
            self.hidden[0].update_inplace(np.ascontiguousarray(resume.resume, np.float32))
            if self.embedded is not None:
                self.embedded.update_inplace(np.ascontiguousarray(resume.embedded, np.float32))
            return
        seq.run_bound("embed", seq.engine.embed, self.embed)
        if self.embedded is not None:
            # no device-to-device copy in onnxruntime's Python API: 4*C bytes through the host
            self.embedded.update_inplace(self.hidden[0].numpy())

    def inject(self) -> None:
        self.seq.run_bound("inject", self.seq.engine.inject, self.inject_bindings[self.parity])
        self.parity = 1 - self.parity

    def state(self) -> np.ndarray:
        """A host copy of the current hidden state [1, 1, C] (what continuation resumes)."""
        return np.array(self.hidden[self.parity].numpy(), copy=True)

    def last_embedded(self) -> np.ndarray:
        return np.array(self.embedded.numpy(), copy=True)

    def final_hidden(self) -> np.ndarray:
        return self.state()[0]

    def block(self, b: int, i: int) -> float | None:
        seq = self.seq
        if b == len(self.block_bindings) - 1:
            self.mc_parity = self.parity
        seq.run_bound("block", seq.engine.blocks[b], self.block_bindings[b][i][self.parity])
        self.parity = 1 - self.parity
        seq.run_bound("kv_write", seq.engine.kv_writer, self.writes[b][i])
        return float(self.halt[0, 0]) if self.halt is not None else None

    def end_block(self, b: int, done: int) -> None:
        """Nothing to carry: every write already filled the deeper iterations."""

    def finish(self) -> tuple[np.ndarray, int, bool, np.ndarray, np.ndarray | None]:
        seq = self.seq
        seq.kv.commit_slot(self.position_, self.slot, self.is_global)
        self.fresh = True
        seq.run_bound("lm_head", seq.engine.lm_head, self.lm_head[self.parity])
        mc_input = np.array(self.hidden[self.mc_parity].numpy(), copy=True)   # [1, 1, C]
        return (self.logits[0], self.position_, self.is_global, mc_input,
                None if self.probabilities is None else self.probabilities[0, 0])

    def mc_outputs(self, step: FeedResult, masks: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs of engine.mc for the newest token, reading the device KV: logits and
        probabilities [S, 1, V] (engine.mc_has_head), else mc_step's hidden_out [S, 1, C]."""
        seq, kv, cfg = self.seq, self.seq.kv, self.seq.config
        b, i = cfg.num_blocks - 1, step.iterations[-1] - 1
        bias = kv.attn_bias(np.array([step.position]), np.array([step.is_global]))
        samples = masks["mask_attn_out"].shape[0]
        shapes = ({"logits": cfg.vocab_size, PROBABILITIES: cfg.vocab_size}
                  if seq.engine.mc_has_head else {"hidden_out": cfg.hidden_size})
        out = {name: np.zeros((samples, 1, width), np.float32) for name, width in shapes.items()}
        binding = self._bind(seq.engine.mc, {
            "hidden": np.ascontiguousarray(step.mc_input, np.float32),
            "positions": np.array([step.position], np.int64),
            "past_key": (self.keys[b], i), "past_value": (self.values[b], i),
            "attn_bias": bias, **masks, **seq.stored_slots}, out)
        seq.run_bound("mc_step", seq.engine.mc, binding)
        return list(out.values())
