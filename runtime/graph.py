"""Loading an ONNX model into a checked, topologically ordered graph of runtime ops.

Everything that can be refused is refused here, before anything runs: unreadable files, missing
initialisers, dangling inputs, cycles, opsets and op_types or attributes the runtime does not implement.
"""

from __future__ import annotations

import functools
import heapq
import math
import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.defs
import onnx.shape_inference
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from runtime.errors import InvalidModel, UnsupportedOp
from runtime.ops import OPS, OpDef, supported_ops

# Default-domain opsets whose semantics the ops follow (the newest definition of each op up to 25).
MIN_OPSET, MAX_OPSET = 7, 25
MAX_IR_VERSION = onnx.IR_VERSION  # the newest file format the onnx package that parses the model knows
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
    # Initialisers also listed as graph inputs (IR >= 4): a feed may override them, so no rewrite or preparation
    # may treat them as constants. Their declarations, and the values used when the feed leaves them out.
    overridable: list[ValueInfo] = field(default_factory=list)
    defaults: dict[str, np.ndarray] = field(default_factory=dict)
    value_types: dict[str, int] = field(default_factory=dict)  # value name -> ONNX elem_type, where known


def read_model(path_or_bytes) -> tuple[onnx.ModelProto, str | None]:
    """The ModelProto and the folder external data is resolved against (None for bytes)."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, base_dir, what = bytes(path_or_bytes), None, "the given bytes"
    elif not isinstance(path_or_bytes, (str, os.PathLike)):
        raise InvalidModel(
            f"the model must be given as a path (str or os.PathLike) or as its serialized bytes, "
            f"got {type(path_or_bytes).__name__}"
        )
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
    field = _undecodable_text(model)
    if field is not None:
        raise InvalidModel(f"{what} is not a valid ONNX model: its {field} is not UTF-8 text; expected a string")
    return model, base_dir


def _undecodable_text(message) -> str | None:
    """The first string field (names, op_types, keys) that protobuf could not decode as UTF-8 and so hands
    back as bytes; None if there is none. Numeric and bytes fields (tensor data) are not walked."""
    for fd, value in message.ListFields():
        if fd.type not in (fd.TYPE_STRING, fd.TYPE_MESSAGE):
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        for v in value if repeated else (value,):
            if fd.type == fd.TYPE_STRING and not isinstance(v, str):
                return fd.full_name
            if fd.type == fd.TYPE_MESSAGE:
                inner = _undecodable_text(v)
                if inner is not None:
                    return inner
    return None


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): a generous fixed bound
        return 1 << 40


# No tensor a model declares, and not all its initialisers together, may need more bytes than this machine has:
# such a model is refused before anything is allocated. Tests patch it.
MAX_TENSOR_BYTES = _physical_memory_bytes()


def _itemsize(elem_type: int, subject: str) -> int:
    """Bytes per element of ONNX tensor type ``elem_type``; ``subject`` names the tensor and its type in the
    error raised when it is no tensor type."""
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, ValueError, TypeError):
        raise InvalidModel(
            f"{subject}, which is no ONNX tensor type; expected one of "
            f"{', '.join(sorted(ONNX_TYPE_NAMES.values()))} or another TensorProto.DataType"
        ) from None


def _declared_nbytes(t: onnx.TensorProto, what: str) -> int:
    """Bytes the tensor's declared dims and data_type need, refused if a dim is negative or the total is more
    than MAX_TENSOR_BYTES; computed in Python integers, so no overflow hides a huge shape."""
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise InvalidModel(f"{what} '{t.name}' has shape {tuple(dims)}; expected dimensions >= 0")
    itemsize = _itemsize(t.data_type, f"{what} '{t.name}' has data_type {t.data_type}")
    count = math.prod(dims)
    nbytes = count * itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise InvalidModel(
            f"{what} '{t.name}' declares shape {tuple(dims)}: {count} elements, {nbytes} bytes; "
            f"expected at most {MAX_TENSOR_BYTES} bytes (this machine's memory)"
        )
    return nbytes


def _external_int(t: onnx.TensorProto, what: str, info: dict, key: str) -> int | None:
    if key not in info:
        return None
    try:
        value = int(info[key])
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidModel(f"{what} '{t.name}' has external data {key} '{info[key]}'; expected an integer >= 0")
    return value


def _check_external_data(t: onnx.TensorProto, base_dir: str | None, nbytes: int, what: str) -> None:
    """Refuse external data outside the model's folder, missing, or too short for the declared tensor."""
    info = {e.key: e.value for e in t.external_data}
    if base_dir is None:
        raise InvalidModel(f"{what} '{t.name}' refers to external data, which a model given as bytes cannot have")
    where = info.get("location", "")
    if "\0" in where:  # os.path would raise ValueError
        raise InvalidModel(f"{what} '{t.name}' has external data location '{where}'; expected a file name without NUL")
    location = os.path.realpath(os.path.join(base_dir, where))
    if os.path.commonpath([location, os.path.realpath(base_dir)]) != os.path.realpath(base_dir):
        raise InvalidModel(f"{what} '{t.name}' points outside the model's folder ('{where}'); refused")
    if not os.path.isfile(location):
        raise InvalidModel(f"{what} '{t.name}': external data file '{where}' is missing; expected it beside the model")
    offset = _external_int(t, what, info, "offset") or 0
    length = _external_int(t, what, info, "length")
    if length is not None and length != nbytes:
        raise InvalidModel(
            f"{what} '{t.name}': external data length {length} bytes in '{where}'; "
            f"expected the tensor's declared size, {nbytes} bytes"
        )
    size = os.path.getsize(location)
    if size < offset + nbytes:
        raise InvalidModel(
            f"{what} '{t.name}': external data file '{where}' has {size} bytes; "
            f"expected at least offset {offset} + {nbytes} bytes"
        )


def _tensor_to_array(t: onnx.TensorProto, base_dir: str | None, what: str = "initializer") -> np.ndarray:
    nbytes = _declared_nbytes(t, what)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        _check_external_data(t, base_dir, nbytes, what)
    try:
        return numpy_helper.to_array(t, base_dir or "")
    except (ValueError, TypeError, OSError, KeyError) as e:
        raise InvalidModel(f"{what} '{t.name}' cannot be read: {e}") from None


def _value_info(v: onnx.ValueInfoProto) -> ValueInfo:
    kind = v.type.WhichOneof("value")
    if kind not in ("tensor_type", None):
        what = kind.replace("_type", "")
        raise UnsupportedOp(f"graph input/output '{v.name}' is of {what} type; only tensors are supported")
    tt = v.type.tensor_type
    shape = []
    for d in tt.shape.dim:
        shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    fixed = [d for d in shape if isinstance(d, int)]
    if any(d < 0 for d in fixed):
        raise InvalidModel(f"graph input/output '{v.name}' has shape {shape}; expected dimensions >= 0")
    itemsize = _itemsize(tt.elem_type, f"graph input/output '{v.name}' has elem_type {tt.elem_type}")
    if math.prod(fixed) * itemsize > MAX_TENSOR_BYTES:
        raise InvalidModel(
            f"graph input/output '{v.name}' declares shape {shape}: {math.prod(fixed) * itemsize} bytes; "
            f"expected at most {MAX_TENSOR_BYTES} bytes (this machine's memory)"
        )
    return ValueInfo(v.name, tt.elem_type, shape, has_rank=tt.HasField("shape"))


def _attribute(node: onnx.NodeProto, a: onnx.AttributeProto, base_dir: str | None):
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise UnsupportedOp(f"node '{node.name}' ({node.op_type}) has a subgraph attribute '{a.name}'; not supported")
    value = onnx.helper.get_attribute_value(a)
    if value is None:
        raise InvalidModel(
            f"attribute '{a.name}' of node '{node.name}' ({node.op_type}) has type "
            f"{onnx.AttributeProto.AttributeType.Name(a.type)} and no value; expected a typed attribute"
        )
    what = f"attribute '{a.name}' of node '{node.name}' ({node.op_type}): tensor"
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise InvalidModel(
                f"attribute '{a.name}' of node '{node.name}' ({node.op_type}) is not UTF-8 text; expected a string"
            ) from None
    if isinstance(value, onnx.TensorProto):
        return _tensor_to_array(value, base_dir, what)
    if a.type == onnx.AttributeProto.TENSORS:
        return [_tensor_to_array(t, base_dir, what) for t in value]
    if a.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
        return tuple(value)  # immutable, and the ops' per-shape caches take it as their key as it is
    return value


def _constant_value(node: Node) -> np.ndarray:
    if len(node.attrs) != 1 or len(node.outputs) != 1 or not node.outputs[0]:
        raise InvalidModel(
            f"{node.describe()} has attributes {sorted(node.attrs)} and outputs {node.outputs}; "
            "expected exactly one value attribute and one output"
        )
    ((key, value),) = node.attrs.items()
    if key == "value":
        if not isinstance(value, np.ndarray):
            raise InvalidModel(f"{node.describe()} has a 'value' of {type(value).__name__}; expected a tensor")
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


_PYTHON_ATTRIBUTE_TYPES = {
    int: onnx.AttributeProto.INT,
    float: onnx.AttributeProto.FLOAT,
    str: onnx.AttributeProto.STRING,
}


def _check_attribute_types(node: Node, proto: onnx.NodeProto, op: OpDef, opset: int) -> None:
    """Each attribute's type must be the one its op's schema (or, for the runtime's own ops, the default of
    the keyword) says: a Gemm's ``transB`` given as a string or a Gather's ``axis`` as a list are refused."""
    schema_types = _attribute_types(proto.op_type, opset) if op.domain == "" else {}
    for a in proto.attribute:
        if a.name in schema_types:
            expected = schema_types[a.name]
        else:
            expected = _PYTHON_ATTRIBUTE_TYPES.get(type(op.attributes.get(a.name)))
        if expected is None or a.type == expected:
            continue
        if expected == onnx.AttributeProto.FLOAT and a.type == onnx.AttributeProto.INT:
            continue  # an integral value for a float attribute means the same number
        name = onnx.AttributeProto.AttributeType.Name
        raise InvalidModel(
            f"{node.describe()} has attribute '{a.name}' of type {name(a.type)}; expected {name(expected)}"
        )


def _default_opset(model: onnx.ModelProto) -> int:
    return max((imp.version for imp in model.opset_import if imp.domain in DEFAULT_DOMAINS), default=MAX_OPSET)


def _check_opsets(model: onnx.ModelProto) -> None:
    # Other domains are not checked here: an imported domain no node uses is harmless, a node in one the runtime
    # does not implement is refused with its op.
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS and not MIN_OPSET <= imp.version <= MAX_OPSET:
            raise UnsupportedOp(
                f"the model uses opset {imp.version} of the default domain; supported: {MIN_OPSET} to {MAX_OPSET}"
            )


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
    # Kahn's algorithm, the lowest file position first among the ready nodes: a graph already in order keeps it,
    # and every node and edge is visited once (scanning the pending nodes for ready ones was quadratic: 11 s
    # for a 4,000-node chain).
    consumers: dict[str, list[int]] = {}
    waiting = [0] * len(nodes)
    for k, n in enumerate(nodes):
        for i in n.inputs:
            if i in producer:
                consumers.setdefault(i, []).append(k)
                waiting[k] += 1
    ready = [k for k, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        n = nodes[heapq.heappop(ready)]
        ordered.append(n)
        for o in n.outputs:
            for k in consumers.get(o, ()) if o else ():
                waiting[k] -= 1
                if waiting[k] == 0:
                    heapq.heappush(ready, k)
    if len(ordered) < len(nodes):
        stuck = [n for k, n in enumerate(nodes) if waiting[k]]
        names = ", ".join(f"'{n.name}'" for n in stuck[:5])
        raise InvalidModel(f"the graph has a cycle: nodes {names} wait on each other")
    return ordered


def _check_ir_version(model: onnx.ModelProto) -> None:
    if model.ir_version > MAX_IR_VERSION:
        raise UnsupportedOp(
            f"the model has IR version {model.ir_version}; supported: up to {MAX_IR_VERSION} "
            f"(the installed onnx {onnx.__version__}'s)"
        )


def build_graph(model: onnx.ModelProto, base_dir: str | None, backend: str) -> Graph:
    g = model.graph
    _check_ir_version(model)
    _check_opsets(model)
    opset = _default_opset(model)
    total = sum(_declared_nbytes(t, "initializer") for t in g.initializer)
    if total > MAX_TENSOR_BYTES:
        raise InvalidModel(
            f"the model's {len(g.initializer)} initializers need {total} bytes together; "
            f"expected at most {MAX_TENSOR_BYTES} bytes (this machine's memory)"
        )
    if any(not t.name for t in g.initializer):
        raise InvalidModel('an initializer has an empty name; a name is needed ("" marks an omitted input)')
    initializers = {t.name: _tensor_to_array(t, base_dir) for t in g.initializer}
    seen_inputs = set()
    for v in g.input:
        if v.name in seen_inputs:
            raise InvalidModel(f"graph input '{v.name}' is declared twice; expected unique input names")
        seen_inputs.add(v.name)
    inputs = [_value_info(v) for v in g.input if v.name not in initializers]
    # From IR 4 on, an initialiser that is also a graph input is a default a feed may override (onnxruntime's
    # ``get_overridable_initializers``); before, every initialiser had to be listed as an input and is constant.
    overridable = [_value_info(v) for v in g.input if v.name in initializers] if model.ir_version >= 4 else []
    defaults = {v.name: initializers.pop(v.name) for v in overridable}
    for v in overridable:
        if defaults[v.name].dtype != v.dtype:
            raise InvalidModel(
                f"graph input '{v.name}' is declared {v.type} but its initializer holds {defaults[v.name].dtype}; "
                "expected the same type"
            )
    outputs = [_value_info(v) for v in g.output]
    if not outputs:
        raise InvalidModel("the graph declares no outputs")
    supported = supported_ops(backend)
    nodes = []
    for k, p in enumerate(g.node):
        node = Node(p.name or f"{p.op_type}_{k}", p.op_type, p.domain, list(p.input), list(p.output))
        node.attrs = {a.name: _attribute(p, a, base_dir) for a in p.attribute}
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
        required = op.required_inputs
        if len(node.inputs) < required or not all(node.inputs[:required]):
            raise InvalidModel(
                f"{node.describe()} has inputs {node.inputs}; {p.op_type} needs its first {required} inputs given"
            )
        _check_attribute_types(node, p, op, opset)
        if domain == "" and opset < op.since:
            raise UnsupportedOp(
                f"{node.describe()}: this runtime implements {p.op_type} as defined since opset {op.since}; "
                f"the model uses opset {opset}, where it means something else"
            )
        if op.wants_outputs:
            node.attrs["_outputs"] = tuple(bool(o) for o in node.outputs)
        node.op = op
        nodes.append(node)
    available = {v.name for v in inputs} | set(initializers) | set(defaults)
    nodes = _topological_order(nodes, available)
    produced = available | {o for n in nodes for o in n.outputs}
    for v in outputs:
        if v.name not in produced:
            raise InvalidModel(f"graph output '{v.name}' is produced by no node, input or initializer")
    value_types = {name: _elem_type(a) for name, a in initializers.items()}
    value_types.update((v.name, v.elem_type) for v in (*inputs, *overridable))
    _infer_types(nodes, value_types, opset)
    for v in outputs:
        computed = value_types.get(v.name)
        if computed is not None and computed != v.elem_type:
            raise InvalidModel(
                f"graph output '{v.name}' is declared {v.type} but the graph computes {_type_name(computed)}; "
                "expected the declared type to match"
            )
    _check_shapes(model, inputs + overridable, value_types)
    return Graph(
        inputs,
        outputs,
        initializers,
        nodes,
        metadata={p.key: p.value for p in model.metadata_props},
        producer=model.producer_name,
        graph_name=g.name,
        doc_string=model.doc_string,
        overridable=overridable,
        defaults=defaults,
        value_types=value_types,
    )


# --- element types: each node's inputs against its ONNX schema's type constraints and the runtime's kernels ----

# "tensor(float)" -> TensorProto.FLOAT, ..., the spelling of the schemas' type strings
_TYPE_STRS = {
    f"tensor({name.lower()})": value
    for name, value in onnx.TensorProto.DataType.items()
    if value != onnx.TensorProto.UNDEFINED
}
_TYPE_NAMES = {value: text for text, value in _TYPE_STRS.items()}


def _type_name(elem_type: int) -> str:
    return _TYPE_NAMES.get(elem_type, f"elem_type {elem_type}")


def _elem_type(a: np.ndarray) -> int | None:
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(a.dtype)
    except (KeyError, ValueError, TypeError):
        return None


@functools.cache
def _schema(op_type: str, opset: int):
    """The default domain's schema of ``op_type`` at ``opset``, None if ONNX has none (looked up once: 6 us a
    call, a 100k-node model makes 200k)."""
    try:
        return onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None


@functools.cache
def _attribute_types(op_type: str, opset: int) -> dict[str, int]:
    schema = _schema(op_type, opset)
    return {} if schema is None else {name: int(a.type) for name, a in schema.attributes.items()}


@dataclass(frozen=True)
class _TypeRules:
    inputs: tuple[tuple[str, str], ...]  # (formal name, type string or type parameter), a variadic one last
    outputs: tuple[str, ...]  # type string or type parameter
    allowed: dict  # type parameter or type string -> the type strings it allows


@functools.cache
def _type_rules(op_type: str, opset: int) -> _TypeRules | None:
    schema = _schema(op_type, opset)
    if schema is None:
        return None
    allowed = {c.type_param_str: tuple(c.allowed_type_strs) for c in schema.type_constraints}
    formals = [*schema.inputs, *schema.outputs]
    allowed |= {f.type_str: (f.type_str,) for f in formals if f.type_str not in allowed}  # a fixed type
    return _TypeRules(
        tuple((f.name, f.type_str) for f in schema.inputs), tuple(f.type_str for f in schema.outputs), allowed
    )


def _infer_types(nodes: list[Node], types: dict[str, int], opset: int) -> None:
    """Check every node's input element types, in graph order, and record its outputs' in ``types``: each input
    must have a type its ONNX schema allows (Sigmoid takes no int64), inputs sharing a type parameter must share
    the type (Add's A and B are both T), and the runtime's kernel must take it (``OpDef.dtypes``: no float16
    Softmax). A value whose type is unknown (the output of an op with no schema) is not checked."""
    for node in nodes:
        rules = _type_rules(node.op_type, opset) if node.op.domain == "" else None
        formals = rules.inputs if rules is not None else ()
        bound: dict[str, tuple[int, str]] = {}  # type parameter -> (elem_type, the input that set it)
        for k, name in enumerate(node.inputs):
            t = types.get(name) if name else None
            if t is None:
                continue
            if formals:
                formal, type_str = formals[min(k, len(formals) - 1)]
                allowed = rules.allowed[type_str]
                if _TYPE_NAMES.get(t) not in allowed:
                    raise InvalidModel(
                        f"{node.describe()}: input '{name}' ({formal}) is {_type_name(t)}; "
                        f"expected one of {', '.join(allowed)}"
                    )
                first = bound.setdefault(type_str, (t, name))
                if first[0] != t:
                    raise InvalidModel(
                        f"{node.describe()}: inputs '{first[1]}' ({_type_name(first[0])}) and '{name}' "
                        f"({_type_name(t)}) must have one type (type parameter {type_str})"
                    )
            if not kernel_takes(node.op, k, t):
                raise UnsupportedOp(
                    f"{node.describe()}: input '{name}' is {_type_name(t)}; "
                    f"this runtime's {node.op_type} takes {', '.join(node.op.input_dtypes(k))}"
                )
        outputs = rules.outputs if rules is not None else ()
        for k, name in enumerate(node.outputs):
            if not name or not outputs:
                continue
            type_str = outputs[min(k, len(outputs) - 1)]
            allowed = rules.allowed[type_str]
            if type_str in bound:
                types[name] = bound[type_str][0]
            elif len(allowed) == 1 and allowed[0] in _TYPE_STRS:  # a fixed type: Shape's int64
                types[name] = _TYPE_STRS[allowed[0]]


def _numpy_name(elem_type: int) -> str | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, ValueError, TypeError):
        return None


_TYPE_DTYPES = {t: _numpy_name(t) for t in _TYPE_NAMES}  # elem_type -> NumPy dtype name (None: none)


def kernel_takes(op: OpDef, k: int, elem_type: int) -> bool:
    """Whether ``op``'s kernels take ONNX element type ``elem_type`` as their ``k``-th input."""
    allowed = op.input_dtypes(k)
    return allowed is None or _TYPE_DTYPES.get(elem_type) in allowed


def _check_shapes(model: onnx.ModelProto, inputs: list[ValueInfo], types: dict[str, int]) -> None:
    """Run ONNX's shape inference (strict) over the graph's structure, every input and initialiser declared
    with its rank only: attributes that contradict a rank (Flatten's axis 5 on a rank-2 input) are refused, as
    onnxruntime refuses them, while dimensions that ONNX and onnxruntime infer differently (onnx issue 4299)
    cannot conflict. Linear in the nodes; no tensor data is copied. Skipped for graphs with nodes of other
    domains (the runtime's own), which ONNX cannot infer."""
    g = model.graph
    if any(n.domain not in DEFAULT_DOMAINS for n in g.node):
        return
    skeleton = onnx.GraphProto(name=g.name)
    skeleton.node.extend(g.node)
    declared = {v.name for v in inputs}
    for v in inputs:
        rank = len(v.shape) if v.has_rank else None
        skeleton.input.append(onnx.helper.make_tensor_value_info(v.name, v.elem_type, _unknown_dims(rank)))
    for t in g.initializer:
        if t.name not in declared:
            elem = types.get(t.name, t.data_type)
            skeleton.input.append(onnx.helper.make_tensor_value_info(t.name, elem, _unknown_dims(len(t.dims))))
    for v in g.output:
        skeleton.output.append(onnx.ValueInfoProto(name=v.name))
    probe = onnx.ModelProto(ir_version=model.ir_version, graph=skeleton)
    probe.opset_import.extend(model.opset_import)
    try:
        onnx.shape_inference.infer_shapes(probe, check_type=True, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        message = " ".join(str(e).split())
        raise InvalidModel(f"the graph fails ONNX shape inference: {message}") from None


def _unknown_dims(rank: int | None):
    return None if rank is None else [None] * rank
