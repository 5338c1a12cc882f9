"""CUDA BatchNormalization (inference form): one grid-stride pass over the flat (N, C, S) tensor; each thread
folds its channel's statistics as ``runtime/ops/normalization.py`` does (a few flops per element, against one
more launch and two (C,) buffers for a separate fold: the pass is bound by memory either way)."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from runtime.ops import OPS
from runtime.ops._cuda_launch import THREADS_PER_BLOCK, as_float32, current_stream, device_array, grid_1d, kernel
from runtime.ops.normalization import check_batch_norm

_VEC = "float32[::1]"


@kernel(f"void({_VEC}, {_VEC}, {_VEC}, {_VEC}, {_VEC}, {_VEC}, int64, int64, float32)")
def _batch_norm_kernel(x, y, scale, B, mean, var, C, S, epsilon):
    # x, y: (N·C·S,) flat; scale, B, mean, var: (C,); element i has channel (i // S) % C
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        c = (i // S) % C
        denominator = var[c] + epsilon
        # sqrt of a negative (or NaN) is NaN, said outright: the simulator's math.sqrt would raise instead
        root = math.sqrt(denominator) if denominator >= 0 else float32(math.nan)
        scale_c = float32(1.0) / root * scale[c]
        bias_c = B[c] - mean[c] * scale_c
        y[i] = x[i] * scale_c + bias_c


@OPS[("", "BatchNormalization")].cuda
def BatchNormalization(X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, training_mode=0):
    params = {"scale": scale, "B": B, "input_mean": input_mean, "input_var": input_var}
    C = check_batch_norm(X.shape, params, training_mode)
    Y = device_array(X.shape, dtype=np.float32)
    n = Y.size
    if n == 0:
        return Y
    for name, value in {"X": X, **params}.items():
        as_float32(value, f"BatchNormalization ({name})")
    S = n // (X.shape[0] * C)
    _batch_norm_kernel[grid_1d(n), THREADS_PER_BLOCK, current_stream()](
        X.reshape(n), Y.reshape(n), scale, B, input_mean, input_var, np.int64(C), np.int64(S), np.float32(epsilon)
    )
    return Y
