"""The shipped weights: every figure on a model card is recomputed here from the shipped files, the files
match the manifest's sha256, and the shipped ONNX file agrees with onnxruntime on both backends."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from tests.conftest import SIMULATED, WEIGHTS, assert_close, ort_run, runtime_run
from zoo.cards import MANIFEST, load_cards, load_manifest, verify_file
from zoo.data import load_dataset
from zoo.errors import ZooError

CARDS = load_cards(WEIGHTS)
CARD_IDS = [c["name"] for c in CARDS]


def test_sparse_ae_mnist_is_shipped():
    assert "sparse-ae-mnist" in CARD_IDS
    for ext in (".safetensors", ".onnx", ".md", ".card.json"):
        assert (WEIGHTS / f"sparse-ae-mnist{ext}").is_file()


def test_manifest_matches_every_shipped_file():
    from zoo.io import sha256_of

    manifest = load_manifest(WEIGHTS)
    assert manifest
    for card in CARDS:
        for name in card["files"]:
            verify_file(WEIGHTS / name)
    for rel, digest in manifest.items():
        assert sha256_of(WEIGHTS / rel) == digest, rel


def test_tampered_weights_are_refused(tmp_path):
    shutil.copy(WEIGHTS / MANIFEST, tmp_path / MANIFEST)
    copy = tmp_path / "sparse-ae-mnist.safetensors"
    data = bytearray((WEIGHTS / "sparse-ae-mnist.safetensors").read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="sha256"):
        verify_file(copy)
    (tmp_path / "stray.onnx").write_bytes(b"x")
    with pytest.raises(ZooError, match="not listed"):
        verify_file(tmp_path / "stray.onnx")


@pytest.mark.parametrize("card", CARDS, ids=CARD_IDS)
def test_card_metrics_recomputed_with_torch(card):
    from zoo.checkpoint import load_checkpoint

    model, meta = load_checkpoint(verify_file(WEIGHTS / f"{card['name']}.safetensors"))
    X = load_dataset(card["data"], "val", size=tuple(model.config.image_size)).flat
    recomputed = model.evaluate(X)
    for key, value in card["metrics"].items():
        assert recomputed[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("card", CARDS, ids=CARD_IDS)
def test_card_mse_recomputed_without_torch_from_onnx(card):
    """The headline figure again, this time through the shipped ONNX file on this runtime."""
    path = WEIGHTS / f"{card['name']}.onnx"
    h, w = card["config"]["image_size"]
    X = load_dataset(card["data"], "val", size=(h, w)).flat
    reconstruction, code = runtime_run(str(path), {"image": X})
    assert float(((reconstruction - X) ** 2).mean()) == pytest.approx(card["metrics"]["val_mse"], rel=1e-4)
    assert float(code.mean()) == pytest.approx(card["metrics"]["mean_rho_hat"], rel=1e-4)


@pytest.mark.parametrize("card", CARDS, ids=CARD_IDS)
def test_onnx_metadata_carries_the_card(card):
    proto = onnx.load(str(WEIGHTS / f"{card['name']}.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model"] == card["model"]
    assert json.loads(meta["metrics"])["val_mse"] == pytest.approx(card["metrics"]["val_mse"])
    assert proto.ir_version <= 13


def _shipped_feed(card: dict, batch: int) -> dict:
    h, w = card["config"]["image_size"]
    X = load_dataset(card["data"], "val", size=(h, w)).flat  # (n_val, h*w), tiled to the batch
    return {"image": np.ascontiguousarray(np.resize(X, (batch, X.shape[1])))}


# The simulator interprets every GPU thread in Python: a batch of 256 through the 784-wide model would take
# many minutes there, so the 256 case on CUDA uses the 64-wide model (which exercises the tiled GEMM kernel).
SIMULATOR_MAX_ELEMENTS = 256 * 64


def _cases():
    for card in CARDS:
        for batch in (1, 7, 256):
            yield pytest.param(card, "cpu", batch, id=f"{card['name']}-cpu-{batch}")
            if batch * card["config"]["visible"] <= SIMULATOR_MAX_ELEMENTS or not SIMULATED:
                yield pytest.param(card, "cuda", batch, id=f"{card['name']}-cuda-{batch}", marks=pytest.mark.cuda)


@pytest.mark.parametrize("card, backend, batch", list(_cases()))
def test_shipped_onnx_matches_onnxruntime(card, backend, batch):
    path = str(WEIGHTS / f"{card['name']}.onnx")
    feed = _shipped_feed(card, batch)
    assert_close(runtime_run(path, feed, backend), ort_run(path, feed))


@pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("card", CARDS, ids=CARD_IDS)
def test_shipped_test_data_set(card, backend):
    """The ONNX Model Zoo style test data beside each shipped file (inputs and torch's outputs)."""
    folder = WEIGHTS / card["name"] / "test_data_set_0"
    x = onnx.numpy_helper.to_array(onnx.load_tensor(str(folder / "input_0.pb")))
    expected = [onnx.numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(folder.glob("output_*.pb"))]
    x = x[:2] if backend == "cuda" else x
    got = runtime_run(str(WEIGHTS / f"{card['name']}.onnx"), {"image": x}, backend)
    assert_close(got, [e[: len(x)] for e in expected])
