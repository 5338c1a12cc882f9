"""CUDA Softmax and LogSoftmax, the arithmetic of ``runtime/ops/softmax.py``, on the input seen as
(outer, L, inner) around the axis:

- inner > 1 (the axis is not the last): one thread per line (o, r) in a grid-stride loop, r fastest, so
  consecutive threads read consecutive addresses at every step along the axis;
- inner == 1 (the last axis): one block of ROW_THREADS threads per row, which stride over the row together
  and combine their maxima and sums in shared memory.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from runtime.ops import OPS
from runtime.ops._cuda_launch import THREADS_PER_BLOCK, as_float32, current_stream, device_array, grid_1d, kernel
from runtime.ops.softmax import lines_shape

ROW_THREADS = 32  # threads per row for last-axis softmax: one warp
MAX_BLOCKS = 65535


@kernel("void(float32[:, :, ::1], float32[:, :, ::1], int32)")
def _softmax_lines_kernel(x, y, log):
    # x, y: (outer, L, inner); thread i takes line (o, r) = divmod(i, inner)
    outer, L, inner = x.shape
    for i in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        o = i // inner
        r = i % inner
        peak = float32(-math.inf)
        for j in range(L):
            v = x[o, j, r]
            if v > peak:
                peak = v
        total = float32(0.0)
        for j in range(L):
            total += math.exp(x[o, j, r] - peak)
        if log:
            log_total = math.log(total)
            for j in range(L):
                y[o, j, r] = (x[o, j, r] - peak) - log_total
        else:
            scale = float32(1.0) / total
            for j in range(L):
                y[o, j, r] = math.exp(x[o, j, r] - peak) * scale


@kernel("void(float32[:, ::1], float32[:, ::1], int32)")
def _softmax_rows_kernel(x, y, log):
    # x, y: (rows, L); block b takes rows b, b + gridDim, ...; its ROW_THREADS threads stride over each row
    rows, L = x.shape
    tid = cuda.threadIdx.x
    peaks = cuda.shared.array(ROW_THREADS, float32)
    totals = cuda.shared.array(ROW_THREADS, float32)
    for row in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        peak = float32(-math.inf)
        for j in range(tid, L, ROW_THREADS):
            v = x[row, j]
            if v > peak:
                peak = v
        peaks[tid] = peak
        cuda.syncthreads()
        half = ROW_THREADS // 2
        while half > 0:
            if tid < half and peaks[tid + half] > peaks[tid]:
                peaks[tid] = peaks[tid + half]
            cuda.syncthreads()
            half //= 2
        peak = peaks[0]
        total = float32(0.0)
        for j in range(tid, L, ROW_THREADS):
            total += math.exp(x[row, j] - peak)
        totals[tid] = total
        cuda.syncthreads()
        half = ROW_THREADS // 2
        while half > 0:
            if tid < half:
                totals[tid] += totals[tid + half]
            cuda.syncthreads()
            half //= 2
        total = totals[0]
        if log:
            log_total = math.log(total)
            for j in range(tid, L, ROW_THREADS):
                y[row, j] = (x[row, j] - peak) - log_total
        else:
            scale = float32(1.0) / total
            for j in range(tid, L, ROW_THREADS):
                y[row, j] = math.exp(x[row, j] - peak) * scale


def _softmax(X, axis: int, log: bool, op_type: str):
    outer, L, inner = lines_shape(X.shape, axis, op_type)
    Y = device_array(X.shape, dtype=np.float32)
    if Y.size == 0:
        return Y
    as_float32(X, op_type)
    if inner == 1:
        rows = outer
        blocks = min(rows, MAX_BLOCKS)
        _softmax_rows_kernel[blocks, ROW_THREADS, current_stream()](
            X.reshape(rows, L), Y.reshape(rows, L), np.int32(log)
        )
    else:
        n = outer * inner
        _softmax_lines_kernel[grid_1d(n), THREADS_PER_BLOCK, current_stream()](
            X.reshape(outer, L, inner), Y.reshape(outer, L, inner), np.int32(log)
        )
    return Y


@OPS[("", "Softmax")].cuda
def Softmax(input, *, axis=-1):
    return _softmax(input, axis, False, "Softmax")


@OPS[("", "LogSoftmax")].cuda
def LogSoftmax(input, *, axis=-1):
    return _softmax(input, axis, True, "LogSoftmax")
