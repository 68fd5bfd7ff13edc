"""Write lantern.json (docs/ARTIFACTS.md) and keep its file hashes current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..model.checkpoint import Checkpoint
from ..runtime.artifacts import MANIFEST, sha256_of
from ..version import MANIFEST_FORMAT_VERSION, __version__
from .onnx_export import WEIGHTS_FILE, GraphFile

TOKENIZER_FILE = "tokenizer.json"


def graph_section(files: list[GraphFile], external_data: list[str]) -> dict[str, Any]:
    """One precision's entry under "graphs": roles -> {file, inputs, outputs}."""
    section: dict[str, Any] = {"blocks": [], "external_data": external_data}
    for f in files:
        entry = {"file": f.file, "inputs": f.inputs, "outputs": f.outputs}
        if f.role == "block":
            section["blocks"].append(entry)
        else:
            section[f.role] = entry
    return section


def build_manifest(checkpoint: Checkpoint, checkpoint_sha256: str, files: list[GraphFile],
                   opset: int) -> dict[str, Any]:
    cfg = checkpoint.model_config
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "producer": {"name": "lantern-edge", "version": __version__, "opset": opset,
                     "checkpoint_kind": checkpoint.kind, "checkpoint_sha256": checkpoint_sha256},
        "model_config": cfg.to_dict(),
        "controller": checkpoint.controller_config.to_dict(),
        "special_tokens": {k: getattr(cfg, k) for k in
                           ("bos_token_id", "eos_token_id", "pad_token_id", "think_token_id")},
        "tokenizer": TOKENIZER_FILE,
        "training": _jsonable(checkpoint.training),
        "graphs": {"fp32": graph_section(files, [WEIGHTS_FILE])},
        "files": {},
        "parity": {},
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Hash every file in out_dir (recursively, except the manifest) and write lantern.json."""
    manifest["files"] = {
        p.relative_to(out_dir).as_posix(): sha256_of(p)
        for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _jsonable(value: Any) -> Any:
    """Training metadata as JSON (tensors and sets become lists; anything else a string)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
