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
import math
from dataclasses import dataclass, field

import numpy as np

from ..model.config import ModelConfig
from .options import GenerationOptions
from .sampling import choose, mc_summary, penalize, probability, softmax, top_logprobs

logger = logging.getLogger(__name__)
BANDS = ("confident", "moderate", "high", "very_high")


@dataclass
class TraceEntry:
    """The controller's decision on one token, and what it cost: one per generated token."""
    token_id: int
    text: str = ""                        # the piece of text this token added (may be "")
    band: str | None = None               # confident / moderate / high / very_high; None if fixed
    probability: float = 0.0              # of the token under the distribution it was drawn from
    logprob: float | None = None          # log(probability)
    top_logprobs: list[tuple[int, str, float]] | None = None   # logprobs=N: (id, text, logprob)
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
    shapes = {"mask_attn_probs": (samples, config.num_heads, 1, stored + 1),
              "mask_attn_out": (samples, 1, config.hidden_size),
              "mask_mlp_out": (samples, 1, config.hidden_size)}
    sizes = [math.prod(shape) for shape in shapes.values()]
    # one draw for all three, in this order: the same numbers as one draw per mask (the
    # generator's doubles come one after the other), in three NumPy calls instead of nine:
    # they run cold, right after a graph call
    p = config.dropout
    keep = ((np.random.default_rng([seed, position]).random(sum(sizes)) >= p)
            .astype(np.float32) * np.float32(1.0 / (1.0 - p)))   # = float32(float64 * bool)
    ends = np.cumsum(sizes)
    return {name: keep[end - size:end].reshape(shape)
            for (name, shape), size, end in zip(shapes.items(), sizes, ends)}


def _weights(options: GenerationOptions) -> tuple[float, float, float]:
    return options.weight_entropy, options.weight_dispersion, options.weight_p_max


class Controller:
    """Stateless over one model. `decide` takes the generations that are due a token (each with
    its Sequence, pending FeedResult `step`, options, RNG, MC mask seed, token history and
    token healing) and a runner that makes the graph calls for them: decode.SINGLE for one
    generation on its own passes, pool.Pool for several in shared calls. Each generation gets
    exactly the decision it would get alone; the graph work of several is done in one call per
    kind where the runner can batch it."""

    def __init__(self, config: ModelConfig):
        self.config = config
        # THINK is the controller's to inject; the model never chooses it as an output token
        self.suppress = config.think_token_id

    def decide(self, runner, gens: list) -> list[TraceEntry]:
        entries = [TraceEntry(0, iterations=list(g.step.iterations)) for g in gens]
        logits = [g.step.logits[-1] for g in gens]
        probs = [g.step.probabilities for g in gens]     # softmax of the rows in logits, or None
        chosen_from: dict[int, np.ndarray] = {}          # k -> MC mean distribution
        groups: dict[tuple, list[int]] = {}
        for k, g in enumerate(gens):
            if g.options.adaptive:
                groups.setdefault(_weights(g.options), []).append(k)
        for weights, ks in groups.items():
            signals = runner.signals([gens[k] for k in ks], np.array(weights, np.float32))
            for j, k in enumerate(ks):
                e, options = entries[k], gens[k].options
                e.entropy, e.p_max, e.dispersion, e.u = (
                    float(signals[name][j]) for name in ("entropy", "p_max", "dispersion", "score"))
                if "p_benefit" in signals:
                    e.p_benefit = float(signals["p_benefit"][j])
                e.band = band_of(e.u, options)
                if options.deep_trigger == "probe":     # the probe alone sends tokens deep
                    if e.p_benefit >= options.tau_probe:
                        e.band = "very_high"
                    elif e.band == "very_high":
                        e.band = "high"
        high = [k for k, e in enumerate(entries) if e.band == "high"]
        if high:
            stored = self.config.window_size + self.config.max_global_tokens
            masks = [dropout_masks(self.config, gens[k].options.mc_samples, stored,
                                   gens[k].mask_seed, gens[k].step.position) for k in high]
            for k, samples in zip(high, runner.mc_probabilities([gens[k] for k in high],
                                                                masks)):
                e, options = entries[k], gens[k].options
                mean, e.u_epistemic = mc_summary(samples)
                e.mc_samples = options.mc_samples
                e.u_total = e.u + options.lambda_epistemic * e.u_epistemic
                # with the probe trigger the MC mean decides and nothing escalates
                if e.u_total < options.tau_high or options.deep_trigger == "probe":
                    logits[k] = np.log(np.maximum(mean, 1e-30)).astype(np.float32)
                    chosen_from[k] = mean
                else:
                    e.band = "very_high"         # escalated by epistemic uncertainty
        deep = [k for k, e in enumerate(entries) if e.band == "very_high"]
        if deep:
            for k, step in zip(deep, self._go_deep(runner, [gens[k] for k in deep],
                                                   [entries[k] for k in deep])):
                logits[k], probs[k] = step.logits[-1], step.probabilities
        for k, (g, e) in enumerate(zip(gens, entries)):
            o = g.options
            scale = o.refined_temperature if e.band == "moderate" else 1.0
            rules = logits[k] if g.healing is None else g.healing.constrain(logits[k])
            rules = penalize(rules, g.history, o.repetition_penalty, o.no_repeat_ngram_size)
            e.token_id = choose(rules, o.do_sample, o.temperature * scale, o.top_k, o.top_p,
                                g.rng, self.suppress, o.min_p)
            # the probability under the model's distribution (before temperature, filters,
            # healing and repetition rules): the softmax the LM head computed, the high band's
            # MC mean; from the logits only where neither is at hand
            dist = chosen_from.get(k, probs[k])
            if dist is None and o.logprobs is not None:
                dist = softmax(logits[k])
            e.probability = (probability(logits[k], e.token_id) if dist is None
                             else float(dist[e.token_id]))
            if o.logprobs is not None:
                e.top_logprobs = [(i, "", lp) for i, lp in top_logprobs(dist, o.logprobs)]
            e.logprob = math.log(max(e.probability, 1e-45))
            _logged(e, g.step.position)
        return entries

    def _go_deep(self, runner, gens: list, entries: list[TraceEntry]) -> list:
        """Very high band: a THINK token at steps_reasoning, or the newest token continued to
        steps_reasoning (Sequence.deepen), for each generation; the FeedResults to choose
        from."""
        think = self.config.think_token_id
        for g, e in zip(gens, entries):
            kv = g.seq.kv
            if think is None:
                e.think_skipped = "the model has no THINK token"
            elif not g.options.inject_think:
                e.think_skipped = "inject_think=False"
            elif kv.globals_free == 0:
                e.think_skipped = "the global KV buffer is full"
            elif kv.length >= self.config.max_position:
                e.think_skipped = "no position left for a THINK token"
            e.think_injected, e.deepened = e.think_skipped is None, e.think_skipped is not None
        out: list = [None] * len(gens)
        for depth in sorted({g.options.steps_reasoning for g in gens}):
            for thinking in (True, False):
                ks = [k for k, (g, e) in enumerate(zip(gens, entries))
                      if g.options.steps_reasoning == depth and e.think_injected == thinking]
                if not ks:
                    continue
                group = [gens[k] for k in ks]
                steps = (runner.feed([g.seq for g in group], [think] * len(ks), depth,
                                     [None] * len(ks)) if thinking
                         else runner.deepen(group, depth))
                for k, step in zip(ks, steps):
                    entries[k].deep_iterations = list(step.ran)
                    out[k] = step
        return out


def _logged(entry: TraceEntry, position: int) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("position %d: U=%s band=%s U_epi=%s THINK=%s deepened=%s -> %d (p=%.3f)%s",
                     position, entry.u, entry.band, entry.u_epistemic, entry.think_injected,
                     entry.deepened, entry.token_id, entry.probability,
                     f" [{entry.think_skipped}]" if entry.think_skipped else "")
