"""Open an artifacts directory: read lantern.json, check it strictly, read and hash every file.

The runtime reads nothing the manifest does not list (docs/ARTIFACTS.md), and reads each file
once: the bytes that are hashed are the bytes kept in `Artifacts.blobs` and handed to ONNX
Runtime and the tokenizer (sessions.py), so a file changed or truncated on disk after the
check cannot change or crash a running model. Names must be plain relative paths of regular
files inside the directory (no symlinks, devices or FIFOs), and each file has a size cap.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..model.config import ControllerConfig, ModelConfig
from .graph_proto import ProtoError, read_graph
from .manifest_check import (REBUILD, check_configs, check_graphs, check_layout,
                             check_model_copy, check_name, check_parity, graph_roles)

MANIFEST = "lantern.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILE_BYTES = 16 << 30       # any one graph, weights or tokenizer file
_REBUILD = REBUILD


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_inside(root: Path, name: str, limit: int | None = None) -> bytes:
    """The bytes of root/name, opened component by component without following symlinks, and
    only if it is a regular file of at most `limit` bytes (a FIFO or device would block or
    never end). Raises ArtifactError otherwise."""
    limit = MAX_FILE_BYTES if limit is None else limit
    parts = name.split("/")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = None
    try:
        fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        for part in parts[:-1]:
            sub = os.open(part, flags | getattr(os, "O_DIRECTORY", 0), dir_fd=fd)
            os.close(fd)
            fd = sub
        sub = os.open(parts[-1], flags | getattr(os, "O_NONBLOCK", 0), dir_fd=fd)
        os.close(fd)
        fd = sub
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{root / name} is not a regular file; artifacts hold only "
                                f"plain files; {REBUILD}")
        if info.st_size > limit:
            raise ArtifactError(f"{root / name} is {info.st_size} bytes, above the limit of "
                                f"{limit} for one artifacts file; {REBUILD}")
        chunks, left = [], info.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left or os.read(fd, 1):
            raise ArtifactError(f"{root / name} changed size while it was read; {REBUILD}")
        return b"".join(chunks)
    except FileNotFoundError as e:
        raise ArtifactError(f"{root / name} is missing from the artifacts; {REBUILD}") from e
    except OSError as e:
        symlink = " (a symlink: artifacts hold only plain files)" if e.errno in (40, 20) else ""
        raise ArtifactError(f"cannot read {root / name}{symlink}: {e.strerror or e}; "
                            f"{REBUILD}") from e
    finally:
        if fd is not None:
            os.close(fd)


@dataclass
class Artifacts:
    root: Path
    manifest: dict[str, Any]
    model_config: ModelConfig
    controller: ControllerConfig
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False)   # name -> verified bytes

    @property
    def precisions(self) -> list[str]:
        return sorted(self.manifest["graphs"])

    def graph_name(self, precision: str, role: str, index: int | None = None) -> str:
        entry = self.manifest["graphs"][precision][role]
        if index is not None:
            entry = entry[index]
        return entry["file"]

    def graph(self, precision: str, role: str, index: int | None = None) -> Path:
        return self.root / self.graph_name(precision, role, index)

    def has_graph(self, precision: str, role: str) -> bool:
        return role in self.manifest["graphs"][precision]

    def files_for(self, precision: str) -> list[str]:
        """Every file the runtime reads for this precision: graphs, their external data, tokenizer."""
        graphs = self.manifest["graphs"][precision]
        names = [graphs[role]["file"] for role in graph_roles(graphs)]
        names += [entry["file"] for entry in graphs["blocks"]]
        names += list(graphs.get("external_data", []))
        names.append(self.manifest["tokenizer"])
        return names

    def external_data(self, precision: str, graph_name: str) -> dict[str, bytes]:
        """The verified external-data bytes a graph reads, keyed by the location it names
        (relative to its own directory, as ONNX requires)."""
        base = graph_name.rsplit("/", 1)[0] + "/" if "/" in graph_name else ""
        return {name[len(base):]: self.blobs[name]
                for name in self.manifest["graphs"][precision].get("external_data", [])
                if name.startswith(base) and "/" not in name[len(base):]}


def open_artifacts(path: str | Path, precision: str = "fp32", *,
                   require_parity: bool = True) -> Artifacts:
    """Artifacts at `path` (the directory or its model.onnx), verified for `precision`.

    require_parity: refuse artifacts whose manifest records no passing parity check (the
    exporter itself opens its own graphs before parity has run)."""
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
        manifest = json.loads(read_inside(root, MANIFEST, MAX_MANIFEST_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({e}); {_REBUILD}") from e
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path} is not a JSON object; {_REBUILD}")
    check_layout(manifest, precision)
    graphs = manifest["graphs"]
    if precision not in graphs:
        fix = ("quantize them with `lantern-edge quantize " + str(root) + "`"
               if precision == "int8" else f"available: {', '.join(sorted(graphs))}")
        raise ArtifactError(f"{root} has no {precision} graphs; {fix}")
    model_config, controller = check_configs(manifest)
    if require_parity:
        check_parity(manifest)
    artifacts = Artifacts(root, manifest, model_config, controller)
    model_file = graphs["fp32"]["model"]["file"] if "fp32" in graphs else None
    names = artifacts.files_for(precision) + ([model_file] if model_file else [])
    for name in dict.fromkeys(names):
        check_name(name, "graphs")
        expected = manifest["files"].get(name)
        if expected is None:
            raise ArtifactError(f"{name} has no sha256 in {manifest_path}; {_REBUILD}")
        data = read_inside(root, name)
        if hashlib.sha256(data).hexdigest() != expected:
            raise ArtifactError(f"{root / name} does not match its sha256 in {MANIFEST} "
                                f"(modified or corrupt); {_REBUILD}")
        artifacts.blobs[name] = data
    section = graphs[precision]
    graph_names = ([section[role]["file"] for role in graph_roles(section)]
                   + [entry["file"] for entry in section["blocks"]])
    try:
        infos = {name: read_graph(artifacts.blobs[name]) for name in graph_names}
        check_graphs(manifest, precision, model_config, infos)
        if model_file:
            check_model_copy(manifest, read_graph(artifacts.blobs.pop(model_file)), model_file)
    except ProtoError as e:
        raise ArtifactError(f"a graph of {root} is not a valid ONNX file ({e}); {_REBUILD}") from e
    return artifacts
