"""Per-node preparation at load (``OpDef.prepare``): nodes with constant weights get a runner made once (weights
packed, bias operand, attribute values checked), which gives onnxruntime's results and the op function's bits,
and refuses what the op function refuses, with the same errors; bad attribute values are refused when the
session is created, before anything runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import runtime
from runtime.errors import InvalidFeed, InvalidModel
from tests.conftest import assert_close, case_rng, make_model, ort_run, randn

F32 = np.float32


def _steps_prepared(sess) -> list[bool]:
    return [impl is not node.op.impl["cpu"] for node, impl, *_ in sess._steps]


BAD_ATTRIBUTES = [
    ("auto_pad", "SAME"),
    ("strides", [0, 1]),
    ("group", 0),
    ("pads", [1, -1, 0, 0]),
    ("dilations", [1, 1, 1]),
]


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("attr, value", BAD_ATTRIBUTES)
def test_bad_attribute_values_are_refused_at_load(op, attr, value):
    rng = case_rng(f"prepare-bad-{op}-{attr}")
    w = randn(rng, (4, 4, 3, 3))
    node = helper.make_node(op, ["x", "w"], ["y"], **{attr: value})
    model = make_model([node], [("x", F32, [1, 4, 8, 8])], [("y", F32, None)], {"w": w})
    with pytest.raises(InvalidModel, match=attr):
        runtime.InferenceSession(model)


@pytest.mark.parametrize("batch", [1, 5])
def test_prepared_convolutions_and_gemm_match_onnxruntime_and_the_op_functions(batch):
    rng = case_rng(f"prepare-{batch}")
    inits = {
        "w1": randn(rng, (6, 3, 3, 3), scale=0.3), "b1": randn(rng, (6,)),
        "w2": randn(rng, (6, 4, 4, 4), scale=0.3), "b2": randn(rng, (4,)),
        "w3": randn(rng, (10, 4 * 8 * 8), scale=0.1), "b3": randn(rng, (10,)),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ConvTranspose", ["r", "w2", "b2"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["t"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["g"], transB=1),
        helper.make_node("Sigmoid", ["g"], ["y"]),
    ]
    model = make_model(nodes, [("x", F32, ["N", 3, 4, 4])], [("y", F32, None)], inits)
    sess = runtime.InferenceSession(model)
    prepared = _steps_prepared(sess)
    assert sum(prepared) == 3  # FusedConv, ConvTranspose, FusedGemm
    x = randn(rng, (batch, 3, 4, 4))
    got = sess.run(None, {"x": x})
    assert_close(got, ort_run(model, {"x": x}))
    plain = runtime.InferenceSession(model)
    plain._steps = [(node, node.op.impl["cpu"], node.attrs, *rest) for node, _, _, *rest in plain._steps]
    np.testing.assert_array_equal(plain.run(None, {"x": x})[0], got[0])  # the op functions: the same bits


def test_a_prepared_gemm_refuses_a_wrong_width_as_the_op_function_does():
    rng = case_rng("prepare-gemm-width")
    model = make_model(
        [helper.make_node("Gemm", ["a", "w"], ["y"], transB=1)],
        [("a", F32, ["N", "K"])],
        [("y", F32, None)],
        {"w": randn(rng, (5, 7))},
    )
    sess = runtime.InferenceSession(model)
    assert _steps_prepared(sess) == [True]
    with pytest.raises(InvalidFeed, match="inner dimensions"):
        sess.run(None, {"a": randn(rng, (2, 6))})
    assert sess.run(None, {"a": randn(rng, (2, 7))})[0].shape == (2, 5)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("form", ["unit-stride", "projection"])
def test_prepared_conv_transpose_forms_match_onnxruntime_and_the_op_function(form, batch):
    """A prepared ConvTranspose of unit strides runs as the Conv over the flipped window through that Conv's
    per-shape launcher, and one of a 1x1 input as one GEMM: against onnxruntime, and the op function's bits."""
    rng = case_rng(f"prepare-transpose-{form}-{batch}")
    x_shape, w_shape, attrs = {
        "unit-stride": ((batch, 4, 5, 5), (4, 6, 3, 3), dict(pads=[1, 1, 1, 1])),
        "projection": ((batch, 8, 1, 1), (8, 6, 4, 4), {}),
    }[form]
    inits = {"w": randn(rng, w_shape, scale=0.3), "b": randn(rng, (6,))}
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], **attrs), helper.make_node("Relu", ["t"], ["y"])]
    model = make_model(nodes, [("x", F32, ["N", *x_shape[1:]])], [("y", F32, None)], inits)
    sess = runtime.InferenceSession(model)
    assert sum(_steps_prepared(sess)) == 1
    x = randn(rng, x_shape)
    got = sess.run(None, {"x": x})
    assert_close(got, ort_run(model, {"x": x}))
    plain = runtime.InferenceSession(model)
    plain._steps = [(node, node.op.impl["cpu"], node.attrs, *rest) for node, _, _, *rest in plain._steps]
    np.testing.assert_array_equal(plain.run(None, {"x": x})[0], got[0])
