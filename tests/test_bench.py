"""``zoo bench`` end to end on the smallest shipped model: it runs and writes JSON with every figure. No timing
is asserted (the figures depend on the machine and its load); only that they are there and make sense."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli.main import cli
from tests.conftest import WEIGHTS


def test_bench_runs_on_a_tiny_model_and_writes_json(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-cache"))  # cold start's fresh cache goes in here
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--models",
        "sparse-ae-digits8",
        "--batch",
        "1,3",
        "--threads",
        "1",
        "--json",
        str(out),
        "--markdown",
    ]
    result = CliRunner().invoke(cli, [*args, "--weights-dir", str(WEIGHTS), "--no-random-weights"])
    assert result.exit_code == 0, result.output
    assert "sparse-ae-digits8" in result.output and f"wrote {out}" in result.output
    assert "| sparse-ae-digits8 | 3 |" in result.output  # the Markdown table
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["threads"] == 1 and machine["numba_threads"] == 1
    for key in ("python", "numpy", "numba", "onnx", "onnxruntime", "cpu_count", "cpu_model", "blas"):
        assert machine[key]
    assert report["backend"] == "cpu" and report["peak_gflops"] > 0
    rows = report["results"]
    assert [(r["model"], r["batch"]) for r in rows] == [("sparse-ae-digits8", 1), ("sparse-ae-digits8", 3)]
    for row in rows:
        assert {"runtime-cpu", "onnxruntime"} <= set(row["median_ms"])
        assert all(v > 0 for v in row["median_ms"].values())
        assert row["ratio_to_onnxruntime"]["onnxruntime"] == 1.0
        assert row["runs"] >= 15 and row["peak_numpy_alloc_mb"] > 0
        peers = {k: v for k, v in row["median_ms"].items() if k in ("onnxruntime", "onnxruntime-spinning", "openvino")}
        assert row["best_peer"] == min(peers, key=peers.get)
        assert row["ratio_to_best_peer"] == row["median_ms"]["runtime-cpu"] / peers[row["best_peer"]]
        # 2·(64·25 + 25·64) multiply-adds per sample (the two Gemm layers), per median time
        assert row["gflop"] * 1e9 == 2 * 3200 * row["batch"]
        assert 0 < row["percent_of_peak"] < 100
        for low, high in row["quartiles_ms"].values():
            assert low <= high
    cold = rows[0]["cold_start"]  # the smallest batch of each model
    assert cold["empty_cache_s"] > 0 and cold["warm_cache_s"] > 0 and cold["warm_cache_peak_rss_mb"] > 0
    assert cold["numba_cache_dir_parent"] == str(tmp_path / "numba-cache")
    assert "cold_start" not in rows[1]
    assert not list((tmp_path / "numba-cache").iterdir())  # the fresh cache was removed


def test_bench_refuses_an_unknown_model():
    result = CliRunner().invoke(cli, ["bench", "--models", "nope", "--no-random-weights", "--no-cold"])
    assert result.exit_code == 2 and "nope" in result.output
