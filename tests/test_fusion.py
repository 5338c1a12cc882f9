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
