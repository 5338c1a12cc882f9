"""Evaluating generated digits offline, with the zoo's own LeNet in place of an Inception network (no
downloads): the Fréchet distance between its penultimate features of generated and real digits (Heusel et
al. 2017's FID, on 84-d LeNet features), a classifier-based Inception score (Salimans et al. 2016: 10 is the
ceiling for 10 classes), and per-class accuracy for class-conditional generators.

A second instrument that owes nothing to LeNet stands beside it: the Fréchet distance between the digits'
projections on the leading principal components of the training digits' pixels (``pixel_pca``). One FID draw
moves by several units, so the generative figures are means and standard deviations over ``DRAWS`` draws of
``len(held-out)`` images, and the real-data floor is measured the same way: ``DRAWS`` random subsets of the
training digits of that size against the same held-out digits (``real_data_floor``).

The classifier runs from the shipped ``lenet-mnist.onnx`` through this runtime, so these figures can be
recomputed on a machine without torch. No torch here.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

CLASSIFIER = "lenet-mnist"
IMAGE_SIZE = (28, 28)
DRAWS = 5  # generative figures: mean and sd over this many draws
PCA_COMPONENTS = 50  # the pixel instrument: principal components of the training digits
CONFIDENT = 0.9  # a generated digit "is one digit" when LeNet gives one class at least this probability


@functools.lru_cache(maxsize=4)
def _classifier(path: str, backend: str):
    import runtime

    return runtime.InferenceSession(path, backend=backend)


def classifier_path(weights_dir=None) -> Path:
    from zoo.cards import default_weights_dir

    return Path(weights_dir or default_weights_dir()) / f"{CLASSIFIER}.onnx"


def classify(images: np.ndarray, weights_dir=None, backend: str = "cpu", batch: int = 500):
    """(logits (N, 10), features (N, 84)) of LeNet for digits (N, 28, 28) in [0, 1]."""
    sess = _classifier(str(classifier_path(weights_dir)), backend)
    x = np.ascontiguousarray(images, dtype=np.float32)[:, None]  # (N, 1, 28, 28)
    outs = [sess.run(None, {"image": x[i : i + batch]}) for i in range(0, len(x), batch)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fitted to two feature sets."""
    from scipy import linalg

    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead ReLU features make the covariances singular
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # as pytorch-fid: regularise the diagonal and retry
            offset = np.eye(len(s1)) * 1e-6
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real  # numerical noise from a nearly singular product
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(logits: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))) over one split."""
    p = softmax(logits)  # (N, classes)
    p_y = p.mean(axis=0, keepdims=True)  # (1, classes)
    kl = (p * (np.log(p + 1e-12) - np.log(p_y + 1e-12))).sum(axis=1)
    return float(np.exp(kl.mean()))


def available(weights_dir=None) -> bool:
    return classifier_path(weights_dir).is_file()


def class_accuracy(generated: np.ndarray, classes: np.ndarray, weights_dir=None) -> dict:
    """The classifier's accuracy on generated digits whose intended classes are ``classes``."""
    if generated.shape[1:] != IMAGE_SIZE or not available(weights_dir):
        return {}
    predicted = classify(generated, weights_dir)[0].argmax(axis=1)
    return {"class_accuracy": float((predicted == classes).mean())}


@functools.lru_cache(maxsize=1)
def pixel_svm():
    """The second classifier, sharing nothing with LeNet but the training digits: scikit-learn's RBF support
    vector machine on their raw pixels (C 10, gamma 0.02; 97 % on the held-out digits). Deterministic; fitted
    once per process (2 s)."""
    from sklearn.svm import SVC

    from zoo.data import load_dataset

    train = load_dataset("mnist", "train", size=IMAGE_SIZE)
    return SVC(C=10.0, gamma=0.02).fit(train.images.reshape(len(train.images), -1), train.labels)


def svm_classify(images: np.ndarray) -> np.ndarray:
    """(N,) classes the pixel SVM gives digits (N, 28, 28) in [0, 1]."""
    return pixel_svm().predict(images.reshape(len(images), -1).astype(np.float64))


def per_class_figures(
    draws: list[np.ndarray], intended: list[np.ndarray], real: np.ndarray, real_labels: np.ndarray, weights_dir=None
) -> dict:
    """A class-conditional generator's figures, pooled over ``draws`` (each (n, 28, 28) in [0, 1], with its
    intended classes (n,) in ``intended``): per class, the accuracy of LeNet and of the pixel SVM, and LeNet's FID
    against the held-out digits of that class beside its floor, as many training digits of the class (seed 0)
    against the same held-out ones (where both hold 2 or more); ``*_min`` the worst class. The same accuracies of
    the held-out digits (``real_*``) say where each instrument's ceiling is. Empty without the classifier or 28x28
    images."""
    if not draws or draws[0].shape[1:] != IMAGE_SIZE or not available(weights_dir):
        return {}
    from zoo.data import load_dataset

    generated = np.concatenate(draws)  # (D * n, 28, 28)
    wanted = np.concatenate(intended)  # (D * n,)
    g_logits, g_features = classify(generated, weights_dir)
    r_logits, r_features = classify(real, weights_dir)
    train = load_dataset("mnist", "train", size=IMAGE_SIZE)
    t_features = _split_classified("train", weights_dir)[2]
    lenet, svm = g_logits.argmax(1), svm_classify(generated)
    real_lenet, real_svm = r_logits.argmax(1), svm_classify(real)
    out = {
        "class_accuracy": float((lenet == wanted).mean()),
        "class_accuracy_svm": float((svm == wanted).mean()),
        "real_class_accuracy": float((real_lenet == real_labels).mean()),
        "real_class_accuracy_svm": float((real_svm == real_labels).mean()),
    }
    rng = np.random.default_rng(0)
    for k in np.unique(wanted):
        mine, theirs = wanted == k, real_labels == k
        pool = np.flatnonzero(train.labels == k)
        subset = rng.choice(pool, min(int(mine.sum()), len(pool)), replace=False)  # the floor at matched size
        out |= {
            f"class_accuracy_{k}": float((lenet[mine] == k).mean()),
            f"class_accuracy_svm_{k}": float((svm[mine] == k).mean()),
        }
        if min(len(subset), int(theirs.sum())) < 2:  # no covariance from fewer than 2 digits (a tiny held-out set)
            continue
        out |= {
            f"fid_class_{k}": frechet_distance(g_features[mine][: len(subset)], r_features[theirs]),
            f"floor_fid_class_{k}": frechet_distance(t_features[subset], r_features[theirs]),
        }
    for key in ("class_accuracy", "class_accuracy_svm"):
        out[f"{key}_min"] = min(out[f"{key}_{k}"] for k in np.unique(wanted))
    return out


@functools.lru_cache(maxsize=1)
def pixel_pca() -> tuple[np.ndarray, np.ndarray]:
    """(mean (784,), components (PCA_COMPONENTS, 784)): the principal axes of the bundled training digits'
    pixels, from an SVD in float64 (signs do not matter to a Fréchet distance)."""
    from zoo.data import load_dataset

    train = load_dataset("mnist", "train", size=IMAGE_SIZE).images.reshape(-1, IMAGE_SIZE[0] * IMAGE_SIZE[1])
    mean = train.mean(0, dtype=np.float64)  # (784,)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)  # vt: (784, 784), rows by variance
    return mean, vt[:PCA_COMPONENTS]


def pca_features(images: np.ndarray) -> np.ndarray:
    """(N, PCA_COMPONENTS) projections of digits (N, 28, 28) in [0, 1] on ``pixel_pca``'s axes."""
    mean, axes = pixel_pca()
    return (images.reshape(len(images), -1).astype(np.float64) - mean) @ axes.T


def _spread(name: str, values: list[float]) -> dict:
    return {f"{name}_mean": float(np.mean(values)), f"{name}_sd": float(np.std(values, ddof=1))}


def _draw_figures(logits, features, pca, real_features, real_pca) -> dict:
    p = softmax(logits)  # (n, 10)
    return {
        "fid": frechet_distance(features, real_features),
        "inception_score": inception_score(logits),
        "pca_fd": frechet_distance(pca, real_pca),
        "shares": np.bincount(p.argmax(1), minlength=p.shape[1]) / len(p),  # (10,)
        "confident": float((p.max(1) >= CONFIDENT).mean()),
    }


def _summarise(draws: list[dict], prefix: str = "") -> dict:
    out = {}
    for key in ("fid", "inception_score", "pca_fd", "confident"):
        out |= _spread(prefix + key, [d[key] for d in draws])
    shares = np.mean([d["shares"] for d in draws], axis=0)  # (10,): each class's share, mean over the draws
    out[prefix + "class_share_min"] = float(shares.min())
    out[prefix + "class_share_max"] = float(shares.max())
    return out


def generative_figures(draws: list[np.ndarray], real: np.ndarray, weights_dir=None) -> dict:
    """Mean and sd over ``draws`` (each (n, 28, 28) in [0, 1], n = len(real)) of: LeNet's FID against
    ``real`` (the held-out digits), its Inception-style score, the pixel-PCA Fréchet distance, the share of
    confidently classified digits; and the smallest and largest class share (LeNet's argmax, mean over the
    draws); ``fid`` and ``inception_score`` alone are the first draw's (the single-draw figures of earlier
    cards). Empty when the classifier is not shipped or the images are not 28x28."""
    if not draws or draws[0].shape[1:] != IMAGE_SIZE or not available(weights_dir):
        return {}
    _, real_features = classify(real, weights_dir)
    real_pca = pca_features(real)
    figures = [_draw_figures(*classify(g, weights_dir), pca_features(g), real_features, real_pca) for g in draws]
    return {"fid": figures[0]["fid"], "inception_score": figures[0]["inception_score"], **_summarise(figures)}


@functools.lru_cache(maxsize=2)
def _split_classified(split: str, weights_dir=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, 28, 28), LeNet logits, LeNet features) of a split of the bundled digits, once per process."""
    from zoo.data import load_dataset

    images = load_dataset("mnist", split, size=IMAGE_SIZE).images
    return (images, *classify(images, weights_dir))


@functools.lru_cache(maxsize=2)
def real_data_floor(weights_dir=None) -> dict:
    """What real digits score, at the generators' sample sizes: FID between the training and held-out split
    (one subset, and ``DRAWS`` subsets as ``floor_*_mean``/``_sd``), held-out Inception score."""
    train, t_logits, t_features = _split_classified("train", weights_dir)
    val, v_logits, v_features = _split_classified("val", weights_dir)
    # as many training digits as held-out ones, drawn at random (the data are ordered by class): the same
    # sample sizes as the generators' figures, 500 generated against the 500 held-out
    subset = np.random.default_rng(0).choice(len(train), len(val), replace=False)
    t_pca, v_pca = pca_features(train), pca_features(val)
    subsets = [np.random.default_rng(seed).choice(len(train), len(val), replace=False) for seed in range(DRAWS)]
    draws = [_draw_figures(t_logits[s], t_features[s], t_pca[s], v_features, v_pca) for s in subsets]
    return {
        "fid_train_vs_val": frechet_distance(t_features[subset], v_features),
        "fid_all_train_vs_val": frechet_distance(t_features, v_features),
        "inception_score_val": inception_score(v_logits),
        "inception_score_train": inception_score(t_logits),
        **_summarise(draws, prefix="floor_"),
    }


def _digit_groups(mask: np.ndarray, side: int) -> tuple[np.ndarray, list[list[int]]]:
    """(component labels (H, W), groups of component ids): the 8-connected ink components of ``mask``, joined
    greedily (the pair whose joint bounding box is smallest first) while the joint box fits ``side`` x ``side``,
    so that a digit whose stroke breaks below the threshold is read whole."""
    from scipy import ndimage

    blobs, count = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = [[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in ndimage.find_objects(blobs)]
    groups = [[k + 1] for k in range(count)]
    while True:
        best = None
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                u = [min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])]
                if u[1] - u[0] <= side and u[3] - u[2] <= side:
                    area = (u[1] - u[0]) * (u[3] - u[2])
                    if best is None or area < best[0]:
                        best = (area, i, j, u)
        if best is None:
            return blobs, groups
        _, i, j, boxes[i] = best
        groups[i] += groups.pop(j)
        boxes.pop(j)


def threshold_and_classify(canvases: np.ndarray, stroke: float, digit_side: int = 20, weights_dir=None) -> np.ndarray:
    """A segmentation without training, the baseline a segmentation network must beat on digit canvases:
    every pixel at least ``stroke`` is ink; ink components are grouped into digits no larger than
    ``digit_side`` (``_digit_groups``), each cut out with its soft edges, fitted into 28x28 by MNIST's recipe
    and classified by LeNet; a digit's ink pixels get 1 + its class.
    canvases (N, H, W) in [0, 1] -> label maps (N, H, W) int64."""
    from scipy import ndimage

    from zoo.images import fit_digit

    pred = np.zeros(canvases.shape, np.int64)
    crops, where = [], []
    for n, canvas in enumerate(canvases):
        blobs, groups = _digit_groups(canvas >= stroke, digit_side)
        for group in groups:
            member = np.isin(blobs, group)  # (H, W): this digit's ink
            rows, cols = np.flatnonzero(member.any(1)), np.flatnonzero(member.any(0))
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            edges = ndimage.binary_dilation(member)[box]  # the ink and the pixels around it
            crops.append(fit_digit(np.where(edges, canvas[box], 0.0), 20, 28))
            where.append((n, member))
    if crops:
        classes = classify(np.stack(crops), weights_dir)[0].argmax(1)
        for (n, member), c in zip(where, classes):
            pred[n][member] = c + 1
    return pred


_BASELINES: dict[str, dict] = {}  # threshold_baseline_scores by the digest of what it was given


def threshold_baseline_scores(
    canvases: np.ndarray, truth: np.ndarray, classes: int, stroke: float, digit_side: int = 20
) -> dict:
    """``segmentation_scores`` of ``threshold_and_classify`` on canvases (N, H, W) against label maps
    ``truth``, as ``baseline_*`` keys; computed once per process for the same canvases (a network's evaluation
    after every epoch sees the same held-out set)."""
    import hashlib

    key = hashlib.sha256(np.ascontiguousarray(canvases).tobytes() + np.ascontiguousarray(truth).tobytes())
    key = f"{key.hexdigest()}:{canvases.shape}:{classes}:{stroke}:{digit_side}"
    if key not in _BASELINES:
        scores = segmentation_scores(threshold_and_classify(canvases, stroke, digit_side), truth, classes)
        _BASELINES[key] = {f"baseline_{k}": v for k, v in scores.items()}
    return dict(_BASELINES[key])


def segmentation_scores(pred: np.ndarray, truth: np.ndarray, classes: int) -> dict:
    """Pixel accuracy and mean intersection over union (the PASCAL VOC measure: per class, |P ∩ T| / |P ∪ T|
    over the whole set, averaged over the classes present in the truth or the prediction).

    pred, truth: (N, H, W) class indices."""
    pred, truth = np.asarray(pred).ravel().astype(np.int64), np.asarray(truth).ravel().astype(np.int64)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction has {pred.size} pixels and truth {truth.size}; expected the same")
    confusion = np.bincount(truth * classes + pred, minlength=classes * classes).reshape(classes, classes)
    hits = np.diag(confusion).astype(np.float64)  # (classes,)
    union = confusion.sum(0) + confusion.sum(1) - hits  # (classes,): |P| + |T| - |P ∩ T|
    present = union > 0
    iou = np.where(present, hits / np.maximum(union, 1), np.nan)
    return {
        "val_pixel_accuracy": float(hits.sum() / max(1, confusion.sum())),
        "val_miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "val_iou_background": float(iou[0]),
        "val_miou_digits": float(np.nanmean(iou[1:])) if present[1:].any() else float("nan"),
        **{f"val_iou_class_{k}": float(iou[k]) for k in range(1, classes) if present[k]},
    }
