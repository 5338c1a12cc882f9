"""Gemm and MatMul (https://onnx.ai/onnx/operators/onnx__Gemm.html, onnx__MatMul.html), and FusedGemm:
Gemm followed by an activation, which the loader fuses (``runtime/fusion.py``) so that the bias and the
activation run as one pass over the GEMM's output instead of two more passes through memory.

Every GEMM of the CPU backend goes through ``blas_matmul`` (or, with its epilogue, ``gemm_epilogue``): a small
one runs on one OpenBLAS thread (``BlasThreads``); one large enough for several cores runs as row tiles on
Numba's threads, each tile a single-threaded GEMM called from the kernel (``_gemm_row_tiles``), so that the
runtime has one pool of worker threads, Numba's, instead of two that spin against each other (OpenBLAS's
workers busy-wait after each call; a Numba kernel that follows one shares the cores with them: the DCGAN
generator at batch 64 took 24 ms, against 16 ms, when its first GEMM woke NumPy's OpenBLAS pool and its other
layers ran on Numba's threads).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import numba
import numpy as np

from runtime.errors import InvalidFeed
from runtime.ops import onnx_op
from runtime.ops._cpu_kernels import (
    ACTIVATIONS,
    JIT,
    LEAKY_RELU_ALPHA,
    bias_activation_,
    bias_activation_rows,
    bias_operand,
    serial_and_parallel,
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


# --- OpenBLAS's thread count, per GEMM ----------------------------------------------------------------------


def _openblas_thread_functions(package=np):
    """(get, set) of the thread count of the OpenBLAS that ``package`` (NumPy, or SciPy whose BLAS Numba's
    ``np.dot`` calls) loaded, as ctypes functions; (None, None) where that BLAS is not an OpenBLAS found in this
    process (then every GEMM runs with BLAS's own settings)."""
    np_dir = os.path.dirname(package.__file__)
    candidates = []
    try:
        with open("/proc/self/maps") as maps:  # Linux: the libraries actually loaded
            candidates = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()})
    except OSError:
        pass
    # NumPy's wheels bundle theirs beside the package (numpy.libs/, numpy/.dylibs/); prefer it to scipy's copy
    bundled = glob.glob(np_dir + ".libs/*openblas*") + glob.glob(os.path.join(np_dir, ".dylibs", "*openblas*"))
    bundled = [p for p in bundled if not candidates or os.path.realpath(p) in map(os.path.realpath, candidates)]
    if package is not np:  # only the package's own copy: the first loaded library may be NumPy's
        candidates = []
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
    """NumPy's OpenBLAS held at one thread for every GEMM the runtime hands it: the runtime's parallelism is
    Numba's threads alone (large GEMMs run as row tiles, ``_gemm_row_tiles``). OpenBLAS's own workers busy-wait
    long after each call, and Numba's kernels that follow then share the cores with them: a (64, 196) x
    (196, 784) product as two row tiles took 0.16 ms alone and 0.64 ms right after a two-thread NumPy GEMM.
    (Below ``BLAS_SERIAL_FLOPS`` OpenBLAS stays on one thread by itself, and the two calls that switch, 0.3 us
    each, are saved.) ``SERIAL_FLOPS``: the size from which a GEMM is split over Numba's threads."""

    BLAS_SERIAL_FLOPS = 1 << 19
    SERIAL_FLOPS = 1 << 24  # ~16.8 MFLOP

    def __init__(self, package=np):
        self.get, self.set = _openblas_thread_functions(package)

    def matmul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None, flops: int) -> np.ndarray:
        if self.set is None or flops < self.BLAS_SERIAL_FLOPS:
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


class _OneThread:
    """``with IN_KERNEL_BLAS.one_thread():`` (a plain context manager: a generator-based one costs ~2 us a call,
    which a batch-1 convolution notices)."""

    __slots__ = ("owner", "restore")

    def __init__(self, owner):
        self.owner, self.restore = owner, 0

    def __enter__(self):
        get, put = self.owner.functions()
        threads = get() if get is not None else 1
        self.restore = threads if threads > 1 else 0
        if self.restore:
            put(1)

    def __exit__(self, *exc):
        if self.restore:
            self.owner.functions()[1](self.restore)
        return False


class InKernelBlas:
    """The BLAS that Numba's ``np.dot`` calls (SciPy's), held at one thread while a ``prange`` kernel calls it
    from every worker: each GEMM then runs on its worker's core, and the kernel's parallelism is the only one
    (OpenBLAS threads inside ``prange`` would oversubscribe the cores, and a second OpenBLAS pool waking beside
    NumPy's and Numba's costs more than it saves). The count is restored afterwards, so SciPy's own linear
    algebra keeps its threads."""

    def __init__(self):
        self._functions = None

    def functions(self):
        if self._functions is None:
            import scipy
            import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS, as Numba's np.dot does)

            self._functions = _openblas_thread_functions(scipy)
        return self._functions

    def one_thread(self) -> _OneThread:
        return _OneThread(self)


IN_KERNEL_BLAS = InKernelBlas()


# --- GEMMs for several cores: row tiles on Numba's threads -------------------------------------------------------

# Rows per task: at least ROW_TILE, and as many tasks as Numba has threads at most (NUMBA_NUM_THREADS, fixed
# when the process starts, so that ``numba.set_num_threads`` never changes the tiling and the bits stay the
# same). Each task packs the whole of B for its GEMM, so more tasks than cores only repeat that work: on the
# 2-core test machine the DCGAN discriminator at batch 1 took 0.86 ms with 16 tasks and 0.47 ms with 2.
ROW_TILE = 16
COLUMN_TILES_MAX_ROWS = 64  # up to this many rows a GEMM with a wider B runs in column tiles (``_fused_gemm``)
MAX_ROW_TASKS = numba.config.NUMBA_NUM_THREADS


def _gemm_row_tiles(a, b, y, bias, has_bias, beta, activation, alpha, rows_per_task):
    # y (M, N) = act(a (M, K) @ b (K, N) + beta · bias): one task per tile of rows, its GEMM on its own core
    # (SciPy's BLAS held at one thread) and the epilogue while the tile is in cache. bias: (Mb, Nb), Mb in {1, M},
    # Nb in {1, N} (ONNX's unidirectional broadcast); read only when has_bias.
    M = y.shape[0]
    for t in numba.prange((M + rows_per_task - 1) // rows_per_task):
        r0 = t * rows_per_task
        r1 = min(M, r0 + rows_per_task)
        np.dot(a[r0:r1], b, y[r0:r1])
        if has_bias or activation != 0:
            bias_activation_rows(y, bias, has_bias, beta, activation, alpha, r0, r1)


# (serial: a small GEMM and its epilogue in one call, as one tile; parallel: row tiles on the cores)
_GEMM_ROW_TILES = serial_and_parallel(_gemm_row_tiles)


@numba.njit(**JIT)
def _transpose_into(tile, y, n0):
    # y[:, n0:n0 + n] = tileᵀ, tile (n, M): a loop of its own (one in a prange body is not optimised as well)
    for i in range(y.shape[0]):
        for j in range(tile.shape[0]):
            y[i, n0 + j] = tile[j, i]


@numba.njit(**JIT, parallel=True)
def _gemm_column_tiles(w, aT, y, biasT, has_bias, beta, activation, alpha, cols_per_task):
    # y (M, N) = act(a (M, K) @ wᵀ + beta · bias), w (N, K) and aT = aᵀ (K, M), biasT = biasᵀ (Nb, Mb): one task
    # per tile of columns [n0, n1): its product tile (n1 − n0, M) = w[n0:n1] @ aT on its own core (SciPy's BLAS
    # held at one thread), the epilogue along the tile's rows (``bias_activation_rows``, vectorised), the tile
    # into y's columns. Each core reads and packs only its share of the weight.
    M, N = y.shape
    for t in numba.prange((N + cols_per_task - 1) // cols_per_task):
        n0 = t * cols_per_task
        n1 = min(N, n0 + cols_per_task)
        tile = np.empty((n1 - n0, M), y.dtype)  # (columns of y, M)
        np.dot(w[n0:n1], aT, tile)
        if has_bias or activation != 0:
            part = biasT[n0:n1] if biasT.shape[0] > 1 else biasT  # (1|n, 1|M)
            bias_activation_rows(tile, part, has_bias, beta, activation, alpha, 0, n1 - n0)
        _transpose_into(tile, y, n0)


def _tiled(M: int, a_dtype, b_dtype, flops: int) -> bool:
    """Whether an (M, K) x (K, N) GEMM of ``flops`` runs as row tiles: large enough for several cores, enough
    rows, float32 or float64 on both sides."""
    return (
        flops >= BlasThreads.SERIAL_FLOPS
        and M >= 2 * ROW_TILE
        and a_dtype == b_dtype
        and a_dtype.kind == "f"
        and a_dtype.itemsize >= 4
    )


def _in_kernel_operands(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether Numba's ``np.dot`` takes ``a`` and ``b`` as they are: float32 or float64 alike, each C- or
    Fortran-contiguous (a transposed operand is a Fortran-contiguous view)."""
    return (
        a.dtype == b.dtype
        and a.dtype.kind == "f"
        and a.dtype.itemsize >= 4
        and (a.flags.c_contiguous or a.flags.f_contiguous)
        and (b.flags.c_contiguous or b.flags.f_contiguous)
    )


def _run_row_tiles(a, b, y, bias, beta, activation, alpha) -> None:
    M = a.shape[0]
    rows = max(ROW_TILE, -(-M // MAX_ROW_TASKS))
    a = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # (M, K)
    b = b if b.flags.c_contiguous or b.flags.f_contiguous else np.ascontiguousarray(b)  # (K, N)
    bias, has_bias = bias_operand(bias, y.dtype)
    with IN_KERNEL_BLAS.one_thread():
        _GEMM_ROW_TILES[1](a, b, y, bias, has_bias, y.dtype.type(beta), activation, y.dtype.type(alpha), rows)


def blas_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` of float (..., M, K) and (..., K, N) arrays, on as many cores as pay: one
    OpenBLAS thread, or row tiles on Numba's threads (``out``, when given, must be C-contiguous)."""
    K, N = b.shape[-2], b.shape[-1]
    M = a.shape[-2] if a.ndim >= 2 else 1
    rows = a.size // K if K else 0  # M times a's batch
    flops = 2 * K * N * max(rows, b.size // (K * N) if K * N else 0)
    if a.ndim < 2 or b.ndim < 2 or not _tiled(M, a.dtype, b.dtype, 2 * M * K * N):
        return BLAS_THREADS.matmul(a, b, out, flops)
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (M, N)
    y = np.empty(shape, a.dtype) if out is None else out
    a3 = np.broadcast_to(a, shape[:-2] + (M, K)).reshape(-1, M, K)  # (batch, M, K)
    b3 = np.broadcast_to(b, shape[:-2] + (K, N)).reshape(-1, K, N)  # (batch, K, N)
    y3 = y.reshape(-1, M, N)  # (batch, M, N), a view of y
    for i in range(y3.shape[0]):
        _run_row_tiles(a3[i], b3[i], y3[i], None, 0.0, 0, LEAKY_RELU_ALPHA)
    return y


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
    # (1|M, 1|N); with beta = 0, unread, as onnxruntime does (0·inf would be NaN) once its shape is checked
    bias = None if C is None or beta == 0.0 else C.reshape(C2_shape)
    M, N = a.shape[0], b.shape[1]
    if flops < BlasThreads.BLAS_SERIAL_FLOPS and alpha == 1.0 and a.size and b.size and _in_kernel_operands(a, b):
        # Small (every batch-1 layer of the zoo's MLPs): the GEMM (one BLAS thread by itself at this size) and
        # its epilogue in one kernel call; no NumPy call and no errstate around it (sparse-ae-digits8's layer:
        # 4.9 -> 3.8 us, the kernel call 1.7 us of it)
        y = np.empty((M, N), a.dtype)  # (M, N)
        bias, has_bias = bias_operand(bias, y.dtype)
        dt = y.dtype.type
        a = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # (transA) its rows sliced in the kernel
        _GEMM_ROW_TILES[0](a, b, y, bias, has_bias, dt(beta), activation, dt(LEAKY_RELU_ALPHA), M)
        return y
    # Too few rows to split (a batch-1 Linear layer of 0.5 MFLOP or more), or fewer than the weight's rows and few
    # (a batch-64 one): y in column tiles, each B[n0:n1] (n, K) @ aᵀ (K, M) on a core that reads and packs only its
    # share of the weight (``_gemm_column_tiles``; cgen's last layer at batch 1, a 784x512 weight: 31 -> 21 us;
    # at batch 64, against row tiles that each pack the whole weight: 0.38 -> 0.30 ms)
    few_rows = M < 2 * ROW_TILE or (M <= COLUMN_TILES_MAX_ROWS and M < N and _tiled(M, a.dtype, b.dtype, flops))
    if alpha == 1.0 and transB and few_rows and 2 * ROW_TILE <= N and a.size and B.flags.c_contiguous \
            and _in_kernel_operands(a, b):  # fmt: skip
        y = np.empty((M, N), a.dtype)  # (M, N)
        biasT, has_bias = bias_operand(None if bias is None else np.ascontiguousarray(bias.T), y.dtype)  # (1|N, 1|M)
        dt = y.dtype.type
        with IN_KERNEL_BLAS.one_thread():
            _gemm_column_tiles(B, a.T, y, biasT, has_bias, dt(beta), activation, dt(LEAKY_RELU_ALPHA),
                               max(ROW_TILE, -(-N // MAX_ROW_TASKS)))  # fmt: skip
        return y
    with np.errstate(all="ignore"):  # inf and NaN propagate silently, as in onnxruntime
        if alpha == 1.0 and _tiled(a.shape[0], a.dtype, b.dtype, flops):  # GEMM and epilogue tile by tile
            y = np.empty((a.shape[0], b.shape[1]), a.dtype)  # (M, N)
            _run_row_tiles(a, b, y, bias, beta, activation, LEAKY_RELU_ALPHA)
            return y
        if flops < BlasThreads.BLAS_SERIAL_FLOPS or a.dtype.kind != "f" or a.dtype != b.dtype:
            y = np.matmul(a, b)  # (M, N)
        else:
            y = BLAS_THREADS.matmul(a, b, None, flops)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    return bias_activation_(y, bias, beta, activation)


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
