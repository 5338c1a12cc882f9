"""Ops that only rearrange or name data: Identity, Reshape, Flatten
(https://onnx.ai/onnx/operators/onnx__Reshape.html, onnx__Flatten.html). They return views, never copies.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from runtime.errors import InvalidFeed
from runtime.ops import onnx_op


def reshape_target(in_shape: tuple[int, ...], shape, allowzero: int = 0) -> tuple[int, ...]:
    """The output shape of ONNX Reshape: 0 copies the input dimension (unless allowzero), -1 is inferred."""
    shape = np.asarray(shape).reshape(-1)
    target = tuple(shape.tolist()) if shape.dtype.kind in "iu" else tuple(int(s) for s in shape)
    return _reshape_target(tuple(in_shape), target, int(allowzero))


@functools.lru_cache(maxsize=1024)
def _reshape_target(in_shape: tuple[int, ...], shape: tuple[int, ...], allowzero: int) -> tuple[int, ...]:
    # remembered per shapes: a node sees the same ones at every run (np.prod three times cost 11 us a call)
    out = list(shape)
    if not allowzero:
        if len(out) > len(in_shape) and 0 in out[len(in_shape) :]:
            raise InvalidFeed(f"Reshape target {out} copies (0) a dimension that the input {in_shape} lacks")
        out = [in_shape[i] if s == 0 else s for i, s in enumerate(out)]
    size = math.prod(in_shape)
    if out.count(-1) > 1:
        raise InvalidFeed(f"Reshape target {out} has more than one -1")
    if -1 in out:
        known = math.prod(s for s in out if s != -1)
        if known == 0 or size % known:
            raise InvalidFeed(f"cannot reshape a tensor of shape {in_shape} to {out}")
        out[out.index(-1)] = size // known
    if min(out, default=0) < 0 or math.prod(out) != size:
        raise InvalidFeed(f"cannot reshape a tensor of shape {in_shape} to {out}")
    return tuple(out)


def flatten_shape(in_shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    axis = axis + len(in_shape) if axis < 0 else axis
    return math.prod(in_shape[:axis]), math.prod(in_shape[axis:])


@onnx_op
def Identity(input):
    return input


@onnx_op
def Reshape(data, shape, *, allowzero=0):
    return data.reshape(reshape_target(data.shape, shape, allowzero))


@onnx_op
def Flatten(input, *, axis=1):
    return input.reshape(flatten_shape(input.shape, axis))
