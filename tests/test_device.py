"""Training on a chosen device (`zoo train --device auto|cpu|cuda[:N]`). CI has no GPU, so what it can check is
checked here: `--device cpu` is the default's result on a CPU machine, the device is recorded, `--device cuda`
without a GPU is one line, and — the property a GPU run depends on — no model creates a tensor without naming
its device: each model's training step, evaluation and pictures run with torch's default device set to
``meta``, where any tensor made without an explicit device lands and fails against the CPU tensors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import zoo
from cli.main import cli
from zoo.errors import ZooError
from zoo.train import train

SMALL = {
    "sparse-ae-digits8": {},
    "lenet-mnist": {},
    "cgen-mnist": {"hidden": [16]},
    "dcgan-mnist": {"ngf": 4, "ndf": 4, "nz": 16, "samples_per_epoch_grid": 4, "phase1_epochs": 1, "phase2_epochs": 1},
    "deconvnet-digits": {"encoder": [[4], [4]], "fc_width": 8},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_no_model_makes_a_tensor_without_naming_its_device(name, tmp_path, monkeypatch):
    cls = type(zoo.create_model(name, **SMALL[name]))
    for method in ("training_step", "evaluate", "write_pictures", "on_epoch_end"):
        honest = getattr(cls, method)

        def on_meta(self, *args, _honest=honest, **kwargs):
            with torch.device("meta"):  # an implicit device would be meta here, not the data's
                return _honest(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, on_meta)
    epochs = 3 if name == "dcgan-mnist" else 1  # every phase of the GAN
    limit = {"deconvnet-digits": 16, "cgen-mnist": None}.get(name, 64)  # cgen: every class held out
    run = train(name, tmp_path, epochs=epochs, limit=limit, batch_size=16, device="cpu", progress=False, **SMALL[name])
    assert run["device"] == "cpu" and len(run["history"]) == epochs


def test_cpu_is_the_default_on_a_machine_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here: auto takes it")
    a = train("sparse-ae-digits8", tmp_path / "a", epochs=2, limit=64, progress=False)
    b = train("sparse-ae-digits8", tmp_path / "b", epochs=2, limit=64, progress=False, device="cpu")
    assert (tmp_path / "a/sparse-ae-digits8.safetensors").read_bytes()[-4096:] == (
        tmp_path / "b/sparse-ae-digits8.safetensors"
    ).read_bytes()[-4096:]  # the same weights (the header holds the command, which differs)
    assert a["history"][-1]["val_mse"] == b["history"][-1]["val_mse"]
    assert json.loads((tmp_path / "a/metrics.json").read_text())["device"] == "cpu"


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here")
    with pytest.raises(ZooError, match="no CUDA device is usable here"):
        train("sparse-ae-digits8", tmp_path, epochs=1, limit=64, progress=False, device="cuda")
    result = CliRunner().invoke(cli, ["train", "sparse-ae-digits8", "--device", "cuda:1", "--out", str(tmp_path)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "no CUDA device is usable" in result.output
    result = CliRunner().invoke(cli, ["train", "sparse-ae-digits8", "--device", "gpu", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "expected auto, cpu, cuda or cuda:N" in result.output
