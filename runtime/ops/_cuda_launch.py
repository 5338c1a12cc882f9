"""Launch configuration and shared device code for the Numba-CUDA kernels.

Every kernel is declared with ``@kernel(signature, ...)``: it is compiled lazily for the argument types it
meets at run time, and the listed signatures are what ``tests/test_ptx.py`` compiles to real PTX for
compute capabilities 8.0 and 9.0, so a kernel that runs in the simulator but would not build for a GPU fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numba import cuda, float32

from runtime.ops._cpu_kernels import LEAKY_RELU_ALPHA

# One place for launch geometry; tests may patch these before a kernel is first compiled.
THREADS_PER_BLOCK = 256
TILE = 16  # GEMM tile edge: (TILE, TILE) threads per block, two (TILE, TILE) float32 tiles of shared memory
# GEMMs with at most this many rows (batch-1 inference and other skinny products) use one thread per output
# element looping over K: no shared memory or barriers, coalesced reads of a (K, N) weight.
SKINNY_MAX_ROWS = 16


class KernelRecord:
    def __init__(self, py_func: Callable, signatures: tuple[str, ...]):
        self.name = f"{py_func.__module__}.{py_func.__name__}"
        self.py_func = py_func
        self.signatures = signatures


KERNELS: list[KernelRecord] = []


def kernel(*signatures: str):
    """``@cuda.jit`` that also records the kernel and its representative signatures for the PTX check."""

    def register(fn: Callable):
        KERNELS.append(KernelRecord(fn, signatures))
        return cuda.jit(fn)

    return register


def grid_1d(n: int) -> int:
    """Blocks for a grid-stride loop over ``n`` elements (capped: each thread then loops)."""
    return max(1, min(math.ceil(n / THREADS_PER_BLOCK), 65535))


@cuda.jit(device=True, inline=True)
def activate_alpha(v, activation, alpha):
    # Same codes as runtime.ops._cpu_kernels.ACTIVATIONS; NaN propagates (no fastmath). float32 constants keep
    # the arithmetic in single precision on the device. ``alpha`` (float32) is LeakyRelu's slope.
    if activation == 1:
        return float32(1.0) / (float32(1.0) + math.exp(-v))
    if activation == 2:
        return v if v >= 0 or v != v else float32(0.0)  # max(v, 0): -0.0 stays, -inf gives 0
    if activation == 3:
        return math.tanh(v)
    if activation == 4:
        return v if v >= 0 else alpha * v  # -0.0 stays, NaN stays NaN
    return v


@cuda.jit(device=True, inline=True)
def activate(v, activation):
    # activate_alpha with LeakyRelu at its ONNX default slope
    return activate_alpha(v, activation, float32(LEAKY_RELU_ALPHA))


def as_float32(x, what: str):
    from runtime.errors import InvalidFeed

    if x.dtype != np.float32:
        raise InvalidFeed(f"the cuda backend's {what} takes float32 tensors, got {x.dtype}")
    return x
