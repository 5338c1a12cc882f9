"""BatchNormalization in its inference form (https://onnx.ai/onnx/operators/onnx__BatchNormalization.html,
opset 15) over (N, C, ...) of any rank >= 2.

As onnxruntime (``batch_norm.h``), the statistics are folded per channel first,
``scale_c = scale / sqrt(var + epsilon)`` and ``bias_c = B − mean·scale_c``, then ``Y = X·scale_c + bias_c``:
the same rounding as the oracle, and the same NaN/inf where var + epsilon is 0 or negative.
"""

from __future__ import annotations

import numba
import numpy as np

from runtime.errors import InvalidFeed, UnsupportedOp
from runtime.ops import FLOATS, onnx_op
from runtime.ops._cpu_kernels import PARALLEL_MIN_ELEMENTS, serial_and_parallel


def check_batch_norm(X_shape, params: dict, training_mode) -> int:
    """C, after checking the inference form and the parameter shapes (each (C,))."""
    if training_mode:
        raise UnsupportedOp(
            "BatchNormalization with training_mode=1 (batch statistics, running-mean outputs) is not supported; "
            "this runtime runs inference graphs (training_mode=0)"
        )
    if len(X_shape) < 2:
        raise InvalidFeed(f"BatchNormalization expects X of rank >= 2 (N, C, ...), got shape {tuple(X_shape)}")
    C = X_shape[1]
    for name, value in params.items():
        if tuple(value.shape) != (C,):
            raise InvalidFeed(f"BatchNormalization: {name} has shape {tuple(value.shape)}; expected ({C},)")
    return C


def fold_statistics(scale, B, mean, var, epsilon, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale_c, bias_c), each (C,), in ``dtype``."""
    scale, B, mean, var = (np.asarray(a, dtype=dtype) for a in (scale, B, mean, var))
    with np.errstate(all="ignore"):  # var + epsilon <= 0 gives inf or NaN, as in onnxruntime
        inv_std = dtype.type(1) / np.sqrt(var + dtype.type(epsilon))
        scale_c = inv_std * scale
        bias_c = B - mean * scale_c
    return scale_c, bias_c


def _affine_channels(x, y, scale_c, bias_c):
    # x, y: (N·C, S) rows of one channel each; row i has channel i % C
    rows, S = x.shape
    C = scale_c.shape[0]
    for i in numba.prange(rows):
        c = i % C
        s = scale_c[c]
        b = bias_c[c]
        for k in range(S):
            y[i, k] = x[i, k] * s + b


_affine_channels_serial, _affine_channels_parallel = serial_and_parallel(_affine_channels)


@onnx_op(dtypes=dict.fromkeys(("X", "scale", "B", "input_mean", "input_var"), FLOATS))
def BatchNormalization(X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    params = {"scale": scale, "B": B, "input_mean": input_mean, "input_var": input_var}
    C = check_batch_norm(X.shape, params, training_mode)
    if X.dtype.kind != "f":
        raise InvalidFeed(f"BatchNormalization takes floating-point tensors, got {X.dtype}")
    y = np.empty(X.shape, dtype=X.dtype)
    if y.size == 0:
        return y
    scale_c, bias_c = fold_statistics(scale, B, input_mean, input_var, epsilon, X.dtype)
    rows = X.shape[0] * C
    fn = _affine_channels_parallel if X.size >= PARALLEL_MIN_ELEMENTS else _affine_channels_serial
    fn(np.ascontiguousarray(X).reshape(rows, -1), y.reshape(rows, -1), scale_c, bias_c)
    return y
