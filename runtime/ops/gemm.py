"""Gemm and MatMul (https://onnx.ai/onnx/operators/onnx__Gemm.html, onnx__MatMul.html), and FusedGemm:
Gemm followed by an activation, which the loader fuses (``runtime/fusion.py``) so that the bias and the
activation run as one pass over the GEMM's output instead of two more passes through memory.
"""

from __future__ import annotations

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


def _fused_gemm(A, B, C, alpha, beta, transA, transB, activation):
    M, N, _ = gemm_shapes(A.shape, B.shape, transA, transB)
    a = A.T if transA else A  # (M, K)
    b = B.T if transB else B  # (K, N)
    with np.errstate(all="ignore"):  # inf and NaN propagate silently, as in onnxruntime
        y = np.matmul(a, b)  # (M, N), BLAS sgemm for float32
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    return bias_activation_(y, bias_2d(C, M, N), beta, activation)


@onnx_op
def Gemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return _fused_gemm(A, B, C, alpha, beta, transA, transB, 0)


@onnx_op(domain=FUSED_DOMAIN)
def FusedGemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, activation=""):
    return _fused_gemm(A, B, C, alpha, beta, transA, transB, ACTIVATIONS[activation])


@onnx_op
def MatMul(A, B):
    return np.matmul(A, B)
