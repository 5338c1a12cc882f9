"""The CUDA host wrappers' launch decisions, under the simulator or on a GPU: no launch for an empty grid (a GPU
rejects a grid of zero blocks; the simulator does not, so the wrapper must not rely on it), the tiled GEMM's
row slabs past the grid's y extent, and the convolutions' 64-bit path (tensors past 2^31 elements), which must
give the 32-bit kernels' bits exactly: both sum each output in the same order.
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
