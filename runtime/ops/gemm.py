"""Gemm and MatMul (https://onnx.ai/onnx/operators/onnx__Gemm.html, onnx__MatMul.html), and FusedGemm:
Gemm followed by an activation, which the loader fuses (``runtime/fusion.py``) so that the bias and the
activation run as one pass over the GEMM's output instead of two more passes through memory.

Every GEMM of the CPU backend goes through ``blas_matmul``, which picks OpenBLAS's thread count per call (see
``BlasThreads``).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np

from runtime.errors import InvalidFeed
from runtime.ops import onnx_op
from runtime.ops._cpu_kernels import ACTIVATIONS, bias_activation_

FUSED_DOMAIN = "ai.deconvzoo"


def gemm_shapes(A_shape, B_shape, transA: int, transB: int) -> tuple[int, int, int]:
    """(M, N, K) of ``op(A) @ op(B)``, checking that the inner dimensions agree."""
    if len(A_shape) != 2 or len(B_shape) != 2:
        raise InvalidFeed(f"Gemm expects 2-D A and B, got shapes {tuple(A_shape)} and {tuple(B_shape)}")
    M, K = (A_shape[1], A_shape[0]) if transA else tuple(A_shape)
    Kb, N = (B_shape[1], B_shape[0]) if transB else tuple(B_shape)
    if K != Kb:
        raise InvalidFeed(f"Gemm inner dimensions differ: op(A) is {M}x{K}, op(B) is {Kb}x{N}")
    return M, N, K


def bias_2d(C: np.ndarray | None, M: int, N: int):
    """C as a 2-D (1|M, 1|N) array, the shapes ONNX's unidirectional broadcast to (M, N) allows."""
    if C is None:
        return None
    C2 = C.reshape((1,) * (2 - C.ndim) + C.shape) if C.ndim < 2 else C  # (Mc, Nc)
    if C2.ndim != 2 or C2.shape[0] not in (1, M) or C2.shape[1] not in (1, N):
        raise InvalidFeed(f"Gemm bias C of shape {C.shape} does not broadcast to ({M}, {N})")
    return C2


# --- OpenBLAS's thread count, per GEMM ----------------------------------------------------------------------


def _openblas_thread_functions():
    """(get, set) of the thread count of the OpenBLAS that NumPy loaded, as ctypes functions; (None, None) where
    NumPy's BLAS is not an OpenBLAS found in this process (then every GEMM runs with BLAS's own settings)."""
    np_dir = os.path.dirname(np.__file__)
    candidates = []
    try:
        with open("/proc/self/maps") as maps:  # Linux: the libraries actually loaded
            candidates = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()})
    except OSError:
        pass
    # NumPy's wheels bundle theirs beside the package (numpy.libs/, numpy/.dylibs/); prefer it to scipy's copy
    bundled = glob.glob(np_dir + ".libs/*openblas*") + glob.glob(os.path.join(np_dir, ".dylibs", "*openblas*"))
    bundled = [p for p in bundled if not candidates or os.path.realpath(p) in map(os.path.realpath, candidates)]
    for path in bundled or candidates[:1]:
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, get.argtypes = ctypes.c_int, []
                    put.restype, put.argtypes = None, [ctypes.c_int]
                    return get, put
    return None, None


class BlasThreads:
    """OpenBLAS's thread count chosen per GEMM, by size alone so that a model gives the same result on every
    run. Below ``SERIAL_FLOPS`` a GEMM runs on one thread, as onnxruntime's MLAS effectively does: waking a
    second thread costs more than it saves. (Below ``BLAS_SERIAL_FLOPS`` OpenBLAS decides that itself, and the
    two calls that switch, 0.3 us each, are saved.) Above, OpenBLAS uses its own thread count. OpenBLAS splits
    the work statically and waits for the slowest thread: when another process holds a core, a (64, 784) x
    (784, 196) product took 12-48 ms on 2 threads against 0.26 ms on one, so on a loaded machine run with fewer
    threads (OPENBLAS_NUM_THREADS, ``zoo bench --threads``)."""

    BLAS_SERIAL_FLOPS = 1 << 19
    # ~16.8 MFLOP. Alone, a GEMM of 4-16 MFLOP is faster on two threads of 2 idle cores ((16, 150) x (150, 1600):
    # 0.101 ms on one, 0.065 on two), but inside a model, between Numba's parallel loops, it is not: the shipped
    # DeconvNet at batch 1 took 5.56 ms with this threshold at 4.2 MFLOP and 4.12 ms at 16.8 (LeNet at batch 64:
    # 1.84 and 1.98 ms), alternating in one process.
    SERIAL_FLOPS = 1 << 24

    def __init__(self):
        self.get, self.set = _openblas_thread_functions()

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None, flops: int) -> np.ndarray:
        if self.set is None or flops < self.BLAS_SERIAL_FLOPS or flops >= self.SERIAL_FLOPS:
            return np.matmul(a, b, out=out)
        threads = self.get()
        if threads <= 1:
            return np.matmul(a, b, out=out)
        self.set(1)
        try:
            return np.matmul(a, b, out=out)
        finally:
            self.set(threads)


BLAS_THREADS = BlasThreads()


def blas_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` of float (..., M, K) and (..., K, N) arrays, on as many BLAS threads as pay."""
    K, N = b.shape[-2], b.shape[-1]
    rows = a.size // K if K else 0  # M times a's batch
    flops = 2 * K * N * max(rows, b.size // (K * N) if K * N else 0)
    return BLAS_THREADS.matmul(a, b, out, flops)


# --- the ops ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _gemm_plan(A_shape, B_shape, C_shape, transA, transB) -> tuple[tuple | None, int]:
    """(C's 2-D shape, the GEMM's FLOPs), checked once per shapes: a node sees the same ones at every run."""
    M, N, K = gemm_shapes(A_shape, B_shape, transA, transB)
    C2 = None if C_shape is None else bias_2d(np.empty(C_shape, np.int8), M, N).shape
    return C2, 2 * M * N * K


def _fused_gemm(A, B, C, alpha, beta, transA, transB, activation):
    C2_shape, flops = _gemm_plan(A.shape, B.shape, None if C is None else C.shape, transA, transB)
    a = A.T if transA else A  # (M, K)
    b = B.T if transB else B  # (K, N)
    with np.errstate(all="ignore"):  # inf and NaN propagate silently, as in onnxruntime
        if flops < BlasThreads.BLAS_SERIAL_FLOPS or a.dtype.kind != "f" or a.dtype != b.dtype:
            y = np.matmul(a, b)  # (M, N)
        else:
            y = BLAS_THREADS.matmul(a, b, None, flops)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    return bias_activation_(y, None if C is None else C.reshape(C2_shape), beta, activation)


@onnx_op
def Gemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return _fused_gemm(A, B, C, alpha, beta, transA, transB, 0)


@onnx_op(domain=FUSED_DOMAIN)
def FusedGemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, activation=""):
    return _fused_gemm(A, B, C, alpha, beta, transA, transB, ACTIVATIONS[activation])


@onnx_op
def MatMul(A, B):
    if A.ndim >= 2 and B.ndim >= 2 and A.dtype.kind == "f" and A.dtype == B.dtype:
        return blas_matmul(A, B)
    return np.matmul(A, B)
