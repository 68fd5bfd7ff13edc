"""export_checkpoint: checkpoint -> verified artifacts directory, all or nothing.

Everything is written into a temporary directory beside the destination and renamed into
place only after the graphs pass the ONNX checker and parity against the reference, so an
interrupted or failed export never leaves a half-written artifacts directory.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from ..model.checkpoint import load_checkpoint
from ..runtime.sessions import parse_tokenizer
from .atomic import clean_stale, partial_prefix, replace_dir
from .builder import MIN_OPSET
from .errors import ExportError, ParityError
from .manifest import (METADATA_KEY, TOKENIZER_FILE, build_manifest, metadata_json, sha256_of,
                       write_manifest)
from .graphs import build_graphs
from .model_card import write_model_card
from .onnx_export import check_graphs, ort_node_count, set_metadata, write_graphs
from .parity import check_parity, parity_failures

logger = logging.getLogger(__name__)

# which parity check covers which graph (lantern.json "parity" keys)
PARITY_OF_ROLE = {"model": "model_onnx_logits", "embed": "decode_logits", "block": "decode_logits",
                  "mc_step": "mc_step_logits", "lm_head": "decode_logits",
                  "uncertainty": "uncertainty_rel", "inject": "decode_logits"}


@dataclass
class GraphReport:
    file: str
    role: str
    file_bytes: int           # the .onnx file itself
    weight_bytes: int         # the external data it reads (shared with other graphs)
    nodes: int                # as exported
    ort_nodes: int            # after ONNX Runtime's graph optimisations (ORT_ENABLE_ALL)
    parity: float             # the error of the check that covers it (PARITY_OF_ROLE)


@dataclass
class ExportReport:
    out_dir: Path
    graphs: list[GraphReport]
    sizes: dict[str, int]                       # every file -> bytes
    parity: dict[str, float]
    seconds: float
    checkpoint_kind: str
    opset: int

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def max_opset() -> int:
    return onnx.defs.onnx_opset_version()


def export_checkpoint(checkpoint_path: str | Path, out_dir: str | Path, opset: int = 18,
                      force: bool = False, vocab: str | Path | None = None,
                      progress=lambda message: None) -> ExportReport:
    """Export a checkpoint (ours or upstream LANTERN's) to a verified artifacts directory.

    Args:
        checkpoint_path: the checkpoint file.
        out_dir: the artifacts directory to create.
        opset: ONNX opset, 17 up to what the installed onnx knows.
        force: replace an existing out_dir (only once the new export has passed).
        vocab: upstream char vocabulary (default: vocab.json beside an upstream checkpoint).
        progress: called with one line per stage.

    Returns:
        ExportReport: per-graph sizes, node counts and parity errors.

    Raises:
        CheckpointError: missing, corrupt or foreign checkpoint.
        ExportError: bad options, upstream checkpoint without vocabulary, unwritable output.
        ParityError: the graphs disagree with the reference (nothing is written).
    """
    start = time.perf_counter()
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    if not MIN_OPSET <= opset <= max_opset():
        raise ExportError(f"--opset must be in [{MIN_OPSET}, {max_opset()}] (LayerNormalization "
                          f"needs 17; the installed onnx knows up to {max_opset()}), got {opset}")
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists; pass --force to replace it")
    checkpoint = load_checkpoint(checkpoint_path, vocab)
    if checkpoint.tokenizer_json is None:
        raise ExportError(
            f"{checkpoint_path} is an upstream checkpoint without a vocabulary: put upstream's "
            f"vocab.json beside it or pass --vocab VOCAB_JSON")
    parse_tokenizer(checkpoint.tokenizer_json, checkpoint.model_config.vocab_size,
                    f"the tokenizer_json in {checkpoint_path}")
    model = checkpoint.build_model()
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale(parent, out_dir.name)
        tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(out_dir.name), dir=parent))
    except OSError as e:
        raise ExportError(f"cannot write to {parent}: {e.strerror or e}") from e
    try:
        with torch.no_grad():
            built = build_graphs(model, checkpoint.controller_config.top_k_dispersion, opset)
            files = write_graphs(built, tmp, progress=lambda name: progress(f"wrote {name}"))
            progress(f"checking {len(files)} graphs (onnx.checker, full_check)")
            check_graphs(tmp, [f.file for f in files])
            (tmp / TOKENIZER_FILE).write_text(checkpoint.tokenizer_json, encoding="utf-8")
            manifest = build_manifest(checkpoint, sha256_of(checkpoint_path), files, opset)
            set_metadata(tmp / "model.onnx", METADATA_KEY, metadata_json(manifest))
            write_manifest(tmp, manifest)
            progress("verifying parity against the PyTorch reference")
            errors = check_parity(model, tmp)
        manifest["parity"] = errors
        write_model_card(tmp, manifest)
        set_metadata(tmp / "model.onnx", METADATA_KEY, metadata_json(manifest))
        write_manifest(tmp, manifest)
        failures = parity_failures(errors)
        if failures:
            raise ParityError("exported graphs disagree with the reference: " +
                              ", ".join(failures), errors)
        reports = _graph_reports(tmp, built, files, errors)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        _replace(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"cannot write the artifacts next to {out_dir}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(out_dir, reports, sizes, errors, time.perf_counter() - start,
                        checkpoint.kind, opset)


def _graph_reports(root: Path, built, files, errors) -> list[GraphReport]:
    reports = []
    for (role, name, model), f in zip(built, files):
        weight_bytes = sum(int(next(e.value for e in t.external_data if e.key == "length"))
                           for t in model.graph.initializer if t.external_data)
        reports.append(GraphReport(name, role, (root / name).stat().st_size, weight_bytes,
                                   f.nodes, ort_node_count(root / name),
                                   errors[PARITY_OF_ROLE[role]]))
    return reports


def _replace(tmp: Path, out_dir: Path) -> None:
    """Move tmp to out_dir; an existing out_dir (--force) is swapped out, then removed."""
    tmp.chmod(0o755)                           # mkdtemp made it private; artifacts are not
    replace_dir(tmp, out_dir)
