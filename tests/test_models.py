"""Every registered model, parametrised over the registry (a new model needs no new test code): it builds
with its defaults, exports (each part of it, for a GAN) to a checked ONNX graph, and that graph agrees with
torch in this runtime and in onnxruntime at batches 1, 7 and 256."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import zoo
from tests.conftest import assert_close, ort_run, read_test_data, runtime_run
from zoo.export import IR_VERSION, export_onnx, model_part

MODELS = zoo.list_models()
# Widths cut down where the default (the paper's) would make a batch of 256 take minutes on 2 cores; the
# architecture and every op stay the same. dcgan-64 at full width is built in test_gan.py.
TEST_CONFIG = {
    "dcgan-64": dict(ngf=16, ndf=16),
    # all five pooling stages, fc6/fc7 and the mirrored decoder at 64x64 (the full network: test_deconvnet.py)
    "deconvnet-vgg16": dict(
        encoder=[[4, 4], [8, 8], [8, 8, 8], [8, 8, 8], [8, 8, 8]], fc_width=16, image_size=[64, 64]
    ),
}
# Looser agreement where outputs are sums of many thousands of float32 products (DCGAN at 64x64, DeconvNet's
# scores after 20 layers).
ATOL = {"dcgan-64": 1e-4, "deconvnet-digits": 1e-4}
# Random inputs through max-pool switches: rare windows whose two largest values are within an ulp of each other
# are resolved differently by another summation order (conftest.assert_close); 151 of 6.5M elements of
# deconvnet-digits at batch 256 (2.3e-5), all in one sample.
SWITCH_FLIPS = {"deconvnet-digits": 1e-4, "deconvnet-vgg16": 1e-4}


def _cases():
    for name in MODELS:
        parts = list(zoo.create_model(name, **TEST_CONFIG.get(name, {})).export_parts()) or [None]
        for part in parts:
            yield pytest.param((name, part), id=f"{name}.{part}" if part else name)


CASES = list(_cases())


def test_registry_lists_the_lectures_models():
    lectures = ("sparse-ae", "sparse-ae-digits8", "dcgan-64", "dcgan-mnist", "cgen-mnist", "lenet-mnist")
    for name in (*lectures, "deconvnet-vgg16", "deconvnet-digits"):
        assert name in MODELS
    for name in MODELS:
        assert zoo.get_model_entry(name).description


@pytest.fixture(scope="module", params=CASES)
def exported(request, tmp_path_factory):
    name, part = request.param
    torch.manual_seed(0)
    model = zoo.create_model(name, **TEST_CONFIG.get(name, {})).eval()
    path = tmp_path_factory.mktemp(name) / f"{part or 'model'}.onnx"
    report = export_onnx(model, path, part=part)
    return name, model_part(model, part), path, report


def test_export_is_clean_and_checked(exported):
    name, model, path, report = exported
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
    assert meta["model"] == name
    assert not any(n.metadata_props for n in proto.graph.node), "exporter bookkeeping left in the graph"
    assert report["max_abs_err_runtime_vs_torch"] <= ATOL.get(name, 1e-5)
    assert report["max_abs_err_onnxruntime_vs_torch"] <= ATOL.get(name, 1e-5)


def _inputs(model, batch: int) -> dict[str, np.ndarray]:
    """A random feed for every input of ``model``: one-hot rows for class codes, N(0, 1) latent points, else
    uniform [0, 1)."""
    rng = np.random.default_rng(batch)
    feed = {}
    for name, example in zip(model.input_names, model.example_input(1), strict=True):
        shape = example.shape[1:]
        if name == "class_code":
            feed[name] = np.eye(shape[0], dtype=np.float32)[rng.integers(0, shape[0], batch)]
        elif name == "z":
            feed[name] = rng.standard_normal((batch, *shape)).astype(np.float32)
        else:
            feed[name] = rng.random((batch, *shape), dtype=np.float32)
    return feed


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_runtime_matches_onnxruntime_and_torch(exported, batch):
    name, model, path, _ = exported
    feed = _inputs(model, batch)
    got = runtime_run(str(path), feed)
    flips = SWITCH_FLIPS.get(name, 0.0)
    assert_close(got, ort_run(str(path), feed), atol=ATOL.get(name, 1e-5), switch_flips=flips)
    with torch.no_grad():
        reference = model(*(torch.from_numpy(feed[n]) for n in model.input_names))
    reference = [t.numpy() for t in (reference if isinstance(reference, tuple) else (reference,))]
    assert_close(got, reference, atol=ATOL.get(name, 1e-5), switch_flips=flips)


def test_test_data_set_beside_the_export(exported):
    name, model, path, _ = exported
    feed, outputs = read_test_data(path.parent / path.stem / "test_data_set_0")
    assert list(feed) == list(model.input_names) and len(outputs) == len(model.output_names)
    assert_close(runtime_run(str(path), feed), outputs, atol=ATOL.get(name, 1e-5))


def test_export_refuses_to_overwrite(exported, tmp_path):
    name, model, _, _ = exported
    target = tmp_path / "taken.onnx"
    target.write_bytes(b"user data")
    with pytest.raises(zoo.ZooError, match="already exists"):
        export_onnx(zoo.create_model(name, **TEST_CONFIG.get(name, {})), target, part=None)
    assert target.read_bytes() == b"user data"


def test_export_names_the_parts_when_none_is_chosen():
    model = zoo.create_model("dcgan-mnist", ngf=8, ndf=8)
    with pytest.raises(zoo.ZooError, match="generator, discriminator"):
        export_onnx(model, "unused.onnx")


def test_export_tolerance_is_absolute_plus_relative():
    """The export's check against torch is the runtime's contract, 1e-5 absolute plus 1e-6 of the value: large
    logits may drift a few ulps (float32 sums in another order), small ones may not."""
    import numpy as np

    from zoo.export import excess

    big = np.array([16.0], np.float32)
    assert excess([big + 2.4e-5], [big]) <= 0  # 13 ulps of 16: within 1e-5 + 1.6e-5
    assert excess([big + 3e-5], [big]) > 0
    small = np.array([0.01], np.float32)
    assert excess([small + 9e-6], [small]) <= 0 and excess([small + 1.2e-5], [small]) > 0
