"""The fast paths of the CPU backend, each against onnxruntime (or against the general path it short-cuts):
the 2x2 stride-2 MaxPool kernel and the general values-only one, ConvTranspose of a 1x1 input as one GEMM
(DCGAN's projection), Reshape's remembered target shapes, OpenBLAS's per-GEMM thread count, and the session's
re-use of a feed's checks. No timings here: these check that the fast paths give the same answers.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import runtime
from runtime.errors import InvalidFeed
from runtime.ops import conv as conv_ops
from runtime.ops import gemm as gemm_ops
from runtime.ops import pool as pool_ops
from tests.conftest import assert_close, case_rng, make_model, ort_run, randn, runtime_run

F32 = np.float32


def _max_pool_model(shape, indices: bool, **attrs) -> bytes:
    outputs = [("y", F32, None)] + ([("i", np.int64, None)] if indices else [])
    node = helper.make_node("MaxPool", ["x"], [name for name, _, _ in outputs], **attrs)
    return make_model([node], [("x", F32, list(shape))], outputs)


@pytest.mark.parametrize(
    "shape, attrs",
    [
        ((3, 4, 8, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),  # the unrolled 2x2 kernel
        ((2, 3, 9, 7), dict(kernel_shape=[2, 2], strides=[2, 2])),  # odd sizes: the last row/column unread
        ((2, 3, 9, 7), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),  # windows past the end: general
        ((2, 3, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1])),  # padded: general
        ((2, 3, 10, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2])),
        ((2, 3, 10, 9), dict(kernel_shape=[3, 2], strides=[1, 3], dilations=[2, 2])),
        ((64, 16, 10, 10), dict(kernel_shape=[2, 2], strides=[2, 2])),
        ((2, 5, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),  # 1-D
    ],
)
def test_max_pool_values_match_onnxruntime_with_nan_and_inf(shape, attrs):
    rng = case_rng(f"maxpool-{shape}-{attrs}")
    x = randn(rng, shape)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=max(4, flat.size // 20), replace=False)
    flat[picks[0::3]] = np.nan
    flat[picks[1::3]] = -np.inf
    flat[picks[2::3]] = np.inf
    # onnxruntime's kernel with Indices is the oracle: its values-only one (MLAS) treats NaN by SIMD width
    got = runtime_run(_max_pool_model(shape, False, **attrs), {"x": x})[0]
    expected = ort_run(_max_pool_model(shape, True, **attrs), {"x": x})[0]
    np.testing.assert_array_equal(got, expected)


def test_max_pool_parallel_kernels_match_serial(monkeypatch):
    rng = case_rng("maxpool-parallel")
    x = randn(rng, (4, 8, 12, 12))
    x.reshape(-1)[::7] = np.nan
    for attrs in (dict(kernel_shape=[2, 2], strides=[2, 2]), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)):
        serial = pool_ops.MaxPool(x, _outputs=(True, False), **attrs)
        monkeypatch.setattr(pool_ops, "MAX_POOL_PARALLEL_TAPS", 1)
        parallel = pool_ops.MaxPool(x, _outputs=(True, False), **attrs)
        monkeypatch.undo()
        np.testing.assert_array_equal(serial, parallel)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("activation", [None, "Relu", "Tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_of_1x1_input_is_one_gemm(batch, activation, bias):
    rng = case_rng(f"projection-{batch}-{activation}-{bias}")
    inits = {"w": randn(rng, (10, 6, 4, 3), scale=0.5)}  # (C_in, C_out, kH, kW)
    inputs = ["x", "w"]
    if bias:
        inits["b"] = randn(rng, (6,))
        inputs.append("b")
    nodes = [helper.make_node("ConvTranspose", inputs, ["t" if activation else "y"])]
    if activation:
        nodes.append(helper.make_node(activation, ["t"], ["y"]))
    model = make_model(nodes, [("x", F32, [batch, 10, 1, 1])], [("y", F32, None)], inits)
    x = randn(rng, (batch, 10, 1, 1))
    got = runtime_run(model, {"x": x})[0]
    assert got.shape == (batch, 6, 4, 3)
    assert_close(got, ort_run(model, {"x": x})[0])


def test_projection_path_is_taken_only_where_col2im_is_the_identity():
    def geometry(x_shape, w_shape, **attrs):
        return conv_ops.conv_geometry("ConvTranspose", x_shape, w_shape, **attrs)

    assert conv_ops._is_projection(geometry((2, 10, 1, 1), (10, 6, 4, 4)))
    assert not conv_ops._is_projection(geometry((2, 10, 1, 1), (10, 6, 4, 4), pads=[1, 1, 1, 1]))
    assert not conv_ops._is_projection(geometry((2, 10, 1, 1), (10, 3, 4, 4), group=2))
    assert not conv_ops._is_projection(geometry((2, 10, 2, 2), (10, 6, 4, 4)))
    assert not conv_ops._is_projection(geometry((2, 10, 1, 1), (10, 6, 4, 4), output_shape=[6, 6]))


def test_reshape_remembers_targets_and_still_refuses_bad_ones():
    from runtime.ops.shape import Reshape

    x = np.arange(24, dtype=F32).reshape(2, 3, 4)
    for _ in range(2):  # the second call is served from the cache
        assert Reshape(x, np.array([0, -1], np.int64)).shape == (2, 12)
        assert Reshape(x, np.array([4, 0, 2], np.int64), allowzero=0).shape == (4, 3, 2)
    for bad in ([5, -1], [-1, -1], [2, 3, 4, 0], [-2, -12]):
        with pytest.raises(InvalidFeed):
            Reshape(x, np.array(bad, np.int64))


@pytest.mark.parametrize("shape", [(1, 784, 196), (64, 784, 196), (64, 300, 2000), (3, 64, 130, 70)])
def test_blas_thread_choice_is_deterministic_and_changes_results_by_rounding_only(shape):
    rng = case_rng(f"blas-{shape}")
    if len(shape) == 4:  # (g, M, K) @ (g, K, N), as the convolutions call it
        a, b = randn(rng, shape[:3]), randn(rng, (shape[0], shape[2], shape[3]))
    else:  # (M, K) @ (K, N)
        a, b = randn(rng, shape[:2]), randn(rng, shape[1:])
    expected = np.matmul(a, b)
    threads = gemm_ops.BLAS_THREADS
    first = gemm_ops.blas_matmul(a, b)
    # one thread may take other OpenBLAS kernels than two: equal to NumPy's up to float32 rounding
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-4)
    for _ in range(3):  # the count depends on the size only: the same bits on every call
        np.testing.assert_array_equal(gemm_ops.blas_matmul(a, b), first)
    if threads.get is not None:
        assert threads.get() >= 1  # restored after every single-threaded call


def test_session_reuses_a_feeds_checks_only_for_the_same_kind_of_feed():
    rng = case_rng("feed-fast-path")
    node = helper.make_node("Relu", ["x"], ["y"])
    model = make_model([node], [("x", F32, ["n", 3])], [("y", F32, None)])
    sess = runtime.InferenceSession(model)
    x = randn(rng, (4, 3))
    for _ in range(2):
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))
    x6 = randn(rng, (6, 3))
    np.testing.assert_array_equal(sess.run(None, {"x": x6})[0], np.maximum(x6, 0))  # a new shape: checked anew
    strided = randn(rng, (6, 6))[:, ::2]  # (6, 3), not C-contiguous: copied by the checks
    np.testing.assert_array_equal(sess.run(None, {"x": strided})[0], np.maximum(strided, 0))
    with pytest.raises(InvalidFeed):
        sess.run(None, {"x": x6.astype(np.float64)})
    with pytest.raises(InvalidFeed):
        sess.run(None, {"x": x6, "extra": x6})
    with pytest.raises(InvalidFeed):
        sess.run(None, {"x": randn(rng, (6, 4))})
    with pytest.raises(InvalidFeed):
        sess.run(None, {"x": x6.tolist()})
