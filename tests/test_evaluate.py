"""The offline GAN figures against their definitions: Fréchet distance and the Inception-style score."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.evaluate import frechet_distance, inception_score


def test_frechet_distance_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).standard_normal((500, 8))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_gaussians_in_closed_form():
    """Same covariance, means apart by d: the distance is ||d||^2. Covariances s1 I and s2 I (means equal):
    k (sqrt(s1) - sqrt(s2))^2."""
    rng = np.random.default_rng(1)
    f = rng.standard_normal((4000, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert frechet_distance(f, f + shift) == pytest.approx(float((shift**2).sum()), rel=1e-9)
    f = f - f.mean(0)
    assert frechet_distance(f, 3 * f) == pytest.approx(np.trace(np.cov(f, rowvar=False)) * (1 - 3) ** 2, rel=1e-6)


def test_inception_score_bounds():
    classes = 10
    confident_and_diverse = np.eye(classes)[np.arange(1000) % classes] * 50.0  # logits
    assert inception_score(confident_and_diverse) == pytest.approx(classes, rel=1e-6)
    one_class = np.tile(np.eye(classes)[3] * 50.0, (1000, 1))
    assert inception_score(one_class) == pytest.approx(1.0, abs=1e-6)
    uniform = np.zeros((1000, classes))
    assert inception_score(uniform) == pytest.approx(1.0, abs=1e-9)


def test_pixel_pca_matches_scikit_learn():
    """The second instrument's axes: the training digits' principal components, as scikit-learn finds them
    (up to each axis's sign); projections of the same digits then agree."""
    from sklearn.decomposition import PCA

    from zoo.data import load_dataset
    from zoo.evaluate import PCA_COMPONENTS, pca_features, pixel_pca

    train = load_dataset("mnist", "train", size=(28, 28)).images  # (N, 28, 28)
    oracle = PCA(n_components=PCA_COMPONENTS, svd_solver="full").fit(train.reshape(len(train), -1))
    mean, axes = pixel_pca()
    np.testing.assert_allclose(mean, oracle.mean_, atol=1e-5)  # scikit-learn sums in float32
    signs = np.sign((axes * oracle.components_).sum(1))[:, None]  # (k, 1)
    np.testing.assert_allclose(axes * signs, oracle.components_, atol=2e-4)
    mine = pca_features(train[:100]) * signs.T
    np.testing.assert_allclose(mine, oracle.transform(train[:100].reshape(100, -1)), atol=1e-3)


def test_real_digits_score_at_their_floor():
    """Held-out-sized draws of real training digits, fed as if generated, score what the floor says: the floor
    is the same computation on the same kind of draws."""
    from zoo.data import load_dataset
    from zoo.evaluate import DRAWS, classify, generative_figures, real_data_floor

    train = load_dataset("mnist", "train", size=(28, 28)).images
    val = load_dataset("mnist", "val", size=(28, 28)).images
    draws = [train[np.random.default_rng(s).choice(len(train), len(val), replace=False)] for s in range(DRAWS)]
    got, floor = generative_figures(draws, val), real_data_floor()
    assert got["fid"] == frechet_distance(classify(draws[0])[1], classify(val)[1])  # the first draw's, alone
    for key in ("fid", "inception_score", "pca_fd", "confident"):
        assert got[f"{key}_mean"] == pytest.approx(floor[f"floor_{key}_mean"], rel=1e-6), key
        assert got[f"{key}_sd"] == pytest.approx(floor[f"floor_{key}_sd"], rel=1e-6), key
    assert 0.05 < floor["floor_class_share_min"] <= 0.1 <= floor["floor_class_share_max"] < 0.15
    assert floor["floor_inception_score_mean"] > 9 and floor["floor_confident_mean"] > 0.9
    blurred = [(d + np.roll(d, 1, axis=1) + np.roll(d, 1, axis=2)) / 3 for d in draws]  # worse digits
    worse = generative_figures(blurred, val)
    assert worse["fid_mean"] > floor["floor_fid_mean"] and worse["pca_fd_mean"] > floor["floor_pca_fd_mean"]


def test_digit_groups_join_a_broken_stroke_but_not_two_digits():
    from zoo.evaluate import _digit_groups

    mask = np.zeros((48, 48), bool)
    mask[5:10, 5:8] = mask[13:18, 5:8] = True  # one digit broken in two: joint box 13x3
    mask[30:45, 30:40] = True  # another digit far away: the joint box would be 40 pixels tall
    blobs, groups = _digit_groups(mask, side=20)
    assert sorted(len(g) for g in groups) == [1, 2]
    joined = next(g for g in groups if len(g) == 2)
    assert set(np.unique(blobs[5:18, 5:8])) - {0} == set(joined)


def test_threshold_baseline_finds_exactly_the_labelled_ink():
    """The labels mark a digit where its stroke is at least SEG_STROKE: the baseline's ink is the truth's
    (background IoU 1), and LeNet names most digits; its figures go on DeconvNet's card beside the net's."""
    from zoo.data import SEG_DIGIT, SEG_STROKE, load_dataset
    from zoo.evaluate import segmentation_scores, threshold_and_classify

    val = load_dataset("mnist-seg", "val", size=(48, 48))
    images, labels = val.images[:100], val.labels[:100]
    pred = threshold_and_classify(images, SEG_STROKE, SEG_DIGIT)
    np.testing.assert_array_equal(pred > 0, labels > 0)
    scores = segmentation_scores(pred, labels, 11)
    assert scores["val_iou_background"] == 1.0 and scores["val_miou_digits"] > 0.85
    assert {f"val_iou_class_{k}" for k in range(1, 11)} <= set(scores)


def test_per_class_figures_of_real_digits():
    """Real training digits, asked for as their own classes, score as the instruments see real digits: LeNet's
    and the SVM's accuracies are their accuracies on those digits (computed here directly), each class's FID
    sits near its floor, and digits labelled with the wrong class fail that class."""
    from sklearn.svm import SVC

    from zoo.data import load_dataset
    from zoo.evaluate import classify, per_class_figures

    train = load_dataset("mnist", "train", size=(28, 28))
    val = load_dataset("mnist", "val", size=(28, 28))
    rng = np.random.default_rng(7)
    picks = np.concatenate([rng.choice(np.flatnonzero(train.labels == k), 50, replace=False) for k in range(10)])
    draws, intended = [train.images[picks]], train.labels[picks]
    got = per_class_figures(draws, [intended], val.images, val.labels)
    lenet = classify(train.images[picks])[0].argmax(1)
    assert got["class_accuracy"] == pytest.approx(float((lenet == intended).mean()), abs=1e-12)
    svm = SVC(C=10.0, gamma=0.02).fit(train.images.reshape(len(train.images), -1), train.labels)
    oracle = svm.predict(train.images[picks].reshape(len(picks), -1))  # on its own training digits
    assert got["class_accuracy_svm"] == pytest.approx(float((oracle == intended).mean()), abs=1e-12)
    assert 0.95 < got["real_class_accuracy_svm"] < got["real_class_accuracy"] + 0.02  # the ceilings
    for k in range(10):
        assert got[f"class_accuracy_{k}"] > 0.9
        assert got[f"fid_class_{k}"] < 3 * got[f"floor_fid_class_{k}"], k
    wrong = per_class_figures(draws, [(intended + 1) % 10], val.images, val.labels)
    assert wrong["class_accuracy_min"] < 0.1 and wrong["class_accuracy_svm"] < 0.1
    assert all(wrong[f"fid_class_{k}"] > got[f"fid_class_{k}"] for k in range(10))
