"""torch -> ONNX for every graph of the artifacts directory, with weights stored once.

Uses the dynamo exporter at opset >= 18 (PERF_NOTES.md: at 17 it writes a Split ONNX Runtime
refuses). Each graph is exported with its weights embedded, then `store_weights_once` moves
every large initializer into one shared `weights.bin`, deduplicated by content, so the tied
embedding and each block's weights are on disk once however many graphs use them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, numpy_helper

from ..model.modeling import LanternModel
from .graphs import (BlockStepGraph, EmbedGraph, FullForwardGraph, LMHeadGraph,
                     UncertaintyGraph)

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.bin"
MIN_EXTERNAL_BYTES = 1024
_ALIGN = 64


@dataclass
class GraphFile:
    role: str                 # "model", "embed", "block", "mc_step", "lm_head", "uncertainty"
    file: str
    inputs: list[dict]
    outputs: list[dict]


def _dim(name: str):
    return torch.export.Dim(name, min=1)


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str],
            output_names: list[str], dynamic: dict, opset: int) -> None:
    module.eval()
    # The dynamo exporter narrates every stage on stdout/stderr and warns about optional
    # packages (torchvision); our CLI prints its own progress instead.
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module, args, dynamo=True, opset_version=opset, input_names=input_names,
            output_names=output_names, dynamic_shapes=dynamic, external_data=False,
            verbose=False)
        program.save(str(path), external_data=False)


def export_graphs(model: LanternModel, top_k: int, out_dir: Path, opset: int,
                  progress=lambda name: None) -> list[GraphFile]:
    """Write every graph of docs/ARTIFACTS.md into out_dir; returns them in manifest order."""
    cfg = model.config
    c, h, d, v = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.vocab_size
    stored = cfg.window_size + cfg.max_global_tokens
    samples, tokens, keys, batch, rows = _dim("samples"), _dim("tokens"), _dim("keys_and_tokens"), \
        _dim("batch"), _dim("rows")
    files: list[GraphFile] = []

    def run(role, name, module, args, ins, outs, dynamic):
        progress(name)
        _export(module, args, out_dir / name, ins, outs, dynamic, opset)
        files.append(GraphFile(role, name, *_signature(out_dir / name)))

    ids3 = torch.tensor([1, 2, 3]) % v
    positions3 = torch.tensor([5, 6, 7])
    run("model", "model.onnx", FullForwardGraph(model), (ids3[None].repeat(2, 1),),
        ["input_ids"], ["logits"], {"input_ids": {0: batch, 1: tokens}})
    run("embed", "embed.onnx", EmbedGraph(model), (ids3, positions3),
        ["input_ids", "positions"], ["hidden"],
        {"input_ids": {0: tokens}, "positions": {0: tokens}})
    step_inputs = ["hidden", "positions", "past_key", "past_value", "attn_bias"]
    step_args = (torch.randn(2, 3, c), positions3, torch.randn(h, stored, d),
                 torch.randn(h, stored, d), torch.zeros(3, stored + 3))
    step_dynamic = {"hidden": {0: samples, 1: tokens}, "positions": {0: tokens},
                    "past_key": None, "past_value": None, "attn_bias": {0: tokens, 1: keys}}
    for b in range(cfg.num_blocks):
        outs = ["hidden_out", "key", "value"] + (["halt"] if cfg.use_halting else [])
        run("block", f"block{b}.onnx", BlockStepGraph(model, b), step_args, step_inputs, outs,
            step_dynamic)
    masks = (torch.ones(2, h, 3, stored + 3), torch.ones(2, 3, c), torch.ones(2, 3, c))
    run("mc_step", "mc_step.onnx", BlockStepGraph(model, cfg.num_blocks - 1, mc=True),
        (torch.randn(1, 3, c), *step_args[1:], *masks),
        step_inputs + ["mask_attn_probs", "mask_attn_out", "mask_mlp_out"], ["hidden_out"],
        {**step_dynamic, "hidden": {1: tokens},
         "mask_attn_probs": {0: samples, 2: tokens, 3: keys},
         "mask_attn_out": {0: samples, 1: tokens}, "mask_mlp_out": {0: samples, 1: tokens}})
    run("lm_head", "lm_head.onnx", LMHeadGraph(model), (torch.randn(2, 3, c),), ["hidden"],
        ["logits"], {"hidden": {0: samples, 1: tokens}})
    k = min(top_k, v)
    run("uncertainty", "uncertainty.onnx", UncertaintyGraph(model, k),
        (torch.randn(2, v), torch.tensor([1.0, 0.5, 0.5])), ["logits", "weights"],
        ["entropy", "p_max", "dispersion", "score"], {"logits": {0: rows}, "weights": None})
    return files


def _signature(path: Path) -> tuple[list[dict], list[dict]]:
    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for value in values:
            t = value.type.tensor_type
            shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append({"name": value.name, "shape": shape,
                        "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out
    return describe(model.graph.input), describe(model.graph.output)


def store_weights_once(out_dir: Path, files: list[str]) -> int:
    """Move initializers >= 1 KiB of all files into one shared, deduplicated weights file.

    Returns the size of the weights file in bytes.
    """
    placed: dict[bytes, tuple[int, int]] = {}
    with open(out_dir / WEIGHTS_FILE, "wb") as blob:
        for name in files:
            model = onnx.load(str(out_dir / name))
            for tensor in model.graph.initializer:
                raw = numpy_helper.to_array(tensor).tobytes()
                if len(raw) < MIN_EXTERNAL_BYTES:
                    continue
                key = hashlib.sha256(raw).digest()
                if key not in placed:
                    pad = (-blob.tell()) % _ALIGN
                    blob.write(b"\0" * pad)
                    placed[key] = (blob.tell(), len(raw))
                    blob.write(raw)
                offset, length = placed[key]
                tensor.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data"):
                    tensor.ClearField(field)
                del tensor.external_data[:]
                for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)),
                             ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
                tensor.data_location = TensorProto.EXTERNAL
            onnx.save(model, str(out_dir / name))
        return blob.tell()


def check_graphs(out_dir: Path, files: list[str]) -> None:
    """onnx.checker full check (shape inference included) on every graph, from its path."""
    for name in files:
        onnx.checker.check_model(str(out_dir / name), full_check=True)


def set_metadata(path: Path, key: str, value: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
    onnx.save(model, str(path))
