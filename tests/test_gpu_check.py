"""``tools/gpu_check.py --dry-run``: the GPU machine's one command, run on tiny shapes under the CUDA simulator so
that it is known to work before any device time is spent. Every step must end ok, or skipped with its reason;
the models and kernels must agree with onnxruntime-CPU. (About a minute on 2 cores.)"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "tools" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.cuda
def test_gpu_check_dry_run_records_every_step(tmp_path):
    gpu_check = load_gpu_check()  # importable as a module: its constants are what the JSON is checked against
    out = tmp_path / "out"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("ZOO_TRACE", None)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads((out / "gpu_check.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["dry_run"] and report["finished"]
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == [name for name, *_ in gpu_check.STEPS]
    for step in report["steps"]:
        assert step["status"] in ("ok", "skipped"), (step["name"], step.get("reason"), step.get("error"))
        if step["status"] == "skipped":
            assert step["reason"]
    assert steps["ceilings"]["reason"] == "dry run"
    assert steps["cuda_tests"]["reason"].startswith("dry run")
    assert steps["environment"]["result"]["simulator"] is True

    models = steps["models"]["result"]
    labels = {c["model"] for c in models["cases"]}
    assert {"sparse-ae-digits8", "dcgan-64.generator (random)", "deconvnet-vgg16 (random)"} <= labels
    assert all(b["status"] == "ok" for b in models["builds"].values())
    for case in models["cases"]:
        assert case["status"] == "ok", case
        assert case["runtime_providers"][0] == "CUDAExecutionProvider"
        assert case["implicit_copy_warnings"] == 0
        assert case["agreement"]["agrees"]
        for name, output in case["agreement"]["outputs"].items():
            if "argmax_agreement" in output:
                assert output["argmax_agreement"] >= gpu_check.ARGMAX_MIN_AGREEMENT, (case["model"], name)
            else:
                assert output["max_abs_err"] <= gpu_check.ATOL + gpu_check.RTOL * output["max_abs_ref"]
        assert {"runtime-cuda host", "torch-cpu host"} <= set(case["times"])
        assert case["onnxruntime_cuda"]["label"] == "modelled onnxruntime-CUDA"
    vgg = next(c for c in models["cases"] if c["model"] == "deconvnet-vgg16 (random)")
    assert len(vgg["onnxruntime_cuda"]["maxunpools"]) == 5  # one per unpooling stage, each timed on the CPU

    kernels = steps["kernels"]["result"]["kernels"]
    assert [k["name"] for k in kernels] == [
        "Conv 3x3", "ConvTranspose 5x5 s2", "Conv full window (fc6)", "Gemm", "MaxPool 2x2 with Indices",
        "MaxUnpool 2x2",
    ]  # fmt: skip
    assert all(k["status"] == "ok" and k["agreement"]["agrees"] for k in kernels)
    assert steps["launch_overhead"]["result"]["runtime_host_us_per_node"] > 0
    train = steps["train"]["result"]["comparisons"]
    assert train and all(c["ok"] for c in train.values())


@pytest.mark.cuda
def test_cuda_bench_labels_onnxruntime_by_the_provider_it_got(tmp_path):
    """``zoo bench --backend cuda``: this runtime's session truly on CUDA (the simulator here), onnxruntime named
    after the provider its session got; onnxruntime-CPU is timed beside it but never counted as a CUDA peer."""
    from click.testing import CliRunner

    from cli.main import cli
    from tests.conftest import WEIGHTS

    out = tmp_path / "bench.json"
    args = ["bench", "--backend", "cuda", "--models", "sparse-ae-digits8", "--batch", "1", "--threads", "1"]
    args += ["--no-cold", "--no-random-weights", "--weights-dir", str(WEIGHTS), "--json", str(out), "--markdown"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["results"]
    ort = row["onnxruntime_runner"]
    assert ort in ("onnxruntime-CPU", "onnxruntime-CUDA") and ort in row["median_ms"]
    assert "runtime-cuda" in row["median_ms"] and "onnxruntime" not in row["median_ms"]
    assert "onnxruntime-spinning" not in row["median_ms"]
    if ort == "onnxruntime-CPU":
        assert row["best_peer"] is None and row["ratio_to_best_peer"] is None
        assert "n/a (no CUDA peer)" in result.output
    else:
        assert row["best_peer"] == "onnxruntime-CUDA"
