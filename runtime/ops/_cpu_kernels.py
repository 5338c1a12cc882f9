"""Numba CPU kernels shared by several ops: activation epilogues applied in place over a 2-D buffer.

``fastmath`` stays off everywhere: it lets LLVM assume no NaN, and NaN must propagate as in onnxruntime.
"""

from __future__ import annotations

import math
import types
import weakref

import numba
import numpy as np

# Activation codes used by the fused epilogues (CPU and CUDA share them). LeakyRelu takes its ``alpha``.
ACTIVATIONS = {"": 0, "Sigmoid": 1, "Relu": 2, "Tanh": 3, "LeakyRelu": 4}
LEAKY_RELU_ALPHA = 0.01  # ONNX's default

# Below this many elements a parallel loop costs more in thread start-up than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 15


def serial_and_parallel(fn):
    """``fn`` compiled twice, ``(serial, parallel)``, each with its own entry in Numba's on-disk cache. Numba
    names a cache file after the function's qualified name and first line and does not key it on the
    ``parallel`` flag: two dispatchers of one function would share one file, and whichever compiled first
    (ever, on this machine) would serve both, a parallel kernel running serially in every later process or the
    reverse. The parallel one is therefore a copy of ``fn`` under another name."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel", fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"
    twin.__module__ = fn.__module__
    return numba.njit(cache=True)(fn), numba.njit(cache=True, parallel=True)(twin)


# --- weights in the layout a kernel wants, made once per session weight (onnxruntime's "pre-packing") --------

_WEIGHTS: dict[int, weakref.ref] = {}  # id -> the session's weight arrays (read-only; see register_weights)
_PACKED: dict[tuple[int, str], np.ndarray] = {}


def register_weights(arrays) -> None:
    """Mark a session's weights (initialisers, made read-only) as constant, so that ``packed`` may keep derived
    layouts of them for as long as they live."""
    for a in arrays:
        if isinstance(a, np.ndarray) and not a.flags.writeable:
            key = id(a)

            def forget(_, key=key):
                _WEIGHTS.pop(key, None)
                for k in [k for k in _PACKED if k[0] == key]:
                    _PACKED.pop(k, None)

            _WEIGHTS[key] = weakref.ref(a, forget)


def packed(w: np.ndarray, kind: str, make) -> np.ndarray:
    """``make(w)``, computed once per session weight ``w`` and kind; for any other array (a feed, which its owner
    may change between runs), computed on every call."""
    ref = _WEIGHTS.get(id(w))
    if ref is None or ref() is not w:
        return make(w)
    key = (id(w), kind)
    out = _PACKED.get(key)
    if out is None:
        out = _PACKED[key] = make(w)
        out.flags.writeable = False
    return out


@numba.njit(inline="always")
def activate_alpha(v, activation, alpha):
    if activation == 1:
        # exp(-v) overflows to inf for v < -88 and 1/inf is the exact limit 0; NaN stays NaN.
        return 1.0 / (1.0 + math.exp(-v))
    if activation == 2:
        return v if v >= 0 or v != v else 0.0  # max(v, 0) as onnxruntime: -0.0 stays, -inf gives 0
    if activation == 3:
        return math.tanh(v)
    if activation == 4:
        return v if v >= 0 else alpha * v  # as onnxruntime: -0.0 stays, NaN stays NaN
    return v


@numba.njit(inline="always")
def activate(v, activation):
    """``activate_alpha`` with LeakyRelu at its default alpha."""
    return activate_alpha(v, activation, LEAKY_RELU_ALPHA)


def _bias_activation(y, bias, beta, activation, alpha):
    # y: (M, N) written in place; bias: (Mb, Nb) with Mb in {1, M}, Nb in {1, N} (ONNX unidirectional broadcast)
    M, N = y.shape
    row_step = 1 if bias.shape[0] > 1 else 0
    col_step = 1 if bias.shape[1] > 1 else 0
    for i in numba.prange(M):
        bi = i * row_step
        for j in range(N):
            y[i, j] = activate_alpha(y[i, j] + beta * bias[bi, j * col_step], activation, alpha)


def _activation(y, activation, alpha):
    # y: (M, N) in place
    M, N = y.shape
    for i in numba.prange(M):
        for j in range(N):
            y[i, j] = activate_alpha(y[i, j], activation, alpha)


_bias_activation_serial, _bias_activation_parallel = serial_and_parallel(_bias_activation)
_activation_serial, _activation_parallel = serial_and_parallel(_activation)


def bias_activation_(
    y: np.ndarray, bias: np.ndarray | None, beta: float, activation: int, alpha: float = LEAKY_RELU_ALPHA
) -> np.ndarray:
    """In place on the 2-D ``y``: ``y = act(y + beta * bias)``; ``bias`` is 2-D and broadcastable to ``y``;
    ``alpha`` is LeakyRelu's slope (ignored by the other activations)."""
    parallel = y.size >= PARALLEL_MIN_ELEMENTS
    alpha = y.dtype.type(alpha)
    if bias is None:
        if activation:
            (_activation_parallel if parallel else _activation_serial)(y, activation, alpha)
        return y
    fn = _bias_activation_parallel if parallel else _bias_activation_serial
    fn(y, bias.astype(y.dtype, copy=False), y.dtype.type(beta), activation, alpha)
    return y


def unary_(x: np.ndarray, activation: int, alpha: float = LEAKY_RELU_ALPHA) -> np.ndarray:
    """A new array ``act(x)`` of any shape."""
    y = np.array(x, copy=True, order="C")
    if y.size == 0:
        return y
    y2 = y.reshape(-1, y.shape[-1] if y.ndim else 1)  # (rows, last) view of the copy
    bias_activation_(y2, None, 0.0, activation, alpha)
    return y
