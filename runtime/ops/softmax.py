"""Softmax and LogSoftmax along one axis, opset-13 semantics (https://onnx.ai/onnx/operators/onnx__Softmax.html,
onnx__LogSoftmax.html), computed as onnxruntime's MLAS does: subtract the line's maximum, sum the exponentials,
then ``exp(x − max) · (1/sum)`` or ``(x − max) − log(sum)``. A line holding NaN or +inf, or only -inf, gives NaN
throughout, as in onnxruntime.

Opsets 1–12 defined these ops over the input flattened to 2-D at ``axis`` (default 1): the same for rank-2
inputs, not for higher ranks. The op cannot see the model's opset; the loader would have to refuse those.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from runtime.errors import InvalidFeed, InvalidModel
from runtime.ops import FLOATS, onnx_op
from runtime.ops._cpu_kernels import PARALLEL_MIN_ELEMENTS, serial_and_parallel

# When the axis is not the last, lines are processed BLOCK at a time along the inner (contiguous) dimensions, so
# that every pass over the softmax axis reads contiguous memory.
BLOCK = 256


def lines_shape(shape: tuple[int, ...], axis: int, op_type: str) -> tuple[int, int, int]:
    """(outer, axis length, inner) of ``shape`` around ``axis``."""
    rank = len(shape)
    if not -rank <= axis < max(rank, 1):
        raise InvalidModel(f"{op_type}: axis {axis} is out of range for an input of rank {rank}")
    axis = axis + rank if axis < 0 else axis
    if rank == 0:
        return 1, 1, 1
    return int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1 :]))


# The kernels take ``one`` of x's dtype so that all their arithmetic stays in x's precision. A line's maximum starts
# from its first element: a line holding NaN gives NaN whatever its maximum, as in onnxruntime.


def _softmax_rows(x, y, log, one):
    # x, y: (rows, L), the axis last: one task per row
    rows, L = x.shape
    for o in numba.prange(rows):
        peak = x[o, 0]
        for j in range(1, L):
            if x[o, j] > peak:
                peak = x[o, j]
        total = one - one
        if log:
            for j in range(L):
                total += math.exp(x[o, j] - peak)
            log_total = math.log(total)
            for j in range(L):
                y[o, j] = (x[o, j] - peak) - log_total
        else:
            for j in range(L):
                e = math.exp(x[o, j] - peak)
                y[o, j] = e
                total += e
            scale = one / total
            for j in range(L):
                y[o, j] *= scale


def _softmax_lines(x, y, log, one):
    # x, y: (outer, L, inner), inner > 1; each task takes one outer index and up to BLOCK inner positions
    outer, L, inner = x.shape
    blocks = (inner + BLOCK - 1) // BLOCK
    for task in numba.prange(outer * blocks):
        o = task // blocks
        r0 = (task - o * blocks) * BLOCK
        width = min(BLOCK, inner - r0)
        peak = x[o, 0, r0 : r0 + width].copy()
        total = np.zeros(width, dtype=x.dtype)
        for j in range(1, L):
            for r in range(width):
                v = x[o, j, r0 + r]
                if v > peak[r]:
                    peak[r] = v
        if log:
            for j in range(L):
                for r in range(width):
                    total[r] += math.exp(x[o, j, r0 + r] - peak[r])
            for r in range(width):
                total[r] = math.log(total[r])
            for j in range(L):
                for r in range(width):
                    y[o, j, r0 + r] = (x[o, j, r0 + r] - peak[r]) - total[r]
        else:
            for j in range(L):
                for r in range(width):
                    e = math.exp(x[o, j, r0 + r] - peak[r])
                    y[o, j, r0 + r] = e
                    total[r] += e
            for r in range(width):
                total[r] = one / total[r]
            for j in range(L):
                for r in range(width):
                    y[o, j, r0 + r] *= total[r]


_softmax_rows_serial, _softmax_rows_parallel = serial_and_parallel(_softmax_rows)
_softmax_lines_serial, _softmax_lines_parallel = serial_and_parallel(_softmax_lines)


def softmax(X: np.ndarray, axis: int, log: bool, op_type: str) -> np.ndarray:
    outer, L, inner = lines_shape(X.shape, axis, op_type)
    if X.dtype.kind != "f":
        raise InvalidFeed(f"{op_type} takes floating-point tensors, got {X.dtype}")
    y = np.empty(X.shape, dtype=X.dtype)
    if y.size:
        parallel = X.size >= PARALLEL_MIN_ELEMENTS
        x = np.ascontiguousarray(X)
        one = X.dtype.type(1)
        if inner == 1:
            fn = _softmax_rows_parallel if parallel else _softmax_rows_serial
            fn(x.reshape(outer, L), y.reshape(outer, L), log, one)
        else:
            fn = _softmax_lines_parallel if parallel else _softmax_lines_serial
            fn(x.reshape(outer, L, inner), y.reshape(outer, L, inner), log, one)
    return y


@onnx_op(since=13, dtypes={"input": FLOATS})
def Softmax(input, *, axis=-1):
    return softmax(input, axis, False, "Softmax")


@onnx_op(since=13, dtypes={"input": FLOATS})
def LogSoftmax(input, *, axis=-1):
    return softmax(input, axis, True, "LogSoftmax")
