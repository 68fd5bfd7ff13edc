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
