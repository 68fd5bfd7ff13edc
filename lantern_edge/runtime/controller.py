"""The adaptive controller: from the cheap pass's distribution to a token, spending compute by band.

Bands of U = a*H + b*dispersion - c*p_max:
- confident  (U < tau_low):   sample as configured;
- moderate   (< tau_mid):     refined sampling (temperature * refined_temperature);
- high       (< tau_high):    MC dropout: S masked re-runs of the last block's last iteration in
                              one call, mean probabilities, U_total = U + lambda * mutual
                              information; U_total >= tau_high escalates to very high;
- very_high  (>= tau_high):   inject THINK (global token) run at steps_reasoning and read the
                              next token from it when inject_think; otherwise (or no global
                              slot left) continue the newest token to steps_reasoning: the
                              missing cycles (cycle order), or block 0 onwards from its state
                              and the later blocks again (sequence order); docs/DEPTH.md.
With deep_trigger="probe" the depth probe decides instead of U: a token goes very high when
p_benefit >= tau_probe, and the others use the bands below very high (no escalation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..model.config import ModelConfig
from .decode import FeedResult, Sequence
from .options import GenerationOptions
from .sampling import choose, mc_summary, softmax

logger = logging.getLogger(__name__)
BANDS = ("confident", "moderate", "high", "very_high")


@dataclass
class TraceEntry:
    """The controller's decision on one token, and what it cost: one per generated token."""
    token_id: int
    text: str = ""                        # the piece of text this token added (may be "")
    band: str | None = None               # confident / moderate / high / very_high; None if fixed
    probability: float = 0.0              # of the token under the distribution it was drawn from
    iterations: list[int] = field(default_factory=list)   # per block, of the cheap pass
    deep_iterations: list[int] | None = None  # per block, THINK or deepened pass (very high)
    entropy: float | None = None
    p_max: float | None = None
    dispersion: float | None = None
    u: float | None = None                # composite score U
    u_epistemic: float | None = None      # mutual information over MC samples (high band)
    u_total: float | None = None
    mc_samples: int = 0
    think_injected: bool = False
    deepened: bool = False                # the newest token was continued to steps_reasoning
    think_skipped: str | None = None      # why THINK was not injected in the very high band
    p_benefit: float | None = None        # the depth probe's output (models with a probe)
    microseconds: float = 0.0             # feeding the previous token + deciding this one


def band_of(u: float, options: GenerationOptions) -> str:
    if u < options.tau_low:
        return "confident"
    if u < options.tau_mid:
        return "moderate"
    if u < options.tau_high:
        return "high"
    return "very_high"


def dropout_masks(config: ModelConfig, samples: int, stored: int, seed: int,
                  position: int) -> dict[str, np.ndarray]:
    """Scaled keep masks for the MC step of one token, from a generator seeded by (seed,
    position): reproducible, and independent of how many tokens were sampled before."""
    rng = np.random.default_rng([seed, position])
    p = config.dropout

    def keep(*shape):
        return ((rng.random(shape) >= p) * (1.0 / (1.0 - p))).astype(np.float32)
    return {"mask_attn_probs": keep(samples, config.num_heads, 1, stored + 1),
            "mask_attn_out": keep(samples, 1, config.hidden_size),
            "mask_mlp_out": keep(samples, 1, config.hidden_size)}


class Controller:
    """Stateless over one model: every call gets the generation's Sequence and RNG."""

    def __init__(self, config: ModelConfig):
        self.config = config
        # THINK is the controller's to inject; the model never chooses it as an output token
        self.suppress = config.think_token_id

    def decide(self, seq: Sequence, step: FeedResult, options: GenerationOptions,
               rng: np.random.Generator, mask_seed: int, healing=None) -> TraceEntry:
        """healing: a TokenHealing (healing.py) whose constraint applies to the choice."""
        logits = step.logits[-1]
        if not options.adaptive:
            token = self._choose(logits, options, options.temperature, rng, healing)
            return TraceEntry(token, probability=float(softmax(logits)[token]),
                              iterations=list(step.iterations))
        weights = np.array([options.weight_entropy, options.weight_dispersion,
                            options.weight_p_max], np.float32)
        hidden = step.hidden[-1:] if step.hidden is not None else None
        signals = {k: float(v[0]) for k, v in seq.signals(logits[None], weights, hidden).items()}
        u = signals["score"]
        entry = TraceEntry(0, band=band_of(u, options), iterations=list(step.iterations),
                           entropy=signals["entropy"], p_max=signals["p_max"],
                           dispersion=signals["dispersion"], u=u,
                           p_benefit=signals.get("p_benefit"))
        probe = options.deep_trigger == "probe"
        if probe:                                # the probe alone sends tokens deep
            if entry.p_benefit >= options.tau_probe:
                entry.band = "very_high"
            elif entry.band == "very_high":
                entry.band = "high"
        if entry.band == "high":
            masks = dropout_masks(self.config, options.mc_samples, seq.kv.keys.shape[3],
                                  mask_seed, step.position)
            mean, entry.u_epistemic = mc_summary(seq.mc_logits(step, masks))
            entry.mc_samples = options.mc_samples
            entry.u_total = u + options.lambda_epistemic * entry.u_epistemic
            if entry.u_total < options.tau_high or probe:
                log_mean = np.log(np.maximum(mean, 1e-30)).astype(np.float32)
                entry.token_id = self._choose(log_mean, options, options.temperature, rng, healing)
                entry.probability = float(mean[entry.token_id])
                return _logged(entry, step.position)
            entry.band = "very_high"             # escalated by epistemic uncertainty
        if entry.band == "very_high":
            logits, entry.deep_iterations = self._go_deep(seq, step, options, entry)
            entry.token_id = self._choose(logits, options, options.temperature, rng, healing)
        else:
            scale = options.refined_temperature if entry.band == "moderate" else 1.0
            entry.token_id = self._choose(logits, options, options.temperature * scale, rng,
                                          healing)
        entry.probability = float(softmax(logits)[entry.token_id])
        return _logged(entry, step.position)

    def _go_deep(self, seq: Sequence, step: FeedResult, options: GenerationOptions,
                 entry: TraceEntry):
        kv, think = seq.kv, self.config.think_token_id
        if think is None:
            entry.think_skipped = "the model has no THINK token"
        elif not options.inject_think:
            entry.think_skipped = "inject_think=False"
        elif kv.globals_free == 0:
            entry.think_skipped = "the global KV buffer is full"
        elif kv.length >= self.config.max_position:
            entry.think_skipped = "no position left for a THINK token"
        if entry.think_skipped is None:
            deep = seq.feed(np.array([think]), options.steps_reasoning)
            entry.think_injected = True
        else:
            deep = seq.deepen(step, options.steps_reasoning)
            entry.deepened = True
        return deep.logits[-1], list(deep.ran)

    def _choose(self, logits, options, temperature, rng, healing=None) -> int:
        if healing is not None:
            logits = healing.constrain(logits)
        return choose(logits, options.do_sample, temperature, options.top_k, options.top_p, rng,
                      self.suppress)


def _logged(entry: TraceEntry, position: int) -> TraceEntry:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("position %d: U=%.3f band=%s U_epi=%s THINK=%s deepened=%s -> %d (p=%.3f)%s",
                     position, entry.u, entry.band, entry.u_epistemic, entry.think_injected,
                     entry.deepened, entry.token_id, entry.probability,
                     f" [{entry.think_skipped}]" if entry.think_skipped else "")
    return entry
