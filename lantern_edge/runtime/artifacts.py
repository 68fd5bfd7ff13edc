"""Open an artifacts directory: read lantern.json, check its format and every file's sha256.

The runtime reads nothing the manifest does not list (docs/ARTIFACTS.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..model.config import ControllerConfig, ModelConfig
from ..version import MANIFEST_FORMAT_VERSION

MANIFEST = "lantern.json"
ROLES = ("embed", "blocks", "mc_step", "lm_head", "uncertainty")
OPTIONAL_ROLES = ("inject",)           # only models with input injection have it
_REBUILD = "re-run `lantern-export CHECKPOINT -o DIR --force`"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Artifacts:
    root: Path
    manifest: dict[str, Any]
    model_config: ModelConfig
    controller: ControllerConfig

    @property
    def precisions(self) -> list[str]:
        return sorted(self.manifest["graphs"])

    def graph(self, precision: str, role: str, index: int | None = None) -> Path:
        entry = self.manifest["graphs"][precision][role]
        if index is not None:
            entry = entry[index]
        return self.root / entry["file"]

    def has_graph(self, precision: str, role: str) -> bool:
        return role in self.manifest["graphs"][precision]

    def files_for(self, precision: str) -> list[str]:
        """Every file the runtime reads for this precision: graphs, their external data, tokenizer."""
        graphs = self.manifest["graphs"][precision]
        names = [graphs[role]["file"] for role in ROLES + OPTIONAL_ROLES
                 if role != "blocks" and (role in ROLES or role in graphs)]
        names += [entry["file"] for entry in graphs["blocks"]]
        names += list(graphs.get("external_data", []))
        names.append(self.manifest["tokenizer"])
        return names


def open_artifacts(path: str | Path, precision: str = "fp32") -> Artifacts:
    """Artifacts at `path` (the directory or its model.onnx), verified for `precision`."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"artifacts not found: {path}; create them with "
                            f"`lantern-export CHECKPOINT -o {path}`")
    root = path.parent if path.is_file() else path
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise ArtifactError(f"no {MANIFEST} in {root}: not a LANTERN artifacts directory; create "
                            f"one with `lantern-export CHECKPOINT -o {root}`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({e}); {_REBUILD}") from e
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != MANIFEST_FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path} has format_version {version!r}, this lantern-edge reads "
            f"{MANIFEST_FORMAT_VERSION}; {_REBUILD} with this version")
    try:
        artifacts = Artifacts(root, manifest, ModelConfig.from_dict(manifest["model_config"]),
                              ControllerConfig.from_dict(manifest["controller"]))
        graphs = manifest["graphs"]
        files = manifest["files"]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{manifest_path} is incomplete or invalid ({e}); {_REBUILD}") from e
    if precision not in graphs:
        fix = ("quantize them with `lantern-edge quantize " + str(root) + "`"
               if precision == "int8" else f"available: {', '.join(sorted(graphs))}")
        raise ArtifactError(f"{root} has no {precision} graphs; {fix}")
    for name in artifacts.files_for(precision):
        file = root / name
        if not file.exists():
            raise ArtifactError(f"{file} is missing from the artifacts; {_REBUILD}")
        expected = files.get(name)
        if expected is None:
            raise ArtifactError(f"{name} has no sha256 in {manifest_path}; {_REBUILD}")
        if sha256_of(file) != expected:
            raise ArtifactError(f"{file} does not match its sha256 in {MANIFEST} (modified or "
                                f"corrupt); {_REBUILD}")
    return artifacts
