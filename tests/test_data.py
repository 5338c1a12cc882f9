"""zoo.data: the bundled data sets and their fixed stratified split, the image-folder loader and .npy input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.data import SPLIT_SEED, VAL_FRACTION, load_dataset, load_image_folder, split_indices

BUNDLED = {"mnist": (5000, 28, 28), "digits8": (1797, 8, 8)}


@pytest.fixture(scope="module", params=sorted(BUNDLED))
def bundled(request):
    """(name, the whole set, its train split, its val split), each loaded once."""
    name = request.param
    return name, load_dataset(name, "all"), load_dataset(name, "train"), load_dataset(name, "val")


# --- bundled data sets and the split ------------------------------------------------------------------


def test_bundled_shapes_and_range(bundled):
    name, full, _, _ = bundled
    n, h, w = BUNDLED[name]
    assert full.name == name
    assert full.images.shape == (n, h, w) and full.images.dtype == np.float32
    assert full.images.flags.c_contiguous
    assert full.images.min() == 0.0 and full.images.max() == 1.0
    assert full.labels.shape == (n,) and full.labels.dtype == np.int64
    assert set(np.unique(full.labels)) == set(range(10))
    assert full.flat.shape == (n, h * w) and len(full) == n
    if name == "mnist":
        assert np.all(np.bincount(full.labels) == 500)


def test_split_sizes_disjoint_and_cover(bundled):
    name, full, train, val = bundled
    n = len(full)
    tr, va = split_indices(n, full.labels)
    assert len(tr) + len(va) == n
    assert np.intersect1d(tr, va).size == 0
    assert np.array_equal(np.union1d(tr, va), np.arange(n))
    assert abs(len(va) - VAL_FRACTION * n) <= 10
    if name == "mnist":
        assert (len(tr), len(va)) == (4500, 500)
    # load_dataset's splits are exactly these rows, labels included
    assert np.array_equal(train.images, full.images[tr]) and np.array_equal(train.labels, full.labels[tr])
    assert np.array_equal(val.images, full.images[va]) and np.array_equal(val.labels, full.labels[va])
    assert train.images.dtype == val.images.dtype == np.float32


def test_split_is_stratified(bundled):
    name, full, train, val = bundled
    per_class = np.bincount(full.labels, minlength=10)
    in_val = np.bincount(val.labels, minlength=10)
    assert np.all(in_val > 0)
    assert np.array_equal(in_val + np.bincount(train.labels, minlength=10), per_class)
    # each class's share of the held-out set is 10% of that class, to within one example
    assert np.all(np.abs(in_val - VAL_FRACTION * per_class) <= 1), (in_val, per_class)
    if name == "mnist":
        assert np.all(in_val == 50)


def test_split_deterministic_and_independent_of_global_rng(bundled):
    name, full, train, val = bundled
    first = split_indices(len(full), full.labels)
    for s in (0, 1, 12345):
        np.random.seed(s)
        torch.manual_seed(s)
        np.random.random(17)
        torch.rand(17)
        again = split_indices(len(full), full.labels)
        assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    np.random.seed(99)
    torch.manual_seed(99)
    if name == "digits8":  # cheap to reload: the whole load_dataset path gives the same rows again
        again = load_dataset(name, "val")
        assert np.array_equal(again.images, val.images) and np.array_equal(again.labels, val.labels)


def test_split_unlabelled_and_tiny():
    tr, va = split_indices(100, None)
    assert len(va) == 10 and len(tr) == 90 and np.intersect1d(tr, va).size == 0
    tr2, va2 = split_indices(100, None)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, np.arange(10))  # shuffled, not the first tenth
    tr, va = split_indices(1, None)
    assert list(tr) == [0] and len(va) == 0
    assert isinstance(SPLIT_SEED, int)


def test_bundled_with_matching_size():
    d = load_dataset("digits8", "train", size=(8, 8))
    assert d.images.shape[1:] == (8, 8)


def test_bundled_with_wrong_size_rejected():
    with pytest.raises(zoo.ZooError, match="8x8.*28x28"):
        load_dataset("digits8", "train", size=(28, 28))


def test_unknown_split_rejected():
    with pytest.raises(zoo.ZooError, match="split"):
        load_dataset("digits8", "test")


def test_unknown_source_lists_bundled_names(tmp_path):
    for source in ("no-such-data", str(tmp_path / "missing.npy"), str(tmp_path / "file.txt")):
        if source.endswith(".txt"):
            (tmp_path / "file.txt").write_text("hello")
        with pytest.raises(zoo.ZooError) as e:
            load_dataset(source, "all")
        msg = str(e.value)
        assert "mnist" in msg and "digits8" in msg, msg


# --- a folder of images --------------------------------------------------------------------------------


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _gray(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


@pytest.fixture
def mixed_folder(tmp_path):
    """Grey and RGB PNGs of different sizes, one in a subfolder, written out of name order; returns the folder
    and the grey 8x8 pixels each sorted file should load to where no resizing is needed (else None)."""
    folder = tmp_path / "imgs"
    g = _gray(8, 8, 0)
    rgb_grey = np.repeat(_gray(8, 8, 1)[:, :, None], 3, axis=2)  # R = G = B, so its luminance is exact
    _save(folder / "c.png", g)
    _save(folder / "a.png", rgb_grey)
    _save(folder / "b.png", np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    _save(folder / "sub" / "d.png", _gray(5, 7, 3))
    (folder / "notes.txt").write_text("not an image")
    expected = {"a.png": rgb_grey[:, :, 0], "b.png": None, "c.png": g, "sub/d.png": None}
    return folder, expected


def test_image_folder_resized_sorted_and_scaled(mixed_folder):
    folder, expected = mixed_folder
    X = load_image_folder(folder, size=(8, 8))
    assert X.shape == (4, 8, 8) and X.dtype == np.float32
    assert X.min() >= 0.0 and X.max() <= 1.0
    for x, (name, pixels) in zip(X, sorted(expected.items())):
        if pixels is not None:
            np.testing.assert_array_equal(x, pixels.astype(np.float32) / 255.0, err_msg=name)


def test_image_folder_size_is_height_width(tmp_path):
    a = _gray(6, 10, 4)  # 6 rows, 10 columns
    _save(tmp_path / "a.png", a)
    _save(tmp_path / "b.png", _gray(10, 6, 5))
    X = load_image_folder(tmp_path, size=(6, 10))
    assert X.shape == (2, 6, 10)
    np.testing.assert_array_equal(X[0], a / np.float32(255.0))


def test_image_folder_same_size_without_resize(tmp_path):
    imgs = [_gray(5, 7, s) for s in range(3)]
    for i, a in enumerate(imgs):
        _save(tmp_path / f"{i}.png", a)
    X = load_image_folder(tmp_path)
    assert X.shape == (3, 5, 7) and X.dtype == np.float32
    np.testing.assert_array_equal(X, np.stack(imgs).astype(np.float32) / 255.0)


def test_image_folder_rgb_channels(tmp_path):
    a = np.random.default_rng(6).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    _save(tmp_path / "a.png", a)
    X = load_image_folder(tmp_path, channels=3)
    assert X.shape == (1, 4, 6, 3)
    np.testing.assert_array_equal(X[0], a / np.float32(255.0))


def test_image_folder_different_sizes_without_size(mixed_folder):
    folder, _ = mixed_folder
    with pytest.raises(zoo.ZooError, match="different sizes"):
        load_image_folder(folder)


def test_image_folder_empty(tmp_path):
    with pytest.raises(zoo.ZooError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "readme.txt").write_text("nothing to see")
    (tmp_path / "data.npy").write_bytes(b"")
    with pytest.raises(zoo.ZooError, match="no images"):
        load_image_folder(tmp_path)


@pytest.mark.parametrize("content", ["text", "empty", "truncated"])
def test_image_folder_corrupt_file_named(tmp_path, content):
    _save(tmp_path / "a_good.png", _gray(8, 8, 7))
    bad = tmp_path / "b_bad.png"
    if content == "text":
        bad.write_text("this is not a png")
    elif content == "empty":
        bad.write_bytes(b"")
    else:
        _save(bad, _gray(64, 64, 8))
        bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(zoo.ZooError) as e:
        load_image_folder(tmp_path, size=(8, 8))
    assert "b_bad.png" in str(e.value)


def test_load_dataset_from_folder(mixed_folder):
    folder, _ = mixed_folder
    d = load_dataset(str(folder), "all", size=(8, 8))
    assert d.images.shape == (4, 8, 8) and d.images.dtype == np.float32 and d.labels is None
    assert d.name == str(folder)
    np.testing.assert_array_equal(d.images, load_image_folder(folder, size=(8, 8)))
    # an unlabelled split still partitions the images
    tr = load_dataset(str(folder), "train", size=(8, 8))
    va = load_dataset(str(folder), "val", size=(8, 8))
    assert len(tr) + len(va) == 4 and len(va) >= 1 and tr.labels is None
    rows = {x.tobytes() for x in d.images}
    assert {x.tobytes() for x in np.concatenate([tr.images, va.images])} == rows


def test_load_dataset_folder_without_size_mixed_sizes(mixed_folder):
    folder, _ = mixed_folder
    with pytest.raises(zoo.ZooError):
        load_dataset(str(folder), "all")


# --- .npy arrays ---------------------------------------------------------------------------------------


def test_npy_three_dimensional(tmp_path):
    X = np.random.default_rng(0).random((12, 8, 8))
    np.save(tmp_path / "x.npy", X)
    d = load_dataset(str(tmp_path / "x.npy"), "all", size=(8, 8))
    assert d.images.shape == (12, 8, 8) and d.images.dtype == np.float32 and d.labels is None
    np.testing.assert_array_equal(d.images, X.astype(np.float32))
    d = load_dataset(str(tmp_path / "x.npy"), "all")  # no size needed for (N, H, W)
    assert d.images.shape == (12, 8, 8)


def test_npy_flat_with_size(tmp_path):
    X = np.random.default_rng(1).random((12, 24)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    d = load_dataset(str(tmp_path / "x.npy"), "all", size=(4, 6))
    assert d.images.shape == (12, 4, 6)
    np.testing.assert_array_equal(d.images, X.reshape(12, 4, 6))  # row-major
    tr = load_dataset(str(tmp_path / "x.npy"), "train", size=(4, 6))
    va = load_dataset(str(tmp_path / "x.npy"), "val", size=(4, 6))
    assert len(tr) + len(va) == 12 and len(va) == 1


def test_npy_flat_without_size_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 64), np.float32))
    with pytest.raises(zoo.ZooError, match="shape"):
        load_dataset(str(tmp_path / "x.npy"), "all")
    with pytest.raises(zoo.ZooError, match="shape"):
        load_dataset(str(tmp_path / "x.npy"), "all", size=(7, 7))  # 49 != 64 pixels


@pytest.mark.parametrize("bad", [1.5, -0.01, 255.0])
def test_npy_values_outside_unit_interval(tmp_path, bad):
    X = np.random.default_rng(2).random((4, 8, 8)).astype(np.float32)
    X[2, 3, 4] = bad
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(zoo.ZooError, match=r"\[0, 1\]"):
        load_dataset(str(tmp_path / "x.npy"), "all")


def test_npy_uint8_pixels_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.full((2, 8, 8), 200, np.uint8))
    with pytest.raises(zoo.ZooError):
        load_dataset(str(tmp_path / "x.npy"), "all")


def test_npy_wrong_image_size_for_model(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.float32))
    with pytest.raises(zoo.ZooError, match="expects 28x28"):
        load_dataset(str(tmp_path / "x.npy"), "train", size=(28, 28))


def test_split_same_in_a_fresh_process(tmp_path):
    """The split depends on nothing in the process: a new interpreter (other hash seed) gives the same rows."""
    labels = np.random.default_rng(3).integers(0, 10, 1000)
    np.save(tmp_path / "labels.npy", labels)
    code = (
        "import sys, numpy as np; from zoo.data import split_indices; "
        "tr, va = split_indices(1000, np.load(sys.argv[1])); np.save(sys.argv[2], va)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "labels.npy"), str(tmp_path / "va.npy")],
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
        timeout=60,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "va.npy"), split_indices(1000, labels)[1])
