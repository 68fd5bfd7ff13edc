"""The ONNX Runtime sessions of one artifacts directory: loaded once, shared, never mutated.

An `Engine` holds only what every generation shares: the sessions (embed, one per block,
mc_step, lm_head, uncertainty, inject for models with input injection, on the CPU path the two
fused cheap-pass graphs of fusion.py, and on the device path the KV write graph), the model
config and
the providers. ORT sessions may be run from several threads at once, so any number of
generations (decode.py's `Sequence`, each with its own KV state and bindings) use one Engine.
"""

from __future__ import annotations

import os
import struct

import onnxruntime as ort

from ..errors import ArtifactError
from .artifacts import Artifacts
from .device_kv import kv_write_model
from .attention import check_shared_kv_block, shared_kv_block
from .fusion import cheap_pass_graph, lm_head_graph, mc_pass_graph
from .protobuf import stored_slots_variable
from .sessions import create_session, verified_bytes

# More threads per session than cores never helps; thousands (6 sessions each) exhaust the OS.
MAX_THREADS = max(64, os.cpu_count() or 1)

SIGNALS = ("entropy", "p_max", "dispersion", "score")
SLOTS_INPUT = "stored_slots"          # the stored-slot count input of the edited graphs


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


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Several sessions with spinning pools fight over 2 cores: a spinning pool burns the core
    # the next session's call needs. Only the fused cheap pass (one session, one call per
    # token) spins, and only with a second thread to hand work to.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    return options


class Engine:
    """The sessions of one artifacts directory (immutable after construction).

    kv_on_device: generations keep their KV state in device memory and decode through
    device_kv.py; None (default) does so on the CUDA provider. True on the CPU provider runs the
    same code on CPU OrtValues (how the tests cover it without a GPU).
    """

    def __init__(self, artifacts: Artifacts, precision: str = "fp32",
                 providers: list[str] | None = None, intra_op_threads: int | None = None,
                 *, kv_on_device: bool | None = None, fuse: bool = True,
                 shared_kv: bool = True):
        self.artifacts = artifacts
        self.config = cfg = artifacts.model_config
        self.providers = resolve_providers(providers)
        if intra_op_threads is not None and not (
                type(intra_op_threads) is int and 1 <= intra_op_threads <= MAX_THREADS):
            raise ValueError(f"intra_op_threads must be None or an int in [1, {MAX_THREADS}] "
                             f"(threads per session; this machine has {os.cpu_count()} cores), "
                             f"got {intra_op_threads!r}")
        threads = intra_op_threads or 1

        def session(path, graph: bytes | None = None, spinning: bool = False):
            # from the verified bytes, never the file
            return create_session(artifacts, path, session_options(threads, spinning),
                                  self.providers, precision, graph)

        self.embed = session(artifacts.graph(precision, "embed"))
        # The block and MC-step graphs with a variable number of stored KV slots (protobuf.py),
        # so that one session serves one sequence (K slots, fed stored_slots = [K]: the same
        # outputs as the exported graph, bit for bit) and a batch side by side (pool.py), with
        # the weights loaded once. A graph of another shape loads as exported, unbatchable.
        paths = [artifacts.graph(precision, "blocks", b) for b in range(cfg.num_blocks)]
        paths.append(artifacts.graph(precision, "mc_step"))
        stored = cfg.window_size + cfg.max_global_tokens
        try:
            graphs = [stored_slots_variable(verified_bytes(artifacts, path), stored,
                                            slots_input=SLOTS_INPUT) for path in paths]
            self.unbatchable = None
        except (ValueError, KeyError, IndexError, struct.error) as e:   # not the exporter's shape
            graphs = [None] * len(paths)
            self.unbatchable = f"{paths[0].name} cannot take a batch ({e})"
        self.blocks = [session(path, graph) for path, graph in zip(paths[:-1], graphs[:-1])]
        # One thread per session by default, the LM head included: with spinning off (needed so
        # the sessions do not fight) and another process on the second core, a second thread
        # measured slower for a 4096-vocab head (42.6 us at 1 thread vs 49.5 us at 2).
        # intra_op_threads=2 gives every session two threads.
        # with a probabilities output (fusion.lm_head_graph): the probability of a chosen token
        # without a softmax in NumPy; a graph that cannot be edited loads as it is
        path = artifacts.graph(precision, "lm_head")
        try:
            head = lm_head_graph(verified_bytes(artifacts, path), cfg.vocab_size)
        except ValueError:
            head = None
        self.lm_head = session(path, head)
        self.has_probabilities = head is not None
        # the MC step with the LM head in one graph (fusion.mc_pass_graph): a high-band token's
        # samples in one call; else mc_step as it is, its hidden state through the LM head
        self.mc = None
        if head is not None and path.parent == paths[-1].parent:   # one external-data directory
            try:
                self.mc = session(paths[-1], mc_pass_graph(
                    graphs[-1] or verified_bytes(artifacts, paths[-1]),
                    verified_bytes(artifacts, path), cfg.vocab_size))
            except (ValueError, ArtifactError):
                pass
        self.mc_has_head = self.mc is not None
        if self.mc is None:
            self.mc = session(paths[-1], graphs[-1])
        self.uncertainty = session(artifacts.graph(precision, "uncertainty"))
        # models with input injection: h = W [h ; e] as its own small graph (docs/DEPTH.md)
        self.inject = (session(artifacts.graph(precision, "inject"))
                       if artifacts.has_graph(precision, "inject") else None)
        # models with a depth probe: uncertainty.onnx also reads the hidden state, gives p_benefit
        self.has_probe = "p_benefit" in {o.name for o in self.uncertainty.get_outputs()}
        self.think_id = cfg.think_token_id
        # per depth, the (block, iteration, input injection before it) of a token, in run order:
        # the decode loops (decode.py, pool.py) read this for every token
        self.schedules = {depth: tuple((b, i, cfg.injects(b, i)) for b, i in cfg.schedule(depth))
                          for depth in range(1, cfg.steps_reasoning + 1)}
        self.has_halt = "halt" in {o.name for o in self.blocks[0].get_outputs()}
        self.device = {"CUDAExecutionProvider": "cuda"}.get(self.providers[0])
        if kv_on_device is None:
            kv_on_device = self.device is not None
        self.kv_on_device = kv_on_device
        self.kv_writer = (ort.InferenceSession(kv_write_model(), session_options(threads),
                                               providers=self.providers)
                          if kv_on_device else None)
        # one-token decode through IO binding to host buffers (bindings.py) on the CPU provider
        self.bind_host = not kv_on_device and self.providers[0] == "CPUExecutionProvider"
        # the cheap pass of one token as one graph (fusion.py) on the IO-bound host path:
        # fused[signals] = (graph, session), without (fixed depth) and with the uncertainty head
        # (adaptive); None with the reason in `unfused` when it does not apply
        self.fused: tuple | None = None
        # a generation's own KV state has the scratch slot of kv_state.py (the fused pass's
        # attention writes there): its graphs are fed stored_slots = K + 1
        self.kv_scratch = False
        self.spliced_attention: str | None = "no fused pass"  # why not GroupQueryAttention
        self.unfused = ("fuse=False" if not fuse else None if self.bind_host
                        else "the fused pass runs on the CPU provider with the KV on the host")
        roles = ("embed", "lm_head", "uncertainty") + (("inject",) if cfg.input_injection else ())
        where = [artifacts.graph(precision, role) for role in roles] + paths[:-1]
        if self.unfused is None and len({path.parent for path in where}) != 1:
            # their external-data locations are relative to their own directories
            self.unfused = "the graphs to splice are not in one directory"
        if self.unfused is None:
            graphs = {role: verified_bytes(artifacts, path) for role, path in zip(roles, where)}
            graphs["blocks"] = [verified_bytes(artifacts, p) for p in paths[:-1]]
            # the blocks' attention as one GroupQueryAttention on a KV buffer with a scratch
            # slot (attention.py), where the separate graphs can attend over that slot too
            # (variable stored slots); else the exported attention nodes, spliced as they are.
            # fp32 only: its logits stay within ~1e-5 of the separate calls. The INT8 graphs
            # quantize every matmul's input (MatMulNBits), which turns the kernel's different
            # float rounding (~1e-6) into logit differences of up to 0.2 and a different
            # greedy token after ~150; there the spliced attention keeps them bitwise equal.
            self.spliced_attention = (
                "shared_kv=False" if not shared_kv else self.unbatchable or (
                    None if precision == "fp32" else "INT8 keeps the exported attention "
                                                     "(bitwise equal to the separate calls)"))
            candidates = [graphs["blocks"]]           # the exported blocks, last
            if self.spliced_attention is None:
                try:
                    rewritten = [shared_kv_block(g, stored, cfg.num_heads, cfg.head_dim)
                                 for g in graphs["blocks"]]
                    # once per block at load: the rewrite must compute what the exported
                    # graph computes (a graph can have the exporter's nodes and not its
                    # arithmetic), else the exported attention
                    for path, exported, graph in zip(paths, self.blocks, rewritten):
                        check_shared_kv_block(exported, session(path, graph), stored,
                                              cfg.num_heads, cfg.head_dim, cfg.hidden_size,
                                              SLOTS_INPUT)
                    candidates.insert(0, rewritten)
                except ArtifactError as e:     # e.g. an onnxruntime without this kernel
                    self.spliced_attention = f"GroupQueryAttention did not load ({e})"
                except ValueError as e:
                    self.spliced_attention = str(e)
            for blocks in candidates:
                try:
                    fused = [cheap_pass_graph(cfg, {**graphs, "blocks": blocks}, signals)
                             for signals in (False, True)]
                    # a token is one call of one of these: with 2+ threads their pool spins
                    # between the calls (no other session's pool is waiting on the cores): +4%
                    # fp32, +8% INT8 in median tok/s over three interleaved runs, noisy
                    # (docs/PERFORMANCE.md, "Thread settings"). From the embed graph's
                    # directory's external data.
                    self.fused = tuple((f, session(artifacts.graph(precision, "embed"), f.model,
                                                   spinning=threads > 1)) for f in fused)
                except (ValueError, ArtifactError) as e:
                    if blocks is not candidates[-1]:
                        # e.g. an onnxruntime whose GroupQueryAttention lacks an input used
                        # here: the exported attention instead
                        self.spliced_attention = f"the fused graph with GroupQueryAttention " \
                                                 f"failed ({e})"
                        continue
                    self.unfused = str(e)        # not graphs we can splice: separate calls
                else:
                    self.kv_scratch = fused[0].shared_kv
                break
