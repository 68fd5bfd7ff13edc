"""GenerationOptions: every knob of one generate() call, validated once.

Names follow Hugging Face's generate where a counterpart exists. The model's own values (its
thresholds, weights, depths, EOS) have one source, the artifacts' manifest: in those fields None
means "the model's value", and `resolved` fills them in from the manifest, so options built
without a model never carry thresholds of their own. Per-call overrides go through
`dataclasses.replace`, so they are validated too.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass
from typing import Any

# Fields whose None means "the model's value": each is named as in the manifest's
# model_config or controller section, from which `resolved` fills it.
MODEL_FIELDS = ("eos_token_id", "steps_base", "steps_reasoning", "mc_samples", "weight_entropy",
                "weight_dispersion", "weight_p_max", "tau_low", "tau_mid", "tau_high",
                "lambda_epistemic", "refined_temperature", "halting_threshold", "inject_think",
                "deep_trigger", "tau_probe", "adaptive")
DEEP_TRIGGERS = ("u", "probe")


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any, finite: bool = True) -> bool:
    """An int or float (not a bool), never NaN; +-inf only when finite=False."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return False
    return math.isfinite(value) or not finite


@dataclass(frozen=True)
class GenerationOptions:
    # length and stopping
    max_new_tokens: int = 64              # new tokens, the prompt not counted
    stop: tuple[str, ...] = ()            # stop before the first of these strings in the text
    eos_token_id: int | None = None       # stop after this id (None: the model's <eos>)
    ignore_eos: bool = False              # True: never stop at EOS (benchmarks, fixed lengths)
    # sampling
    do_sample: bool = False               # False: greedy (argmax)
    temperature: float = 1.0              # > 0, used when do_sample; below 1e-4: greedy
    top_k: int | None = None              # keep the k most likely tokens
    top_p: float | None = None            # nucleus: keep the smallest set with mass >= top_p
    seed: int | None = None               # seeds sampling and the MC-dropout masks
    min_p: float | None = None            # keep tokens with p >= min_p * p(most likely)
    repetition_penalty: float = 1.0       # > 1: tokens of the prompt and output less likely
    no_repeat_ngram_size: int = 0         # n > 0: never repeat an n-gram of the prompt and output
    logprobs: int | None = None           # N: the N most likely tokens' logprobs in each trace entry
    num_return_sequences: int = 1         # generate(): n sampled sequences, decoded as one batch
    # adaptive compute (None: the manifest's value)
    adaptive: bool | None = None          # False: the fixed steps_base path, no signals
    steps_base: int | None = None         # iterations per block, cheap path
    steps_reasoning: int | None = None    # iterations per block, deep path (<= the model's)
    mc_samples: int | None = None         # dropout samples in the high band
    weight_entropy: float | None = None   # U = a*H + b*dispersion - c*p_max
    weight_dispersion: float | None = None
    weight_p_max: float | None = None
    tau_low: float | None = None          # U < tau_low: confident
    tau_mid: float | None = None          # < tau_mid: moderate (refined sampling)
    tau_high: float | None = None         # < tau_high: MC refinement; >= : THINK + deep recursion
    lambda_epistemic: float | None = None  # U_total = U + lambda * mutual information
    refined_temperature: float | None = None  # moderate band: temperature multiplier
    use_halting: bool = False             # stop a block's iterations when p_halt >= threshold
    halting_threshold: float | None = None
    # very high band: inject THINK (True) or continue the token deeper (False); None: what the
    # manifest says the model was trained for (docs/DEPTH.md)
    inject_think: bool | None = None
    deep_trigger: str | None = None       # "u": the bands send tokens deep; "probe": the probe
    tau_probe: float | None = None        # deep_trigger="probe": deep when p_benefit >= this
    # a text prompt ending in whitespace: regenerate its trailing whitespace tokens (healing.py)
    token_healing: bool = True

    def __post_init__(self) -> None:
        _require(is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens",
                 self.max_new_tokens, "an int >= 1")
        _require(isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop),
                 "stop", self.stop, "a tuple of non-empty strings")
        _require(self.eos_token_id is None or (is_int(self.eos_token_id) and self.eos_token_id >= 0),
                 "eos_token_id", self.eos_token_id, "None or an id >= 0")
        for name in ("ignore_eos", "do_sample", "use_halting", "token_healing"):
            _require(isinstance(getattr(self, name), bool), name, getattr(self, name),
                     "True or False")
        _require(self.adaptive is None or isinstance(self.adaptive, bool), "adaptive",
                 self.adaptive, "None, True or False")
        _require(self.inject_think is None or isinstance(self.inject_think, bool),
                 "inject_think", self.inject_think, "None, True or False")
        _require(self.deep_trigger is None or self.deep_trigger in DEEP_TRIGGERS, "deep_trigger",
                 self.deep_trigger, f"None or one of {DEEP_TRIGGERS}")
        _require(self.tau_probe is None or is_number(self.tau_probe)
                 and 0 <= self.tau_probe <= 1, "tau_probe", self.tau_probe, "None or in [0, 1]")
        _require(is_number(self.temperature) and self.temperature > 0,
                 "temperature", self.temperature, "> 0 (use do_sample=False for greedy decoding)")
        _require(self.top_k is None or (is_int(self.top_k) and self.top_k >= 1), "top_k",
                 self.top_k, "None or an int >= 1")
        _require(self.top_p is None or (is_number(self.top_p) and 0 < self.top_p <= 1), "top_p",
                 self.top_p, "None or in (0, 1]")
        _require(self.seed is None or is_int(self.seed) and self.seed >= 0, "seed", self.seed,
                 "None or an int >= 0")
        _require(self.min_p is None or (is_number(self.min_p) and 0 <= self.min_p <= 1), "min_p",
                 self.min_p, "None or in [0, 1]")
        _require(is_number(self.repetition_penalty) and self.repetition_penalty > 0,
                 "repetition_penalty", self.repetition_penalty, "a finite number > 0 (1: off)")
        _require(is_int(self.no_repeat_ngram_size) and self.no_repeat_ngram_size >= 0,
                 "no_repeat_ngram_size", self.no_repeat_ngram_size, "an int >= 0 (0: off)")
        _require(self.logprobs is None or (is_int(self.logprobs) and 0 <= self.logprobs <= 20),
                 "logprobs", self.logprobs, "None or an int in [0, 20]")
        _require(is_int(self.num_return_sequences) and self.num_return_sequences >= 1,
                 "num_return_sequences", self.num_return_sequences, "an int >= 1")
        _require(self.num_return_sequences == 1 or self.do_sample, "num_return_sequences",
                 self.num_return_sequences, "1 with greedy decoding (n greedy sequences are "
                 "all the same); set do_sample=True")
        optional = lambda name: getattr(self, name) is None  # noqa: E731 (the model's value)
        _require(optional("steps_base") or is_int(self.steps_base) and self.steps_base >= 1,
                 "steps_base", self.steps_base, "an int >= 1")
        _require(optional("steps_reasoning") or is_int(self.steps_reasoning)
                 and self.steps_reasoning >= (self.steps_base or 1), "steps_reasoning",
                 self.steps_reasoning, f"an int >= steps_base={self.steps_base or 1}")
        _require(optional("mc_samples") or is_int(self.mc_samples) and 2 <= self.mc_samples <= 64,
                 "mc_samples", self.mc_samples, "an int in [2, 64]")
        for name in ("weight_entropy", "weight_dispersion", "weight_p_max"):
            # bounded: U is computed in float32, where 1e39 * entropy is inf
            _require(optional(name) or is_number(getattr(self, name))
                     and abs(getattr(self, name)) <= 1e6, name, getattr(self, name),
                     "a finite number in [-1e6, 1e6]")
        taus = ("tau_low", "tau_mid", "tau_high")
        for name in taus:                                 # +-inf switches a band off or on
            _require(optional(name) or is_number(getattr(self, name), finite=False), name,
                     getattr(self, name), "a number (+-inf allowed, not NaN)")
        given = [getattr(self, name) for name in taus if not optional(name)]
        _require(given == sorted(given), "tau_low <= tau_mid <= tau_high",
                 (self.tau_low, self.tau_mid, self.tau_high), "ordered")
        _require(optional("lambda_epistemic") or is_number(self.lambda_epistemic)
                 and self.lambda_epistemic >= 0, "lambda_epistemic", self.lambda_epistemic,
                 "a finite number >= 0")
        _require(optional("refined_temperature") or is_number(self.refined_temperature)
                 and self.refined_temperature > 0, "refined_temperature",
                 self.refined_temperature, "a finite number > 0")
        _require(optional("halting_threshold") or is_number(self.halting_threshold)
                 and 0 < self.halting_threshold <= 1, "halting_threshold",
                 self.halting_threshold, "in (0, 1]")

    def resolved(self, model: dict[str, Any]) -> GenerationOptions:
        """These options with every None model field (MODEL_FIELDS) taken from `model`, the
        manifest's model_config and controller values by name; validated again."""
        return dataclasses.replace(self, **{name: model[name] for name in MODEL_FIELDS
                                            if getattr(self, name) is None})

    def check_model(self, num_steps_reasoning: int, vocab_size: int) -> None:
        """Limits that depend on the model: its KV buffers hold steps_reasoning iterations."""
        _require(self.steps_reasoning <= num_steps_reasoning, "steps_reasoning",
                 self.steps_reasoning, f"<= the model's steps_reasoning={num_steps_reasoning}")
        _require(self.eos_token_id is None or self.eos_token_id < vocab_size, "eos_token_id",
                 self.eos_token_id, f"None or an id in [0, vocab_size={vocab_size})")
        _require(self.top_k is None or self.top_k <= vocab_size, "top_k", self.top_k,
                 f"<= vocab_size={vocab_size}")
