"""Data-parallel training under torchrun: two CPU processes (gloo), each on half of every global batch, end with
the weights of one process trained on the whole batch (the oracle), to 1e-5. LeNet with augmentation off: its
loss is a mean over examples, so the share-weighted gradient sum of zoo/models/base.py is exactly the
single-process gradient; the 101 examples leave a last batch of 5 that splits 3 / 2, unevenly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT

MODEL = "lenet-mnist"
ARGS = ["--epochs", "2", "--batch-size", "32", "--limit", "101", "--seed", "5", "--quiet"]
ARGS += ["--set", "augment_shift=0", "--set", "augment_rotate=0"]  # random draws per shard would differ
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    zoo = ["-m", "cli.main", "train", MODEL]
    one = subprocess.run(
        [sys.executable, *zoo, "--out", str(single), *ARGS],
        cwd=ROOT,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1"]
    launcher += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    two = subprocess.run(
        [*launcher, *zoo, "--out", str(multi), *ARGS],
        cwd=ROOT,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("trained lenet-mnist") == 1, two.stdout  # rank 0 alone reports

    got, expected = weights(multi / f"{MODEL}.safetensors"), weights(single / f"{MODEL}.safetensors")
    assert sorted(got) == sorted(expected)
    largest_weight = 0.0
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5, err_msg=name)
        largest_weight = max(largest_weight, float(np.abs(expected[name]).max()))
    assert largest_weight > 0  # weights that are not all zero: the comparison compares something

    m_multi = json.loads((multi / "metrics.json").read_text())
    m_single = json.loads((single / "metrics.json").read_text())
    assert m_multi["world_size"] == 2 and m_single["world_size"] == 1
    assert m_multi["train_examples"] == m_single["train_examples"] == 101
    # the logged training loss is the share-weighted mean over ranks: the global batches' mean loss
    for a, b in zip(m_multi["train_history"], m_single["train_history"]):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a, b)
    assert abs(m_multi["final"]["val_loss"] - m_single["final"]["val_loss"]) < 1e-5
