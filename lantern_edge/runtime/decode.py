"""One generation's model state, and the one loop that feeds tokens through the sessions.

`Sequence` owns everything a generation mutates: its KV state (kv_state.py), the buffers and IO
bindings of its one-token passes, its call timer. Many Sequences share one Engine (engine.py),
so threads generating at once never touch each other's state.

`Sequence.feed` runs new tokens embed -> blocks (each iteration one call of the block's step
graph, its KV stored) -> lm_head, through `Sequence._loop` and one of three passes with the
same interface:
- `HostPass` (here): `session.run` on host arrays; prompts (several tokens), and one token when
  no faster pass applies;
- `BoundPass` (bindings.py): one token through IO binding to persistent host buffers (the CPU
  default: a bound call copies and allocates nothing);
- `DevicePass` (device_kv.py): one token with the KV state resident on the accelerator.
A pass does the graph calls and KV writes; the per-(block, iteration) loop and the halting rule
live only in `Sequence._loop`. Where there is nothing to decide per (block, iteration) (depth
steps_base, no halting threshold, a new token), one token is instead one call of the fused
cheap-pass graph (fusion.py) through `FusedPass.feed` (bindings.py), which computes exactly
what the loop over the separate calls computes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .engine import SIGNALS, SLOTS_INPUT, Engine
from .kv_state import KVState
from .sampling import softmax


@dataclass
class FeedResult:
    logits: np.ndarray            # [T, V] float32 (a view valid until the next call)
    iterations: list[int]         # iterations per block the last token has now run in all
    halting: list[float | None]   # p_halt of each block's last iteration (last token)
    position: int                 # position of the last token
    is_global: bool               # the last token is a global token (position 0 or THINK)
    # [1, 1, C] hidden entering the last block's last iteration (like logits, valid until the
    # Sequence's next call: the fused pass returns a view of its buffer)
    mc_input: np.ndarray
    token: int = -1               # the last token's id
    ran: list[int] = field(default_factory=list)   # block iterations this call ran, per block
    # what `Sequence.deepen` continues from ([1, 1, C], last token; valid as mc_input): the
    # state after block 0 (sequence order) or after the last cycle (cycle order), and the
    # embedding that input injection feeds back in (None without injection)
    resume: np.ndarray | None = None
    embedded: np.ndarray | None = None
    hidden: np.ndarray | None = None   # [1, C] final hidden (before the norm): the probe's input
    # [V] softmax of the last token's logits (the LM head computes it; fusion.lm_head_graph),
    # valid as long as logits; None where the head has no such output
    probabilities: np.ndarray | None = None


@dataclass
class CallTimer:
    """Wall time spent inside session calls, to report controller overhead."""
    seconds: float = 0.0
    calls: int = 0
    by_graph: dict[str, float] = field(default_factory=dict)
    calls_by_graph: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds += seconds
        self.calls += 1
        self.by_graph[name] = self.by_graph.get(name, 0.0) + seconds
        self.calls_by_graph[name] = self.calls_by_graph.get(name, 0) + 1


def mc_distributions(engine: Engine, outputs: list[np.ndarray], lm_head
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and probabilities [S, N, V] from the outputs of a call of engine.mc: its own when
    it ends in the LM head (fusion.mc_pass_graph), else lm_head(hidden) -> the LM head's
    outputs; probabilities from NumPy where the LM head has none."""
    if not engine.mc_has_head:
        outputs = lm_head(outputs[0])
    logits = outputs[0]
    return logits, outputs[1] if len(outputs) > 1 else softmax(logits)


class HostPass:
    """Tokens [T] through `session.run` with the KV state in host arrays."""

    def __init__(self, seq: Sequence):
        self.seq = seq

    def begin(self, ids: np.ndarray, resume: FeedResult | None = None) -> None:
        """Start tokens ids: embed them, or (resume, one token) start from its saved state."""
        seq, kv = self.seq, self.seq.kv
        self.ids = ids
        self.positions = np.arange(kv.length, kv.length + len(ids), dtype=np.int64)
        self.new_global = self.positions == 0
        if seq.engine.think_id is not None:
            self.new_global |= ids == seq.engine.think_id
        self.tokens, self.slots = kv.slots_for(self.positions, self.new_global)
        self.bias = kv.attn_bias(self.positions, self.new_global)
        if resume is None:
            self.hidden = self.embedded = seq.run("embed", seq.engine.embed, {
                "input_ids": ids, "positions": self.positions})[0]
        else:
            self.hidden, self.embedded = resume.resume, resume.embedded
        self.mc_input = self.hidden[:, -1:]

    def inject(self) -> None:
        self.hidden = self.seq.run("inject", self.seq.engine.inject,
                                   {"hidden": self.hidden, "embedded": self.embedded})[0]

    def state(self) -> np.ndarray:
        """A copy of the last token's current hidden state [1, 1, C]."""
        return self.hidden[:, -1:].copy()

    def last_embedded(self) -> np.ndarray:
        return self.embedded[:, -1:].copy()

    def block(self, b: int, i: int) -> float | None:
        seq, kv = self.seq, self.seq.kv
        if b == len(seq.engine.blocks) - 1:
            self.mc_input = self.hidden[:, -1:]           # input of the last block's iteration
        out = seq.run("block", seq.engine.blocks[b], {
            "hidden": self.hidden, "positions": self.positions,
            "past_key": np.ascontiguousarray(kv.keys[b, i]),          # a copy only in a pool
            "past_value": np.ascontiguousarray(kv.values[b, i]), "attn_bias": self.bias,
            **seq.stored_slots})
        self.hidden, self.key, self.value = out[:3]
        kv.write(b, i, self.key, self.value, self.tokens, self.slots)
        return float(out[3][0, -1]) if len(out) > 3 else None

    def end_block(self, b: int, done: int) -> None:
        for i in range(done, self.seq.kv.keys.shape[1]):          # carried-KV policy
            self.seq.kv.write(b, i, self.key, self.value, self.tokens, self.slots)

    def finish(self) -> tuple[np.ndarray, int, bool, np.ndarray, np.ndarray | None]:
        seq = self.seq
        seq.kv.commit(self.positions, self.tokens, self.slots, self.new_global)
        out = seq.run("lm_head", seq.engine.lm_head, {"hidden": self.hidden})
        return (out[0][0], int(self.positions[-1]), bool(self.new_global[-1]), self.mc_input,
                out[1][0, -1] if len(out) > 1 else None)

    def final_hidden(self) -> np.ndarray:
        return self.hidden[0, -1:]


class Sequence:
    """The state of one generation over a shared Engine: KV, passes, timer.

    kv: a KVState over a batch pool's arrays (pool.py), whose one-token steps the pool runs;
    None: its own KV arrays and one-token passes."""

    def __init__(self, engine: Engine, kv: KVState | None = None):
        from .bindings import BoundPass, FusedPass
        from .device_kv import DevicePass

        self.engine = engine
        self.config = engine.config
        self.kv = kv or KVState(engine.config, scratch=engine.kv_scratch)
        # the stored-slot count the edited block and MC graphs are fed with (engine.py): this
        # state's slots, the scratch slot included; none for graphs loaded as exported
        self.stored_slots = ({} if engine.unbatchable
                             else {SLOTS_INPUT: np.array([self.kv.keys.shape[3]], np.int64)})
        self.timer = CallTimer()
        self.host = HostPass(self)
        self.device = DevicePass(self) if engine.kv_on_device and kv is None else None
        self.one = self.device or (BoundPass(self) if engine.bind_host and kv is None
                                   else self.host)
        self.fused = (FusedPass(self, self.one) if engine.fused is not None and kv is None
                      else None)
        # the uncertainty weights (a, b, c) the controller reads every fed token's signals with
        # (the adaptive path sets them): the fused pass then computes the signals in its call;
        # None: no signals expected (fixed depth), they are computed when asked for
        self.signal_weights: np.ndarray | None = None

    def reset(self) -> None:
        self.kv.reset()
        self.timer = CallTimer()
        self.signal_weights = None
        if self.device is not None:
            self.device.fresh = False

    def _timed(self, name: str, call, *args):
        start = time.perf_counter()
        out = call(*args)
        self.timer.add(name, time.perf_counter() - start)
        return out

    def run(self, name: str, session, feeds: dict) -> list[np.ndarray]:
        return self._timed(name, session.run, None, feeds)

    def run_bound(self, name: str, session, binding) -> None:
        self._timed(name, session.run_with_iobinding, binding)

    def check_step(self, last_position: int, depth: int) -> None:
        cfg = self.config
        if last_position >= cfg.max_position:
            raise ValueError(f"position {last_position} is past the model's max_position="
                             f"{cfg.max_position}")
        if not 1 <= depth <= cfg.steps_reasoning:
            raise ValueError(f"depth must be in [1, steps_reasoning={cfg.steps_reasoning}], "
                             f"got {depth}")

    def feed(self, ids, depth: int, halting_threshold: float | None = None) -> FeedResult:
        """Run tokens ids [T] at the next positions, `depth` iterations of every block.

        With a halting threshold (one token only), a block stops after the first iteration
        whose p_halt >= threshold.
        """
        ids = np.asarray(ids, dtype=np.int64)
        length = len(ids)
        if length == 1:
            return self.feed_token(int(ids[0]), depth, halting_threshold)
        self.check_step(self.kv.length + length - 1, depth)
        window = self.config.window_size
        if length > window:
            # Window-sized chunks: a chunk attends to the stored KV plus itself, so attention
            # costs T x (W + G + W) instead of T x (W + G + T), and the [T, K + T] bias and
            # scores stay bounded (a 1024-token prompt in one call peaked at ~290 MB).
            parts = [self.feed(ids[start:start + window], depth)
                     for start in range(0, length, window)]
            return replace(parts[-1], logits=np.concatenate([p.logits for p in parts]))
        if self.device is None:
            return self._loop(self.host, ids, depth, None)
        self.device.download()          # the host pass reads and writes the host KV
        try:
            return self._loop(self.host, ids, depth, None)
        finally:
            self.device.upload()

    def feed_token(self, token: int, depth: int,
                   halting_threshold: float | None = None) -> FeedResult:
        """One new token at the next position: `feed([token], ...)`, the decode loop's step."""
        self.check_step(self.kv.length, depth)
        if (self.fused is not None and depth == self.config.steps_base
                and halting_threshold is None):
            return self.fused.feed(token)
        return self._loop(self.one, np.array([token], np.int64), depth, halting_threshold)

    def deepen(self, step: FeedResult, depth: int) -> FeedResult:
        """Continue the newest token (fed last, its FeedResult `step`) to `depth` iterations per
        block instead of re-running it; the logits equal a re-run at `depth`.

        Cycle order: the missing cycles run from its final state. Sequence order: block 0
        resumes from its state after the iterations it ran (their KV is stored) and runs on to
        `depth`; the later blocks re-run from their new input (docs/DEPTH.md).
        """
        start = self.resume_from(step, depth)
        return self._loop(self.one, np.array([step.token], np.int64), depth, None,
                          step, start)

    def resume_from(self, step: FeedResult, depth: int) -> list[int]:
        """Begin continuing the newest token (deepen; pool.py's batched continuation): check,
        forget its slot, and return the iteration each block starts from."""
        cfg = self.config
        self.check_step(step.position, depth)
        if step.position != self.kv.length - 1 or step.resume is None:
            raise ValueError("deepen continues the newest token only, from its own FeedResult")
        self.kv.rewind()                      # its slot is rewritten; earlier KV stays valid
        if cfg.recursion_order == "cycle":
            return [min(step.iterations)] * cfg.num_blocks
        return [step.iterations[0]] + [0] * (cfg.num_blocks - 1)

    def _loop(self, pass_, ids: np.ndarray, depth: int, halting: float | None,
              resume: FeedResult | None = None, start: list[int] | None = None) -> FeedResult:
        """The one decode loop: (block, iteration) in the model's recursion order, from
        iteration start[b] of each block (continuation) up to `depth`. Halting stops a block
        (sequence order) or every block after a cycle whose last block says so (cycle order)."""
        cfg, blocks = self.config, self.config.num_blocks
        cycle = cfg.recursion_order == "cycle"
        start = start or [0] * blocks
        pass_.begin(ids, resume)
        stop, done = [depth] * blocks, list(start)
        halts: list[float | None] = list(resume.halting) if resume else [None] * blocks
        block0 = resume.resume if resume is not None and not cycle else None
        for b, i, injects in self.engine.schedules[depth]:
            if not start[b] <= i < stop[b]:
                continue
            if injects:
                pass_.inject()
            halts[b] = p_halt = pass_.block(b, i)
            done[b] = i + 1
            if halting is not None and p_halt is not None and p_halt >= halting:
                if not cycle:
                    stop[b] = i + 1
                elif b == blocks - 1:
                    stop = [i + 1] * blocks
            # carried-KV policy: deeper iterations get this one's KV. Sequence order: once, after
            # the block's last iteration; cycle order: after every iteration (the next block's
            # call reuses the pass's key buffer), later iterations overwriting.
            if cycle or i + 1 == stop[b]:
                pass_.end_block(b, i + 1)
            if b == 0 and i + 1 == stop[0] and not cycle:
                block0 = pass_.state()
        logits, position, is_global, mc_input, probabilities = pass_.finish()
        embedded = (resume.embedded if resume is not None
                    else pass_.last_embedded() if cfg.input_injection else None)
        return FeedResult(logits, done, halts, position, is_global, mc_input, int(ids[-1]),
                          [d - s for d, s in zip(done, start)],
                          pass_.state() if cycle else block0, embedded,
                          pass_.final_hidden() if self.engine.has_probe else None, probabilities)

    def mc_distributions(self, step: FeedResult, masks: dict[str, np.ndarray]
                         ) -> tuple[np.ndarray, np.ndarray]:
        """[S, V] logits and probabilities of the newest token's last-block last iteration
        re-run with masks."""
        if self.device is not None:
            out = self.device.mc_outputs(step, masks)
        else:
            b, i = self.config.num_blocks - 1, step.iterations[-1] - 1
            positions = np.array([step.position], dtype=np.int64)
            bias = self.kv.attn_bias(positions, np.array([step.is_global]))
            out = self.run("mc_step", self.engine.mc, {
                "hidden": step.mc_input, "positions": positions,
                "past_key": np.ascontiguousarray(self.kv.keys[b, i]),
                "past_value": np.ascontiguousarray(self.kv.values[b, i]), "attn_bias": bias,
                **self._scratch_masks(masks), **self.stored_slots})
        logits, probabilities = mc_distributions(
            self.engine, out, lambda hidden: self.run("lm_head", self.engine.lm_head,
                                                      {"hidden": hidden}))
        return logits[:, 0], probabilities[:, 0]

    def _scratch_masks(self, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The controller's dropout masks (one column per stored slot and the token itself)
        with a column for the scratch slot, whose attention weight is 0 whatever it says: the
        same draws as without it, so a generation's MC numbers do not depend on its state."""
        if self.kv.scratch is None:
            return masks
        probs, at = masks["mask_attn_probs"], self.kv.scratch
        out = np.empty(probs.shape[:-1] + (probs.shape[-1] + 1,), np.float32)
        out[..., :at], out[..., at], out[..., at + 1:] = probs[..., :at], 1.0, probs[..., at:]
        return {**masks, "mask_attn_probs": out}

    def signals(self, logits: np.ndarray, weights: np.ndarray,
                hidden: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """entropy, p_max, dispersion, score of each row of logits [N, V], and p_benefit when
        the model has a depth probe and `hidden` [N, C] (FeedResult.hidden) is given. For the
        logits of the latest bound one-token decode the bound session runs (arrays valid until
        the next call)."""
        holds = getattr(self.one, "holds", None)
        if holds is not None and holds(logits):
            return self.one.signals(weights)
        feeds = {"logits": np.ascontiguousarray(logits, np.float32), "weights": weights}
        if self.engine.has_probe:
            feeds["hidden"] = (np.zeros((len(logits), self.config.hidden_size), np.float32)
                               if hidden is None else np.ascontiguousarray(hidden, np.float32))
        out = dict(zip(SIGNALS + ("p_benefit",), self.run("uncertainty", self.engine.uncertainty,
                                                          feeds)))
        if hidden is None:
            out.pop("p_benefit", None)
        return out


class Single:
    """The controller's runner for one generation alone: its own Sequence's passes (the
    IO-bound one-token path). pool.Pool is the runner for several in shared calls."""

    @staticmethod
    def signals(gens: list, weights: np.ndarray) -> dict[str, np.ndarray]:
        step = gens[0].step
        return gens[0].seq.signals(step.logits[-1:], weights,
                                   None if step.hidden is None else step.hidden[-1:])

    @staticmethod
    def mc_probabilities(gens: list, masks: list[dict]) -> list[np.ndarray]:
        return [gens[0].seq.mc_distributions(gens[0].step, masks[0])[1]]

    @staticmethod
    def feed(seqs: list[Sequence], tokens: list[int], depth: int,
             halting: list[float | None]) -> list[FeedResult]:
        return [seqs[0].feed_token(tokens[0], depth, halting[0])]

    @staticmethod
    def deepen(gens: list, depth: int) -> list[FeedResult]:
        return [g.seq.deepen(g.step, depth) for g in gens]


SINGLE = Single()
