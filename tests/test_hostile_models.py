"""Hostile ONNX files the loader must refuse, with InvalidModel and a one-line message naming the tensor, the
file and the expectation, before it allocates anything: external data that is missing, short, outside the
model's folder or mis-described; declared shapes that are negative or too large for this machine's memory;
malformed Constant nodes and unknown tensor types.

(Truncated, random and non-model bytes, dangling inputs, cycles, unsupported ops and opsets, bad feeds and
NaN/Inf are covered in tests/test_session.py.) The well-formed twin of each external-data case loads and
agrees with onnxruntime, so the refusals are not a loader that refuses everything."""

from __future__ import annotations

import os
import tracemalloc
from contextlib import contextmanager

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime
import runtime.graph
from runtime.errors import InvalidModel
from tests.conftest import IR_VERSION, assert_close, ort_run

W = np.arange(12, dtype=np.float32).reshape(3, 4) / 10  # (3, 4): 48 bytes
W_BYTES = W.tobytes()


@contextmanager
def raises_invalid_model(*needles: str):
    """pytest.raises for exactly InvalidModel whose one-line message contains every needle."""
    with pytest.raises(InvalidModel) as info:
        yield info
    err = info.value
    assert type(err) is InvalidModel, f"expected exactly InvalidModel, got {type(err).__name__}: {err}"
    assert "\n" not in str(err), str(err)
    for needle in needles:
        assert needle in str(err), f"{needle!r} not in {str(err)!r}"


def gemm_model(weight: TensorProto, extra_inits=()) -> onnx.ModelProto:
    """y = x @ W.T with W given as ``weight`` (possibly external), x: (n, 4), y: (n, 3)."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm", transB=1)],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [weight, *extra_inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    return model


def external_weight(location: str, dims=(3, 4), **info) -> TensorProto:
    t = TensorProto()
    t.name = "W"
    t.data_type = TensorProto.FLOAT
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, **info}.items():
        entry = t.external_data.add()
        entry.key, entry.value = key, str(value)
    return t


def write_model(folder, model: onnx.ModelProto, name: str = "model.onnx") -> str:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return str(path)


# --- external data ------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [0, 16])
def test_well_formed_external_data_loads_and_matches_onnxruntime(tmp_path, offset):
    (tmp_path / "w.bin").write_bytes(b"\xff" * offset + W_BYTES + b"\x00" * 8)
    path = write_model(tmp_path, gemm_model(external_weight("w.bin", offset=offset, length=len(W_BYTES))))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    got = runtime.InferenceSession(path).run(None, {"x": x})
    np.testing.assert_allclose(got[0], x @ W.T, rtol=1e-6, atol=1e-6)  # numpy oracle
    assert_close(got, ort_run(path, {"x": x}))


def test_missing_external_file(tmp_path):
    path = write_model(tmp_path, gemm_model(external_weight("weights.bin")))
    with raises_invalid_model("'W'", "'weights.bin'", "missing", "expected"):
        runtime.InferenceSession(path)


def test_external_file_shorter_than_the_declared_tensor(tmp_path):
    (tmp_path / "w.bin").write_bytes(W_BYTES[:40])
    path = write_model(tmp_path, gemm_model(external_weight("w.bin")))
    with raises_invalid_model("'W'", "'w.bin'", "has 40 bytes", "expected at least offset 0 + 48 bytes"):
        runtime.InferenceSession(path)


def test_external_file_shorter_than_offset_plus_length(tmp_path):
    (tmp_path / "w.bin").write_bytes(W_BYTES + b"\x00" * 8)  # 56 bytes; 48 wanted from offset 16
    path = write_model(tmp_path, gemm_model(external_weight("w.bin", offset=16, length=48)))
    with raises_invalid_model("'W'", "'w.bin'", "has 56 bytes", "offset 16 + 48 bytes"):
        runtime.InferenceSession(path)


@pytest.mark.parametrize("length", [40, 52])
def test_external_length_that_differs_from_the_declared_size(tmp_path, length):
    (tmp_path / "w.bin").write_bytes(W_BYTES + b"\x00" * 8)
    path = write_model(tmp_path, gemm_model(external_weight("w.bin", length=length)))
    with raises_invalid_model("'W'", "'w.bin'", f"length {length} bytes", "declared size, 48 bytes"):
        runtime.InferenceSession(path)


@pytest.mark.parametrize("key, value", [("offset", -8), ("offset", "eight"), ("length", -1)])
def test_external_offset_or_length_that_is_not_a_size(tmp_path, key, value):
    (tmp_path / "w.bin").write_bytes(W_BYTES)
    path = write_model(tmp_path, gemm_model(external_weight("w.bin", **{key: value})))
    with raises_invalid_model("'W'", f"{key} '{value}'", "expected an integer >= 0"):
        runtime.InferenceSession(path)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd", "link.bin"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(W_BYTES)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(tmp_path / "secret.bin")  # a symlink out counts as outside
    path = write_model(folder, gemm_model(external_weight(location)))
    with raises_invalid_model("'W'", f"'{location}'", "outside the model's folder"):
        runtime.InferenceSession(path)


def test_external_data_in_a_constant_attribute_is_checked_too(tmp_path):
    """A Constant's value tensor is read like an initializer: the same folder rule applies."""
    (tmp_path / "secret.bin").write_bytes(W_BYTES)
    folder = tmp_path / "model"
    folder.mkdir()
    value = external_weight("../secret.bin")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["W"], name="const", value=value),
            helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm", transB=1),
        ],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    with raises_invalid_model("'value'", "'const'", "'../secret.bin'", "outside the model's folder"):
        runtime.InferenceSession(write_model(folder, model))


def test_external_data_in_a_model_given_as_bytes(tmp_path):
    model = gemm_model(external_weight("w.bin"))
    with raises_invalid_model("'W'", "external data", "given as bytes"):
        runtime.InferenceSession(model.SerializeToString())


# --- declared sizes -----------------------------------------------------------------------------------
def declared_only(dims, data_type=TensorProto.FLOAT, name="W") -> TensorProto:
    """A tensor that declares ``dims`` but carries (almost) no data, as a hostile file would."""
    t = TensorProto()
    t.name, t.data_type = name, data_type
    t.dims.extend(dims)
    t.raw_data = b"\x00" * 4
    return t


@pytest.mark.parametrize(
    "dims", [(10**6, 10**6), (2**31, 2**31, 2**31), (2**62, 4)], ids=["1e12", "2^93", "int64-overflow"]
)
def test_initializer_too_large_for_memory_is_refused_before_allocating(dims):
    model = gemm_model(declared_only(dims)).SerializeToString()
    tracemalloc.start()
    try:
        with raises_invalid_model("'W'", f"{tuple(dims)}", f"{np.prod(dims, dtype=object)} elements", "at most"):
            runtime.InferenceSession(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak} bytes were allocated before the refusal"


def test_initializer_without_a_name():
    """ "" marks an omitted input: an initializer named so is refused at load (onnxruntime refuses it too)."""
    with raises_invalid_model("initializer has an empty name"):
        runtime.InferenceSession(
            gemm_model(numpy_helper.from_array(W, "W"), [numpy_helper.from_array(W, "")]).SerializeToString()
        )


def test_negative_dim_in_an_initializer():
    with raises_invalid_model("'W'", "(3, -4)", "expected dimensions >= 0"):
        runtime.InferenceSession(gemm_model(declared_only((3, -4))).SerializeToString())


def test_initializers_too_large_together(monkeypatch):
    """Each fits under the limit, both together do not: refused before either is read."""
    monkeypatch.setattr(runtime.graph, "MAX_TENSOR_BYTES", 60)
    extra = numpy_helper.from_array(np.zeros(3, np.float32), "unused")  # 12 bytes: with W's 48, exactly 60
    more = numpy_helper.from_array(np.zeros(2, np.float32), "unused2")  # 8 more: 68 > 60
    model = gemm_model(numpy_helper.from_array(W, "W"), [extra, more]).SerializeToString()
    with raises_invalid_model("3 initializers", "68 bytes", "at most 60 bytes"):
        runtime.InferenceSession(model)
    fits = gemm_model(numpy_helper.from_array(W, "W"), [extra]).SerializeToString()
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(runtime.InferenceSession(fits).run(None, {"x": x})[0], x @ W.T, rtol=1e-6)


@pytest.mark.parametrize("dims, message", [([4, -1], "expected dimensions >= 0"), ([10**7, 10**7], "at most")])
def test_graph_input_with_a_negative_or_huge_declared_dim(dims, message):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    with raises_invalid_model("'x'", str(dims), message):
        runtime.InferenceSession(model.SerializeToString())


def test_huge_tensor_in_a_constant_attribute():
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["W"], name="big_const", value=declared_only((10**6, 10**6), name="v")),
            helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm", transB=1),
        ],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    with raises_invalid_model("'big_const'", "(1000000, 1000000)", "at most"):
        runtime.InferenceSession(model.SerializeToString())


# --- malformed tensors and nodes ----------------------------------------------------------------------
@pytest.mark.parametrize("data_type", [0, 99])
def test_initializer_of_no_onnx_type(data_type):
    with raises_invalid_model("'W'", f"data_type {data_type}", "no ONNX tensor type", "tensor(float)"):
        runtime.InferenceSession(gemm_model(declared_only((3, 4), data_type=data_type)).SerializeToString())


def test_initializer_whose_data_does_not_fill_its_shape():
    """4 bytes of raw data for a (3, 4) float tensor: refused, not read past its end."""
    with raises_invalid_model("'W'", "cannot be read"):
        runtime.InferenceSession(gemm_model(declared_only((3, 4))).SerializeToString())


@pytest.mark.parametrize("attrs", [{}, {"value_float": 1.0, "value_int": 2}], ids=["none", "two"])
def test_constant_without_exactly_one_value(attrs):
    node = helper.make_node("Constant", [], ["c"], name="odd_const", **attrs)
    graph = helper.make_graph(
        [node, helper.make_node("Identity", ["c"], ["y"], name="id")],
        "hostile",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = IR_VERSION
    with raises_invalid_model("'odd_const'", "expected exactly one value attribute"):
        runtime.InferenceSession(model.SerializeToString())


def test_hostile_files_leave_no_file_open(tmp_path):
    """Every refusal above closes what it opened: no file descriptors leak across many refused loads."""
    (tmp_path / "w.bin").write_bytes(W_BYTES[:40])
    path = write_model(tmp_path, gemm_model(external_weight("w.bin")))
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("no /proc/self/fd here")
    before = len(os.listdir(fd_dir))
    for _ in range(50):
        with pytest.raises(InvalidModel):
            runtime.InferenceSession(path)
    assert len(os.listdir(fd_dir)) <= before
