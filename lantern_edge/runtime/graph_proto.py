"""What the runtime must know about an ONNX file before ONNX Runtime sees it, read from its bytes.

The runtime may not import the onnx package, so this walks the protobuf wire format itself,
following only the fields listed below (field numbers from onnx.proto3), and skips the rest:
- every external-data `location` of every tensor: graph initializers, sparse initializers,
  tensors in node attributes, and the same inside subgraphs and functions (so no location
  reaches ONNX Runtime unchecked);
- the graph's input and output shapes (a dim is an int, or its symbolic name as a str);
- initializer names (block graphs name theirs `block{b}.`);
- metadata_props (model.onnx carries a copy of the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ProtoError(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


@dataclass
class GraphInfo:
    inputs: dict[str, list[int | str]] = field(default_factory=dict)
    outputs: dict[str, list[int | str]] = field(default_factory=dict)
    initializers: list[str] = field(default_factory=list)
    locations: set[str] = field(default_factory=set)      # external-data files referenced
    metadata: dict[str, str] = field(default_factory=dict)


# message field numbers (onnx.proto3)
MODEL_GRAPH, MODEL_METADATA, MODEL_FUNCTIONS = 7, 14, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_SPARSE = 1, 5, 11, 12, 15
NODE_ATTRIBUTE, FUNCTION_NODE = 5, 7
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_NAME, TENSOR_EXTERNAL = 8, 13


def read_varint(buf, pos: int) -> tuple[int, int]:
    """(value, next position) of the varint at buf[pos]."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ProtoError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def wire_fields(buf):
    """(field number, wire type, value) of each field of a message (bytes or memoryview): an
    int for varints, a memoryview slice otherwise. The one protobuf reader of the runtime
    (protobuf.py edits graphs with it)."""
    if not isinstance(buf, memoryview):
        if not isinstance(buf, (bytes, bytearray)):
            raise ProtoError("a field that must be a message is a number")
        buf = memoryview(buf)
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > len(buf):
                raise ProtoError("a field runs past the end of the file (truncated?)")
            value, pos = buf[pos:pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise ProtoError("a field runs past the end of the file (truncated?)")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ProtoError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _fields(buf: memoryview):
    """(field number, value) of each field: an int for varints, a memoryview otherwise."""
    if not isinstance(buf, memoryview):
        raise ProtoError("a field that must be a message is a number")
    for number, _, value in wire_fields(buf):
        yield number, value


def _text(value) -> str:
    try:
        return bytes(value).decode("utf-8")
    except (TypeError, UnicodeDecodeError) as e:
        raise ProtoError("a name is not UTF-8 text") from e


def _entry(buf: memoryview) -> tuple[str, str]:
    pairs = dict(_fields(buf))
    return _text(pairs.get(1, b"")), _text(pairs.get(2, b""))


def _tensor(buf: memoryview, info: GraphInfo, initializer: bool = False) -> None:
    for number, value in _fields(buf):
        if number == TENSOR_EXTERNAL:
            key, location = _entry(value)
            if key == "location":
                info.locations.add(location)
        elif number == TENSOR_NAME and initializer:
            info.initializers.append(_text(value))


def _sparse(buf: memoryview, info: GraphInfo) -> None:
    for number, value in _fields(buf):
        if number in (SPARSE_VALUES, SPARSE_INDICES):
            _tensor(value, info)


def _shape(buf: memoryview) -> list[int | str]:
    """ValueInfoProto -> dims of its tensor type (TypeProto.tensor_type.shape.dim)."""
    dims: list[int | str] = []
    for number, type_proto in _fields(buf):
        if number != 2:
            continue
        for n1, tensor_type in _fields(type_proto):
            if n1 != 1:
                continue
            for n2, shape in _fields(tensor_type):
                if n2 != 2:
                    continue
                for n3, dim in _fields(shape):
                    if n3 == 1:
                        parts = dict(_fields(dim))
                        dims.append(parts[1] if 1 in parts else _text(parts.get(2, b"")))
    return dims


def _name(buf: memoryview) -> str:
    return next((_text(v) for n, v in _fields(buf) if n == 1), "")


def _nodes(buf: memoryview, info: GraphInfo) -> None:
    """A NodeProto: tensors and subgraphs in its attributes."""
    for number, attribute in _fields(buf):
        if number != NODE_ATTRIBUTE:
            continue
        for n, value in _fields(attribute):
            if n in (ATTR_T, ATTR_TENSORS):
                _tensor(value, info)
            elif n in (ATTR_SPARSE, ATTR_SPARSES):
                _sparse(value, info)
            elif n in (ATTR_G, ATTR_GRAPHS):
                _graph(value, info, top=False)


def _graph(buf: memoryview, info: GraphInfo, top: bool) -> None:
    for number, value in _fields(buf):
        if number == GRAPH_NODE:
            _nodes(value, info)
        elif number == GRAPH_INITIALIZER:
            _tensor(value, info, initializer=top)
        elif number == GRAPH_SPARSE:
            _sparse(value, info)
        elif top and number == GRAPH_INPUT:
            info.inputs[_name(value)] = _shape(value)
        elif top and number == GRAPH_OUTPUT:
            info.outputs[_name(value)] = _shape(value)


def read_graph(data: bytes) -> GraphInfo:
    """GraphInfo of a serialized ModelProto; ProtoError when the bytes are not one."""
    info = GraphInfo()
    seen_graph = False
    for number, value in _fields(memoryview(data)):
        if number == MODEL_GRAPH and isinstance(value, memoryview):
            _graph(value, info, top=True)
            seen_graph = True
        elif number == MODEL_METADATA and isinstance(value, memoryview):
            key, text = _entry(value)
            info.metadata[key] = text
        elif number == MODEL_FUNCTIONS and isinstance(value, memoryview):
            for n, node in _fields(value):
                if n == FUNCTION_NODE:
                    _nodes(node, info)
    if not seen_graph:
        raise ProtoError("no graph in the file")
    return info
