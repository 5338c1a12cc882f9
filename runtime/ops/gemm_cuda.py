"""CUDA Gemm / FusedGemm / MatMul: a shared-memory tiled GEMM, and for at most SKINNY_MAX_ROWS rows a split-K
skinny kernel; both add the bias and apply the activation before the single write of each output element.

Each (TILE, TILE) block of the tiled kernel computes one tile of Y; at each step along K the block stages a (TILE,
TILE) tile of op(A) and of op(B) in shared memory, loaded so that consecutive threads (threadIdx.x) read
consecutive addresses for the untransposed layouts (A row-major along K, B row-major along N).

The order of every sum is fixed by K alone (``K_CHUNK``): an output is the in-order sum of its chunks' FMA chains,
in either kernel, so a row of a batch of 40 (tiled) has the bits it has alone (skinny). The skinny kernel takes
flat views and 32-bit offsets stepped by a constant in its loop over k (``tests/test_sass.py`` counts its SASS).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32, uint32

from runtime.errors import InvalidFeed
from runtime.ops import OPS
from runtime.ops._cpu_kernels import ACTIVATIONS, LEAKY_RELU_ALPHA
from runtime.ops._cuda_launch import (
    K_CHUNK,
    SKINNY_COLUMNS,
    SKINNY_MAX_ROWS,
    THREADS_PER_BLOCK,
    TILE,
    activate_alpha,
    as_float32,
    current_stream,
    device_array,
    grid_1d,
    kernel,
)
from runtime.ops.gemm import FUSED_DOMAIN, bias_2d, gemm_shapes

_SIG = (
    "void(float32[:, :], float32[:, :], float32[:, :], float32[:, :], float32, float32, int32, int32, int32, int32, "
    "int32, float32)"
)


@cuda.jit(device=True, inline=True)
def _store(Y, row, col, acc, C, alpha, beta, has_bias, activation, slope):
    # The fused epilogue: Y[row, col] = act(alpha * acc + beta * C[row|0, col|0]), C broadcast as (1|M, 1|N);
    # slope: LeakyRelu's (activation code 4)
    v = alpha * acc
    if has_bias:
        bi = row if C.shape[0] > 1 else 0
        bj = col if C.shape[1] > 1 else 0
        v = cuda.fma(beta, C[bi, bj], v)
    Y[row, col] = activate_alpha(v, activation, slope)


@kernel(_SIG.replace("float32[:, :]", "float32[:, ::1]"), _SIG)
def _gemm_kernel(A, B, C, Y, alpha, beta, transA, transB, has_bias, activation, k_chunk, slope):
    # A: (M, K) or (K, M) if transA; B: (K, N) or (N, K) if transB; C: (1|M, 1|N); Y: (M, N); k_chunk: K_CHUNK
    a_tile = cuda.shared.array((TILE, TILE), dtype=float32)
    b_tile = cuda.shared.array((TILE, TILE), dtype=float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    M = Y.shape[0]
    N = Y.shape[1]
    K = A.shape[0] if transA else A.shape[1]
    tiles = int32((K + TILE - 1) // TILE)
    chunk_tiles = int32(k_chunk // TILE)
    total = float32(0.0)  # the chunks so far, added in order
    t = int32(0)
    while t < tiles:  # one chunk of K per pass
        t_end = min(int32(t + chunk_tiles), tiles)
        acc = float32(0.0)  # this chunk's chain
        first = t == 0
        while t < t_end:  # the hot loop: stage two tiles, then TILE FMAs
            ka = t * TILE + tx
            if row < M and ka < K:
                a_tile[ty, tx] = A[ka, row] if transA else A[row, ka]
            else:
                a_tile[ty, tx] = -0.0  # −0 · 0 = −0: the padding leaves a sum as it is, a zero's sign included
            kb = t * TILE + ty
            if col < N and kb < K:
                b_tile[ty, tx] = B[col, kb] if transB else B[kb, col]
            else:
                b_tile[ty, tx] = 0.0
            cuda.syncthreads()
            for i in range(TILE):
                acc = cuda.fma(a_tile[ty, i], b_tile[i, tx], acc)
            cuda.syncthreads()
            t = int32(t + 1)
        total = acc if first else total + acc
    if row < M and col < N:
        _store(Y, row, col, total, C, alpha, beta, has_bias, activation, slope)


@cuda.jit(device=True, inline=True)
def _store_flat(Y, i, row, col, acc, C, c_row, c_col, alpha, beta, has_bias, activation, slope):
    # _store on flat arrays: Y[i] = act(alpha * acc + beta * C[row * c_row + col * c_col])
    v = alpha * acc
    if has_bias:
        v = cuda.fma(beta, C[uint32(row * c_row + col * c_col)], v)
    Y[uint32(i)] = activate_alpha(v, activation, slope)


# A, B, C, Y and the chunk sums P as flat arrays; alpha, beta; M, N, K; the element strides of op(A) along rows
# and k, of op(B) along k and columns, of C along rows and columns (0 where broadcast); K_CHUNK, has_bias and
# the activation's code.
_SKINNY_SIG = "void(" + ", ".join(["float32[::1]"] * 5 + ["float32"] * 2 + ["int32"] * 12 + ["float32"]) + ")"


@kernel(_SKINNY_SIG)
def _gemm_skinny_kernel(A, B, C, Y, P, alpha, beta, M, N, K, a_row, a_k, b_k, b_col, c_row, c_col, k_chunk,
                        has_bias, activation, slope):  # fmt: skip
    # Grid: (N / (blockDim.x · SKINNY_COLUMNS), chunks, M). Thread (row, chunk, col) sums op(A)[row, k] ·
    # op(B)[k, col'] over the chunk's k for its SKINNY_COLUMNS columns col' = col + j·blockDim.x (a warp reads
    # consecutive columns of a (K, N) B; A[row, k] is one broadcast read). One chunk (K ≤ K_CHUNK): the epilogue
    # writes Y; several: the sums go to P (chunks, M, N) and _gemm_reduce_kernel adds them.
    step = int32(cuda.blockDim.x)
    col = int32(cuda.blockIdx.x * step * SKINNY_COLUMNS + cuda.threadIdx.x)
    if col >= N:
        return
    row = int32(cuda.blockIdx.z)
    chunk = int32(cuda.blockIdx.y)
    last = int32(N - 1)  # columns past the end are computed as copies of the last and never stored
    col1 = min(int32(col + step), last)
    col2 = min(int32(col + 2 * step), last)
    col3 = min(int32(col + 3 * step), last)
    k = int32(chunk * k_chunk)
    k_end = min(int32(k + k_chunk), K)
    ao = int32(row * a_row + k * a_k)
    bo = int32(k * b_k)
    b0, b1, b2, b3 = int32(col * b_col), int32(col1 * b_col), int32(col2 * b_col), int32(col3 * b_col)
    acc0 = acc1 = acc2 = acc3 = float32(0.0)
    while k < k_end:  # the hot loop: one load of A, four of B, four FMAs
        a = A[uint32(ao)]
        acc0 = cuda.fma(a, B[uint32(bo + b0)], acc0)
        acc1 = cuda.fma(a, B[uint32(bo + b1)], acc1)
        acc2 = cuda.fma(a, B[uint32(bo + b2)], acc2)
        acc3 = cuda.fma(a, B[uint32(bo + b3)], acc3)
        ao = int32(ao + a_k)
        bo = int32(bo + b_k)
        k = int32(k + 1)
    y = int32(row * N + col)
    if cuda.gridDim.y == 1:
        _store_flat(Y, y, row, col, acc0, C, c_row, c_col, alpha, beta, has_bias, activation, slope)
        if col + step <= last:
            _store_flat(Y, y + step, row, col + step, acc1, C, c_row, c_col, alpha, beta, has_bias, activation, slope)
        if col + 2 * step <= last:
            _store_flat(Y, y + 2 * step, row, col + 2 * step, acc2, C, c_row, c_col, alpha, beta, has_bias,
                        activation, slope)  # fmt: skip
        if col + 3 * step <= last:
            _store_flat(Y, y + 3 * step, row, col + 3 * step, acc3, C, c_row, c_col, alpha, beta, has_bias,
                        activation, slope)  # fmt: skip
        return
    p = int32(int32(chunk * M) * N + y)  # P[chunk, row, col]
    P[uint32(p)] = acc0
    if col + step <= last:
        P[uint32(p + step)] = acc1
    if col + 2 * step <= last:
        P[uint32(p + 2 * step)] = acc2
    if col + 3 * step <= last:
        P[uint32(p + 3 * step)] = acc3


@kernel("void(float32[::1], float32[::1], float32[::1], float32, float32, int32, int32, int32, int32, int32, int32, "
        "int32, float32)")  # fmt: skip
def _gemm_reduce_kernel(P, C, Y, alpha, beta, M, N, chunks, c_row, c_col, has_bias, activation, slope):
    # P: (chunks, M, N) the skinny kernel's chunk sums; Y: (M, N) flat, the chunks added in order, then the epilogue
    MN = int32(M * N)
    i = int32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
    stride = int32(cuda.gridDim.x * cuda.blockDim.x)
    while i < MN:
        total = P[uint32(i)]
        o = int32(i + MN)
        for _ in range(1, chunks):
            total += P[uint32(o)]
            o = int32(o + MN)
        row = int32(uint32(i) // uint32(N))
        _store_flat(Y, i, row, int32(i - row * N), total, C, c_row, c_col, alpha, beta, has_bias, activation, slope)
        i = int32(i + stride)


# A grid's y extent is at most 65,535 blocks: the tiled kernel runs taller products in slabs of this many rows.
MAX_GRID_Y = 65535
INDEX32_LIMIT = 2**31 - 1  # elements the skinny kernel's 32-bit offsets reach
_no_bias = None


def _dummy_bias():
    """The (1, 1) array passed as C when there is none (kernels cannot take None); allocated once, since a device
    allocation (and its free) per call would synchronise the device."""
    global _no_bias
    if _no_bias is None:
        _no_bias = cuda.to_device(np.zeros((1, 1), np.float32))
    return _no_bias


def _c_contiguous(a) -> bool:
    # a device array, or a host one (an empty tensor stays on the host)
    return a.is_c_contiguous() if hasattr(a, "is_c_contiguous") else a.flags.c_contiguous


def _skinny_takes(M: int, N: int, K: int, *arrays) -> bool:
    """Whether the skinny kernel runs this product: few rows, C-contiguous arrays (flat views), 32-bit offsets
    for every array, k and the chunk sums, and a chunk count within the grid's y extent; else the tiled kernel
    does (with the same sums)."""
    chunks = max(1, math.ceil(K / K_CHUNK))
    return (
        M <= SKINNY_MAX_ROWS
        and chunks <= MAX_GRID_Y
        and K + K_CHUNK < INDEX32_LIMIT
        and chunks * M * N < INDEX32_LIMIT
        and all(_c_contiguous(a) and a.size < INDEX32_LIMIT for a in arrays)
    )


def _skinny(A, B, C2, Y, alpha, beta, transA, transB, has_bias, activation, slope, M, N, K):
    # Y (M ≤ SKINNY_MAX_ROWS, N) through the split-K kernel: one block row per (chunk, row), then the chunks added
    chunks = max(1, math.ceil(K / K_CHUNK))
    a_row, a_k = (1, M) if transA else (K, 1)  # A[k, row] of a (K, M) A, or A[row, k]
    b_k, b_col = (1, K) if transB else (N, 1)  # B[col, k] of an (N, K) B, or B[k, col]
    c_row = C2.shape[1] if C2.shape[0] > 1 else 0
    c_col = 1 if C2.shape[1] > 1 else 0
    P = device_array((chunks, M, N), dtype=np.float32) if chunks > 1 else Y  # (chunks, M, N) chunk sums
    flat = [x.reshape(x.size) for x in (A, B, C2, Y, P)]
    ints = [np.int32(v) for v in (M, N, K, a_row, a_k, b_k, b_col, c_row, c_col, K_CHUNK)]
    grid = (math.ceil(N / (THREADS_PER_BLOCK * SKINNY_COLUMNS)), chunks, M)
    _gemm_skinny_kernel[grid, THREADS_PER_BLOCK, current_stream()](
        *flat, np.float32(alpha), np.float32(beta), *ints, has_bias, np.int32(activation), np.float32(slope)
    )
    if chunks > 1:
        _gemm_reduce_kernel[grid_1d(M * N), THREADS_PER_BLOCK, current_stream()](
            flat[4], flat[2], flat[3], np.float32(alpha), np.float32(beta), *ints[:2], np.int32(chunks),
            np.int32(c_row), np.int32(c_col), has_bias, np.int32(activation), np.float32(slope),
        )  # fmt: skip


def fused_gemm(A, B, C=None, alpha=1.0, beta=1.0, transA=0, transB=0, activation=0, out=None,
               slope=LEAKY_RELU_ALPHA):  # fmt: skip
    """Y = act(alpha * op(A) @ op(B) + beta * C) on the device; A, B, C are float32 device arrays; ``out``, a
    preallocated (M, N) device array (a slice of a batched result) to write into; ``slope``, LeakyRelu's (the
    activation code 4, which convolutions run as GEMMs use)."""
    as_float32(A, "Gemm")
    as_float32(B, "Gemm")
    M, N, _ = gemm_shapes(A.shape, B.shape, transA, transB)
    C2 = bias_2d(C, M, N) if C is not None else _dummy_bias()
    Y = device_array((M, N), dtype=np.float32) if out is None else out
    if M == 0 or N == 0:  # nothing to compute, and a grid of zero blocks is an error on a GPU
        return Y
    has_bias = np.int32(C is not None and beta != 0.0)  # beta = 0: C unread, as in onnxruntime (0·inf is NaN)
    K = A.shape[0] if transA else A.shape[1]
    assert K_CHUNK % TILE == 0 and K_CHUNK > 0, f"K_CHUNK {K_CHUNK} must be a positive multiple of TILE {TILE}"
    if _skinny_takes(M, N, K, A, B, C2, Y):
        _skinny(A, B, C2, Y, alpha, beta, transA, transB, has_bias, activation, slope, M, N, K)
        return Y
    scalars = (np.float32(alpha), np.float32(beta), np.int32(transA), np.int32(transB), has_bias,
               np.int32(activation), np.int32(K_CHUNK), np.float32(slope))  # fmt: skip
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
        Y = fused_gemm(a.reshape(math.prod(sa[:-1]), K), b).reshape(*sa[:-1], N)  # (rows, K) @ (K, N)
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
