"""What the trainer feeds the model: the run's tokenizer, the corpus as one id stream, and
random (inputs, targets) windows of it with THINK tokens inserted."""

from __future__ import annotations

import numpy as np
import torch

from .config import ModelConfig
from .tokenizer import train_bpe_tokenizer
from .train_config import TrainConfig

IGNORE = -100                            # cross-entropy ignore_index: labels that train nothing


def run_tokenizer(cfg: TrainConfig, texts: list[str]):
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
