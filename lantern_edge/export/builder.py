"""A small ONNX graph builder: nodes, initializers and opset-aware helpers (torch-free).

The exported graphs are written node by node rather than traced, so each one holds exactly the
nodes it needs (every node costs ~0.5 us per call at decode, whatever its size) and the same code
emits valid graphs at opset 17 and 18 (Reduce* axes and Split sizes moved between attributes
and inputs there).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_OPSET = 17                 # LayerNormalization
INT64_MAX = np.iinfo(np.int64).max

_DTYPES = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}


class GraphBuilder:
    """Collects nodes, inputs, outputs and initializers of one graph.

    `op` returns the output name(s) of the node it adds; constants are initializers named by
    the caller (weights, shared across graphs by name and content) or auto-named (small ones).
    """

    def __init__(self, name: str, opset: int):
        if opset < MIN_OPSET:
            raise ValueError(f"opset must be >= {MIN_OPSET} (LayerNormalization), got {opset}")
        self.name = name
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._counter = 0

    # --- graph interface ----------------------------------------------------------------------

    def input(self, name: str, dtype: str, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, _DTYPES[dtype], shape))
        return name

    def output(self, name: str, dtype: str, shape: list) -> None:
        """Declare graph output `name` (a node must produce a value of that name)."""
        self.outputs.append(helper.make_tensor_value_info(name, _DTYPES[dtype], shape))

    def weight(self, name: str, array) -> str:
        """A named initializer (float32 unless it is an integer array)."""
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def const(self, values, dtype=np.int64) -> str:
        """A small auto-named constant (shapes, axes, scalars)."""
        array = np.asarray(values, dtype=dtype)
        key = f"const_{array.dtype.name}_{'x'.join(map(str, array.shape)) or 'scalar'}_" \
              f"{'_'.join(str(v) for v in array.reshape(-1).tolist())}"
        key = key.replace("-", "m").replace(".", "p").replace("inf", "Inf")
        return self.weight(key, array)

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, **attrs):
        """Add a node; returns its output name, or the list of names when outputs > 1 or a list."""
        self._counter += 1
        node_name = f"{op_type}_{self._counter}"
        names = outputs if isinstance(outputs, list) else \
            [f"{node_name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names if isinstance(outputs, list) or outputs > 1 else names[0]

    def fresh(self, prefix: str) -> str:
        """A value name not used before in this graph."""
        self._counter += 1
        return f"{prefix}_{self._counter}"

    # --- opset-aware helpers ------------------------------------------------------------------

    def split(self, x: str, sizes: list[int], axis: int,
              names: list[str] | None = None) -> list[str]:
        """Split with static sizes; the sizes input is valid at every opset >= 13."""
        return self.op("Split", x, self.const(sizes), outputs=names or len(sizes), axis=axis)

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: bool,
               output: str | None = None) -> str:
        """Reduce{Sum,Max,SumSquare,...} over axes; axes moved from attribute to input at 18
        (ReduceSum at 13)."""
        outputs = [output] if output else 1
        if op_type == "ReduceSum" or self.opset >= 18:
            out = self.op(op_type, x, self.const(axes), outputs=outputs, keepdims=int(keepdims))
        else:
            out = self.op(op_type, x, outputs=outputs, axes=axes, keepdims=int(keepdims))
        return out[0] if isinstance(out, list) else out

    def layer_norm(self, x: str, weight: str, bias: str, eps: float,
                   output: str | None = None) -> str:
        out = self.op("LayerNormalization", x, weight, bias, outputs=[output] if output else 1,
                      axis=-1, epsilon=float(eps))
        return out[0] if isinstance(out, list) else out

    def model(self, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  list(self.initializers.values()))
        model = helper.make_model(graph, producer_name="lantern-edge", doc_string=doc,
                                  opset_imports=[helper.make_opsetid("", self.opset)])
        # the oldest IR version that allows this opset (8 for 17 and 18: onnxruntime >= 1.14)
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
        return model
