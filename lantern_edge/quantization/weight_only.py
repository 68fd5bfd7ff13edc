"""INT8 weight-only MatMuls: int8 weights with one scale per output channel, float activations.

For MatMuls whose input ONNX Runtime's per-tensor activation quantization would crush: the
SwiGLU down projection reads SiLU(gate) * up, whose few outlier channels set the per-tensor
scale and round every other channel to a handful of levels. Measured on the default model
(12k held-out tokens): quantizing that input costs 7 points of top-1 agreement with fp32
(92.6%); this path keeps 96-97%. The weight is stored as int8 [K, N] read through
DequantizeLinear; at its default (extended and higher) optimisation level ONNX Runtime fuses
that pair into an 8-bit MatMulNBits, which quantizes activations per block of K instead of
per tensor: the outlier channels no longer set one scale for all.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def matmuls_reading(model: onnx.ModelProto, suffixes: tuple[str, ...]) -> list[onnx.NodeProto]:
    """MatMul nodes whose constant B (an initializer) has a name ending with one of suffixes."""
    weights = {t.name for t in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in weights and n.input[1].endswith(suffixes)]


def to_int8_weight_only(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """Store each node's 2-D weight B [K, N] as int8 with a symmetric scale per column (output
    channel) and read it through DequantizeLinear; edits ``model`` in place."""
    initializers = {t.name: t for t in model.graph.initializer}
    dequantize = []
    for node in nodes:
        name = node.input[1]
        weight = numpy_helper.to_array(initializers[name]).astype(np.float32)
        if weight.ndim != 2:
            raise ValueError(f"{name}: weight-only INT8 needs a 2-D MatMul weight, got "
                             f"shape {weight.shape}")
        scale = np.abs(weight).max(axis=0) / 127.0
        scale[scale == 0] = 1.0                       # an all-zero column stays exactly zero
        quantized = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
        model.graph.initializer.remove(initializers[name])
        model.graph.initializer.extend([
            numpy_helper.from_array(quantized, f"{name}_int8"),
            numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale")])
        dequantize.append(helper.make_node(
            "DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [f"{name}_dequantized"],
            name=f"{name}_DequantizeLinear", axis=1))
        node.input[1] = f"{name}_dequantized"
    for dq in reversed(dequantize):                   # before every consumer (topological order)
        model.graph.node.insert(0, dq)
