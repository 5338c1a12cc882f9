"""Every op the runtime registers, one small ONNX graph at a time, against onnxruntime (CPU provider).

The cases are built once, at import, by the small functions below (one per op family); ``test_op_cpu`` and
``test_op_cuda`` are parametrised over the same list. Each case also states the op_types the loaded graph
must hold after the load-time rewrites (``runtime/fusion.py``): that is how the internal
``ai.deconvzoo.FusedGemm`` is tested, through Gemm→Sigmoid/Relu/Tanh graphs that the loader fuses.

CUDA cases run under the Numba CUDA simulator in ``make test`` (one Python thread per GPU thread), so their
shapes stay small; cases the CUDA backend does not take (float64, integers, N-D MatMul) carry the reason, and
cases only too large for the simulator run on a real GPU only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from onnx import TensorProto, helper

import runtime
from tests.conftest import SIMULATED, assert_close, case_rng, make_model, ort_run, randn, sprinkle

F32 = np.float32
F64 = np.float64
ONLY_F32 = "the cuda backend takes float32 tensors only"
# Inputs that must go through every activation exactly as onnxruntime handles them.
SPECIALS = (np.nan, np.inf, -np.inf, 100.0, -100.0, 88.5, -88.5, 20.0, -20.0, 0.0, -0.0, 1e-30, -1e-30)
SPECIALS_F64 = (*SPECIALS, 800.0, -800.0, 1e300, -1e300)


@dataclass(frozen=True)
class Case:
    id: str  # starts with the op_type under test, then "-"
    model: bytes
    feed: dict
    nodes: tuple[str, ...]  # op_types of the loaded graph, after fusion
    cpu_only: str = ""  # why the cuda backend does not take this case
    large: bool = False  # too many GPU threads for the simulator: real GPU only

    def cuda_skip_reason(self) -> str:
        if self.cpu_only:
            return self.cpu_only
        if self.large and SIMULATED:
            return "too large for the CUDA simulator; runs on a real GPU"
        return ""


def _case(
    cid, nodes, inputs: dict, initializers: dict | None = None, outputs=("y",), out_dtype=None, expect=None, **kw
) -> Case:
    """A case from helper-built nodes; graph inputs are fed with the given arrays (declared with their shapes),
    outputs are declared with ``out_dtype`` (default: the first input's) and unknown shape."""
    initializers = initializers or {}
    first = next(iter({**inputs, **initializers}.values()))
    out_dtype = out_dtype or first.dtype
    model = make_model(
        nodes,
        [(name, a.dtype, list(a.shape)) for name, a in inputs.items()],
        [(name, out_dtype, None) for name in outputs],
        initializers,
    )
    expect = tuple(expect) if expect is not None else tuple(n.op_type for n in nodes)
    return Case(cid, model, dict(inputs), expect, **kw)


# --- Gemm and FusedGemm ---------------------------------------------------------------------------------------

BIAS_SHAPES = {"none": None, "N": lambda M, N: (N,), "1N": lambda M, N: (1, N), "M1": lambda M, N: (M, 1),
               "MN": lambda M, N: (M, N), "scalar": lambda M, N: (), "11": lambda M, N: (1, 1)}  # fmt: skip


def gemm_case(
    M,
    N,
    K,
    *,
    transA=0,
    transB=0,
    alpha=None,
    beta=None,
    bias="N",
    const_b=False,
    const_c=False,
    act=None,
    bias_specials=False,
    dtype=F32,
    **kw,
) -> Case:
    """Gemm (or Gemm→``act``, fused at load into FusedGemm) of op(A) (M, K) by op(B) (K, N) plus bias C."""
    parts = [f"M{M}", f"N{N}", f"K{K}", f"tA{transA}", f"tB{transB}", f"C{bias}"]
    parts += [f"alpha{alpha}"] * (alpha is not None) + [f"beta{beta}"] * (beta is not None)
    parts += ["constB"] * const_b + ["constC"] * const_c + ["nonfinite"] * bias_specials
    parts += [np.dtype(dtype).name] * (dtype != F32)
    cid = "-".join([f"FusedGemm-{act}" if act else "Gemm", *parts])
    rng = case_rng(cid)
    A = randn(rng, (K, M) if transA else (M, K), dtype)
    B = randn(rng, (N, K) if transB else (K, N), dtype)
    inputs, inits = {"A": A}, {}
    (inits if const_b else inputs)["B"] = B
    names = ["A", "B"]
    if bias != "none":
        C = randn(rng, BIAS_SHAPES[bias](M, N), dtype)
        if bias_specials:
            C = sprinkle(rng, C, SPECIALS[: min(C.size, 6)])
        (inits if const_c else inputs)["C"] = C
        names.append("C")
    attrs = {k: v for k, v in dict(alpha=alpha, beta=beta).items() if v is not None}
    attrs.update({k: v for k, v in dict(transA=transA, transB=transB).items() if v})
    if act:
        nodes = [helper.make_node("Gemm", names, ["g"], **attrs), helper.make_node(act, ["g"], ["y"])]
        expect = ["FusedGemm"]
    else:
        nodes = [helper.make_node("Gemm", names, ["y"], **attrs)]
        expect = ["Gemm"]
    if dtype != F32:
        kw.setdefault("cpu_only", ONLY_F32)
    return _case(cid, nodes, inputs, inits, expect=expect, **kw)


def gemm_cases() -> list[Case]:
    cases = []
    # transA/transB, on both CUDA kernels: skinny (M <= 16) and tiled (M > 16; N, K not multiples of 16)
    for M, N, K in ((3, 5, 7), (17, 19, 20)):
        for transA in (0, 1):
            for transB in (0, 1):
                cases.append(gemm_case(M, N, K, transA=transA, transB=transB))
    # every bias shape ONNX's unidirectional broadcast allows, with and without alpha/beta
    for bias in BIAS_SHAPES:
        cases.append(gemm_case(4, 6, 9, bias=bias, alpha=0.5, beta=-2.0, const_c=bias in ("N", "scalar")))
        cases.append(gemm_case(17, 18, 21, bias=bias, transB=1, beta=0.75 if bias != "none" else None))
    cases += [
        gemm_case(5, 7, 6, alpha=2.5),
        gemm_case(5, 7, 6, beta=0.0, bias="MN"),
        gemm_case(5, 7, 6, beta=0.0, bias="MN", bias_specials=True),  # beta = 0: C unread, as in onnxruntime
        gemm_case(5, 7, 6, alpha=-1.0, beta=3.0, bias="M1", transA=1),
        gemm_case(18, 6, 5, alpha=0.0, bias="1N"),
        # M at and around the kernel switch, several row tiles, K = 1, K = 64, exact tile multiples
        gemm_case(1, 7, 5),
        gemm_case(16, 17, 33),
        gemm_case(33, 5, 33, transA=1, bias="M1"),
        gemm_case(32, 16, 16, bias="MN"),
        gemm_case(17, 3, 1),
        gemm_case(2, 10, 64, transB=1),
        gemm_case(2, 300, 4),  # several x-blocks of the skinny kernel
        gemm_case(6, 6, 6, bias="N"),  # square: a 1-D bias runs along N, never along M
        gemm_case(20, 1, 3, bias="M1"),
        # empty products: no rows, no columns, and K = 0 (Y is the bias alone)
        gemm_case(0, 3, 4),
        gemm_case(3, 0, 4, bias="none"),
        gemm_case(3, 4, 0, bias="MN"),
        gemm_case(20, 4, 0, bias="N", alpha=2.0),
        # constant weights: with transB=1 the CUDA loader stores their transpose once
        gemm_case(2, 12, 10, transB=1, const_b=True, const_c=True),
        gemm_case(20, 9, 13, transB=1, const_b=True),
        gemm_case(18, 7, 11, transA=1, transB=1, const_b=True, bias="MN"),
        gemm_case(5, 8, 6, const_b=True, bias="1N"),
        # float64 (CPU only); a product large enough for the parallel CPU epilogue
        gemm_case(5, 4, 6, transA=1, transB=1, alpha=0.5, beta=2.0, dtype=F64),
        gemm_case(9, 3, 4, bias="M1", dtype=F64),
        gemm_case(200, 180, 12, transB=1, const_b=True, large=True),
    ]
    return cases


def fused_gemm_cases() -> list[Case]:
    cases = []
    for act in ("Relu", "Sigmoid", "Tanh"):
        cases += [
            gemm_case(3, 5, 7, transB=1, const_b=True, act=act),
            gemm_case(17, 9, 11, transA=1, bias="MN", alpha=1.5, beta=-0.5, act=act),
            gemm_case(2, 12, 5, bias="MN", bias_specials=True, act=act),  # NaN and ±inf through the epilogue
            gemm_case(20, 6, 4, bias="1N", bias_specials=True, act=act),
            gemm_case(4, 6, 8, bias="none", act=act, dtype=F64),
            gemm_case(190, 200, 10, bias="N", act=act, large=True),
        ]
    return cases


def gemm_graph_cases() -> list[Case]:
    """Graphs around Gemm that the fusion must (or must not) rewrite."""
    cases = []
    cid = "FusedGemm-autoencoder"  # the sparse autoencoder's Gemm→Sigmoid→Gemm→Sigmoid, batch 4 and batch 20
    for batch in (4, 20):
        rng = case_rng(f"{cid}-{batch}")
        w1, b1, w2, b2 = randn(rng, (12, 30)), randn(rng, (12,)), randn(rng, (30, 12)), randn(rng, (30,))
        nodes = [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h0"], transB=1),
            helper.make_node("Sigmoid", ["h0"], ["h"]),
            helper.make_node("Gemm", ["h", "w2", "b2"], ["y0"], transB=1),
            helper.make_node("Sigmoid", ["y0"], ["y"]),
        ]
        inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
        cases.append(_case(f"{cid}-batch{batch}", nodes, {"x": randn(rng, (batch, 30))}, inits,
                           expect=["FusedGemm", "FusedGemm"]))  # fmt: skip

    cid = "FusedGemm-after-Flatten"
    rng = case_rng(cid)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["g"], transB=1),
        helper.make_node("Tanh", ["g"], ["y"]),
    ]
    inits = {"w": randn(rng, (5, 24)), "b": randn(rng, (5,))}
    cases.append(_case(cid, nodes, {"x": randn(rng, (3, 2, 3, 4))}, inits, expect=["Flatten", "FusedGemm"]))

    cid = "Gemm-output-also-graph-output"  # the pre-activation value is wanted: no fusion
    rng = case_rng(cid)
    nodes = [helper.make_node("Gemm", ["a", "b"], ["g"]), helper.make_node("Relu", ["g"], ["y"])]
    feed = {"a": randn(rng, (3, 4)), "b": randn(rng, (4, 5))}
    cases.append(_case(cid, nodes, feed, outputs=("g", "y")))

    cid = "Gemm-two-readers"  # two activations read the Gemm: no fusion
    rng = case_rng(cid)
    nodes = [
        helper.make_node("Gemm", ["a", "b"], ["g"], transA=1),
        helper.make_node("Relu", ["g"], ["y"]),
        helper.make_node("Sigmoid", ["g"], ["z"]),
    ]
    feed = {"a": randn(rng, (4, 3)), "b": randn(rng, (4, 5))}
    cases.append(_case(cid, nodes, feed, outputs=("y", "z")))

    cid = "Gemm-after-Relu"  # an activation before the Gemm is not an epilogue
    rng = case_rng(cid)
    nodes = [helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Gemm", ["r", "b"], ["y"])]
    cases.append(_case(cid, nodes, {"a": randn(rng, (3, 4)), "b": randn(rng, (4, 2))}))

    cid = "Gemm-shared-constant-weight"  # W read by a transB=1 Gemm and by a MatMul: both layouts must survive
    rng = case_rng(cid)
    nodes = [
        helper.make_node("Gemm", ["a", "w"], ["y"], transB=1),
        helper.make_node("MatMul", ["a", "w"], ["z"]),
    ]
    cases.append(_case(cid, nodes, {"a": randn(rng, (3, 6))}, {"w": randn(rng, (6, 6))}, outputs=("y", "z")))
    return cases


# --- MatMul -------------------------------------------------------------------------------------------------


def matmul_case(a_shape, b_shape, *, const_b=False, dtype=F32, cpu_only="") -> Case:
    cid = "MatMul-" + "x".join(map(str, a_shape)) + "@" + "x".join(map(str, b_shape))
    cid += "-constB" * const_b + f"-{np.dtype(dtype).name}" * (dtype != F32)
    rng = case_rng(cid)
    inputs, inits = {"A": randn(rng, a_shape, dtype)}, {}
    (inits if const_b else inputs)["B"] = randn(rng, b_shape, dtype)
    if dtype != F32:
        cpu_only = cpu_only or ONLY_F32
    return _case(cid, [helper.make_node("MatMul", ["A", "B"], ["y"])], inputs, inits, cpu_only=cpu_only)


def matmul_cases() -> list[Case]:
    return [
        matmul_case((3, 5), (5, 4)),
        matmul_case((20, 18), (18, 7)),
        matmul_case((4, 0), (0, 3)),
        matmul_case((2, 7), (7, 6), const_b=True),
        matmul_case((2, 3, 6), (6, 5), const_b=True),  # 6 stacked rows: skinny kernel
        matmul_case((3, 7, 10), (10, 6)),  # 21 stacked rows: tiled kernel
        matmul_case((2, 1, 3, 4), (5, 4, 6)),  # batch dimensions broadcast
        matmul_case((3, 4), (2, 4, 5)),
        matmul_case((2, 3, 4), (2, 4, 5)),
        matmul_case((4,), (4, 3)),
        matmul_case((2, 3, 4), (4,)),
        matmul_case((4,), (4,)),
        matmul_case((6, 5), (5, 3), dtype=F64),
    ]


# --- Activations --------------------------------------------------------------------------------------------


def unary_case(op, shape, *, specials=False, dtype=F32, scale=3.0, **kw) -> Case:
    cid = f"{op}-" + ("x".join(map(str, shape)) or "scalar") + "-specials" * specials
    cid += f"-{np.dtype(dtype).name}" * (dtype != F32)
    rng = case_rng(cid)
    x = randn(rng, shape, dtype, scale)
    if specials:
        x = sprinkle(rng, x, SPECIALS_F64 if dtype == F64 else SPECIALS)
    if dtype != F32:
        kw.setdefault("cpu_only", ONLY_F32)
    return _case(cid, [helper.make_node(op, ["x"], ["y"])], {"x": x}, **kw)


def activation_cases() -> list[Case]:
    cases = []
    for op in ("Sigmoid", "Relu", "Tanh"):
        cases += [
            unary_case(op, (2, 3, 4, 5)),
            unary_case(op, (2, 3, 4, 5), specials=True),
            unary_case(op, (16,), specials=True),
            unary_case(op, ()),
            unary_case(op, (2, 0, 3)),
            unary_case(op, (2, 3, 0)),
            unary_case(op, (3, 40), specials=True, dtype=F64),
            unary_case(op, (4, 9000), specials=True, large=True),  # the parallel CPU kernel
        ]
    return cases


# --- Add, Sub, Mul, Div -------------------------------------------------------------------------------------


def _operand(rng, shape, dtype, divisor: bool) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        if divisor:  # non-zero, both signs
            return np.asarray(rng.integers(1, 10, shape) * rng.choice([-1, 1], shape), dtype=dtype)
        return np.asarray(rng.integers(-100, 100, shape), dtype=dtype)
    x = randn(rng, shape, dtype)
    return np.where(x < 0, x - 0.5, x + 0.5).astype(dtype) if divisor else x


def binary_case(op, a_shape, b_shape, *, dtype=F32, const_b=False, **kw) -> Case:
    def text(s):
        return "x".join(map(str, s)) or "scalar"

    cid = f"{op}-{text(a_shape)}-{text(b_shape)}" + "-constB" * const_b + f"-{np.dtype(dtype).name}" * (dtype != F32)
    rng = case_rng(cid)
    a = _operand(rng, a_shape, dtype, divisor=False)
    b = _operand(rng, b_shape, dtype, divisor=op == "Div")
    inputs, inits = {"a": a}, {}
    (inits if const_b else inputs)["b"] = b
    if dtype != F32:
        kw.setdefault("cpu_only", ONLY_F32)
    return _case(cid, [helper.make_node(op, ["a", "b"], ["y"])], inputs, inits, **kw)


def arithmetic_cases() -> list[Case]:
    cases = []
    for op in ("Add", "Sub", "Mul", "Div"):
        cases += [
            binary_case(op, (2, 3, 4), (2, 3, 4)),
            binary_case(op, (2, 3, 4), (), const_b=True),  # tensor and scalar
            binary_case(op, (), (3, 4)),  # scalar first: order matters for Sub and Div
            binary_case(op, (), ()),
            binary_case(op, (4, 5), (5,), const_b=True),  # per-channel
            binary_case(op, (5,), (4, 5)),
            binary_case(op, (3, 1, 6), (1, 4, 1)),  # both sides broadcast
            binary_case(op, (2, 3, 1, 5), (3, 4, 1)),  # rank 4 against rank 3
            binary_case(op, (2, 1, 2, 1, 3, 2), (1, 2, 1, 2, 1, 2)),  # rank 6, the cuda maximum
            binary_case(op, (0, 3), (3,)),  # empty
            binary_case(op, (3, 1, 4), (2, 4), dtype=F64),
            binary_case(op, (2, 3, 4), (4,), dtype=np.int64),
            binary_case(op, (3, 1), (1, 5), dtype=np.int32),
        ]
    cases.append(binary_case("Mul", (), (), const_b=True))  # a 0-d initializer
    # float division by zero: ±inf and NaN, as onnxruntime
    a = np.array([[1.0, -1.0, 0.0, 2.0, np.inf, np.nan], [3.0, -2.0, 0.0, -0.0, 1.0, -np.inf]], F32)
    b = np.array([[0.0, 0.0, 0.0, np.inf, np.inf, 1.0], [-0.0, -0.0, -0.0, 5.0, -np.inf, 2.0]], F32)
    cases.append(_case("Div-by-zero-and-inf", [helper.make_node("Div", ["a", "b"], ["y"])], {"a": a, "b": b}))
    # integer Div truncates toward zero, exactly, over the whole int64 range
    big = np.array([2**62 + 1, -(2**62 + 3), 2**53 + 1, -(2**60 + 7), 9_007_199_254_740_993, 7, -7, 7, -7], np.int64)
    den = np.array([3, 3, 2, 5, 1, 2, 2, -2, -2], np.int64)
    cases.append(_case("Div-int64-large", [helper.make_node("Div", ["a", "b"], ["y"])], {"a": big, "b": den},
                       cpu_only=ONLY_F32))  # fmt: skip
    return cases


# --- Reshape, Flatten, Identity -----------------------------------------------------------------------------


def reshape_case(in_shape, target, *, allowzero=None, shape_input=False, dtype=F32, **kw) -> Case:
    cid = "Reshape-" + "x".join(map(str, in_shape)) + "-to-" + ",".join(map(str, target))
    cid += f"-allowzero{allowzero}" * (allowzero is not None) + "-shapeinput" * shape_input
    cid += f"-{np.dtype(dtype).name}" * (dtype != F32)
    rng = case_rng(cid)
    x = randn(rng, in_shape, F32) if dtype == F32 else rng.integers(-1000, 1000, in_shape).astype(dtype)
    shape = np.array(target, np.int64)
    inputs, inits = {"x": x}, {}
    (inputs if shape_input else inits)["s"] = shape
    attrs = {} if allowzero is None else {"allowzero": allowzero}
    return _case(cid, [helper.make_node("Reshape", ["x", "s"], ["y"], **attrs)], inputs, inits,
                 out_dtype=dtype, **kw)  # fmt: skip


def shape_cases() -> list[Case]:
    cases = [
        reshape_case((2, 3, 4), (0, -1)),
        reshape_case((2, 3, 4), (-1,)),
        reshape_case((2, 3, 4), (4, 0, 2)),  # 0 copies the input's dimension at the same index
        reshape_case((2, 3, 4, 5), (0, 0, -1)),
        reshape_case((2, 3, 4, 5), (-1, 5, 1, 4), shape_input=True),
        reshape_case((2, 3, 4), (6, 4), allowzero=1),
        reshape_case((2, 3, 4), (0, 12), allowzero=0),
        reshape_case((0, 3, 4), (3, 0, 4), allowzero=1),  # with allowzero a 0 is a zero-sized dimension
        reshape_case((0, 3, 4), (0, 4, 3)),
        reshape_case((3, 4), (2, -1, 3), dtype=np.int64),
    ]
    cid = "Reshape-from-Constant"  # a Constant node is folded into an initializer at load
    rng = case_rng(cid)
    nodes = [
        helper.make_node("Constant", [], ["s"], value=helper.make_tensor("v", TensorProto.INT64, [3], [2, -1, 4])),
        helper.make_node("Reshape", ["x", "s"], ["y"]),
    ]
    cases.append(_case(cid, nodes, {"x": randn(rng, (2, 3, 4))}, expect=["Reshape"]))

    for axis in (0, 1, -1, 2, 4, -4, None):
        cid = f"Flatten-2x3x4x5-axis{axis if axis is not None else 'default'}"
        attrs = {} if axis is None else {"axis": axis}
        x = randn(case_rng(cid), (2, 3, 4, 5))
        cases.append(_case(cid, [helper.make_node("Flatten", ["x"], ["y"], **attrs)], {"x": x}))
    cid = "Flatten-3x7-axis1"
    cases.append(_case(cid, [helper.make_node("Flatten", ["x"], ["y"])], {"x": randn(case_rng(cid), (3, 7))}))

    for shape, dtype in (((2, 3, 4), F32), ((), F32), ((3, 5), np.int64)):
        cid = "Identity-" + ("x".join(map(str, shape)) or "scalar") + f"-{np.dtype(dtype).name}"
        rng = case_rng(cid)
        x = randn(rng, shape) if dtype == F32 else rng.integers(-(2**40), 2**40, shape).astype(dtype)
        cases.append(_case(cid, [helper.make_node("Identity", ["x"], ["y"])], {"x": x}))
    cid = "Identity-then-Relu"
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Relu", ["i"], ["y"])]
    cases.append(_case(cid, nodes, {"x": randn(case_rng(cid), (2, 5))}))
    return cases


CASES: list[Case] = [
    *gemm_cases(),
    *fused_gemm_cases(),
    *gemm_graph_cases(),
    *matmul_cases(),
    *activation_cases(),
    *arithmetic_cases(),
    *shape_cases(),
]


def _check(case: Case, backend: str) -> None:
    before = {name: value.copy() for name, value in case.feed.items()}
    sess = runtime.InferenceSession(case.model, backend=backend)
    assert tuple(n.op_type for n in sess._graph.nodes) == case.nodes
    got = sess.run(None, case.feed)
    expected = ort_run(case.model, case.feed)
    assert_close(got, expected)
    for g, e in zip(got, expected):
        if e.dtype.kind in "iub":  # assert_allclose compares in float64: not exact beyond 2**53
            np.testing.assert_array_equal(g, e)
    for name, value in before.items():  # the run left the caller's arrays alone
        np.testing.assert_array_equal(case.feed[name], value, err_msg=f"input '{name}' was modified")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_op_cpu(case: Case):
    _check(case, "cpu")


def _cuda_param(c: Case):
    reason = c.cuda_skip_reason()
    return pytest.param(c, id=c.id, marks=[pytest.mark.skip(reason=reason)] if reason else [])


@pytest.mark.cuda
@pytest.mark.parametrize("case", [_cuda_param(c) for c in CASES])
def test_op_cuda(case: Case):
    _check(case, "cuda")


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
