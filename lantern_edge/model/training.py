"""The trainer's main loop: corpus -> byte-level BPE tokenizer -> LANTERN checkpoint (torch).

One module per job: train_config.py (TrainConfig, presets, resume), train_data.py (tokenizer,
batches), train_objectives.py (the losses and their validation), train_schedule.py (optimizer,
learning rate), recipe.py and probe_training.py (the recipe's objectives and the phases after
the loop). Their public names are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import recipe
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ControllerConfig
from .corpus import load_corpus
from .modeling import LanternModel
from .thresholds import BAND_QUANTILES, calibrate_thresholds
from .tokenizer import special_token_ids
from .train_config import (MODEL_FIELDS, PRESETS, RECIPE, TrainConfig, check_resumable,
                           init_model_config, resume_config)
from .train_data import IGNORE, insert_think, make_batch, run_tokenizer, tokenize
from .train_objectives import (StepLosses, compute_losses, evaluate, halting_bce, halting_targets,
                               sample_depth, sample_positions)
from .train_schedule import adamw, learning_rate, schedule_progress

__all__ = ["IGNORE", "MC_OFF", "MODEL_FIELDS", "PRESETS", "RECIPE", "StepLosses", "TrainConfig",
           "compute_losses", "evaluate", "halting_bce", "halting_targets", "insert_think",
           "learning_rate", "make_batch", "resolve_device", "resume_config", "sample_depth",
           "sample_positions", "schedule_progress", "tokenize", "train"]

logger = logging.getLogger(__name__)
MC_OFF = 1e9                             # tau_mid = tau_high beyond any U: no MC band


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True) -> dict:
    """Train (or resume) and save the checkpoint at cfg.output; returns its training metadata.

    Checkpoints are written at every eval_interval, at the end, and on KeyboardInterrupt (then
    re-raised), each resumable with ``resume``. The caller's torch RNG and thread count are
    left as they were.
    """
    previous_threads = torch.get_num_threads()
    device = resolve_device(cfg.device)
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        devices = [torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return _train(cfg, device, resume, progress)
    finally:
        torch.set_num_threads(previous_threads)


def objectives_text(cfg: TrainConfig) -> dict[str, str]:
    """What the run optimised, in words (the model card prints it); only the parts it used."""
    text = {"depth": ("a loss at every depth's exit 1..steps_reasoning, weights rising with "
                      "depth" if cfg.deep_supervision else "uniform 1..steps_reasoning")
            + " per batch" + (f"; per token on {cfg.mixed_depth_fraction:.0%} of batches"
                              if cfg.mixed_depth_fraction > 0 else "")}
    if cfg.think_rate > 0:
        text["think"] = (f"inserted at rate {cfg.think_rate} ({cfg.think_placement}); the label "
                         "before a THINK is ignored, the THINK position predicts the next real "
                         "token")
    if cfg.use_halting:
        text["halting"] = ("BCE of p_halt after iteration d-1 against argmax(depth d-1) == "
                           "argmax(depth d) (no-grad eval-mode passes), on uniform-depth "
                           "batches with d >= 2")
    if cfg.init_from:
        text["init"] = f"started from the weights and tokenizer of {cfg.init_from}"
    return text


def load_initial(path: str):
    """The checkpoint (ours or upstream) or artifacts directory a run starts from."""
    try:
        from ..export.reimport import load_reference
    except ImportError as e:       # artifacts are read back with onnx (the export extra)
        raise ValueError(f"--init-from {path}: reading it needs the export extra "
                         f"(pip install 'lantern-edge[export]'): {e}") from e
    return load_reference(path)


def load_initial_weights(model: LanternModel, state_dict: dict, path: str) -> None:
    """Load every weight the run's model shares with the initial one. Modules the run adds
    (input injection, identity-initialised) keep their initialisation; halting heads the run
    drops are left behind; anything else that does not fit is an error."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    new = [k for k in missing if not k.startswith("injection.")]
    dropped = [k for k in unexpected if ".halting." not in k and not k.startswith("probe.")
               and not k.startswith("depth_probe.")]
    if new or dropped:
        raise ValueError(f"--init-from {path}: its weights do not fit the run's model (missing "
                         f"{new[:4]}, unexpected {dropped[:4]})")
    logger.info("initialised from %s (kept as initialised: %s; left behind: %s)", path,
                missing or "none", unexpected or "none")


def _train(cfg: TrainConfig, device: torch.device, resume: str | Path | None,
           progress: bool) -> dict:
    from tokenizers import Tokenizer
    from tqdm import tqdm

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    state = load_checkpoint(resume) if resume else None
    if state is not None:
        check_resumable(cfg, resume, state)

    # 1. data and tokenizer (reused from the checkpoint when resuming)
    corpus = load_corpus(list(cfg.corpus), cfg.val_fraction, cfg.corpus_max_chars,
                         cfg.offline_corpus)
    init = None
    if state is None and cfg.init_from:
        init = load_initial(cfg.init_from)
    if state is not None:
        tokenizer, model_cfg = Tokenizer.from_str(state.tokenizer_json), state.model_config
    elif init is not None:
        tokenizer, model_cfg = Tokenizer.from_str(init.tokenizer_json), init_model_config(cfg, init)
    else:
        tokenizer = run_tokenizer(cfg, corpus.train)
        model_cfg = cfg.model_config(special_token_ids(tokenizer))
    train_ids = tokenize(tokenizer, corpus.train, model_cfg.eos_token_id)
    val_ids = tokenize(tokenizer, corpus.val, model_cfg.eos_token_id)
    for split, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) < cfg.seq_len:
            raise ValueError(f"the {split} split has {len(ids)} tokens, fewer than seq_len="
                             f"{cfg.seq_len}; lower seq_len or give a larger corpus")
    val_rng = np.random.default_rng(12345)      # fixed validation windows, comparable over runs
    val_batches = [make_batch(val_ids, cfg, model_cfg, val_rng, think=False)
                   for _ in range(cfg.eval_batches)]

    # 2. model and optimizer (and the trainer state of a resumed run)
    model = LanternModel(model_cfg).to(device)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    step, tokens_seen, loop_seconds, prior_seconds, history = 0, 0, 0.0, 0.0, []
    if state is not None:
        model.load_state_dict(state.state_dict)
        saved = state.resume_state
        optimizer.load_state_dict(saved["optimizer"])
        step, loop_seconds = int(saved["step"]), float(saved["loop_seconds"])
        rng.bit_generator.state = saved["rng"]["numpy"]
        torch.set_rng_state(saved["rng"]["torch"])
        if device.type == "cuda" and saved["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(saved["rng"]["cuda"])
        tokens_seen = int(state.training.get("tokens_seen", 0))
        prior_seconds = float(state.training.get("train_seconds", 0.0))
        history = list(state.training.get("eval_history", []))
        logger.info("resuming %s at step %d", resume, step)
    elif init is not None:
        load_initial_weights(model, init.state_dict, cfg.init_from)
    phases: dict[str, Any] = {}            # reports of the phases after the main loop
    controller_fields: dict[str, Any] = {}  # set by the probe phase
    think_id = model_cfg.think_token_id
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    logger.info("%d parameters on %s (%s); train %d tokens (%d files), val %d tokens (%d files)",
                model.num_parameters(), device, cfg.dtype, len(train_ids),
                corpus.description["files_train"], len(val_ids), corpus.description["files_val"])

    def record() -> None:
        result = evaluate(model, val_batches, device)
        history.append({"step": step, "tokens_seen": tokens_seen, **result})
        logger.info("step %d  val loss per depth  %s", step, "  ".join(
            f"{d}: {v:.3f}" for d, v in result["loss_per_depth"].items()))

    def save(final: bool) -> dict:
        meta = {
            "steps": step, "tokens_seen": tokens_seen, "loop_seconds": round(loop_seconds, 2),
            "train_seconds": round(prior_seconds + time.perf_counter() - started, 2),
            "data": corpus.description, "train_tokens": int(len(train_ids)),
            "val_tokens": int(len(val_ids)), "parameters": model.num_parameters(),
            "tokenizer": {"kind": "byte-level BPE", "vocab_size": tokenizer.get_vocab_size()},
            "eval_history": history,
            "eval_loss_per_depth": history[-1]["loss_per_depth"] if history else {},
            "halting_eval": history[-1]["halting"] if history else {},
            "train_config": {**dataclasses.asdict(cfg), "corpus": list(cfg.corpus)},
            "device": str(device), "torch_version": str(torch.__version__), "final": final,
            "phases": phases,
            "objectives": objectives_text(cfg),
        }
        rng_state = {"seed": cfg.seed, "numpy": rng.bit_generator.state,
                     "torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}
        resume_state = {"optimizer": optimizer.state_dict(), "step": step,
                        "loop_seconds": loop_seconds, "rng": rng_state,
                        "scheduler": {"kind": "linear warm-up + cosine", "step": step,
                                      "progress": schedule_progress(cfg, step, loop_seconds),
                                      "lr": optimizer.param_groups[0]["lr"]}}
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        # THINK injection is on by default for a model trained with THINK tokens
        controller = calibrate_thresholds(model, val_batches, device, ControllerConfig(
            inject_think=cfg.think_rate > 0 and model_cfg.think_token_id is not None,
            **controller_fields))
        if controller.deep_trigger == "probe" and not cfg.mc_refinement:
            # the high band (MC averaging) closed: U never reaches tau_mid, so tokens the
            # probe keeps cheap are at most "moderate" (greedy: the cheap pass's top-1)
            controller = dataclasses.replace(controller, tau_mid=MC_OFF, tau_high=MC_OFF)
        meta["controller_calibration"] = {"band_quantiles": list(BAND_QUANTILES),
                                          "tau": [controller.tau_low, controller.tau_mid,
                                                  controller.tau_high]}
        save_checkpoint(cfg.output, model, controller, tokenizer.to_str(), meta, resume_state)
        return meta

    # 3. the loop: batch, depth, losses, step; validation + checkpoint every eval_interval
    if not history:
        record()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not progress, unit="step",
               dynamic_ncols=True)
    loop_start, window_tokens, window_start = time.perf_counter() - loop_seconds, 0, time.perf_counter()
    try:
        while step < cfg.max_steps and not (cfg.max_minutes and loop_seconds >= 60 * cfg.max_minutes):
            lr = learning_rate(cfg, step, schedule_progress(cfg, step, loop_seconds))
            for group in optimizer.param_groups:
                group["lr"] = lr
            hard = cfg.think_placement == "hard"
            inputs, targets = make_batch(train_ids, cfg, model_cfg, rng, think=not hard)
            depth = sample_depth(cfg, inputs, model_cfg, rng)
            positions = sample_positions(cfg, model_cfg, rng)
            inputs, targets = inputs.to(device), targets.to(device)
            depth = depth.to(device) if torch.is_tensor(depth) else depth
            positions = positions.to(device) if positions is not None else None
            if hard and torch.is_tensor(depth) and cfg.think_rate > 0 and think_id is not None:
                # THINK where the runtime puts it: after the tokens the cheap pass predicts
                # worst, on the per-token-depth batches, run at steps_reasoning
                inputs, targets = recipe.insert_think_at_hard(
                    inputs, targets, recipe.cheap_losses(model, inputs, targets, autocast),
                    think_id, cfg.think_rate, model_cfg.max_global_tokens - 1)
                depth = torch.where(inputs == think_id, model_cfg.steps_reasoning, depth)
            if cfg.deep_supervision and not torch.is_tensor(depth):
                lm, _ = recipe.deep_supervision_loss(model, inputs, targets, autocast, positions)
                zero = torch.zeros((), device=device)
                losses = StepLosses(lm, zero, None)
            else:
                losses = compute_losses(model, inputs, targets, depth, autocast, positions)
            optimizer.zero_grad(set_to_none=True)
            (losses.lm + cfg.halting_weight * losses.halting).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            tokens_seen += inputs.numel()
            window_tokens += inputs.numel()
            loop_seconds = time.perf_counter() - loop_start
            if step % 10 == 0 or step == cfg.max_steps:
                rate = window_tokens / max(1e-9, time.perf_counter() - window_start)
                bar.set_postfix(loss=f"{losses.lm.item():.3f}", halt=f"{losses.halting.item():.3f}",
                                lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
                window_tokens, window_start = 0, time.perf_counter()
            bar.update(1)
            if step % cfg.eval_interval == 0 and step < cfg.max_steps:
                record()
                save(final=False)
                loop_start = time.perf_counter() - loop_seconds    # evaluation is not training time
    except KeyboardInterrupt:
        bar.close()
        save(final=False)
        logger.warning("interrupted at step %d; saved %s (continue with --resume)", step, cfg.output)
        raise
    bar.close()
    if not history or history[-1]["step"] != step:
        record()
    stopped = step < cfg.max_steps and not (cfg.max_minutes and loop_seconds >= 60 * cfg.max_minutes)
    if not stopped:
        if cfg.main_output and (cfg.corrector_steps or cfg.probe_hidden):
            save(final=False)              # the main loop's model, for ablating the phases
            shutil.copyfile(cfg.output, cfg.main_output)
        model, reports = recipe.run_phases(
            model, cfg, lambda: make_batch(train_ids, cfg, model_cfg, rng, think=False),
            val_batches, device, autocast)
        phases.update(reports)
        if phases.get("probe"):
            controller_fields.update(deep_trigger="probe", tau_probe=phases["probe"]["tau_probe"])
        if phases.get("corrector"):      # the probe changes no loss: only the corrector does
            record()
            history[-1]["after"] = "corrector"
    meta = save(final=True)
    logger.info("saved %s after %d steps (%.0f s)", cfg.output, step, meta["train_seconds"])
    return meta
