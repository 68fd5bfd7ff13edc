"""The shape of a LANTERN model (ModelConfig) and the controller's defaults (ControllerConfig).

Both are plain dataclasses validated on construction: a bad value raises ValueError naming the
field, the value and what is allowed. They travel inside checkpoints and the artifacts manifest
as dicts (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ROPE_STYLES = ("half_split", "upstream_pairs")
RECURSION_ORDERS = ("sequence", "cycle")
DEEP_TRIGGERS = ("u", "probe")


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _from_dict(cls, data: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 768          # SwiGLU inner width
    num_blocks: int = 2                   # distinct weight-shared blocks, applied in sequence
    window_size: int = 128                # a token sees itself and window_size - 1 earlier tokens
    max_position: int = 1024              # rows of the learned position embedding
    max_global_tokens: int = 16           # slots of the global KV buffer (position 0 + THINK tokens)
    steps_base: int = 2                   # iterations per block on the cheap path
    steps_reasoning: int = 4              # most iterations per block (deep path); KV is kept for each
    dropout: float = 0.1                  # embedding sum, attention probs, attention out, MLP out
    use_halting: bool = True              # a halting head (Linear(hidden, 1) + sigmoid) per block
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    think_token_id: int | None = None     # None: the model has no THINK token
    # Numerics that differ between upstream LANTERN and our own models (see DESIGN notes in README).
    rope_style: str = "half_split"        # "upstream_pairs" mirrors upstream's neighbour pairing
    rope_base: float = 10000.0
    norm_eps: float = 1e-5                # block LayerNorms (upstream: 1e-6)
    final_norm_eps: float = 1e-5          # final LayerNorm before the tied LM head
    # How depth is spent (docs/DEPTH.md). "sequence": block0 x d, then block1 x d, ... (every
    # checkpoint written before the field existed); "cycle": d cycles of block0, block1, ...
    recursion_order: str = "sequence"
    # h = W [h ; e] (a Linear 2C -> C, e the token's embedding) before every cycle (cycle order)
    # or before every iteration after a block's first (sequence order)
    input_injection: bool = False
    # The learned depth probe: hidden width of its MLP (0: no probe) and how many top
    # probabilities it reads
    depth_probe_hidden: int = 0
    depth_probe_top_k: int = 10

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_heads", "intermediate_size", "num_blocks",
                     "window_size", "max_position", "max_global_tokens", "steps_base"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, name, value, "an int >= 1")
        _require(self.hidden_size % self.num_heads == 0, "hidden_size", self.hidden_size,
                 f"divisible by num_heads={self.num_heads}")
        _require(self.head_dim % 2 == 0, "hidden_size", self.hidden_size,
                 "such that hidden_size / num_heads is even (RoPE rotates pairs)")
        _require(isinstance(self.steps_reasoning, int) and self.steps_reasoning >= self.steps_base,
                 "steps_reasoning", self.steps_reasoning, f"an int >= steps_base={self.steps_base}")
        _require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "in [0, 1)")
        _require(self.rope_style in ROPE_STYLES, "rope_style", self.rope_style,
                 f"one of {ROPE_STYLES}")
        _require(self.rope_base > 0, "rope_base", self.rope_base, "> 0")
        _require(self.norm_eps > 0, "norm_eps", self.norm_eps, "> 0")
        _require(self.final_norm_eps > 0, "final_norm_eps", self.final_norm_eps, "> 0")
        _require(self.recursion_order in RECURSION_ORDERS, "recursion_order",
                 self.recursion_order, f"one of {RECURSION_ORDERS}")
        _require(isinstance(self.input_injection, bool), "input_injection", self.input_injection,
                 "True or False")
        _require(isinstance(self.depth_probe_hidden, int) and self.depth_probe_hidden >= 0,
                 "depth_probe_hidden", self.depth_probe_hidden, "an int >= 0 (0: no probe)")
        _require(isinstance(self.depth_probe_top_k, int)
                 and 2 <= self.depth_probe_top_k <= self.vocab_size, "depth_probe_top_k",
                 self.depth_probe_top_k, f"an int in [2, vocab_size={self.vocab_size}]")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "think_token_id"):
            value = getattr(self, name)
            _require(value is None or (isinstance(value, int) and 0 <= value < self.vocab_size),
                     name, value, f"None or an id in [0, vocab_size={self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def has_depth_probe(self) -> bool:
        return self.depth_probe_hidden > 0

    def schedule(self, depth: int) -> list[tuple[int, int]]:
        """(block, iteration) in the order they run for `depth` iterations per block."""
        blocks = range(self.num_blocks)
        if self.recursion_order == "cycle":
            return [(b, i) for i in range(depth) for b in blocks]
        return [(b, i) for b in blocks for i in range(depth)]

    def continuation_iterations(self, done: int | None = None) -> list[int]:
        """Block iterations per block that continuing a token from `done` (default steps_base)
        iterations to steps_reasoning runs: cycle order only the missing cycles; sequence
        order the rest of block 0 and every later block again from its new input."""
        done = self.steps_base if done is None else done
        rest = self.steps_reasoning - done
        if self.recursion_order == "cycle":
            return [rest] * self.num_blocks
        return [rest] + [self.steps_reasoning] * (self.num_blocks - 1)

    def injects(self, block: int, iteration: int) -> bool:
        """Whether h = W [h ; e] runs right before this (block, iteration)."""
        if not self.input_injection:
            return False
        return block == 0 if self.recursion_order == "cycle" else iteration >= 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class ControllerConfig:
    """Defaults of the adaptive controller: U = a*H + b*dispersion - c*p_max, with a, b, c the
    weight_entropy, weight_dispersion and weight_p_max below."""

    weight_entropy: float = 1.0           # a, on entropy in nats
    weight_dispersion: float = 0.5        # b, on the top-k embedding dispersion
    weight_p_max: float = 0.5             # c, subtracted: confident tokens lower U
    lambda_epistemic: float = 0.3         # U_total = U + lambda * mutual information
    tau_low: float = 1.0
    tau_mid: float = 2.0
    tau_high: float = 3.0
    top_k_dispersion: int = 10
    mc_samples: int = 5
    halting_threshold: float = 0.5        # stop iterating a token once p_halt >= this
    refined_temperature: float = 0.7      # moderate band: sampling temperature multiplier
    # What sends a token deep: "u" (the bands above) or "probe" (the learned depth probe's
    # p_benefit >= tau_probe; needs a model with a probe)
    deep_trigger: str = "u"
    tau_probe: float = 0.5
    # Very high band: inject THINK (True) or continue the token deeper (False). Off unless the
    # model was shown to gain from THINK: manifests written before the field existed load as
    # False (the shipped model loses 1.6 points with THINK); upstream checkpoints set True.
    inject_think: bool = False
    # False: the model's default is the fixed steps_base path (no signals, no extra compute),
    # for a model whose evaluation found no controller that beats fixed depth at equal cost.
    # Manifests written before the field existed load as True.
    adaptive: bool = True

    def __post_init__(self) -> None:
        _require(isinstance(self.adaptive, bool), "adaptive", self.adaptive, "True or False")
        _require(self.tau_low <= self.tau_mid <= self.tau_high, "tau_low/tau_mid/tau_high",
                 (self.tau_low, self.tau_mid, self.tau_high), "non-decreasing")
        _require(isinstance(self.top_k_dispersion, int) and self.top_k_dispersion >= 1,
                 "top_k_dispersion", self.top_k_dispersion, "an int >= 1")
        _require(isinstance(self.mc_samples, int) and self.mc_samples >= 2, "mc_samples",
                 self.mc_samples, "an int >= 2")
        _require(0.0 < self.halting_threshold <= 1.0, "halting_threshold",
                 self.halting_threshold, "in (0, 1]")
        _require(self.refined_temperature > 0, "refined_temperature", self.refined_temperature,
                 "> 0")
        _require(self.lambda_epistemic >= 0, "lambda_epistemic", self.lambda_epistemic, ">= 0")
        _require(self.deep_trigger in DEEP_TRIGGERS, "deep_trigger", self.deep_trigger,
                 f"one of {DEEP_TRIGGERS}")
        _require(0.0 <= self.tau_probe <= 1.0, "tau_probe", self.tau_probe, "in [0, 1]")
        _require(isinstance(self.inject_think, bool), "inject_think", self.inject_think,
                 "True or False")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ControllerConfig":
        return _from_dict(cls, data)
