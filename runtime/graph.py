"""Loading an ONNX model into a checked, topologically ordered graph of runtime ops.

Everything that can be refused is refused here, before anything runs: unreadable files, missing
initialisers, dangling inputs, cycles, opsets and op_types or attributes the runtime does not implement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from runtime.errors import InvalidModel, UnsupportedOp
from runtime.ops import OPS, OpDef, supported_ops

# Default-domain opsets whose semantics the ops follow (the newest definition of each op up to 25).
MIN_OPSET, MAX_OPSET = 7, 25
DEFAULT_DOMAINS = ("", "ai.onnx")

ONNX_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "tensor(float)",
    onnx.TensorProto.DOUBLE: "tensor(double)",
    onnx.TensorProto.FLOAT16: "tensor(float16)",
    onnx.TensorProto.INT64: "tensor(int64)",
    onnx.TensorProto.INT32: "tensor(int32)",
    onnx.TensorProto.INT8: "tensor(int8)",
    onnx.TensorProto.UINT8: "tensor(uint8)",
    onnx.TensorProto.BOOL: "tensor(bool)",
}


@dataclass
class ValueInfo:
    name: str
    elem_type: int
    shape: list  # ints for fixed dimensions, strings for symbolic ones, None where unknown
    has_rank: bool = True  # False when the model declares no shape at all (any rank accepted)

    @property
    def type(self) -> str:
        return ONNX_TYPE_NAMES.get(self.elem_type, f"tensor({onnx.TensorProto.DataType.Name(self.elem_type)})")

    @property
    def dtype(self) -> np.dtype:
        return onnx.helper.tensor_dtype_to_np_dtype(self.elem_type)


@dataclass
class Node:
    name: str
    op_type: str
    domain: str
    inputs: list[str]  # "" marks an omitted optional input
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    op: OpDef | None = None

    def describe(self) -> str:
        return f"node '{self.name}' ({self.op_type})"


@dataclass
class Graph:
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    initializers: dict[str, np.ndarray]
    nodes: list[Node]
    metadata: dict[str, str]
    producer: str = ""
    graph_name: str = ""
    doc_string: str = ""


def read_model(path_or_bytes) -> tuple[onnx.ModelProto, str | None]:
    """The ModelProto and the folder external data is resolved against (None for bytes)."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, base_dir, what = bytes(path_or_bytes), None, "the given bytes"
    else:
        path = os.fspath(path_or_bytes)
        if not os.path.isfile(path):
            raise InvalidModel(f"model file '{path}' does not exist or is not a file")
        with open(path, "rb") as f:
            data = f.read()
        base_dir, what = os.path.dirname(os.path.abspath(path)), f"'{path}'"
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InvalidModel(f"{what} is not an ONNX model (protobuf parsing failed: {e})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise InvalidModel(f"{what} is not an ONNX model: it has no graph or no opset_import")
    return model, base_dir


def _tensor_to_array(t: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        if base_dir is None:
            raise InvalidModel(
                f"initializer '{t.name}' refers to external data, which a model given as bytes cannot have"
            )
        location = os.path.realpath(os.path.join(base_dir, info.get("location", "")))
        if os.path.commonpath([location, os.path.realpath(base_dir)]) != os.path.realpath(base_dir):
            raise InvalidModel(
                f"initializer '{t.name}' points outside the model's folder ('{info.get('location')}'); refused"
            )
        if not os.path.isfile(location):
            raise InvalidModel(f"initializer '{t.name}': external data file '{info.get('location')}' is missing")
    try:
        return numpy_helper.to_array(t, base_dir or "")
    except (ValueError, TypeError, OSError) as e:
        raise InvalidModel(f"initializer '{t.name}' cannot be read: {e}") from None


def _value_info(v: onnx.ValueInfoProto) -> ValueInfo:
    kind = v.type.WhichOneof("value")
    if kind not in ("tensor_type", None):
        what = kind.replace("_type", "")
        raise UnsupportedOp(f"graph input/output '{v.name}' is of {what} type; only tensors are supported")
    tt = v.type.tensor_type
    shape = []
    for d in tt.shape.dim:
        shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return ValueInfo(v.name, tt.elem_type, shape, has_rank=tt.HasField("shape"))


def _attribute(node: onnx.NodeProto, a: onnx.AttributeProto):
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise UnsupportedOp(f"node '{node.name}' ({node.op_type}) has a subgraph attribute '{a.name}'; not supported")
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return value


def _constant_value(node: Node) -> np.ndarray:
    ((key, value),) = node.attrs.items()
    if key == "value":
        return value
    dtypes = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    if key not in dtypes:
        raise UnsupportedOp(f"{node.describe()} uses attribute '{key}'; supported: value, {', '.join(dtypes)}")
    return np.array(value, dtype=dtypes[key])


def _default_opset(model: onnx.ModelProto) -> int:
    return max((imp.version for imp in model.opset_import if imp.domain in DEFAULT_DOMAINS), default=MAX_OPSET)


def _check_opsets(model: onnx.ModelProto) -> None:
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            if not MIN_OPSET <= imp.version <= MAX_OPSET:
                raise UnsupportedOp(
                    f"the model uses opset {imp.version} of the default domain; supported: {MIN_OPSET} to {MAX_OPSET}"
                )
        elif not any(op_domain == imp.domain for op_domain, _ in OPS):
            # An imported domain no node uses is harmless; a node in it is refused below.
            continue


def _topological_order(nodes: list[Node], available: set[str]) -> list[Node]:
    producer = {}
    for n in nodes:
        for o in n.outputs:
            if o:
                if o in producer or o in available:
                    raise InvalidModel(f"{n.describe()} writes '{o}', which is already produced elsewhere")
                producer[o] = n
    for n in nodes:
        for i in n.inputs:
            if i and i not in producer and i not in available:
                raise InvalidModel(f"{n.describe()} reads '{i}', which no node, graph input or initializer provides")
    ordered, done, pending = [], set(available), list(nodes)
    while pending:
        ready = [n for n in pending if all(not i or i in done for i in n.inputs)]
        if not ready:
            names = ", ".join(f"'{n.name}'" for n in pending[:5])
            raise InvalidModel(f"the graph has a cycle: nodes {names} wait on each other")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for n in ready:
            ordered.append(n)
            done.update(o for o in n.outputs if o)
    return ordered


def build_graph(model: onnx.ModelProto, base_dir: str | None, backend: str) -> Graph:
    g = model.graph
    _check_opsets(model)
    initializers = {t.name: _tensor_to_array(t, base_dir) for t in g.initializer}
    inputs = [_value_info(v) for v in g.input if v.name not in initializers]
    outputs = [_value_info(v) for v in g.output]
    if not outputs:
        raise InvalidModel("the graph declares no outputs")
    supported = supported_ops(backend)
    nodes = []
    for k, p in enumerate(g.node):
        node = Node(p.name or f"{p.op_type}_{k}", p.op_type, p.domain, list(p.input), list(p.output))
        node.attrs = {a.name: _attribute(p, a) for a in p.attribute}
        domain = "" if p.domain in DEFAULT_DOMAINS else p.domain
        if p.op_type == "Constant" and domain == "":
            initializers[node.outputs[0]] = _constant_value(node)
            continue
        op = OPS.get((domain, p.op_type))
        if op is None or backend not in op.impl:
            qualified = f"{p.domain}.{p.op_type}" if domain else p.op_type
            raise UnsupportedOp(
                f"{node.describe()}: op '{qualified}' is not implemented by the {backend} backend; "
                f"supported ops: {', '.join(supported)}"
            )
        extra = sorted(set(node.attrs) - set(op.attributes))
        if extra:
            raise UnsupportedOp(
                f"{node.describe()} has attribute(s) {extra} that this runtime's {p.op_type} does not take; "
                f"it takes: {sorted(op.attributes) or 'none'}"
            )
        if len(node.inputs) > op.max_inputs and not op.variadic:
            raise UnsupportedOp(
                f"{node.describe()} has {len(node.inputs)} inputs; "
                f"this runtime's {p.op_type} takes at most {op.max_inputs}"
            )
        if domain == "" and _default_opset(model) < op.since:
            raise UnsupportedOp(
                f"{node.describe()}: this runtime implements {p.op_type} as defined since opset {op.since}; "
                f"the model uses opset {_default_opset(model)}, where it means something else"
            )
        if op.wants_outputs:
            node.attrs["_outputs"] = tuple(bool(o) for o in node.outputs)
        node.op = op
        nodes.append(node)
    available = {v.name for v in inputs} | set(initializers)
    nodes = _topological_order(nodes, available)
    produced = available | {o for n in nodes for o in n.outputs}
    for v in outputs:
        if v.name not in produced:
            raise InvalidModel(f"graph output '{v.name}' is produced by no node, input or initializer")
    return Graph(
        inputs,
        outputs,
        initializers,
        nodes,
        metadata={p.key: p.value for p in model.metadata_props},
        producer=model.producer_name,
        graph_name=g.name,
        doc_string=model.doc_string,
    )
