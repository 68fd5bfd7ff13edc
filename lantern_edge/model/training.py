"""The trainer: corpus -> byte-level BPE tokenizer -> LANTERN checkpoint (torch).

Objectives, chosen so that every branch of the runtime's controller has something real to do:
- language modelling at a random recursion depth per batch (uniform in 1..steps_reasoning),
  and on a fraction of batches a random depth PER TOKEN (the carried-KV policy the runtime
  uses when tokens run different depths), so deeper recursion improves predictions;
- THINK insertion: <think> tokens at random positions; the label that would predict THINK is
  ignored and the THINK position predicts the next real token (the runtime injects THINK when
  it is very uncertain and reads the next token from it);
- halting: on a uniform-depth batch at depth d >= 2, each block's halting head after iteration
  d-1 learns whether one more iteration leaves the argmax unchanged (target from no-grad,
  eval-mode passes at depths d-1 and d). The head reads a detached state, so it never
  disturbs the language model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import ControllerConfig, ModelConfig
from . import recipe
from .corpus import OFFLINE_CORPORA, load_corpus
from .modeling import LanternModel
from .thresholds import BAND_QUANTILES, calibrate_thresholds
from .tokenizer import special_token_ids, train_bpe_tokenizer

logger = logging.getLogger(__name__)
IGNORE = -100                            # cross-entropy ignore_index
MC_OFF = 1e9                             # tau_mid = tau_high beyond any U: no MC band
MODEL_FIELDS = ("hidden_size", "num_heads", "intermediate_size", "num_blocks", "window_size",
                "max_position", "max_global_tokens", "steps_base", "steps_reasoning", "dropout",
                "use_halting", "recursion_order", "input_injection")


@dataclass(frozen=True)
class TrainConfig:
    # data
    output: str = "checkpoint.pt"
    corpus: tuple[str, ...] = ()          # empty: the offline corpus below
    offline_corpus: str = "stdlib"        # "stdlib", or "closure": stdlib + export/dev packages
    corpus_max_chars: int | None = None   # cap per split (a deterministic sample), for quick runs
    val_fraction: float = 0.05            # share of FILES held out for validation
    vocab_size: int = 4096                # byte-level BPE, special tokens included
    tokenizer: str | None = None          # a tokenizer.json to reuse instead of training one
    # model shape (ModelConfig fields)
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 768
    num_blocks: int = 2
    window_size: int = 128
    max_position: int = 1024
    max_global_tokens: int = 16           # BOS + at most max_global_tokens - 1 THINKs per sample
    steps_base: int = 2
    steps_reasoning: int = 4              # depths 1..steps_reasoning are trained and evaluated
    dropout: float = 0.1
    use_halting: bool = True
    recursion_order: str = "sequence"     # "sequence" or "cycle" (docs/DEPTH.md)
    input_injection: bool = False         # h = W [h ; e] before every cycle / later iteration
    # optimisation
    seq_len: int = 256                    # tokens per sample, <bos> included
    batch_size: int = 16
    lr: float = 2e-3                      # peak AdamW learning rate
    min_lr_ratio: float = 0.1             # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 100               # linear warm-up from lr / warmup_steps
    max_steps: int = 2000
    max_minutes: float | None = None      # training-loop wall time budget (summed over resumes)
    weight_decay: float = 0.1             # on weight matrices and embeddings, not norms/biases
    grad_clip: float = 1.0                # max global gradient norm
    dtype: str = "fp32"                   # "fp32" or "bf16" (autocast; losses in fp32)
    device: str = "auto"                  # "auto" (CUDA when present), "cpu", "cuda"
    # LANTERN objectives
    think_rate: float = 0.03              # chance per position of a <think> inserted before it
    mixed_depth_fraction: float = 0.25    # batches with a random depth per token
    late_position_fraction: float = 0.5   # batches placed at a random offset up to max_position
    halting_weight: float = 1.0           # weight of the halting BCE next to the LM loss
    # the recipe (docs/TRAINING_RECIPE.md; lantern_edge/model/recipe.py, probe_training.py)
    deep_supervision: bool = False        # uniform batches: a loss at every depth's exit
    think_placement: str = "random"       # "random", or "hard": after high cheap-loss tokens
    corrector_steps: int = 0              # error-corrector phase steps after the main loop
    corrector_minutes: float | None = None  # its wall-time budget
    corrector_weight: float = 4.0         # deep loss weight on tokens the cheap pass gets wrong
    corrector_lr_ratio: float = 0.3       # its peak learning rate: lr * this
    probe_hidden: int = 0                 # > 0: the probe phase trains a depth probe this wide
    probe_steps: int = 300
    probe_minutes: float | None = None
    probe_lr: float = 3e-3
    probe_label: str = "either"           # "gain" (loss drops > gamma), "fix" (top-1), "either"
    probe_gamma: float = 0.1              # nats
    deep_budget: float = 0.1              # share of tokens tau_probe sends deep
    mc_refinement: bool = True            # False: with the probe trigger, no MC band
    main_output: str | None = None        # also keep the checkpoint before the phases here
    # bookkeeping
    eval_interval: int = 200              # steps between validation runs (and checkpoints)
    eval_batches: int = 8                 # fixed validation batches per depth
    seed: int = 0
    threads: int | None = None            # torch CPU threads during training (None: torch's)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        if isinstance(self.corpus, (str, Path)):          # one directory or file
            object.__setattr__(self, "corpus", (str(self.corpus),))
        object.__setattr__(self, "corpus", tuple(str(c) for c in self.corpus))
        need(self.offline_corpus in OFFLINE_CORPORA and not (self.corpus and self.offline_corpus
             != "stdlib"), "offline_corpus", f"one of {OFFLINE_CORPORA}, without corpus paths")
        need(self.dtype in ("fp32", "bf16"), "dtype", "'fp32' or 'bf16'")
        need(self.device in ("auto", "cpu", "cuda"), "device", "'auto', 'cpu' or 'cuda'")
        need(260 < self.vocab_size <= 65536, "vocab_size", "in (260, 65536] for byte-level BPE")
        need(self.corpus_max_chars is None or self.corpus_max_chars >= 1, "corpus_max_chars",
             "None or >= 1")
        need(0 < self.val_fraction < 1, "val_fraction", "in (0, 1)")
        for name in ("batch_size", "max_steps", "eval_interval", "eval_batches"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, name,
                 "an int >= 1")
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        need(2 <= self.seq_len <= self.max_position, "seq_len",
             f"in [2, max_position={self.max_position}]")
        need(self.lr > 0, "lr", "> 0")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(self.grad_clip > 0, "grad_clip", "> 0")
        need(self.max_minutes is None or self.max_minutes > 0, "max_minutes", "None or > 0")
        need(0 <= self.think_rate < 0.5, "think_rate", "in [0, 0.5)")
        need(0 <= self.mixed_depth_fraction <= 1, "mixed_depth_fraction", "in [0, 1]")
        need(0 <= self.late_position_fraction <= 1, "late_position_fraction", "in [0, 1]")
        need(self.halting_weight >= 0, "halting_weight", ">= 0")
        need(self.threads is None or self.threads >= 1, "threads", "None or >= 1")
        need(self.think_placement in ("random", "hard"), "think_placement", "'random' or 'hard'")
        need(self.probe_label in ("gain", "fix", "either"), "probe_label",
             "'gain', 'fix' or 'either'")
        for name in ("corrector_steps", "probe_steps", "probe_hidden"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name,
                 "an int >= 0")
        for name in ("corrector_minutes", "probe_minutes"):
            need(getattr(self, name) is None or getattr(self, name) > 0, name, "None or > 0")
        need(self.corrector_weight >= 1, "corrector_weight", ">= 1")
        need(0 < self.corrector_lr_ratio <= 1, "corrector_lr_ratio", "in (0, 1]")
        need(self.probe_lr > 0, "probe_lr", "> 0")
        need(self.probe_gamma >= 0, "probe_gamma", ">= 0")
        need(0 < self.deep_budget < 1, "deep_budget", "in (0, 1)")
        # the halting target needs a forward at one sampled depth; deep supervision runs the
        # exits instead (the depth probe replaces the halting heads)
        need(not (self.deep_supervision and self.use_halting), "use_halting",
             "False with deep_supervision (the depth probe replaces the halting heads)")
        self.model_config({})                 # shape fields: ModelConfig names the bad one

    def model_config(self, special: dict[str, int | None]) -> ModelConfig:
        shape = {name: getattr(self, name) for name in MODEL_FIELDS}
        return ModelConfig(vocab_size=self.vocab_size, **shape, **special)


PRESETS: dict[str, dict[str, Any]] = {
    # 132k parameters; ~30 s on one CPU core: what the tests train (tests/conftest.py)
    "tiny": dict(vocab_size=512, hidden_size=64, num_heads=4, intermediate_size=128,
                 num_blocks=2, window_size=16, max_position=256, max_global_tokens=8,
                 seq_len=64, batch_size=16, lr=3e-3, warmup_steps=20, max_steps=400,
                 eval_interval=200, eval_batches=4, corpus_max_chars=300_000, think_rate=0.05,
                 late_position_fraction=0.0, threads=1),
    # the shipped default model's recipe (3.54M parameters; a GPU run: ~10 minutes on an H200,
    # days on 2 CPU cores). The shipped weights followed a wall-clock cosine over the same
    # 3370 steps (lantern_edge/default_model/MODEL_CARD.md); max_steps reproduces it by steps.
    "small": dict(vocab_size=4096, hidden_size=256, num_heads=4, intermediate_size=768,
                  num_blocks=2, window_size=128, max_position=3072, max_global_tokens=16,
                  seq_len=256, batch_size=128, lr=2e-3, warmup_steps=200, max_steps=3370,
                  eval_interval=250, eval_batches=16),
}
# The recipe (docs/TRAINING_RECIPE.md): cycle order with input injection, deep supervision, no
# THINK (measured: it does not pay), no halting heads (the probe beats them), the
# error-corrector phase and the probe phase calibrated to deep_budget.
RECIPE = dict(recursion_order="cycle", input_injection=True, deep_supervision=True,
              use_halting=False, think_rate=0.0, mixed_depth_fraction=0.25,
              corrector_weight=4.0, corrector_lr_ratio=0.3, probe_label="either",
              probe_gamma=0.1, deep_budget=0.1, mc_refinement=False)
PRESETS["recipe-tiny"] = dict(PRESETS["tiny"], **RECIPE, corrector_steps=100, probe_hidden=32,
                              probe_steps=150)
# the default model's GPU run (scripts/train_default_gpu.sh): ~6.2M parameters, fp32 + int8
# artifacts about 32 MB; the wall-time budgets, not the step counts, end each phase
PRESETS["recipe"] = dict(PRESETS["small"], **RECIPE, hidden_size=384, num_heads=6,
                         intermediate_size=1024, max_position=2048, batch_size=128,
                         max_steps=20000, warmup_steps=200, max_minutes=4.0, dtype="bf16",
                         eval_interval=500, eval_batches=16, corrector_steps=2000,
                         corrector_minutes=1.0, probe_hidden=64, probe_steps=1500,
                         probe_minutes=0.5, threads=4)
# the equal-training-compute control: the same recipe at one fixed depth, for the wall time of
# the recipe's three phases (4.0 + 1.0 + 0.5 minutes); nothing to correct or route
PRESETS["recipe-control"] = dict(PRESETS["recipe"], steps_base=3, steps_reasoning=3,
                                 mixed_depth_fraction=0.0, corrector_steps=0, probe_hidden=0,
                                 max_minutes=5.5)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


# --- data ---------------------------------------------------------------------------------

def tokenize(tokenizer, texts: list[str], eos: int) -> np.ndarray:
    """One id stream: each file's ids followed by <eos>."""
    out: list[int] = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        out.extend(encoding.ids)
        out.append(eos)
    return np.asarray(out, dtype=np.int64)


def insert_think(row: np.ndarray, think: int, rate: float, rng: np.random.Generator,
                 max_count: int | None = None) -> np.ndarray:
    """Insert THINK before randomly chosen tokens (never before position 0), keeping the length.

    max_count caps the THINKs per row (the runtime's global KV buffer is finite).
    """
    length = len(row)
    chosen = np.flatnonzero(rng.random(length) < rate)
    chosen = chosen[chosen > 0]
    if max_count is not None and len(chosen) > max_count:
        chosen = np.sort(rng.choice(chosen, max_count, replace=False))
    if len(chosen) == 0:
        return row
    return np.insert(row, chosen, think)[:length]


def make_batch(stream: np.ndarray, cfg: TrainConfig, model_cfg: ModelConfig,
               rng: np.random.Generator, think: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) LongTensors (B, seq_len): <bos> + a random window of the stream, with
    THINK insertion when ``think``; targets that would predict THINK are IGNORE."""
    starts = rng.integers(0, len(stream) - cfg.seq_len + 1, cfg.batch_size)
    think_id = model_cfg.think_token_id
    rows = []
    for start in starts:
        row = np.concatenate([[model_cfg.bos_token_id], stream[start:start + cfg.seq_len]])
        if think and think_id is not None and cfg.think_rate > 0:
            row = insert_think(row, think_id, cfg.think_rate, rng, model_cfg.max_global_tokens - 1)
        rows.append(row)
    batch = torch.from_numpy(np.stack(rows))                                # (B, seq_len + 1)
    inputs, targets = batch[:, :-1].clone(), batch[:, 1:].clone()
    if think_id is not None:
        targets[targets == think_id] = IGNORE
    return inputs, targets


# --- objectives ---------------------------------------------------------------------------

def sample_depth(cfg: TrainConfig, inputs: torch.Tensor, model_cfg: ModelConfig,
                 rng: np.random.Generator) -> int | torch.Tensor:
    """An int depth for the batch (uniform in 1..steps_reasoning), or on mixed batches a
    LongTensor (num_blocks, B, T) of per-token depths where THINK tokens run steps_reasoning
    iterations, as they do at runtime."""
    top = model_cfg.steps_reasoning
    if rng.random() >= cfg.mixed_depth_fraction:
        return int(rng.integers(1, top + 1))
    depth = torch.from_numpy(rng.integers(1, top + 1, size=(model_cfg.num_blocks, *inputs.shape)))
    if model_cfg.think_token_id is not None:
        depth = torch.where(inputs == model_cfg.think_token_id, top, depth)
    return depth


def sample_positions(cfg: TrainConfig, model_cfg: ModelConfig,
                     rng: np.random.Generator) -> torch.Tensor | None:
    """None (positions 0..seq_len-1), or on late_position_fraction of batches
    [0, off+1, ..., off+seq_len-1] with off uniform in [0, max_position - seq_len]: <bos> stays
    at 0 and the text sits far past it, as in a long generation, so that the learned position
    rows past seq_len are trained too (windows never see further back than window_size)."""
    room = model_cfg.max_position - cfg.seq_len
    # no draw when off: runs without late positions keep the random stream they always had
    if room <= 0 or cfg.late_position_fraction == 0 or rng.random() >= cfg.late_position_fraction:
        return None
    offset = int(rng.integers(0, room + 1))
    positions = torch.arange(offset, offset + cfg.seq_len)
    positions[0] = 0
    return positions


def halting_targets(logits_shallow: torch.Tensor, logits_deep: torch.Tensor) -> torch.Tensor:
    """1 where one more iteration leaves the argmax unchanged ("halt now"), else 0; (B, T)."""
    return (logits_shallow.argmax(-1) == logits_deep.argmax(-1)).float()


def halting_bce(halting: torch.Tensor, depth: int, target: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
    """Mean BCE of every block's p_halt after iteration depth-1 (halting[:, depth-2]) against
    target (B, T), over the valid positions. halting: (num_blocks, depth, B, T)."""
    probs = halting[:, depth - 2].float().clamp(1e-6, 1 - 1e-6)             # (num_blocks, B, T)
    bce = F.binary_cross_entropy(probs, target.expand_as(probs), reduction="none")
    return bce[:, valid].mean()


@dataclass
class StepLosses:
    lm: torch.Tensor                       # cross-entropy over non-ignored labels
    halting: torch.Tensor                  # 0 when the batch trains no halting
    halting_target: torch.Tensor | None    # (B, T), for inspection


def compute_losses(model: LanternModel, inputs: torch.Tensor, targets: torch.Tensor,
                   depth: int | torch.Tensor, autocast=None,
                   positions: torch.Tensor | None = None) -> StepLosses:
    """The training losses of one batch at ``depth`` (forward under ``autocast``, losses fp32)."""
    autocast = autocast or contextlib.nullcontext()
    with autocast:
        out = model(inputs, depth, positions=positions)
    lm = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
    zero = torch.zeros((), device=inputs.device)
    if out.halting is None or not isinstance(depth, int) or depth < 2:
        return StepLosses(lm, zero, None)
    # The target comes from no-grad passes in eval mode (dropout off, as at inference): with
    # dropout on, noise alone flips the argmax between two passes and the head learns that.
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast:
        shallow = model(inputs, depth - 1, positions=positions).logits
        deep = model(inputs, depth, positions=positions).logits
    model.train(was_training)
    target = halting_targets(shallow.float(), deep.float())
    return StepLosses(lm, halting_bce(out.halting, depth, target, targets != IGNORE), target)


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over warmup_steps, then cosine from lr to lr * min_lr_ratio over
    ``progress`` in [0, 1] (see schedule_progress)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def schedule_progress(cfg: TrainConfig, step: int, loop_seconds: float) -> float:
    """How far the cosine has gone: by steps, or by the time budget if that runs out first."""
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.max_minutes:
        progress = max(progress, loop_seconds / (60 * cfg.max_minutes))
    return min(1.0, max(0.0, progress))


@torch.no_grad()
def evaluate(model: LanternModel, val_batches, device: torch.device) -> dict[str, Any]:
    """Validation loss at every uniform depth 1..steps_reasoning (eval mode, fixed batches),
    and how well the halting head after iteration d-1 predicts "depth d keeps the argmax"."""
    was_training = model.training
    model.eval()
    losses, halting = {}, {}
    previous: list[torch.Tensor] = []
    for depth in range(1, model.config.steps_reasoning + 1):
        total, argmaxes, agree, correct, bce, count = 0.0, [], 0.0, 0.0, 0.0, 0
        for b, (inputs, targets) in enumerate(val_batches):
            inputs, targets = inputs.to(device), targets.to(device)
            out = model(inputs, depth)
            total += F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(),
                                     ignore_index=IGNORE).item()
            argmaxes.append(out.logits.argmax(-1))
            if previous and out.halting is not None:
                target = (previous[b] == argmaxes[-1]).float()              # (B, T)
                probs = out.halting[:, depth - 2].float()                   # (num_blocks, B, T)
                valid = targets != IGNORE
                agree += target[valid].sum().item()
                correct += ((probs >= 0.5).float() == target).float()[:, valid].mean().item()
                bce += halting_bce(out.halting, depth, target, valid).item()
                count += int(valid.sum())
        losses[str(depth)] = round(total / len(val_batches), 4)
        if count:
            n = len(val_batches)
            halting[str(depth)] = {"target_rate": round(agree / count, 4),
                                   "accuracy": round(correct / n, 4), "bce": round(bce / n, 4)}
        previous = argmaxes
    model.train(was_training)
    return {"loss_per_depth": losses, "halting": halting}


# --- the phases after the main loop -------------------------------------------------------

def _phases(model: LanternModel, cfg: TrainConfig, phases: dict, train_ids: np.ndarray,
            model_cfg: ModelConfig, rng: np.random.Generator, device: torch.device, autocast,
            val_batches) -> LanternModel:
    """The error-corrector phase, then the probe phase (each when configured); their reports
    go into phases. Returns the model (with its probe after the probe phase)."""
    def next_batch():
        return make_batch(train_ids, cfg, model_cfg, rng, think=False)
    if cfg.corrector_steps:
        phases["corrector"] = recipe.run_corrector(model, cfg, next_batch, device, autocast)
        logger.info("corrector: %s", phases["corrector"])
    if cfg.probe_hidden:
        from .probe_training import run_probe_phase
        model, phases["probe"] = run_probe_phase(model, cfg, next_batch, val_batches, device,
                                                 autocast)
    return model


# --- the loop -----------------------------------------------------------------------------

def _trainer_state_of(ckpt: Checkpoint, path: str | Path) -> dict[str, Any]:
    stored = ckpt.training.get("train_config")
    if ckpt.kind != "lantern-edge" or not isinstance(stored, dict) or not ckpt.resume_state:
        raise ValueError(f"--resume {path}: this checkpoint holds no trainer state (it was not "
                         f"written by `lantern-edge train`); start a new run instead")
    return stored


def resume_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with, with ``overrides`` applied."""
    stored = _trainer_state_of(load_checkpoint(path), path)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in stored.items() if k in known}
    values["corpus"] = tuple(values.get("corpus") or ())
    return TrainConfig(**{**values, **overrides})


def _check_resumable(cfg: TrainConfig, path: str | Path, ckpt: Checkpoint) -> None:
    _trainer_state_of(ckpt, path)
    if ckpt.training.get("phases"):
        raise ValueError(f"--resume {path}: this run is complete (its corrector/probe phases "
                         f"ran); start a new run instead")
    model_cfg = ckpt.model_config
    for name in ("vocab_size", *MODEL_FIELDS):
        if getattr(cfg, name) != getattr(model_cfg, name):
            raise ValueError(f"{name}={getattr(cfg, name)!r} differs from the checkpoint's "
                             f"{getattr(model_cfg, name)!r} ({path}); the model's shape cannot "
                             f"change on resume")


def _tokenizer(cfg: TrainConfig, texts: list[str]):
    """The run's tokenizer: cfg.tokenizer's file (so that models compare token for token),
    or a byte-level BPE trained on the training split."""
    if cfg.tokenizer is None:
        return train_bpe_tokenizer(texts, cfg.vocab_size)
    from tokenizers import Tokenizer
    try:
        tokenizer = Tokenizer.from_file(cfg.tokenizer)
    except Exception as e:       # tokenizers raises its own types for missing or bad files
        raise ValueError(f"tokenizer {cfg.tokenizer}: not a readable tokenizer.json ({e})") from e
    if tokenizer.get_vocab_size() != cfg.vocab_size:
        raise ValueError(f"tokenizer {cfg.tokenizer} has {tokenizer.get_vocab_size()} entries "
                         f"but vocab_size={cfg.vocab_size}; pass --vocab-size "
                         f"{tokenizer.get_vocab_size()}")
    return tokenizer


def _optimizer(model: LanternModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings (dim >= 2), none on norms and biases."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95))


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


def _train(cfg: TrainConfig, device: torch.device, resume: str | Path | None,
           progress: bool) -> dict:
    from tokenizers import Tokenizer
    from tqdm import tqdm

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    state = load_checkpoint(resume) if resume else None
    if state is not None:
        _check_resumable(cfg, resume, state)

    # 1. data and tokenizer (reused from the checkpoint when resuming)
    corpus = load_corpus(list(cfg.corpus), cfg.val_fraction, cfg.corpus_max_chars,
                         cfg.offline_corpus)
    if state is not None:
        tokenizer, model_cfg = Tokenizer.from_str(state.tokenizer_json), state.model_config
    else:
        tokenizer = _tokenizer(cfg, corpus.train)
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
    optimizer = _optimizer(model, cfg)
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
            "objectives": {
                "depth": "uniform 1..steps_reasoning per batch; per token on "
                         f"{cfg.mixed_depth_fraction:.0%} of batches (THINK at steps_reasoning)",
                "think": f"inserted at rate {cfg.think_rate}; the label before a THINK is "
                         "ignored, the THINK position predicts the next real token",
                "halting": "BCE of p_halt after iteration d-1 against argmax(depth d-1) == "
                           "argmax(depth d) (no-grad eval-mode passes), on uniform-depth "
                           "batches with d >= 2"},
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
        model = _phases(model, cfg, phases, train_ids, model_cfg, rng, device, autocast,
                        val_batches)
        if phases.get("probe"):
            controller_fields.update(deep_trigger="probe", tau_probe=phases["probe"]["tau_probe"])
        if phases.get("corrector"):      # the probe changes no loss: only the corrector does
            record()
            history[-1]["after"] = "corrector"
    meta = save(final=True)
    logger.info("saved %s after %d steps (%.0f s)", cfg.output, step, meta["train_seconds"])
    return meta
