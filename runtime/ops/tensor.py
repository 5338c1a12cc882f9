"""Tensor plumbing an exporter emits around the layers: Concat, Unsqueeze, Squeeze, Shape, Gather, Transpose,
and Clip (https://onnx.ai/onnx/operators/, one page per op_type; opset-13 forms, with Unsqueeze's and
Squeeze's older ``axes`` attribute accepted too). The data-moving ops use NumPy, which already copies at memory
speed; Clip is a Numba kernel.
"""

from __future__ import annotations

import numba
import numpy as np

from runtime.errors import InvalidFeed, InvalidModel
from runtime.ops import FLOATS, INTEGERS, onnx_op
from runtime.ops._cpu_kernels import PARALLEL_MIN_ELEMENTS, serial_and_parallel


def normalize_axis(axis: int, rank: int, op_type: str) -> int:
    if not -rank <= axis < rank:
        raise InvalidModel(f"{op_type}: axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


# --- Concat ----------------------------------------------------------------------------------------------------


def concat_shape(shapes: list[tuple[int, ...]], axis, op_type: str = "Concat") -> tuple[tuple[int, ...], int]:
    """The output shape and the normalised axis; every input must agree off the axis."""
    if axis is None:
        raise InvalidModel(f"{op_type} needs the 'axis' attribute")
    if not shapes:
        raise InvalidModel(f"{op_type} needs at least one input")
    rank = len(shapes[0])
    if rank == 0 or any(len(s) != rank for s in shapes):
        raise InvalidFeed(f"{op_type} takes inputs of one rank >= 1, got shapes {[tuple(s) for s in shapes]}")
    axis = normalize_axis(axis, rank, op_type)
    for s in shapes:
        if any(a != b for d, (a, b) in enumerate(zip(s, shapes[0])) if d != axis):
            raise InvalidFeed(f"{op_type} along axis {axis}: shapes {[tuple(s) for s in shapes]} differ off the axis")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out), axis


@onnx_op
def Concat(*inputs, axis=None):
    _, axis = concat_shape([a.shape for a in inputs], axis)
    if len({a.dtype for a in inputs}) > 1:
        raise InvalidFeed(f"Concat inputs have different dtypes {[str(a.dtype) for a in inputs]}")
    return np.concatenate(inputs, axis=axis)


# --- Unsqueeze, Squeeze, Shape ----------------------------------------------------------------------------------


def axes_list(axes_input, axes_attribute, op_type: str) -> list[int] | None:
    """The axes, from the input (opset 13) or the attribute (before 13); None when neither is given."""
    if axes_input is not None and axes_attribute is not None:
        raise InvalidModel(f"{op_type} has both an 'axes' input and an 'axes' attribute")
    axes = axes_input if axes_input is not None else axes_attribute
    if axes is None:
        return None
    return [int(a) for a in np.asarray(axes).reshape(-1)]


def unsqueeze_shape(shape: tuple[int, ...], axes: list[int] | None) -> tuple[int, ...]:
    if axes is None:
        raise InvalidModel("Unsqueeze needs axes (an input from opset 13, an attribute before)")
    rank = len(shape) + len(axes)
    positions = {normalize_axis(a, rank, "Unsqueeze") for a in axes}
    if len(positions) != len(axes):
        raise InvalidModel(f"Unsqueeze axes {axes} repeat an axis")
    dims = iter(shape)
    return tuple(1 if d in positions else next(dims) for d in range(rank))


def squeeze_shape(shape: tuple[int, ...], axes: list[int] | None) -> tuple[int, ...]:
    if axes is None:
        return tuple(d for d in shape if d != 1)
    positions = {normalize_axis(a, len(shape), "Squeeze") for a in axes}
    if len(positions) != len(axes):
        raise InvalidModel(f"Squeeze axes {axes} repeat an axis")
    for d in positions:
        if shape[d] != 1:
            raise InvalidFeed(f"Squeeze: axis {d} of shape {tuple(shape)} has size {shape[d]}, not 1")
    return tuple(n for d, n in enumerate(shape) if d not in positions)


@onnx_op
def Unsqueeze(data, axes_input=None, *, axes=None):
    return data.reshape(unsqueeze_shape(data.shape, axes_list(axes_input, axes, "Unsqueeze")))


@onnx_op
def Squeeze(data, axes_input=None, *, axes=None):
    return data.reshape(squeeze_shape(data.shape, axes_list(axes_input, axes, "Squeeze")))


@onnx_op
def Shape(data, *, end=None, start=0):
    # ONNX clamps start and end (negative ones count from the back) exactly as a Python slice does
    return np.array(data.shape[start:end], dtype=np.int64)


# --- Gather, Transpose -----------------------------------------------------------------------------------------


def gather_indices(shape: tuple[int, ...], indices, axis: int) -> tuple[np.ndarray, int, tuple[int, ...]]:
    """(indices made non-negative, the normalised axis, the output shape), after a range check."""
    axis = normalize_axis(axis, len(shape), "Gather")
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise InvalidFeed(f"Gather indices must be integers, got {indices.dtype}")
    n = shape[axis]
    if indices.size and (indices.min() < -n or indices.max() >= n):
        raise InvalidFeed(f"Gather indices {indices.reshape(-1)[:8].tolist()}... are out of range [{-n}, {n - 1}]")
    indices = np.where(indices < 0, indices + n, indices).astype(np.int64)
    return indices, axis, tuple(shape[:axis]) + indices.shape + tuple(shape[axis + 1 :])


@onnx_op
def Gather(data, indices, *, axis=0):
    indices, axis, _ = gather_indices(data.shape, indices, axis)
    return np.take(data, indices, axis=axis)


def transpose_perm(rank: int, perm) -> list[int]:
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(perm) != list(range(rank)):
        raise InvalidModel(f"Transpose perm {perm} is not a permutation of the {rank} axes")
    return perm


@onnx_op
def Transpose(data, *, perm=None):
    return np.ascontiguousarray(np.transpose(data, transpose_perm(data.ndim, perm)))


# --- Clip --------------------------------------------------------------------------------------------------------


def _clip(x, y, lo, hi):
    # x, y: (n,); max then min as onnxruntime (std::max(x, lo), then std::min): NaN passes through
    for i in numba.prange(x.size):
        v = x[i]
        v = lo if v < lo else v
        y[i] = hi if hi < v else v


_clip_serial, _clip_parallel = serial_and_parallel(_clip)


def clip_bound(bound, default, dtype: np.dtype, name: str):
    """A Clip bound (a one-element tensor, or None for the dtype's limit) as a scalar of ``dtype``."""
    if bound is None:
        return dtype.type(default)
    bound = np.asarray(bound)
    if bound.size != 1 or bound.dtype != dtype:
        raise InvalidFeed(f"Clip {name} must be a scalar of the input's dtype {dtype}, got {bound.dtype} {bound.shape}")
    return bound.reshape(())[()]


def dtype_limits(dtype: np.dtype) -> tuple:
    """onnxruntime's default Clip bounds: the dtype's lowest and highest values (so ±inf become ±max)."""
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    return info.min, info.max


@onnx_op(dtypes={"input": FLOATS + INTEGERS, "min": FLOATS + INTEGERS, "max": FLOATS + INTEGERS})
def Clip(input, min=None, max=None):
    lowest, highest = dtype_limits(input.dtype)
    lo = clip_bound(min, lowest, input.dtype, "min")
    hi = clip_bound(max, highest, input.dtype, "max")
    y = np.empty(input.shape, dtype=input.dtype)
    if y.size:
        fn = _clip_parallel if y.size >= PARALLEL_MIN_ELEMENTS else _clip_serial
        fn(np.ascontiguousarray(input).reshape(-1), y.reshape(-1), lo, hi)
    return y
