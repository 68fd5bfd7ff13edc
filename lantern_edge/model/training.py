"""The trainer: corpus -> byte-level BPE tokenizer -> LANTERN checkpoint.

Objectives, chosen so that every branch of the runtime's controller has something real to do:
- language modelling at a random recursion depth per batch (uniform in 1..steps_reasoning),
  and on a fraction of batches a random depth PER TOKEN (the carried-KV policy the runtime
  uses when tokens run different depths), so deeper recursion improves predictions;
- THINK insertion: <think> tokens at random positions; the label that would predict THINK is
  ignored and the THINK position predicts the next real token (the runtime injects THINK when
  it is very uncertain and reads the next token from it);
- halting: on a uniform-depth batch at depth d >= 2, each block's halting head after iteration
  d-1 learns whether one more iteration would leave the argmax unchanged (target from a no-grad
  pass at depth d-1). The head reads a detached state, so it never disturbs the language model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ControllerConfig, ModelConfig
from .corpus import load_corpus
from .modeling import LanternModel
from .tokenizer import special_token_ids, train_bpe_tokenizer

logger = logging.getLogger(__name__)
IGNORE = -100


@dataclass(frozen=True)
class TrainConfig:
    output: str = "checkpoint.pt"
    corpus: tuple[str, ...] = ()          # empty: the Python standard library
    corpus_max_chars: int | None = None   # cap per split, for quick runs
    vocab_size: int = 4096
    # model shape (ModelConfig fields)
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 768
    num_blocks: int = 2
    window_size: int = 128
    max_position: int = 1024
    max_global_tokens: int = 16
    steps_base: int = 2
    steps_reasoning: int = 4
    dropout: float = 0.1
    use_halting: bool = True
    # optimisation
    seq_len: int = 256
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 2000
    max_minutes: float | None = None      # stop (and save) when this wall time is spent
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dtype: str = "fp32"                   # "fp32" or "bf16" (autocast)
    device: str = "auto"                  # "auto" (CUDA when present), "cpu", "cuda"
    # LANTERN objectives
    think_rate: float = 0.03
    mixed_depth_fraction: float = 0.25
    halting_weight: float = 1.0
    # bookkeeping
    eval_interval: int = 200
    eval_batches: int = 8
    seed: int = 0
    threads: int | None = None            # torch CPU threads (default: torch's)

    def __post_init__(self) -> None:
        def need(ok, name, allowed):
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        need(self.dtype in ("fp32", "bf16"), "dtype", "'fp32' or 'bf16'")
        need(self.device in ("auto", "cpu", "cuda"), "device", "'auto', 'cpu' or 'cuda'")
        need(2 <= self.seq_len < self.max_position, "seq_len", f"in [2, max_position={self.max_position})")
        for name in ("batch_size", "max_steps", "eval_interval", "eval_batches"):
            need(getattr(self, name) >= 1, name, ">= 1")
        need(self.lr > 0, "lr", "> 0")
        need(0 <= self.think_rate < 0.5, "think_rate", "in [0, 0.5)")
        need(0 <= self.mixed_depth_fraction <= 1, "mixed_depth_fraction", "in [0, 1]")
        need(self.max_minutes is None or self.max_minutes > 0, "max_minutes", "None or > 0")

    def model_config(self, special: dict[str, int | None]) -> ModelConfig:
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        shape = {k: v for k, v in dataclasses.asdict(self).items() if k in fields}
        return ModelConfig(**shape, **special)


PRESETS = {
    # <= 200k parameters, < 1 minute on 2 CPU cores: what the tests train
    "tiny": dict(vocab_size=512, hidden_size=64, num_heads=4, intermediate_size=128,
                 num_blocks=2, window_size=16, max_position=256, max_global_tokens=8,
                 seq_len=64, batch_size=16, lr=6e-3, warmup_steps=20, max_steps=500,
                 eval_interval=250, eval_batches=4, corpus_max_chars=400_000, threads=2),
    # the shipped default model
    "small": dict(vocab_size=4096, hidden_size=256, num_heads=4, intermediate_size=768,
                  num_blocks=2, window_size=128, max_position=1024, max_global_tokens=16,
                  seq_len=256, batch_size=16, lr=2e-3, warmup_steps=200, max_steps=20000),
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def tokenize(tokenizer, texts: list[str], eos: int) -> np.ndarray:
    """One id stream: each file's ids followed by <eos>."""
    out = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        out.extend(encoding.ids)
        out.append(eos)
    return np.asarray(out, dtype=np.int64)


def insert_think(row: np.ndarray, think: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Insert THINK before randomly chosen tokens (never at position 0), keeping the length."""
    length = len(row)
    chosen = np.flatnonzero(rng.random(length) < rate)
    chosen = chosen[chosen > 0]
    if len(chosen) == 0:
        return row
    return np.insert(row, chosen, think)[:length]


def make_batch(stream: np.ndarray, cfg: TrainConfig, model_cfg: ModelConfig,
               rng: np.random.Generator, think: bool, starts: np.ndarray | None = None):
    """(inputs, targets) LongTensors (B, seq_len): <bos> + a window of the stream, optional
    THINK insertion; targets that would predict THINK are IGNORE."""
    if starts is None:
        starts = rng.integers(0, len(stream) - cfg.seq_len - 1, cfg.batch_size)
    rows = []
    for s in starts:
        row = np.concatenate([[model_cfg.bos_token_id], stream[s:s + cfg.seq_len]])
        if think and model_cfg.think_token_id is not None and cfg.think_rate > 0:
            row = insert_think(row, model_cfg.think_token_id, cfg.think_rate, rng)
        rows.append(row)
    batch = torch.from_numpy(np.stack(rows))
    inputs, targets = batch[:, :-1].clone(), batch[:, 1:].clone()
    if model_cfg.think_token_id is not None:
        targets[targets == model_cfg.think_token_id] = IGNORE
    return inputs, targets


def halting_targets(logits_shallow: torch.Tensor, logits_deep: torch.Tensor) -> torch.Tensor:
    """1 where one more iteration leaves the argmax unchanged ("halt now"), else 0."""
    return (logits_shallow.argmax(-1) == logits_deep.argmax(-1)).float()


def sample_depth(cfg: TrainConfig, shape: tuple[int, int], rng: np.random.Generator,
                 num_blocks: int):
    """An int depth for the batch, or per-token depths (num_blocks, B, T) on mixed batches."""
    if rng.random() < cfg.mixed_depth_fraction:
        depth = rng.integers(1, cfg.steps_reasoning + 1, size=(num_blocks, *shape))
        return torch.from_numpy(depth)
    return int(rng.integers(1, cfg.steps_reasoning + 1))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


@torch.no_grad()
def evaluate(model: LanternModel, val_batches, device) -> dict[int, float]:
    """Mean validation cross-entropy at every uniform depth 1..steps_reasoning."""
    model.eval()
    losses = {}
    for depth in range(1, model.config.steps_reasoning + 1):
        total = 0.0
        for inputs, targets in val_batches:
            logits = model(inputs.to(device), depth).logits
            total += F.cross_entropy(logits.flatten(0, 1).float(), targets.to(device).flatten(),
                                     ignore_index=IGNORE).item()
        losses[depth] = total / len(val_batches)
    model.train()
    return losses


def train(cfg: TrainConfig, resume: str | Path | None = None, progress: bool = True) -> dict:
    """Train (or resume) and save the checkpoint at cfg.output; returns the training metadata."""
    from tokenizers import Tokenizer
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    corpus = load_corpus(list(cfg.corpus) or None, max_chars=cfg.corpus_max_chars)
    state = load_checkpoint(resume) if resume else None
    if state is not None:
        tokenizer = Tokenizer.from_str(state.tokenizer_json)
        model_cfg = state.model_config
    else:
        tokenizer = train_bpe_tokenizer(corpus.train, cfg.vocab_size)
        model_cfg = cfg.model_config(special_token_ids(tokenizer))
    train_ids = tokenize(tokenizer, corpus.train, model_cfg.eos_token_id)
    val_ids = tokenize(tokenizer, corpus.val, model_cfg.eos_token_id)
    val_rng = np.random.default_rng(12345)      # fixed validation windows, comparable over runs
    val_batches = [make_batch(val_ids, cfg, model_cfg, val_rng, think=False)
                   for _ in range(cfg.eval_batches)]

    model = LanternModel(model_cfg).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95))
    step, history, tokens_seen, prior_seconds = 0, [], 0, 0.0
    if state is not None:
        model.load_state_dict(state.state_dict)
        resume_state = state.resume_state or {}
        if "optimizer" in resume_state:
            optimizer.load_state_dict(resume_state["optimizer"])
        step = int(state.training.get("steps", 0))
        history = list(state.training.get("eval_history", []))
        tokens_seen = int(state.training.get("tokens_seen", 0))
        prior_seconds = float(state.training.get("train_seconds", 0.0))
        rng = np.random.default_rng([cfg.seed, step])
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    logger.info("model: %d parameters; train %d tokens, val %d tokens", model.num_parameters(),
                len(train_ids), len(val_ids))

    def save(final: bool):
        meta = {"steps": step, "tokens_seen": tokens_seen,
                "train_seconds": prior_seconds + time.perf_counter() - started,
                "data": corpus.description, "train_tokens": int(len(train_ids)),
                "val_tokens": int(len(val_ids)), "eval_history": history,
                "eval_loss_per_depth": history[-1]["loss_per_depth"] if history else {},
                "train_config": dataclasses.asdict(cfg), "parameters": model.num_parameters(),
                "objectives": {"random_depth": True, "mixed_depth_fraction": cfg.mixed_depth_fraction,
                               "think_rate": cfg.think_rate,
                               "halting_target": "argmax unchanged by one more iteration"},
                "final": final}
        save_checkpoint(cfg.output, model.cpu(), ControllerConfig(), tokenizer.to_str(), meta,
                        {"optimizer": optimizer.state_dict()})
        model.to(device)
        return meta

    def record():
        losses = evaluate(model, val_batches, device)
        history.append({"step": step, "loss_per_depth": {str(k): round(v, 4) for k, v in losses.items()}})
        logger.info("step %d val loss per depth %s", step, history[-1]["loss_per_depth"])
        return losses

    if not history:
        record()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not progress, dynamic_ncols=True)
    window_tokens, window_start = 0, time.perf_counter()
    while step < cfg.max_steps:
        if cfg.max_minutes and time.perf_counter() - started > 60 * cfg.max_minutes:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        inputs, targets = make_batch(train_ids, cfg, model_cfg, rng, think=True)
        inputs, targets = inputs.to(device), targets.to(device)
        depth = sample_depth(cfg, tuple(inputs.shape), rng, model_cfg.num_blocks)
        with autocast:
            out = model(inputs, depth.to(device) if torch.is_tensor(depth) else depth)
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(),
                                   ignore_index=IGNORE)
            halt_loss = torch.zeros((), device=device)
            if out.halting is not None and isinstance(depth, int) and depth >= 2:
                with torch.no_grad():
                    shallow = model(inputs, depth - 1).logits
                target = halting_targets(shallow, out.logits.detach())          # (B, T)
                valid = (targets != IGNORE).float()
                probs = out.halting[:, depth - 2].float().clamp(1e-6, 1 - 1e-6)  # (nb, B, T)
                bce = F.binary_cross_entropy(probs, target.expand_as(probs), reduction="none")
                halt_loss = (bce * valid).sum() / (valid.sum() * probs.shape[0])
        optimizer.zero_grad(set_to_none=True)
        (loss + cfg.halting_weight * halt_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        tokens_seen += inputs.numel()
        window_tokens += inputs.numel()
        if step % 10 == 0 or step == cfg.max_steps:
            rate = window_tokens / (time.perf_counter() - window_start)
            bar.set_postfix(loss=f"{loss.item():.3f}", halt=f"{halt_loss.item():.3f}",
                            tok_s=f"{rate:.0f}")
            window_tokens, window_start = 0, time.perf_counter()
        bar.update(1)
        if step % cfg.eval_interval == 0 and step < cfg.max_steps:
            record()
            save(final=False)
    bar.close()
    if not history or history[-1]["step"] != step:
        record()
    return save(final=True)
