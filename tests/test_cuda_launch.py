"""The CUDA host wrappers' launch decisions, under the simulator or on a GPU: no launch for an empty grid (a GPU
rejects a grid of zero blocks; the simulator does not, so the wrapper must not rely on it), the tiled GEMM's
row slabs past the grid's y extent, the skinny GEMM's split over K (its chunks' sums added in the order the
tiled kernel adds them, so a row alone has the bits it has in a batch), and the convolutions' 64-bit path
(tensors past 2^31 elements), which must give the 32-bit kernels' bits exactly: both sum each output in the
same order.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_conv import check_random

pytestmark = pytest.mark.cuda
F32 = np.float32


def _device(*arrays):
    from numba import cuda

    return [cuda.to_device(np.ascontiguousarray(a, F32)) for a in arrays]


@pytest.mark.parametrize(
    "M, N, K", [(0, 5, 3), (4, 0, 3), (0, 0, 3), (40, 0, 3), (0, 7, 0)], ids=["M0", "N0", "MN0", "tiled-N0", "K0"]
)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_fused_gemm_of_an_empty_output_launches_nothing(M, N, K, bias, monkeypatch):
    from runtime.ops import gemm_cuda

    monkeypatch.setattr(gemm_cuda, "_gemm_kernel", _NoLaunch())
    monkeypatch.setattr(gemm_cuda, "_gemm_skinny_kernel", _NoLaunch())
    monkeypatch.setattr(gemm_cuda, "_gemm_reduce_kernel", _NoLaunch())
    A, B, C = _device(np.ones((M, K)), np.ones((K, N)), np.ones((1, N)))
    Y = gemm_cuda.fused_gemm(A, B, C if bias else None)
    assert Y.shape == (M, N) and Y.copy_to_host().shape == (M, N)


class _NoLaunch:
    def __getitem__(self, config):
        raise AssertionError(f"a kernel was configured for an empty output: {config}")


def test_fused_gemm_of_no_rows_keeps_the_bias_check():
    from runtime.errors import InvalidFeed
    from runtime.ops import gemm_cuda

    A, B, C = _device(np.ones((0, 3)), np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(InvalidFeed, match=r"bias C of shape \(2, 4\) does not broadcast to \(0, 4\)"):
        gemm_cuda.fused_gemm(A, B, C)


@pytest.mark.parametrize("transA", [0, 1])
@pytest.mark.parametrize("c_shape", [(40, 7), (1, 7), (40, 1)])
def test_fused_gemm_in_row_slabs(transA, c_shape, monkeypatch):
    # a grid of one block row: 40 rows run as slabs of 16, 16 and 8
    from runtime.ops import gemm_cuda

    monkeypatch.setattr(gemm_cuda, "MAX_GRID_Y", 1)
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(s).astype(F32) for s in [(40, 5), (5, 7), c_shape])
    A, B, C = _device(a.T if transA else a, b, c)
    Y = gemm_cuda.fused_gemm(A, B, C, alpha=0.5, beta=2.0, transA=transA).copy_to_host()
    np.testing.assert_allclose(Y, 0.5 * a @ b + 2.0 * c, rtol=1e-5, atol=1e-5)


def _small_chunks(monkeypatch):
    # chunks of 32 along K and blocks of 8 threads: several chunks and column blocks on simulator-sized shapes
    from runtime.ops import gemm_cuda

    monkeypatch.setattr(gemm_cuda, "K_CHUNK", 32)
    monkeypatch.setattr(gemm_cuda, "THREADS_PER_BLOCK", 8)
    return gemm_cuda


@pytest.mark.parametrize("transA, transB", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("K", [0, 5, 32, 70], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("c_shape", [None, (3, 37), (1, 37), (3, 1)], ids=["nobias", "MN", "1N", "M1"])
def test_skinny_gemm_split_over_k_matches_float64(transA, transB, K, c_shape, monkeypatch):
    # 37 columns: two blocks of 8 threads × 4 columns, the last partly past N; 70 = 3 chunks, the last short
    gemm_cuda = _small_chunks(monkeypatch)
    rng = np.random.default_rng(K + 10 * transA + 20 * transB)
    a, b = rng.standard_normal((3, K)).astype(F32), rng.standard_normal((K, 37)).astype(F32)
    c = None if c_shape is None else rng.standard_normal(c_shape).astype(F32)
    A, B = _device(a.T if transA else a, b.T if transB else b)
    C = None if c is None else _device(c)[0]
    Y = gemm_cuda.fused_gemm(A, B, C, alpha=0.5, beta=2.0, transA=transA, transB=transB, activation=1)
    z = 0.5 * (a.astype(np.float64) @ b) + (0.0 if c is None else 2.0 * c)
    np.testing.assert_allclose(Y.copy_to_host(), 1.0 / (1.0 + np.exp(-z)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("K", [70, 96], ids=lambda k: f"K{k}")
def test_rows_of_a_gemm_have_the_same_bits_alone_and_in_a_batch(K, monkeypatch):
    # 3 rows run by the skinny kernel (chunks in parallel, then added) and inside 40 rows by the tiled one
    # (chunks in sequence); a strided view of A, which the skinny kernel does not take, runs tiled too
    gemm_cuda = _small_chunks(monkeypatch)
    rng = np.random.default_rng(K)
    a, b, c = rng.standard_normal((40, K)), rng.standard_normal((K, 11)), rng.standard_normal((1, 11))
    A, B, C = _device(a, b, c)
    whole = gemm_cuda.fused_gemm(A, B, C, activation=2).copy_to_host()
    rows = gemm_cuda.fused_gemm(*_device(a[5:8]), B, C, activation=2).copy_to_host()
    strided = gemm_cuda.fused_gemm(A[5:8, ::2], *_device(b[::2]), C, activation=2).copy_to_host()
    np.testing.assert_array_equal(rows, whole[5:8])
    np.testing.assert_allclose(whole, np.maximum(a.astype(F32) @ b.astype(F32) + c.astype(F32), 0), rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(strided, np.maximum(a[5:8, ::2] @ b[::2] + c, 0), rtol=1e-5, atol=1e-5)


# C_out per group of 3 and 6: the 32-bit kernels' last block of four channels is partly past the group's end
WIDE_CASES = [
    ("Conv", (2, 4, 5, 4), (6, 2, 3, 3), dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])),
    ("ConvTranspose", (2, 4, 3, 3), (4, 3, 3, 2), dict(group=2, strides=[2, 3], pads=[1, 0, 2, 1], dilations=[1, 2],
                                                      output_padding=[1, 2])),
    ("ConvTranspose", (1, 2, 3, 4), (2, 6, 2, 2), dict(strides=[2, 2])),
]  # fmt: skip


@pytest.mark.parametrize(
    "op, x_shape, w_shape, attrs", WIDE_CASES, ids=[c[0] + str(i) for i, c in enumerate(WIDE_CASES)]
)
def test_convolution_64_bit_path_gives_the_same_bits(op, x_shape, w_shape, attrs, monkeypatch):
    from runtime.ops import conv_cuda

    narrow = check_random(op, x_shape, w_shape, backend="cuda", **attrs)
    monkeypatch.setattr(conv_cuda, "INDEX32_LIMIT", 0)
    launched = []
    for name in ("_conv_kernel_wide", "_conv_transpose_kernel_wide"):
        original = getattr(conv_cuda, name)
        monkeypatch.setattr(conv_cuda, name, _Recording(original, launched))
    wide = check_random(op, x_shape, w_shape, backend="cuda", **attrs)
    assert launched, "the 64-bit kernel did not run"
    np.testing.assert_array_equal(wide, narrow)


class _Recording:
    """A kernel stand-in that notes each launch configuration it hands out."""

    def __init__(self, kernel, launched: list):
        self.kernel, self.launched = kernel, launched

    def __getitem__(self, config):
        self.launched.append(config)
        return self.kernel[config]


# Conv with enough output channels per group for the implicit GEMM: groups, strides, dilations, uneven pads, 1-D
# and 3-D; 70 channels and 2·6·6 = 72 positions make two tiles each way, partly past the ends
IMPLICIT_CASES = [
    ((2, 3, 6, 6), (70, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 4, 5, 4), (66, 2, 3, 2), dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])),
    ((2, 2, 9), (33, 2, 4), dict(strides=[2], auto_pad="SAME_UPPER")),
    ((1, 2, 3, 4, 4), (32, 2, 2, 2, 2), dict(strides=[1, 2, 2], auto_pad="SAME_LOWER")),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", IMPLICIT_CASES, ids=[f"implicit{i}" for i in range(4)])
@pytest.mark.parametrize("activation", ["", "LeakyRelu"])
def test_implicit_gemm_convolution_gives_the_direct_kernels_bits(x_shape, w_shape, attrs, activation, monkeypatch):
    # both sum an output as B[c] and then its taps in (kd, kh, kw) order, channels innermost: the same bits; and
    # both agree with onnxruntime (check_random)
    from runtime.ops import conv_cuda

    launched = []
    monkeypatch.setattr(conv_cuda, "_conv_implicit_gemm_kernel",
                        _Recording(conv_cuda._conv_implicit_gemm_kernel, launched))  # fmt: skip
    rng = np.random.default_rng(sum(w_shape))
    x, w, b = (rng.standard_normal(s).astype(F32) for s in (x_shape, w_shape, (w_shape[0],)))
    run = conv_cuda.FusedConv if activation else conv_cuda.Conv
    extra = dict(activation=activation, activation_alpha=0.2) if activation else {}
    implicit = run(*_device(x, w, b), **attrs, **extra).copy_to_host()
    if not activation:
        check_random("Conv", x_shape, w_shape, backend="cuda", **attrs)  # against onnxruntime
    assert len(launched) == (1 if activation else 2), "the implicit GEMM did not run"
    monkeypatch.setattr(conv_cuda, "IMPLICIT_GEMM_MIN_CHANNELS", 10**9)
    direct = run(*_device(x, w, b), **attrs, **extra).copy_to_host()
    assert len(launched) == (1 if activation else 2), "the direct kernel was not what ran"
    np.testing.assert_array_equal(implicit, direct)


def test_implicit_gemm_padding_past_k_keeps_the_sign_of_zero(monkeypatch):
    # K = 9 is staged as 16: the 7 values past it must add nothing, not even turn a −0 sum into +0
    from runtime.ops import conv_cuda

    x, w, b = np.zeros((1, 1, 4, 4), F32), -np.ones((32, 1, 3, 3), F32), np.full(32, -0.0, F32)
    implicit = conv_cuda.Conv(*_device(x, w, b)).copy_to_host()
    monkeypatch.setattr(conv_cuda, "IMPLICIT_GEMM_MIN_CHANNELS", 10**9)
    direct = conv_cuda.Conv(*_device(x, w, b)).copy_to_host()
    assert np.signbit(direct).all() and np.signbit(implicit).all()
