"""lantern.json (docs/ARTIFACTS.md): build it, keep its file hashes current, write it.

Reused by the quantization step, which adds a "graphs"/"int8" section and files and then calls
`write_manifest` again so every file's sha256 is recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.artifacts import MANIFEST, sha256_of  # noqa: F401  (re-exported)
from ..version import MANIFEST_FORMAT_VERSION, __version__
from .atomic import write_text_atomic
from .onnx_export import WEIGHTS_FILE, GraphFile

MANIFEST_FILE = MANIFEST
TOKENIZER_FILE = "tokenizer.json"
METADATA_KEY = "lantern_manifest"          # model.onnx metadata_props key

if TYPE_CHECKING:       # the quantizer rewrites manifests without torch; only export has one
    from ..model.checkpoint import Checkpoint


def graph_section(files: list[GraphFile], external_data: list[str]) -> dict[str, Any]:
    """One precision's entry under "graphs": role -> {file, inputs, outputs}; "blocks" is a list
    in block order; "external_data" lists the weight files these graphs read."""
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


def metadata_json(manifest: dict[str, Any]) -> str:
    """The manifest for model.onnx metadata_props: without "files" (a file cannot hash itself)."""
    return json.dumps({k: v for k, v in manifest.items() if k != "files"})


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under out_dir (except lantern.json itself), store the hashes in
    manifest["files"] and write lantern.json; returns the manifest."""
    out_dir = Path(out_dir)
    names = [p.relative_to(out_dir).as_posix() for p in sorted(out_dir.rglob("*"))
             if p.is_file() and p.name != MANIFEST_FILE]
    # hidden entries are work files of a running or killed export/quantize, not artifacts
    manifest["files"] = {name: sha256_of(out_dir / name) for name in names
                         if not any(part.startswith(".") for part in name.split("/"))}
    write_text_atomic(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(out_dir: Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))


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
