"""CUDA variants of the tensor plumbing in ``runtime/ops/tensor.py``.

Integer tensors (shape arithmetic) stay on the host in the CUDA backend, and so do empty ones: an op whose data
input is a NumPy array runs the CPU implementation. Float tensors are device arrays; Concat, Gather, Transpose and
Clip copy them with grid-stride kernels in which consecutive threads write consecutive output elements, and
Unsqueeze, Squeeze and Shape only look at the shape. Their small index and shape arrays are ``constant``s: on
the device once per node and shape key, not uploaded per call.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from runtime.errors import InvalidFeed
from runtime.ops import OPS
from runtime.ops._cuda_launch import (
    THREADS_PER_BLOCK,
    as_float32,
    constant,
    current_stream,
    device_array,
    grid_1d,
    kernel,
)
from runtime.ops.tensor import (
    axes_list,
    clip_bound,
    concat_shape,
    dtype_limits,
    gather_indices,
    squeeze_shape,
    transpose_perm,
    unsqueeze_shape,
)


def _on_host(*arrays) -> bool:
    return all(a is None or isinstance(a, np.ndarray) for a in arrays)


def _cpu(op_type: str):
    return OPS[("", op_type)].impl["cpu"]


# --- Concat ----------------------------------------------------------------------------------------------------


@kernel("void(float32[::1], float32[::1], int64, int64, int64)")
def _concat_copy_kernel(src, dst, src_len, dst_len, offset):
    # src: (outer, src_len) flat, dst: (outer, dst_len) flat; src's row o lands at dst[o, offset : offset + src_len]
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        o = i // src_len
        dst[o * dst_len + offset + (i - o * src_len)] = src[i]


@OPS[("", "Concat")].cuda
def Concat(*inputs, axis=None):
    if _on_host(*inputs):
        return _cpu("Concat")(*inputs, axis=axis)
    out_shape, axis = concat_shape([a.shape for a in inputs], axis)
    for a in inputs:
        if isinstance(a, np.ndarray) and a.size:
            raise InvalidFeed(f"Concat mixes host {a.dtype} tensors with device float32 tensors")
        if not isinstance(a, np.ndarray):
            as_float32(a, "Concat")
    Y = device_array(out_shape, dtype=np.float32)
    dst_len = math.prod(out_shape[axis:])
    offset = 0
    for a in inputs:
        src_len = math.prod(a.shape[axis:])
        if a.size:
            _concat_copy_kernel[grid_1d(a.size), THREADS_PER_BLOCK, current_stream()](
                a.reshape(a.size), Y.reshape(Y.size), src_len, dst_len, offset
            )
        offset += src_len
    return Y


# --- Unsqueeze, Squeeze, Shape (no data moves) ------------------------------------------------------------------


@OPS[("", "Unsqueeze")].cuda
def Unsqueeze(data, axes_input=None, *, axes=None):
    return data.reshape(unsqueeze_shape(data.shape, axes_list(axes_input, axes, "Unsqueeze")))


@OPS[("", "Squeeze")].cuda
def Squeeze(data, axes_input=None, *, axes=None):
    return data.reshape(squeeze_shape(data.shape, axes_list(axes_input, axes, "Squeeze")))


@OPS[("", "Shape")].cuda
def Shape(data, *, end=None, start=0):
    return np.array(data.shape[start:end], dtype=np.int64)  # on the host, as every int64 tensor


# --- Gather ------------------------------------------------------------------------------------------------------


@kernel("void(float32[::1], int64[::1], float32[::1], int64, int64, int64)")
def _gather_kernel(data, indices, y, axis_len, n_indices, inner):
    # data: (outer, axis_len, inner) flat; indices: (n_indices,) non-negative; y: (outer, n_indices, inner) flat
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        r = i % inner
        rest = i // inner
        j = rest % n_indices
        o = rest // n_indices
        y[i] = data[(o * axis_len + indices[j]) * inner + r]


@OPS[("", "Gather")].cuda
def Gather(data, indices, *, axis=0):
    if _on_host(data):
        return _cpu("Gather")(data, indices, axis=axis)
    as_float32(data, "Gather")
    indices, axis, out_shape = gather_indices(data.shape, indices, axis)
    Y = device_array(out_shape, dtype=np.float32)
    if Y.size:
        inner = math.prod(data.shape[axis + 1 :])
        _gather_kernel[grid_1d(Y.size), THREADS_PER_BLOCK, current_stream()](
            data.reshape(data.size), constant(indices.reshape(-1)), Y.reshape(Y.size),
            data.shape[axis], indices.size, inner,
        )  # fmt: skip
    return Y


# --- Transpose ---------------------------------------------------------------------------------------------------


@kernel("void(float32[::1], float32[::1], int64[::1], int64[::1])")
def _transpose_kernel(x, y, out_shape, in_strides):
    # y: (n,) flat output of shape out_shape; in_strides[d]: x's element stride along output dimension d
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        rest = i
        offset = 0
        for d in range(out_shape.size - 1, -1, -1):
            coord = rest % out_shape[d]
            rest //= out_shape[d]
            offset += coord * in_strides[d]
        y[i] = x[offset]


@OPS[("", "Transpose")].cuda
def Transpose(data, *, perm=None):
    if _on_host(data):
        return _cpu("Transpose")(data, perm=perm)
    as_float32(data, "Transpose")
    perm = transpose_perm(data.ndim, perm)
    if perm == sorted(perm):
        return data
    strides = [math.prod(data.shape[d + 1 :]) for d in range(data.ndim)]  # C-order element strides
    out_shape = tuple(data.shape[p] for p in perm)
    Y = device_array(out_shape, dtype=np.float32)
    if Y.size == 0:
        return Y
    _transpose_kernel[grid_1d(Y.size), THREADS_PER_BLOCK, current_stream()](
        data.reshape(data.size),
        Y.reshape(Y.size),
        constant(np.array(out_shape, dtype=np.int64)),
        constant(np.array([strides[p] for p in perm], dtype=np.int64)),
    )
    return Y


# --- Clip --------------------------------------------------------------------------------------------------------


@kernel("void(float32[::1], float32[::1], float32[::1], float32[::1])")
def _clip_kernel(x, y, lo, hi):
    # x, y: (n,); lo, hi: (1,); max then min, so NaN passes through (as runtime/ops/tensor.py)
    low = lo[0]
    high = hi[0]
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        v = low if v < low else v
        y[i] = high if high < v else v


def _device_bound(bound, default: float, name: str):
    """A bound as a (1,) device array: the given one-element tensor (read on the device: no synchronisation),
    or the dtype's limit."""
    if bound is None:
        return constant(np.array([default], dtype=np.float32))
    if isinstance(bound, np.ndarray):
        return constant(np.array([clip_bound(bound, default, np.dtype(np.float32), name)], dtype=np.float32))
    as_float32(bound, f"Clip {name}")
    if bound.size != 1:
        raise InvalidFeed(f"Clip {name} must be a scalar, got shape {bound.shape}")
    return bound.reshape(1)


@OPS[("", "Clip")].cuda
def Clip(input, min=None, max=None):
    if _on_host(input):
        host = [b.copy_to_host() if b is not None and not isinstance(b, np.ndarray) else b for b in (min, max)]
        return _cpu("Clip")(input, *host)
    as_float32(input, "Clip")
    lowest, highest = dtype_limits(np.dtype(np.float32))
    Y = device_array(input.shape, dtype=np.float32)
    n = Y.size
    if n == 0:
        return Y
    _clip_kernel[grid_1d(n), THREADS_PER_BLOCK, current_stream()](
        input.reshape(n), Y.reshape(n), _device_bound(min, lowest, "min"), _device_bound(max, highest, "max")
    )
    return Y
