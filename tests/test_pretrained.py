"""Pretrained models in one call, timm's way: ``zoo.create_model(name, pretrained=True)`` for every shipped card
gives the network whose outputs are the card's ONNX test data (written by onnx export from the same weights,
so an independent record of what the weights compute), ``zoo.list_models(pattern, pretrained=...)`` filters,
and a weights file that does not match its manifest is refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import zoo
from tests.conftest import read_test_data
from zoo.cards import default_weights_dir, load_cards
from zoo.errors import ZooError

CARDS = {c["name"]: c for c in load_cards(default_weights_dir())}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_pretrained_model_computes_its_shipped_test_data(name):
    import torch

    model = zoo.create_model(name, pretrained=True)
    assert model.pretrained.name == name and model.pretrained.metrics == CARDS[name]["metrics"]
    assert not model.training
    parts = model.export_parts() or {None: model}
    for part, module in parts.items():
        folder = default_weights_dir() / (f"{name}.{part}" if part else name) / "test_data_set_0"
        feed, outputs = read_test_data(folder)
        assert list(feed) == list(module.input_names) and len(outputs) == len(module.output_names)
        with torch.no_grad():
            got = module(*(torch.from_numpy(feed[name].copy()) for name in module.input_names))
        got = got if isinstance(got, tuple) else (got,)
        for y, expected in zip(got, outputs, strict=True):
            np.testing.assert_allclose(y.numpy(), expected, atol=1e-5, rtol=1e-6)


def test_pretrained_by_model_name_and_the_listing():
    assert zoo.create_model("dcgan-mnist", pretrained=True).pretrained.name == "dcgan-mnist"
    assert zoo.create_model("sparse-ae", pretrained=True).pretrained.name == "sparse-ae-mnist"
    shipped = zoo.list_models(pretrained=True)
    assert set(shipped) == {c["model"] for c in CARDS.values()} and "dcgan-64" not in shipped
    assert zoo.list_models("dcgan*") == ["dcgan-64", "dcgan-mnist", "dcgan-mnist-no-phases"]
    assert zoo.list_models("dcgan*", pretrained=True) == ["dcgan-mnist", "dcgan-mnist-no-phases"]
    assert zoo.list_models("nothing*") == []


def test_pretrained_refusals(tmp_path):
    with pytest.raises(ZooError, match="no shipped weights for 'dcgan-64'.*shipped: cdcgan-mnist, cgen-mnist"):
        zoo.create_model("dcgan-64", pretrained=True)
    with pytest.raises(ZooError, match="come with their config"):
        zoo.create_model("sparse-ae-mnist", pretrained=True, hidden=3)
    folder = tmp_path / "w"
    shutil.copytree(default_weights_dir(), folder, ignore=shutil.ignore_patterns("*.onnx", "*.png", "*test_data*"))
    data = bytearray((folder / "lenet-mnist.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (folder / "lenet-mnist.safetensors").write_bytes(bytes(data))
    with pytest.raises(ZooError, match="sha256 .* but the manifest says"):
        zoo.create_model("lenet-mnist", pretrained=True, weights_dir=folder)
