"""Images in: one preprocessing for every way a picture reaches a model (``zoo run --input a.png``, ``zoo
visualize --image``, ``zoo.pretrained_weights(...).transforms()`` in Python, with or without torch).

What a model expects is read from its ONNX file (the input's shape and ``metadata_props``: ``image_size``,
``input_range``, the data it was trained on) or from a checkpoint's config: size, channels, value range ([0, 1]
or [-1, 1]), layout (flat rows or NCHW), and the polarity of the bundled digits — white strokes on black. A
picture of dark ink on light paper is detected (its border is brighter than its middle) and inverted, and the
notes say so; ``invert=True/False`` forces either. Single-digit models get MNIST's own recipe (LeCun et al.):
the ink's bounding box fitted into 20x20 keeping its aspect ratio, then centred by its centre of mass in 28x28
(scikit-learn's 8x8 digits: the box fitted into 8x8). Other inputs (DeconvNet's canvases) are resized whole.
No torch here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import ZooError

# digit recipes by the data a model was trained on: (box the ink is fitted into, canvas side)
DIGIT_RECIPES = {"mnist": (20, 28), "digits8": (8, 8)}


@dataclass(frozen=True)
class InputSpec:
    """What one image input of a model takes."""

    name: str
    size: tuple[int, int]  # (H, W)
    channels: int
    value_range: tuple[float, float]  # what pixel 0 and pixel 1 become: (0, 1) or (-1, 1)
    flat: bool  # (N, H*W*C) rows instead of (N, C, H, W)
    recipe: str | None = None  # a key of DIGIT_RECIPES, or None: resize the whole picture

    @classmethod
    def from_onnx(cls, name: str, shape: list, meta: dict) -> InputSpec:
        """From an ONNX input (its name and shape, a symbolic batch first) and the model's metadata_props."""
        size = _size(meta.get("image_size"))
        dims = list(shape[1:])
        if size is None or not all(isinstance(d, int) for d in dims):
            raise ZooError(f"input '{name}' of shape {shape} is not an image input; expected (N, C, H, W) or (N, H*W)")
        h, w = size
        if len(dims) == 1 and dims[0] % (h * w) == 0:
            channels, flat = dims[0] // (h * w), True
        elif len(dims) == 3 and tuple(dims[1:]) == (h, w):
            channels, flat = dims[0], False
        else:
            raise ZooError(f"input '{name}' of shape {shape} does not hold {h}x{w} images (metadata image_size)")
        value_range = (-1.0, 1.0) if meta.get("input_range") == "[-1, 1]" else (0.0, 1.0)
        data = meta.get("data")
        if data is None:  # files exported before the run's settings were recorded kept them in the config
            try:
                data = json.loads(meta.get("config", "{}")).get("dataset")
            except json.JSONDecodeError:
                data = None
        recipe = data if data in DIGIT_RECIPES and channels == 1 and size[0] == DIGIT_RECIPES[data][1] else None
        return cls(name, size, channels, value_range, flat, recipe)

    @classmethod
    def from_session(cls, session) -> InputSpec:
        """The first input of an onnxruntime-style session (this runtime's or onnxruntime's)."""
        arg = session.get_inputs()[0]
        return cls.from_onnx(arg.name, list(arg.shape), dict(session.get_modelmeta().custom_metadata_map))

    def __call__(self, images, invert: bool | None = None) -> np.ndarray:
        return preprocess(images, self, invert)[0]


def _size(text) -> tuple[int, int] | None:
    try:
        h, w = (int(v) for v in str(text).split("x"))
    except ValueError:
        return None
    return (h, w) if h > 0 and w > 0 else None


def looks_inverted(pixels: np.ndarray) -> bool:
    """Dark strokes on a light background: the outer tenth of the picture brighter than the whole's median
    brightness and than half-grey (a white-on-black digit's border is its darkest part)."""
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    h, w = grey.shape
    bh, bw = max(1, h // 10), max(1, w // 10)
    border = np.concatenate([grey[:bh].ravel(), grey[-bh:].ravel(), grey[:, :bw].ravel(), grey[:, -bw:].ravel()])
    return float(np.median(border)) > 0.5 and float(np.median(border)) >= float(np.median(grey))


def fit_digit(grey: np.ndarray, box: int, side: int) -> np.ndarray:
    """MNIST's recipe on an (H, W) white-on-black picture: the ink's bounding box scaled to fit ``box`` x ``box``
    (aspect kept), placed in a ``side`` x ``side`` canvas with its centre of mass at the centre."""
    from zoo.data import _resize

    ink = grey > 0.1 * float(grey.max(initial=0))
    if not ink.any():
        return _resize(grey, (side, side))
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # (h, w) the ink's box
    scale = box / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    digit = _resize(crop, (h, w))
    canvas = np.zeros((side, side), np.float32)
    mass = digit.sum()
    cy, cx = ((np.indices(digit.shape) * digit).reshape(2, -1).sum(1) / mass) if mass > 0 else (h / 2, w / 2)
    top = int(np.clip(round(side / 2 - cy), 0, side - h))
    left = int(np.clip(round(side / 2 - cx), 0, side - w))
    canvas[top : top + h, left : left + w] = digit
    return canvas


def preprocess(images, spec: InputSpec, invert: bool | None = None) -> tuple[np.ndarray, list[str]]:
    """``images`` (paths, or arrays of pixels in [0, 1], (H, W) or (H, W, 3)) as one float32 batch for ``spec``,
    and notes saying what was done beyond resizing (inversions)."""
    from zoo.data import _resize, load_image

    if isinstance(images, (str, Path, np.ndarray)):
        images = [images]
    out, notes = [], []
    for item in images:
        what = str(item) if isinstance(item, (str, Path)) else "image"
        pixels = load_image(item, spec.channels) if isinstance(item, (str, Path)) else _checked_array(item)
        if spec.channels == 1 and pixels.ndim == 3:
            pixels = pixels.mean(axis=2)
        elif spec.channels == 3 and pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        flip = looks_inverted(pixels) if invert is None else invert
        if flip:
            pixels = 1.0 - pixels
            if invert is None:
                notes.append(f"{what}: dark strokes on a light background, inverted (--no-invert keeps it as is)")
        if spec.recipe is not None:
            pixels = fit_digit(pixels, *DIGIT_RECIPES[spec.recipe])
        else:
            pixels = _resize(pixels.astype(np.float32), spec.size)
        out.append(pixels)
    batch = np.stack(out).astype(np.float32)  # (N, H, W) or (N, H, W, C) in [0, 1]
    lo, hi = spec.value_range
    batch = batch * (hi - lo) + lo
    if batch.ndim == 3:
        batch = batch[:, None]  # (N, 1, H, W)
    else:
        batch = batch.transpose(0, 3, 1, 2)  # (N, C, H, W)
    if spec.flat:
        batch = batch.transpose(0, 2, 3, 1).reshape(len(batch), -1)  # (N, H*W*C), row-major pixels
    return np.ascontiguousarray(batch), notes


def _checked_array(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim not in (2, 3) or a.size == 0 or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ZooError(f"an image array of shape {a.shape}; expected (H, W) or (H, W, 3) pixels in [0, 1]")
    return a
