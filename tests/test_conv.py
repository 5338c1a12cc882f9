"""Conv and ConvTranspose against onnxruntime (CPU provider): the official ONNX examples (also against the
spec's own outputs), DCGAN's generator stages, property-based configurations from hypothesis (batches, channels,
groups, bias, strides, dilations, asymmetric pads, output_padding, output_shape, every auto_pad), and the
refusals. The CUDA tests run the same checks on shapes small enough for the simulator (one Python thread per GPU
thread): ``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda tests/test_conv.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from onnx import helper

import runtime
from runtime.errors import InvalidFeed, InvalidModel
from tests.conftest import ATOL, assert_close, make_model, ort_run

F32 = np.float32
# Hypothesis draws sum up to C_in/group · kD·kH·kW = 3 · 4³ products of N(0, 1) values per output, magnitudes
# of ~20, where this runtime's and MLAS's different summation orders differ by a few 1e-6: 1e-5 would be flaky there.
ATOL_LARGE_K = 1e-4
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def conv_model(op: str, x_shape, w_shape, bias: bool, dtype=F32, **attrs) -> bytes:
    """One Conv/ConvTranspose node whose X, W (and B) are graph inputs; attributes left out when None."""
    attrs = {k: v for k, v in attrs.items() if v is not None}
    names = ["X", "W", "B"] if bias else ["X", "W"]
    c_out = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
    shapes = [list(x_shape), list(w_shape), [c_out]]
    inputs = [(name, dtype, shape) for name, shape in zip(names, shapes)]
    return make_model([helper.make_node(op, names, ["Y"], **attrs)], inputs, [("Y", dtype, None)])


def random_feed(rng, x_shape, w_shape, c_out: int | None, dtype=F32) -> dict:
    feed = {"X": rng.standard_normal(x_shape).astype(dtype), "W": rng.standard_normal(w_shape).astype(dtype)}
    if c_out is not None:
        feed["B"] = rng.standard_normal(c_out).astype(dtype)
    return feed


def check(op: str, feed: dict, backend: str = "cpu", atol: float = ATOL, **attrs) -> np.ndarray:
    """Run the node on ``backend`` and on onnxruntime; assert they agree; return the runtime's output."""
    model = conv_model(op, feed["X"].shape, feed["W"].shape, "B" in feed, **attrs)
    got = runtime.InferenceSession(model, backend=backend).run(None, feed)
    assert_close(got, ort_run(model, feed), atol=atol)
    return got[0]


def check_random(op, x_shape, w_shape, bias=True, backend="cpu", seed=0, atol=ATOL, **attrs) -> np.ndarray:
    c_out = (w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)) if bias else None
    return check(op, random_feed(np.random.default_rng(seed), x_shape, w_shape, c_out), backend, atol, **attrs)


# --- the official examples (onnx/backend/test/case/node/conv.py, convtranspose.py) -------------------------------

X_3x3 = np.arange(9, dtype=F32).reshape(1, 1, 3, 3)
X_5x5 = np.arange(25, dtype=F32).reshape(1, 1, 5, 5)
X_7x5 = np.arange(35, dtype=F32).reshape(1, 1, 7, 5)
ONES_1x1x3x3 = np.ones((1, 1, 3, 3), F32)
ONES_1x2x3x3 = np.ones((1, 2, 3, 3), F32)


def _two_channels(plane) -> np.ndarray:
    """A (1, 2, H, W) output whose two channels are ``plane`` (ConvTranspose with W of ones, 2 outputs)."""
    return np.array([[plane, plane]], F32)


CONVTRANSPOSE_PLANE = [[0, 1, 3, 3, 2], [3, 8, 15, 12, 7], [9, 21, 36, 27, 15], [9, 20, 33, 24, 13],
                       [6, 13, 21, 15, 8]]  # fmt: skip
STRIDES_3x2_PLANE = ([[0, 0, 1, 1, 3, 2, 2, 0]] * 3 + [[3, 3, 7, 4, 9, 5, 5, 0]] * 3
                     + [[6, 6, 13, 7, 15, 8, 8, 0]] * 3 + [[0] * 8])  # fmt: skip

OFFICIAL = [
    ("basic_conv_with_padding", "Conv", [X_5x5, ONES_1x1x3x3], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
     [[[[12, 21, 27, 33, 24], [33, 54, 63, 72, 51], [63, 99, 108, 117, 81], [93, 144, 153, 162, 111],
        [72, 111, 117, 123, 84]]]]),
    ("basic_conv_without_padding", "Conv", [X_5x5, ONES_1x1x3x3], dict(kernel_shape=[3, 3], pads=[0, 0, 0, 0]),
     [[[[54, 63, 72], [99, 108, 117], [144, 153, 162]]]]),
    ("conv_with_strides_padding", "Conv", [X_7x5, ONES_1x1x3x3],
     dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
     [[[[12, 27, 24], [63, 108, 81], [123, 198, 141], [112, 177, 124]]]]),
    ("conv_with_strides_no_padding", "Conv", [X_7x5, ONES_1x1x3x3],
     dict(kernel_shape=[3, 3], pads=[0, 0, 0, 0], strides=[2, 2]), [[[[54, 72], [144, 162], [234, 252]]]]),
    ("conv_with_strides_and_asymmetric_padding", "Conv", [X_7x5, ONES_1x1x3x3],
     dict(kernel_shape=[3, 3], pads=[1, 0, 1, 0], strides=[2, 2]),
     [[[[21, 33], [99, 117], [189, 207], [171, 183]]]]),
    ("conv_with_autopad_same", "Conv", [X_5x5, ONES_1x1x3x3],
     dict(auto_pad="SAME_LOWER", kernel_shape=[3, 3], strides=[2, 2]),
     [[[[12, 27, 24], [63, 108, 81], [72, 117, 84]]]]),
    ("convtranspose", "ConvTranspose", [X_3x3, ONES_1x2x3x3], {}, _two_channels(CONVTRANSPOSE_PLANE)),
    ("convtranspose_1d", "ConvTranspose", [np.array([[[0, 1, 2]]], F32), np.ones((1, 2, 3), F32)], {},
     [[[0, 1, 3, 3, 2], [0, 1, 3, 3, 2]]]),
    ("convtranspose_output_shape", "ConvTranspose", [X_3x3, ONES_1x2x3x3], dict(strides=[3, 2], output_shape=[10, 8]),
     _two_channels(STRIDES_3x2_PLANE)),
    ("convtranspose_pad", "ConvTranspose", [X_3x3, ONES_1x2x3x3], dict(strides=[3, 2], output_padding=[1, 1]),
     _two_channels(STRIDES_3x2_PLANE)),
    ("convtranspose_kernel_shape", "ConvTranspose", [X_3x3, ONES_1x2x3x3],
     dict(strides=[3, 2], output_shape=[10, 8], kernel_shape=[3, 3], output_padding=[1, 1]),
     _two_channels(STRIDES_3x2_PLANE)),
    ("convtranspose_pads", "ConvTranspose", [X_3x3, ONES_1x2x3x3], dict(strides=[3, 2], pads=[1, 2, 1, 2]),
     _two_channels([[1, 1, 3], [1, 1, 3], [7, 4, 9], [7, 4, 9], [7, 4, 9], [13, 7, 15], [13, 7, 15]])),
    ("convtranspose_dilations", "ConvTranspose",
     [np.array([[[[3, 8, 1], [9, 5, 7], [3, 2, 6]]]], F32), np.array([[[[7, 2], [1, 9]]]], F32)],
     dict(dilations=[2, 2]),
     [[[[21, 56, 13, 16, 2], [63, 35, 67, 10, 14], [24, 22, 76, 76, 21], [9, 5, 88, 45, 63], [3, 2, 33, 18, 54]]]]),
    ("convtranspose_autopad_same", "ConvTranspose", [X_3x3, ONES_1x2x3x3], dict(auto_pad="SAME_UPPER", strides=[2, 2]),
     _two_channels([[0, 0, 1, 1, 3, 2], [0, 0, 1, 1, 3, 2], [3, 3, 8, 5, 12, 7], [3, 3, 7, 4, 9, 5],
                    [9, 9, 20, 11, 24, 13], [6, 6, 13, 7, 15, 8]])),
    ("convtranspose_group_2", "ConvTranspose",
     [np.arange(18, dtype=F32).reshape(1, 2, 3, 3), np.ones((2, 1, 3, 3), F32)], dict(group=2),
     [[CONVTRANSPOSE_PLANE, [[9, 19, 30, 21, 11], [21, 44, 69, 48, 25], [36, 75, 117, 81, 42],
                             [27, 56, 87, 60, 31], [15, 31, 48, 33, 17]]]]),
]  # fmt: skip


@pytest.mark.parametrize("name, op, inputs, attrs, expected", OFFICIAL, ids=[c[0] for c in OFFICIAL])
def test_official_example(name, op, inputs, attrs, expected):
    got = check(op, {"X": inputs[0], "W": inputs[1]}, **attrs)
    np.testing.assert_array_equal(got, np.asarray(expected, F32))  # small integers: exact


def test_official_convtranspose_3d():
    x = np.arange(60, dtype=F32).reshape(1, 1, 3, 4, 5)
    y = check("ConvTranspose", {"X": x, "W": np.ones((1, 2, 3, 3, 3), F32)})
    assert y.shape == (1, 2, 5, 6, 7)
    assert y[0, 0, 0, 0].tolist() == [0, 1, 3, 6, 9, 7, 4]  # the spec's first row
    assert y[0, 1, 2, 2].tolist() == [225, 459, 702, 729, 756, 513, 261]


# --- batches, channels, groups, bias: what the official examples (N = C = 1, no bias) miss -------------------


CPU_CASES = [
    ("Conv", (3, 6, 9, 8), (4, 3, 3, 3), dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])),
    ("Conv", (2, 4, 11), (8, 1, 5), dict(group=4, strides=[3], pads=[2, 0])),
    ("Conv", (2, 3, 5, 6, 7), (4, 3, 3, 2, 2), dict(strides=[2, 1, 2], auto_pad="SAME_UPPER")),
    ("Conv", (5, 8, 16, 16), (16, 8, 1, 1), {}),  # 1x1: im2col is a transpose
    ("Conv", (2, 4, 6, 6), (4, 1, 3, 3), dict(group=4, auto_pad="SAME_LOWER", strides=[2, 2])),  # depthwise
    ("ConvTranspose", (3, 4, 5, 6), (4, 3, 3, 4), dict(group=2, strides=[2, 3], pads=[1, 0, 2, 1], dilations=[1, 2],
                                                      output_padding=[1, 2])),
    ("ConvTranspose", (2, 6, 7), (6, 2, 4), dict(group=3, strides=[3], output_shape=[20])),
    ("ConvTranspose", (2, 3, 3, 4, 5), (3, 2, 2, 3, 2), dict(strides=[1, 2, 3], auto_pad="SAME_LOWER")),
    ("ConvTranspose", (2, 4, 5, 5), (4, 2, 3, 3), dict(strides=[2, 2], auto_pad="VALID", output_padding=[1, 0])),
    ("ConvTranspose", (4, 8, 6, 6), (8, 4, 1, 1), dict(strides=[2, 2])),  # 1x1 stride 2: zeros in between
    # unit strides, one sample or samples under MIN_SAMPLE_COLUMNS positions: run as a Conv over the flipped
    # window (``_transpose_as_conv``), or, where a pad crops, not
    ("ConvTranspose", (3, 4, 5, 6), (4, 3, 3, 3), dict(group=2, pads=[1, 0, 2, 1], dilations=[2, 1])),
    ("ConvTranspose", (2, 3, 2, 3, 5), (3, 2, 2, 3, 3), dict(pads=[0, 1, 1, 1, 0, 2], output_padding=[0, 0, 0])),
    ("ConvTranspose", (2, 4, 9), (4, 3, 3), dict(pads=[3, 1])),  # begin pad 3 > (3 - 1)·1: crops
    ("ConvTranspose", (1, 16, 12, 12), (16, 16, 3, 3), dict(pads=[1, 1, 1, 1])),  # DeconvNet's decoder layer
]  # fmt: skip


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs, as_conv",
    [((1, 4, 5, 5), (4, 2, 3, 3), dict(pads=[1, 1, 1, 1]), True),
     ((1, 4, 5, 5), (4, 2, 3, 3), dict(pads=[0, 2, 2, 0], dilations=[1, 2], group=2), True),
     ((1, 4, 9), (4, 3, 3), dict(pads=[3, 1]), False),
     ((1, 4, 5, 5), (4, 2, 3, 3), dict(strides=[1, 2]), False)],
)  # fmt: skip
def test_unit_stride_conv_transpose_runs_as_conv(x_shape, w_shape, attrs, as_conv):
    """The geometry of a ConvTranspose with unit strides whose pads fit in the window becomes a Conv's with the
    same output size (and CPU_CASES checks its values against onnxruntime); other ones keep GEMM + col2im."""
    from runtime.ops import conv as conv_cpu

    geom = conv_cpu.cached_conv_geometry("ConvTranspose", x_shape, w_shape, **attrs)
    conv_geom = conv_cpu._transpose_as_conv(geom)
    assert (conv_geom is not None) == as_conv
    if as_conv:
        assert conv_geom.out_size == geom.out_size and conv_geom.C_out == geom.C_out
        w = np.random.default_rng(0).random(w_shape, dtype=np.float32)
        flipped = conv_cpu.flipped_transposed(w, geom.group)
        g = geom.group
        assert flipped.shape == (geom.C_out, geom.C_in // g, *geom.kernel)
        # output channel o of group j, input channel i of that group: W[j·C_in/g + i, o] flipped in space
        j, i, o = g - 1, 1, 0
        window = w[j * (geom.C_in // g) + i, o][(slice(None, None, -1),) * len(geom.kernel)]
        np.testing.assert_array_equal(flipped[j * (geom.C_out // g) + o, i], window)


def _case_id(case) -> str:
    op, x, w, attrs = case
    return f"{op}-{'x'.join(map(str, x))}-{'x'.join(map(str, w))}-" + "-".join(f"{k}{v}" for k, v in attrs.items())


@pytest.mark.parametrize("op, x_shape, w_shape, attrs", CPU_CASES, ids=[_case_id(c) for c in CPU_CASES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_batched_grouped(op, x_shape, w_shape, attrs, bias):
    # Each output sums C_in/g·K products of values in [0, 1); over ~100 of them, float32 sums taken in another
    # order than onnxruntime's differ by more than 1e-5 (outputs of ~36: 1.7e-5, 5e-7 relative)
    reduction = (w_shape[1] if op == "Conv" else w_shape[0] // attrs.get("group", 1)) * math.prod(w_shape[2:])
    check_random(op, x_shape, w_shape, bias, atol=ATOL_LARGE_K if reduction > 100 else ATOL, **attrs)


@pytest.mark.parametrize("path", ["one-sample-chunks", "uneven-chunks", "sample-per-task"])
def test_conv_transpose_batch_paths(path, monkeypatch):
    """ConvTranspose over a batch: one GEMM per chunk of samples (chunks of one, or of 2 with a shorter last
    one), or one task per sample with its own GEMM and col2im. (Conv's tiling: tests/test_perf_paths.py.)"""
    from runtime.ops import conv as conv_cpu

    monkeypatch.setattr(conv_cpu, "PARALLEL_MIN_ELEMENTS", 0)
    if path == "sample-per-task":
        monkeypatch.setattr(conv_cpu, "MIN_SAMPLE_COLUMNS", 1)
    else:
        monkeypatch.setattr(conv_cpu, "MIN_SAMPLE_COLUMNS", 1 << 30)
        monkeypatch.setattr(conv_cpu, "COL_CHUNK_BYTES", 1 if path == "one-sample-chunks" else 40_000)
        assert len(conv_cpu._chunks(7, 128 * 36 * 4)) == (7 if path == "one-sample-chunks" else 4)
    check_random("ConvTranspose", (7, 6, 6, 6), (6, 4, 4, 4), strides=[2, 2], pads=[1, 1, 1, 1], group=2)
    check_random("ConvTranspose", (3, 4, 5, 3, 4), (4, 2, 3, 2, 3), strides=[2, 1, 3], dilations=[1, 2, 1])


@pytest.mark.parametrize("op, x_shape, w_shape, attrs", CPU_CASES[::2], ids=[_case_id(c) for c in CPU_CASES[::2]])
def test_parallel_kernels(op, x_shape, w_shape, attrs, monkeypatch):
    """The prange variants, which only problems above PARALLEL_MIN_ELEMENTS in one chunk reach otherwise."""
    from runtime.ops import conv as conv_cpu

    monkeypatch.setattr(conv_cpu, "PARALLEL_MIN_ELEMENTS", 0)
    check_random(op, x_shape, w_shape, **attrs)


def test_nan_and_inf_propagate():
    rng = np.random.default_rng(1)
    for op, w_shape in (("Conv", (4, 3, 3, 3)), ("ConvTranspose", (3, 4, 3, 3))):
        feed = random_feed(rng, (2, 3, 5, 5), w_shape, None)
        feed["X"][0, 1, 2, 2], feed["X"][1, 0, 0, 0], feed["X"][1, 2, 4, 3] = np.nan, np.inf, -np.inf
        y = check(op, feed, pads=[1, 1, 1, 1])
        assert np.isnan(y[0]).any() and not np.isfinite(y[1]).all()


def test_empty_batch():
    for op, w_shape in (("Conv", (4, 3, 3, 3)), ("ConvTranspose", (3, 4, 3, 3))):
        assert check_random(op, (0, 3, 5, 5), w_shape).shape[0] == 0


@pytest.mark.parametrize("attrs", [{}, dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2])], ids=str)
def test_conv_transpose_of_no_input_channel_is_its_bias(attrs):
    """C_in = 0: every output is its channel's bias (the unit-stride Conv rewrite must not take it)."""
    y = check_random("ConvTranspose", (1, 0, 5, 5), (0, 4, 3, 3), **attrs)
    assert y.shape[1] == 4 and y.size


def test_float64_matches_float32_onnxruntime():
    """onnxruntime has no float64 Conv kernels: compare with its float32 result on the same values."""
    rng = np.random.default_rng(2)
    cases = [("Conv", (4, 2, 3, 3), dict(group=2, strides=[2, 2])),
             ("ConvTranspose", (4, 3, 3, 3), dict(strides=[2, 2], output_padding=[1, 1]))]  # fmt: skip
    for op, w_shape, attrs in cases:
        feed = random_feed(rng, (2, 4, 6, 5), w_shape, w_shape[0] if op == "Conv" else w_shape[1], np.float64)
        model = conv_model(op, feed["X"].shape, feed["W"].shape, True, np.float64, **attrs)
        got = runtime.InferenceSession(model).run(None, feed)[0]
        expected = ort_run(conv_model(op, feed["X"].shape, w_shape, True, **attrs),
                           {k: v.astype(F32) for k, v in feed.items()})[0]  # fmt: skip
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL_LARGE_K)


# --- DCGAN's generator stages (reduced): each doubles H and W ------------------------------------------------

DCGAN_STAGES = [
    ("project-1x1-to-4x4", (2, 16, 1, 1), (16, 8, 4, 4), dict(strides=[1, 1]), (2, 8, 4, 4)),
    ("5x5-stride2-pad2-outpad1", (2, 8, 4, 4), (8, 4, 5, 5), dict(strides=[2, 2], pads=[2, 2, 2, 2],
                                                                  output_padding=[1, 1]), (2, 4, 8, 8)),
    ("4x4-stride2-pad1", (2, 8, 4, 4), (8, 4, 4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1]), (2, 4, 8, 8)),
]  # fmt: skip


@pytest.mark.parametrize("name, x_shape, w_shape, attrs, y_shape", DCGAN_STAGES, ids=[s[0] for s in DCGAN_STAGES])
def test_dcgan_generator_stage(name, x_shape, w_shape, attrs, y_shape):
    assert check_random("ConvTranspose", x_shape, w_shape, **attrs).shape == y_shape


# --- refusals --------------------------------------------------------------------------------------------------


def _run(op, x_shape, w_shape, backend="cpu", **attrs):
    model = conv_model(op, x_shape, w_shape, False, **attrs)
    rng = np.random.default_rng(0)
    feed = random_feed(rng, x_shape, w_shape, None)
    return runtime.InferenceSession(model, backend=backend).run(None, feed)


@pytest.mark.parametrize(
    "op, x_shape, w_shape, attrs, message",
    [
        ("Conv", (1, 3, 5, 5), (4, 2, 3, 3), {}, r"\(1, 3, 5, 5\).*3 channels.*\(4, 2, 3, 3\)"),
        ("Conv", (1, 4, 5, 5), (4, 1, 3, 3), dict(group=2), r"\(1, 4, 5, 5\).*\(4, 1, 3, 3\).*group=2"),
        ("ConvTranspose", (1, 3, 5, 5), (4, 2, 3, 3), {}, r"\(1, 3, 5, 5\).*3 channels.*\(4, 2, 3, 3\)"),
        ("Conv", (1, 2, 3, 3, 3, 3), (1, 2, 2, 2, 2, 2), {}, "rank 6"),
        ("ConvTranspose", (1, 2, 3, 3, 3, 3), (2, 1, 2, 2, 2, 2), {}, "rank 6"),
        ("Conv", (1, 2, 5, 5), (3, 2, 3, 3), dict(kernel_shape=[2, 2]), "kernel_shape"),
        ("Conv", (1, 2, 2, 2), (3, 2, 3, 3), {}, "empty output"),
        ("ConvTranspose", (1, 2, 3), (2, 2, 3), dict(pads=[3, 3]), "empty output"),
    ],
    ids=["conv-channels", "conv-group-channels", "convtranspose-channels", "conv-4d", "convtranspose-4d",
         "kernel_shape", "conv-empty", "convtranspose-empty"],
)  # fmt: skip
def test_refusals(op, x_shape, w_shape, attrs, message):
    with pytest.raises(InvalidFeed, match=message):
        _run(op, x_shape, w_shape, **attrs)


def test_a_declared_rank_2_input_is_refused_at_load():
    """A model that declares a rank-2 input to ConvTranspose fails ONNX shape inference: refused at load, as
    onnxruntime refuses it, before any feed."""
    with pytest.raises(InvalidModel, match="at least 3 dimensions"):
        _run("ConvTranspose", (2, 3), (3, 2))


@pytest.mark.parametrize(
    "op, attrs, message",
    [
        ("Conv", dict(auto_pad="SAME"), "auto_pad='SAME'"),
        ("Conv", dict(pads=[1, 1]), "pads=.*expected 4"),
        ("Conv", dict(strides=[0, 1]), "strides.*(>= 1|positive)"),
        ("ConvTranspose", dict(strides=[2, 2], output_padding=[2, 0]), "output_padding"),
        ("ConvTranspose", dict(output_shape=[5]), "output_shape"),
    ],
    ids=["auto_pad", "pads-length", "zero-stride", "output_padding", "output_shape-length"],
)
def test_attribute_refusals(op, attrs, message):
    w_shape = (3, 2, 3, 3) if op == "Conv" else (2, 3, 3, 3)
    with pytest.raises(InvalidModel, match=message):
        _run(op, (1, 2, 5, 5), w_shape, **attrs)


# --- hypothesis: random configurations, whatever onnxruntime accepts must match ------------------------------


@st.composite
def conv_configs(draw, op: str, auto_pad: str | None = None, small: bool = False):
    """(x_shape, w_shape, bias, attrs) for ``op`` with ``auto_pad`` (drawn if None); attributes sometimes left at
    their defaults. ``small``: sizes for the CUDA simulator (at most a few thousand output elements)."""
    rank = draw(st.sampled_from([1, 2, 2, 3]))
    max_k, max_s, in_max, max_c = (3, 2, 3, 2) if small else (4, 3, 4, 3) if rank == 3 else (5, 3, 6, 3)
    N = draw(st.integers(1, 2 if small else 3))
    group = draw(st.integers(1, max_c))
    c_in_g, c_out_g = draw(st.integers(1, max_c)), draw(st.integers(1, max_c))
    auto_pad = auto_pad or draw(st.sampled_from(AUTO_PADS))
    k = [draw(st.integers(1, max_k)) for _ in range(rank)]
    s = [draw(st.integers(1, max_s)) for _ in range(rank)]
    # onnxruntime refuses dilations with Conv's SAME_* padding; keep those draws meaningful
    d = [1 if op == "Conv" and auto_pad.startswith("SAME") else draw(st.integers(1, 2)) for _ in range(rank)]
    reach = [(ki - 1) * di + 1 for ki, di in zip(k, d)]
    pads = [draw(st.integers(0, 3)) for _ in range(2 * rank)] if auto_pad == "NOTSET" and draw(st.booleans()) else None
    attrs = dict(
        auto_pad=auto_pad if auto_pad != "NOTSET" or draw(st.booleans()) else None,
        group=group if group > 1 or draw(st.booleans()) else None,
        strides=s if s != [1] * rank or draw(st.booleans()) else None,
        dilations=d if d != [1] * rank or draw(st.booleans()) else None,
        kernel_shape=k if draw(st.booleans()) else None,
        pads=pads,
    )
    if op == "Conv":
        # at least one window position: in + pad_begin + pad_end >= the dilated kernel
        p = pads or [0] * (2 * rank)
        size = [draw(st.integers(max(1, reach[i] - p[i] - p[rank + i]), reach[i] + in_max)) for i in range(rank)]
        return (N, c_in_g * group, *size), (c_out_g * group, c_in_g, *k), draw(st.booleans()), attrs
    size = [draw(st.integers(1, in_max)) for _ in range(rank)]
    output_padding = [draw(st.integers(0, si - 1)) for si in s]  # onnxruntime: less than the stride
    if any(output_padding) or draw(st.booleans()):
        attrs["output_padding"] = output_padding
    if draw(st.integers(0, 3)) == 0:  # an explicit output_shape: smaller than the full size, or up to stride-1 larger
        full = [si * (n - 1) + op_ + r for si, n, op_, r in zip(s, size, output_padding, reach)]
        attrs["output_shape"] = [draw(st.integers(max(1, f - 4), f + si - 1 - op_))
                                 for f, si, op_ in zip(full, s, output_padding)]  # fmt: skip
    return (N, c_in_g * group, *size), (c_in_g * group, c_out_g, *k), draw(st.booleans()), attrs


def check_config(op: str, config, backend: str = "cpu", atol: float = ATOL_LARGE_K):
    x_shape, w_shape, bias, attrs = config
    model = conv_model(op, x_shape, w_shape, bias, **attrs)
    c_out = w_shape[0] if op == "Conv" else w_shape[1] * (attrs.get("group") or 1)
    feed = random_feed(np.random.default_rng(0), x_shape, w_shape, c_out if bias else None)
    try:
        expected = ort_run(model, feed)
    except Exception:  # a configuration onnxruntime refuses: not a test of this runtime
        assume(False)
    # the mix the draws produced, shown by --hypothesis-show-statistics
    event(f"rank {len(x_shape) - 2}, group {attrs.get('group') or 1}, {'bias' if bias else 'no bias'}")
    for name in ("pads", "output_padding", "output_shape"):
        if attrs.get(name):
            event(name)
    got = runtime.InferenceSession(model, backend=backend).run(None, feed)
    assert_close(got, expected, atol=atol)


@pytest.mark.parametrize("auto_pad", AUTO_PADS)  # one run per mode: a draw over the four left SAME_UPPER rare
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_conv_property(auto_pad, data):
    check_config("Conv", data.draw(conv_configs("Conv", auto_pad)))


@pytest.mark.parametrize("auto_pad", AUTO_PADS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_convtranspose_property(auto_pad, data):
    check_config("ConvTranspose", data.draw(conv_configs("ConvTranspose", auto_pad)))


# --- CUDA (simulator-sized: at most ~2000 output elements, small C_in·k·k) -------------------------------------

CUDA_CASES = [
    ("Conv", (2, 4, 5, 4), (6, 2, 3, 3), dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])),
    ("Conv", (2, 3, 7), (4, 3, 3), dict(strides=[2], auto_pad="SAME_UPPER")),
    ("Conv", (1, 2, 3, 4, 4), (2, 2, 2, 2, 2), dict(strides=[1, 2, 2], auto_pad="SAME_LOWER")),
    ("Conv", (2, 2, 6, 5), (3, 2, 2, 3), dict(auto_pad="VALID", strides=[2, 2])),
    ("ConvTranspose", (2, 4, 3, 3), (4, 3, 3, 2), dict(group=2, strides=[2, 3], pads=[1, 0, 2, 1], dilations=[1, 2],
                                                      output_padding=[1, 2])),
    ("ConvTranspose", (2, 2, 5), (2, 3, 3), dict(strides=[2], output_shape=[10])),
    ("ConvTranspose", (1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[6, 5], auto_pad="SAME_UPPER")),
    ("ConvTranspose", (2, 2, 3, 4), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ("ConvTranspose", (1, 2, 2, 2, 3), (2, 1, 2, 2, 2), dict(strides=[2, 1, 2], dilations=[1, 2, 1])),
    ("ConvTranspose", (2, 3, 3, 3), (3, 1, 2, 2), dict(group=3, strides=[3, 3], pads=[0, 1, 1, 0])),
    # run as GEMMs (conv_cuda.gemm_form): the kernel covering the input (fc6's form), with an unread end pad and a
    # stride; 1×1 convolutions of stride 1, C_out above and below the skinny kernel's row limit
    ("Conv", (3, 4, 5, 3), (7, 4, 5, 3), {}),
    ("Conv", (2, 3, 4), (5, 3, 4), dict(pads=[0, 2], strides=[3])),
    ("Conv", (2, 3, 4, 5), (17, 3, 1, 1), {}),
    ("Conv", (2, 3, 2, 2, 3), (2, 3, 1, 1, 1), {}),
    ("Conv", (1, 2, 3, 3), (3, 2, 1, 1), dict(pads=[0, 0, 1, 1])),  # 1×1, but padded: the direct kernel
]  # fmt: skip


@pytest.mark.cuda
@pytest.mark.parametrize("op, x_shape, w_shape, attrs", CUDA_CASES, ids=[_case_id(c) for c in CUDA_CASES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_cuda_case(op, x_shape, w_shape, attrs, bias):
    check_random(op, x_shape, w_shape, bias, backend="cuda", **attrs)


@pytest.mark.cuda
@pytest.mark.parametrize("name, op, inputs, attrs, expected", OFFICIAL, ids=[c[0] for c in OFFICIAL])
def test_cuda_official_example(name, op, inputs, attrs, expected):
    got = check(op, {"X": inputs[0], "W": inputs[1]}, backend="cuda", **attrs)
    np.testing.assert_array_equal(got, np.asarray(expected, F32))


@pytest.mark.cuda
@pytest.mark.parametrize("name, x_shape, w_shape, attrs, y_shape", DCGAN_STAGES, ids=[s[0] for s in DCGAN_STAGES])
def test_cuda_dcgan_generator_stage(name, x_shape, w_shape, attrs, y_shape):
    assert check_random("ConvTranspose", x_shape, w_shape, backend="cuda", **attrs).shape == y_shape


@pytest.mark.cuda
def test_cuda_refuses_channel_mismatch():
    with pytest.raises(InvalidFeed, match=r"\(1, 3, 5, 5\).*\(4, 2, 3, 3\)"):
        _run("ConvTranspose", (1, 3, 5, 5), (4, 2, 3, 3), backend="cuda")


@pytest.mark.cuda
@settings(max_examples=15, deadline=None)
@given(st.data())
def test_cuda_property(data):
    op = data.draw(st.sampled_from(["Conv", "ConvTranspose"]))
    config = data.draw(conv_configs(op, small=True))
    check_config(op, config, backend="cuda")


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs, form",
    [
        ((2, 512, 7, 7), (4096, 512, 7, 7), {}, "window"),
        ((1, 3, 4), (5, 3, 4), dict(pads=[0, 2], strides=[3]), "window"),
        ((1, 3, 9), (5, 3, 4), dict(strides=[5]), None),  # one output, but the window leaves input unread
        ((1, 3, 8), (5, 3, 4), dict(dilations=[2]), None),  # out 2 positions
        ((1, 3, 4, 4), (6, 1, 4, 4), dict(group=3), None),
        ((2, 64, 9, 9), (32, 64, 1, 1), {}, "pointwise"),
        ((2, 64, 9, 9), (32, 64, 1, 1), dict(strides=[2, 2]), None),
        ((2, 64, 9, 9), (32, 64, 1, 1), dict(pads=[1, 1, 1, 1]), None),
        ((2, 64, 9, 9), (32, 64, 3, 3), dict(pads=[1, 1, 1, 1]), None),
    ],
)
def test_which_convolutions_run_as_gemms_on_cuda(x_shape, w_shape, attrs, form):
    # by geometry alone; the kernels themselves are checked against onnxruntime in CUDA_CASES
    from runtime.ops.conv import cached_conv_geometry
    from runtime.ops.conv_cuda import gemm_form

    assert gemm_form("Conv", cached_conv_geometry("Conv", x_shape, w_shape, None, **attrs)) == form
    transpose = cached_conv_geometry("ConvTranspose", (1, 3, 4, 4), (3, 5, 1, 1), None)  # a 1×1 ConvTranspose
    assert gemm_form("ConvTranspose", transpose) is None


@pytest.mark.cuda
@pytest.mark.parametrize("w_shape", [(6, 3, 4, 4), (6, 3, 1, 1)], ids=["window", "pointwise"])
def test_cuda_gemm_convolutions_with_leaky_relu_are_batch_invariant(w_shape):
    # Conv → LeakyRelu(0.2) fused into one FusedConv, run as a GEMM whose epilogue takes the slope; an image gives
    # the same bits alone (skinny kernel for the window form) as in a batch of 20 (tiled)
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal(w_shape).astype(F32), rng.standard_normal(w_shape[0]).astype(F32)
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["c"]), helper.make_node("LeakyRelu", ["c"], ["Y"], alpha=0.2)]
    model = make_model(nodes, [("X", F32, ["N", 3, 4, 4])], [("Y", F32, None)], initializers={"W": w, "B": b})
    session = runtime.InferenceSession(model, backend="cuda")
    x = rng.standard_normal((20, 3, 4, 4)).astype(F32)
    whole = session.run(None, {"X": x})[0]
    alone = session.run(None, {"X": x[7:8]})[0]
    np.testing.assert_array_equal(alone, whole[7:8])
    assert_close([whole], ort_run(model, {"X": x}))
