"""One INT8 copy of the tied token embedding for the embed, LM head and uncertainty graphs.

ONNX Runtime's dynamic quantizer gives the LM head an int8 [C, V] matrix (the transposed
embedding) and every Gather of the embedding its own uint8 [V, C] table: two copies of the
largest tensor of a small model (1 MB each at the default shape, a quarter of the INT8 weights).
Here the Gathers are rewritten to read the LM head's table instead: Gather along axis 1 (a
column per id), a Transpose back to ids-major, then the DequantizeLinear the quantizer emitted,
now with the LM head's scale and zero point. The weight writer stores equal bytes once.
"""

from __future__ import annotations

import onnx
from onnx import helper, shape_inference

QUANTIZED, SCALE, ZERO_POINT = "_quantized", "_scale", "_zero_point"


def lm_head_table(lm_head: onnx.ModelProto, vocab_size: int) -> list[onnx.TensorProto]:
    """The LM head's quantized [C, V] matrix, its scale and its zero point (in that order)."""
    initializers = {t.name: t for t in lm_head.graph.initializer}
    for node in lm_head.graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"):
            weight = initializers.get(node.input[1])
            if weight is not None and list(weight.dims)[-1] == vocab_size:
                base = weight.name[:-len(QUANTIZED)]
                return [weight, initializers[base + SCALE], initializers[base + ZERO_POINT]]
    raise ValueError("the INT8 LM head has no quantized [C, V] matrix to share")


def share_token_table(model: onnx.ModelProto, table: str, shared: list[onnx.TensorProto]) -> int:
    """Point every quantized Gather of ``table`` (a [V, C] initializer name) in ``model`` at the
    shared [C, V] matrix; returns how many Gathers were rewritten. Edits ``model`` in place."""
    ranks = _ranks(model)
    initializers = {t.name: t for t in model.graph.initializer}
    matrix, scale, zero_point = shared
    rewritten = 0
    for index, node in reversed(list(enumerate(model.graph.node))):   # inserts shift later nodes
        if node.op_type != "Gather" or node.input[0] != table + QUANTIZED:
            continue
        gathered = node.output[0]
        columns = gathered + "_columns"
        node.input[0] = matrix.name
        node.output[0] = columns
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("axis", 1))               # (C, *ids)
        rank = ranks[node.input[1]] + 1
        transpose = helper.make_node("Transpose", [columns], [gathered], name=gathered + "_T",
                                     perm=list(range(1, rank)) + [0])           # (*ids, C)
        model.graph.node.insert(index + 1, transpose)
        for consumer in model.graph.node:
            if consumer.op_type == "DequantizeLinear" and consumer.input[0] == gathered:
                consumer.input[1], consumer.input[2] = scale.name, zero_point.name
        rewritten += 1
    if rewritten:
        for name in (table + QUANTIZED, table + SCALE, table + ZERO_POINT):
            if name in initializers:
                model.graph.initializer.remove(initializers[name])
        present = {t.name for t in model.graph.initializer}
        model.graph.initializer.extend(t for t in shared if t.name not in present)
    return rewritten


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every graph input and inferred intermediate value."""
    inferred = shape_inference.infer_shapes(model)
    values = list(inferred.graph.input) + list(inferred.graph.value_info)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values
            if v.type.tensor_type.HasField("shape")}
