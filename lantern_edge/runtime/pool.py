"""Batched decode: several sequences' one-token steps in shared graph calls.

A block graph reads its stored context as past_key/past_value [H, K, D] (K = W + G slots) with
an attention bias [T, K + T]. A `Pool` lays the KV of `group` sequences side by side,
[blocks, R, H, group * K, D] (one such shard per group), and runs the block graphs with the
stored-slot axis made variable (protobuf.stored_slots_variable): the new tokens of a shard's
sequences go in as the T axis of one call, each row of the bias opening only its own sequence's
K slots and itself, so each token attends exactly to what it would alone. Every token of a call
scores all group * K slots, so the attention work grows with the group while the weights are
read once per call: groups of 4 keep the masked-out attention below the block's matrix work for
the default model's shape (C = 256, K = 144). Embed, LM head and uncertainty head batch every
sequence in one call (their rows are independent). The (block, iteration) schedule is the
model's recursion order (sequence or cycle), with input injection (inject.onnx, row-independent)
where the model has it; with halting, and in a continuation (the very high band's deepened
token, which resumes each row from its own start iteration), the rows still iterating at a
(block, iteration) run it as a smaller batch. So every decode step of every model is batched;
only the prompts are not.

Each pooled `Sequence` keeps its own KVState over its K slots of the pool (its prompt is fed
through its own host pass); the pool is the controller's runner for the decode steps.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .decode import FeedResult, Sequence, mc_distributions
from .engine import SIGNALS, SLOTS_INPUT, Engine
from .kv_state import KVState

GROUP = 4                             # sequences per shard (one block call per shard)


class Pool:
    def __init__(self, engine: Engine, capacity: int, group: int = GROUP):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"the batch size must be an int >= 1, got {capacity!r}")
        if engine.unbatchable:
            raise ValueError(f"this model cannot decode in batches: {engine.unbatchable}; "
                             f"re-export it with this lantern-edge")
        cfg = self.config = engine.config
        self.engine, self.capacity = engine, capacity
        self.group = min(group, capacity)
        self.stored = cfg.window_size + cfg.max_global_tokens
        self.width = self.group * self.stored
        shape = (cfg.num_blocks, cfg.steps_reasoning, cfg.num_heads, self.width, cfg.head_dim)
        shards = -(-capacity // self.group)
        self.keys = [np.zeros(shape, np.float32) for _ in range(shards)]
        self.values = [np.zeros(shape, np.float32) for _ in range(shards)]
        self.blocks, self.mc = engine.blocks, engine.mc
        self.slots = np.array([self.width], np.int64)
        self._free = list(range(capacity))[::-1]
        self._index: dict[int, int] = {}             # id(Sequence) -> its place in the pool
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self) -> Sequence:
        """A Sequence over the next free K slots of the pool."""
        with self._lock:
            if not self._free:
                raise RuntimeError(f"the pool holds {self.capacity} sequences, all in use")
            place = self._free.pop()
        shard, local = divmod(place, self.group)
        part = slice(local * self.stored, (local + 1) * self.stored)
        seq = Sequence(self.engine, KVState(self.config, self.keys[shard][:, :, :, part],
                                            self.values[shard][:, :, :, part]))
        self._index[id(seq)] = place
        return seq

    def release(self, seq: Sequence) -> None:
        with self._lock:
            self._free.append(self._index.pop(id(seq)))

    def _run(self, seqs: list[Sequence], name: str, session, feeds: dict) -> list[np.ndarray]:
        start = time.perf_counter()
        out = session.run(None, feeds)
        seconds = time.perf_counter() - start
        for seq in seqs:                      # every sequence waited for the shared call
            seq.timer.add(name, seconds)
        return out

    def _bias(self, rows: list[np.ndarray], places: list[int]) -> np.ndarray:
        """[n, width + n]: row j opens the K slots of its sequence (at place places[j] of its
        shard) as rows[j][:K] does, and itself."""
        n, k = len(rows), self.stored
        bias = np.full((n, self.width + n), -np.inf, np.float32)
        for j, (row, place) in enumerate(zip(rows, places)):
            bias[j, place * k:(place + 1) * k] = row[:k]
            bias[j, self.width + j] = row[k]
        return bias

    # --- the controller's runner interface (as decode.Single) ---------------------------------

    def _shards(self, seqs: list[Sequence]) -> dict[int, np.ndarray]:
        """shard -> the indices (into seqs) of the sequences in it."""
        shards: dict[int, list[int]] = {}
        for j, seq in enumerate(seqs):
            shards.setdefault(self._index[id(seq)] // self.group, []).append(j)
        return {shard: np.array(rows) for shard, rows in shards.items()}

    def feed(self, seqs: list[Sequence], tokens: list[int], depth: int,
             halting: list[float | None],
             resume: list[FeedResult] | None = None) -> list[FeedResult]:
        """One new token for each sequence, `depth` iterations of every block (fewer for a
        sequence whose p_halt reaches its halting threshold), in the model's recursion order
        with its input injection: decode.Sequence._loop for a batch. resume: continue each
        sequence's newest token from its FeedResult instead (Sequence.deepen for a batch)."""
        cfg, engine, n = self.config, self.engine, len(seqs)
        cycle, last = cfg.recursion_order == "cycle", cfg.num_blocks - 1
        start = np.zeros((cfg.num_blocks, n), np.int64)
        if resume is not None:
            for j, (seq, step) in enumerate(zip(seqs, resume)):
                start[:, j] = seq.resume_from(step, depth)
        local = np.array([self._index[id(s)] % self.group for s in seqs])
        positions, begun, rows = np.empty(n, np.int64), [], []
        for j, (seq, token) in enumerate(zip(seqs, tokens)):
            seq.check_step(seq.kv.length, depth)
            row = np.empty(self.stored + 1, np.float32)
            position, is_global, slot = seq.kv.begin_token(token, engine.think_id, row)
            positions[j] = position
            begun.append((position, is_global, slot))
            rows.append(row)
        columns = local * self.stored + np.array([b[2] for b in begun], np.int64)
        if resume is None:
            hidden = self._run(seqs, "embed", engine.embed, {
                "input_ids": np.asarray(tokens, np.int64), "positions": positions})[0]
            embedded = hidden.copy() if cfg.input_injection else None
            halts: list[list[float | None]] = [[None] * n for _ in range(cfg.num_blocks)]
        else:
            hidden = np.concatenate([step.resume for step in resume], axis=1)
            embedded = (np.concatenate([step.embedded for step in resume], axis=1)
                        if cfg.input_injection else None)
            halts = [[step.halting[b] for step in resume] for b in range(cfg.num_blocks)]
        # sequence order: the state after block 0, where a continuation resumes block 0 from
        block0 = hidden.copy()
        mc_input = hidden.copy()          # the input of the last block's last iteration
        done, stop = start.copy(), np.full((cfg.num_blocks, n), depth, np.int64)
        limits = np.array([np.inf if h is None else h for h in halting])
        shards = [(s, js, self._bias([rows[j] for j in js], local[js].tolist()))
                  for s, js in self._shards(seqs).items()]
        for b, i, injects in engine.schedules[depth]:
            for shard, js, bias in shards:
                runs = (start[b, js] <= i) & (i < stop[b, js])       # positions within js
                if not runs.any():
                    continue
                act = js[runs]
                if injects:
                    hidden[:, act] = self._run([seqs[j] for j in act], "inject", engine.inject,
                                               {"hidden": hidden[:, act],
                                                "embedded": embedded[:, act]})[0]
                sub_bias = bias if runs.all() else np.concatenate(
                    [bias[runs, :self.width],
                     np.where(np.eye(len(act), dtype=bool), np.float32(0), np.float32(-np.inf))],
                    axis=1)
                if b == last:
                    mc_input[:, act] = hidden[:, act]
                keys, values = self.keys[shard][b], self.values[shard][b]
                out = self._run([seqs[j] for j in act], "block", self.blocks[b], {
                    "hidden": hidden[:, act], "positions": positions[act],
                    "past_key": keys[i], "past_value": values[i], "attn_bias": sub_bias,
                    SLOTS_INPUT: self.slots})
                hidden[:, act] = out[0]
                key, value = out[1][0], out[2][0]                 # [H, len(act), D]
                keys[i][:, columns[act]] = key
                values[i][:, columns[act]] = value
                done[b, act] = i + 1
                if len(out) > 3:
                    for j, p_halt in zip(act, out[3][0]):
                        halts[b][j] = float(p_halt)
                        if p_halt >= limits[j]:
                            if not cycle:
                                stop[b, j] = i + 1
                            elif b == last:
                                stop[:, j] = i + 1
                # carried-KV policy (as Sequence._loop): deeper iterations get this one's KV;
                # sequence order once after the block's last iteration, cycle order every time
                ends = np.ones(len(act), bool) if cycle else stop[b, act] == i + 1
                if i + 1 < cfg.steps_reasoning and ends.any():
                    keys[i + 1:, :, columns[act[ends]]] = key[:, ends]
                    values[i + 1:, :, columns[act[ends]]] = value[:, ends]
                if b == 0 and not cycle:
                    block0[:, act[ends]] = hidden[:, act[ends]]
        for seq, (position, is_global, slot) in zip(seqs, begun):
            seq.kv.commit_slot(position, slot, is_global)
        out = self._run(seqs, "lm_head", engine.lm_head, {"hidden": hidden})
        logits = out[0][0]
        probabilities = out[1][0] if len(out) > 1 else [None] * n
        state = hidden if cycle else block0
        return [FeedResult(logits[j:j + 1], done[:, j].tolist(),
                           [halts[b][j] for b in range(cfg.num_blocks)], begun[j][0],
                           begun[j][1], mc_input[:, j:j + 1].copy(), int(tokens[j]),
                           (done[:, j] - start[:, j]).tolist(), state[:, j:j + 1].copy(),
                           resume[j].embedded if resume is not None
                           else embedded[:, j:j + 1].copy() if embedded is not None else None,
                           hidden[0, j:j + 1].copy() if engine.has_probe else None,
                           probabilities[j])
                for j in range(n)]

    def deepen(self, gens: list, depth: int) -> list[FeedResult]:
        """The very high band's continuation of each generation's newest token, batched."""
        return self.feed([g.seq for g in gens], [g.step.token for g in gens], depth,
                         [None] * len(gens), [g.step for g in gens])

    def signals(self, gens: list, weights: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"logits": np.stack([g.step.logits[-1] for g in gens]), "weights": weights}
        if self.engine.has_probe:            # the depth probe reads each final hidden state
            feeds["hidden"] = np.stack([g.step.hidden[-1] for g in gens]).astype(np.float32)
        out = self._run([g.seq for g in gens], "uncertainty", self.engine.uncertainty, feeds)
        return dict(zip(SIGNALS + ("p_benefit",), out))

    def mc_probabilities(self, gens: list, masks: list[dict]) -> list[np.ndarray]:
        """[S, V] MC-dropout probabilities of each generation's newest token; one mc_step call
        per (shard, iteration, sample count) among them."""
        out: list = [None] * len(gens)
        groups: dict[tuple[int, int], list[int]] = {}
        for k, (g, m) in enumerate(zip(gens, masks)):
            shard = self._index[id(g.seq)] // self.group
            groups.setdefault((shard, g.step.iterations[-1] - 1, len(m["mask_attn_out"])),
                              []).append(k)
        for (shard, i, samples), ks in groups.items():
            n, k = len(ks), self.stored
            steps = [gens[x].step for x in ks]
            places = [self._index[id(gens[x].seq)] % self.group for x in ks]
            rows = [gens[x].seq.kv.attn_bias(np.array([s.position]), np.array([s.is_global]))[0]
                    for x, s in zip(ks, steps)]
            probs = np.ones((samples, self.config.num_heads, n, self.width + n), np.float32)
            for j, (x, place) in enumerate(zip(ks, places)):
                mask = masks[x]["mask_attn_probs"][:, :, 0]
                probs[:, :, j, place * k:(place + 1) * k] = mask[:, :, :k]
                probs[:, :, j, self.width + j] = mask[:, :, k]
            seqs = [gens[x].seq for x in ks]
            b = self.config.num_blocks - 1
            outputs = self._run(seqs, "mc_step", self.mc, {
                "hidden": np.concatenate([s.mc_input for s in steps], axis=1),
                "positions": np.array([s.position for s in steps], np.int64),
                "past_key": self.keys[shard][b, i], "past_value": self.values[shard][b, i],
                "attn_bias": self._bias(rows, places), SLOTS_INPUT: self.slots,
                "mask_attn_probs": probs,
                "mask_attn_out": np.concatenate([masks[x]["mask_attn_out"] for x in ks], axis=1),
                "mask_mlp_out": np.concatenate([masks[x]["mask_mlp_out"] for x in ks], axis=1)})
            def lm_head(hidden, seqs=seqs):
                return self._run(seqs, "lm_head", self.engine.lm_head, {"hidden": hidden})
            probabilities = mc_distributions(self.engine, outputs, lm_head)[1]
            for j, x in enumerate(ks):
                out[x] = probabilities[:, j]
        return out
