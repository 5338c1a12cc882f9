"""CUDA element-wise ops: activations with a grid-stride loop over the flat tensor, and broadcasting
arithmetic with the broadcast resolved on the host into per-dimension element strides (0 where broadcast), kept
on the device per node and shape key (``_cuda_launch.constant``).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from runtime.errors import InvalidFeed
from runtime.ops import OPS
from runtime.ops._cpu_kernels import ACTIVATIONS, LEAKY_RELU_ALPHA
from runtime.ops._cuda_launch import (
    THREADS_PER_BLOCK,
    activate_alpha,
    as_float32,
    constant,
    current_stream,
    device_array,
    grid_1d,
    kernel,
)

MAX_RANK = 6
BINARY_CODES = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3}


@kernel("void(float32[::1], float32[::1], int32, float32)")
def _unary_kernel(x, y, activation, alpha):
    # x, y: (n,) flat views of contiguous tensors; consecutive threads touch consecutive elements
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.size, stride):
        y[i] = activate_alpha(x[i], activation, alpha)


@kernel("void(float32[::1], int64[::1], float32[::1], int64[::1], float32[::1], int64[::1], int32)")
def _binary_kernel(a, a_strides, b, b_strides, y, y_shape, op):
    # y: (n,) flat output of shape y_shape (padded on the left with 1s to MAX_RANK);
    # a_strides, b_strides: element strides of a and b in that shape, 0 along broadcast dimensions
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, y.size, stride):
        rem = i
        ia = 0
        ib = 0
        for d in range(y_shape.size - 1, -1, -1):
            coord = rem % y_shape[d]
            rem //= y_shape[d]
            ia += coord * a_strides[d]
            ib += coord * b_strides[d]
        u = a[ia]
        v = b[ib]
        if op == 0:
            y[i] = u + v
        elif op == 1:
            y[i] = u - v
        elif op == 2:
            y[i] = u * v
        else:
            y[i] = u / v


def _unary(X, activation: int, alpha: float = LEAKY_RELU_ALPHA):
    as_float32(X, "activation")
    Y = device_array(X.shape, dtype=np.float32)
    n = X.size
    if n == 0:  # a grid of zero blocks is an error on a GPU
        return Y
    _unary_kernel[grid_1d(n), THREADS_PER_BLOCK, current_stream()](
        X.reshape(n), Y.reshape(n), np.int32(activation), np.float32(alpha)
    )
    return Y


def _broadcast_strides(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    strides, step = [], 1
    for dim in reversed(padded):
        strides.append(step if dim > 1 else 0)
        step *= dim
    return np.array(strides[::-1], dtype=np.int64)


def _binary(A, B, op_type: str):
    as_float32(A, op_type)
    as_float32(B, op_type)
    try:
        out_shape = np.broadcast_shapes(A.shape, B.shape)
    except ValueError:
        raise InvalidFeed(f"{op_type}: shapes {A.shape} and {B.shape} do not broadcast") from None
    if len(out_shape) > MAX_RANK:
        raise InvalidFeed(f"the cuda {op_type} takes tensors of rank <= {MAX_RANK}, got {len(out_shape)}")
    Y = device_array(out_shape, dtype=np.float32)
    n = Y.size
    if n == 0:
        return Y
    index_shape = out_shape or (1,)  # a 0-d result is indexed as one element of rank 1
    _binary_kernel[grid_1d(n), THREADS_PER_BLOCK, current_stream()](
        A.reshape(A.size),
        constant(_broadcast_strides(A.shape, index_shape)),
        B.reshape(B.size),
        constant(_broadcast_strides(B.shape, index_shape)),
        Y.reshape(n),
        constant(np.array(index_shape, dtype=np.int64)),
        np.int32(BINARY_CODES[op_type]),
    )
    return Y


@OPS[("", "Sigmoid")].cuda
def Sigmoid(X):
    return _unary(X, ACTIVATIONS["Sigmoid"])


@OPS[("", "Relu")].cuda
def Relu(X):
    return _unary(X, ACTIVATIONS["Relu"])


@OPS[("", "Tanh")].cuda
def Tanh(X):
    return _unary(X, ACTIVATIONS["Tanh"])


@OPS[("", "LeakyRelu")].cuda
def LeakyRelu(X, *, alpha=LEAKY_RELU_ALPHA):
    return _unary(X, ACTIVATIONS["LeakyRelu"], alpha)


@OPS[("", "Add")].cuda
def Add(A, B):
    return _binary(A, B, "Add")


@OPS[("", "Sub")].cuda
def Sub(A, B):
    return _binary(A, B, "Sub")


@OPS[("", "Mul")].cuda
def Mul(A, B):
    return _binary(A, B, "Mul")


@OPS[("", "Div")].cuda
def Div(A, B):
    return _binary(A, B, "Div")
