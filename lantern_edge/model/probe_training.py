"""The probe phase: train the depth probe on the frozen model, on-policy, and calibrate it.

Labels come from the runtime's own very-high action: for every token, the cheap pass
(steps_base) against the token alone continued to steps_reasoning over the cheap context
(model.counterfactual.solo). A token is positive when going deep
- "gain": lowers its loss by more than gamma nats,
- "fix": turns a wrong cheap top-1 into a right one,
- "either": one or the other (the default).
The probe (model.probe.DepthProbe, reading the cheap pass's normed hidden state and the
distribution's shape) learns them with class-balanced BCE (each class weighs half, whatever its
rate). Then tau_probe is set so that a share deep_budget of held-out tokens has
p_benefit >= tau_probe, and the controller's deep_trigger becomes "probe".
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.metrics import auroc
from .counterfactual import solo
from .modeling import LanternModel
from .train_data import IGNORE

logger = logging.getLogger(__name__)
LABELS = ("gain", "fix", "either")


def with_probe(model: LanternModel, hidden: int, top_k: int | None = None) -> LanternModel:
    """The same model with a fresh depth probe of this width (its other weights copied)."""
    cfg = dataclasses.replace(model.config, depth_probe_hidden=hidden,
                              depth_probe_top_k=top_k or model.config.depth_probe_top_k)
    torch.manual_seed(0)
    new = LanternModel(cfg).to(next(model.parameters()).device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("depth_probe.")}
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("depth_probe.") for k in missing)
    return new


@torch.no_grad()
def label_batch(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor, gamma: float,
                kind: str, autocast=None) -> dict[str, torch.Tensor]:
    """Per valid token: the cheap pass's normed hidden (N, C) and logits (N, V), the label
    (N,) bool, and the cheap and deep NLL and top-1 correctness (for reports)."""
    if kind not in LABELS:
        raise ValueError(f"probe label must be one of {LABELS}, got {kind!r}")
    was_training = model.training
    model.eval()
    with autocast or contextlib.nullcontext():
        out, deep_logits, _ = solo(model, inputs, model.config.steps_reasoning)
    model.train(was_training)
    valid = (targets != IGNORE).flatten()
    cheap_logits = out.logits.flatten(0, 1)[valid].float()
    deep_logits = deep_logits.flatten(0, 1)[valid].float()
    target = targets.flatten()[valid]
    cheap_nll = F.cross_entropy(cheap_logits, target, reduction="none")
    deep_nll = F.cross_entropy(deep_logits, target, reduction="none")
    cheap_ok, deep_ok = cheap_logits.argmax(-1) == target, deep_logits.argmax(-1) == target
    gain, fix = cheap_nll - deep_nll > gamma, ~cheap_ok & deep_ok
    label = {"gain": gain, "fix": fix, "either": gain | fix}[kind]
    return {"hidden": out.hidden.flatten(0, 1)[valid].float(), "logits": cheap_logits,
            "label": label, "fix": fix, "change": cheap_logits.argmax(-1) != deep_logits.argmax(-1),
            "cheap_nll": cheap_nll, "deep_nll": deep_nll}


def balanced_bce(p: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """BCE where the positives and the negatives each weigh one half (a class absent from the
    batch gives its half to the other)."""
    label = label.float()
    bce = F.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), label, reduction="none")
    positives = label.sum()
    negatives = len(label) - positives
    if positives == 0 or negatives == 0:
        return bce.mean()
    return 0.5 * (bce * label).sum() / positives + 0.5 * (bce * (1 - label)).sum() / negatives


def calibrate_tau(p_benefit: np.ndarray, budget: float) -> float:
    """The threshold at which a share `budget` of these tokens has p_benefit >= it."""
    if not 0 < budget < 1:
        raise ValueError(f"deep_budget must be in (0, 1), got {budget}")
    values = np.sort(np.asarray(p_benefit, dtype=np.float64))[::-1]
    count = max(1, int(round(budget * len(values))))
    return float(np.clip(values[count - 1], 0.0, 1.0))


def probe_scores(model: LanternModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.depth_probe(batch["hidden"], batch["logits"], model.token_embedding.weight)


def run_probe_phase(model: LanternModel, cfg, next_batch, val_batches, device: torch.device,
                    autocast=None) -> tuple[LanternModel, dict]:
    """Add a probe to `model`, train it (the rest frozen) and calibrate tau_probe on
    val_batches. cfg: the TrainConfig (probe_hidden, probe_steps, probe_minutes, probe_lr,
    probe_label, probe_gamma, deep_budget). Returns (model with the probe, report)."""
    model = with_probe(model, cfg.probe_hidden)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.depth_probe.parameters())
    for p in params:
        p.requires_grad_(True)
    model.eval()                                   # frozen: no dropout in labels or features
    optimizer = torch.optim.AdamW(params, lr=cfg.probe_lr, weight_decay=0.0)
    started, step, losses = time.perf_counter(), 0, []
    while step < cfg.probe_steps:
        if cfg.probe_minutes and time.perf_counter() - started > 60 * cfg.probe_minutes:
            break
        inputs, targets = next_batch()
        batch = label_batch(model, inputs.to(device), targets.to(device), cfg.probe_gamma,
                            cfg.probe_label, autocast)
        for group in optimizer.param_groups:     # cosine to zero over the phase
            group["lr"] = cfg.probe_lr * 0.5 * (1 + math.cos(math.pi * step / cfg.probe_steps))
        loss = balanced_bce(probe_scores(model, batch), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
    for p in model.parameters():
        p.requires_grad_(True)
    report = evaluate_probe(model, val_batches, cfg, device, autocast)
    report.update(steps=step, seconds=round(time.perf_counter() - started, 2),
                  train_loss_first=losses[0] if losses else None,
                  train_loss_last=float(np.mean(losses[-10:])) if losses else None)
    logger.info("probe: %d steps, AUROC %.3f (label rate %.3f), tau_probe %.4f for %.0f%% deep",
                step, report["auroc"], report["label_rate"], report["tau_probe"],
                100 * cfg.deep_budget)
    return model, report


@torch.no_grad()
def evaluate_probe(model: LanternModel, val_batches, cfg, device: torch.device,
                   autocast=None) -> dict:
    """AUROC of the probe (and of entropy, for comparison) on held-out labels; tau_probe."""
    scores, labels, entropy, fix, change, gain = [], [], [], [], [], []
    for inputs, targets in val_batches:
        batch = label_batch(model, inputs.to(device), targets.to(device), cfg.probe_gamma,
                            cfg.probe_label, autocast)
        scores.append(probe_scores(model, batch).cpu().numpy())
        log_p = torch.log_softmax(batch["logits"], -1)
        entropy.append(-(log_p.exp() * log_p).sum(-1).cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        fix.append(batch["fix"].cpu().numpy())
        change.append(batch["change"].cpu().numpy())
        gain.append((batch["cheap_nll"] - batch["deep_nll"]).cpu().numpy())
    scores, labels, entropy = map(np.concatenate, (scores, labels, entropy))
    fix, change, gain = map(np.concatenate, (fix, change, gain))
    tau = calibrate_tau(scores, cfg.deep_budget)
    deep = scores >= tau
    return {"auroc": auroc(scores, labels), "auroc_entropy": auroc(entropy, labels),
            "auroc_fix_given_change": auroc(scores[change], fix[change]),
            "auroc_fix_given_change_entropy": auroc(entropy[change], fix[change]),
            "label": cfg.probe_label, "gamma": cfg.probe_gamma,
            "label_rate": float(labels.mean()), "tokens": int(len(labels)),
            "tau_probe": tau, "deep_budget": cfg.deep_budget, "deep_share": float(deep.mean()),
            "mean_loss_gain_deep": float(gain[deep].mean()) if deep.any() else None,
            "mean_loss_gain_all": float(gain.mean())}


def add_probe(checkpoint: str, output: str, **overrides) -> dict:
    """The probe phase on an existing checkpoint (any of ours, e.g. one trained before the
    recipe): its own corpus split and trainer settings, with `overrides` of the probe fields
    (probe_hidden, probe_steps, deep_budget, ...). Writes `output`; returns the probe report."""
    from tokenizers import Tokenizer

    from .checkpoint import load_checkpoint, save_checkpoint
    from .corpus import load_corpus
    from .train_config import resume_config
    from .train_data import make_batch, tokenize
    ckpt = load_checkpoint(checkpoint)
    cfg = resume_config(checkpoint, **{"probe_hidden": 64, **overrides})
    corpus = load_corpus(list(cfg.corpus), cfg.val_fraction, cfg.corpus_max_chars)
    tokenizer = Tokenizer.from_str(ckpt.tokenizer_json)
    model_cfg = ckpt.model_config
    ids = {split: tokenize(tokenizer, texts, model_cfg.eos_token_id)
           for split, texts in (("train", corpus.train), ("val", corpus.val))}
    rng, val_rng = np.random.default_rng(cfg.seed + 1), np.random.default_rng(12345)
    val_batches = [make_batch(ids["val"], cfg, model_cfg, val_rng, think=False)
                   for _ in range(cfg.eval_batches)]
    model, report = run_probe_phase(
        ckpt.build_model(), cfg, lambda: make_batch(ids["train"], cfg, model_cfg, rng, False),
        val_batches, torch.device("cpu"))
    controller = dataclasses.replace(ckpt.controller_config, deep_trigger="probe",
                                     tau_probe=report["tau_probe"])
    training = dict(ckpt.training, phases={**ckpt.training.get("phases", {}), "probe": report})
    save_checkpoint(output, model, controller, ckpt.tokenizer_json, training, None)
    return report
