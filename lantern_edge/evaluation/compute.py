"""Accuracy against compute: adaptive allocation of extra depth vs fixed depth, random and oracle.

Cost is the runtime's: mean block iterations per token and block (GenerationResult.stats
"mean_iterations_per_block"). The cheap pass costs steps_base. A token sent deep by
continuation costs what continuing it runs (ModelConfig.continuation_iterations: cycle order
steps_reasoning - steps_base per block; sequence order the rest of block 0 plus every later
block again, at steps 2/4 on two blocks (2 + 4) / 2 = 3 more); a THINK token costs
steps_reasoning per block; an MC refinement costs mc_samples iterations of one block,
mc_samples / num_blocks on this scale.

Every adaptive point is one joint teacher-forced pass (passes.adaptive): the chosen tokens get
the very-high action (THINK while the window's global buffer has room, else continued deep) and
later tokens see their KV, as in the runtime. Approximation: which tokens go deep is decided
from the cheap pass over an all-cheap context, not over the context earlier deep tokens left;
each composite point reports how many cheap tokens the real context would have sent deep
("flipped"). MC refinement leaves the KV untouched, so its outcome comes from signals.collect.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.config import ControllerConfig, ModelConfig
from ..model.modeling import LanternModel
from ..model.uncertainty import UncertaintyHead
from . import gains, onpolicy, passes
from .metrics import cluster_bootstrap_ci
from .signals import controller_weights, deep_action

BASE_FRACTIONS = (0.02, 0.05, 0.1, 0.2)
STRATEGIES = ("composite", "entropy", "random", "oracle")


def deep_cost(config: ModelConfig, action: str) -> float:
    """Mean block iterations per block one token sent deep adds: a THINK token ("think")
    runs steps_reasoning of every block; a continued token ("deepened") what continuing runs."""
    if action == "think":
        return float(config.steps_reasoning)
    extra = config.continuation_iterations()
    return sum(extra) / len(extra)


def default_fractions(steps_base: int, steps_reasoning: int, extra: float) -> list[float]:
    """Shares of tokens sent deep: a few small ones, plus those whose cost equals a fixed
    depth (steps_base + f * extra = d, extra = deep_cost), where the comparison is exact."""
    equal_cost = [(d - steps_base) / extra for d in range(steps_base + 1, steps_reasoning + 1)]
    return sorted({round(f, 6) for f in (*BASE_FRACTIONS, *equal_cost) if 0 < f <= 1})


def choose_deep(strategy: str, fraction: float, columns: dict[str, np.ndarray],
                helped: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float | None]:
    """(flat deep bools, threshold or None) for a strategy sending a share of tokens deep.

    composite / entropy: the highest-scored tokens (one global threshold, as a tuned tau_high);
    random: a uniform random subset; oracle: only tokens the deep action fixes (helped), at
    random among them, never more than there are.
    """
    n = len(helped)
    count = int(round(fraction * n))
    chosen = np.zeros(n, dtype=bool)
    threshold = None
    if strategy in ("composite", "entropy"):
        order = np.argsort(-columns[strategy], kind="mergesort")[:count]
        chosen[order] = True
        threshold = float(columns[strategy][order[-1]]) if count else None
    elif strategy == "random":
        chosen[rng.choice(n, count, replace=False)] = True
    elif strategy == "oracle":
        chosen[rng.permutation(np.flatnonzero(helped))[:count]] = True
    else:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return chosen, threshold


def shipped_bands(columns: dict[str, np.ndarray], controller: ControllerConfig) -> dict[str, np.ndarray]:
    """The runtime controller's decisions with the checkpoint's thresholds and trigger, from
    the all-cheap context (greedy decoding: the moderate band's lower temperature does not
    change the top-1)."""
    signals = {"u": columns["composite"], "p_benefit": columns.get("p_benefit")}
    return onpolicy.bands(signals, columns["u_total"], controller)


class Sweep:
    """The joint passes of one model on one set of windows, and paired comparisons of them."""

    def __init__(self, model: LanternModel, controller: ControllerConfig, inputs: torch.Tensor,
                 targets: torch.Tensor, columns: dict[str, np.ndarray], mc_samples: int, seed: int,
                 inject_think: bool = True):
        cfg = model.config
        self.model, self.controller, self.seed = model, controller, seed
        self.action = deep_action(columns, inject_think)
        self.inputs, self.targets, self.columns = inputs, targets, columns
        self.mc_samples = mc_samples
        self.base, self.top, self.blocks = cfg.steps_base, cfg.steps_reasoning, cfg.num_blocks
        self.extra = deep_cost(cfg, self.action)
        self.think_cost, self.continue_cost = deep_cost(cfg, "think"), deep_cost(cfg, "deepened")
        self.base_correct = columns[f"correct_d{self.base}"]
        self.base_nll = columns[f"nll_d{self.base}"]
        self.helped = ~self.base_correct & columns[f"correct_{self.action}"]
        head = UncertaintyHead(model.token_embedding.weight, controller.top_k_dispersion)
        weights = controller_weights(controller)
        self.composite_of = lambda logits: head(logits, weights)[3]
        self.correct: dict[tuple, np.ndarray] = {}

    def fixed(self) -> list[dict]:
        return [self._point("fixed", depth, float(depth), self.columns[f"correct_d{depth}"],
                            self.columns[f"nll_d{depth}"])
                for depth in range(1, self.top + 1)]

    def adaptive(self, strategy: str, fraction: float) -> dict:
        rng = np.random.default_rng([self.seed, STRATEGIES.index(strategy), int(fraction * 1e6)])
        deep, threshold = choose_deep(strategy, fraction, self.columns, self.helped, rng)
        score = self.composite_of if strategy == "composite" else None
        result, plan, joint_u = passes.adaptive(self.model, self.inputs, self.targets,
                                                deep.reshape(self.targets.shape),
                                                self.action == "think", score=score)
        point = self._point(strategy, fraction, self._cost(plan), result.correct.ravel(),
                            result.nll.ravel())
        point.update(threshold=threshold, deep_share=float(deep.mean()), thinks=plan.thinks,
                     deepened=plan.deepened)
        if joint_u is not None and threshold is not None and not deep.all():
            cheap = ~deep
            point["flipped"] = float((joint_u.ravel()[cheap] >= threshold).mean())
        return point

    def mc(self, fraction: float) -> dict:
        """Composite -> MC averaging on the top share (no KV change, so no joint pass)."""
        chosen, threshold = choose_deep("composite", fraction, self.columns, self.helped, None)
        correct = np.where(chosen, self.columns["correct_mc"], self.base_correct)
        nll = np.where(chosen, self.columns["nll_mc"], self.base_nll)
        cost = self.base + chosen.mean() * self.mc_samples / self.blocks
        point = self._point("composite_mc", fraction, cost, correct, nll)
        point.update(threshold=threshold, mc_share=float(chosen.mean()))
        return point

    def shipped(self) -> dict:
        """The checkpoint's own controller (deep_trigger, thresholds), its decisions made
        on-policy (onpolicy.decide) when the deep action continues the token; with THINK
        injection from the all-cheap context (inserted tokens shift every later position)."""
        if self.action == "deepened":
            decision = onpolicy.decide(self.model, self.controller, self.inputs,
                                       self.columns["mutual_information"].reshape(
                                           self.targets.shape))
            bands = {k: decision[k].ravel() for k in ("deep", "mc", "escalated")}
            policy = {"on_policy": True, "rounds": decision["rounds"],
                      "converged": decision["converged"],
                      "changed_after_first": decision["changed_after_first"]}
        else:
            bands = shipped_bands(self.columns, self.controller)
            policy = {"on_policy": False}
        mc_run = bands["mc"] | bands["escalated"]
        result, plan, _ = passes.adaptive(self.model, self.inputs, self.targets,
                                          bands["deep"].reshape(self.targets.shape),
                                          self.action == "think")
        correct = np.where(bands["mc"], self.columns["correct_mc"], result.correct.ravel())
        nll = np.where(bands["mc"], self.columns["nll_mc"], result.nll.ravel())
        cost = self._cost(plan) + mc_run.mean() * self.mc_samples / self.blocks
        point = self._point("shipped", "checkpoint thresholds", cost, correct, nll)
        point.update(threshold=self.controller.tau_high, deep_share=float(bands["deep"].mean()),
                     mc_share=float(bands["mc"].mean()), thinks=plan.thinks,
                     deepened=plan.deepened, trigger=self.controller.deep_trigger, **policy)
        self.shipped_outcome = (bands["deep"], correct, nll, point["cost"])
        return point

    def _cost(self, plan: passes.Layout) -> float:
        """The cheap pass plus what each deep token ran: a THINK token or its continuation."""
        extra = plan.thinks * self.think_cost + plan.deepened * self.continue_cost
        return self.base + extra / self.targets.numel()

    def _point(self, strategy: str, setting, cost: float, correct: np.ndarray,
               nll: np.ndarray) -> dict:
        self.correct[(strategy, setting)] = correct
        gain = cluster_bootstrap_ci(correct.astype(np.float64) - self.base_correct,
                                    self.columns["window"], seed=self.seed)
        return {"strategy": strategy, "setting": setting, "cost": float(cost),
                "accuracy": float(np.mean(correct)), "loss": float(np.mean(nll)),
                "gain_vs_base": list(gain)}

    def compare(self, a: tuple, b: tuple) -> tuple[float, float, float]:
        """Paired accuracy difference a - b, with a 95% CI resampling whole windows."""
        diff = self.correct[a].astype(np.float64) - self.correct[b].astype(np.float64)
        return cluster_bootstrap_ci(diff, self.columns["window"], seed=self.seed)


def accuracy_vs_compute(sweep: Sweep, fractions: list[float], progress=lambda m: None) -> dict:
    """Every point of the accuracy-vs-compute figure and the equal-cost comparisons.

    Returns:
        JSON-ready dict: "points" (one per strategy and setting), "comparisons" (composite vs
        fixed depth at exactly equal cost, and vs random and entropy at each share), "oracle
        ceiling" (share of tokens the deep action fixes), "fractions".
    """
    points = sweep.fixed()
    helped = int(sweep.helped.sum())
    for strategy in STRATEGIES:
        for fraction in fractions:
            progress(f"{strategy}: {fraction:.0%} of tokens deep")
            points.append(sweep.adaptive(strategy, fraction))
            if strategy == "oracle" and round(fraction * len(sweep.helped)) >= helped:
                break                   # every helped token is deep: larger budgets are idle
    points.extend(sweep.mc(f) for f in fractions)
    progress("the shipped controller")
    points.append(sweep.shipped())
    comparisons = []
    for fraction in fractions:
        depth = sweep.base + fraction * sweep.extra
        versus = [("random", fraction), ("entropy", fraction)]
        if abs(depth - round(depth)) < 1e-9 and 1 <= round(depth) <= sweep.top:
            versus.insert(0, ("fixed", int(round(depth))))
        for other in versus:
            mean, low, high = sweep.compare(("composite", fraction), other)
            comparisons.append({"share": fraction, "cost": depth, "versus": list(other),
                                "difference": mean, "low": low, "high": high,
                                "verdict": verdict(low, high)})
    deep, correct, nll, cost = sweep.shipped_outcome
    columns = sweep.columns
    summary = gains.adaptive_vs_fixed(cost, correct, nll, columns, sweep.top, sweep.seed)
    decomposition = gains.decomposition(deep, sweep.base_correct, columns["top1_base"],
                                        columns[f"top1_{sweep.action}"],
                                        columns[f"correct_{sweep.action}"])
    return {"adaptive_vs_fixed": summary, "decomposition": decomposition,
            "fractions": fractions, "points": points, "comparisons": comparisons,
            "helped_share": float(sweep.helped.mean()), "deep_action": sweep.action,
            "steps_base": sweep.base, "steps_reasoning": sweep.top}


def verdict(low: float, high: float) -> str:
    """Reading of a 95% interval of a difference."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no significant difference"
