"""The layer ops (BatchNormalization, LeakyRelu, MaxPool, AveragePool, Softmax, LogSoftmax) and the tensor
plumbing an exporter emits (Concat, Unsqueeze, Squeeze, Shape, Gather, Transpose, Clip), one small ONNX graph
at a time, against onnxruntime (CPU provider); then a hypothesis search over MaxPool configurations that
compares values and indices.

As in ``test_ops.py``, the cases are built once, at import, and ``test_cpu`` and ``test_cuda`` are parametrised
over the same list; CUDA cases run under the simulator in ``make test``, so their shapes stay small. Integer
outputs (MaxPool's Indices, Shape, int64 plumbing) are compared exactly.

onnxruntime runs a values-only MaxPool without dilation through MLAS, whose NaN handling depends on the SIMD
path and whose padding beats -inf; its MaxPool with Indices (and any dilated MaxPool) runs the kernel whose
semantics ``runtime/ops/pool.py`` follows. Single-output cases with NaN or -inf beside padding therefore take
their expected values from the same node with the Indices output (``Case.oracle``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import helper

import runtime
from runtime.errors import InvalidFeed, UnsupportedOp
from tests.conftest import SIMULATED, assert_close, case_rng, make_model, ort_run, randn, sprinkle

F32 = np.float32
F64 = np.float64
I64 = np.int64
ONLY_F32 = "the cuda backend takes float32 tensors only"
SPECIALS = (np.nan, np.inf, -np.inf, 100.0, -100.0, 0.0, -0.0, 1e-30, -1e-30)


@dataclass(frozen=True)
class Case:
    id: str  # starts with the op_type under test, then "-"
    model: bytes
    feed: dict
    nodes: tuple[str, ...]  # op_types of the loaded graph
    cpu_only: str = ""  # why the cuda backend does not take this case
    large: bool = False  # too many GPU threads for the simulator: real GPU only
    oracle: bytes | None = None  # the model onnxruntime runs instead (its first outputs are compared)

    def cuda_skip_reason(self) -> str:
        if self.cpu_only:
            return self.cpu_only
        if self.large and SIMULATED:
            return "too large for the CUDA simulator; runs on a real GPU"
        return ""


def _text(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _model(nodes, inputs: dict, initializers: dict, outputs, opset: int) -> bytes:
    first = next(iter({**inputs, **initializers}.values()))
    declared = [(o, first.dtype, None) if isinstance(o, str) else (o[0], o[1], None) for o in outputs]
    return make_model(nodes, [(name, a.dtype, list(a.shape)) for name, a in inputs.items()], declared,
                      initializers, opset=opset)  # fmt: skip


def _case(cid, nodes, inputs: dict, initializers=None, outputs=("y",), opset=18, **kw) -> Case:
    """A case from helper-built nodes, which the loaded graph keeps as they are; ``outputs`` are names (declared
    with the first input's dtype) or (name, dtype) pairs, all of unknown shape."""
    model = _model(nodes, inputs, initializers or {}, outputs, opset)
    return Case(cid, model, dict(inputs), tuple(n.op_type for n in nodes), **kw)


# --- LeakyRelu -------------------------------------------------------------------------------------------------


def leaky_relu_case(shape, *, alpha=None, specials=False, dtype=F32, **kw) -> Case:
    cid = f"LeakyRelu-{_text(shape)}" + f"-alpha{alpha}" * (alpha is not None) + "-specials" * specials
    cid += f"-{np.dtype(dtype).name}" * (dtype != F32)
    rng = case_rng(cid)
    x = randn(rng, shape, dtype, 3.0)
    if specials:
        x = sprinkle(rng, x, SPECIALS)
    attrs = {} if alpha is None else {"alpha": alpha}
    if dtype != F32:
        kw.setdefault("cpu_only", ONLY_F32)
    return _case(cid, [helper.make_node("LeakyRelu", ["x"], ["y"], **attrs)], {"x": x}, **kw)


def leaky_relu_cases() -> list[Case]:
    return [
        leaky_relu_case((2, 3, 4, 5)),
        leaky_relu_case((2, 3, 4, 5), alpha=0.2, specials=True),
        leaky_relu_case((16,), alpha=-0.5, specials=True),
        leaky_relu_case((3, 7), alpha=1.5),
        leaky_relu_case(()),
        leaky_relu_case((2, 0, 3)),
        leaky_relu_case((3, 40), alpha=0.2, specials=True, dtype=F64),
        leaky_relu_case((4, 9000), alpha=0.2, specials=True, large=True),  # the parallel CPU kernel
    ]


# --- BatchNormalization ----------------------------------------------------------------------------------------


def batch_norm_case(shape, *, epsilon=None, var_specials=(), x_specials=False, as_inputs=False, dtype=F32,
                    **kw) -> Case:  # fmt: skip
    cid = f"BatchNormalization-{_text(shape)}" + f"-eps{epsilon}" * (epsilon is not None)
    cid += "-varspecials" * bool(var_specials) + "-xspecials" * x_specials + "-paraminputs" * as_inputs
    cid += f"-{np.dtype(dtype).name}" * (dtype != F32)
    rng = case_rng(cid)
    C = shape[1]
    x = randn(rng, shape, dtype, 2.0)
    if x_specials:
        x = sprinkle(rng, x, SPECIALS)
    params = {
        "scale": randn(rng, (C,), dtype),
        "B": randn(rng, (C,), dtype),
        "mean": randn(rng, (C,), dtype),
        "var": np.asarray(rng.uniform(0.1, 3.0, C), dtype=dtype),
    }
    if var_specials:
        params["var"][: len(var_specials)] = var_specials
    inputs, inits = {"x": x}, {}
    (inputs if as_inputs else inits).update(params)
    attrs = {} if epsilon is None else {"epsilon": epsilon}
    node = helper.make_node("BatchNormalization", ["x", "scale", "B", "mean", "var"], ["y"], **attrs)
    if dtype != F32:
        kw.setdefault("cpu_only", ONLY_F32)
    return _case(cid, [node], inputs, inits, **kw)


def batch_norm_cases() -> list[Case]:
    return [
        batch_norm_case((5, 4)),  # rank 2: (N, C)
        batch_norm_case((2, 3, 7)),
        batch_norm_case((2, 3, 4, 5)),
        batch_norm_case((2, 3, 2, 3, 4)),  # rank 5
        batch_norm_case((1, 6, 3, 3), epsilon=1e-3, as_inputs=True),
        batch_norm_case((2, 3, 4, 4), x_specials=True),
        # NaN and inf in var, a negative var, and var = -epsilon (a zero denominator), as onnxruntime folds them
        batch_norm_case((2, 5, 3, 3), var_specials=(np.nan, np.inf, -4.0, -1e-5, 0.0)),
        batch_norm_case((0, 3, 4, 4)),
        batch_norm_case((2, 3, 4, 5), dtype=F64),
        batch_norm_case((4, 16, 32, 32), large=True),  # the parallel CPU kernel
    ]


# --- MaxPool and AveragePool -----------------------------------------------------------------------------------


def _pool_attrs(kernel, strides, pads, dilations, ceil_mode, auto_pad, extra) -> dict:
    attrs = {"kernel_shape": list(kernel)}
    for name, value in (("strides", strides), ("pads", pads), ("dilations", dilations)):
        if value is not None:
            attrs[name] = list(value)
    if ceil_mode:
        attrs["ceil_mode"] = ceil_mode
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    attrs.update(extra)
    return attrs


def _pool_id(op, shape, attrs, *tags) -> str:
    parts = [f"{op}-{_text(shape)}"]
    parts += [f"{k}{''.join(map(str, v)) if isinstance(v, list) else v}" for k, v in attrs.items()]
    return "-".join(parts + [t for t in tags if t])


def max_pool_case(shape, kernel, *, strides=None, pads=None, dilations=None, ceil_mode=0, auto_pad=None,
                  storage_order=None, indices=True, data="randn", dtype=F32, **kw) -> Case:  # fmt: skip
    """MaxPool with the Indices output unless ``indices`` is False (then "" if it is None). ``data``: randn,
    ties (small integers), constant, nan (NaN at random places and first in a window), neginf (all -inf)."""
    extra = {} if storage_order is None else {"storage_order": storage_order}
    attrs = _pool_attrs(kernel, strides, pads, dilations, ceil_mode, auto_pad, extra)
    outs = {True: ["y", "i"], False: ["y"], None: ["y", ""]}[indices]
    output_tag = {True: "", False: "values-only", None: "indices-unnamed"}[indices]
    cid = _pool_id("MaxPool", shape, attrs, data * (data != "randn"), output_tag, np.dtype(dtype).name * (dtype != F32))
    rng = case_rng(cid)
    x = randn(rng, shape, dtype) if dtype in (F32, F64) else rng.integers(0, 6, shape).astype(dtype)
    if data == "ties":
        x = np.round(x * 1.5).astype(dtype)
    elif data == "constant":
        x = np.full(shape, 0.5, dtype=dtype)
    elif data == "nan":
        x = sprinkle(rng, x, [np.nan] * max(1, x.size // 6))
        x.reshape(-1)[0] = np.nan  # first element of the first window
    elif data == "neginf":
        x = np.full(shape, -np.inf, dtype=dtype)
    node = helper.make_node("MaxPool", ["x"], outs, **attrs)
    declared = [("y", dtype)] + [("i", I64)] * bool(indices)
    oracle = None
    if not indices and data in ("nan", "neginf") and not dilations:  # MLAS: see the module's docstring
        oracle = _model([helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)], {"x": x}, {},
                        [("y", dtype), ("i", I64)], 18)  # fmt: skip
    if dtype == F64:  # integer tensors stay on the host in the cuda backend, which pools them with the CPU kernel
        kw.setdefault("cpu_only", ONLY_F32)
    return _case(cid, [node], {"x": x}, outputs=declared, oracle=oracle, **kw)


def max_pool_cases() -> list[Case]:
    s = (2, 3, 6, 7)  # N, C > 1 everywhere: the indices carry the (n·C + c)·H·W offset
    return [
        max_pool_case(s, (2, 2), strides=(2, 2)),
        max_pool_case(s, (3, 3), strides=(1, 1)),  # overlapping windows, stride 1
        max_pool_case(s, (3, 2), strides=(2, 1)),  # overlapping along one axis
        max_pool_case(s, (1, 1)),  # 1x1 pool: every element its own window
        max_pool_case(s, (1, 1), strides=(2, 3)),
        max_pool_case(s, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
        max_pool_case(s, (3, 4), strides=(2, 1), pads=(0, 3, 2, 1)),  # asymmetric
        max_pool_case(s, (2, 2), strides=(1, 1), dilations=(2, 2)),
        max_pool_case(s, (2, 3), strides=(2, 1), dilations=(2, 1), pads=(1, 2, 0, 1)),
        max_pool_case((2, 3, 5, 7), (2, 2), strides=(2, 2), ceil_mode=1),
        max_pool_case((2, 2, 5, 5), (2, 2), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=1),  # last window dropped
        max_pool_case((2, 2, 6, 5), (3, 3), strides=(2, 2), dilations=(2, 1), ceil_mode=1),
        max_pool_case(s, (3, 3), strides=(2, 2), auto_pad="SAME_UPPER"),
        max_pool_case(s, (4, 4), strides=(1, 1), auto_pad="SAME_UPPER"),  # odd padding: the extra unit at the end
        max_pool_case(s, (4, 4), strides=(1, 1), auto_pad="SAME_LOWER"),  # ... and at the beginning
        max_pool_case((2, 2, 7, 6), (3, 2), strides=(2, 3), auto_pad="SAME_LOWER"),
        max_pool_case(s, (2, 3), strides=(1, 2), dilations=(2, 2), auto_pad="SAME_UPPER"),  # onnxruntime's padding
        max_pool_case(s, (3, 2), strides=(2, 2), auto_pad="VALID"),
        max_pool_case(s, (2, 2), strides=(2, 2), storage_order=1),  # H != W: h + w·H, not h + w·W
        max_pool_case(s, (3, 3), strides=(2, 1), pads=(1, 0, 1, 2), storage_order=1),
        max_pool_case(s, (2, 2), strides=(1, 1), dilations=(2, 1), storage_order=1, ceil_mode=1),
        max_pool_case(s, (3, 3), strides=(1, 1), data="constant"),  # ties: the first maximum in scan order
        max_pool_case(s, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), data="constant", storage_order=1),
        max_pool_case(s, (3, 2), strides=(1, 1), data="ties"),
        max_pool_case(s, (2, 2), strides=(2, 2), data="nan"),
        max_pool_case(s, (3, 3), strides=(1, 1), pads=(1, 1, 1, 1), data="nan"),
        max_pool_case(s, (2, 2), strides=(1, 1), dilations=(2, 2), data="nan", indices=False),
        max_pool_case(s, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), data="neginf"),  # padding never wins
        # one output: onnxruntime's MLAS path, which agrees without NaN and -inf beside padding
        max_pool_case(s, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), indices=False),
        max_pool_case(s, (2, 2), strides=(1, 1), indices=False, data="ties"),
        max_pool_case(s, (2, 2), strides=(2, 2), indices=False, data="nan"),
        max_pool_case(s, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), indices=False, data="neginf"),
        max_pool_case(s, (3, 3), strides=(2, 2), indices=None),  # Indices named "": not an output
        max_pool_case((0, 3, 4, 4), (2, 2), strides=(2, 2)),
        max_pool_case((2, 3, 1, 1), (1, 1)),
        # 1-D, run as 2-D over (N, C, 1, L): the indices are (n·C + c)·L + l whatever the storage order
        max_pool_case((2, 3, 9), (3,), strides=(2,), pads=(1, 2), dilations=(2,), ceil_mode=1),
        max_pool_case((2, 3, 9), (2,), auto_pad="SAME_LOWER", storage_order=1, data="ties"),
        max_pool_case(s, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dtype=F64),
        max_pool_case(s, (3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dtype=np.uint8),
        max_pool_case(s, (2, 2), strides=(2, 1), dtype=np.int8, indices=False),
        max_pool_case((2, 16, 64, 64), (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), large=True),  # parallel CPU
    ]


def average_pool_case(shape, kernel, *, strides=None, pads=None, dilations=None, ceil_mode=0, auto_pad=None,
                      count_include_pad=None, specials=False, **kw) -> Case:  # fmt: skip
    extra = {} if count_include_pad is None else {"count_include_pad": count_include_pad}
    attrs = _pool_attrs(kernel, strides, pads, dilations, ceil_mode, auto_pad, extra)
    cid = _pool_id("AveragePool", shape, attrs, "specials" * specials)
    rng = case_rng(cid)
    x = randn(rng, shape)  # onnxruntime's AveragePool takes float32 only
    if specials:
        x = sprinkle(rng, x, (np.nan, np.inf, -np.inf))
    node = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    return _case(cid, [node], {"x": x}, opset=19 if dilations else 18, **kw)  # dilations from opset 19


def average_pool_cases() -> list[Case]:
    s, s5, s7 = (2, 3, 6, 7), (2, 2, 5, 6), (2, 2, 7, 6)
    cases = [
        average_pool_case(s, (2, 2), strides=(2, 2)),
        average_pool_case(s, (3, 3), strides=(1, 1)),
        average_pool_case(s, (1, 1), strides=(2, 2)),
        average_pool_case(s, (2, 2), strides=(1, 1), dilations=(2, 2)),
        average_pool_case(s, (3, 3), strides=(2, 2), auto_pad="VALID"),
        average_pool_case(s, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), specials=True),
        average_pool_case((2, 3, 9), (3,), strides=(2,), pads=(1, 2), ceil_mode=1, count_include_pad=1),  # 1-D
        average_pool_case((2, 16, 64, 64), (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), large=True),
    ]
    for cip in (0, 1):  # count_include_pad: padding in the divisor or not
        cases += [
            average_pool_case(s, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1), count_include_pad=cip),
            average_pool_case(s, (3, 4), strides=(1, 2), pads=(2, 0, 0, 3), count_include_pad=cip),
            # ceil mode: the divisor stops at the padded edge
            average_pool_case(s5, (3, 3), strides=(2, 2), pads=(1, 1, 1, 0), ceil_mode=1, count_include_pad=cip),
            average_pool_case(
                s7, (3, 2), strides=(2, 3), dilations=(2, 1), pads=(1, 1, 2, 0), ceil_mode=1, count_include_pad=cip
            ),
            average_pool_case(s, (4, 4), strides=(1, 1), auto_pad="SAME_UPPER", count_include_pad=cip),
            average_pool_case(s, (3, 2), strides=(2, 2), auto_pad="SAME_LOWER", count_include_pad=cip),
        ]
    return cases


# --- Softmax and LogSoftmax ------------------------------------------------------------------------------------


def softmax_case(op, shape, axis=None, *, data="randn", **kw) -> Case:
    """``data``: randn, large (±1e4), neginf (-inf entries, one line all -inf), specials (NaN and +inf too)."""
    cid = f"{op}-{_text(shape)}-axis{axis if axis is not None else 'default'}" + f"-{data}" * (data != "randn")
    rng = case_rng(cid)
    x = randn(rng, shape, F32, 3.0)
    if data == "large":
        x = np.asarray(rng.choice([-1e4, 1e4, 0.0, 9999.0, -9998.5], size=shape), dtype=F32)
    elif data == "neginf":
        x = sprinkle(rng, x, [-np.inf] * (x.size // 3))
        line = np.moveaxis(x, axis if axis is not None else -1, -1)  # a view: one line all -inf
        line[(0,) * (x.ndim - 1)] = -np.inf
    elif data == "specials":
        x = sprinkle(rng, x, (np.nan, np.inf, -np.inf))
    attrs = {} if axis is None else {"axis": axis}
    return _case(cid, [helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x}, **kw)


def softmax_cases() -> list[Case]:
    cases = []
    for op in ("Softmax", "LogSoftmax"):
        cases += [
            softmax_case(op, (3, 7)),
            softmax_case(op, (3, 100), -1),  # rows longer than a warp: the CUDA threads stride over them
            softmax_case(op, (2, 3, 4, 5), -1),
            softmax_case(op, (2, 3, 4, 5), 1),  # channel softmax: lines across the inner dimensions
            softmax_case(op, (2, 3, 4, 5), 0),
            softmax_case(op, (2, 3, 4, 5), -2),
            softmax_case(op, (6, 5), 0),
            softmax_case(op, (9,)),
            softmax_case(op, (4, 6), -1, data="large"),
            softmax_case(op, (4, 6), 0, data="large"),
            softmax_case(op, (5, 8), -1, data="neginf"),
            softmax_case(op, (2, 4, 3), 1, data="neginf"),
            softmax_case(op, (6, 5), -1, data="specials"),
            softmax_case(op, (2, 0, 3), 1),
            softmax_case(op, (64, 1000), -1, large=True),  # the parallel CPU kernel
            softmax_case(op, (2, 21, 64, 64), 1, large=True),
        ]
    return cases


# --- Concat, Unsqueeze, Squeeze, Shape, Gather, Transpose, Clip --------------------------------------------------


def _array(rng, shape, dtype):
    return randn(rng, shape, dtype) if dtype != I64 else rng.integers(-(2**40), 2**40, shape).astype(I64)


def concat_case(shapes, axis, *, dtype=F32, const_last=False) -> Case:
    cid = f"Concat-{'+'.join(map(_text, shapes))}-axis{axis}" + "-constlast" * const_last
    cid += f"-{np.dtype(dtype).name}" * (dtype != F32)
    rng = case_rng(cid)
    arrays = {f"x{k}": _array(rng, s, dtype) for k, s in enumerate(shapes)}
    inits = {}
    if const_last:
        name = f"x{len(shapes) - 1}"
        inits[name] = arrays.pop(name)
    node = helper.make_node("Concat", [f"x{k}" for k in range(len(shapes))], ["y"], axis=axis)
    return _case(cid, [node], arrays, inits)


def axes_case(op, shape, axes, *, as_attribute=False, dtype=F32) -> Case:
    cid = f"{op}-{_text(shape)}-axes{','.join(map(str, axes)) if axes is not None else 'none'}"
    cid += "-attribute" * as_attribute + f"-{np.dtype(dtype).name}" * (dtype != F32)
    x = _array(case_rng(cid), shape, dtype)
    if axes is None:
        node, inits, opset = helper.make_node(op, ["x"], ["y"]), {}, 18
    elif as_attribute:  # the form before opset 13
        node, inits, opset = helper.make_node(op, ["x"], ["y"], axes=list(axes)), {}, 11
    else:
        node, inits, opset = helper.make_node(op, ["x", "axes"], ["y"]), {"axes": np.array(axes, I64)}, 18
    return _case(cid, [node], {"x": x}, inits, opset=opset)


def shape_op_case(shape, *, start=None, end=None, dtype=F32) -> Case:
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    cid = f"Shape-{_text(shape)}" + "".join(f"-{k}{v}" for k, v in attrs.items()) + f"-{np.dtype(dtype).name}"
    x = _array(case_rng(cid), shape, dtype)
    return _case(cid, [helper.make_node("Shape", ["x"], ["y"], **attrs)], {"x": x}, outputs=[("y", I64)])


def gather_case(shape, indices, axis=None, *, dtype=F32, const_indices=True) -> Case:
    idx = np.array(indices, I64)
    cid = f"Gather-{_text(shape)}-idx{_text(idx.shape)}-axis{axis}" + f"-{np.dtype(dtype).name}" * (dtype != F32)
    cid += "-idxinput" * (not const_indices)
    x = _array(case_rng(cid), shape, dtype)
    attrs = {} if axis is None else {"axis": axis}
    inputs, inits = {"x": x}, {}
    (inits if const_indices else inputs)["i"] = idx
    return _case(cid, [helper.make_node("Gather", ["x", "i"], ["y"], **attrs)], inputs, inits)


def transpose_case(shape, perm=None, *, dtype=F32) -> Case:
    cid = f"Transpose-{_text(shape)}-perm{''.join(map(str, perm)) if perm is not None else 'default'}"
    cid += f"-{np.dtype(dtype).name}" * (dtype != F32)
    x = _array(case_rng(cid), shape, dtype)
    attrs = {} if perm is None else {"perm": list(perm)}
    return _case(cid, [helper.make_node("Transpose", ["x"], ["y"], **attrs)], {"x": x})


def clip_case(shape, lo=None, hi=None, *, bounds_as_inputs=False, specials=False, dtype=F32) -> Case:
    cid = f"Clip-{_text(shape)}-min{lo}-max{hi}" + "-boundinputs" * bounds_as_inputs + "-specials" * specials
    cid += f"-{np.dtype(dtype).name}" * (dtype != F32)
    rng = case_rng(cid)
    x = _array(rng, shape, dtype) if dtype == I64 else randn(rng, shape, dtype, 3.0)
    if specials:
        x = sprinkle(rng, x, SPECIALS)
    inputs, inits, names = {"x": x}, {}, ["x", "", ""]
    for k, (name, bound) in enumerate((("lo", lo), ("hi", hi))):
        if bound is not None:
            (inputs if bounds_as_inputs else inits)[name] = np.array(bound, dtype)
            names[k + 1] = name
    while names[-1] == "":
        names.pop()
    return _case(cid, [helper.make_node("Clip", names, ["y"])], inputs, inits)


def tensor_cases() -> list[Case]:
    cases = [
        concat_case([(2, 3), (4, 3)], 0),
        concat_case([(2, 3, 4), (2, 1, 4), (2, 5, 4)], 1, const_last=True),
        concat_case([(2, 3, 4), (2, 3, 2)], -1),
        concat_case([(2, 3, 4), (2, 0, 4), (2, 2, 4)], 1),  # an empty input contributes nothing
        concat_case([(2,), (3,), (1,)], 0, dtype=I64),  # shape arithmetic stays on the host
        axes_case("Unsqueeze", (3, 4), [0]),
        axes_case("Unsqueeze", (3, 4), [-1]),
        axes_case("Unsqueeze", (3, 4), [1, 3]),
        axes_case("Unsqueeze", (3, 4), [-1, 0], as_attribute=True),
        axes_case("Unsqueeze", (), [0], dtype=I64),
        axes_case("Squeeze", (1, 3, 1, 4), [0]),
        axes_case("Squeeze", (1, 3, 1, 4), [-2, 0]),
        axes_case("Squeeze", (1, 3, 1, 4), None),  # every size-1 axis
        axes_case("Squeeze", (3, 1, 4), [1], as_attribute=True),
        axes_case("Squeeze", (1,), [0], dtype=I64),
        shape_op_case((2, 3, 4, 5)),
        shape_op_case((2, 3, 4, 5), start=1),
        shape_op_case((2, 3, 4, 5), start=-3, end=-1),
        shape_op_case((2, 3, 4, 5), start=3, end=1),  # empty
        shape_op_case((2, 3, 4, 5), start=-10, end=10),  # clamped
        shape_op_case((3, 2), dtype=I64),
        gather_case((5, 4), [0, 3, -1, 2]),
        gather_case((2, 5, 3), [[1, 0], [4, -5]], 1),
        gather_case((2, 3, 4), 2, -1),  # a scalar index drops the axis
        gather_case((5, 3), [4, 4, 0], 0, const_indices=False),
        gather_case((4,), 1, 0, dtype=I64),  # the exporter's Shape → Gather
        transpose_case((2, 3, 4)),
        transpose_case((2, 3, 4, 5), (0, 2, 3, 1)),
        transpose_case((3, 5), (1, 0)),
        transpose_case((2, 3), (0, 1)),  # identity
        transpose_case((2, 1, 3, 2, 2), (4, 2, 0, 3, 1)),
        transpose_case((3, 4), (1, 0), dtype=I64),
        clip_case((3, 7), -0.5, 0.5),
        clip_case((3, 7), 0.0, 6.0, specials=True),  # Relu6, NaN passes
        clip_case((3, 7), lo=-1.0),
        clip_case((3, 7), hi=1.0),  # min omitted ("")
        clip_case((16,), specials=True),  # no bounds: ±inf become ±max
        clip_case((3, 7), 1.0, -1.0),  # min > max gives max
        clip_case((2, 5), -0.25, 0.75, bounds_as_inputs=True),
        clip_case((3, 4), -5, 1000, dtype=I64),
    ]

    cid = "Concat-shape-arithmetic"  # x → Shape → Gather(0) → Unsqueeze → Concat([n], [-1]) → Reshape(x)
    rng = case_rng(cid)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = {"zero": np.array(0, I64), "axes0": np.array([0], I64), "minus_one": np.array([-1], I64)}
    cases.append(_case(cid, nodes, {"x": randn(rng, (3, 2, 4))}, inits))

    cid = "Transpose-then-Softmax-then-Transpose"  # device arrays through a chain of the new ops
    rng = case_rng(cid)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Softmax", ["t"], ["s"], axis=-1),
        helper.make_node("Transpose", ["s"], ["y"], perm=[0, 3, 1, 2]),
    ]
    cases.append(_case(cid, nodes, {"x": randn(rng, (2, 3, 4, 2))}))
    return cases


CASES: list[Case] = [
    *leaky_relu_cases(),
    *batch_norm_cases(),
    *max_pool_cases(),
    *average_pool_cases(),
    *softmax_cases(),
    *tensor_cases(),
]


def _check(case: Case, backend: str) -> None:
    before = {name: value.copy() for name, value in case.feed.items()}
    sess = runtime.InferenceSession(case.model, backend=backend)
    assert tuple(n.op_type for n in sess._graph.nodes) == case.nodes
    got = sess.run(None, case.feed)
    expected = ort_run(case.oracle or case.model, case.feed)[: len(got)]
    assert_close(got, expected)
    for g, e in zip(got, expected):
        if e.dtype.kind in "iub":  # indices and shapes: exactly (assert_allclose compares in float64)
            np.testing.assert_array_equal(g, e)
    for name, value in before.items():
        np.testing.assert_array_equal(case.feed[name], value, err_msg=f"input '{name}' was modified")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_cpu(case: Case):
    _check(case, "cpu")


def _cuda_param(c: Case):
    reason = c.cuda_skip_reason()
    return pytest.param(c, id=c.id, marks=[pytest.mark.skip(reason=reason)] if reason else [])


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore:.*encountered in scalar:RuntimeWarning")  # the simulator's NumPy scalars on NaN
@pytest.mark.parametrize("case", [_cuda_param(c) for c in CASES])
def test_cuda(case: Case):
    _check(case, "cuda")


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


# --- refusals ----------------------------------------------------------------------------------------------------

BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _one_node(node, x: np.ndarray, inits=None, outputs=("y",)) -> bytes:
    return _model([node], {"x": x}, inits or {}, outputs, 18)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_training_mode_is_refused(backend):
    C = 3
    inits = {k: np.ones(C, F32) for k in ("scale", "B", "mean", "var")}
    # in training mode the running statistics are outputs too (onnxruntime refuses the node with one output)
    node = helper.make_node(
        "BatchNormalization", ["x", "scale", "B", "mean", "var"], ["y", "running_mean", "running_var"], training_mode=1
    )
    x = np.ones((2, C, 2, 2), F32)
    sess = runtime.InferenceSession(_one_node(node, x, inits), backend=backend)
    with pytest.raises(UnsupportedOp, match="training_mode=1"):
        sess.run(None, {"x": x})


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_3d_is_refused(backend):
    x = np.ones((2, 3, 4, 4, 4), F32)
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2, 2])
    sess = runtime.InferenceSession(_one_node(node, x), backend=backend)
    with pytest.raises(UnsupportedOp, match="1-D and 2-D"):
        sess.run(None, {"x": x})


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_out_of_range_is_refused(backend):
    x = np.ones((4, 3), F32)
    node = helper.make_node("Gather", ["x", "i"], ["y"])
    sess = runtime.InferenceSession(_one_node(node, x, {"i": np.array([1, 4], I64)}), backend=backend)
    with pytest.raises(InvalidFeed, match="out of range"):
        sess.run(None, {"x": x})


# --- MaxPool configurations at random ------------------------------------------------------------------------------


@st.composite
def max_pool_configs(draw):
    kernel = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    config = {
        "shape": (draw(st.integers(2, 3)), draw(st.integers(2, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 8))),
        "kernel_shape": kernel,
        "strides": [draw(st.integers(1, 3)), draw(st.integers(1, 3))],
        "dilations": [draw(st.integers(1, 2)), draw(st.integers(1, 2))],
        "ceil_mode": draw(st.integers(0, 1)),
        "storage_order": draw(st.integers(0, 1)),
        "auto_pad": draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }
    if config["auto_pad"] == "NOTSET":
        config["pads"] = [draw(st.integers(0, k - 1)) for k in kernel * 2]
    return config


def _random_max_pool(config: dict, backend: str) -> None:
    config = dict(config)
    shape, seed = config.pop("shape"), config.pop("seed")
    x = np.round(np.random.default_rng(seed).standard_normal(shape) * 2).astype(F32)  # small integers: ties
    model = _model([helper.make_node("MaxPool", ["x"], ["y", "i"], **config)], {"x": x}, {},
                   [("y", F32), ("i", I64)], 18)  # fmt: skip
    try:
        expected = ort_run(model, {"x": x})
    except Exception:  # a configuration onnxruntime refuses (the kernel does not fit the padded input)
        assume(False)
    got = runtime.InferenceSession(model, backend=backend).run(None, {"x": x})
    assert_close(got, expected)
    np.testing.assert_array_equal(got[1], expected[1])


@settings(max_examples=50, deadline=None)
@given(max_pool_configs())
def test_max_pool_random_configs_cpu(config):
    _random_max_pool(config, "cpu")


@pytest.mark.cuda
@settings(max_examples=8, deadline=None)
@given(max_pool_configs())
def test_max_pool_random_configs_cuda(config):
    _random_max_pool(config, "cuda")
