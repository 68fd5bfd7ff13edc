"""export_checkpoint: checkpoint -> verified artifacts directory, all or nothing.

Everything is written into a temporary directory beside the destination and renamed into
place only after the graphs pass the ONNX checker and parity against the reference, so an
interrupted or failed export never leaves a half-written artifacts directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LanternError
from ..model.checkpoint import load_checkpoint
from ..runtime.artifacts import open_artifacts, sha256_of
from .manifest import TOKENIZER_FILE, build_manifest, write_manifest
from .onnx_export import WEIGHTS_FILE, check_graphs, export_graphs, set_metadata, store_weights_once
from .parity import check_parity, parity_failures

MANIFEST_METADATA_KEY = "lantern_manifest"
MIN_OPSET = 18


class ExportError(LanternError, ValueError):
    """The export cannot start or cannot be written (bad options, output not writable)."""


class ParityError(LanternError):
    """The exported graphs disagree with the PyTorch reference."""

    def __init__(self, message: str, errors: dict[str, float]):
        super().__init__(message)
        self.errors = errors


@dataclass
class ExportReport:
    out_dir: Path
    sizes: dict[str, int]                       # file -> bytes
    parity: dict[str, float]
    seconds: float
    checkpoint_kind: str
    notes: list[str] = field(default_factory=list)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, opset: int = 18,
                      force: bool = False, vocab: str | Path | None = None,
                      progress=lambda message: None) -> ExportReport:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if opset < MIN_OPSET:
        raise ExportError(
            f"--opset must be >= {MIN_OPSET}: the dynamo exporter at opset 17 writes graphs "
            f"ONNX Runtime refuses to load (Split with num_outputs), got {opset}")
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists; pass --force to replace it")
    ckpt = load_checkpoint(checkpoint, vocab)
    if ckpt.tokenizer_json is None:
        raise ExportError(
            f"{checkpoint} is an upstream checkpoint without a vocabulary: put upstream's "
            f"vocab.json beside it or pass --vocab VOCAB_JSON")
    model = ckpt.build_model()
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    except OSError as e:
        raise ExportError(f"cannot write to {parent}: {e.strerror or e}") from e
    try:
        torch.set_grad_enabled(False)
        files = export_graphs(model, ckpt.controller_config.top_k_dispersion, tmp, opset,
                              progress=lambda name: progress(f"exporting {name}"))
        names = [f.file for f in files]
        progress(f"storing weights once in {WEIGHTS_FILE}")
        store_weights_once(tmp, names)
        progress("checking graphs (onnx.checker, full_check)")
        check_graphs(tmp, names)
        (tmp / TOKENIZER_FILE).write_text(ckpt.tokenizer_json, encoding="utf-8")
        manifest = build_manifest(ckpt, sha256_of(Path(checkpoint)), files, opset)
        set_metadata(tmp / "model.onnx", MANIFEST_METADATA_KEY,
                     json.dumps({k: v for k, v in manifest.items() if k != "files"}))
        write_manifest(tmp, manifest)
        progress("verifying parity against the PyTorch reference")
        errors = check_parity(model, open_artifacts(tmp))
        manifest["parity"] = errors
        write_manifest(tmp, manifest)
        failures = parity_failures(errors)
        if failures:
            raise ParityError("exported graphs disagree with the reference: " +
                              ", ".join(failures), errors)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_grad_enabled(True)
    return ExportReport(out_dir, sizes, errors, time.perf_counter() - start, ckpt.kind)


def _replace(tmp: Path, out_dir: Path) -> None:
    """Move tmp to out_dir; an existing out_dir (--force) is swapped out, then removed."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
