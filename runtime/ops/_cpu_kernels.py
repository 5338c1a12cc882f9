"""Numba CPU kernels shared by several ops: activation epilogues applied in place over a 2-D buffer.

``fastmath`` stays off everywhere: it lets LLVM assume no NaN, and NaN must propagate as in onnxruntime.
"""

from __future__ import annotations

import math
import types
import weakref

import numba
import numba.extending
import numpy as np

# Activation codes used by the fused epilogues (CPU and CUDA share them). LeakyRelu takes its ``alpha``.
ACTIVATIONS = {"": 0, "Sigmoid": 1, "Relu": 2, "Tanh": 3, "LeakyRelu": 4}
LEAKY_RELU_ALPHA = 0.01  # ONNX's default

# Every CPU kernel: cached on disk, and NumPy's error model: a float division by zero gives inf or NaN as ONNX
# wants, instead of Python's ZeroDivisionError, whose per-element check also keeps LLVM from vectorising a loop
# (bias + logistic over 64×784: 158 us with it, 16.5 us without). Integer divisors here are never zero: strides,
# dilations and kernel sizes are checked to be at least 1 when a node's geometry is resolved.
JIT = dict(cache=True, error_model="numpy")

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
    return numba.njit(**JIT)(fn), numba.njit(**JIT, parallel=True)(twin)


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


def packed_weight(w: np.ndarray, kind: str, make) -> np.ndarray | None:
    """``make(w)``, computed once per session weight ``w`` and kind; None for any other array. Left writable,
    unlike ``packed``'s: Numba types a read-only array apart from a writable one, and the GEMM's kernels would be
    compiled twice (once for packed weights, once for the panels they pack themselves), ~2 s each with an empty
    cache. Only the runtime's kernels see these panels, and they never write them."""
    ref = _WEIGHTS.get(id(w))
    if ref is None or ref() is not w:
        return None
    return packed(w, kind, make, readonly=False)


def packed(w: np.ndarray, kind: str, make, readonly: bool = True) -> np.ndarray:
    """``make(w)``, computed once per session weight ``w`` and kind; for any other array (a feed, which its owner
    may change between runs), computed on every call."""
    ref = _WEIGHTS.get(id(w))
    if ref is None or ref() is not w:
        return make(w)
    key = (id(w), kind)
    out = _PACKED.get(key)
    if out is None:
        out = _PACKED[key] = make(w)
        out.flags.writeable = not readonly
    return out


# --- the logistic function, float32: the rational approximation onnxruntime's MLAS uses (Eigen's coefficients)
# logistic(x) − 1/2 ≈ x·P(x²)/Q(x²) on x clamped to [−18, 18], where float32's logistic is 0 or 1 to within
# 1.6e-8. Pure arithmetic, so LLVM vectorises the epilogue loops around it (math.exp is a scalar libm call:
# bias + logistic over 64×784 took 107 us with it, 13 us with this). Largest difference from the exact value
# over [−30, 30]: 2.2e-7 (tests/test_perf_paths.py). NaN stays NaN (the clamps below keep it); −inf gives 0
# and +inf 1 (onnxruntime's gives −6e-8 at −inf: this one is clamped to [0, 1]).
_LOGISTIC_LO, _LOGISTIC_HI, _HALF, _ONE = np.float32(-18.0), np.float32(18.0), np.float32(0.5), np.float32(1.0)
_P9, _P7, _P5, _P3, _P1 = (np.float32(c) for c in (4.37031012579801e-11, 1.15627324459942e-07,
                                                    6.08574864600143e-05, 8.51377133304701e-03,
                                                    2.48287947061529e-01))  # fmt: skip
_Q10, _Q8, _Q6, _Q4, _Q2, _Q0 = (np.float32(c) for c in (6.10247389755681e-13, 5.76102136993427e-09,
                                                         6.29106785017040e-06, 1.70198817374094e-03,
                                                         1.16817656904453e-01, 9.93151921023180e-01))  # fmt: skip
_ZERO = np.float32(0.0)


def logistic(v):
    """1 / (1 + exp(−v)): this in Python and for float64 in Numba code; float32 in Numba: ``_logistic_float32``."""
    return 1.0 / (1.0 + math.exp(-v))


def _logistic_float32(v):
    x = _LOGISTIC_LO if v < _LOGISTIC_LO else v  # a NaN fails both tests and stays
    x = _LOGISTIC_HI if x > _LOGISTIC_HI else x
    x2 = x * x
    p = (((_P9 * x2 + _P7) * x2 + _P5) * x2 + _P3) * x2 + _P1
    q = ((((_Q10 * x2 + _Q8) * x2 + _Q6) * x2 + _Q4) * x2 + _Q2) * x2 + _Q0
    y = x * p / q + _HALF
    y = _ZERO if y < _ZERO else y  # the approximation dips to −6e-8 at −18 and tops 1 by an ulp at 18
    return _ONE if y > _ONE else y  # NaN fails both tests and stays


# --- tanh, float32: the same scheme (onnxruntime's MLAS, Eigen's coefficients): tanh(x) ≈ x·P(x²)/Q(x²) on x
# clamped to [−9, 9], the result clamped to [−1, 1]. Largest difference from the exact value over [−30, 30]:
# tests/test_perf_paths.py. NaN stays NaN.
_TANH_LO, _TANH_HI = np.float32(-9.0), np.float32(9.0)
_T13, _T11, _T9, _T7, _T5, _T3, _T1 = (np.float32(c) for c in (-2.76076847742355e-16, 2.00018790482477e-13,
                                                              -8.60467152213735e-11, 5.12229709037114e-08,
                                                              1.48572235717979e-05, 6.37261928875436e-04,
                                                              4.89352455891786e-03))  # fmt: skip
_U6, _U4, _U2, _U0 = (np.float32(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                              4.89352518554385e-03))  # fmt: skip


def tanh(v):
    """The hyperbolic tangent: this in Python and for float64 in Numba code; float32 in Numba: ``_tanh_float32``."""
    return math.tanh(v)


def _tanh_float32(v):
    x = _TANH_LO if v < _TANH_LO else v  # a NaN fails both tests and stays
    x = _TANH_HI if x > _TANH_HI else x
    x2 = x * x
    p = (((((_T13 * x2 + _T11) * x2 + _T9) * x2 + _T7) * x2 + _T5) * x2 + _T3) * x2 + _T1
    q = ((_U6 * x2 + _U4) * x2 + _U2) * x2 + _U0
    y = x * p / q
    y = -_ONE if y < -_ONE else y
    return _ONE if y > _ONE else y


def _float32_in_numba(exact, fast):
    """In Numba code, ``exact(v)`` runs ``fast`` when v is float32 and ``exact``'s own body otherwise."""

    @numba.extending.overload(exact)
    def _choose(v):
        return fast if isinstance(v, numba.types.Float) and v.bitwidth == 32 else exact


_float32_in_numba(logistic, _logistic_float32)
_float32_in_numba(tanh, _tanh_float32)


@numba.njit(inline="always")
def activate_alpha(v, activation, alpha):
    if activation == 1:
        return logistic(v)
    if activation == 2:
        return v if v >= 0 or v != v else 0.0  # max(v, 0) as onnxruntime: -0.0 stays, -inf gives 0
    if activation == 3:
        return tanh(v)
    if activation == 4:
        return v if v >= 0 else alpha * v  # as onnxruntime: -0.0 stays, NaN stays NaN
    return v


# The elementwise epilogues' parallel kernels call a separately compiled serial function for their inner loops:
# written directly in the ``prange`` body the loop was not vectorised (bias + logistic over 64×784 on one
# thread: 192 us in the prange body, 21 us through a called function). Measure before moving other kernels:
# Conv's tiles, which call BLAS, ran 10-15 % slower as a called function than inlined into the body.


@numba.njit(**JIT)
def bias_activation_rows(y, bias, has_bias, beta, activation, alpha, r0, r1):
    # Rows [r0, r1) of y (M, N) in place: act(y + beta·bias), bias (Mb, Nb) with Mb in {1, M}, Nb in {1, N}
    # (ONNX's unidirectional broadcast); act(y) when not has_bias.
    N = y.shape[1]
    row_step = 1 if bias.shape[0] > 1 else 0
    col_step = 1 if bias.shape[1] > 1 else 0
    if has_bias:
        for i in range(r0, r1):
            bi = i * row_step
            for j in range(N):
                y[i, j] = activate_alpha(y[i, j] + beta * bias[bi, j * col_step], activation, alpha)
    else:
        for i in range(r0, r1):
            for j in range(N):
                y[i, j] = activate_alpha(y[i, j], activation, alpha)


def _bias_activation(y, bias, has_bias, beta, activation, alpha, tasks):
    # y: (M, N) in place, in `tasks` bands of rows
    M = y.shape[0]
    for t in numba.prange(tasks):
        i = np.int64(t)  # (prange's index is unsigned: the called kernel would be compiled for it apart)
        bias_activation_rows(y, bias, has_bias, beta, activation, alpha, i * M // tasks, (i + 1) * M // tasks)


_bias_activation_serial, _bias_activation_parallel = serial_and_parallel(_bias_activation)
_NO_BIAS = {np.dtype(np.float32): np.zeros((1, 1), np.float32), np.dtype(np.float64): np.zeros((1, 1), np.float64)}


def no_bias(dtype) -> np.ndarray:
    """The (1, 1) placeholder passed as ``bias`` with ``has_bias=False`` (never read)."""
    dtype = np.dtype(dtype)
    return _NO_BIAS[dtype] if dtype in _NO_BIAS else np.zeros((1, 1), dtype)


def kernel_operand(a: np.ndarray) -> np.ndarray:
    """``a`` as the kernels take their operands: writable. Numba types a read-only array apart from a writable
    one and compiles every kernel that receives it once more (with an empty cache 2-13 s per kernel, and the
    kernels it calls: a session weight as a bias made the GEMM, the convolutions and col2im compile twice). The
    kernels never write these operands; a session weight's writable copy is made once, another read-only array
    (a feed from ``np.frombuffer`` or onnx's ``numpy_helper``, or a view of one) is copied on every call."""
    if a.flags.writeable:
        return a
    copy = packed_weight(a, "writable", np.array)
    return np.array(a) if copy is None else copy


def bias_operand(bias: np.ndarray | None, dtype) -> tuple[np.ndarray, bool]:
    """(the 2-D bias in the output's dtype, or the unread placeholder; whether there is one), as the epilogue
    kernels take them."""
    if bias is None:
        return no_bias(dtype), False
    return kernel_operand(bias.astype(dtype, copy=False)), True


def bias_activation_(
    y: np.ndarray, bias: np.ndarray | None, beta: float, activation: int, alpha: float = LEAKY_RELU_ALPHA
) -> np.ndarray:
    """In place on the 2-D ``y``: ``y = act(y + beta * bias)``; ``bias`` is 2-D and broadcastable to ``y``;
    ``alpha`` is LeakyRelu's slope (ignored by the other activations)."""
    if bias is None and not activation:
        return y
    parallel = y.size >= PARALLEL_MIN_ELEMENTS and y.shape[0] > 1
    fn = _bias_activation_parallel if parallel else _bias_activation_serial
    dtype = y.dtype
    bias, has_bias = bias_operand(bias, dtype)
    fn(y, bias, has_bias, dtype.type(beta), activation, dtype.type(alpha), min(y.shape[0], 16) if parallel else 1)
    return y


def unary_(x: np.ndarray, activation: int, alpha: float = LEAKY_RELU_ALPHA) -> np.ndarray:
    """A new array ``act(x)`` of any shape."""
    y = np.array(x, copy=True, order="C")
    if y.size == 0:
        return y
    y2 = y.reshape(-1, y.shape[-1] if y.ndim else 1)  # (rows, last) view of the copy
    bias_activation_(y2, None, 0.0, activation, alpha)
    return y
