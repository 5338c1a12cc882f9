"""CUDA variants of the data-arranging ops: device arrays are reshaped in place, no kernel is launched.
Shape tensors (int64) stay on the host in the CUDA backend, so ``shape`` here is a NumPy array."""

from __future__ import annotations

from runtime.ops import OPS
from runtime.ops.shape import flatten_shape, reshape_target


@OPS[("", "Identity")].cuda
def Identity(input):
    return input


@OPS[("", "Reshape")].cuda
def Reshape(data, shape, *, allowzero=0):
    return data.reshape(reshape_target(data.shape, shape, allowzero))


@OPS[("", "Flatten")].cuda
def Flatten(input, *, axis=1):
    return input.reshape(flatten_shape(input.shape, axis))
