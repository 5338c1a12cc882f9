"""Images in, pictures out, through the CLI: `zoo run MODEL.onnx --input a.png|DIR` prepares images as the model's
metadata says and prints what the model says of each; `--output x.png` draws it (a segmenter's overlays with a
key, a classifier's inputs under their classes, an autoencoder's reconstructions). The oracles are the data's
own labels: the digits drawn on a canvas, the class of each drawn digit."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from tests.conftest import WEIGHTS
from zoo.data import load_dataset
from zoo.pictures import label_colours


def zoo_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def drawings(tmp_path_factory):
    """Ten held-out digits, one per class, as dark ink on white paper, 4x larger, off-centre."""
    folder = tmp_path_factory.mktemp("drawings")
    val = load_dataset("mnist", "val", size=(28, 28))
    first = sorted(np.unique(val.labels, return_index=True)[1])
    for k in first:
        big = Image.fromarray(((1 - val.images[k]) * 255).astype(np.uint8)).resize((112, 112), Image.BILINEAR)
        sheet = Image.new("L", (170, 150), 255)
        sheet.paste(big, (8 + 5 * int(val.labels[k]), 20))
        sheet.save(folder / f"digit_{val.labels[k]}.png")
    return folder


def test_a_folder_of_drawings_is_classified(drawings, tmp_path):
    result = zoo_cli("run", WEIGHTS / "lenet-mnist.onnx", "--input", drawings, "--output", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(drawings))]
    assert len(lines) == 10
    right = sum(line.split(": ")[1].split(" ")[0] == line.split("digit_")[1][0] for line in lines)
    assert right >= 9, lines
    assert "inverted" in result.stderr  # said so, per image
    picture = Image.open(tmp_path / "c.png")
    assert picture.width > 400 and picture.height > 100


def test_canvas_png_in_overlay_png_out(tmp_path):
    """The round trip: a held-out canvas as a PNG, its overlay with a key as a PNG; the digits the net reports
    are the canvas's digits (from its label map)."""
    seg = load_dataset("mnist-seg", "val")
    k = next(i for i in range(len(seg)) if len(np.unique(seg.labels[i])) >= 3)  # two digits or more
    Image.fromarray((seg.images[k] * 255).round().astype(np.uint8)).save(tmp_path / "canvas.png")
    out = tmp_path / "overlay.png"
    result = zoo_cli("run", WEIGHTS / "deconvnet-digits.onnx", "--input", tmp_path / "canvas.png", "--output", out)
    assert result.exit_code == 0, result.output
    truth = {f"digit {c - 1}" for c in np.unique(seg.labels[k]) if c >= 1}  # class d + 1 is digit d
    assert len(truth) >= 2
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path / "canvas.png"))]
    reported = [part.split(" (")[0] for part in line.split(": ", 1)[1].split(", ")]
    assert set(reported[: len(truth)]) == truth, line  # the largest regions are the digits drawn
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[1] > 2 * 48 * 3  # the input, its overlay and the key
    colours = {tuple(c) for c in label_colours(11)[1:]}
    painted = {tuple(p) for p in picture.reshape(-1, 3)} & colours
    assert len(painted) >= len(truth)  # the key shows every class colour; the overlay some of them


def test_no_class_colour_is_grey_and_all_differ():
    colours = label_colours(40)
    assert tuple(colours[0]) == (0, 0, 0)
    spread = colours[1:].max(axis=1).astype(int) - colours[1:].min(axis=1)
    assert (spread >= 60).all()  # saturated: never a grey a grey input could be taken for
    assert len({tuple(c) for c in colours}) == 40


def test_invert_flags(drawings, tmp_path):
    one = drawings / "digit_3.png"
    auto = zoo_cli("run", WEIGHTS / "lenet-mnist.onnx", "--input", one)
    kept = zoo_cli("run", WEIGHTS / "lenet-mnist.onnx", "--input", one, "--no-invert")
    assert auto.exit_code == kept.exit_code == 0
    assert "inverted" in auto.stderr and "inverted" not in kept.stderr
    assert auto.stdout.split(": ")[1][0] == "3"


def test_reconstructions_picture_and_array_inputs_still_need_an_output(drawings, tmp_path):
    out = tmp_path / "ae.png"
    result = zoo_cli("run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", drawings, "--output", out)
    assert result.exit_code == 0 and Image.open(out).height > 100
    np.save(tmp_path / "x.npy", np.zeros((1, 784), np.float32))
    result = zoo_cli("run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", tmp_path / "x.npy")
    assert result.exit_code == 2 and "--output file is needed" in result.output
    result = zoo_cli("run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", tmp_path / "x.npy", "--input", drawings)
    assert result.exit_code == 2 and "not both" in result.output


def test_sample_defaults_and_strip_scale(tmp_path):
    result = zoo_cli("sample", "cgen-mnist", "--out", tmp_path / "c.png")
    assert result.exit_code == 0 and "(10 samples" in result.output  # one per class, not 64 repeating
    grid = Image.open(tmp_path / "c.png")
    result = zoo_cli("sample", "dcgan-mnist", "--interpolate", "--out", tmp_path / "i.png")
    strip = Image.open(tmp_path / "i.png")
    assert result.exit_code == 0 and strip.height == grid.height >= 56  # scaled as the grids are


def test_visualize_prepares_the_image_as_run_does(drawings, tmp_path):
    result = zoo_cli("visualize", "deconvnet-digits", "--image", drawings / "digit_5.png", "--out", tmp_path / "v.png")
    assert result.exit_code == 0, result.output
    assert "inverted" in result.stderr and (tmp_path / "v.png").is_file()
