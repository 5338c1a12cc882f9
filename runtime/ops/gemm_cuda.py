"""CUDA Gemm / FusedGemm / MatMul: a shared-memory tiled GEMM whose epilogue adds the bias and applies
the activation before the single write of each output element.

Each (TILE, TILE) block computes one tile of Y; at each step along K the block stages a (TILE, TILE) tile of
op(A) and of op(B) in shared memory, loaded so that consecutive threads (threadIdx.x) read consecutive
addresses for the untransposed layouts (A row-major along K, B row-major along N).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from runtime.ops import OPS
from runtime.ops._cpu_kernels import ACTIVATIONS
from runtime.ops._cuda_launch import SKINNY_MAX_ROWS, THREADS_PER_BLOCK, TILE, activate, as_float32, kernel
from runtime.ops.gemm import FUSED_DOMAIN, bias_2d, gemm_shapes

_SIG = "void(float32[:, :], float32[:, :], float32[:, :], float32[:, :], float32, float32, int32, int32, int32, int32)"


@cuda.jit(device=True, inline=True)
def _store(Y, row, col, acc, C, alpha, beta, has_bias, activation):
    # The fused epilogue: Y[row, col] = act(alpha * acc + beta * C[row|0, col|0]), C broadcast as (1|M, 1|N)
    v = alpha * acc
    if has_bias:
        bi = row if C.shape[0] > 1 else 0
        bj = col if C.shape[1] > 1 else 0
        v += beta * C[bi, bj]
    Y[row, col] = activate(v, activation)


@kernel(_SIG.replace("float32[:, :]", "float32[:, ::1]"), _SIG)
def _gemm_kernel(A, B, C, Y, alpha, beta, transA, transB, has_bias, activation):
    # A: (M, K) or (K, M) if transA; B: (K, N) or (N, K) if transB; C: (1|M, 1|N); Y: (M, N)
    a_tile = cuda.shared.array((TILE, TILE), dtype=float32)
    b_tile = cuda.shared.array((TILE, TILE), dtype=float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    M = Y.shape[0]
    N = Y.shape[1]
    K = A.shape[0] if transA else A.shape[1]
    acc = float32(0.0)
    for t in range((K + TILE - 1) // TILE):
        ka = t * TILE + tx
        if row < M and ka < K:
            a_tile[ty, tx] = A[ka, row] if transA else A[row, ka]
        else:
            a_tile[ty, tx] = 0.0
        kb = t * TILE + ty
        if col < N and kb < K:
            b_tile[ty, tx] = B[col, kb] if transB else B[kb, col]
        else:
            b_tile[ty, tx] = 0.0
        cuda.syncthreads()
        for i in range(TILE):
            acc += a_tile[ty, i] * b_tile[i, tx]
        cuda.syncthreads()
    if row < M and col < N:
        _store(Y, row, col, acc, C, alpha, beta, has_bias, activation)


@kernel(_SIG.replace("float32[:, :]", "float32[:, ::1]"), _SIG)
def _gemm_skinny_kernel(A, B, C, Y, alpha, beta, transA, transB, has_bias, activation):
    # Same contract as _gemm_kernel. Grid: (N / THREADS_PER_BLOCK, M); thread (row, col) computes Y[row, col].
    # Consecutive threads take consecutive columns: B[k, col] reads coalesce (B is (K, N), as the loader
    # arranges for constant weights) and A[row, k] is one broadcast read per warp.
    col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    row = cuda.blockIdx.y
    M = Y.shape[0]
    N = Y.shape[1]
    if row >= M or col >= N:
        return
    K = A.shape[0] if transA else A.shape[1]
    acc = float32(0.0)
    for k in range(K):
        a = A[k, row] if transA else A[row, k]
        b = B[col, k] if transB else B[k, col]
        acc += a * b
    _store(Y, row, col, acc, C, alpha, beta, has_bias, activation)


def fused_gemm(A, B, C=None, alpha=1.0, beta=1.0, transA=0, transB=0, activation=0):
    """Y = act(alpha * op(A) @ op(B) + beta * C) on the device; A, B, C are float32 device arrays."""
    as_float32(A, "Gemm")
    as_float32(B, "Gemm")
    M, N, _ = gemm_shapes(A.shape, B.shape, transA, transB)
    Y = cuda.device_array((M, N), dtype=np.float32)
    C2 = bias_2d(C, M, N) if C is not None else cuda.device_array((1, 1), dtype=np.float32)
    if M <= SKINNY_MAX_ROWS:
        launch = _gemm_skinny_kernel[(math.ceil(N / THREADS_PER_BLOCK), M), THREADS_PER_BLOCK]
    else:
        launch = _gemm_kernel[(math.ceil(N / TILE), math.ceil(M / TILE)), (TILE, TILE)]
    launch(
        A,
        B,
        C2,
        Y,
        np.float32(alpha),
        np.float32(beta),
        np.int32(transA),
        np.int32(transB),
        np.int32(C is not None),
        np.int32(activation),
    )
    return Y


@OPS[("", "Gemm")].cuda
def Gemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    return fused_gemm(A, B, C, alpha, beta, transA, transB)


@OPS[(FUSED_DOMAIN, "FusedGemm")].cuda
def FusedGemm(A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, activation=""):
    return fused_gemm(A, B, C, alpha, beta, transA, transB, ACTIVATIONS[activation])


@OPS[("", "MatMul")].cuda
def MatMul(A, B):
    if A.ndim == 2 and B.ndim == 2:
        return fused_gemm(A, B)
    if A.ndim == 3 and B.ndim == 2:  # (batch, M, K) @ (K, N): one GEMM over the stacked rows
        Y = fused_gemm(A.reshape(A.shape[0] * A.shape[1], A.shape[2]), B)  # (batch*M, N)
        return Y.reshape(A.shape[0], A.shape[1], B.shape[1])
    from runtime.errors import InvalidFeed

    raise InvalidFeed(f"the cuda MatMul takes 2-D @ 2-D or 3-D @ 2-D, got shapes {A.shape} and {B.shape}")
