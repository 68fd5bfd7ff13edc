"""A block graph's attention as one GroupQueryAttention node on a KV buffer it shares.

The exported block computes attention for new tokens as 17 small nodes: transposes of q, k and
v, two score MatMuls (stored slots, new tokens), Concat, the bias Add, Softmax, two Slices, two
MatMuls with the values, Add, Transpose and Reshape. For the fused cheap pass (one token,
fusion.py) `shared_kv_block` replaces them with ONNX Runtime's GroupQueryAttention (com.microsoft),
which runs the same arithmetic in one kernel, parallel over heads, and writes the new key and
value in place into a KV buffer of K + 1 slots: the stored slots and the scratch slot of
kv_state.py, where the host picks the new row up. On the shipped fp32 model a token costs
about the same at one intra-op thread and up to 1.36x less at two, where ORT splits each of
the exported small nodes across its pool (benchmarks/bench_attention.py, docs/PERFORMANCE.md);
the logits agree with the exported attention to about 1e-5 (tests/test_fused.py).

The replacement is made only where the graph is the exporter's attention, checked by shape of
the graph, not by node names: the region between the rotated q/k and v and the attention
output has exactly the exporter's nodes, no scaling (the exporter folds 1/sqrt(d) into the q
weights), q heads before k heads. Anything else raises ValueError, and the fused pass keeps the
spliced attention. At load the engine also runs each rewritten block against its exported
graph on one random token (`check_shared_kv_block`): a graph with the exporter's nodes but
other arithmetic is refused there, by its difference.
"""

from __future__ import annotations

import struct
from collections import Counter

import numpy as np

from .fusion import SPLICE_ERRORS, Composer, Part, _text
from .protobuf import (ATTR_INTS, ATTR_NAME, FLOAT, INT64, NODE_ATTRIBUTE, NODE_INPUT,
                       NODE_OP_TYPE, NODE_OUTPUT, encode, fields, node, repeated_ints, tensor,
                       value_info)

INT32 = 6                                  # onnx TensorProto.DataType
CONTRIB = "com.microsoft"
# the exporter's attention for new tokens over stored slots (see the module docstring)
EXPORTED_ATTENTION = Counter({"Transpose": 5, "MatMul": 4, "Add": 2, "Slice": 2, "Split": 1,
                              "Concat": 1, "Softmax": 1, "Reshape": 1})
SOURCES = ("past_key", "past_value", "attn_bias")


def _perm(transpose) -> list[int]:
    """A Transpose node's perm attribute ([] without one)."""
    for f, _, v in transpose:
        if f == NODE_ATTRIBUTE:
            attribute = fields(v)
            if _text(attribute, ATTR_NAME) == ["perm"]:
                return repeated_ints(attribute, ATTR_INTS)
    return []


def _region(part: Part) -> tuple[str, str, str, set[int]]:
    """(rotated q/k value [B, T, 2H, D], v value [B, T, H, D], attention output [B, T, C], the
    node indices between them), or ValueError."""
    nodes = part.nodes
    ops = [(_text(n, NODE_OP_TYPE) or [""])[0] for n in nodes]
    inputs = [_text(n, NODE_INPUT) for n in nodes]
    outputs = [_text(n, NODE_OUTPUT) for n in nodes]
    producer = {name: k for k, names in enumerate(outputs) for name in names}
    consumers: dict[str, list[int]] = {}
    for k, names in enumerate(inputs):
        for name in names:
            consumers.setdefault(name, []).append(k)
    if not {"key", "value", *SOURCES} <= set(producer) | set(part.inputs):
        raise ValueError("no key/value outputs or KV inputs")
    split = producer.get("key")
    if split is None or ops[split] != "Split" or outputs[split][1:] != ["key"]:
        raise ValueError("the new key is not the second half of a Split (q heads first)")
    qk_t, v_t = producer.get(inputs[split][0]), producer.get("value")
    for k in (qk_t, v_t):
        if k is None or ops[k] != "Transpose" or _perm(nodes[k]) != [0, 2, 1, 3]:
            raise ValueError("q/k and v do not come from [B, T, heads, D] by one Transpose")
    qk, v = inputs[qk_t][0], inputs[v_t][0]
    sources = {qk, v, *SOURCES}
    downstream, todo = set(), [k for s in sources for k in consumers.get(s, [])]
    while todo:
        k = todo.pop()
        if k not in downstream:
            downstream.add(k)
            todo += [c for o in outputs[k] for c in consumers.get(o, [])]
    direct = {k for s in sources for k in consumers.get(s, [])}
    # a cut: a node whose ancestors below the sources take in every use of the sources and
    # pass nothing on but its one output (and the key/value graph outputs). The cuts are
    # nested (the attention in [B, H, T, D], its transpose, its [B, T, C] reshape, the output
    # projection...); the attention is the cut that holds exactly the exporter's nodes
    for k in sorted(downstream):
        region, todo = set(), [k]
        while todo:
            j = todo.pop()
            if j in downstream and j not in region:
                region.add(j)
                todo += [producer[i] for i in inputs[j] if i in producer]
        if len(outputs[k]) != 1 or not direct <= region:
            continue
        leaks = {o for j in region for o in outputs[j] for c in consumers.get(o, [])
                 if c not in region} - {outputs[k][0]}
        if leaks <= {"key", "value"} and Counter(ops[j] for j in region) == EXPORTED_ATTENTION:
            return qk, v, outputs[k][0], region
    raise ValueError("no part of the graph below the KV inputs is the exporter's attention")


def shared_kv_block(graph: bytes, stored: int, heads: int, head_dim: int) -> bytes:
    """The block graph with its attention as GroupQueryAttention, for one new token.

    Inputs: those of the block, with past_key/past_value [1, H, stored + 1, D] (the stored slots
    and the scratch slot last) and attn_bias [1, stored + 2], kv_state.py's row for that buffer
    (the scratch column masked, then the token's own). Outputs: hidden_out (and halt), and
    present_key/present_value, which must be bound to the memory of past_key/past_value: the
    kernel then writes the new token's key/value into the scratch slot in place.

    Raises:
        ValueError: the graph's attention is not the exporter's (module docstring), or the
            graph cannot be read.
    """
    try:
        return _shared_kv_block(graph, stored, heads, head_dim)
    except SPLICE_ERRORS as e:
        raise ValueError(f"the block graph cannot be rewritten ({e!r})") from e


def _shared_kv_block(graph: bytes, stored: int, heads: int, head_dim: int) -> bytes:
    part = Part.read("block", graph)
    qk, v, out, region = _region(part)
    slots, width = stored + 1, 3 * heads * head_dim
    constants = {"gqa.packed_shape": (INT64, [3], struct.pack("<3q", 0, 0, width)),
                 "gqa.bias_shape": (INT64, [4], struct.pack("<4q", 1, 1, 1, slots)),
                 "gqa.stored_start": (INT64, [1], struct.pack("<q", 0)),
                 "gqa.stored_end": (INT64, [1], struct.pack("<q", stored)),
                 "gqa.bias_axis": (INT64, [1], struct.pack("<q", 1)),
                 "gqa.self_bias": (FLOAT, [1, 1], struct.pack("<f", 0.0)),
                 "gqa.seqlens_k": (INT32, [1], struct.pack("<i", stored)),
                 "gqa.total_length": (INT32, [], struct.pack("<i", slots))}
    replacement = [
        node("Concat", [qk, v], ["gqa/qkv_heads"], "gqa/Concat", ints={"axis": 2}),
        node("Reshape", ["gqa/qkv_heads", "gqa.packed_shape"], ["gqa/qkv"], "gqa/Reshape"),
        # the bias row [stored slots | scratch slot | the token] becomes [stored | the token]:
        # the kernel puts the token in the scratch slot, and a token always sees itself
        node("Slice", ["attn_bias", "gqa.stored_start", "gqa.stored_end", "gqa.bias_axis"],
              ["gqa/stored_bias"], "gqa/BiasSlice"),
        node("Concat", ["gqa/stored_bias", "gqa.self_bias"], ["gqa/token_bias"],
              "gqa/BiasConcat", ints={"axis": 1}),
        node("Reshape", ["gqa/token_bias", "gqa.bias_shape"], ["gqa/bias"], "gqa/BiasReshape"),
        # the exporter folds 1/sqrt(D) into the q weights: scale 1
        node("GroupQueryAttention",
              ["gqa/qkv", "", "", "past_key", "past_value", "gqa.seqlens_k", "gqa.total_length",
               "", "", "", "gqa/bias"], [out, "present_key", "present_value"],
              "gqa/GroupQueryAttention", CONTRIB,
              ints={"num_heads": heads, "kv_num_heads": heads, "do_rotary": 0},
              floats={"scale": 1.0})]
    last = max(region)
    g = Composer()
    for k, original in enumerate(part.nodes):
        if k == last:
            g.nodes += replacement
        elif k not in region:
            g.nodes.append(encode(original))
    used = {name for message in g.nodes for name in _text(fields(message), NODE_INPUT)}
    g.initializers = {name: proto for name, proto in part.initializers.items() if name in used}
    g.initializers.update((name, tensor(name, kind, dims, raw))
                          for name, (kind, dims, raw) in constants.items())
    kv_shape = [1, heads, slots, head_dim]
    for name, info in part.inputs.items():
        g.inputs.append(value_info(name, FLOAT, kv_shape) if name in ("past_key", "past_value")
                        else encode(info))
    for name, info in part.outputs.items():
        if name not in ("key", "value"):
            g.outputs.append(encode(info))
    g.outputs += [value_info(name, FLOAT, kv_shape) for name in ("present_key", "present_value")]
    g.opsets = {**part.opsets, CONTRIB: 1}
    g.ir_version = part.ir_version
    return g.model("lantern_block_shared_kv")


def check_shared_kv_block(exported, rewritten, stored: int, heads: int, head_dim: int,
                          hidden_size: int, slots_input: str, tolerance: float = 1e-4) -> float:
    """Run one block's exported session (its stored-slot axis variable, input `slots_input`;
    fed stored + 1 slots, the last masked) and its shared_kv_block session on the same random
    token and KV; return the largest difference of the hidden state and the new key/value.

    Raises:
        ValueError: they differ by more than `tolerance`: the rewrite matched the exporter's
            nodes but not what they compute (the runtime then keeps the exported attention).
    """
    rng = np.random.default_rng(0)
    slots = stored + 1
    hidden = rng.standard_normal((1, 1, hidden_size)).astype(np.float32)
    keys, values = (rng.standard_normal((heads, slots, head_dim)).astype(np.float32)
                    for _ in range(2))
    bias = np.zeros((1, slots + 1), np.float32)          # stored slots | scratch | the token
    bias[0, stored // 3:stored // 2] = -np.inf
    bias[0, stored] = -np.inf
    positions = np.array([stored // 2], np.int64)
    reference = dict(zip([o.name for o in exported.get_outputs()], exported.run(None, {
        "hidden": hidden, "positions": positions, "past_key": keys, "past_value": values,
        "attn_bias": bias, slots_input: np.array([slots], np.int64)})))
    names = [o.name for o in rewritten.get_outputs()]
    got = dict(zip(names, rewritten.run(None, {
        "hidden": hidden, "positions": positions, "past_key": keys[None],
        "past_value": values[None], "attn_bias": bias})))
    worst = max(float(np.abs(got["hidden_out"] - reference["hidden_out"]).max()),
                float(np.abs(got["present_key"][0, :, stored] - reference["key"][0, :, 0]).max()),
                float(np.abs(got["present_value"][0, :, stored]
                             - reference["value"][0, :, 0]).max()))
    if not worst <= tolerance:                           # NaN fails too
        raise ValueError(f"the rewritten attention differs from the exported one by {worst:.3g} "
                         f"(more than {tolerance:g})")
    return worst
