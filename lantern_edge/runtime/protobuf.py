"""The few ONNX protobuf writes the runtime needs, without the onnx package (which the runtime
may not import): encode a small graph (device_kv.py's KV write graph), and give a block graph a
variable number of stored KV slots (pool.py's batched decode). Reading goes through
graph_proto.py's field reader.

Wire format: each field is a varint key (field number << 3 | wire type) and a value: a varint
(type 0), 8 bytes (1), a length-prefixed payload (2: strings, bytes, messages, packed arrays)
or 4 bytes (5).
"""

from __future__ import annotations

import struct

from .graph_proto import read_varint, wire_fields

FLOAT, INT64 = 1, 7                       # onnx TensorProto.DataType
# field numbers (onnx.proto3)
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT = 1, 5, 11
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
ATTR_NAME, ATTR_F, ATTR_I, ATTR_INTS, ATTR_TYPE = 1, 2, 3, 8, 20     # AttributeProto fields
ATTR_FLOAT, ATTR_INT = 1, 2                                          # AttributeProto.type
TENSOR_DIMS, TENSOR_TYPE, TENSOR_INT64, TENSOR_NAME, TENSOR_RAW = 1, 2, 7, 8, 9
VALUE_NAME, VALUE_TYPE = 1, 2


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def int_field(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def bytes_field(field: int, payload: bytes | str) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def value_info(name: str, elem_type: int, dims: list[str | int]) -> bytes:
    """ValueInfoProto of a tensor; str dims are symbolic (dim_param), int dims fixed."""
    shape = b"".join(bytes_field(1, bytes_field(2, d) if isinstance(d, str) else int_field(1, d))
                     for d in dims)
    tensor = int_field(1, elem_type) + bytes_field(2, shape)           # TypeProto.Tensor
    return bytes_field(VALUE_NAME, name) + bytes_field(VALUE_TYPE, bytes_field(1, tensor))


def node(op: str, inputs: list[str], outputs: list[str], name: str | None = None,
         domain: str = "", ints: dict[str, int] | None = None,
         floats: dict[str, float] | None = None) -> bytes:
    """NodeProto; name: f"{op}_{first output}" unless given; int and float attributes (ints
    non-negative)."""
    attributes = [bytes_field(ATTR_NAME, key) + int_field(ATTR_I, value)
                  + int_field(ATTR_TYPE, ATTR_INT) for key, value in (ints or {}).items()]
    attributes += [bytes_field(ATTR_NAME, key) + varint(ATTR_F << 3 | 5)      # fixed32
                   + struct.pack("<f", value) + int_field(ATTR_TYPE, ATTR_FLOAT)
                   for key, value in (floats or {}).items()]
    return (b"".join(bytes_field(NODE_INPUT, i) for i in inputs)
            + b"".join(bytes_field(NODE_OUTPUT, o) for o in outputs)
            + bytes_field(NODE_NAME, name or f"{op}_{outputs[0]}") + bytes_field(NODE_OP_TYPE, op)
            + b"".join(bytes_field(NODE_ATTRIBUTE, a) for a in attributes)
            + (bytes_field(NODE_DOMAIN, domain) if domain else b""))


def tensor(name: str, elem_type: int, dims: list[int], raw: bytes) -> bytes:
    """TensorProto holding raw little-endian data."""
    return (b"".join(int_field(TENSOR_DIMS, d) for d in dims) + int_field(TENSOR_TYPE, elem_type)
            + bytes_field(TENSOR_NAME, name) + bytes_field(TENSOR_RAW, raw))


# --- reading (graph_proto.py's reader) -------------------------------------------------------------

def fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """The (field, wire type, value) of a message, in order; value: int or bytes."""
    return [(number, wire, value if wire == 0 else bytes(value))
            for number, wire, value in wire_fields(buf)]


def encode(message: list[tuple[int, int, int | bytes]]) -> bytes:
    parts = []
    for field, wire, value in message:
        if wire == 0:
            parts.append(int_field(field, value))
        elif wire == 2:
            parts.append(bytes_field(field, value))
        else:
            parts.append(varint(field << 3 | wire) + value)
    return b"".join(parts)


def _strings(message, field: int) -> list[str]:
    return [v.decode() for f, w, v in message if f == field and w == 2]


def repeated_ints(message, number: int) -> list[int]:
    """A repeated int64 field of a message (fields), packed or not, signed."""
    values = []
    for field, wire, value in message:
        if field != number:
            continue
        if wire == 0:
            values.append(value)
        else:                                        # packed
            pos = 0
            while pos < len(value):
                item, pos = read_varint(value, pos)
                values.append(item)
    return [v - (1 << 64) if v >= 1 << 63 else v for v in values]


def _int64s(tensor) -> list[int]:
    raw = [v for f, _, v in tensor if f == TENSOR_RAW]
    return (list(struct.unpack(f"<{len(raw[0]) // 8}q", raw[0])) if raw
            else repeated_ints(tensor, TENSOR_INT64))


def stored_slots_variable(model: bytes, stored: int, inputs=("past_key", "past_value"),
                          slots_input: str = "stored_slots") -> bytes:
    """A block or mc_step graph whose KV inputs hold any number of stored slots.

    The exported graphs fix the stored-slot axis (axis 1 of past_key/past_value) at K = W + G,
    and split the softmax over [stored | new] at a constant K. Here that axis becomes symbolic
    and the constant (an int64 [1] initializer equal to K, read only by Slice nodes) a graph
    input named `slots_input`, so one call can attend over several sequences' stored slots
    laid side by side (pool.py), each query masked to its own sequence by attn_bias.

    Raises:
        ValueError: the graph does not have that shape (no such constant, or it has other uses).
    """
    model_fields = fields(model)
    graph_at = next((k for k, (f, _, _) in enumerate(model_fields) if f == MODEL_GRAPH), None)
    if graph_at is None:
        raise ValueError("no graph in the model")
    graph = fields(model_fields[graph_at][2])
    nodes = [fields(v) for f, _, v in graph if f == GRAPH_NODE]
    constants = set()
    for f, _, v in graph:
        if f == GRAPH_INITIALIZER:
            tensor = fields(v)
            kind = [x for g, _, x in tensor if g == TENSOR_TYPE]
            if kind == [INT64] and _int64s(tensor) == [stored]:
                constants.add(_strings(tensor, TENSOR_NAME)[0])
    users = {op: [] for op in ("Slice", "other")}
    for n in nodes:
        op = _strings(n, NODE_OP_TYPE)[0]
        for name in _strings(n, NODE_INPUT):
            if name in constants:
                users["Slice" if op == "Slice" else "other"].append(name)
    if len(constants) != 1 or users["other"] or not users["Slice"]:
        raise ValueError(f"the graph does not split attention at one constant K={stored} "
                         f"read only by Slice nodes (found {sorted(constants)})")
    constant = constants.pop()
    out = []
    for f, w, v in graph:
        if f == GRAPH_INITIALIZER and _strings(fields(v), TENSOR_NAME) == [constant]:
            continue
        if f == GRAPH_NODE:
            n = fields(v)
            v = encode([(g, x, slots_input.encode() if g == NODE_INPUT and x == 2
                         and y == constant.encode() else y) for g, x, y in n])
        if f == GRAPH_INPUT and _strings(fields(v), VALUE_NAME)[0] in inputs:
            v = _symbolic_axis(v, 1, "stored")
        out.append((f, w, v))
    out.append((GRAPH_INPUT, 2, value_info(slots_input, INT64, [1])))
    model_fields[graph_at] = (MODEL_GRAPH, 2, encode(out))
    return encode(model_fields)


def _symbolic_axis(value_info_bytes: bytes, axis: int, name: str) -> bytes:
    """ValueInfoProto with dimension `axis` of its tensor shape replaced by dim_param name."""
    info = fields(value_info_bytes)

    def edit(message, path):
        field = path[0]
        out, seen = [], 0
        for f, w, v in message:
            if f == field:
                if len(path) == 1:
                    if seen == axis:
                        v = bytes_field(2, name)
                    seen += 1
                else:
                    v = encode(edit(fields(v), path[1:]))
            out.append((f, w, v))
        return out
    # ValueInfo.type -> TypeProto.tensor_type -> Tensor.shape -> Shape.dim
    return encode(edit(info, [VALUE_TYPE, 1, 2, 1]))
