"""The runtime's onnxruntime-shaped contract: InferenceSession loading, run(), the NodeArg/metadata
accessors, feed and load refusals (exact exception types and messages that name the offending thing and
what was expected), load-time fusion, the torch-free import and ZOO_TRACE.

onnxruntime (CPU provider) is the oracle wherever both can answer the same question."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime
from runtime.errors import BackendUnavailable, InvalidFeed, InvalidModel, UnsupportedOp, ZooRuntimeError
from runtime.graph import MAX_OPSET, MIN_OPSET
from tests.conftest import (
    ATOL,
    IR_VERSION,
    ROOT,
    assert_close,
    case_rng,
    cuda_available,
    make_model,
    ort_run,
    randn,
    runtime_run,
)

N_IN, N_HIDDEN = 196, 32  # 256 x 196 elements is past the CPU kernels' parallel threshold
METADATA = {"zoo.model": "sparse-ae", "zoo.dataset": "mnist-14x14", "zoo.sparsity": "0.05"}


# --- helpers ------------------------------------------------------------------------------------------
@contextmanager
def raises_exactly(cls: type[Exception], *needles: str):
    """Like pytest.raises, but the type must be exactly ``cls`` (not a subclass) and the message must
    contain every one of ``needles``."""
    with pytest.raises(ZooRuntimeError) as info:
        yield info
    err = info.value
    assert type(err) is cls, f"expected exactly {cls.__name__}, got {type(err).__name__}: {err}"
    message = str(err)
    for needle in needles:
        assert needle in message, f"{needle!r} not in the message {message!r}"


def ort_session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def autoencoder_nodes(prefix: str = "") -> list[onnx.NodeProto]:
    """x -> Gemm -> Sigmoid -> Gemm -> Sigmoid -> y, as torch exports nn.Linear (transB=1)."""
    return [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h_pre"], name=f"{prefix}enc_gemm", transB=1),
        helper.make_node("Sigmoid", ["h_pre"], ["h"], name=f"{prefix}enc_sigmoid"),
        helper.make_node("Gemm", ["h", "W2", "b2"], ["y_pre"], name=f"{prefix}dec_gemm", transB=1),
        helper.make_node("Sigmoid", ["y_pre"], ["y"], name=f"{prefix}dec_sigmoid"),
    ]


def autoencoder_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.standard_normal((N_HIDDEN, N_IN)) / np.sqrt(N_IN)).astype(np.float32),
        "b1": rng.standard_normal(N_HIDDEN).astype(np.float32) * 0.1,
        "W2": (rng.standard_normal((N_IN, N_HIDDEN)) / np.sqrt(N_HIDDEN)).astype(np.float32),
        "b2": rng.standard_normal(N_IN).astype(np.float32) * 0.1,
    }


def with_props(model: bytes, props: dict[str, str], producer: str = "", doc: str = "") -> bytes:
    proto = onnx.load_from_string(model)
    helper.set_model_props(proto, props)
    proto.producer_name = producer
    proto.doc_string = doc
    return proto.SerializeToString()


def batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, N_IN), dtype=np.float32)


def raw_model(nodes, inputs, outputs, initializers=(), opsets=(("", 18),)) -> bytes:
    return make_model(nodes, inputs, outputs, initializers, opsets=list(opsets), name="hand-built")


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ae_model() -> bytes:
    """The 2-layer sigmoid autoencoder with a symbolic batch dimension and metadata_props."""
    model = make_model(
        autoencoder_nodes(),
        [("x", np.float32, ["batch", N_IN])],
        [("y", np.float32, ["batch", N_IN])],
        autoencoder_weights(),
    )
    return with_props(model, METADATA, producer="deconv-zoo-tests", doc="a sparse autoencoder")


@pytest.fixture(scope="module")
def ae_session(ae_model) -> runtime.InferenceSession:
    return runtime.InferenceSession(ae_model, backend="cpu")


@pytest.fixture(scope="module")
def two_output_model() -> bytes:
    """The autoencoder with its code ``h`` and the pre-activation ``h_pre`` also exposed as outputs."""
    return make_model(
        autoencoder_nodes(),
        [("x", np.float32, ["batch", N_IN])],
        [("y", np.float32, ["batch", N_IN]), ("h", np.float32, ["batch", N_HIDDEN])],
        autoencoder_weights(),
    )


@pytest.fixture(scope="module")
def shared_batch_model() -> bytes:
    """Two inputs sharing the symbolic dim "batch": y = a + b."""
    return make_model(
        [helper.make_node("Add", ["a", "b"], ["y"], name="add")],
        [("a", np.float32, ["batch", 4]), ("b", np.float32, ["batch", 4])],
        [("y", np.float32, ["batch", 4])],
    )


# --- loading and running ------------------------------------------------------------------------------
def test_path_str_pathlike_and_bytes_give_identical_results(ae_model, tmp_path):
    path = tmp_path / "ae.onnx"
    path.write_bytes(ae_model)
    x = batch(7)
    from_bytes = runtime.InferenceSession(ae_model).run(None, {"x": x})
    for source in (str(path), path, bytearray(ae_model), memoryview(ae_model)):
        got = runtime.InferenceSession(source, backend="cpu").run(None, {"x": x})
        assert len(got) == 1
        np.testing.assert_array_equal(got[0], from_bytes[0])
    # and onnxruntime agrees, whichever way it loads the model
    assert_close(from_bytes, ort_run(str(path), {"x": x}))


@pytest.mark.parametrize("n", [1, 7, 256])
def test_outputs_match_onnxruntime(ae_session, ae_model, n):
    x = batch(n, seed=n)
    got = ae_session.run(None, {"x": x})
    assert isinstance(got, list) and all(isinstance(g, np.ndarray) for g in got)
    assert got[0].shape == (n, N_IN) and got[0].dtype == np.float32
    assert_close(got, ort_run(ae_model, {"x": x}), atol=ATOL)


def test_session_is_reusable_across_batch_sizes(ae_session, ae_model):
    """One session, many runs of different batch sizes, interleaved: no state leaks between runs."""
    xs = [batch(n, seed=10 + n) for n in (3, 256, 1, 3)]
    firsts = [ae_session.run(None, {"x": x})[0] for x in xs]
    np.testing.assert_array_equal(firsts[0], firsts[3])
    for x, got in zip(xs, firsts):
        assert_close([got], ort_run(ae_model, {"x": x}))


def test_get_inputs_and_outputs_match_onnxruntime(ae_session, ae_model, two_output_model):
    def args(nodeargs):
        return [(a.name, list(a.shape), a.type) for a in nodeargs]

    ref = ort_session(ae_model)
    assert args(ae_session.get_inputs()) == args(ref.get_inputs()) == [("x", ["batch", N_IN], "tensor(float)")]
    assert args(ae_session.get_outputs()) == args(ref.get_outputs()) == [("y", ["batch", N_IN], "tensor(float)")]

    sess, ref = runtime.InferenceSession(two_output_model), ort_session(two_output_model)
    assert args(sess.get_outputs()) == args(ref.get_outputs())
    assert [a.name for a in sess.get_outputs()] == ["y", "h"]


def test_nodeargs_for_unknown_dims_and_other_dtypes_match_onnxruntime():
    """An unnamed unknown dimension is None in both; int64 / double inputs have onnxruntime's type strings."""
    model = make_model(
        [
            helper.make_node("Identity", ["f"], ["f_out"]),
            helper.make_node("Identity", ["i"], ["i_out"]),
            helper.make_node("Identity", ["d"], ["d_out"]),
        ],
        [("f", np.float32, [None, "seq", 3]), ("i", np.int64, [2, 5]), ("d", np.float64, ["n"])],
        [("f_out", np.float32, [None, "seq", 3]), ("i_out", np.int64, [2, 5]), ("d_out", np.float64, ["n"])],
    )
    sess, ref = runtime.InferenceSession(model), ort_session(model)
    for mine, theirs in ((sess.get_inputs(), ref.get_inputs()), (sess.get_outputs(), ref.get_outputs())):
        assert [(a.name, list(a.shape), a.type) for a in mine] == [(a.name, list(a.shape), a.type) for a in theirs]
    assert [a.type for a in sess.get_inputs()] == ["tensor(float)", "tensor(int64)", "tensor(double)"]


def test_get_modelmeta_matches_onnxruntime(ae_session, ae_model):
    meta, ref = ae_session.get_modelmeta(), ort_session(ae_model).get_modelmeta()
    assert meta.custom_metadata_map == METADATA
    assert meta.custom_metadata_map == ref.custom_metadata_map
    assert meta.producer_name == ref.producer_name == "deconv-zoo-tests"
    assert meta.graph_name == ref.graph_name == "test"
    assert meta.description == ref.description == "a sparse autoencoder"


def test_get_modelmeta_without_props_is_empty(two_output_model):
    sess = runtime.InferenceSession(two_output_model)
    assert sess.get_modelmeta().custom_metadata_map == {}
    assert ort_session(two_output_model).get_modelmeta().custom_metadata_map == {}


def test_output_names_select_and_order(two_output_model):
    sess = runtime.InferenceSession(two_output_model)
    x = batch(5)
    y_ref, h_ref = ort_run(two_output_model, {"x": x})
    y, h = sess.run(None, {"x": x})
    assert_close([y, h], [y_ref, h_ref])
    (only_h,) = sess.run(["h"], {"x": x})
    assert_close([only_h], [h_ref])
    h2, y2 = sess.run(["h", "y"], {"x": x})
    assert_close([h2, y2], [h_ref, y_ref])
    ref = ort_session(two_output_model)
    assert_close(sess.run(["h", "y"], {"x": x}), ref.run(["h", "y"], {"x": x}))


def test_unknown_output_name_is_refused(two_output_model):
    sess = runtime.InferenceSession(two_output_model)
    with raises_exactly(InvalidFeed, "'z'", "'y'", "'h'"):
        sess.run(["y", "z"], {"x": batch(2)})


def test_output_names_as_a_bare_string_is_refused(ae_session):
    with raises_exactly(InvalidFeed, "'y'", "list"):
        ae_session.run("y", {"x": batch(2)})


# --- feed errors --------------------------------------------------------------------------------------
def test_unknown_input_name_lists_expected_names(ae_session):
    with raises_exactly(InvalidFeed, "'input'", "unknown input", "'x'"):
        ae_session.run(None, {"input": batch(2)})


def test_extra_input_alongside_the_right_one_is_refused(ae_session):
    with raises_exactly(InvalidFeed, "'extra'", "'x'"):
        ae_session.run(None, {"x": batch(2), "extra": batch(2)})


def test_missing_input_is_named(shared_batch_model):
    sess = runtime.InferenceSession(shared_batch_model)
    # the missing one with what it must be (its declared type and shape), then every input
    with raises_exactly(InvalidFeed, "missing", "'b' (tensor(float) ['batch', 4])", "'a'"):
        sess.run(None, {"a": np.zeros((2, 4), np.float32)})


def test_feed_that_is_not_a_dict_is_refused(ae_session):
    with raises_exactly(InvalidFeed, "dict", "list"):
        ae_session.run(None, [batch(2)])


@pytest.mark.parametrize("shape", [(N_IN,), (2, N_IN, 1), ()])
def test_wrong_rank_is_refused(ae_session, shape):
    x = np.zeros(shape, np.float32)
    with raises_exactly(InvalidFeed, "'x'", f"rank {len(shape)}", "expected rank 2", f"(batch, {N_IN})"):
        ae_session.run(None, {"x": x})


def test_wrong_fixed_dimension_is_refused(ae_session):
    x = np.zeros((3, N_IN - 1), np.float32)
    with raises_exactly(InvalidFeed, "'x'", f"{(3, N_IN - 1)}", f"dimension 1 must be {N_IN}"):
        ae_session.run(None, {"x": x})


def test_wrong_dtype_says_expected_tensor_float(ae_session):
    x = batch(2).astype(np.float64)
    with raises_exactly(InvalidFeed, "'x'", "float64", "expected tensor(float)"):
        ae_session.run(None, {"x": x})


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.int32, np.bool_])
def test_other_wrong_dtypes_are_refused(ae_session, dtype):
    x = np.zeros((2, N_IN), dtype)
    with raises_exactly(InvalidFeed, "'x'", np.dtype(dtype).name, "tensor(float)"):
        ae_session.run(None, {"x": x})


def test_list_is_converted_to_the_declared_type_as_onnxruntime_does(ae_session):
    x = batch(2)
    (from_list,) = ae_session.run(None, {"x": x.astype(np.float64).tolist()})
    (from_array,) = ae_session.run(None, {"x": x})
    np.testing.assert_array_equal(from_list, from_array)  # more cases in tests/test_dropin.py


def test_scalar_instead_of_ndarray_is_refused(ae_session):
    with raises_exactly(InvalidFeed, "'x'", "numpy.ndarray", "float"):
        ae_session.run(None, {"x": 1.0})


def test_inconsistent_symbolic_dim_across_inputs(shared_batch_model):
    sess = runtime.InferenceSession(shared_batch_model)
    a, b = np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32)
    with raises_exactly(InvalidFeed, "batch=3", "batch=2", "'a'", "'b'"):
        sess.run(None, {"a": a, "b": b})
    # consistent sizes are fine, and match onnxruntime
    b = np.ones((2, 4), np.float32)
    assert_close(sess.run(None, {"a": a, "b": b}), ort_run(shared_batch_model, {"a": a, "b": b}))


def test_symbolic_dims_are_independent_between_sessions_and_runs(shared_batch_model):
    """The symbolic binding of one run does not constrain the next."""
    sess = runtime.InferenceSession(shared_batch_model)
    for n in (2, 5, 1):
        a = np.full((n, 4), n, np.float32)
        (y,) = sess.run(None, {"a": a, "b": a})
        np.testing.assert_array_equal(y, 2 * a)


@pytest.mark.parametrize(
    "make_view",
    [
        pytest.param(lambda big: np.ascontiguousarray(big[:, :N_IN].T).T, id="transposed"),
        pytest.param(lambda big: np.asfortranarray(big[:, :N_IN]), id="fortran"),
        pytest.param(lambda big: big[::3, :N_IN], id="row-strided"),
        pytest.param(lambda big: big[:, 1 : 2 * N_IN + 1 : 2], id="column-strided"),
        pytest.param(lambda big: big[::-1, :N_IN], id="reversed"),
    ],
)
def test_non_contiguous_inputs_work(ae_session, ae_model, make_view):
    big = np.random.default_rng(3).random((30, 2 * N_IN + 2), dtype=np.float32)
    x = make_view(big)
    assert x.shape[1] == N_IN
    assert not x.flags.c_contiguous
    before = x.copy()
    got = ae_session.run(None, {"x": x})
    np.testing.assert_array_equal(got[0], ae_session.run(None, {"x": np.ascontiguousarray(x)})[0])
    assert_close(got, ort_run(ae_model, {"x": np.ascontiguousarray(x)}))
    np.testing.assert_array_equal(x, before)  # the caller's array is not written to


def test_nan_and_inf_propagate_through_the_autoencoder_as_in_onnxruntime(ae_session, ae_model):
    x = batch(8, seed=4)
    x[1, 0] = np.nan
    x[2, 5] = np.inf
    x[3, 7] = -np.inf
    x[4, :] = 1e30
    x[5, :] = -1e30
    x[6, 3], x[6, 4] = np.inf, -np.inf  # inf - inf inside the GEMM: NaN
    got = ae_session.run(None, {"x": x})
    expected = ort_run(ae_model, {"x": x})
    assert_close(got, expected)  # equal_nan: NaN in exactly the same places
    assert np.isnan(got[0][1]).all() and not np.isnan(got[0][0]).any()


ACTIVATION_SPECIALS = np.array(
    [[np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 88.8, -88.8, 100.0, -100.0, 3.4e38, -3.4e38]],
    np.float32,
)


@pytest.mark.parametrize("op", ["Sigmoid", "Relu", "Tanh"])
def test_activations_of_nan_and_inf_match_onnxruntime(op):
    model = make_model(
        [helper.make_node(op, ["x"], ["y"], name=f"{op.lower()}_node")],
        [("x", np.float32, ["n", ACTIVATION_SPECIALS.shape[1]])],
        [("y", np.float32, ["n", ACTIVATION_SPECIALS.shape[1]])],
    )
    x = ACTIVATION_SPECIALS
    assert_close(runtime.InferenceSession(model).run(None, {"x": x}), ort_run(model, {"x": x}))


@pytest.mark.parametrize("act", ["Sigmoid", "Relu", "Tanh"])
def test_fused_gemm_activation_of_nan_and_inf_matches_onnxruntime(act):
    """A zero weight and the special values as the bias: they reach the fused epilogue unchanged."""
    k = ACTIVATION_SPECIALS.shape[1]
    model = make_model(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["g"], name="gemm", transB=1),
            helper.make_node(act, ["g"], ["y"], name="act"),
        ],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", k])],
        {"W": np.zeros((k, 4), np.float32), "b": ACTIVATION_SPECIALS[0]},
    )
    sess = runtime.InferenceSession(model)
    assert [n.op_type for n in sess._graph.nodes] == ["FusedGemm"]
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    assert_close(sess.run(None, {"x": x}), ort_run(model, {"x": x}))


# --- load errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["LRN", "Hardmax"])
def test_unsupported_op_is_refused_at_load(op_type):
    attrs = {"size": 3} if op_type == "LRN" else {"axis": 1}
    model = make_model(
        [helper.make_node(op_type, ["x"], ["y"], name=f"the_{op_type.lower()}", **attrs)],
        [("x", np.float32, [1, 1, 4, 4] if op_type == "LRN" else [1, 4])],
        [("y", np.float32, None)],
    )
    with raises_exactly(UnsupportedOp, f"'{op_type}'", f"'the_{op_type.lower()}'", "supported ops", "Gemm") as info:
        runtime.InferenceSession(model)  # refused before any run
    for op in runtime.supported_ops("cpu"):
        assert op in str(info.value)


def test_unsupported_op_after_supported_ones_is_still_refused_at_load():
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="ok_relu"),
            helper.make_node("Hardmax", ["r"], ["y"], name="late_hardmax", axis=-1),
        ],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 4])],
    )
    with raises_exactly(UnsupportedOp, "'late_hardmax'", "'Hardmax'", "supported ops"):
        runtime.InferenceSession(model)


def test_unknown_attribute_on_known_op():
    model = make_model(
        [helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm_with_extra", transB=1, bogus=3)],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 2])],
        {"W": np.ones((2, 4), np.float32)},
    )
    with raises_exactly(UnsupportedOp, "'gemm_with_extra'", "'bogus'", "alpha", "transB"):
        runtime.InferenceSession(model)


def test_unknown_attribute_on_op_without_attributes():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu_alpha", alpha=0.1)],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 4])],
    )
    with raises_exactly(UnsupportedOp, "'relu_alpha'", "'alpha'", "none"):
        runtime.InferenceSession(model)


def test_custom_domain_op_is_refused():
    model = raw_model(
        [helper.make_node("MyOp", ["x"], ["y"], name="custom", domain="com.example")],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 4])],
        opsets=(("", 18), ("com.example", 1)),
    )
    with raises_exactly(UnsupportedOp, "'custom'", "com.example.MyOp", "supported ops"):
        runtime.InferenceSession(model)


def test_known_op_type_in_a_custom_domain_is_refused():
    """A 'Relu' from another domain is not ONNX's Relu."""
    model = raw_model(
        [helper.make_node("Relu", ["x"], ["y"], name="foreign_relu", domain="com.example")],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 4])],
        opsets=(("", 18), ("com.example", 1)),
    )
    with raises_exactly(UnsupportedOp, "'foreign_relu'", "com.example.Relu", "supported ops"):
        runtime.InferenceSession(model)


@pytest.mark.parametrize("opset", [6, 99])
def test_unsupported_default_opset(opset):
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 4])],
        opset=opset,
    )
    with raises_exactly(UnsupportedOp, f"opset {opset}", "default domain", f"{MIN_OPSET} to {MAX_OPSET}"):
        runtime.InferenceSession(model)


@pytest.mark.parametrize("opset", [7, 13, 23, 25])
def test_supported_default_opsets_load(opset):
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 4])],
        opset=opset,
    )
    x = np.array([[-1, 0, 1, 2]], np.float32)
    (y,) = runtime.InferenceSession(model).run(None, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_model_bytes(ae_model, fraction):
    data = ae_model[: int(len(ae_model) * fraction)]
    with raises_exactly(InvalidModel, "the given bytes", "not an ONNX model"):
        runtime.InferenceSession(data)


def test_truncated_model_file_names_the_path(ae_model, tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(ae_model[: len(ae_model) // 2])
    with raises_exactly(InvalidModel, str(path), "not an ONNX model"):
        runtime.InferenceSession(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(seed):
    data = np.random.default_rng(seed).bytes(512)
    with raises_exactly(InvalidModel, "the given bytes", "not an ONNX model"):
        runtime.InferenceSession(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString(), id="tensorproto"),
        pytest.param(
            helper.make_graph([], "g", [], []).SerializeToString(),
            id="graphproto",
        ),
        pytest.param(b"", id="empty"),
    ],
)
def test_protobuf_that_is_not_a_model(data):
    with raises_exactly(InvalidModel, "the given bytes", "not an ONNX model"):
        runtime.InferenceSession(data)


def test_dangling_input():
    model = make_model(
        [helper.make_node("Add", ["x", "ghost"], ["y"], name="reads_ghost")],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 4])],
    )
    with raises_exactly(InvalidModel, "'reads_ghost'", "'ghost'", "no node, graph input or initializer"):
        runtime.InferenceSession(model)


def test_cycle_is_refused():
    """Two nodes feeding each other; built by hand so that onnx.checker never sees it."""
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="cyc_one"),
        helper.make_node("Relu", ["a"], ["b"], name="cyc_two"),
        helper.make_node("Identity", ["a"], ["y"], name="after"),
    ]
    graph = helper.make_graph(
        nodes,
        "cyclic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    with raises_exactly(InvalidModel, "cycle", "'cyc_one'", "'cyc_two'"):
        runtime.InferenceSession(model.SerializeToString())


def test_self_loop_is_refused():
    model = raw_model(
        [helper.make_node("Add", ["x", "s"], ["s"], name="self_loop")],
        [("x", np.float32, ["n", 4])],
        [("s", np.float32, ["n", 4])],
    )
    with raises_exactly(InvalidModel, "cycle", "'self_loop'"):
        runtime.InferenceSession(model)


def test_graph_output_nothing_produces():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 4]), ("orphan", np.float32, ["n", 4])],
    )
    with raises_exactly(InvalidModel, "'orphan'", "produced by no node"):
        runtime.InferenceSession(model)


def test_value_written_twice_is_refused():
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["y"], name="first_writer"),
            helper.make_node("Tanh", ["x"], ["y"], name="second_writer"),
        ],
        [("x", np.float32, ["n", 4])],
        [("y", np.float32, ["n", 4])],
    )
    with raises_exactly(InvalidModel, "'second_writer'", "'y'", "already produced"):
        runtime.InferenceSession(model)


def test_missing_file(tmp_path):
    path = tmp_path / "does-not-exist.onnx"
    with raises_exactly(InvalidModel, str(path), "does not exist"):
        runtime.InferenceSession(str(path))
    with raises_exactly(InvalidModel, str(path), "does not exist"):
        runtime.InferenceSession(path)


def test_directory_instead_of_file(tmp_path):
    with raises_exactly(InvalidModel, str(tmp_path), "not a file"):
        runtime.InferenceSession(tmp_path)


@pytest.mark.parametrize("backend", ["tpu", "CPU", "gpu", ""])
def test_unknown_backend(ae_model, backend):
    with raises_exactly(BackendUnavailable, f"'{backend}'", "cpu", "cuda"):
        runtime.InferenceSession(ae_model, backend=backend)


def test_every_error_type_is_a_zoo_runtime_error():
    for cls in (InvalidModel, UnsupportedOp, InvalidFeed, BackendUnavailable):
        assert issubclass(cls, ZooRuntimeError)
        assert getattr(runtime, cls.__name__) is cls
    assert issubclass(UnsupportedOp, InvalidModel)
    # the refusals of bad values are also ValueErrors, as onnxruntime users may catch those
    assert issubclass(InvalidModel, ValueError) and issubclass(InvalidFeed, ValueError)


@pytest.mark.skipif(cuda_available(), reason="a CUDA backend exists here (GPU or NUMBA_ENABLE_CUDASIM=1)")
def test_cuda_backend_without_gpu_points_at_the_simulator(ae_model):
    with raises_exactly(BackendUnavailable, "'cuda'", "NUMBA_ENABLE_CUDASIM", "backend='cpu'"):
        runtime.InferenceSession(ae_model, backend="cuda")


# --- fusion -------------------------------------------------------------------------------------------
def test_gemm_sigmoid_pairs_become_fused_gemm(ae_session):
    nodes = ae_session._graph.nodes
    assert [n.op_type for n in nodes] == ["FusedGemm", "FusedGemm"]
    assert [n.attrs["activation"] for n in nodes] == ["Sigmoid", "Sigmoid"]
    assert [n.outputs for n in nodes] == [["h"], ["y"]]
    assert [n.name for n in nodes] == ["enc_gemm+enc_sigmoid", "dec_gemm+dec_sigmoid"]
    assert all(n.attrs["transB"] == 1 for n in nodes)


def test_unfused_graph_gives_identical_outputs(ae_model):
    fused = runtime.InferenceSession(ae_model)
    plain = runtime.InferenceSession(ae_model, optimize_graph=False)
    assert [n.op_type for n in plain._graph.nodes] == ["Gemm", "Sigmoid", "Gemm", "Sigmoid"]
    for n in (1, 7, 256):
        x = batch(n, seed=20 + n)
        np.testing.assert_array_equal(fused.run(None, {"x": x})[0], plain.run(None, {"x": x})[0])


def test_gemm_that_is_a_graph_output_is_not_fused_away():
    model = make_model(
        autoencoder_nodes(),
        [("x", np.float32, ["batch", N_IN])],
        [("h_pre", np.float32, ["batch", N_HIDDEN]), ("y", np.float32, ["batch", N_IN])],
        autoencoder_weights(),
    )
    sess = runtime.InferenceSession(model)
    ops = [n.op_type for n in sess._graph.nodes]
    assert ops == ["Gemm", "Sigmoid", "FusedGemm"], ops
    x = batch(7)
    got = sess.run(None, {"x": x})
    assert_close(got, ort_run(model, {"x": x}))
    (h_pre,) = sess.run(["h_pre"], {"x": x})
    assert_close([h_pre], [got[0]])
    assert (h_pre < 0).any()  # the pre-activation really is pre-activation, not a sigmoid's output


def test_gemm_read_twice_is_not_fused():
    """The GEMM's output is read by Sigmoid and by Relu: it must survive as a value of its own."""
    model = make_model(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["g"], name="gemm", transB=1),
            helper.make_node("Sigmoid", ["g"], ["s"], name="sig"),
            helper.make_node("Relu", ["g"], ["r"], name="relu"),
            helper.make_node("Add", ["s", "r"], ["y"], name="add"),
        ],
        [("x", np.float32, ["n", 6])],
        [("y", np.float32, ["n", 3])],
        {"W": np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32), "b": np.ones(3, np.float32)},
    )
    sess = runtime.InferenceSession(model)
    assert "Gemm" in [n.op_type for n in sess._graph.nodes]
    assert "FusedGemm" not in [n.op_type for n in sess._graph.nodes]
    x = np.random.default_rng(6).standard_normal((4, 6)).astype(np.float32)
    assert_close(sess.run(None, {"x": x}), ort_run(model, {"x": x}))


def test_gemm_relu_and_tanh_are_fused_too():
    model = make_model(
        [
            helper.make_node("Gemm", ["x", "W1"], ["a"], name="g1", transB=1),
            helper.make_node("Relu", ["a"], ["b"], name="relu"),
            helper.make_node("Gemm", ["b", "W2"], ["c"], name="g2", alpha=0.5),
            helper.make_node("Tanh", ["c"], ["y"], name="tanh"),
        ],
        [("x", np.float32, ["n", 5])],
        [("y", np.float32, ["n", 3])],
        {
            "W1": np.random.default_rng(7).standard_normal((4, 5)).astype(np.float32),
            "W2": np.random.default_rng(8).standard_normal((4, 3)).astype(np.float32),
        },
    )
    sess = runtime.InferenceSession(model)
    assert [(n.op_type, n.attrs["activation"]) for n in sess._graph.nodes] == [
        ("FusedGemm", "Relu"),
        ("FusedGemm", "Tanh"),
    ]
    x = np.random.default_rng(9).standard_normal((6, 5)).astype(np.float32)
    assert_close(sess.run(None, {"x": x}), ort_run(model, {"x": x}))
    plain = runtime.InferenceSession(model, optimize_graph=False)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0])


# --- import hygiene and tracing -----------------------------------------------------------------------
TORCH_FREE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import runtime, numpy as np
    from onnx import helper, numpy_helper, TensorProto

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["g"], transB=1), helper.make_node("Sigmoid", ["g"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(np.array([[1, 0, 0], [0, 1, 0]], np.float32), "W"),
            numpy_helper.from_array(np.zeros(2, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    sess = runtime.InferenceSession(model.SerializeToString(), backend="cpu")
    (y,) = sess.run(None, {"x": np.array([[0.0, 0.0, 5.0]], np.float32)})
    assert y.shape == (1, 2) and np.allclose(y, 0.5), y
    assert "torch" not in sys.modules or sys.modules["torch"] is None
    assert not any(m.startswith("numba.cuda") for m in sys.modules), sorted(
        m for m in sys.modules if m.startswith("numba.cuda")
    )
    print("OK")
    """
)


def test_import_runtime_without_torch_and_without_numba_cuda():
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "ZOO_TRACE")}
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_SCRIPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


def test_zoo_trace_prints_one_line_per_node(ae_model, capfd, monkeypatch):
    monkeypatch.setenv("ZOO_TRACE", "1")
    for optimize_graph, expected_nodes in (
        (True, ["enc_gemm+enc_sigmoid", "dec_gemm+dec_sigmoid"]),
        (False, ["enc_gemm", "enc_sigmoid", "dec_gemm", "dec_sigmoid"]),
    ):
        sess = runtime.InferenceSession(ae_model, optimize_graph=optimize_graph)
        capfd.readouterr()
        sess.run(None, {"x": batch(3)})
        captured = capfd.readouterr()
        lines = [line for line in captured.err.splitlines() if line.startswith("[zoo-trace]")]
        assert len(lines) == len(sess._graph.nodes) == len(expected_nodes), captured.err
        for line, name in zip(lines, expected_nodes):
            assert f"'{name}'" in line, line
            assert "ms" in line
        assert f"(3, {N_HIDDEN})" in lines[0] and f"(3, {N_IN})" in lines[-1]
        assert "[zoo-trace]" not in captured.out


def test_no_trace_without_zoo_trace(ae_model, capfd, monkeypatch):
    monkeypatch.delenv("ZOO_TRACE", raising=False)
    sess = runtime.InferenceSession(ae_model)
    capfd.readouterr()
    sess.run(None, {"x": batch(3)})
    captured = capfd.readouterr()
    assert "[zoo-trace]" not in captured.err and "[zoo-trace]" not in captured.out


def test_relu_of_negative_values_is_positive_zero_as_in_onnxruntime():
    """ReLU is max(x, 0): a negative input gives +0.0 (onnxruntime's answer), not -0.0."""
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [("x", np.float32, ["n", 3])],
        [("y", np.float32, ["n", 3])],
    )
    x = np.array([[-1.0, -1e-45, -5.0]], np.float32)
    (got,) = runtime.InferenceSession(model).run(None, {"x": x})
    (expected,) = ort_run(model, {"x": x})
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))


@pytest.mark.parametrize("op", ["Gemm", "MatMul", "Conv"])
def test_subnormal_weights_of_a_product_are_read_as_zero_and_other_constants_are_kept(op):
    """A matrix product's subnormal weights (which cost Intel cores a microcode assist per multiply-add) give the
    bits of the same weights with those values zeroed, within onnxruntime's tolerance of the exact weights; a
    subnormal constant of an elementwise op is not touched."""
    rng = case_rng(f"subnormal-{op}")
    tiny = np.finfo(np.float32).tiny
    shape = {"Gemm": (6, 5), "MatMul": (6, 5), "Conv": (5, 6, 3, 3)}[op]
    W = randn(rng, shape)
    W[rng.random(shape) < 0.4] = np.float32(tiny / 7)  # subnormal
    W.flat[0] = -np.float32(tiny / 3)
    column = (slice(None), 0) if op != "Conv" else 0  # one output's weights all subnormal: its sum shows them
    W[column] = np.float32(tiny / 9)
    x = randn(rng, (4, 6) if op != "Conv" else (2, 6, 7, 7))
    c = np.float32(tiny / 5)  # added to the product: its own bits stay
    product = helper.make_node(op, ["x", "w"], ["p"])
    add = helper.make_node("Add", ["p", "c"], ["y"])

    def model(w):
        return make_model([product, add], [("x", np.float32, list(x.shape))], [("y", np.float32, None)],
                          {"w": w, "c": np.array(c)})  # fmt: skip

    got = runtime_run(model(W), {"x": x})[0]
    flushed = np.where(np.abs(W) < tiny, np.float32(0), W)
    np.testing.assert_array_equal(got, runtime_run(model(flushed), {"x": x})[0])
    assert (got[:, 0] == c).all(), "an output whose weights are all subnormal is not the Add's constant alone"
    assert_close(got, ort_run(model(W), {"x": x})[0])
    zero_w = make_model([helper.make_node(op, ["x", "w"], ["p"]), add], [("x", np.float32, list(x.shape))],
                        [("y", np.float32, None)], {"w": np.zeros(shape, np.float32), "c": np.array(c)})  # fmt: skip
    assert (runtime_run(zero_w, {"x": x})[0] == c).all(), "the Add's subnormal constant was flushed"


def test_a_bad_feed_is_reported_from_run_not_from_the_checks_inside():
    """A missing input raises InvalidFeed, as onnxruntime raises InvalidArgument, with one line naming it; the
    traceback ends at ``InferenceSession.run`` (the caller's call), not in the session's internals."""
    import traceback

    sess = runtime.InferenceSession(str(ROOT / "weights" / "cdcgan-mnist.generator.onnx"))
    with pytest.raises(InvalidFeed) as info:
        sess.run(None, {"z": np.zeros((1, 100), np.float32)})
    message = str(info.value)
    assert "\n" not in message and "'class_code'" in message and "['class_code', 'z']" in message
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "run", [f.name for f in frames]
    assert info.value.__cause__ is None and info.value.__suppress_context__
