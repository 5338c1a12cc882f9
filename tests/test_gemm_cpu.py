"""The CPU backend's GEMM (``runtime/ops/_gemm_cpu.py``) against its contract: every output element is one chain of
fused multiply-adds over k = 0…K−1 from 0. Oracles: that chain computed exactly in rationals (bit for bit),
numpy in float64 (within Higham's bound for a sequential sum), the chain's own consequences (a row alone, a
column slice, any layout, packing, split or thread count give the same bits; a NaN reaches only its row), and
onnxruntime for the Conv and ConvTranspose ops built on it, including the constant-image property (a constant
input convolves to one value per output channel over the interior).
"""

from __future__ import annotations

import functools
import itertools
from fractions import Fraction

import numba
import numpy as np
import pytest
from onnx import helper

from runtime.errors import ZooRuntimeError
from runtime.ops import _gemm_cpu
from runtime.ops import conv as conv_ops
from runtime.ops._cpu_kernels import ACTIVATIONS, LEAKY_RELU_ALPHA
from runtime.ops._gemm_cpu import MR, gemm, nr_of, packed_a, packed_b
from runtime.ops.conv import Conv, ConvTranspose
from tests.conftest import case_rng, make_model, randn

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]
UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}
SERIAL = 1 << 62  # PARALLEL_FLOPS that keeps every product here serial


def bits(x: np.ndarray) -> np.ndarray:
    """``x``'s bit patterns (so that -0.0 != 0.0 in comparisons)."""
    return np.ascontiguousarray(x).view(UINT[x.dtype])


def assert_same_bits(got: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """The same bits, but that a NaN may stand for any NaN (x86 makes inf·0 a negative one, numpy's nan is
    positive)."""
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    differ = (bits(got) != bits(expected)) & ~(np.isnan(got) & np.isnan(expected))
    assert not differ.any(), (
        f"{what}: {differ.sum()} of {differ.size} elements differ, first at {np.argwhere(differ)[0]}"
    )


def product(a, b, **kwargs) -> np.ndarray:
    """gemm(c, a, b, **kwargs) into a new (M, N) c."""
    return gemm(np.empty((a.shape[0], b.shape[1]), a.dtype), a, b, **kwargs)


# --- the oracle: the fused multiply-add chain, exactly --------------------------------------------------------


def round_to(x: Fraction, dtype) -> Fraction:
    """The rational ``x`` rounded to the nearest ``dtype`` number, ties to even (IEEE 754's default), subnormals
    included; no overflow in these tests."""
    if x == 0:
        return Fraction(0)
    info = np.finfo(dtype)
    mag = abs(x)
    e = mag.numerator.bit_length() - mag.denominator.bit_length()  # 2^(e−1) <= mag < 2^(e+1)
    if mag < Fraction(2) ** e:
        e -= 1  # now 2^e <= mag < 2^(e+1)
    quantum = Fraction(2) ** (max(e, info.minexp) - info.nmant)  # the spacing of dtype's numbers around x
    m = round(mag / quantum)  # Fraction.__round__ rounds half to even
    return (m if x > 0 else -m) * quantum


def fma_chain(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """c[i, j] = fma(a[i, K−1], b[K−1, j], … fma(a[i, 0], b[0, j], 0)), each fma rounded once, exactly."""
    dtype = a.dtype
    A = [[Fraction(float(v)) for v in row] for row in a]
    B = [[Fraction(float(v)) for v in row] for row in b.T]
    out = np.empty((a.shape[0], b.shape[1]), dtype)
    for i, row in enumerate(A):
        for j, col in enumerate(B):
            acc = Fraction(0)
            for x, y in zip(row, col):
                acc = round_to(x * y + acc, dtype)
            out[i, j] = float(acc)  # exact: acc is a dtype number
    return out


def test_the_oracle_rounds_as_the_hardware_does():
    """``round_to`` against numpy's own rounding of float64 sums and of values between float32 numbers."""
    rng = case_rng("oracle")
    x, y = randn(rng, 2000, np.float64), randn(rng, 2000, np.float64, scale=1e-9)
    for u, v in zip(x, y):
        assert round_to(Fraction(float(u)) + Fraction(float(v)), np.float64) == Fraction(float(u + v))
        assert round_to(Fraction(float(u)), np.float32) == Fraction(float(np.float32(u)))
    tiny = np.float32(3e-39)  # a float32 subnormal
    assert round_to(Fraction(float(tiny)) * Fraction(1, 3), np.float32) == Fraction(float(tiny / np.float32(3)))
    assert round_to(Fraction(1) + Fraction(2) ** -24, np.float32) == 1  # a tie: to the even neighbour
    assert round_to(Fraction(1) + Fraction(3, 2**25), np.float32) == 1 + Fraction(2) ** -23


# (M, N, K): every panel height (8, 4, 2, 1 and padded ones), whole and partial panels of b, K = 0 and 1
EXACT_SHAPES = [(1, 1, 1), (2, 3, 0), (3, 5, 7), (9, 33, 17), (13, 40, 5), (17, 17, 2), (6, 65, 3)]


@pytest.mark.parametrize("M, N, K", EXACT_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_element_is_the_exact_sequential_fma_chain(M, N, K, dtype):
    rng = case_rng(f"exact-{M}-{N}-{K}-{dtype.__name__}")
    a, b = randn(rng, (M, K), dtype), randn(rng, (K, N), dtype)
    a[rng.random(a.shape) < 0.1] *= 2.0**-30  # a wide dynamic range makes every rounding count
    assert_same_bits(product(a, b), fma_chain(a, b), "gemm vs the exact fma chain")


@pytest.mark.parametrize(
    "M, N, K", [(1, 1, 1), (2, 3, 0), (1, 1, 3000), (3, 5, 40), (8, 8, 17), (1, 10, 99), (2, 16, 33)]
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_the_few_outputs_form_is_the_exact_fma_chain_and_the_gemms_bits(M, N, K, dtype):
    """``gemm_chains`` (products of a few rows and columns, on the weights' rows unpacked): every element the
    exact fma chain, and with a bias and an activation the packed GEMM's bits, epilogue included."""
    from runtime.ops._cpu_kernels import no_bias

    rng = case_rng(f"chains-{M}-{N}-{K}-{dtype.__name__}")
    a, b = randn(rng, (M, K), dtype), randn(rng, (K, N), dtype)
    a[rng.random(a.shape) < 0.1] *= 2.0**-30
    bt = np.ascontiguousarray(b.T)  # (N, K)
    c = np.empty((M, N), dtype)
    _gemm_cpu.gemm_chains(a, bt, c, no_bias(dtype), False, dtype(1), 0, dtype(LEAKY_RELU_ALPHA))
    assert_same_bits(c, fma_chain(a, b), "chains vs the exact fma chain")
    for bias_shape in [(1, N), (M, 1), (M, N)]:
        bias = randn(rng, bias_shape, dtype)
        for activation in ACTIVATIONS.values():
            _gemm_cpu.gemm_chains(a, bt, c, bias, True, dtype(0.5), activation, dtype(0.2))
            want = product(a, b, bias=bias, beta=0.5, activation=activation, alpha=0.2)
            assert_same_bits(c, want, f"chains vs gemm, bias {bias_shape}, activation {activation}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_summation_is_left_to_right_and_fused(dtype):
    """Inputs whose products are exact but whose sums are not: the result tells the order apart.

    ``[2^p, 1, −2^p]·[1, 1, 1]`` (p = the significand's bits): left to right 2^p + 1 rounds to 2^p (a tie, to
    even), then 0; in reverse, or paired as x0 + (x1 + x2), it is 1. ``[−(1 + 2^(1−h)), x]·[1, x]`` with
    x = 1 + 2^−h, h = ⌈p/2⌉, x² = 1 + 2^(1−h) + 2^−2h: the fused x·x − (1 + 2^(1−h)) keeps the product's last
    term, 2^−2h; a rounded product then a sum gives 0, and so does the reverse order (whose first fma rounds x·x
    from 0). In every row of a 19 x 70 product, so that each micro-kernel (and the edge tiles) meets them."""
    p = np.finfo(dtype).nmant + 1  # 24 / 53
    half = -(-p // 2)  # h
    x = dtype(1 + 2.0**-half)
    rounded_square = dtype(x * x)  # = 1 + 2^(1−half)
    assert rounded_square == dtype(1 + 2.0 ** (1 - half))
    fused_residue = dtype(2.0 ** (-2 * half))
    M, N = 19, 70
    rng = case_rng(f"order-{dtype.__name__}")
    a = np.zeros((M, 5), dtype)
    b = np.zeros((5, N), dtype)
    order_rows = rng.random(M) < 0.5  # these rows take the order case, the others the fused case
    a[order_rows, :3] = [2.0**p, 1.0, -(2.0**p)]
    a[~order_rows, 3:] = [-rounded_square, x]
    b[:3] = 1.0
    b[3] = 1.0
    b[4] = x
    expected = np.where(order_rows[:, None], dtype(0), fused_residue) * np.ones((M, N), dtype)
    got = product(a, b)
    assert_same_bits(got, expected, "left-to-right fma chain")
    assert_same_bits(got, fma_chain(a, b), "exact chain")
    # the oracle tells these cases apart: the reversed chain gives other bits
    reversed_chain = fma_chain(a[:, ::-1], b[::-1])
    assert (bits(reversed_chain) != bits(expected)).all()


# --- the chain's consequences: rows, columns, layouts, packing, splits and threads change no bit ------------


# (130, 257, 64): 4.3 MFLOP, parallel in 3 tasks; its rows alone and slices run serially
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (9, 33, 5), (17, 70, 33), (130, 257, 64), (257, 31, 9)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_a_row_alone_and_a_column_slice_give_the_same_bits(M, N, K, dtype):
    rng = case_rng(f"slices-{M}-{N}-{K}-{dtype.__name__}")
    a, b = randn(rng, (M, K), dtype), randn(rng, (K, N), dtype)
    full = product(a, b)
    # the first, last and panel-boundary rows, and runs of rows that start inside a panel
    for i in sorted({0, M - 1, min(M - 1, MR - 1), min(M - 1, MR), M // 2}):
        assert_same_bits(product(a[i : i + 1], b), full[i : i + 1], f"row {i} alone")
    for i0, i1 in [(1, M), (M // 3, M), (M // 2, M // 2 + 5)]:
        if i0 < i1 <= M:
            assert_same_bits(product(a[i0:i1], b), full[i0:i1], f"rows {i0}:{i1}")
    nr = nr_of(dtype)
    for j0, j1 in [(0, 1), (N - 1, N), (1, N), (nr - 1, nr + 3), (N // 2, N), (3, 3 + 2 * nr)]:
        if j0 < j1 <= N:
            assert_same_bits(product(a, b[:, j0:j1]), full[:, j0:j1], f"columns {j0}:{j1}")


def _every_other_row(x: np.ndarray) -> np.ndarray:
    out = np.full((2 * x.shape[0], x.shape[1]), np.nan, x.dtype)
    out[::2] = x
    return out[::2]


def _every_other_column(x: np.ndarray) -> np.ndarray:
    out = np.full((x.shape[0], 2 * x.shape[1]), np.nan, x.dtype)
    out[:, ::2] = x
    return out[:, ::2]


LAYOUTS = {
    "C": np.ascontiguousarray,
    "transposed-view": lambda x: np.ascontiguousarray(x.T).T,  # Fortran order
    "every-other-row": _every_other_row,
    "every-other-column": _every_other_column,
    "every-other-row-and-column": lambda x: _every_other_column(_every_other_row(x)),
    "reversed": lambda x: np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1],  # negative strides
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_any_layout_and_packing_give_the_same_bits(layout, dtype):
    """Each operand in each layout, given plain or packed; the output a view whose rows are longer than N
    (ldc > N), its neighbouring columns left as they were."""
    rng = case_rng(f"layouts-{layout}-{dtype.__name__}")
    M, N, K = 21, 45, 19
    a, b = randn(rng, (M, K), dtype), randn(rng, (K, N), dtype)
    expected = product(a, b)
    la, lb = LAYOUTS[layout](a), LAYOUTS[layout](b)
    assert np.array_equal(la, a) and np.array_equal(lb, b)
    variants = {
        "a": dict(a=la, b=b),
        "b": dict(a=a, b=lb),
        "both": dict(a=la, b=lb),
        "a packed": dict(a=None, b=lb, a_packed=packed_a(la)),
        "b packed": dict(a=la, b=None, b_packed=packed_b(lb)),
        "both packed": dict(a=None, b=None, a_packed=packed_a(la), b_packed=packed_b(lb), K=K),
    }
    for name, kw in variants.items():
        wide = np.full((M, N + 7), -7.0, dtype)
        c = wide[:, 3 : 3 + N]  # rows contiguous, row stride N + 7
        gemm(c, kw.pop("a"), kw.pop("b"), **kw)
        assert_same_bits(c, expected, f"{layout}, {name}")
        assert (wide[:, :3] == -7.0).all() and (wide[:, 3 + N :] == -7.0).all(), f"{layout}, {name}: wrote outside c"


def _gemm_one_block_per_task(c, a, b, bias, beta, activation):
    """The parallel kernel with one micro-kernel call per task (its block size is an argument, BLOCK_FLOPS = 1)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_gemm_cpu, "PARALLEL_FLOPS", 0)
        patch.setattr(_gemm_cpu, "BLOCK_FLOPS", 1)
        return gemm(c, a, b, bias=bias, beta=beta, activation=activation)


def _gemm_by_blocks(a, b, row_panels: int, col_panels: int) -> np.ndarray:
    """c = a @ b assembled block by block through ``gemm_panels``, blocks of the given numbers of panels."""
    (M, K), N = a.shape, b.shape[1]
    nr = nr_of(a.dtype)
    ap, bp = packed_a(a), packed_b(b)
    c = np.empty((M, N), a.dtype)
    tile = np.empty(MR * nr, a.dtype)
    npan, nq = -(-M // MR), -(-N // nr)
    for p0 in range(0, npan, row_panels):
        for q0 in range(0, nq, col_panels):
            _gemm_cpu.gemm_panels(ap, M, bp, N, K, c, nr, q0, min(nq, q0 + col_panels), p0,
                                  min(npan, p0 + row_panels), tile, np.zeros((1, 1), a.dtype), False,
                                  a.dtype.type(1), 0, a.dtype.type(LEAKY_RELU_ALPHA))  # fmt: skip
    return c


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_serial_parallel_blocks_and_threads_give_the_same_bits(dtype, monkeypatch):
    """One product (with its epilogue) serial, parallel with the module's task sizes (several tasks at this size),
    one block per task, assembled from blocks of any size, on one thread and on all."""
    rng = case_rng(f"split-{dtype.__name__}")
    M, N, K = 75, 300, 70  # 10 row panels (the last 3 high) x 10 or 19 column panels; 3.2 MFLOP: 2 tasks
    a, b = randn(rng, (M, K), dtype), randn(rng, (K, N), dtype)
    bias = randn(rng, (M, 1), dtype)
    act = ACTIVATIONS["LeakyRelu"]
    monkeypatch.setattr(_gemm_cpu, "PARALLEL_FLOPS", SERIAL)
    expected = product(a, b, bias=bias, activation=act)
    plain = product(a, b)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, 2, before}):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            monkeypatch.setattr(_gemm_cpu, "PARALLEL_FLOPS", 0)
            assert_same_bits(product(a, b, bias=bias, activation=act), expected, f"parallel on {threads}")
            monkeypatch.setattr(_gemm_cpu, "PARALLEL_FLOPS", SERIAL)
            assert_same_bits(product(a, b, bias=bias, activation=act), expected, f"serial on {threads}")
            c = _gemm_one_block_per_task(np.empty((M, N), dtype), a, b, bias, 1.0, act)
            assert_same_bits(c, expected, f"one block per task on {threads}")
    finally:
        numba.set_num_threads(before)
    for row_panels, col_panels in [(1, 1), (3, 2), (10, 1), (1, 19), (4, 7)]:
        assert_same_bits(_gemm_by_blocks(a, b, row_panels, col_panels), plain, f"blocks {row_panels}x{col_panels}")


# --- accuracy, non-finite values, edge shapes with bias and activation --------------------------------------


def gamma(K: int, dtype) -> float:
    """Higham's γ_K = K·u / (1 − K·u), u = 2^−p: |fl(Σ a_k b_k) − Σ a_k b_k| <= γ_K Σ |a_k b_k| for any order of a
    K-term sum of products (Accuracy and Stability of Numerical Algorithms, 2nd ed., §3.1, eq. 3.5)."""
    u = np.finfo(dtype).eps / 2
    return K * u / (1 - K * u)


def error_bound(a, b) -> np.ndarray:
    """The bound on |gemm(a, b) − a @ b| against a float64 numpy product: γ_K of the dtype, plus γ_K of float64
    for numpy's own rounding (and the bound's)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    K = a.shape[1]
    return (gamma(K, a.dtype) + 2 * gamma(K + 1, np.float64)) * (np.abs(a64) @ np.abs(b64))


SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 257]
# Every size once as M, once as N and once as K (three Latin-square rows of SIZES), 19 shapes
EDGE_SHAPES = [(SIZES[i], SIZES[(7 * i + 3) % 19], SIZES[(11 * i + 5) % 19]) for i in range(19)]
BIAS_SHAPES = {"none": None, "1x1": (1, 1), "1xN": (1, -1), "Mx1": (-1, 1), "MxN": (-1, -1)}
ACTIVATION_TOLERANCE = {  # the epilogue against numpy's formulas on the same pre-activation values
    np.dtype(np.float32): {"Sigmoid": 3e-7, "Tanh": 5e-7},  # rational approximations (_cpu_kernels.py)
    np.dtype(np.float64): {"Sigmoid": 4e-16, "Tanh": 4e-16},  # libm
}


def epilogue_reference(z: np.ndarray, activation: str, alpha: float = LEAKY_RELU_ALPHA) -> np.ndarray:
    """The activations in numpy: exact ones in the dtype, the others in float64."""
    if activation == "Relu":
        return np.where((z >= 0) | np.isnan(z), z, z.dtype.type(0))  # -0.0 stays, as in onnxruntime
    if activation == "LeakyRelu":
        return np.where(z >= 0, z, z.dtype.type(alpha) * z)
    z64 = z.astype(np.float64)
    if activation == "Sigmoid":
        with np.errstate(over="ignore"):
            return 1 / (1 + np.exp(-z64))
    if activation == "Tanh":
        return np.tanh(z64)
    return z


def assert_epilogue(got: np.ndarray, z: np.ndarray, activation: str) -> None:
    """got == act(z): bit for bit for the exact activations, within ACTIVATION_TOLERANCE for the others (which must
    also stay in range and keep NaN)."""
    want = epilogue_reference(z, activation)
    if activation in ("", "Relu", "LeakyRelu"):
        assert_same_bits(got, want, activation or "no activation")
        return
    assert np.array_equal(np.isnan(got), np.isnan(want))
    err = np.abs(got - want)[~np.isnan(want)]
    tol = ACTIVATION_TOLERANCE[got.dtype][activation]
    assert err.size == 0 or err.max() <= tol, (activation, err.max())
    lo = 0.0 if activation == "Sigmoid" else -1.0
    assert np.all((got[~np.isnan(got)] >= lo) & (got[~np.isnan(got)] <= 1.0))


@pytest.mark.parametrize("M, N, K", EDGE_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_edge_shapes_accuracy_bias_and_activation(M, N, K, dtype):
    """Within the bound of a sequential sum (``error_bound``) of numpy's float64 product; then, for every bias
    shape and activation, the epilogue on that very product: act(c + beta·bias) as numpy computes it in the
    dtype (beta = 0.3, not a power of two, so that beta·bias is rounded once, as the kernel does)."""
    rng = case_rng(f"edge-{M}-{N}-{K}-{dtype.__name__}")
    a, b = randn(rng, (M, K), dtype), randn(rng, (K, N), dtype)
    pre = product(a, b)
    assert pre.shape == (M, N)
    err = np.abs(pre - a.astype(np.float64) @ b.astype(np.float64))
    assert (err <= error_bound(a, b)).all(), float((err - error_bound(a, b)).max())
    beta = 0.3
    for bias_name, shape in BIAS_SHAPES.items():
        bias = None if shape is None else randn(rng, (M if shape[0] < 0 else 1, N if shape[1] < 0 else 1), dtype)
        z = pre if bias is None else pre + dtype(beta) * bias
        for activation, code in ACTIVATIONS.items():
            got = product(a, b, bias=bias, beta=beta, activation=code)
            assert_epilogue(got, z, activation)
            assert got.shape == (M, N), (bias_name, activation)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_and_inf_propagate_as_ieee(activation, dtype):
    """A NaN in a[i, k] makes row i NaN and nothing else; one in b[k, j] column j; +inf·(positive) stays +inf
    after finite terms, +inf·0 is NaN, +inf − inf is NaN; every other element keeps its bits. Then through each
    activation (NaN stays NaN, act(±inf) its limit)."""
    rng = case_rng(f"nonfinite-{activation}-{dtype.__name__}")
    M, N, K = 11, 37, 13  # row panels of 8 and 3 (padded to 4), column panels whole and partial
    a, b = randn(rng, (M, K), dtype), randn(rng, (K, N), dtype)
    i_nan, i_inf, i_both, j_nan, j_zero, j_neg = 9, 2, 7, 33, 5, 20
    k_nan, k_inf, k_plus, k_minus, k_bnan = 4, 6, 0, 12, 8
    b[k_inf] = np.abs(b[k_inf]) + 0.5  # positive, except:
    b[k_inf, j_zero], b[k_inf, j_neg] = 0.0, -1.5
    b[k_plus] = np.abs(b[k_plus]) + 0.5
    b[k_minus] = np.abs(b[k_minus]) + 0.5
    clean = product(a, b)
    a[i_nan, k_nan] = np.nan
    a[i_inf, k_inf] = np.inf
    a[i_both, k_plus], a[i_both, k_minus] = np.inf, -np.inf
    b[k_bnan, j_nan] = np.nan
    expected = clean.copy()
    expected[i_inf] = np.inf
    expected[i_inf, j_zero] = np.nan
    expected[i_inf, j_neg] = -np.inf
    expected[i_nan] = np.nan
    expected[i_both] = np.nan
    expected[:, j_nan] = np.nan
    got = product(a, b)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    assert_same_bits(got[~nan], expected[~nan], "non-NaN elements")
    bias = randn(rng, (1, N), dtype)
    z = expected + bias
    assert_epilogue(product(a, b, bias=bias, activation=ACTIVATIONS[activation]), z, activation)


def test_an_output_without_contiguous_rows_is_refused():
    a, b = np.ones((2, 4)), np.ones((4, 3))
    base = np.full(12, -1.0)
    for c in (base[:6].reshape(2, 3)[:, ::-1], np.zeros((2, 3), order="F"), base[:6].reshape(2, 3)[::-1]):
        with pytest.raises(ValueError, match="contiguous rows"):
            gemm(c, a, b)
    assert (base == -1.0).all()


def test_empty_and_degenerate_products():
    """K = 0: c is act(0 + beta·bias); M = 0 or N = 0: nothing is written, nothing fails."""
    bias = np.array([[1.0, -2.0, 3.0]], np.float32)
    c = product(np.zeros((4, 0), np.float32), np.zeros((0, 3), np.float32), bias=bias, beta=2.0,
                activation=ACTIVATIONS["Relu"])  # fmt: skip
    assert_same_bits(c, np.tile(np.array([[2.0, 0.0, 6.0]], np.float32), (4, 1)))
    for M, N in [(0, 5), (5, 0), (0, 0)]:
        c = np.empty((M, N), np.float64)
        assert gemm(c, np.ones((M, 7)), np.ones((7, N))) is c


# --- Conv and ConvTranspose against onnxruntime -------------------------------------------------------------


def ort_conv(op: str, X, W, B=None, **attrs) -> np.ndarray:
    import onnxruntime as ort

    names = ["X", "W"] + ([] if B is None else ["B"])
    values = [X, W] + ([] if B is None else [B])
    model = make_model([helper.make_node(op, names, ["Y"], **attrs)], [(n, v.dtype, list(v.shape)) for n, v in
                       zip(names, values)], [("Y", X.dtype, None)])  # fmt: skip
    options = ort.SessionOptions()
    options.log_severity_level = 4  # its refusals are expected in the random cases: quiet
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, values)))[0]


def check_conv(op: str, X, W, B=None, **attrs) -> np.ndarray:
    """The op against onnxruntime within γ_T·(the convolution of |X|, |W|, |B|) for each implementation, T the
    terms of a sum (onnxruntime's own run on the absolute values gives that convolution); every sample alone gives
    its row of the batch bit for bit. Returns the runtime's output."""
    fn = Conv if op == "Conv" else ConvTranspose
    got = fn(X, W, B, **attrs)
    want = ort_conv(op, X, W, B, **attrs)
    assert got.shape == want.shape and got.dtype == want.dtype
    magnitude = ort_conv(op, np.abs(X), np.abs(W), None if B is None else np.abs(B), **attrs).astype(np.float64)
    taps = int(np.prod(W.shape[2:]))
    terms = (W.shape[1] if op == "Conv" else W.shape[0] // attrs.get("group", 1)) * taps + 1  # + the bias
    tol = 2.1 * gamma(terms, np.float32) * magnitude
    both_nan = np.isnan(got) & np.isnan(want)
    ok = both_nan | (got == want) | (np.abs(got.astype(np.float64) - want) <= tol)
    assert ok.all(), f"{op} {attrs}: {(~ok).sum()} of {ok.size} outside the bound"
    for n in sorted({0, len(X) - 1}):
        assert_same_bits(fn(X[n : n + 1], W, B, **attrs)[0], got[n], f"{op} sample {n} alone")
    return got


# (op, X shape, W shape, bias, attributes): each of Conv's paths (one tile, several tiles, one sample's im2col
# and a threaded GEMM, the full-window GEMM) and ConvTranspose's (projection, as a Conv, per sample, chunked
# col2im), with groups, dilations, strides, asymmetric pads, output_padding, output_shape, auto_pad, 1-D to 3-D
CONV_CASES = [
    ("Conv", (3, 4, 9, 8), (10, 4, 3, 3), True, dict(pads=[1, 1, 1, 1])),
    ("Conv", (1, 8, 26, 24), (16, 8, 3, 3), True, dict(pads=[1, 0, 2, 1])),
    ("Conv", (1, 64, 8, 8), (48, 64, 3, 3), True, dict(pads=[1, 1, 1, 1])),
    ("Conv", (9, 6, 11, 7), (9, 2, 3, 2), True, dict(group=3, strides=[2, 1], dilations=[1, 2], pads=[2, 1, 0, 3])),
    ("Conv", (5, 3, 4, 4), (7, 3, 4, 4), True, {}),
    ("Conv", (2, 4, 33), (6, 2, 5), False, dict(group=2, strides=[3], auto_pad="SAME_UPPER")),
    ("Conv", (2, 2, 5, 6, 4), (3, 2, 2, 3, 2), True, dict(strides=[1, 2, 1], pads=[1, 0, 0, 0, 1, 1])),
    ("Conv", (4, 16, 7, 7), (40, 16, 1, 1), True, dict(strides=[2, 2])),
    ("Conv", (2, 3, 12, 12), (5, 3, 5, 5), True, dict(auto_pad="SAME_LOWER")),
    ("ConvTranspose", (3, 16, 1, 1), (16, 8, 4, 4), True, {}),
    ("ConvTranspose", (2, 4, 9, 7), (4, 3, 3, 3), True, dict(pads=[1, 1, 0, 2])),
    (
        "ConvTranspose",
        (4, 6, 8, 8),
        (6, 2, 5, 5),
        True,
        dict(group=3, strides=[2, 2], pads=[2] * 4, output_padding=[1, 1]),
    ),
    ("ConvTranspose", (5, 3, 3, 4), (3, 4, 3, 2), False, dict(strides=[3, 2], dilations=[2, 1], output_padding=[1, 0])),
    ("ConvTranspose", (2, 2, 6), (2, 5, 4), True, dict(strides=[2], output_shape=[13])),
    ("ConvTranspose", (3, 4, 5, 5), (4, 2, 3, 3), True, dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ("ConvTranspose", (2, 2, 3, 4, 3), (2, 3, 2, 2, 3), True, dict(strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0])),
]


@pytest.fixture(params=["direct", "im2col"])
def conv_path(request, monkeypatch):
    """Conv's direct convolution wherever it applies, or never (the im2col paths): both must pass."""
    monkeypatch.setattr(conv_ops, "DIRECT_MIN_LANES", 0.0 if request.param == "direct" else 2.0)
    return request.param


@pytest.mark.parametrize("op, x_shape, w_shape, bias, attrs", CONV_CASES)
def test_conv_paths_match_onnxruntime(op, x_shape, w_shape, bias, attrs, conv_path):
    rng = case_rng(f"conv-{op}-{x_shape}-{w_shape}-{attrs}")
    c_out = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
    X, W = randn(rng, x_shape), randn(rng, w_shape)
    check_conv(op, X, W, randn(rng, (c_out,)) if bias else None, **attrs)


def random_conv_case(rng) -> tuple:
    """A random Conv or ConvTranspose: 1-D to 3-D, batch 1-9, groups, strides, dilations, pads or auto_pad,
    output_padding; some of them refused by onnxruntime."""
    op = "Conv" if rng.random() < 0.5 else "ConvTranspose"
    rank = int(rng.choice([1, 2, 2, 3]))
    g = int(rng.choice([1, 1, 2, 3]))
    wide = rng.random() < 0.25  # enough channels for several panels of the GEMM
    cin_g, cout_g = int(rng.integers(1, 13 if wide else 4)), int(rng.integers(1, 21 if wide else 4))
    kernel = [int(rng.integers(1, 5)) for _ in range(rank)]
    strides = [int(rng.choice([1, 1, 2, 3])) for _ in range(rank)]
    dilations = [int(rng.choice([1, 1, 2])) for _ in range(rank)]
    hi = {1: 30, 2: 12, 3: 6}[rank]
    size = [max(int(rng.integers(1, hi)), (k - 1) * d + 1) for k, d in zip(kernel, dilations)]
    attrs = dict(strides=strides, dilations=dilations)
    if g > 1:
        attrs["group"] = g
    if rng.random() < 0.2:
        attrs["auto_pad"] = str(rng.choice(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    else:
        attrs["pads"] = [int(rng.integers(0, 3)) for _ in range(2 * rank)]
    if op == "ConvTranspose" and rng.random() < 0.4:
        attrs["output_padding"] = [int(rng.integers(0, s)) for s in strides]  # onnxruntime: < stride
    x_shape = (int(rng.integers(1, 10)), cin_g * g, *size)
    w_shape = (cout_g * g, cin_g, *kernel) if op == "Conv" else (cin_g * g, cout_g, *kernel)
    return op, x_shape, w_shape, rng.random() < 0.6, attrs


@pytest.mark.parametrize("seed", range(4))
def test_random_convolutions_match_onnxruntime(seed, conv_path):
    """A bounded slice of the fuzzing behind this file: 25 random geometries per seed; those onnxruntime refuses
    (dilations with SAME padding, empty outputs) are skipped, the rest checked as above; a geometry the runtime
    refuses but onnxruntime runs fails."""
    rng = case_rng(f"random-conv-{seed}")
    checked = 0
    for _ in range(25):
        op, x_shape, w_shape, bias, attrs = random_conv_case(rng)
        c_out = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
        X, W = randn(rng, x_shape), randn(rng, w_shape)
        B = randn(rng, (c_out,)) if bias else None
        try:
            ort_conv(op, X, W, B, **attrs)
        except Exception:  # onnxruntime's refusal: nothing to compare with
            continue
        try:
            check_conv(op, X, W, B, **attrs)
        except ZooRuntimeError as e:
            raise AssertionError(f"{op} {x_shape} {w_shape} {attrs}: refused ({e}) but onnxruntime runs it") from e
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("seed", range(3))
def test_direct_and_im2col_convolutions_give_the_same_bits(seed, monkeypatch):
    """The direct convolution and the im2col paths sum every output in one order (the GEMM's k order, then the
    bias): the same bits for random geometries (1-D to 3-D, groups, strides, dilations, pads, float32 and float64,
    each activation), whichever path a geometry takes by default. Each path also meets onnxruntime above."""
    from runtime.ops.conv import FusedConv

    rng = case_rng(f"direct-im2col-{seed}")
    checked = 0
    for _ in range(30):
        op, x_shape, w_shape, bias, attrs = random_conv_case(rng)
        if op != "Conv":
            continue
        dtype = np.float64 if rng.random() < 0.3 else np.float32
        X, W = randn(rng, x_shape).astype(dtype), randn(rng, w_shape).astype(dtype)
        B = randn(rng, (w_shape[0],)).astype(dtype) if bias else None
        activation = str(rng.choice(list(ACTIVATIONS)))
        results = []
        for lanes in (0.0, 2.0):  # always direct, never direct
            monkeypatch.setattr(conv_ops, "DIRECT_MIN_LANES", lanes)
            try:
                y = FusedConv(X, W, B, activation=activation, **attrs) if activation else Conv(X, W, B, **attrs)
            except ZooRuntimeError:  # a geometry both refuse (an empty output, say)
                break
            results.append(y)
        if len(results) == 2:
            assert_same_bits(results[0], results[1], f"Conv {x_shape} {w_shape} {attrs} {dtype.__name__} {activation}")
            checked += 1
    assert checked >= 5


def conv_reference(op: str, X, W, B, group: int, strides, dilations, pads_begin, out_size) -> np.ndarray:
    """The spec's sums in float64, one kernel tap at a time: Conv y[n, o] = Σ x[n, o·s − pad + t·d]·w[t] (zero
    outside X), ConvTranspose y[n, i·s − pad + t·d] += x[n, i]·w[t] (dropped outside Y), over each group's
    channels, plus the bias."""
    X, W = X.astype(np.float64), W.astype(np.float64)
    N, C_in, *in_size = X.shape
    C_out = W.shape[0] if op == "Conv" else W.shape[1] * group
    cg_in, cg_out = C_in // group, C_out // group
    y = np.zeros((N, C_out, *out_size))
    xg = X.reshape(N, group, cg_in, *in_size)
    for t in itertools.product(*(range(k) for k in W.shape[2:])):
        w_t = W[(slice(None), slice(None), *t)]
        if op == "Conv":  # the input position each output position reads with tap t
            src = [np.arange(n) * s - p + k * d for n, s, p, k, d in zip(out_size, strides, pads_begin, t, dilations)]
            inside = functools.reduce(np.multiply.outer, [(i >= 0) & (i < n) for i, n in zip(src, in_size)])
            clipped = (np.clip(i, 0, n - 1) for i, n in zip(src, in_size))
            x_t = xg[np.ix_(range(N), range(group), range(cg_in), *clipped)] * inside
            y += np.einsum("ngc...,goc->ngo...", x_t, w_t.reshape(group, cg_out, cg_in)).reshape(y.shape)
        else:  # the output position each input position reaches with tap t
            dst = [np.arange(n) * s - p + k * d for n, s, p, k, d in zip(in_size, strides, pads_begin, t, dilations)]
            inside = functools.reduce(np.multiply.outer, [(o >= 0) & (o < n) for o, n in zip(dst, out_size)])
            part = np.einsum("ngc...,gco->ngo...", xg, w_t.reshape(group, cg_in, cg_out)).reshape(N, C_out, *in_size)
            index = np.ix_(range(N), range(C_out), *(np.clip(o, 0, n - 1) for o, n in zip(dst, out_size)))
            np.add.at(y, index, part * inside)
    return y + (0 if B is None else B.reshape(1, -1, *([1] * len(in_size))))


# Geometries onnxruntime refuses, against ``conv_reference``: dilations with SAME padding (begin pads from the
# spec: total = (⌈n/s⌉ − 1)·s + (k − 1)·d + 1 − n, its odd unit at the end for SAME_UPPER), and ConvTranspose's
# output_padding at or past the stride (the spec allows it below the stride or the dilation)
REFUSED_CASES = [
    ("Conv", (2, 4, 11, 9), (6, 2, 3, 3), dict(group=2, dilations=[2, 3], strides=[1, 2], auto_pad="SAME_UPPER")),
    ("Conv", (3, 3, 17), (5, 3, 4), dict(dilations=[3], strides=[2], auto_pad="SAME_LOWER")),
    (
        "ConvTranspose",
        (2, 4, 5, 6),
        (4, 3, 3, 2),
        dict(strides=[1, 2], dilations=[3, 3], output_padding=[2, 2], pads=[1, 0, 0, 1]),
    ),
    ("ConvTranspose", (1, 3, 6, 6), (3, 2, 3, 3), dict(dilations=[2, 2], output_padding=[1, 1])),  # as a Conv
    ("ConvTranspose", (4, 2, 7), (2, 4, 2), dict(strides=[2], dilations=[3], output_padding=[2])),
    (
        "ConvTranspose",
        (3, 4, 6, 7),
        (4, 1, 2, 3),
        dict(group=2, strides=[2, 1], dilations=[3, 2], output_padding=[2, 1], pads=[0, 1, 1, 0]),
    ),
]


@pytest.mark.parametrize("op, x_shape, w_shape, attrs", REFUSED_CASES)
def test_geometries_onnxruntime_refuses_match_the_spec(op, x_shape, w_shape, attrs):
    rng = case_rng(f"refused-{op}-{x_shape}-{w_shape}-{attrs}")
    X, W = randn(rng, x_shape), randn(rng, w_shape)
    g, rank = attrs.get("group", 1), len(x_shape) - 2
    B = randn(rng, (w_shape[0] if op == "Conv" else w_shape[1] * g,))
    with pytest.raises(Exception):  # noqa: B017 -- onnxruntime's own error types
        ort_conv(op, X, W, B, **attrs)
    strides, dilations = attrs.get("strides", [1] * rank), attrs["dilations"]
    pads = attrs.get("pads", [0] * 2 * rank)
    begin, out = [], []
    for i in range(rank):
        n, k, s, d = x_shape[2 + i], w_shape[2 + i], strides[i], dilations[i]
        if op == "Conv":
            out.append(-(-n // s))
            total = max(0, (out[-1] - 1) * s + (k - 1) * d + 1 - n)
            begin.append(total // 2 if attrs["auto_pad"] == "SAME_UPPER" else total - total // 2)
        else:
            begin.append(pads[i])
            out.append(s * (n - 1) + attrs["output_padding"][i] + (k - 1) * d + 1 - pads[i] - pads[rank + i])
    want = conv_reference(op, X, W, B, g, strides, dilations, begin, out)
    magnitude = conv_reference(op, np.abs(X), np.abs(W), np.abs(B), g, strides, dilations, begin, out)
    fn = Conv if op == "Conv" else ConvTranspose
    got = fn(X, W, B, **attrs)
    assert got.shape == want.shape
    terms = (w_shape[1] if op == "Conv" else w_shape[0] // g) * int(np.prod(w_shape[2:])) + 1
    assert (np.abs(got - want) <= 1.01 * gamma(terms, np.float32) * magnitude).all()
    assert_same_bits(fn(X[-1:], W, B, **attrs)[0], got[-1], "the last sample alone")


def interior(n_in: int, k: int, s: int, d: int, pad: int, n_out: int) -> slice:
    """The outputs o along one axis whose window [o·s − pad, o·s − pad + (k−1)·d] lies inside [0, n_in)."""
    lo = -(-pad // s)
    hi = (n_in - 1 + pad - (k - 1) * d) // s + 1
    assert 0 <= lo < min(hi, n_out), "the geometry has no interior"
    return slice(lo, min(hi, n_out))


# (X shape, W shape, attributes (explicit pads)): each Conv path, groups, strides, dilations, 1-D to 3-D
CONSTANT_CASES = [
    ((1, 3, 9, 9), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((6, 4, 12, 10), (8, 2, 3, 3), dict(group=2, strides=[2, 1], dilations=[1, 2], pads=[2, 1, 1, 0])),
    ((1, 16, 28, 28), (24, 16, 5, 5), dict(pads=[2, 2, 2, 2])),  # tiles on the threads
    ((1, 40, 10, 10), (20, 40, 3, 3), dict(pads=[1, 1, 1, 1])),  # one sample's im2col, a threaded GEMM
    ((3, 5, 40), (7, 5, 4), dict(strides=[3], dilations=[2], pads=[3, 1])),
    ((2, 2, 6, 7, 5), (3, 2, 3, 2, 3), dict(pads=[1, 0, 1, 1, 1, 2])),
    ((9, 8, 6, 6), (33, 8, 2, 2), dict(strides=[2, 2], pads=[1, 1, 0, 0])),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", CONSTANT_CASES)
@pytest.mark.parametrize("activation", ["", "Sigmoid"])
def test_conv_of_a_constant_image_is_one_value_per_channel_over_the_interior(x_shape, w_shape, attrs, activation,
                                                                             conv_path):  # fmt: skip
    """Every interior output of channel c sums the same products in the same order, so it is one value, the same in
    every sample of the batch: the constant times c's weights' sum plus the bias, within the bound. Also with an
    activation fused (FusedConv's epilogue)."""
    from runtime.ops.conv import FusedConv

    rng = case_rng(f"constant-{x_shape}-{w_shape}-{attrs}-{activation}")
    value = np.float32(0.3711)
    X = np.full(x_shape, value, np.float32)
    W, B = randn(rng, w_shape), randn(rng, (w_shape[0],))
    y = FusedConv(X, W, B, activation=activation, **attrs) if activation else Conv(X, W, B, **attrs)
    rank = len(x_shape) - 2
    strides, dilations = attrs.get("strides", [1] * rank), attrs.get("dilations", [1] * rank)
    inside = (slice(None), slice(None)) + tuple(
        interior(x_shape[2 + i], w_shape[2 + i], strides[i], dilations[i], attrs["pads"][i], y.shape[2 + i])
        for i in range(rank)
    )
    core = y[inside].reshape(y.shape[0], y.shape[1], -1)  # (N, C_out, interior positions)
    for c in range(y.shape[1]):
        assert len(np.unique(bits(core[:, c]))) == 1, f"channel {c}: {len(np.unique(core[:, c]))} distinct values"
    w64 = W.astype(np.float64).reshape(w_shape[0], -1)
    exact = float(value) * w64.sum(axis=1) + B  # (C_out,)
    tol = gamma(w64.shape[1] + 1, np.float32) * (abs(float(value)) * np.abs(w64).sum(axis=1) + np.abs(B))
    if activation == "Sigmoid":
        exact, tol = 1 / (1 + np.exp(-exact)), tol / 4 + 3e-7  # the logistic's slope is at most 1/4
    assert (np.abs(core[0, :, 0] - exact) <= tol).all()


@pytest.mark.parametrize("strides, pads", [([1, 1], [1, 2, 0, 1]), ([2, 2], [1, 1, 1, 1]), ([3, 2], [0, 1, 2, 0])])
def test_conv_transpose_of_a_constant_image_depends_on_the_phase_only(strides, pads):
    """Away from the borders, an output of a transposed convolution of a constant gathers the same taps, in the same
    order, as the output one stride further: y[..., o] and y[..., o + s] have the same bits."""
    rng = case_rng(f"constant-transpose-{strides}-{pads}")
    X = np.full((3, 4, 9, 8), np.float32(-1.25), np.float32)
    W, B = randn(rng, (4, 5, 3, 4)), randn(rng, (5,))
    y = check_conv("ConvTranspose", X, W, B, strides=strides, pads=pads)
    (kh, kw), (sh, sw) = W.shape[2:], strides
    # the interior along an axis: outputs o whose every tap t with (o + pad − t) divisible by s reads an input
    # (o + pad − t)/s inside X, from o = k − 1 − pad to o = (n_in − 1)·s − pad
    h0, h1 = kh - 1 - pads[0], min(y.shape[2], (X.shape[2] - 1) * sh - pads[0] + 1)
    w0, w1 = kw - 1 - pads[1], min(y.shape[3], (X.shape[3] - 1) * sw - pads[1] + 1)
    core = y[:, :, h0:h1, w0:w1]
    assert core.shape[2] > sh and core.shape[3] > sw
    assert_same_bits(core[:, :, sh:], core[:, :, :-sh], "one stride down")
    assert_same_bits(core[:, :, :, sw:], core[:, :, :, :-sw], "one stride right")
    assert_same_bits(core[1:], core[:-1], "sample to sample")
