"""Every registered model, parametrised over the registry (a new model needs no new test code): it builds
with its defaults, exports to a checked ONNX graph, and that graph agrees with torch in this runtime and in
onnxruntime at batches 1, 7 and 256."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import zoo
from tests.conftest import assert_close, ort_run, runtime_run
from zoo.export import IR_VERSION, export_onnx

MODELS = zoo.list_models()


def test_registry_lists_the_lectures_models():
    assert "sparse-ae" in MODELS and "sparse-ae-digits8" in MODELS
    for name in MODELS:
        assert zoo.get_model_entry(name).description


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = zoo.create_model(request.param).eval()
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    report = export_onnx(model, path)
    return model, path, report


def test_export_is_clean_and_checked(exported):
    model, path, report = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == IR_VERSION <= 13
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == list(model.input_names)
    assert [o.name for o in proto.graph.output] == list(model.output_names)
    for v in (*proto.graph.input, *proto.graph.output):
        assert v.type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in proto.metadata_props}
    for key in ("model", "config", "metrics", "source_commit", "input_range", "normalisation"):
        assert key in meta, key
    assert not any(n.metadata_props for n in proto.graph.node), "exporter bookkeeping left in the graph"
    assert report["max_abs_err_runtime_vs_torch"] <= 1e-5
    assert report["max_abs_err_onnxruntime_vs_torch"] <= 1e-5


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_runtime_matches_onnxruntime_and_torch(exported, batch):
    model, path, _ = exported
    x = np.random.default_rng(batch).random((batch, *model.example_input(1)[0].shape[1:]), dtype=np.float32)
    feed = {model.input_names[0]: x}
    expected = ort_run(str(path), feed)
    got = runtime_run(str(path), feed)
    assert_close(got, expected)
    with torch.no_grad():
        reference = [t.numpy() for t in model(torch.from_numpy(x))]
    assert_close(got, reference)


def test_test_data_set_beside_the_export(exported):
    model, path, _ = exported
    folder = path.parent / path.stem / "test_data_set_0"
    x = onnx.numpy_helper.to_array(onnx.load_tensor(str(folder / "input_0.pb")))
    outputs = [
        onnx.numpy_helper.to_array(onnx.load_tensor(str(folder / f"output_{k}.pb")))
        for k in range(len(model.output_names))
    ]
    assert_close(runtime_run(str(path), {model.input_names[0]: x}), outputs)


def test_export_refuses_to_overwrite(exported, tmp_path):
    model, _, _ = exported
    target = tmp_path / "taken.onnx"
    target.write_bytes(b"user data")
    with pytest.raises(zoo.ZooError, match="already exists"):
        export_onnx(model, target)
    assert target.read_bytes() == b"user data"
