"""The step graphs driven per docs/ARTIFACTS.md with plain onnxruntime sessions: NumPy KV
bookkeeping written from the document, independent of the exporter's parity check and of the
runtime (tests/test_export.py, tests/test_export_depth.py)."""

import json

import numpy as np
import onnxruntime as ort

from lantern_edge.model.config import ModelConfig


class ContractDriver:
    """Per (block, iteration) a dict slot -> (position, key [H, D], value [H, D]): ordinary
    tokens go to slot position % W, global ones (position 0, THINK) to W + arrival index; a
    token that ran d iterations has its last key/value written to iterations
    d..steps_reasoning-1 too. (block, iteration) run in the manifest's recursion order, with
    inject.onnx before the iterations that inject; `deepen` continues the newest token."""

    def __init__(self, root):
        manifest = json.loads((root / "lantern.json").read_text())
        self.cfg = cfg = ModelConfig.from_dict(manifest["model_config"])
        graphs = manifest["graphs"]["fp32"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1            # tiny graphs; spinning pools fight on 2 cores
        open_ = lambda name: ort.InferenceSession(str(root / name), options)  # noqa: E731
        self.embed = open_(graphs["embed"]["file"])
        self.blocks = [open_(entry["file"]) for entry in graphs["blocks"]]
        self.mc_step = open_(graphs["mc_step"]["file"])
        self.lm_head = open_(graphs["lm_head"]["file"])
        self.inject = open_(graphs["inject"]["file"]) if "inject" in graphs else None
        self.stored = cfg.window_size + cfg.max_global_tokens
        self.slots = [[{} for _ in range(cfg.steps_reasoning)] for _ in range(cfg.num_blocks)]
        self.globals = 0
        self.length = 0
        self.calls = 0                              # block-graph calls

    def context(self, b, i, positions, new_global):
        cfg, entries = self.cfg, self.slots[b][i]
        keys = np.zeros((cfg.num_heads, self.stored, cfg.head_dim), np.float32)
        values = np.zeros_like(keys)
        bias = np.full((len(positions), self.stored + len(positions)), -np.inf, np.float32)
        for slot, (j, k, v) in entries.items():
            keys[:, slot], values[:, slot] = k, v
            for t, p in enumerate(positions):
                if j < p and (p - j < cfg.window_size or slot >= cfg.window_size):
                    bias[t, slot] = 0
        for t, p in enumerate(positions):
            for u, q in enumerate(positions):
                if q <= p and (p - q < cfg.window_size or new_global[u]):
                    bias[t, self.stored + u] = 0
        return keys, values, bias

    def feed(self, ids, depth):
        cfg = self.cfg
        ids = np.asarray(ids, np.int64)
        positions = np.arange(self.length, self.length + len(ids))
        new_global = (positions == 0) | (ids == cfg.think_token_id)
        slot_of = []
        for t, p in enumerate(positions):
            slot_of.append(cfg.window_size + self.globals if new_global[t] else p % cfg.window_size)
            self.globals += int(new_global[t])
        hidden = self.embed.run(None, {"input_ids": ids, "positions": positions})[0]
        self.length += len(ids)
        self.last = {"positions": positions[-1:], "global": new_global[-1:],
                     "slots": slot_of[-1:], "embedded": hidden[:, -1:]}
        return self._run(positions, new_global, slot_of, hidden, hidden,
                         [0] * cfg.num_blocks, depth)

    def deepen(self, depth):
        """Continue the newest token to `depth`: sequence order resumes block 0 and re-runs the
        blocks after it; cycle order continues the cycles."""
        cfg, last = self.cfg, self.last
        if cfg.recursion_order == "cycle":
            start, hidden = [last["done"]] * cfg.num_blocks, last["final"]
        else:
            start, hidden = [last["done"]] + [0] * (cfg.num_blocks - 1), last["block0"]
        return self._run(last["positions"], last["global"], last["slots"], hidden,
                         last["embedded"], start, depth)

    def _run(self, positions, new_global, slot_of, hidden, embedded, start, depth):
        cfg, kv = self.cfg, {}
        for b, i in cfg.schedule(cfg.steps_reasoning):
            if i < start[b]:
                continue
            if i < depth:
                if cfg.injects(b, i):
                    hidden = self.inject.run(None, {"hidden": hidden, "embedded": embedded})[0]
                keys, values, bias = self.context(b, i, positions, new_global)
                if b == cfg.num_blocks - 1:
                    self.mc = (hidden[:, -1:].copy(), i, int(positions[-1]),
                               bool(new_global[-1]))
                hidden, key, value = self.blocks[b].run(None, {
                    "hidden": hidden, "positions": positions, "past_key": keys,
                    "past_value": values, "attn_bias": bias})[:3]
                kv[b] = (key, value)
                self.calls += 1
                if b == 0:
                    self.last["block0"] = hidden[:, -1:]
            key, value = kv[b]
            for t, p in enumerate(positions):
                self.slots[b][i][slot_of[t]] = (p, key[0, :, t], value[0, :, t])
        self.last.update(final=hidden[:, -1:], done=depth)
        return self.lm_head.run(None, {"hidden": hidden})[0][0]

    def mc_hidden(self, masks):
        hidden, i, position, is_global = self.mc
        positions = np.array([position])
        keys, values, bias = self.context(self.cfg.num_blocks - 1, i, positions,
                                          np.array([is_global]))
        return self.mc_step.run(None, {"hidden": hidden, "positions": positions,
                                       "past_key": keys, "past_value": values,
                                       "attn_bias": bias, **masks})[0]
