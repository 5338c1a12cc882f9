"""CUDA MaxPool and AveragePool (2-D, and 1-D as 2-D): one thread per output element in a grid-stride loop over
the flat (N·C, OH, OW) output, so consecutive threads write consecutive addresses; window geometry and semantics
as in ``runtime/ops/pool.py`` (which computes the geometry on the host). Integer tensors stay on the host in the
CUDA backend: MaxPool pools them with the CPU kernel. MaxUnpool (1-D to 3-D) is a deterministic scatter in three
grid-stride passes, described at its kernels; an index out of range raises at the end of the session's run,
when the flag its kernel set is read with the outputs (``_cuda_launch.check_later``)."""

from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32, int64

from runtime.errors import InvalidFeed, UnsupportedOp
from runtime.ops import OPS
from runtime.ops._cuda_launch import (
    THREADS_PER_BLOCK,
    as_float32,
    check_later,
    constant,
    current_stream,
    device_array,
    grid_1d,
    kernel,
)
from runtime.ops.pool import check_storage_order, out_of_range, pool_geometry, unpool_shape

FLOAT32_LOWEST = float32(np.finfo(np.float32).min)

_GEOMETRY = "int64, int64, int64, int64, int64, int64, int64, int64, int64, int64"  # kh kw sh sw dh dw pt pl pb pr


@kernel(f"void(float32[:, :, ::1], float32[:, :, ::1], int64[:, :, ::1], {_GEOMETRY}, int32, int32)")
def _max_pool_kernel(x, y, indices, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, column_major, with_indices):
    # x: (P, H, W) planes; y, indices: (P, OH, OW); indices is written only if with_indices
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for i in range(cuda.grid(1), P * OH * OW, cuda.gridsize(1)):
        ow = i % OW
        rest = i // OW
        oh = rest % OH
        p = rest // OH
        h0 = oh * sh - pt
        w0 = ow * sw - pl
        best = FLOAT32_LOWEST
        best_h = int64(-1)
        best_w = int64(-1)
        for a in range(kh):
            h = h0 + a * dh
            if h < 0 or h >= H:
                continue
            for b in range(kw):
                w = w0 + b * dw
                if w < 0 or w >= W:
                    continue
                v = x[p, h, w]
                if best_h < 0 or v > best:  # first in-bounds element, then strictly greater only
                    best = v
                    best_h = h
                    best_w = w
        y[p, oh, ow] = best
        if with_indices:
            plane = int64(p) * H * W
            indices[p, oh, ow] = plane + (best_h + best_w * H if column_major else best_h * W + best_w)


@kernel(f"void(float32[:, :, ::1], float32[:, :, ::1], {_GEOMETRY}, int32)")
def _average_pool_kernel(x, y, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, count_include_pad):
    # x: (P, H, W); y: (P, OH, OW); the divisor as in runtime/ops/pool.py
    P, H, W = x.shape
    OH, OW = y.shape[1], y.shape[2]
    for i in range(cuda.grid(1), P * OH * OW, cuda.gridsize(1)):
        ow = i % OW
        rest = i // OW
        oh = rest % OH
        p = rest // OH
        h0 = oh * sh - pt
        w0 = ow * sw - pl
        h_end = min(h0 + (kh - 1) * dh + 1, H + pb)
        w_end = min(w0 + (kw - 1) * dw + 1, W + pr)
        acc = float32(0.0)
        count = 0
        for h in range(h0, h_end, dh):
            if h < 0 or h >= H:
                continue
            for w in range(w0, w_end, dw):
                if w < 0 or w >= W:
                    continue
                acc += x[p, h, w]
                count += 1
        if count_include_pad:
            count = (1 + (h_end - h0 - 1) // dh) * (1 + (w_end - w0 - 1) // dw)
        y[p, oh, ow] = acc / float32(count) if count > 0 else acc


# MaxUnpool writes X[j] at Y.flat[I.flat[j]], and of several j with the same index the last in scan order wins (as
# onnxruntime's serial loop). A parallel scatter would race on those duplicates, and a gather would have to search
# all of I for each output element, so each output element first claims, with an atomic max, the last input
# position that points to it, then reads that one input: O(in + out) work, the same result on every run, and
# indices anywhere in the output (``output_shape`` lets them cross planes). Winners are int32: X has < 2³¹ elements.


@kernel("void(int32[::1], int64[::1])")
def _unpool_reset_kernel(winner, bad):
    # winner: (out_size,) the input position each output element takes, -1 for none (a zero); bad: [found, index]
    start = cuda.grid(1)
    if start == 0:
        bad[0] = 0
    for t in range(start, winner.size, cuda.gridsize(1)):
        winner[t] = -1


@kernel("void(int64[::1], int32[::1], int64[::1])")
def _unpool_claim_kernel(indices, winner, bad):
    # indices: (in_size,) I flattened; an index outside the output is reported in bad (any one of them) and skipped
    n = winner.size
    for j in range(cuda.grid(1), indices.size, cuda.gridsize(1)):
        t = indices[j]
        if t < 0 or t >= n:
            bad[1] = t
            bad[0] = 1
        else:
            cuda.atomic.max(winner, t, int32(j))


@kernel("void(float32[::1], int32[::1], float32[::1])")
def _unpool_gather_kernel(x, winner, y):
    # x: (in_size,) X flattened; y: (out_size,) the output flattened
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        j = winner[t]
        y[t] = x[j] if j >= 0 else float32(0.0)


@OPS[("", "MaxPool")].cuda
def MaxPool(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    storage_order=0,
    strides=None,
    _outputs=(True, True),
):
    if isinstance(X, np.ndarray):  # integer (and empty) tensors stay on the host: the CPU kernel takes them
        return OPS[("", "MaxPool")].impl["cpu"](X, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                                                 kernel_shape=kernel_shape, pads=pads, storage_order=storage_order,
                                                 strides=strides, _outputs=_outputs)  # fmt: skip
    g = pool_geometry("MaxPool", X.shape, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                      kernel_shape=kernel_shape, pads=pads, strides=strides)  # fmt: skip
    column_major = check_storage_order(storage_order)
    with_indices = len(_outputs) > 1 and _outputs[1]
    Y = device_array(g.out_shape, dtype=np.float32)
    indices = device_array(g.out_shape if with_indices else (1,), dtype=np.int64)
    n = Y.size
    if n:
        out_planes = (g.planes[0], g.out_h, g.out_w)
        _max_pool_kernel[grid_1d(n), THREADS_PER_BLOCK, current_stream()](
            as_float32(X, "MaxPool").reshape(g.planes),
            Y.reshape(out_planes),
            indices.reshape(out_planes if with_indices else (1, 1, 1)),
            *g.kernel_args(),
            np.int32(column_major),
            np.int32(with_indices),
        )
    return (Y, indices) if with_indices else Y


@OPS[("", "AveragePool")].cuda
def AveragePool(
    X,
    *,
    auto_pad="NOTSET",
    ceil_mode=0,
    count_include_pad=0,
    dilations=None,
    kernel_shape=None,
    pads=None,
    strides=None,
):
    g = pool_geometry("AveragePool", X.shape, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                      kernel_shape=kernel_shape, pads=pads, strides=strides)  # fmt: skip
    Y = device_array(g.out_shape, dtype=np.float32)
    n = Y.size
    if n:
        _average_pool_kernel[grid_1d(n), THREADS_PER_BLOCK, current_stream()](
            as_float32(X, "AveragePool").reshape(g.planes),
            Y.reshape(g.planes[0], g.out_h, g.out_w),
            *g.kernel_args(),
            np.int32(count_include_pad),
        )
    return Y


@OPS[("", "MaxUnpool")].cuda
def MaxUnpool(X, I, output_shape=None, *, kernel_shape=None, pads=None, strides=None):
    if isinstance(X, np.ndarray):  # an empty (or integer) X stays on the host: the CPU kernel takes it
        I = I if isinstance(I, np.ndarray) else I.copy_to_host()
        return OPS[("", "MaxUnpool")].impl["cpu"](X, I, output_shape, kernel_shape=kernel_shape, pads=pads,
                                                   strides=strides)  # fmt: skip
    shape = unpool_shape(X.shape, I.shape, output_shape, kernel_shape=kernel_shape, pads=pads, strides=strides)
    x = as_float32(X, "MaxUnpool").reshape(-1)
    if I.dtype != np.int64:
        raise InvalidFeed(f"MaxUnpool takes int64 indices I; got {I.dtype}")
    if x.size >= 2**31:
        raise UnsupportedOp(f"the cuda backend's MaxUnpool takes fewer than 2**31 input elements; got {x.size}")
    indices = constant(np.ascontiguousarray(I).reshape(-1)) if isinstance(I, np.ndarray) else I.reshape(-1)
    Y = device_array(shape, dtype=np.float32)
    y = Y.reshape(-1)
    winner = device_array(y.size, dtype=np.int32)
    bad = device_array((2,), dtype=np.int64, persistent=True)  # read once, with the outputs: no sync here
    stream = current_stream()
    _unpool_reset_kernel[grid_1d(y.size), THREADS_PER_BLOCK, stream](winner, bad)
    _unpool_claim_kernel[grid_1d(x.size), THREADS_PER_BLOCK, stream](indices, winner, bad)
    _unpool_gather_kernel[grid_1d(y.size), THREADS_PER_BLOCK, stream](x, winner, y)
    check_later(bad, lambda index: out_of_range(index, shape))
    return Y
