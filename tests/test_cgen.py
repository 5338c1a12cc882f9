"""The class-conditional generator's held-out figures (zoo/models/cgen.py): how close its images are to the
held-out class means (Pearson correlation, against np.corrcoef and against images built to have a known class
mean) and how much contrast they have (against hand-made images whose figures are known)."""

from __future__ import annotations

import numpy as np
import pytest

import zoo
from zoo.models.cgen import FULL_STROKE, INK, contrast_figures, pearson

H = W = 6
CLASSES = 3


def small_model():
    """A 6x6 generator with random weights: LeNet's class_accuracy needs 28x28 and stays out."""
    import torch

    torch.manual_seed(0)
    return zoo.create_model("cgen-mnist", classes=CLASSES, hidden=[8], image_size=[H, W])


def held_out(seed: int = 0, per_class: int = 4):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), per_class)
    return rng.random((len(labels), H, W)).astype(np.float32), labels


def test_pearson_matches_corrcoef_and_is_one_on_itself():
    a, _ = held_out(1)
    b, _ = held_out(2)
    expected = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(pearson(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(pearson(a, a), 1.0, rtol=1e-12)
    np.testing.assert_allclose(pearson(a, 3 * a + 0.5), 1.0, rtol=1e-12)  # blind to brightness and gain
    np.testing.assert_allclose(pearson(a, 1 - a), -1.0, rtol=1e-12)
    assert np.isnan(pearson(a[:1], np.full((1, H, W), 0.25))).all()  # a constant image has no correlation


def test_class_mean_figures_match_corrcoef():
    model = small_model()
    images, labels = held_out()
    got = model.evaluate(images, labels)
    generated = model.typical_digits()
    means = [images[labels == c].mean(0) for c in range(CLASSES)]
    r = [np.corrcoef(generated[c].ravel(), means[c].ravel())[0, 1] for c in range(CLASSES)]
    assert got["class_mean_correlation_min"] == pytest.approx(min(r), rel=1e-9)
    assert got["class_mean_correlation_mean"] == pytest.approx(np.mean(r), rel=1e-9)
    real = [np.corrcoef(x.ravel(), means[y].ravel())[0, 1] for x, y in zip(images, labels)]
    assert got["real_class_mean_correlation_mean"] == pytest.approx(np.mean(real), rel=1e-9)
    assert "class_accuracy" not in got


def test_images_that_are_the_class_means_correlate_perfectly():
    """Held-out digits built as G(c) +- d: their class mean is G(c), so the correlation is 1 and the squared
    error to the class mean 0, whatever the real digits' own correlation is."""
    model = small_model()
    generated = model.typical_digits()  # (classes, H, W), in (0, 1)
    d = 0.5 * np.minimum(generated, 1 - generated) * np.random.default_rng(3).choice([-1, 1], generated.shape)
    images = np.concatenate([generated + d, generated - d]).astype(np.float32)  # (2 classes, H, W)
    labels = np.tile(np.arange(CLASSES), 2)
    got = model.evaluate(images, labels)
    assert got["class_mean_correlation_min"] == pytest.approx(1.0, abs=1e-6)
    assert got["class_mean_correlation_mean"] == pytest.approx(1.0, abs=1e-6)
    assert got["mse_to_class_mean"] == pytest.approx(0.0, abs=1e-12)
    assert got["real_class_mean_correlation_mean"] < 0.99


def test_classes_without_held_out_digits_are_left_out():
    model = small_model()
    images, labels = held_out()
    some = labels != 1
    got = model.evaluate(images[some], labels[some])
    assert all(np.isfinite(v) for v in got.values())
    generated = model.typical_digits()
    r = [np.corrcoef(generated[c].ravel(), images[labels == c].mean(0).ravel())[0, 1] for c in (0, 2)]
    assert got["class_mean_correlation_min"] == pytest.approx(min(r), rel=1e-9)


def test_contrast_figures_of_hand_made_images():
    stroke = np.zeros((H, W), np.float32)
    stroke[1, 1:4] = 1.0  # the core of a stroke
    stroke[2, 1:4] = 0.5  # its grey edge
    blur = np.zeros((H, W), np.float32)
    blur[1:3, 1:4] = 0.4  # all grey, nothing saturated
    blank = np.zeros((H, W), np.float32)
    assert INK < 0.4 < 0.5 < FULL_STROKE < 1.0
    assert contrast_figures(stroke[None]) == {"max_pixel_mean": 1.0, "grey_fraction": 0.5}
    assert contrast_figures(blur[None]) == pytest.approx({"max_pixel_mean": 0.4, "grey_fraction": 1.0})
    # an image without ink counts for its brightest pixel and not for the grey share
    both = contrast_figures(np.stack([stroke, blank]))
    assert both == pytest.approx({"max_pixel_mean": 0.5, "grey_fraction": 0.5})


def test_evaluate_gives_contrast_of_generated_and_held_out_images():
    model = small_model()
    images, labels = held_out()
    got = model.evaluate(images, labels)
    assert {k: got[k] for k in ("max_pixel_mean", "grey_fraction")} == contrast_figures(model.typical_digits())
    assert {k: got[f"real_{k}"] for k in ("max_pixel_mean", "grey_fraction")} == contrast_figures(images)
