"""The ``zoo`` command through click's CliRunner: every command's --help, a short train -> export -> run on a
data subset, inference without torch, and one-line errors that leave the user's files alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import ROOT, WEIGHTS, ort_run

COMMANDS = sorted(cli.commands)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_neither_torch_nor_numba_nor_onnx(command):
    """Help is instant: nothing heavy is imported for it (each of those costs a second or more)."""
    args = [command, "--help"] if command else ["--help"]
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli; "
        f"r = CliRunner().invoke(cli, {args!r}); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'numba', 'onnxruntime', 'onnx', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_list_filters_and_speaks_json():
    import json

    result = invoke("list", "dcgan*", "--json")
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["model"] for r in rows] == ["dcgan-64", "dcgan-mnist", "dcgan-mnist-no-phases"]
    assert rows[0]["weights"] == {} and "fid" in rows[1]["weights"]["dcgan-mnist"]
    result = invoke("list", "dcgan*", "--pretrained")
    assert "dcgan-mnist" in result.output and "dcgan-64" not in result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run of the 8x8 model on a subset, exported: shared by the tests below."""
    out = tmp_path_factory.mktemp("train")
    result = invoke("train", "sparse-ae-digits8", "--epochs", 1, "--limit", 128, "--out", out, "--quiet", "--seed", 1)
    assert result.exit_code == 0, result.output
    onnx_path = out / "model.onnx"
    result = invoke(
        "export", "sparse-ae-digits8", "--weights", out / "sparse-ae-digits8.safetensors", "--out", onnx_path
    )
    assert result.exit_code == 0, result.output
    return out, onnx_path


def test_train_writes_checkpoint_metrics_and_pictures(trained):
    out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["train_examples"] == 128
    for key in ("val_mse", "mean_rho_hat", "kl_term", "rho"):
        assert key in metrics["final"]
    for name in (
        "checkpoint.safetensors",
        "sparse-ae-digits8.safetensors",
        "receptive_fields.png",
        "reconstructions.png",
    ):
        assert (out / name).is_file(), name


def test_train_refuses_to_overwrite_a_finished_run(trained):
    out, _ = trained
    before = (out / "sparse-ae-digits8.safetensors").read_bytes()
    result = CliRunner().invoke(cli, ["train", "sparse-ae-digits8", "--epochs", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 1
    assert "already exists" in result.output and "--force" in result.output
    assert (out / "sparse-ae-digits8.safetensors").read_bytes() == before


@pytest.mark.parametrize("backend", ["cpu", "ort"])
def test_run_matches_onnxruntime(trained, tmp_path, backend):
    _, onnx_path = trained
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    result = invoke(
        "run", onnx_path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz", "--backend", backend
    )
    assert result.exit_code == 0, result.output
    got = np.load(tmp_path / "y.npz")
    expected = ort_run(str(onnx_path), {"image": x})
    np.testing.assert_allclose(got["reconstruction"], expected[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["code"], expected[1], atol=1e-5, rtol=0)


def test_run_named_input_and_output_name(trained, tmp_path):
    _, onnx_path = trained
    x = np.random.default_rng(1).random((3, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "code.npy"
    result = invoke(
        "run", onnx_path, "--input", f"image={tmp_path / 'x.npy'}", "--output", out, "--output-name", "code"
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), ort_run(str(onnx_path), {"image": x})[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "{bad_shape}"], "expected (batch, 64)"),
        (["--input", "{bad_dtype}"], "expected tensor(float)"),
        (["--input", "{missing}"], "does not exist"),
        (["--input", "{not_npy}"], "is not a .npy array"),
        (["--input", "{x}", "--output-name", "nope"], "unknown output 'nope'"),
        (["--input", "{x}", "--backend", "cuda"], "cuda"),
    ],
    ids=["shape", "dtype", "missing", "not-npy", "output-name", "cuda-without-gpu"],
)
def test_run_errors_are_one_line(trained, tmp_path, args, message):
    _, onnx_path = trained
    files = {
        "bad_shape": np.zeros((2, 65), np.float32),
        "bad_dtype": np.zeros((2, 64), np.float64),
        "x": np.zeros((2, 64), np.float32),
    }
    for name, a in files.items():
        np.save(tmp_path / f"{name}.npy", a)
    (tmp_path / "not_npy.npy").write_bytes(b"garbage")
    paths = {name: tmp_path / f"{name}.npy" for name in [*files, "not_npy"]} | {"missing": tmp_path / "none.npy"}
    args = [a.format(**paths) for a in args]
    out = tmp_path / "y.npy"
    result = CliRunner().invoke(cli, ["run", str(onnx_path), *args, "--output", str(out)])
    if "cuda" in args and result.exit_code == 0:
        pytest.skip("a CUDA backend is available here")
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_export_and_run_never_overwrite_without_force(trained, tmp_path):
    out, onnx_path = trained
    keep = tmp_path / "keep.onnx"
    keep.write_bytes(b"precious")
    result = CliRunner().invoke(
        cli,
        ["export", "sparse-ae-digits8", "--weights", str(out / "sparse-ae-digits8.safetensors"), "--out", str(keep)],
    )
    assert result.exit_code == 1 and "already exists" in result.output
    assert keep.read_bytes() == b"precious"
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    y = tmp_path / "y.npy"
    y.write_bytes(b"precious")
    result = CliRunner().invoke(cli, ["run", str(onnx_path), "--input", str(tmp_path / "x.npy"), "--output", str(y)])
    assert result.exit_code == 1 and "--force" in result.output
    assert y.read_bytes() == b"precious"
    result = invoke("run", onnx_path, "--input", tmp_path / "x.npy", "--output", y, "--force")
    assert result.exit_code == 0 and np.load(y).shape == (1, 64)


def test_export_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    out, _ = trained
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "sparse-ae",
            "--weights",
            str(out / "sparse-ae-digits8.safetensors"),
            "--out",
            str(tmp_path / "m.onnx"),
        ],
    )
    assert result.exit_code == 1 and "'sparse-ae-digits8' checkpoint" in result.output


def test_train_unknown_model_and_bad_override(tmp_path):
    result = CliRunner().invoke(cli, ["train", "nope", "--out", str(tmp_path / "a")])
    assert result.exit_code == 1 and "unknown model 'nope'" in result.output and "sparse-ae" in result.output
    result = CliRunner().invoke(cli, ["train", "sparse-ae-digits8", "--set", "rho=2", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "rho=2" in result.output


# (file, input shape, backend): the CUDA case runs under the simulator in `make test`'s second process, at a
# size the simulator manages (the full DeconvNet on CUDA: tests/test_weights.py, marked slow).
RUN_CASES = [
    pytest.param("sparse-ae-mnist.onnx", (4, 784), "cpu", id="sparse-ae-cpu"),
    pytest.param("deconvnet-digits.onnx", (3, 1, 48, 48), "cpu", id="deconvnet-cpu"),
    pytest.param("sparse-ae-digits8.onnx", (2, 64), "cuda", id="sparse-ae-digits8-cuda", marks=pytest.mark.cuda),
]


@pytest.mark.parametrize("file, shape, backend", RUN_CASES)
def test_run_without_torch(tmp_path, file, shape, backend):
    """`zoo run` on a shipped model in a process where torch cannot be imported, against onnxruntime."""
    x = np.random.default_rng(2).random(shape, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys; sys.modules['torch'] = None; from cli.main import cli; "
        f"cli(['run', {str(WEIGHTS / file)!r}, '--input', {str(tmp_path / 'x.npy')!r}, "
        f"'--output', {str(tmp_path / 'y.npy')!r}, '--backend', {backend!r}], standalone_mode=False); "
        "assert sys.modules['torch'] is None"
    )
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    expected = ort_run(str(WEIGHTS / file), {"image": x})[0]
    # rtol as in tests/test_weights.py: float32 sums taken in another order than onnxruntime's drift by a few
    # ulps of the output (deconvnet-digits: 1.05e-5 on a score of -8.4, 1.25e-6 relative)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-5)


def test_list_shows_models_and_shipped_weights():
    result = invoke("list")
    assert result.exit_code == 0
    assert "sparse-ae-digits8" in result.output
    assert "sparse-ae-mnist" in result.output and "val_mse=" in result.output


def test_info_shows_io_and_metadata():
    result = invoke("info", WEIGHTS / "sparse-ae-mnist.onnx")
    assert result.exit_code == 0
    assert "input  image: tensor(float) ['batch', 784]" in result.output
    assert "meta   model = sparse-ae" in result.output


def test_publish_writes_card_and_manifest(trained, tmp_path):
    out, _ = trained
    result = invoke("publish", out, "--name", "tiny", "--weights-dir", tmp_path)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "tiny.card.json").read_text())
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert {"tiny.safetensors", "tiny.onnx"} <= set(manifest)
    assert card["metrics"]["val_mse"] == pytest.approx(
        json.loads((out / "metrics.json").read_text())["final"]["val_mse"]
    )
    result = CliRunner().invoke(cli, ["publish", str(out), "--name", "tiny", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 1 and "already exists" in result.output


def test_publish_takes_the_pictures_from_the_run_folder(trained, tmp_path):
    # a run trained elsewhere stores its pictures' paths relative to where it was trained (runs/NAME/x.png):
    # publishing from another directory still finds them in the run's folder, and they travel with the weights
    import shutil

    out, _ = trained
    run = shutil.copytree(out, tmp_path / "elsewhere" / "runs" / "tiny")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pictures"]
    metrics["pictures"] = [f"runs/tiny/{Path(p).name}" for p in metrics["pictures"]]
    (run / "metrics.json").write_text(json.dumps(metrics))
    weights = tmp_path / "weights"
    weights.mkdir()
    result = invoke("publish", run, "--name", "tiny", "--weights-dir", weights)
    assert result.exit_code == 0, result.output
    card = json.loads((weights / "tiny.card.json").read_text())
    assert card["pictures"] == [f"tiny.{Path(p).name}" for p in metrics["pictures"]]
    for p in metrics["pictures"]:
        assert (weights / f"tiny.{Path(p).name}").read_bytes() == (run / Path(p).name).read_bytes()


@pytest.mark.parametrize("model", ["dcgan-mnist", "cdcgan-mnist", "cgen-mnist"])
def test_sample_writes_a_grid_without_torch(model, tmp_path):
    """`zoo sample` on a shipped generator in a process where torch cannot be imported; same seed, same PNG,
    and the runtime's picture equals onnxruntime's to the last grey level."""
    from PIL import Image

    pictures = {}
    for label, backend in (("a", "cpu"), ("b", "cpu"), ("ort", "ort")):
        out = tmp_path / f"{label}.png"
        code = (
            "import sys; sys.modules['torch'] = None; from cli.main import cli; "
            f"cli(['sample', {model!r}, '--n', '16', '--seed', '3', '--backend', {backend!r}, '--out', {str(out)!r}],"
            " standalone_mode=False); assert sys.modules['torch'] is None"
        )
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
        pictures[label] = np.asarray(Image.open(out))
    assert (pictures["a"] == pictures["b"]).all()
    assert np.abs(pictures["a"].astype(int) - pictures["ort"].astype(int)).max() <= 1
    assert pictures["a"].std() > 10  # not a blank grid


def test_sample_interpolates_between_two_points(tmp_path):
    from PIL import Image

    out = tmp_path / "row.png"
    result = invoke("sample", "dcgan-mnist", "--interpolate", "--steps", 6, "--out", out)
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(out))
    assert picture.shape[1] > 5 * picture.shape[0]  # one row of six images


def test_sample_unknown_generator_lists_the_shipped_ones(tmp_path):
    result = CliRunner().invoke(cli, ["sample", "nope", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "dcgan-mnist" in result.output and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("part", ["generator", "discriminator"])
def test_export_a_gan_part(part, tmp_path):
    out = tmp_path / f"{part}.onnx"
    weights = WEIGHTS / "dcgan-mnist.safetensors"
    result = invoke("export", "dcgan-mnist", "--part", part, "--weights", weights, "--out", out)
    assert result.exit_code == 0, result.output
    shipped = WEIGHTS / f"dcgan-mnist.{part}.onnx"
    from zoo.bench import _feed_for

    feed = _feed_for(shipped, 3)
    np.testing.assert_allclose(ort_run(str(out), feed)[0], ort_run(str(shipped), feed)[0], atol=1e-6, rtol=0)
    result = CliRunner().invoke(
        cli, ["export", "dcgan-mnist", "--weights", str(weights), "--out", str(tmp_path / "x.onnx")]
    )
    assert result.exit_code == 1 and "generator, discriminator" in result.output


def test_demo_refuses_a_folder_of_other_files_before_training(tmp_path):
    """`make demo` may run again over its own runs/demo (an earlier demo's metrics.json says so); any other
    non-empty folder is refused before anything is trained or written."""
    from cli.demo import _earlier_demo

    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--epochs", "1"])
    assert result.exit_code == 1 and "is not empty (notes.txt)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert not _earlier_demo(tmp_path)
    (tmp_path / "metrics.json").write_text('{"command": "zoo demo --out runs/demo --epochs 30 --seed 0"}')
    assert _earlier_demo(tmp_path)
