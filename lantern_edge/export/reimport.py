"""Artifacts -> the PyTorch reference model: the inverse of the weight layout in graphs.py.

The shipped default model comes as ONNX artifacts only (its checkpoint would double the package
size), yet evaluation and the PyTorch rows of the benchmark need the reference model. Its
weights are all in the fp32 graphs: un-fuse q/k/v and gate/up, un-transpose, and divide the
1/sqrt(head_dim) folded into the q rows back out (exact when head_dim is a power of 4, as 1/8
is for the default head_dim 64; otherwise within an ulp).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..errors import ArtifactError
from ..model.checkpoint import Checkpoint, load_checkpoint
from ..runtime.artifacts import open_artifacts


def is_artifacts_path(path: str | Path) -> bool:
    """An artifacts directory or its model.onnx (rather than a checkpoint file)."""
    path = Path(path)
    return path.is_dir() or path.suffix == ".onnx"


def load_reference(path: str | Path) -> Checkpoint:
    """A checkpoint file (ours or upstream), or the checkpoint rebuilt from artifacts."""
    return checkpoint_from_artifacts(path) if is_artifacts_path(path) else load_checkpoint(path)


def checkpoint_from_artifacts(path: str | Path) -> Checkpoint:
    """The checkpoint whose export is the fp32 artifacts at ``path`` (the directory or its
    model.onnx), hashes verified; its state dict loads into ``LanternModel`` strictly.

    Raises:
        ArtifactError: missing or corrupt artifacts, or graphs without the expected weights.
    """
    artifacts = open_artifacts(path, "fp32")
    cfg = artifacts.model_config
    graphs = artifacts.manifest["graphs"]["fp32"]
    files = [graphs[role]["file"] for role in ("embed", "lm_head", "uncertainty", "inject")
             if role in graphs] + [b["file"] for b in graphs["blocks"]]
    weights: dict[str, np.ndarray] = {}
    for file in files:
        for tensor in onnx.load(str(artifacts.root / file)).graph.initializer:
            weights.setdefault(tensor.name, numpy_helper.to_array(tensor))
    try:
        state = _state_dict(weights, cfg)
    except KeyError as e:
        raise ArtifactError(f"{artifacts.root} lacks the weight {e} in its fp32 graphs; re-export "
                            f"it with `lantern-export CHECKPOINT -o DIR --force`") from e
    tokenizer = (artifacts.root / artifacts.manifest["tokenizer"]).read_text(encoding="utf-8")
    return Checkpoint(cfg, artifacts.controller, state, tokenizer,
                      kind=artifacts.manifest["producer"].get("checkpoint_kind", "lantern-edge"),
                      training=artifacts.manifest.get("training") or {})


def _state_dict(w: dict[str, np.ndarray], cfg) -> dict[str, torch.Tensor]:
    c, inner = cfg.hidden_size, cfg.intermediate_size
    scale = np.float32(1.0 / math.sqrt(cfg.head_dim))
    state = {"token_embedding.weight": w["token_embedding"],
             "position_embedding.weight": w["position_embedding"],
             "final_norm.weight": w["final_norm.weight"], "final_norm.bias": w["final_norm.bias"]}
    for b in range(cfg.num_blocks):
        get = lambda name, b=b: w[f"block{b}.{name}"]   # noqa: E731
        prefix = f"blocks.{b}."
        qkv, qkv_bias = get("qkv_weight").T, get("qkv_bias")                 # (3C, C), (3C,)
        for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            weight, bias = qkv[i * c:(i + 1) * c], qkv_bias[i * c:(i + 1) * c]
            if proj == "q_proj":
                weight, bias = weight / scale, bias / scale
            state[f"{prefix}attention.{proj}.weight"] = weight
            state[f"{prefix}attention.{proj}.bias"] = bias
        gate_up = get("gate_up_weight").T                                     # (2I, C)
        state.update({
            f"{prefix}attn_norm.weight": get("attn_norm.weight"),
            f"{prefix}attn_norm.bias": get("attn_norm.bias"),
            f"{prefix}attention.out_proj.weight": get("out_weight").T,
            f"{prefix}attention.out_proj.bias": get("out_bias"),
            f"{prefix}mlp_norm.weight": get("mlp_norm.weight"),
            f"{prefix}mlp_norm.bias": get("mlp_norm.bias"),
            f"{prefix}gate_proj.weight": gate_up[:inner],
            f"{prefix}up_proj.weight": gate_up[inner:],
            f"{prefix}down_proj.weight": get("down_weight").T})
        if cfg.use_halting:
            state[f"{prefix}halting.weight"] = get("halt_weight")[None, :]
            state[f"{prefix}halting.bias"] = get("halt_bias").reshape(1)
    if cfg.input_injection:      # graphs.injection_weights: W = [W_h^T | W_e^T]
        state["injection.weight"] = np.concatenate(
            (w["injection.hidden_weight"].T, w["injection.embed_weight"].T), axis=1)
        state["injection.bias"] = w["injection.bias"]
    if cfg.has_depth_probe:
        state.update({"depth_probe.hidden_layer.weight": w["depth_probe.hidden_weight"].T,
                      "depth_probe.hidden_layer.bias": w["depth_probe.hidden_bias"],
                      "depth_probe.output_layer.weight": w["depth_probe.output_weight"][None, :],
                      "depth_probe.output_layer.bias": w["depth_probe.output_bias"].reshape(1)})
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
