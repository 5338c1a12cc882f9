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

from runtime.errors import InvalidFeed
from runtime.ops import OPS
from runtime.ops._cpu_kernels import ACTIVATIONS
from runtime.ops._cuda_launch import (
    SKINNY_MAX_ROWS,
    THREADS_PER_BLOCK,
    TILE,
    activate,
    as_float32,
    current_stream,
    device_array,
    kernel,
)
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


# A grid's y extent is at most 65,535 blocks: the tiled kernel runs taller products in slabs of this many rows.
MAX_GRID_Y = 65535
_no_bias = None


def _dummy_bias():
    """The (1, 1) array passed as C when there is none (kernels cannot take None); allocated once, since a device
    allocation (and its free) per call would synchronise the device."""
    global _no_bias
    if _no_bias is None:
        _no_bias = cuda.to_device(np.zeros((1, 1), np.float32))
    return _no_bias


def fused_gemm(A, B, C=None, alpha=1.0, beta=1.0, transA=0, transB=0, activation=0, out=None):
    """Y = act(alpha * op(A) @ op(B) + beta * C) on the device; A, B, C are float32 device arrays; ``out``, a
    preallocated (M, N) device array (a slice of a batched result) to write into."""
    as_float32(A, "Gemm")
    as_float32(B, "Gemm")
    M, N, _ = gemm_shapes(A.shape, B.shape, transA, transB)
    C2 = bias_2d(C, M, N) if C is not None else _dummy_bias()
    Y = device_array((M, N), dtype=np.float32) if out is None else out
    if M == 0 or N == 0:  # nothing to compute, and a grid of zero blocks is an error on a GPU
        return Y
    scalars = (
        np.float32(alpha),
        np.float32(beta),
        np.int32(transA),
        np.int32(transB),
        np.int32(C is not None and beta != 0.0),  # beta = 0: C unread, as in onnxruntime (0·inf would be NaN)
        np.int32(activation),
    )
    if M <= SKINNY_MAX_ROWS:
        _gemm_skinny_kernel[(math.ceil(N / THREADS_PER_BLOCK), M), THREADS_PER_BLOCK, current_stream()](
            A, B, C2, Y, *scalars
        )
        return Y
    slab = MAX_GRID_Y * TILE
    for r in range(0, M, slab):  # one launch unless M exceeds the grid's y extent
        rows = slice(r, min(r + slab, M))
        a = A if M <= slab else (A[:, rows] if transA else A[rows])
        c = C2 if M <= slab or C2.shape[0] == 1 else C2[rows]
        y = Y if M <= slab else Y[rows]
        _gemm_kernel[(math.ceil(N / TILE), math.ceil(y.shape[0] / TILE)), (TILE, TILE), current_stream()](
            a, B, c, y, *scalars
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
    # NumPy's matmul semantics: a 1-D A is a row, a 1-D B a column, both removed from the result again
    a = A.reshape(1, A.shape[0]) if A.ndim == 1 else A  # (..., M, K)
    b = B.reshape(B.shape[0], 1) if B.ndim == 1 else B  # (..., K, N)
    sa, sb = tuple(a.shape), tuple(b.shape)  # plain tuples: the simulator's shapes take no negative index
    if sa[-1] != sb[-2]:
        raise InvalidFeed(f"MatMul inner dimensions differ: shapes {tuple(A.shape)} and {tuple(B.shape)}")
    M, K, N = sa[-2], sa[-1], sb[-1]
    if len(sb) == 2:  # (..., M, K) @ (K, N): one GEMM over the stacked rows
        Y = fused_gemm(a.reshape(a.size // K, K), b).reshape(*sa[:-1], N)
    else:
        try:
            batch = np.broadcast_shapes(sa[:-2], sb[:-2])
        except ValueError:
            raise InvalidFeed(f"MatMul batch dimensions of {sa} and {sb} do not broadcast") from None
        Y = device_array((*batch, M, N), dtype=np.float32)
        a_batch = (1,) * (len(batch) - (len(sa) - 2)) + sa[:-2]
        b_batch = (1,) * (len(batch) - (len(sb) - 2)) + sb[:-2]
        a3 = a.reshape(*a_batch, M, K)
        b3 = b.reshape(*b_batch, K, N)
        y3 = Y.reshape(max(1, int(np.prod(batch))), M, N)
        for k, idx in enumerate(np.ndindex(*batch)):  # one launch per matrix of the broadcast batch
            ia = tuple(i if d > 1 else 0 for i, d in zip(idx, a_batch))
            ib = tuple(i if d > 1 else 0 for i, d in zip(idx, b_batch))
            fused_gemm(a3[ia] if ia else a3, b3[ib] if ib else b3, out=y3[k])
    sy = tuple(Y.shape)
    if A.ndim == 1:
        sy = sy[:-2] + (N,)
    if B.ndim == 1:
        sy = sy[:-1]
    return Y.reshape(sy)
