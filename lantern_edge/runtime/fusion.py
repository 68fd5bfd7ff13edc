"""The cheap pass as one graph, composed at load time from the verified graph bytes.

At decode a token's cheap pass is embed -> every (block, iteration) of `steps_base` in the
model's recursion order (input injection where the model injects) -> lm_head, and on the
adaptive path the uncertainty head: six to eight session calls of a few microseconds each, plus
the Python between them. `cheap_pass_graph` splices those graphs into one ModelProto, so that a
token costs one call (bindings.py's FusedPass runs it). Nothing is re-exported: the existing
artifacts (the shipped model included) gain it when they load.

Splicing, on the protobuf wire format (the runtime may not import onnx):
- every node of an instance (one (block, iteration), or embed, inject, lm_head, uncertainty)
  is copied with its intermediate values and its name prefixed by the instance, so the
  iterations of one block do not collide;
- initializers keep their names and are stored once: iterations of a block read the same
  weights (one copy in the session), and a tensor that several graphs share (the embedding,
  which embed, lm_head and uncertainty all read) is kept once. Two graphs that give one name
  different tensors would be a conflict; the later one's gets a per-graph prefix instead;
- the external data (weights.bin) is referenced by the same locations, so the session takes it
  from the verified buffers like any other (sessions.py).
The fused graph computes exactly the nodes the separate calls compute, on the same inputs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .graph_proto import ProtoError
from .protobuf import (FLOAT, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_NODE, INT64, MODEL_GRAPH,
                       NODE_ATTRIBUTE, NODE_INPUT, NODE_NAME, NODE_OP_TYPE, NODE_OUTPUT,
                       TENSOR_NAME, VALUE_NAME, bytes_field, encode, fields, int_field, node,
                       tensor, value_info)

MODEL_IR, MODEL_OPSET = 1, 8
GRAPH_OUTPUT, GRAPH_VALUE_INFO, GRAPH_SPARSE = 12, 13, 15
ATTR_G, ATTR_GRAPHS = 6, 11                               # AttributeProto: g, graphs
PROBABILITIES = "probabilities"
# what reading or splicing graph bytes raises when they are not what the exporter writes
SPLICE_ERRORS = (ProtoError, KeyError, IndexError, StopIteration, UnicodeDecodeError,
                 struct.error)
OPSET_DOMAIN, OPSET_VERSION = 1, 2


def _text(message, number: int) -> list[str]:
    return [bytes(v).decode() for f, w, v in message if f == number and w == 2]


def _renamed(message, number: int, name: str) -> bytes:
    """message (fields) with its string field `number` replaced by name."""
    return encode([(f, w, name.encode() if f == number else v) for f, w, v in message])


@dataclass
class Part:
    """One source graph, read once: its nodes, initializers and I/O (wire-format fields)."""
    label: str
    nodes: list = field(default_factory=list)
    initializers: dict[str, bytes] = field(default_factory=dict)
    inputs: dict[str, list] = field(default_factory=dict)          # name -> ValueInfo fields
    outputs: dict[str, list] = field(default_factory=dict)
    opsets: dict[str, int] = field(default_factory=dict)
    ir_version: int = 0
    dequantized: set[str] = field(default_factory=set)     # initializers read by DequantizeLinear

    @classmethod
    def read(cls, label: str, model: bytes) -> Part:
        part = cls(label)
        graph = None
        for number, wire, value in fields(model):
            if number == MODEL_GRAPH:
                graph = value
            elif number == MODEL_IR and wire == 0:
                part.ir_version = value
            elif number == MODEL_OPSET:
                opset = fields(value)
                domain = (_text(opset, OPSET_DOMAIN) or [""])[0]
                part.opsets[domain] = next(v for f, w, v in opset if f == OPSET_VERSION)
        if graph is None:
            raise ValueError(f"{label}: no graph in the model")
        for number, _, value in fields(graph):
            if number == GRAPH_NODE:
                message = fields(value)
                if any(f == NODE_ATTRIBUTE and any(g in (ATTR_G, ATTR_GRAPHS)
                                                   for g, _, _ in fields(v))
                       for f, _, v in message):
                    raise ValueError(f"{label}: a node with a subgraph cannot be spliced")
                part.nodes.append(message)
                if _text(message, NODE_OP_TYPE) == ["DequantizeLinear"]:
                    part.dequantized.update(_text(message, NODE_INPUT))
            elif number == GRAPH_INITIALIZER:
                part.initializers[_text(fields(value), TENSOR_NAME)[0]] = value
            elif number == GRAPH_SPARSE:
                raise ValueError(f"{label}: sparse initializers cannot be spliced")
            elif number in (GRAPH_INPUT, GRAPH_OUTPUT):
                info = fields(value)
                (part.inputs if number == GRAPH_INPUT else part.outputs)[
                    _text(info, VALUE_NAME)[0]] = info
        return part


class Composer:
    """A graph being spliced together from Parts (see the module docstring)."""

    def __init__(self):
        self.nodes: list[bytes] = []
        self.initializers: dict[str, bytes] = {}
        self.inputs: list[bytes] = []
        self.outputs: list[bytes] = []
        self.opsets: dict[str, int] = {}
        self.ir_version = 0
        self._names: dict[str, dict[str, str]] = {}    # part label -> initializer renames

    def _initializer_names(self, part: Part) -> dict[str, str]:
        if part.label not in self._names:
            names = {}
            for name, tensor in part.initializers.items():
                if name in part.dequantized:            # per instance (add)
                    continue
                kept = self.initializers.get(name)
                if kept is not None and kept != tensor:        # same name, other tensor
                    name_in = f"{part.label}/{name}"
                    tensor = _renamed(fields(tensor), TENSOR_NAME, name_in)
                else:
                    name_in = name
                self.initializers.setdefault(name_in, tensor)
                names[name] = name_in
            for domain, version in part.opsets.items():
                if self.opsets.setdefault(domain, version) != version:
                    raise ValueError(f"{part.label} imports {domain or 'ai.onnx'} opset "
                                     f"{version}, another graph {self.opsets[domain]}")
            self.ir_version = max(self.ir_version, part.ir_version)
            self._names[part.label] = names
        return self._names[part.label]

    def add(self, part: Part, prefix: str, inputs: dict[str, str],
            outputs: dict[str, str] | None = None) -> dict[str, str]:
        """Splice one instance of part: its graph inputs read the values named in `inputs`
        (every input must be given), its graph outputs get the names in `outputs` (the others
        `prefix/name`). Returns output name -> its name in the composed graph."""
        missing = sorted(set(part.inputs) - set(inputs))
        if missing:
            raise ValueError(f"{part.label}: inputs {missing} are not connected")
        names = {**{n: f"{prefix}/{n}" for n in part.outputs}, **(outputs or {})}
        weights = dict(self._initializer_names(part))
        for name in sorted(part.dequantized & part.initializers.keys()):   # reproducible bytes
            # a quantized weight is read once per instance: ORT fuses each DequantizeLinear
            # into the MatMul it feeds (MatMulNBits) only when it has that one consumer, and the
            # separate graphs get that kernel, so the fused graph must get it too (bitwise
            # parity); its float form is then made per instance, the INT8 bytes stay shared
            weights[name] = f"{prefix}/{name}"
            self.initializers[weights[name]] = _renamed(fields(part.initializers[name]),
                                                        TENSOR_NAME, weights[name])

        def value(name: str) -> str:
            if name in inputs:
                return inputs[name]
            if name in weights:
                return weights[name]
            if name in names or not name:
                return names.get(name, name)
            return f"{prefix}/{name}"

        for original in part.nodes:
            edited = []
            for f, w, v in original:
                if f in (NODE_INPUT, NODE_OUTPUT, NODE_NAME) and w == 2:
                    text = bytes(v).decode()
                    v = (f"{prefix}/{text}" if f == NODE_NAME else value(text)).encode()
                edited.append((f, w, v))
            self.nodes.append(encode(edited))
        return {n: names[n] for n in part.outputs}

    def node(self, op: str, inputs: list[str], output: str, **attributes: int) -> None:
        """A node of the default domain; attributes: non-negative ints."""
        self.nodes.append(node(op, inputs, [output], f"fused/{output}", ints=attributes))

    def probabilities(self, logits: str, output: str) -> None:
        """output [S, T, V] = the softmax over the vocabulary of logits [S, T, V], from which
        the controller reads a chosen token's probability. ORT's softmax (vectorized) costs
        ~3 us per row; NumPy's 15 us, ReduceLogSumExp's (scalar exp) 46 us."""
        self.node("Softmax", [logits], output, axis=2)

    def int64_constant(self, name: str, values: list[int]) -> str:
        self.initializers[name] = tensor(name, INT64, [len(values)],
                                         struct.pack(f"<{len(values)}q", *values))
        return name

    def input_like(self, part: Part, name: str, as_name: str | None = None) -> str:
        as_name = as_name or name
        self.inputs.append(_renamed(part.inputs[name], VALUE_NAME, as_name))
        return as_name

    def output(self, info: list, name: str) -> None:
        self.outputs.append(_renamed(info, VALUE_NAME, name))

    def model(self, name: str) -> bytes:
        graph = (b"".join(bytes_field(GRAPH_NODE, n) for n in self.nodes)
                 + bytes_field(2, name)
                 + b"".join(bytes_field(GRAPH_INITIALIZER, t) for t in self.initializers.values())
                 + b"".join(bytes_field(GRAPH_INPUT, i) for i in self.inputs)
                 + b"".join(bytes_field(GRAPH_OUTPUT, o) for o in self.outputs))
        opsets = b"".join(bytes_field(MODEL_OPSET, (bytes_field(OPSET_DOMAIN, d) if d else b"")
                                      + int_field(OPSET_VERSION, v))
                          for d, v in self.opsets.items())
        return (int_field(MODEL_IR, self.ir_version) + bytes_field(2, "lantern-edge")
                + bytes_field(MODEL_GRAPH, graph) + opsets)


def probabilities_info(vocab: int) -> list:
    return fields(value_info(PROBABILITIES, FLOAT, ["samples", "tokens", vocab]))


def lm_head_graph(graph: bytes, vocab: int) -> bytes:
    """The LM head graph with a second output, `probabilities` [S, T, V]: the softmax of its
    logits (Composer.probabilities).

    Raises:
        ValueError: the graph cannot be spliced (the runtime then keeps the graph as it is).
    """
    try:
        part = Part.read("lm_head", graph)
        g = Composer()
        return _ending_in_lm_head(g, part, g.input_like(part, "hidden"), vocab, "lantern_lm_head")
    except SPLICE_ERRORS as e:
        raise ValueError(f"the LM head graph cannot be edited ({e!r})") from e


def mc_pass_graph(mc_step: bytes, lm_head: bytes, vocab: int) -> bytes:
    """The MC-dropout step and the LM head as one graph: mc_step's inputs -> logits [S, T, V]
    and probabilities [S, T, V] (as lm_head_graph's). A high-band token's samples then cost
    one call instead of two, and their softmax is ONNX Runtime's (Composer.probabilities).

    Raises:
        ValueError: the graphs cannot be spliced (the runtime then runs them one after the
            other).
    """
    try:
        mc, head = Part.read("mc_step", mc_step), Part.read("lm_head", lm_head)
        g = Composer()
        hidden = g.add(mc, "mc_step", {n: g.input_like(mc, n) for n in mc.inputs})["hidden_out"]
        return _ending_in_lm_head(g, head, hidden, vocab, "lantern_mc_pass")
    except SPLICE_ERRORS as e:
        raise ValueError(f"the MC step and the LM head cannot be spliced ({e!r})") from e


def _ending_in_lm_head(g: Composer, head: Part, hidden: str, vocab: int, name: str) -> bytes:
    """The model of g with the LM head on `hidden`, its outputs logits and their softmax."""
    logits = g.add(head, "lm_head", {"hidden": hidden}, {"logits": "logits"})["logits"]
    g.probabilities(logits, PROBABILITIES)
    g.output(head.outputs["logits"], "logits")
    g.output(probabilities_info(vocab), PROBABILITIES)
    return g.model(name)


@dataclass
class FusedGraph:
    """The composed model and where the host finds each value: `outputs` maps a role to the
    graph output that holds it (several roles may share one output)."""
    model: bytes
    outputs: dict[str, str]
    kv: list[tuple[int, int]]               # (block, iteration) in run order
    signals: bool
    # the blocks attend with GroupQueryAttention on a shared KV buffer (attention.py): inputs
    # past_key/past_value.{b}.{i} [1, H, K + 1, D], outputs present_key/present_value.{b}.{i}
    # bound to the same memory, the new rows written into the scratch slot K
    shared_kv: bool = False


def cheap_pass_graph(config, graphs: dict[str, bytes | list[bytes]],
                     signals: bool) -> FusedGraph:
    """The one-token cheap pass of a model as one graph.

    graphs: the verified bytes of "embed", "blocks" (a list), "lm_head", "uncertainty" and,
    with input injection, "inject". signals: append the uncertainty head (inputs `weights`,
    and the outputs entropy, p_max, dispersion, score, and p_benefit with a depth probe).

    Inputs: input_ids [1], positions [1], attn_bias [1, K + 1], past_key.{b}.{i} and
    past_value.{b}.{i} [H, K, D] for every (b, i) of the cheap pass (and weights [3]); with
    blocks from attention.shared_kv_block, [1, H, K + 1, D] (FusedGraph.shared_kv).
    Outputs (roles): logits, probabilities (as lm_head_graph's); key.{b}.{i}, value.{b}.{i}, or
    present_key.{b}.{i}, present_value.{b}.{i} (and halt.{b}.{i} with halting heads) of every
    (b, i); "final" (the last hidden state),
    "resume" (what Sequence.deepen continues from), "mc_input" (the input of the last block's
    last iteration), "embedded".

    Raises:
        ValueError: the graphs cannot be spliced (the runtime then keeps the separate calls).
    """
    try:
        return _cheap_pass_graph(config, graphs, signals)
    except SPLICE_ERRORS as e:
        raise ValueError(f"the graphs cannot be spliced into one cheap pass ({e!r})") from e


def _cheap_pass_graph(config, graphs, signals: bool) -> FusedGraph:
    cfg = config
    embed = Part.read("embed", graphs["embed"])
    blocks = [Part.read(f"block{b}", g) for b, g in enumerate(graphs["blocks"])]
    lm_head = Part.read("lm_head", graphs["lm_head"])
    inject = Part.read("inject", graphs["inject"]) if cfg.input_injection else None
    g = Composer()
    ids = g.input_like(embed, "input_ids")
    positions = g.input_like(embed, "positions")
    bias = g.input_like(blocks[0], "attn_bias")
    x = embedded = g.add(embed, "embed", {"input_ids": ids, "positions": positions})["hidden"]
    roles = {"embedded": embedded}
    depth, last = cfg.steps_base, cfg.num_blocks - 1
    order = cfg.schedule(depth)
    out_info = {}
    for b, i in order:
        if cfg.injects(b, i):
            x = g.add(inject, f"inject.{b}.{i}", {"hidden": x, "embedded": embedded})["hidden_out"]
        if (b, i) == (last, depth - 1):
            roles["mc_input"] = x
        part = blocks[b]
        kv = {"past_key": f"past_key.{b}.{i}", "past_value": f"past_value.{b}.{i}"}
        for name, as_name in kv.items():
            g.input_like(part, name, as_name)
        exported = {n: f"{n}.{b}.{i}" for n in ("key", "value", "halt", "present_key",
                                                 "present_value") if n in part.outputs}
        out = g.add(part, f"block{b}.{i}", {"hidden": x, "positions": positions,
                                            "attn_bias": bias, **kv}, exported)
        for name, as_name in exported.items():
            out_info[as_name] = (part.outputs[name], as_name)
        x = out["hidden_out"]
        if b == 0 and i == depth - 1 and cfg.recursion_order == "sequence":
            roles["resume"] = x
    roles["final"] = x
    roles.setdefault("resume", x)                      # cycle order: the final state
    roles["logits"] = g.add(lm_head, "lm_head", {"hidden": x})["logits"]
    g.probabilities(roles["logits"], PROBABILITIES)
    roles[PROBABILITIES] = PROBABILITIES
    infos = {"embedded": embed.outputs["hidden"], "logits": lm_head.outputs["logits"],
             "final": blocks[last].outputs["hidden_out"],
             PROBABILITIES: probabilities_info(cfg.vocab_size)}
    for role in ("mc_input", "resume"):
        infos[role] = infos["final"]
    if signals:
        head = Part.read("uncertainty", graphs["uncertainty"])
        # the head reads rows [N, V] (and [N, C]); one token is N = 1
        rows = g.int64_constant("fused/rows_of_logits", [-1, cfg.vocab_size])
        g.node("Reshape", [roles["logits"], rows], "fused/logit_rows")
        feeds = {"logits": "fused/logit_rows", "weights": g.input_like(head, "weights")}
        if "hidden" in head.inputs:
            width = g.int64_constant("fused/rows_of_hidden", [-1, cfg.hidden_size])
            g.node("Reshape", [x, width], "fused/hidden_rows")
            feeds["hidden"] = "fused/hidden_rows"
        out = g.add(head, "uncertainty", feeds, {n: n for n in head.outputs})
        for name in out:
            roles[name] = name
            infos[name] = head.outputs[name]
    for (info, name) in out_info.values():
        roles[name] = name
        infos[name] = info
    declared = set()
    for role, name in roles.items():
        if name not in declared:
            declared.add(name)
            g.output(infos[role], name)
    return FusedGraph(g.model("lantern_cheap_pass"), roles, order, signals,
                      "present_key" in blocks[0].outputs)

