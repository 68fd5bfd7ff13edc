"""The ONNX Runtime sessions of one artifacts directory and the KV state they share.

`Engine.feed` runs new tokens through embed -> blocks (each iteration a call of the block's
step graph, KV written into the preallocated buffers) -> lm_head. `Engine.mc_logits` re-runs the
last iteration of the last block for the newest token with dropout masks (MC dropout), and
`Engine.signals` runs the uncertainty graph. The controller (controller.py) decides what to call.

Prefill (several tokens) goes through `session.run`. One-token decode on the CPU provider goes
through IO binding (bindings.py): every graph's inputs and outputs are bound once to persistent
NumPy buffers and the KV arrays, so a call copies nothing and ORT allocates nothing
(PERF_NOTES.md: ~2.6 us per call instead of ~5.5 us, and no per-token allocations).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
import onnxruntime as ort

from .artifacts import Artifacts
from .bindings import DecodeBindings
from .device_kv import DeviceDecode
from .kv_state import KVState
from .sessions import create_session

# More threads per session than cores never helps; thousands (6 sessions each) exhaust the OS.
MAX_THREADS = max(64, os.cpu_count() or 1)


@dataclass
class FeedResult:
    logits: np.ndarray            # [T, V] float32 (a view valid until the next call)
    iterations: list[int]         # iterations run per block (for the last token)
    halting: list[float | None]   # p_halt of each block's last iteration (last token)
    position: int                 # position of the last token
    is_global: bool               # the last token is a global token (position 0 or THINK)
    mc_input: np.ndarray          # [1, 1, C] hidden entering the last block's last iteration


@dataclass
class CallTimer:
    """Wall time spent inside session calls, to report controller overhead."""
    seconds: float = 0.0
    calls: int = 0
    by_graph: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds += seconds
        self.calls += 1
        self.by_graph[name] = self.by_graph.get(name, 0.0) + seconds


def available_providers() -> list[str]:
    return ort.get_available_providers()


def resolve_providers(providers: list[str] | None) -> list[str]:
    available = available_providers()
    if providers is not None and (isinstance(providers, str) or not list(providers)):
        raise ValueError(f"providers must be a non-empty list of execution providers (available: "
                         f"{available}), or None for the default; got {providers!r}")
    if providers is None:
        return (["CUDAExecutionProvider", "CPUExecutionProvider"]
                if "CUDAExecutionProvider" in available else ["CPUExecutionProvider"])
    missing = [p for p in providers if p not in available]
    if missing:
        raise ValueError(f"providers {missing} are not available in this onnxruntime "
                         f"(available: {available}); install onnxruntime-gpu for CUDA, or pass "
                         f"providers=None for the default")
    return list(providers)


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Several sessions with spinning pools fight over 2 cores (PERF_NOTES.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class Engine:
    """The sessions of one artifacts directory and their KV state.

    kv_on_device: keep the KV state in device memory and decode through device_kv.py; None
    (default) does so on the CUDA provider. True on the CPU provider runs the same code on CPU
    OrtValues (how the tests cover it without a GPU).
    """

    def __init__(self, artifacts: Artifacts, precision: str = "fp32",
                 providers: list[str] | None = None, intra_op_threads: int | None = None,
                 *, kv_on_device: bool | None = None):
        self.artifacts = artifacts
        self.config = cfg = artifacts.model_config
        self.providers = resolve_providers(providers)
        if intra_op_threads is not None and not (
                type(intra_op_threads) is int and 1 <= intra_op_threads <= MAX_THREADS):
            raise ValueError(f"intra_op_threads must be None or an int in [1, {MAX_THREADS}] "
                             f"(threads per session; this machine has {os.cpu_count()} cores), "
                             f"got {intra_op_threads!r}")
        threads = intra_op_threads or 1

        def session(path, n_threads=threads):   # from the verified bytes, never the file
            return create_session(artifacts, path, session_options(n_threads), self.providers,
                                  precision)

        self.embed = session(artifacts.graph(precision, "embed"))
        self.blocks = [session(artifacts.graph(precision, "blocks", b))
                       for b in range(cfg.num_blocks)]
        self.mc = session(artifacts.graph(precision, "mc_step"))
        # One thread per session by default, the LM head included: PERF_NOTES.md saw a second
        # thread pay for a 4096-vocab head on an idle machine, but with spinning off (needed so
        # the sessions do not fight) and another process on the second core it measured slower
        # here (42.6 us at 1 thread vs 49.5 us at 2; benchmarks/bench_runtime.py: 2,965 vs 2,901
        # tok/s). intra_op_threads=2 gives every session two threads.
        self.lm_head = session(artifacts.graph(precision, "lm_head"))
        self.uncertainty = session(artifacts.graph(precision, "uncertainty"))
        self.kv = KVState(cfg)
        self.timer = CallTimer()
        self.think_id = cfg.think_token_id
        device = {"CUDAExecutionProvider": "cuda"}.get(self.providers[0])
        if kv_on_device is None:
            kv_on_device = device is not None
        self._device = (DeviceDecode(self, device or "cpu", session_options(threads))
                        if kv_on_device else None)
        self._decode = (DecodeBindings(self)
                        if self._device is None and self.providers[0] == "CPUExecutionProvider"
                        else None)

    def reset(self) -> None:
        self.kv.reset()
        if self._device is not None:
            self._device.fresh = False

    def _run(self, name: str, sess: ort.InferenceSession, feeds: dict) -> list[np.ndarray]:
        start = time.perf_counter()
        out = sess.run(None, feeds)
        self.timer.add(name, time.perf_counter() - start)
        return out

    def check_step(self, last_position: int, depth: int) -> None:
        cfg = self.config
        if last_position >= cfg.max_position:
            raise ValueError(f"position {last_position} is past the model's max_position="
                             f"{cfg.max_position}")
        if not 1 <= depth <= cfg.steps_reasoning:
            raise ValueError(f"depth must be in [1, steps_reasoning={cfg.steps_reasoning}], "
                             f"got {depth}")

    def feed(self, ids: np.ndarray, depth: int, halting_threshold: float | None = None,
             min_iterations: int = 1) -> FeedResult:
        """Run tokens ids [T] at the next positions, `depth` iterations of every block.

        With a halting threshold (one token only), a block stops after iteration i
        (i + 1 >= min_iterations) once its p_halt >= threshold.
        """
        ids = np.asarray(ids, dtype=np.int64)
        length = len(ids)
        self.check_step(self.kv.length + length - 1, depth)
        window = self.config.window_size
        if length > window:
            # Window-sized chunks: a chunk attends to the stored KV plus itself, so attention
            # costs T x (W + G + W) instead of T x (W + G + T), and the [T, K + T] bias and
            # scores stay bounded (a 1024-token prompt in one call peaked at ~290 MB).
            parts = [self.feed(ids[start:start + window], depth)
                     for start in range(0, length, window)]
            return replace(parts[-1],
                           logits=np.concatenate([p.logits for p in parts]))
        if length == 1 and self._decode is not None:
            return self._decode.feed(int(ids[0]), depth, halting_threshold, min_iterations)
        if length == 1 and self._device is not None:
            return self._device.feed(int(ids[0]), depth, halting_threshold, min_iterations)
        if self._device is not None:
            self._device.download()          # the host path below reads and writes host KV
            try:
                return self._feed_host(ids, depth, halting_threshold, min_iterations)
            finally:
                self._device.upload()
        return self._feed_host(ids, depth, halting_threshold, min_iterations)

    def _feed_host(self, ids: np.ndarray, depth: int, halting_threshold: float | None,
                   min_iterations: int) -> FeedResult:
        cfg, kv = self.config, self.kv
        length = len(ids)
        positions = np.arange(kv.length, kv.length + length, dtype=np.int64)
        new_global = positions == 0
        if self.think_id is not None:
            new_global |= ids == self.think_id
        tokens, slots = kv.slots_for(positions, new_global)
        bias = kv.attn_bias(positions, new_global)
        hidden = self._run("embed", self.embed, {"input_ids": ids, "positions": positions})[0]
        iterations, halting = [], []
        mc_input = hidden
        for b, sess in enumerate(self.blocks):
            done, p_halt = 0, None
            for i in range(depth):
                if b == len(self.blocks) - 1:
                    mc_input = hidden[:, -1:]           # input of the last block's last iteration
                out = self._run("block", sess, {
                    "hidden": hidden, "positions": positions, "past_key": kv.keys[b, i],
                    "past_value": kv.values[b, i], "attn_bias": bias})
                hidden, key, value = out[:3]
                halt = out[3] if len(out) > 3 else None
                kv.write(b, i, key, value, tokens, slots)
                done = i + 1
                if halt is not None:
                    p_halt = float(halt[0, -1])
                if (halting_threshold is not None and p_halt is not None and length == 1
                        and done >= min_iterations and p_halt >= halting_threshold):
                    break
            for i in range(done, cfg.steps_reasoning):      # carried-KV policy
                kv.write(b, i, key, value, tokens, slots)
            iterations.append(done)
            halting.append(p_halt)
        kv.commit(positions, tokens, slots, new_global)
        logits = self._run("lm_head", self.lm_head, {"hidden": hidden})[0][0]
        return FeedResult(logits, iterations, halting, int(positions[-1]), bool(new_global[-1]),
                          mc_input)

    def mc_logits(self, step: FeedResult, masks: dict[str, np.ndarray]) -> np.ndarray:
        """[S, V] logits of the newest token's last-block last iteration re-run with masks."""
        cfg, kv = self.config, self.kv
        b, i = cfg.num_blocks - 1, step.iterations[-1] - 1
        if self._device is not None:
            hidden = self._device.mc_hidden(step, masks)
            return self._run("lm_head", self.lm_head, {"hidden": hidden})[0][:, 0]
        positions = np.array([step.position], dtype=np.int64)
        bias = kv.attn_bias(positions, np.array([step.is_global]))
        hidden = self._run("mc_step", self.mc, {
            "hidden": step.mc_input, "positions": positions, "past_key": kv.keys[b, i],
            "past_value": kv.values[b, i], "attn_bias": bias, **masks})[0]
        return self._run("lm_head", self.lm_head, {"hidden": hidden})[0][:, 0]

    def signals(self, logits: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        """entropy, p_max, dispersion, score of each row of logits [N, V].

        For the logits of the latest one-token decode (FeedResult.logits[-1:]) the bound
        session runs on the bound buffers; the arrays returned are then valid until the next call.
        """
        if self._decode is not None and self._decode.holds(logits):
            return self._decode.signals(weights)
        out = self._run("uncertainty", self.uncertainty,
                        {"logits": np.ascontiguousarray(logits, dtype=np.float32),
                         "weights": weights})
        return dict(zip(("entropy", "p_max", "dispersion", "score"), out))
