"""Write the graphs of graphs.py to disk with their weights stored once, and check them.

Every initializer of at least 1 KiB goes into one shared `weights.bin`, deduplicated by
content, so the tied embedding and each block's weights are on disk once however many graphs
use them (ONNX Runtime resolves external data relative to each model's path).
Needs onnx and onnxruntime only, never torch: the quantizer writes its INT8 graphs with it.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import TensorProto

WEIGHTS_FILE = "weights.bin"
MIN_EXTERNAL_BYTES = 1024
_ALIGN = 64                   # offsets aligned for mmap-friendly reads


@dataclass
class GraphFile:
    role: str                 # "model", "embed", "block", "mc_step", "lm_head", "uncertainty",
                              # "inject" (models with input injection)
    file: str
    inputs: list[dict]
    outputs: list[dict]
    nodes: int                # nodes as exported


def write_graphs(built: list[tuple[str, str, onnx.ModelProto]], out_dir: Path,
                 progress=lambda name: None) -> list[GraphFile]:
    """Save each graph into out_dir, its large initializers in the shared WEIGHTS_FILE."""
    placed: dict[bytes, tuple[int, int]] = {}
    files = []
    with open(out_dir / WEIGHTS_FILE, "wb") as blob:
        for role, name, model in built:
            progress(name)
            for tensor in model.graph.initializer:
                _externalize(tensor, blob, placed)
            onnx.save(model, str(out_dir / name))
            files.append(GraphFile(role, name, *signature(model), len(model.graph.node)))
    return files


def _externalize(tensor: TensorProto, blob, placed: dict[bytes, tuple[int, int]]) -> None:
    raw = tensor.raw_data
    if len(raw) < MIN_EXTERNAL_BYTES:
        return
    key = hashlib.sha256(raw).digest()
    if key not in placed:
        blob.write(b"\0" * ((-blob.tell()) % _ALIGN))
        placed[key] = (blob.tell(), len(raw))
        blob.write(raw)
    offset, length = placed[key]
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    tensor.data_location = TensorProto.EXTERNAL


def signature(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs as manifest entries: name, shape (ints and dim names), dtype."""
    def describe(values):
        out = []
        for value in values:
            t = value.type.tensor_type
            shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append({"name": value.name, "shape": shape,
                        "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out
    return describe(model.graph.input), describe(model.graph.output)


def check_graphs(out_dir: Path, files: list[str]) -> None:
    """onnx.checker full check (strict shape inference included) on every graph, by path, so
    external data is resolved as a consumer would."""
    for name in files:
        onnx.checker.check_model(str(out_dir / name), full_check=True)


def set_metadata(path: Path, key: str, value: str) -> None:
    """Set one metadata_props entry of the model at path (its external data untouched)."""
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            break
    else:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def ort_node_count(path: Path, level: str = "all") -> int:
    """Nodes left after ONNX Runtime's graph optimisations at `level` (basic/extended/all)."""
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return len(onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node)
