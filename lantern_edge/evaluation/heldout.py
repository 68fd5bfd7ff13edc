"""The model under evaluation and its held-out text: a checkpoint and fixed validation windows.

Held-out text is the validation split of the corpus the checkpoint was trained on (by default
the Python standard library, split by file, so no window shares a line with training), cut
into evenly spaced windows that start with BOS, as the runtime's sequences do.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..export.manifest import read_manifest
from ..model.config import ControllerConfig, ModelConfig
from ..model.corpus import load_corpus
from ..model.modeling import LanternModel
from ..model.training import tokenize

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"   # runtime's too


@dataclass
class Evaluated:
    """A checkpoint loaded for evaluation."""

    path: Path
    sha256: str
    model: LanternModel                # eval mode, on CPU
    controller: ControllerConfig
    tokenizer_json: str
    training: dict

    @property
    def config(self) -> ModelConfig:
        return self.model.config


@dataclass
class Windows:
    """Teacher-forced held-out windows: inputs[:, t] predicts targets[:, t]."""

    inputs: torch.Tensor               # (B, T) LongTensor, BOS first when the model has one
    targets: torch.Tensor              # (B, T) LongTensor
    description: dict                  # corpus, tokens, windows, where they start

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())


def load_evaluated(path: str | Path | None) -> Evaluated:
    """Load the model to evaluate, in eval mode: a checkpoint (ours or upstream), an artifacts
    directory (or its model.onnx: the reference model is rebuilt from its fp32 graphs), or
    None for the shipped default model.

    Raises:
        CheckpointError / ArtifactError: a missing or unusable checkpoint or artifacts directory.
    """
    from ..export.reimport import is_artifacts_path, load_reference
    path = DEFAULT_MODEL_DIR if path is None else Path(path)
    if not path.exists():
        raise CheckpointError(f"not found: {path}; pass a checkpoint written by `lantern-edge "
                              f"train` or an artifacts directory written by `lantern-export`")
    ckpt = load_reference(path)
    if is_artifacts_path(path):
        # the checkpoint the graphs were exported from, as the (just verified) manifest records
        root = path if path.is_dir() else path.parent
        digest = str(read_manifest(root)["producer"].get("checkpoint_sha256", ""))
    else:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if ckpt.tokenizer_json is None:
        raise CheckpointError(f"{path} has no tokenizer (an upstream checkpoint needs its "
                              f"vocab.json beside it) so held-out text cannot be encoded")
    return Evaluated(path, digest, ckpt.build_model(), ckpt.controller_config,
                     ckpt.tokenizer_json, ckpt.training)


def default_window_length(evaluated: Evaluated) -> int:
    """The training sequence length, leaving room for the THINK tokens the controller may add."""
    cfg = evaluated.config
    trained = (evaluated.training.get("train_config") or {}).get("seq_len", 256)
    return max(2, min(int(trained), cfg.max_position - (cfg.max_global_tokens - 1)))


def heldout_stream(evaluated: Evaluated, corpus: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """The validation split as one id stream (files joined by EOS, as in training).

    Args:
        evaluated: the checkpoint; its training metadata names its corpus and split.
        corpus: override the corpus sources (directory or files); None: the checkpoint's own
            (the Python standard library for the default model).
    """
    from tokenizers import Tokenizer
    train_config = evaluated.training.get("train_config") or {}
    val_fraction = float(train_config.get("val_fraction", 0.05))
    note = None
    if corpus is not None:
        sources = list(corpus)
    else:
        sources = list(train_config.get("corpus") or [])
        if sources and not any(Path(s).exists() for s in sources):
            sources, val_fraction, note = _stdlib_instead(evaluated, sources)
    texts = load_corpus(sources, val_fraction)
    tokenizer = Tokenizer.from_str(evaluated.tokenizer_json)
    eos = evaluated.config.eos_token_id
    if eos is None:
        raise CheckpointError(
            f"{evaluated.path} has no EOS token to separate held-out files; `lantern-edge eval` "
            f"evaluates lantern-edge checkpoints (written by `lantern-edge train`)")
    stream = tokenize(tokenizer, texts.val, eos)
    info = {"source": texts.description["source"], "split": texts.description["split"],
            "files": texts.description["files_val"], "stream_tokens": int(len(stream))}
    if note:
        info["note"] = note
    return stream, info


def text_stream(evaluated: Evaluated, files: list[str]) -> tuple[np.ndarray, dict]:
    """Every given text file, whole (no split: text the model never trained on), as one id
    stream joined by EOS.

    Raises:
        ValueError: a missing, unreadable or empty file.
    """
    from tokenizers import Tokenizer
    texts = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"--text {name}: not a file; pass text files (e.g. a package's "
                             f".py files)")
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--text {name}: cannot be read as UTF-8 text ({e})") from e
    if not any(t.strip() for t in texts):
        raise ValueError("--text: the files hold no text")
    eos = evaluated.config.eos_token_id
    if eos is None:
        raise CheckpointError(f"{evaluated.path} has no EOS token to join the text files")
    stream = tokenize(Tokenizer.from_str(evaluated.tokenizer_json), texts, eos)
    return stream, {"source": f"{len(files)} text file(s) given with --text", "split": "all",
                    "files": len(files), "stream_tokens": int(len(stream))}


def _stdlib_instead(evaluated: Evaluated, sources: list[str]) -> tuple[list[str], float, str]:
    """The standard library's split when the checkpoint's corpus was prepared from it (with
    `lantern-edge corpus -o DIR`) and DIR is not on this machine: the split is a hash of each
    file's relative path, so the same files are held out here."""
    data = evaluated.training.get("data") or {}
    origin = data.get("prepared_from") or data
    # a corpus mixed from prepared ones (scripts/mix_corpus.py) keeps its base's validation split
    origin = origin.get("base") or origin
    if "standard library" not in str(origin.get("source", "")):
        raise ValueError(
            f"the checkpoint was trained on {', '.join(sources)}, which is not on this machine; "
            f"pass the same corpus with --corpus DIR|FILE")
    fraction = float(origin.get("val_fraction", 0.05))
    return [], fraction, (f"the checkpoint's corpus {', '.join(sources)} is not here; it was "
                          f"prepared from the {origin['source']}, whose split (by path hash, "
                          f"{fraction}) this run reproduces for the local standard library's "
                          f"files")


def make_windows(stream: np.ndarray, info: dict, config: ModelConfig, tokens: int,
                 length: int) -> Windows:
    """Evenly spaced windows over the stream holding about `tokens` predicted tokens.

    Args:
        stream: held-out ids.
        info: description of the stream (kept in the result).
        config: the model's config (BOS id, max_position).
        tokens: how many tokens to predict in all (rounded up to whole windows).
        length: tokens per window, BOS included.

    Raises:
        ValueError: a bad length or too short a stream.
    """
    if not 2 <= length <= config.max_position:
        raise ValueError(f"window length must be in [2, max_position={config.max_position}], "
                         f"got {length}")
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    bos = config.bos_token_id
    body = length - (1 if bos is not None else 0)          # stream tokens per window, + 1 target
    count = -(-tokens // length)
    if len(stream) < body + 1:
        raise ValueError(f"the held-out stream has {len(stream)} tokens, fewer than one window "
                         f"of {length}; use a shorter --seq-len or a larger corpus")
    starts = np.linspace(0, len(stream) - body - 1, count).round().astype(np.int64)
    rows = []
    for start in starts:
        piece = stream[start:start + body + 1]
        rows.append(np.concatenate([[bos], piece]) if bos is not None else piece)
    batch = torch.from_numpy(np.stack(rows).astype(np.int64))
    description = dict(info, windows=count, window_length=length,
                       tokens=count * length, overlap=bool(np.any(np.diff(starts) < body)))
    return Windows(batch[:, :-1].contiguous(), batch[:, 1:].contiguous(), description)
