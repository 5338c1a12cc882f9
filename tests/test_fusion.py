"""The load-time rewrites of ``runtime/fusion.py`` around convolutions, against onnxruntime: Conv and
ConvTranspose followed by an activation become FusedConv / FusedConvTranspose, and a BatchNormalization with
constant parameters after a convolution is folded into its weights. Each case states the op_types the loaded graph
must hold, so a case where the rewrite must not fire (a value read twice, a graph output, parameters fed at run
time, training mode) checks that it did not.

The cases are ``tests.test_ops.Case`` objects, run like test_ops's on the CPU and, with the ``cuda`` marker, on the
CUDA backend (simulator-sized).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import runtime
from runtime.errors import UnsupportedOp
from tests.conftest import case_rng, make_model, randn
from tests.test_ops import Case, _case, _check, _cuda_param

F32 = np.float32
ACTIVATIONS = (("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("LeakyRelu", {"alpha": 0.2}))
CONV = dict(pads=[1, 1, 1, 1], strides=[2, 2])  # (N, 4, 6, 5) -> (N, 6, 3, 3)
CONV_T = dict(pads=[1, 1, 1, 1], strides=[2, 2], output_padding=[1, 1])  # (N, 4, 3, 3) -> (N, 6, 6, 6)


def _conv_inits(rng, op_type: str, group: int = 1, bias: bool = True) -> dict:
    w_shape = (6, 4 // group, 3, 3) if op_type == "Conv" else (4, 6 // group, 3, 3)
    inits = {"w": randn(rng, w_shape, scale=0.5)}
    if bias:
        inits["b"] = randn(rng, (6,))
    return inits


def _x(rng, op_type: str, batch: int) -> np.ndarray:
    return randn(rng, (batch, 4, 6, 5) if op_type == "Conv" else (batch, 4, 3, 3))


def _bn_inits(rng, C: int = 6) -> dict:
    return {
        "scale": randn(rng, (C,), scale=0.5),  # outputs of order 1: float32 sums agree to ATOL
        "shift": randn(rng, (C,)),
        "mean": randn(rng, (C,)),
        "var": np.abs(randn(rng, (C,))) + F32(0.1),
    }


def _bn(x: str, y: str, **attrs):
    return helper.make_node("BatchNormalization", [x, "scale", "shift", "mean", "var"], [y], epsilon=1e-3, **attrs)


def conv_activation_cases() -> list[Case]:
    cases = []
    for op_type, attrs in (("Conv", CONV), ("ConvTranspose", CONV_T)):
        fused = f"Fused{op_type}"
        for act, act_attrs in ACTIVATIONS:
            for batch in (1, 3):
                cid = f"{fused}-{act}-batch{batch}"
                rng = case_rng(cid)
                nodes = [
                    helper.make_node(op_type, ["x", "w", "b"], ["c"], **attrs),
                    helper.make_node(act, ["c"], ["y"], **act_attrs),
                ]
                inits = _conv_inits(rng, op_type)
                cases.append(_case(cid, nodes, {"x": _x(rng, op_type, batch)}, inits, expect=[fused]))

        cid = f"{fused}-grouped-no-bias"
        rng = case_rng(cid)
        nodes = [
            helper.make_node(op_type, ["x", "w"], ["c"], group=2, **attrs),
            helper.make_node("LeakyRelu", ["c"], ["y"]),  # the default alpha, 0.01
        ]
        inits = _conv_inits(rng, op_type, group=2, bias=False)
        cases.append(_case(cid, nodes, {"x": _x(rng, op_type, 2)}, inits, expect=[fused]))

        cid = f"{op_type}-output-read-twice"  # the pre-activation value feeds an Add too: no fusion
        rng = case_rng(cid)
        nodes = [
            helper.make_node(op_type, ["x", "w", "b"], ["c"], **attrs),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Add", ["c", "r"], ["y"]),
        ]
        inits = _conv_inits(rng, op_type)
        cases.append(_case(cid, nodes, {"x": _x(rng, op_type, 2)}, inits, expect=[op_type, "Relu", "Add"]))

        cid = f"{op_type}-output-is-graph-output"  # the pre-activation value is wanted: no fusion
        rng = case_rng(cid)
        nodes = [helper.make_node(op_type, ["x", "w", "b"], ["c"], **attrs), helper.make_node("Tanh", ["c"], ["y"])]
        inits = _conv_inits(rng, op_type)
        cases.append(_case(cid, nodes, {"x": _x(rng, op_type, 1)}, inits, outputs=("c", "y")))

    cid = "Conv-activation-before"  # an activation before the convolution is not its epilogue
    rng = case_rng(cid)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Conv", ["r", "w", "b"], ["y"], **CONV)]
    cases.append(_case(cid, nodes, {"x": _x(rng, "Conv", 2)}, _conv_inits(rng, "Conv")))
    return cases


def batch_norm_cases() -> list[Case]:
    cases = []
    for op_type, attrs in (("Conv", CONV), ("ConvTranspose", CONV_T)):
        for group, bias in ((1, True), (2, False)):
            cid = f"{op_type}-BatchNormalization-folded-group{group}{'' if bias else '-no-bias'}"
            rng = case_rng(cid)
            conv_in = ["x", "w", "b"] if bias else ["x", "w"]
            nodes = [helper.make_node(op_type, conv_in, ["c"], group=group, **attrs), _bn("c", "y")]
            inits = {**_conv_inits(rng, op_type, group, bias), **_bn_inits(rng)}
            cases.append(_case(cid, nodes, {"x": _x(rng, op_type, 2)}, inits, expect=[op_type]))

        cid = f"{op_type}-BatchNormalization-Relu"  # folded, then fused: DCGAN's generator stage
        rng = case_rng(cid)
        nodes = [
            helper.make_node(op_type, ["x", "w", "b"], ["c"], **attrs),
            _bn("c", "n"),
            helper.make_node("Relu", ["n"], ["y"]),
        ]
        inits = {**_conv_inits(rng, op_type), **_bn_inits(rng)}
        cases.append(_case(cid, nodes, {"x": _x(rng, op_type, 3)}, inits, expect=[f"Fused{op_type}"]))

    cid = "BatchNormalization-conv-read-twice"  # the convolution's output is also a graph output: no fold
    rng = case_rng(cid)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **CONV), _bn("c", "y")]
    inits = {**_conv_inits(rng, "Conv"), **_bn_inits(rng)}
    cases.append(_case(cid, nodes, {"x": _x(rng, "Conv", 2)}, inits, outputs=("c", "y")))

    cid = "BatchNormalization-statistics-fed"  # mean and var are graph inputs, not constants: no fold
    rng = case_rng(cid)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **CONV), _bn("c", "y")]
    bn = _bn_inits(rng)
    inits = {**_conv_inits(rng, "Conv"), "scale": bn["scale"], "shift": bn["shift"]}
    feed = {"x": _x(rng, "Conv", 2), "mean": bn["mean"], "var": bn["var"]}
    cases.append(_case(cid, nodes, feed, inits, expect=["Conv", "BatchNormalization"]))

    cid = "BatchNormalization-weight-fed"  # the convolution's weight is a graph input: no fold
    rng = case_rng(cid)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **CONV), _bn("c", "y")]
    conv = _conv_inits(rng, "Conv")
    feed = {"x": _x(rng, "Conv", 2), "w": conv["w"]}
    cases.append(_case(cid, nodes, feed, {"b": conv["b"], **_bn_inits(rng)}, expect=["Conv", "BatchNormalization"]))

    cid = "BatchNormalization-shared-weight"  # W also read by a second Conv: folded into a copy, W itself intact
    rng = case_rng(cid)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], **CONV),
        _bn("c", "y"),
        helper.make_node("Conv", ["x", "w", "b"], ["z"], **CONV),
    ]
    inits = {**_conv_inits(rng, "Conv"), **_bn_inits(rng)}
    cases.append(_case(cid, nodes, {"x": _x(rng, "Conv", 2)}, inits, outputs=("y", "z"), expect=["Conv", "Conv"]))
    return cases


CASES: list[Case] = [*conv_activation_cases(), *batch_norm_cases()]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_fusion_cpu(case: Case):
    _check(case, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("case", [_cuda_param(c) for c in CASES])
def test_fusion_cuda(case: Case):
    _check(case, "cuda")


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_batch_norm_in_training_mode_is_not_folded():
    # training_mode=1 computes batch statistics: nothing to fold; the runtime keeps the node and refuses at run.
    # Its running statistics are outputs too (ONNX and onnxruntime refuse the node with one output).
    rng = case_rng("BatchNormalization-training-mode")
    bn = helper.make_node(
        "BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["y", "running_mean", "running_var"],
        epsilon=1e-3, training_mode=1,
    )  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **CONV), bn]
    inits = {**_conv_inits(rng, "Conv"), **_bn_inits(rng)}
    x = _x(rng, "Conv", 2)
    model = make_model(nodes, [("x", F32, list(x.shape))], [("y", F32, None)], inits)
    sess = runtime.InferenceSession(model)
    assert [n.op_type for n in sess._graph.nodes] == ["Conv", "BatchNormalization"]
    with pytest.raises(UnsupportedOp, match="training_mode"):
        sess.run(None, {"x": x})


def test_folding_leaves_the_unfolded_graph_result():
    # The same model with and without the rewrites: folding changes the rounding only
    case = next(c for c in CASES if c.id == "ConvTranspose-BatchNormalization-Relu")
    fused = runtime.InferenceSession(case.model).run(None, case.feed)[0]
    plain = runtime.InferenceSession(case.model, optimize_graph=False).run(None, case.feed)[0]
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-5)


# ConvTranspose of unit strides with constant weights, on CUDA: rewritten to the Conv of its flipped, transposed
# weights where its explicit pads allow ((K−1)·d − pad ≥ 0 at both ends, output_padding added at the end)
UNIT_STRIDE_T = [
    ("pads1", (2, 4, 5, 5), (4, 6, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ("group-dilated", (1, 4, 4, 5), (4, 3, 3, 2), dict(group=2, dilations=[2, 1], pads=[0, 1, 3, 0]), True),
    ("output-padding", (1, 2, 4, 4), (2, 3, 3, 3), dict(dilations=[2, 2], output_padding=[1, 0]), True),
    ("3d", (1, 2, 2, 3, 4), (2, 2, 2, 2, 2), {}, True),
    ("strided", (1, 4, 3, 3), (4, 6, 3, 3), dict(strides=[2, 2]), False),
    ("cropping-pad", (1, 4, 5, 5), (4, 6, 3, 3), dict(pads=[3, 0, 0, 0]), False),
    ("same-upper", (1, 4, 5, 5), (4, 6, 3, 3), dict(auto_pad="SAME_UPPER"), False),
    ("output-shape", (1, 4, 5, 5), (4, 6, 3, 3), dict(output_shape=[7, 7]), False),
]


def _unit_stride_model(x_shape, w_shape, attrs, activation=True) -> tuple[bytes, dict]:
    rng = case_rng(f"unit-stride-{w_shape}-{sorted(attrs)}")
    c_out = w_shape[1] * attrs.get("group", 1)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c" if activation else "y"], **attrs)]
    if activation:
        nodes.append(helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.2))
    inits = {"w": randn(rng, w_shape, scale=0.5), "b": randn(rng, (c_out,))}
    model = make_model(nodes, [("x", F32, ["N", *x_shape[1:]])], [("y", F32, None)], initializers=inits)
    return model, {"x": randn(rng, x_shape)}


@pytest.mark.parametrize("x_shape, w_shape, attrs, rewritten", [c[1:] for c in UNIT_STRIDE_T],
                         ids=[c[0] for c in UNIT_STRIDE_T])  # fmt: skip
def test_unit_stride_conv_transpose_becomes_a_conv_on_cuda_only(x_shape, w_shape, attrs, rewritten):
    from runtime.fusion import optimize
    from runtime.graph import build_graph, read_model

    model, _ = _unit_stride_model(x_shape, w_shape, attrs, activation=False)
    for backend in ("cpu", "cuda"):
        graph = optimize(build_graph(read_model(model)[0], None, backend), backend)
        expect = "Conv" if rewritten and backend == "cuda" else "ConvTranspose"
        assert [n.op_type for n in graph.nodes] == [expect], backend
        assert ("w" in graph.initializers) != (expect == "Conv")  # the original weights dropped once unread


@pytest.mark.cuda
@pytest.mark.parametrize("x_shape, w_shape, attrs, rewritten", [c[1:] for c in UNIT_STRIDE_T],
                         ids=[c[0] for c in UNIT_STRIDE_T])  # fmt: skip
def test_unit_stride_conv_transpose_as_conv_matches_onnxruntime(x_shape, w_shape, attrs, rewritten):
    from tests.conftest import assert_close, ort_run

    model, feed = _unit_stride_model(x_shape, w_shape, attrs)
    session = runtime.InferenceSession(model, backend="cuda")
    assert [n.op_type for n in session._graph.nodes] == ["FusedConv" if rewritten else "FusedConvTranspose"]
    if attrs.get("output_padding"):  # onnxruntime refuses output_padding at stride 1; the spec allows it below
        expected = runtime.InferenceSession(model).run(None, feed)  # the dilation: the CPU backend, unrewritten
    else:
        expected = ort_run(model, feed)
    assert_close(session.run(None, feed), expected)
