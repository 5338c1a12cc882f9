"""Gemm and MatMul (https://onnx.ai/onnx/operators/onnx__Gemm.html, onnx__MatMul.html), and FusedGemm:
Gemm followed by an activation, which the loader fuses (``runtime/fusion.py``) so that the bias and the
activation run in the GEMM's epilogue, on each block of the output while it is in cache.

Every float product runs through the runtime's own GEMM (``runtime/ops/_gemm_cpu.py``): one summation order
per output element, so a sample's row is the same bits alone or in any batch, on any thread count and whatever
BLAS NumPy was built with. A constant weight is packed into the GEMM's panels once per session.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from runtime.errors import InvalidFeed
from runtime.ops import ABSENT, FLOATS, INTEGERS, _gemm_cpu, onnx_op
from runtime.ops._cpu_kernels import ACTIVATIONS, LEAKY_RELU_ALPHA, bias_activation_, kernel_operand, packed_weight
from runtime.ops._gemm_cpu import (
    CHAIN_MAX_COLUMNS,
    CHAIN_MAX_ROWS,
    GEMM_KERNELS,
    UNUSED,
    UNUSED_2D,
    gemm,
    gemm_chains,
    packed_b,
)

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


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def weight_panels(B: np.ndarray, transB: int) -> np.ndarray | None:
    """op(B) (K, N) packed for the GEMM, once per session weight; None for any other array (a feed, packed by
    the GEMM itself as it runs)."""
    return packed_weight(B, f"gemm_b/{transB}", lambda B: packed_b(B.T if transB else B))


def matmul_2d(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, b_panels=None) -> np.ndarray:
    """a (M, K) @ b (K, N) of one float dtype through the runtime's GEMM, into ``out`` (M, N, C-contiguous rows)
    when given; ``b_panels``: b already packed (``packed_b``)."""
    y = np.empty((a.shape[0], b.shape[1]), a.dtype) if out is None else out  # (M, N)
    if b_panels is not None:
        return gemm(y, a, b_packed=b_panels)
    return gemm(y, a, b)


# --- the ops ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _gemm_plan(A_shape, B_shape, C_shape, transA, transB) -> tuple[tuple | None, int]:
    """(C's 2-D shape, the GEMM's FLOPs), checked once per shapes: a node sees the same ones at every run."""
    M, N, K = gemm_shapes(A_shape, B_shape, transA, transB)
    C2 = None if C_shape is None else bias_2d(np.empty(C_shape, np.int8), M, N).shape
    return C2, 2 * M * N * K


def _fused_gemm(A, B, C, alpha, beta, transA, transB, activation):
    C2_shape, _ = _gemm_plan(A.shape, B.shape, None if C is None else C.shape, transA, transB)
    a = A.T if transA else A  # (M, K)
    b = B.T if transB else B  # (K, N)
    # (1|M, 1|N); with beta = 0, unread, as onnxruntime does (0·inf would be NaN) once its shape is checked
    bias = None if C is None or beta == 0.0 else C.reshape(C2_shape)
    if a.dtype not in FLOAT_DTYPES or a.dtype != b.dtype:
        with np.errstate(all="ignore"):
            y = np.matmul(a, b)  # (M, N)
            if alpha != 1.0:
                y = y * y.dtype.type(alpha)
        return bias_activation_(y, bias, beta, activation) if y.dtype.kind == "f" else _int_epilogue(y, bias, beta)
    y = np.empty((a.shape[0], b.shape[1]), a.dtype)  # (M, N)
    panels = weight_panels(B, transB)
    operand = dict(b=b) if panels is None else dict(b_packed=panels)
    if alpha == 1.0:
        bias = None if bias is None else bias.astype(y.dtype, copy=False)
        return gemm(y, a, K=a.shape[1], bias=bias, beta=beta, activation=activation, **operand)
    gemm(y, a, K=a.shape[1], **operand)
    y *= y.dtype.type(alpha)
    return bias_activation_(y, bias, beta, activation)


def _int_epilogue(y, bias, beta):
    if bias is not None:
        y = y + (beta * bias).astype(y.dtype)
    return y


@onnx_op(dtypes=dict.fromkeys(("A", "B", "C"), FLOATS + INTEGERS))
def Gemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return _fused_gemm(A, B, C, alpha, beta, transA, transB, 0)


@onnx_op(domain=FUSED_DOMAIN, dtypes=dict.fromkeys(("A", "B", "C"), FLOATS))  # the activations: floats only
def FusedGemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, activation=""):
    return _fused_gemm(A, B, C, alpha, beta, transA, transB, ACTIVATIONS[activation])


@onnx_op
def MatMul(A, B):
    if A.ndim == 0 or B.ndim == 0:
        raise InvalidFeed(f"MatMul takes tensors of rank >= 1, got shapes {A.shape} and {B.shape}")
    if A.dtype not in FLOAT_DTYPES or A.dtype != B.dtype:
        return np.matmul(A, B)
    a = A.reshape(1, -1) if A.ndim == 1 else A  # (..., M, K)
    b = B.reshape(-1, 1) if B.ndim == 1 else B  # (..., K, N)
    if a.shape[-1] != b.shape[-2]:
        raise InvalidFeed(f"MatMul inner dimensions differ: shapes {A.shape} and {B.shape}")
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    y = np.empty(batch + (M, N), A.dtype)  # (..., M, N)
    if b.ndim == 2:  # a weight-like right side: every row of every matrix of a in one GEMM
        panels = weight_panels(B, 0) if B.ndim == 2 else None
        a2 = np.ascontiguousarray(a).reshape(a.size // K if K else math.prod(a.shape[:-1]), K)  # (batch·M, K)
        matmul_2d(a2, b, y.reshape(-1, N), panels)
    else:
        a3 = np.broadcast_to(a, batch + (M, K)).reshape(-1, M, K)  # (batch, M, K)
        b3 = np.broadcast_to(b, batch + (K, N)).reshape(-1, K, N)  # (batch, K, N)
        y3 = y.reshape(-1, M, N)  # (batch, M, N)
        for i in range(y3.shape[0]):
            matmul_2d(a3[i], b3[i], y3[i])
    if A.ndim == 1:
        y = y[..., 0, :]
    if B.ndim == 1:
        y = y[..., 0]
    return y


def _prepare_gemm(constants, *, alpha=1.0, beta=1.0, transA=0, transB=0, activation=""):
    """A Gemm whose B is a session weight, and C one too or absent (a Linear layer): B packed into the GEMM's
    panels and C made its bias operand, once; each run is one kernel call. Any other input (another dtype or
    width than B's) takes the op function, which checks it as usual."""
    A_c, B, C = constants[:3]
    if A_c is not None or not isinstance(B, np.ndarray) or B.ndim != 2 or B.dtype not in FLOAT_DTYPES:
        return None
    if alpha != 1.0 or C is None or (C is not ABSENT and C.dtype != B.dtype):
        return None
    K, N = (B.shape[1], B.shape[0]) if transB else B.shape
    bias, has_bias = UNUSED_2D[B.dtype], False
    if C is not ABSENT and beta != 0.0:
        try:
            bias, has_bias = kernel_operand(np.ascontiguousarray(bias_2d(C, 1, N))), True  # (1, 1|N)
        except InvalidFeed:
            return None  # a per-row bias: the op function checks it against each run's rows
    panels = weight_panels(B, transB)
    code, dtype, unused = ACTIVATIONS[activation], B.dtype, UNUSED[B.dtype]
    beta_, alpha_ = dtype.type(beta), dtype.type(LEAKY_RELU_ALPHA)
    # op(B)ᵀ (N, K) for the few-outputs form (``gemm_chains``): a head of at most CHAIN_MAX_COLUMNS outputs
    bt = kernel_operand(np.ascontiguousarray(B if transB else B.T)) if N <= CHAIN_MAX_COLUMNS else None

    def run(A, B_=None, C_=None):
        a = kernel_operand(A.T if transA else A)  # (M, K); a read-only feed copied (see kernel_operand)
        if A.dtype != dtype or a.ndim != 2 or a.shape[1] != K:
            return _fused_gemm(A, B_, C_, alpha, beta, transA, transB, code)
        y = np.empty((a.shape[0], N), dtype)  # (M, N)
        if bt is not None and a.shape[0] <= CHAIN_MAX_ROWS:
            gemm_chains(a, bt, y, bias, has_bias, beta_, code, alpha_)
            return y
        GEMM_KERNELS[2 * a.shape[0] * N * K >= _gemm_cpu.PARALLEL_FLOPS](
            a,
            unused,
            False,
            UNUSED_2D[dtype],
            panels,
            True,
            K,
            y,
            bias,
            has_bias,
            beta_,
            code,
            alpha_,
            _gemm_cpu.BLOCK_FLOPS,
        )
        return y

    return run


Gemm.prepare(_prepare_gemm)
FusedGemm.prepare(_prepare_gemm)
