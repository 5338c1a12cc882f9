"""Kill-and-resume: a `zoo train` process SIGKILLed mid-run leaves an intact per-epoch checkpoint, and
`zoo train --resume` finishes the run with exactly the weights of an uninterrupted run with the same seed (the
oracle: that uninterrupted run). Also: a GAN's phase schedule resumes consistently, and --resume refuses a
missing checkpoint, a different model, config or seed, and a finished run, in one line each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import ROOT

MODEL = "sparse-ae-digits8"
ARGS = ["--batch-size", "16", "--seed", "7", "--quiet"]  # ~100 Adam steps an epoch on the 8x8 digits
EPOCHS = 40
# One thread everywhere: the oracle and the killed/resumed processes reduce in the same order (and a shared
# 2-core machine runs this 60x faster than with two spinning OpenMP threads per process).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def zoo(*args) -> list[str]:
    return [sys.executable, "-m", "cli.main", *map(str, args)]


def weights(path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The oracle: the same run, never stopped (in this process; training is deterministic on the CPU)."""
    import torch

    from zoo.train import train

    out = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(MODEL, out, epochs=EPOCHS, batch_size=16, seed=7, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_weights(tmp_path, uninterrupted):
    from zoo.checkpoint import load_checkpoint, read_metadata

    out = tmp_path / "run"
    checkpoint = out / "checkpoint.safetensors"
    proc = subprocess.Popen(zoo("train", MODEL, "--epochs", EPOCHS, "--out", out, *ARGS), cwd=ROOT, env=ONE_THREAD)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists():  # at least one epoch written
            assert proc.poll() is None, f"training exited ({proc.returncode}) before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(0.2)  # into a later epoch, perhaps mid-write: the atomic rename must keep the file whole
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / f"{MODEL}.safetensors").exists(), "the run finished before it was killed; lengthen it"

    meta = read_metadata(checkpoint)  # intact: the header parses, the weights load into the model
    stopped_at = meta["epoch"]
    assert 1 <= stopped_at < EPOCHS
    model, _ = load_checkpoint(checkpoint)
    assert meta["resume"]["epoch"] == stopped_at and len(meta["resume"]["run"]["history"]) == stopped_at

    done = subprocess.run(
        zoo("train", MODEL, "--epochs", EPOCHS, "--out", out, *ARGS, "--resume"),
        cwd=ROOT,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got, expected = weights(out / f"{MODEL}.safetensors"), weights(uninterrupted / f"{MODEL}.safetensors")
    assert sorted(got) == sorted(expected) == sorted(model.state_dict())
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)

    import json

    metrics = json.loads((out / "metrics.json").read_text())
    reference = json.loads((uninterrupted / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, EPOCHS + 1))
    assert metrics["threads"] == reference["threads"] == 1
    assert metrics["resumed"][0]["after_epoch"] == stopped_at
    for mine, theirs in zip(metrics["history"], reference["history"]):  # every epoch's held-out figures
        assert mine["val_mse"] == pytest.approx(theirs["val_mse"], abs=1e-6)


def test_checkpoint_carries_optimizer_and_rng_state(uninterrupted):
    """What resuming restores is really in the file: Adam's moments and step count, both RNG states."""
    from safetensors import safe_open

    from zoo.checkpoint import RESUME_PREFIX, read_metadata

    path = uninterrupted / "checkpoint.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        names = set(f.keys())
        step = f.get_tensor(f"{RESUME_PREFIX}optimizer/model/0/step")
    for index in range(4):  # encoder.weight, encoder.bias, decoder.weight, decoder.bias
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert f"{RESUME_PREFIX}optimizer/model/{index}/{key}" in names
    n_train = read_metadata(path)["resume"]["settings"]["train_examples"]
    assert float(step) == EPOCHS * -(-n_train // 16)  # one Adam step per batch, every epoch
    assert {f"{RESUME_PREFIX}rng/torch/0", f"{RESUME_PREFIX}rng/data_order"} <= names
    state = read_metadata(path)["resume"]
    assert state["optimizers"]["model"]["param_groups"][0]["betas"] == [0.9, 0.999]
    assert state["settings"]["seed"] == 7 and state["epoch"] == EPOCHS


def test_gan_phases_resume_consistently(tmp_path, monkeypatch):
    """DCGAN's phase is a function of the epoch (1: D only, 2: G only, 3: both) and its two Adams, BatchNorm
    buffers and the RNG of its z draws are all in the checkpoint: stopping after phase 2 and resuming into
    phase 3 gives the uninterrupted run's weights."""
    import torch

    import zoo.evaluate
    from zoo.train import train

    # FID and Inception score (LeNet over the whole digit set) are beside the point here, and slow
    monkeypatch.setattr(zoo.evaluate, "available", lambda weights_dir=None: False)
    kw = dict(batch_size=8, seed=3, limit=32, progress=False, ngf=4, ndf=4, nz=16, samples_per_epoch_grid=4)
    full, parts = tmp_path / "full", tmp_path / "parts"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train("dcgan-mnist", full, epochs=3, **kw)
        train("dcgan-mnist", parts, epochs=2, **kw)  # as if killed right after epoch 2's checkpoint
        (parts / "dcgan-mnist.safetensors").unlink()
        run = train("dcgan-mnist", parts, epochs=3, resume=True, **kw)
    finally:
        torch.set_num_threads(threads)
    assert [h["phase"] for h in run["train_history"]] == [1.0, 2.0, 3.0]
    got, expected = weights(parts / "dcgan-mnist.safetensors"), weights(full / "dcgan-mnist.safetensors")
    assert any("running_mean" in k for k in expected)  # BatchNorm buffers are compared too
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)


def test_resume_refusals_are_one_line(tmp_path, uninterrupted):
    out = tmp_path / "empty"
    result = CliRunner().invoke(cli, ["train", MODEL, "--out", str(out), "--resume", *ARGS])
    assert result.exit_code == 1
    assert "cannot resume" in result.output and "checkpoint.safetensors" in result.output
    assert "does not exist" in result.output and len(result.output.strip().splitlines()) == 1

    # a checkpoint of another run: copy the uninterrupted run's checkpoint, resume with other settings
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(uninterrupted / "checkpoint.safetensors", other / "checkpoint.safetensors")
    for changed, needle in (
        ({"--seed": "8"}, "seed: checkpoint 7, now 8"),
        ({"--set": "hidden=10"}, "config"),
        ({"--batch-size": "32"}, "batch_size: checkpoint 16, now 32"),
    ):
        settings = {"--seed": "7", "--batch-size": "16", **changed}
        args = [a for kv in settings.items() for a in kv] + ["--quiet"]
        result = CliRunner().invoke(cli, ["train", MODEL, "--out", str(other), "--resume", *args])
        assert result.exit_code == 1, result.output
        assert "different run" in result.output and needle in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["train", "lenet-mnist", "--out", str(other), "--resume", "--quiet"])
    assert result.exit_code == 1 and "sparse-ae-digits8" in result.output and "lenet-mnist" in result.output

    # a finished run is not resumed over without --force, and its weights stay as they were
    before = (uninterrupted / f"{MODEL}.safetensors").read_bytes()
    result = CliRunner().invoke(cli, ["train", MODEL, "--out", str(uninterrupted), "--resume", *ARGS])
    assert result.exit_code == 1 and "already exists" in result.output and "--force" in result.output
    assert (uninterrupted / f"{MODEL}.safetensors").read_bytes() == before
