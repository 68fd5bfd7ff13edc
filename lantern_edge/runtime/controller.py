"""The adaptive controller: from the cheap pass's distribution to a token, spending compute by band.

Bands of U = a*H + b*dispersion - c*p_max (DESIGN.md):
- confident  (U < tau_low):   sample as configured;
- moderate   (< tau_mid):     refined sampling (temperature * refined_temperature);
- high       (< tau_high):    MC dropout: S masked re-runs of the last block's last iteration in
                              one call, mean probabilities, U_total = U + lambda * mutual
                              information; U_total >= tau_high escalates to very high;
- very_high  (>= tau_high):   inject THINK (global token) run at steps_reasoning and read the
                              next token from it; without THINK (or no global slot left), re-run
                              the newest token at steps_reasoning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..model.config import ModelConfig
from .engine import Engine, FeedResult
from .options import GenerationOptions
from .sampling import choose, mc_summary, softmax

logger = logging.getLogger(__name__)
BANDS = ("confident", "moderate", "high", "very_high")


@dataclass
class Decision:
    token: int
    probability: float                    # of the token under the distribution it was drawn from
    band: str | None                      # None on the fixed path (adaptive=False)
    signals: dict[str, float] = field(default_factory=dict)   # entropy, p_max, dispersion, U
    u_epistemic: float | None = None
    u_total: float | None = None
    mc_samples: int = 0
    think_injected: bool = False
    deepened: bool = False                # the newest token was re-run at steps_reasoning
    think_skipped: str | None = None      # why THINK was not injected in the very high band
    iterations: list[int] = field(default_factory=list)   # per block, of the cheap pass
    deep_iterations: list[int] | None = None               # per block, of the THINK/deepened pass


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
    def __init__(self, engine: Engine):
        self.engine = engine
        self.config = engine.config
        # THINK is the controller's to inject; the model never chooses it as an output token
        self.suppress = engine.config.think_token_id

    def decide(self, step: FeedResult, last_token: int, options: GenerationOptions,
               rng: np.random.Generator, mask_seed: int) -> Decision:
        logits = step.logits[-1]
        if not options.adaptive:
            token = self._choose(logits, options, options.temperature, rng)
            return Decision(token, float(softmax(logits)[token]), None,
                            iterations=list(step.iterations))
        weights = np.array([options.weight_entropy, options.weight_dispersion,
                            options.weight_p_max], np.float32)
        signals = {k: float(v[0]) for k, v in self.engine.signals(logits[None], weights).items()}
        decision = Decision(0, 0.0, band_of(signals["score"], options), signals,
                            iterations=list(step.iterations))
        if decision.band == "high":
            masks = dropout_masks(self.config, options.mc_samples, self.engine.kv.keys.shape[3],
                                  mask_seed, step.position)
            mean, decision.u_epistemic = mc_summary(self.engine.mc_logits(step, masks))
            decision.mc_samples = options.mc_samples
            decision.u_total = signals["score"] + options.lambda_epistemic * decision.u_epistemic
            if decision.u_total < options.tau_high:
                log_mean = np.log(np.maximum(mean, 1e-30)).astype(np.float32)
                decision.token = self._choose(log_mean, options, options.temperature, rng)
                decision.probability = float(mean[decision.token])
                return _logged(decision, step.position)
            decision.band = "very_high"          # escalated by epistemic uncertainty
        if decision.band == "very_high":
            logits, decision.deep_iterations = self._go_deep(last_token, options, decision)
            decision.token = self._choose(logits, options, options.temperature, rng)
        else:
            scale = options.refined_temperature if decision.band == "moderate" else 1.0
            decision.token = self._choose(logits, options, options.temperature * scale, rng)
        decision.probability = float(softmax(logits)[decision.token])
        return _logged(decision, step.position)

    def _go_deep(self, last_token: int, options: GenerationOptions, decision: Decision):
        engine, think = self.engine, self.config.think_token_id
        if think is None:
            decision.think_skipped = "the model has no THINK token"
        elif not options.inject_think:
            decision.think_skipped = "inject_think=False"
        elif engine.kv.globals_free == 0:
            decision.think_skipped = "the global KV buffer is full"
        elif engine.kv.length >= self.config.max_position:
            decision.think_skipped = "no position left for a THINK token"
        if decision.think_skipped is None:
            deep = engine.feed(np.array([think]), options.steps_reasoning)
            decision.think_injected = True
        else:
            engine.kv.rewind()
            deep = engine.feed(np.array([last_token]), options.steps_reasoning)
            decision.deepened = True
        return deep.logits[-1], list(deep.iterations)

    def _choose(self, logits, options, temperature, rng) -> int:
        return choose(logits, options.do_sample, temperature, options.top_k, options.top_p, rng,
                      self.suppress)


def _logged(decision: Decision, position: int) -> Decision:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("position %d: U=%.3f band=%s U_epi=%s THINK=%s deepened=%s -> %d (p=%.3f)%s",
                     position, decision.signals["score"], decision.band, decision.u_epistemic,
                     decision.think_injected, decision.deepened, decision.token,
                     decision.probability,
                     f" [{decision.think_skipped}]" if decision.think_skipped else "")
    return decision
