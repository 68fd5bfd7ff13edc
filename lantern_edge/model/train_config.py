"""TrainConfig: every setting of a training run, its presets, and the config a checkpoint was
trained with (for --resume and for phases run later on a finished checkpoint)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, load_checkpoint
from .config import ModelConfig
from .corpus import OFFLINE_CORPORA

# the TrainConfig fields that are ModelConfig fields: the model's shape, fixed on resume
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
    init_from: str | None = None          # start from these weights (checkpoint or artifacts)
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
        need(not (self.init_from and self.tokenizer), "tokenizer",
             "None with init_from (the initial model brings its own tokenizer)")
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


# what a run started from other weights may change; every other ModelConfig field must match
INIT_CHANGEABLE = ("steps_base", "steps_reasoning", "dropout", "use_halting", "input_injection")


def init_model_config(cfg: TrainConfig, init: Checkpoint) -> ModelConfig:
    """The model config of a run that starts from ``init``'s weights: init's shape, vocabulary
    and special tokens, with cfg's INIT_CHANGEABLE fields. ValueError naming each shape field
    where cfg and init disagree (weights of another shape cannot be loaded)."""
    start = init.model_config
    wrong = [f"{name} (run {getattr(cfg, name)!r}, init {getattr(start, name)!r})"
             for name in MODEL_FIELDS + ("vocab_size",)
             if name not in INIT_CHANGEABLE and getattr(cfg, name) != getattr(start, name)]
    if wrong:
        raise ValueError(f"--init-from {cfg.init_from}: the run's model shape differs from the "
                         f"initial model's in {', '.join(wrong)}; pass the initial model's "
                         f"values (or a preset of its shape)")
    return dataclasses.replace(start, **{name: getattr(cfg, name) for name in INIT_CHANGEABLE},
                               depth_probe_hidden=0)


def _trainer_state_of(ckpt: Checkpoint, path: str | Path) -> dict[str, Any]:
    """The TrainConfig fields a checkpoint stored (ValueError when it holds none)."""
    stored = ckpt.training.get("train_config")
    if ckpt.kind != "lantern-edge" or not isinstance(stored, dict) or not ckpt.resume_state:
        raise ValueError(f"--resume {path}: this checkpoint holds no trainer state (it was not "
                         f"written by `lantern-edge train`); start a new run instead")
    return stored


def resume_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with, with ``overrides`` applied."""
    return stored_config(_trainer_state_of(load_checkpoint(path), path), **overrides)


def stored_config(stored: dict[str, Any], **overrides: Any) -> TrainConfig:
    """The TrainConfig of a checkpoint's stored train_config dict (fields a later version
    dropped are ignored), with ``overrides`` applied."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in stored.items() if k in known}
    values["corpus"] = tuple(values.get("corpus") or ())
    return TrainConfig(**{**values, **overrides})


def check_resumable(cfg: TrainConfig, path: str | Path, ckpt: Checkpoint) -> None:
    """Raise when cfg cannot continue the run saved in ckpt (a finished run, another shape)."""
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
