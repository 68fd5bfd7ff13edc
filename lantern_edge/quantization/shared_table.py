"""One INT8 copy of the tied token embedding for the embed, LM head and uncertainty graphs.

ONNX Runtime's dynamic quantizer gives the LM head an int8 [C, V] matrix (the transposed
embedding) and every Gather of the embedding its own uint8 [V, C] table: two copies of the
largest tensor of a small model (1 MB each at the default shape, a quarter of the INT8 weights).
Here all three graphs read one int8 [V, C] table (the LM head's values, rows by token):
- the LM head reads it through a Transpose of the constant, which ONNX Runtime folds when it
  creates the session, so its integer MatMul is unchanged;
- the Gathers read rows of it (axis 0: a Gather along axis 1 of the [C, V] matrix cost 50 us
  for the uncertainty head's top-k rows), then the DequantizeLinear the quantizer emitted, now
  with the LM head's scale and zero point.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

QUANTIZED, SCALE, ZERO_POINT = "_quantized", "_scale", "_zero_point"
SHARED_TABLE = "token_embedding_int8"        # [V, C], shared by the three graphs


def lm_head_table(lm_head: onnx.ModelProto, vocab_size: int) -> list[onnx.TensorProto]:
    """Make the LM head read its quantized matrix as Transpose(one [V, C] int8 table).

    Returns that table, its scale and its zero point, for share_token_table. Edits ``lm_head``.
    """
    initializers = {t.name: t for t in lm_head.graph.initializer}
    for node in lm_head.graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"):
            weight = initializers.get(node.input[1])
            if weight is not None and list(weight.dims) == [weight.dims[0], vocab_size]:
                base = weight.name[:-len(QUANTIZED)]
                rows = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), SHARED_TABLE)
                lm_head.graph.initializer.remove(weight)
                lm_head.graph.initializer.append(rows)
                lm_head.graph.node.insert(0, helper.make_node(
                    "Transpose", [SHARED_TABLE], [weight.name], name=SHARED_TABLE + "_T",
                    perm=[1, 0]))
                return [rows, initializers[base + SCALE], initializers[base + ZERO_POINT]]
    raise ValueError("the INT8 LM head has no quantized [C, V] matrix to share")


def share_token_table(model: onnx.ModelProto, table: str, shared: list[onnx.TensorProto]) -> int:
    """Point every quantized Gather of ``table`` (a [V, C] initializer name) in ``model`` at the
    shared table; returns how many Gathers were rewritten. Edits ``model`` in place."""
    rows, scale, zero_point = shared
    gathers = [n for n in model.graph.node
               if n.op_type == "Gather" and n.input[0] == table + QUANTIZED]
    for node in gathers:
        node.input[0] = rows.name
        for consumer in model.graph.node:
            if consumer.op_type == "DequantizeLinear" and consumer.input[0] == node.output[0]:
                consumer.input[1], consumer.input[2] = scale.name, zero_point.name
    if gathers:
        own = {table + QUANTIZED, table + SCALE, table + ZERO_POINT}
        for tensor in [t for t in model.graph.initializer if t.name in own]:
            model.graph.initializer.remove(tensor)
        present = {t.name for t in model.graph.initializer}
        model.graph.initializer.extend(t for t in shared if t.name not in present)
    return len(gathers)


def lm_head_nbits_table(lm_head: onnx.ModelProto, vocab_size: int) -> list[onnx.TensorProto]:
    """nbits mode: the LM head's MatMulNBits table of the tied embedding, uint8 [V, C / block,
    block] (rows by token: each token's embedding row in blocks, zero point 128) and its scales
    [V * C / block]. Returns both, for share_nbits_table."""
    initializers = {t.name: t for t in lm_head.graph.initializer}
    for node in lm_head.graph.node:
        if node.op_type == "MatMulNBits":
            table, scales = initializers[node.input[1]], initializers[node.input[2]]
            if table.dims[0] == vocab_size:
                return [table, scales]
    raise ValueError("the nbits LM head has no MatMulNBits [V, ...] table to share")


def share_nbits_table(model: onnx.ModelProto, table: str, shared: list[onnx.TensorProto]) -> int:
    """Rewrite every Gather of ``table`` + its DequantizeLinear (as quantize_dynamic left them)
    to gather rows of the LM head's MatMulNBits table instead: the rows' blocks and their
    scales, (q - 128) * scale, reshaped to [..., C]. Returns how many were rewritten."""
    from onnx import shape_inference

    rows, scales = shared
    vocab, blocks, block = (int(d) for d in rows.dims)
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in list(shape_inference.infer_shapes(model).graph.value_info)
             + list(model.graph.input)}
    gathers = [n for n in model.graph.node
               if n.op_type == "Gather" and n.input[0] == table + QUANTIZED]
    by_input = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    nodes = list(model.graph.node)
    scale_table = f"{scales.name}_by_token"
    for node in gathers:
        dequantize = by_input[node.output[0]]
        ids, out, tag = node.input[1], dequantize.output[0], node.name or node.output[0]
        rank = ranks[ids]
        new = [
            helper.make_node("Gather", [rows.name, ids], [f"{tag}/blocks"], name=f"{tag}/blocks"),
            helper.make_node("Gather", [scale_table, ids], [f"{tag}/scales"], name=f"{tag}/scales"),
            helper.make_node("Cast", [f"{tag}/blocks"], [f"{tag}/float"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Sub", [f"{tag}/float", "nbits_zero_point"], [f"{tag}/centred"]),
            helper.make_node("Mul", [f"{tag}/centred", f"{tag}/scales"], [f"{tag}/values"]),
            helper.make_node("Reshape", [f"{tag}/values", f"{tag}/shape"], [out]),
        ]
        model.graph.initializer.append(numpy_helper.from_array(
            np.array([0] * rank + [blocks * block], np.int64), f"{tag}/shape"))
        at = nodes.index(node)
        nodes[at:at + 1] = new
        nodes.remove(dequantize)
    if gathers:
        own = {table + QUANTIZED, table + SCALE, table + ZERO_POINT}
        for tensor in [t for t in model.graph.initializer if t.name in own]:
            model.graph.initializer.remove(tensor)
        model.graph.initializer.extend([
            rows,
            numpy_helper.from_array(numpy_helper.to_array(scales).reshape(vocab, blocks, 1),
                                    scale_table),
            numpy_helper.from_array(np.array(128, np.float32), "nbits_zero_point")])
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return len(gathers)
