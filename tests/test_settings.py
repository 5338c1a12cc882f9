"""Settings have one home and are checked there: the model configs hold architecture and objective, TrainConfig
the run; every field of every registered config refuses a wrong type, a non-finite or out-of-range value before
anything is built; `--set` reaches either; a run that diverges stops with the last good checkpoint kept; a
folder holding a run (finished or not) is never trained over without --force; a checkpoint whose config
disagrees with its tensors is refused before the model is allocated."""

from __future__ import annotations

import json
import math
import time
import typing
from dataclasses import fields

import pytest
from click.testing import CliRunner

import zoo
from cli.main import cli
from zoo.config import TrainConfig
from zoo.errors import ZooError
from zoo.train import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CONFIGS = {name: zoo.get_model_entry(name).config for name in zoo.list_models()}
TRAINING_NAMES = set(TrainConfig.keys())


def _bad_values(cls, f):
    """Values field ``f`` of config ``cls`` must refuse: the wrong type, not finite, out of its bounds."""
    hint = typing.get_type_hints(cls)[f.name]
    meta = f.metadata
    out = [{"wrong": 1}]
    if hint in (int, float):
        out += ["abc", True]
    if hint is float:
        out += [math.nan, math.inf, -math.inf]
    if hint is int:
        out += [1.5]
    if meta.get("lo") is not None and hint in (int, float):
        out.append(meta["lo"] - 1 if not meta.get("lo_open") else meta["lo"])
    if meta.get("hi") is not None and hint in (int, float):
        out.append(meta["hi"] * 2 + 1)
    if meta.get("choices"):
        out.append("not-a-choice")
    if typing.get_origin(hint) is list:
        out += ["abc", ["x"]]
    return out


CASES = [
    (name, f.name, value) for name, cls in sorted(CONFIGS.items()) for f in fields(cls) for value in _bad_values(cls, f)
]


@pytest.mark.parametrize("name, key, value", CASES, ids=[f"{n}-{k}-{v!r}" for n, k, v in CASES])
def test_every_config_field_refuses_bad_values(name, key, value):
    with pytest.raises(ZooError, match=key):
        zoo.create_model(name, **{key: value})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_home_per_setting(name):
    """No model config holds a training setting or an older name of a shared concept (nc, in_channels)."""
    keys = set(CONFIGS[name].keys())
    assert not keys & TRAINING_NAMES, f"{name}'s config holds training settings {keys & TRAINING_NAMES}"
    assert not keys & {"nc", "in_channels", "dataset", "cosine_lr"}
    assert isinstance(zoo.get_model_entry(name).train, TrainConfig)  # its defaults, checked at registration


@pytest.mark.parametrize(
    "values",
    [dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(lr=math.nan), dict(lr=math.inf), dict(seed=-1),
     dict(lr_schedule="linear"), dict(limit=0), dict(beta1=1.0), dict(epochs="2"), dict(data="")],
)  # fmt: skip
def test_train_config_refuses_bad_values(values):
    with pytest.raises(ZooError, match=next(iter(values))):
        TrainConfig(**values)


def test_unknown_setting_lists_the_valid_keys():
    with pytest.raises(ZooError, match=r"unknown setting hiden .*model: visible, hidden.*training: data, epochs"):
        train("sparse-ae-digits8", "/nonexistent-never-made", hiden=3)
    with pytest.raises(ZooError, match="a training setting"):
        zoo.create_model("sparse-ae", epochs=3)


def _zoo(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize(
    "args, key, value",
    [(["--set", "epochs=2"], "epochs", 2), (["--set", "batch_size=100"], "batch_size", 100),
     (["--set", "lr=0.02"], "lr", 0.02), (["--set", "lr_schedule=\"cosine\""], "lr_schedule", "cosine")],
)  # fmt: skip
def test_set_reaches_the_training_config(tmp_path, args, key, value):
    epochs = [] if key == "epochs" else ["--epochs", 1]
    result = _zoo("train", "sparse-ae-digits8", "--limit", 128, "--quiet", "--out", tmp_path / "r", *epochs, *args)
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert run["train"][key] == value
    assert len(run["history"]) == run["train"]["epochs"] == (2 if key == "epochs" else 1)


@pytest.mark.parametrize(
    "setting, message",
    [("beta=NaN", "beta=nan: expected a finite float"), ("beta=Infinity", "beta=inf"), ("beta=abc", "beta='abc'"),
     ("hidden=-5", "hidden=-5: expected an int >= 1"), ("hidden=0", "hidden=0"), ("epochs=2.5", "epochs=2.5")],
)  # fmt: skip
def test_set_bad_values_are_one_line_errors(tmp_path, setting, message):
    result = _zoo("train", "sparse-ae-digits8", "--quiet", "--out", tmp_path / "r", "--set", setting)
    assert result.exit_code != 0 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # refused before any file was written


def test_option_and_set_of_one_setting_are_refused(tmp_path):
    result = _zoo("train", "sparse-ae-digits8", "--epochs", 2, "--set", "epochs=3", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "epochs given both" in result.output


def test_cosine_schedule_follows_the_runs_epochs(tmp_path):
    """The schedule reads the run's epochs (4 here), not a model default: after epoch 3 the step is
    lr * (1 + cos(pi * 2/4)) / 2 = lr / 2, and the schedule is part of the training record."""
    from zoo.checkpoint import read_metadata

    run = train("sparse-ae-digits8", tmp_path, epochs=4, lr=1e-2, lr_schedule="cosine", limit=64, progress=False)
    assert run["train"]["lr_schedule"] == "cosine" and run["train"]["epochs"] == 4
    groups = read_metadata(tmp_path / "checkpoint.safetensors")["resume"]["optimizers"]["model"]["param_groups"]
    assert groups[0]["lr"] == pytest.approx(1e-2 * (1 + math.cos(math.pi * 3 / 4)) / 2, rel=1e-12)
    assert TrainConfig(epochs=4, lr_schedule="cosine").lr_factor(3) == pytest.approx(0.5)


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from zoo.checkpoint import read_metadata
    from zoo.models.sparse_ae import SparseAutoencoder

    honest = SparseAutoencoder.training_step

    def diverging(self, x, y, optimizers, epoch):
        logs = honest(self, x, y, optimizers, epoch)
        return {**logs, "loss": math.nan} if epoch == 3 else logs

    monkeypatch.setattr(SparseAutoencoder, "training_step", diverging)
    with pytest.raises(ZooError, match=r"diverged at epoch 3, batch 1 .*loss=nan.*epoch 2"):
        train("sparse-ae-digits8", tmp_path, epochs=5, limit=64, progress=False)
    assert read_metadata(tmp_path / "checkpoint.safetensors")["epoch"] == 2
    assert not (tmp_path / "sparse-ae-digits8.safetensors").exists()
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 2


def test_a_diverging_weight_stops_the_run(tmp_path, monkeypatch):
    """A loss can stay finite while a weight overflows: the epoch's weights are checked before they are saved."""
    import torch

    from zoo.models.sparse_ae import SparseAutoencoder

    honest = SparseAutoencoder.training_step

    def overflowing(self, x, y, optimizers, epoch):
        logs = honest(self, x, y, optimizers, epoch)
        if epoch == 2:
            with torch.no_grad():
                self.decoder.bias[0] = math.inf
        return logs

    monkeypatch.setattr(SparseAutoencoder, "training_step", overflowing)
    with pytest.raises(ZooError, match=r"diverged at epoch 2: decoder.bias=inf"):
        train("sparse-ae-digits8", tmp_path, epochs=3, limit=64, progress=False)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_unfinished_run_is_not_trained_over(tmp_path):
    """The review's case: an interrupted run's checkpoint and history survive a second `zoo train` without
    --resume, which is refused with the way forward; --resume then still works."""
    out = tmp_path / "r"
    train("sparse-ae-digits8", out, epochs=2, limit=64, progress=False)
    (out / "sparse-ae-digits8.safetensors").unlink()  # as if stopped before the end
    before = _snapshot(out)
    result = _zoo("train", "sparse-ae-digits8", "--epochs", 2, "--limit", 64, "--out", out, "--quiet")
    assert result.exit_code == 1 and "holds an unfinished run" in result.output and "--resume" in result.output
    assert _snapshot(out) == before
    result = _zoo("train", "sparse-ae-digits8", "--epochs", 3, "--limit", 64, "--out", out, "--quiet", "--resume")
    assert result.exit_code == 0, result.output
    assert read_epochs(out) == 3


def read_epochs(out) -> int:
    return len(json.loads((out / "metrics.json").read_text())["history"])


def test_a_folder_with_other_files_is_not_trained_into(tmp_path):
    (tmp_path / "metrics.json").write_text("mine")
    result = _zoo("train", "sparse-ae-digits8", "--epochs", 1, "--limit", 64, "--out", tmp_path, "--quiet")
    assert result.exit_code == 1 and "is not empty (metrics.json)" in result.output
    assert (tmp_path / "metrics.json").read_text() == "mine"
    result = _zoo("train", "sparse-ae-digits8", "--epochs", 1, "--limit", 64, "--out", tmp_path, "--quiet", "--force")
    assert result.exit_code == 0 and read_epochs(tmp_path) == 1


def _forged_checkpoint(path, **config_changes):
    """A real small checkpoint whose metadata's config is changed, its tensors left as they are."""
    from safetensors.numpy import load_file, save_file

    from zoo.checkpoint import read_metadata, save_checkpoint

    model = zoo.create_model("sparse-ae-digits8")
    save_checkpoint(model, path)
    meta = {k: (v if k in ("format", "model") else json.dumps(v)) for k, v in read_metadata(path).items()}
    config = {**json.loads(meta["config"]), **config_changes}
    meta["config"] = json.dumps(config)
    save_file(load_file(str(path)), str(path), metadata=meta)
    return path


def test_a_checkpoint_claiming_a_huge_model_is_refused_before_allocating(tmp_path):
    """The review's 14 KB file whose config says hidden=10**7 allocated 5.4 GB for 21 s: now its config is
    bounded, and a config within bounds that disagrees with the stored tensors is refused from the header."""
    from zoo.checkpoint import load_checkpoint

    path = _forged_checkpoint(tmp_path / "huge.safetensors", hidden=10**7)
    start = time.perf_counter()
    with pytest.raises(ZooError, match=r"hidden=10000000: expected an int >= 1 and <= 65536"):
        load_checkpoint(path)
    path = _forged_checkpoint(tmp_path / "big.safetensors", hidden=60000)  # in bounds: 64x60000 by the config
    with pytest.raises(ZooError, match=r"tensor 'decoder.bias' is|tensor 'decoder.weight' is"):
        load_checkpoint(path)
    assert time.perf_counter() - start < 10
    result = _zoo("export", "sparse-ae-digits8", "--weights", path, "--out", tmp_path / "x.onnx")
    assert result.exit_code == 1 and "does not match its config" in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_checkpoint_metadata_that_is_not_json_is_one_error(tmp_path):
    from safetensors.numpy import load_file, save_file

    from zoo.checkpoint import load_checkpoint, read_metadata

    path = _forged_checkpoint(tmp_path / "c.safetensors")
    meta = {k: (v if k in ("format", "model") else json.dumps(v)) for k, v in read_metadata(path).items()}
    save_file(load_file(str(path)), str(path), metadata={**meta, "config": "{not json"})
    with pytest.raises(ZooError, match="metadata field 'config' is not JSON"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["sparse-ae-mnist", "dcgan-mnist", "deconvnet-digits", "cgen-mnist", "lenet-mnist"])
def test_shipped_checkpoints_of_the_earlier_layout_still_load(name):
    """The shipped files hold configs with the training settings inside and older names (nc, in_channels,
    dataset, cosine_lr): they load into today's configs, and their training data is still known."""
    from zoo.cards import default_weights_dir
    from zoo.checkpoint import load_checkpoint, training_data

    model, meta = load_checkpoint(default_weights_dir() / f"{name}.safetensors")
    assert type(model.config) is zoo.get_model_entry(meta["model"]).config
    assert training_data(meta) in ("mnist", "mnist-seg")
