"""Pictures for students, from NumPy arrays only (no torch), so they can also be drawn from shipped weights
or runtime outputs: tile grids, captioned panels, and the sparse autoencoder's figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zoo.io import atomic_write


def _unit_range(t: np.ndarray) -> np.ndarray:
    lo, hi = float(t.min()), float(t.max())
    return np.zeros_like(t) if hi - lo < 1e-12 else (t - lo) / (hi - lo)


def tile_grid(tiles: np.ndarray, cols: int | None = None, pad: int = 1, per_tile: bool = False) -> np.ndarray:
    """tiles: (n, h, w) or (n, h, w, 3) with values in [0, 1] (or any range with per_tile=True, which
    stretches each tile to [0, 1]); returns a uint8 grid (rows*(h+pad)+pad, cols*(w+pad)+pad[, 3])."""
    n, h, w = tiles.shape[:3]
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *tiles.shape[3:]), 0.5, dtype=np.float32)
    for k in range(n):
        r, c = divmod(k, cols)
        t = _unit_range(tiles[k]) if per_tile else np.clip(tiles[k], 0.0, 1.0)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = t
    return (grid * 255.0 + 0.5).astype(np.uint8)


def panels(items: list[tuple[str, np.ndarray]], scale: int = 2, margin: int = 8) -> Image.Image:
    """Grids side by side, each scaled up ``scale`` times (nearest) under its caption."""
    font = ImageFont.load_default()
    imgs = [Image.fromarray(g).convert("RGB") for _, g in items]
    imgs = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in imgs]
    caption_h = 16
    width = sum(im.width for im in imgs) + margin * (len(imgs) + 1)
    height = max(im.height for im in imgs) + caption_h + 2 * margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = margin
    for (title, _), im in zip(items, imgs):
        draw.text((x, margin // 2), title, fill="black", font=font)
        canvas.paste(im, (x, margin + caption_h))
        x += im.width + margin
    return canvas


def line_plot(series: dict[str, list[tuple[float, float]]], title: str = "", cols: int = 3) -> Image.Image:
    """Small multiples: one panel per named series of (x, y) points, each with its own y range."""
    font = ImageFont.load_default()
    w, h, margin = 260, 150, 30
    names = list(series)
    rows = max(1, math.ceil(len(names) / cols))
    canvas = Image.new("RGB", (cols * w, rows * h + 20), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill="black", font=font)
    for k, name in enumerate(names):
        pts = [(x, y) for x, y in series[name] if math.isfinite(y)]
        ox, oy = (k % cols) * w, 20 + (k // cols) * h
        draw.rectangle([ox + margin, oy + 16, ox + w - 8, oy + h - 16], outline="grey")
        draw.text((ox + margin, oy + 2), name, fill="black", font=font)
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
        draw.text((ox + 2, oy + 16), f"{y1:.3g}", fill="grey", font=font)
        draw.text((ox + 2, oy + h - 28), f"{y0:.3g}", fill="grey", font=font)

        def px(x, y, ox=ox, oy=oy, x0=x0, x1=x1, y0=y0, y1=y1):
            return (
                ox + margin + (x - x0) / (x1 - x0) * (w - margin - 8),
                oy + h - 16 - (y - y0) / (y1 - y0) * (h - 32),
            )

        draw.line([px(x, y) for x, y in pts], fill=(31, 119, 180), width=2)
    return canvas


def save_png(path: str | Path, image: Image.Image | np.ndarray) -> Path:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def sparse_ae_figures(sd: dict, image_size, X: np.ndarray, recon: np.ndarray, out_dir) -> list[Path]:
    """receptive_fields.png (the lecture's figure) and reconstructions.png.

    sd: the state dict as NumPy arrays (encoder.weight (N1, D), decoder.weight (D, N1), decoder.bias (D,));
    X, recon: (n, D) inputs and their reconstructions."""
    h, w = image_size
    W1, W2, b2 = sd["encoder.weight"], sd["decoder.weight"], sd["decoder.bias"]
    n = min(100, W1.shape[0])
    # Unit j's decoder output when the code is the one-hot e_j: a2 = sigmoid(W2 e_j + b2) = sigmoid(W2[:, j] + b2)
    decoded = sigmoid(W2[:, :n].T + b2[None, :]).reshape(n, h, w)  # (n, h, w)
    # The all-zero code decodes to sigmoid(b2), a blurred mean digit that dominates every tile; what unit j
    # adds to it is its stroke.
    added = decoded - sigmoid(b2).reshape(1, h, w)  # (n, h, w)
    encoder = W1[:n] / np.linalg.norm(W1[:n], axis=1, keepdims=True)  # W.j / ||W.j||: (n, D)
    out_dir = Path(out_dir)
    scale = max(1, 56 // h)
    fig = panels(
        [
            (f"decoder(e_j), units 0-{n - 1}", tile_grid(decoded, per_tile=True)),
            ("minus the all-zero code's output", tile_grid(added, per_tile=True)),
            ("encoder weights W1[j] / ||W1[j]||", tile_grid(encoder.reshape(n, h, w), per_tile=True)),
        ],
        scale=scale,
    )
    k = len(X)
    pairs = np.concatenate([X.reshape(k, h, w), recon.reshape(k, h, w)])  # (2k, h, w): inputs then outputs
    rec = panels([("top: held-out inputs, bottom: reconstructions", tile_grid(pairs, cols=k))], scale=scale)
    return [save_png(out_dir / "receptive_fields.png", fig), save_png(out_dir / "reconstructions.png", rec)]


def label_colours(classes: int) -> np.ndarray:
    """PASCAL VOC's colour map (class k's bits spread over R, G, B): (classes, 3) uint8, class 0 black."""
    colours = np.zeros((classes, 3), np.uint8)
    for k in range(classes):
        c, r, g, b = k, 0, 0, 0
        for shift in range(7, -1, -1):
            r, g, b = r | ((c & 1) << shift), g | (((c >> 1) & 1) << shift), b | (((c >> 2) & 1) << shift)
            c >>= 3
        colours[k] = (r, g, b)
    return colours


def overlay(image: np.ndarray, labels: np.ndarray, classes: int, alpha: float = 0.6) -> np.ndarray:
    """An (H, W) grey image in [0, 1] with its (H, W) label map painted over it: (H, W, 3) in [0, 1]."""
    colour = label_colours(classes)[labels].astype(np.float32) / 255.0  # (H, W, 3)
    grey = np.repeat(image[:, :, None], 3, axis=2)
    painted = labels[:, :, None] > 0
    return np.where(painted, (1 - alpha) * grey + alpha * colour, grey)


def segmentation_panel(images: np.ndarray, pred: np.ndarray, truth: np.ndarray, classes: int = 11) -> Image.Image:
    """Rows of inputs, predictions and truths (colours: PASCAL VOC's map; digit d is class d + 1)."""
    k = len(images)
    rows = np.concatenate(
        [
            np.repeat(images[:, :, :, None], 3, axis=3),
            np.stack([overlay(images[i], pred[i], classes) for i in range(k)]),
            np.stack([overlay(images[i], truth[i], classes) for i in range(k)]),
        ]
    )  # (3k, H, W, 3)
    key = tile_grid(label_colours(classes)[:, None, None, :].repeat(8, 1).repeat(8, 2) / 255.0, cols=classes)
    return panels([("rows: input, prediction, truth", tile_grid(rows, cols=k)), ("classes: bg, 0 ... 9", key)], scale=3)


def decoder_stages_panel(
    image: np.ndarray, stages: list[tuple[str, np.ndarray]], pred: np.ndarray, classes: int = 11
) -> Image.Image:
    """The decoder's activations for one input, coarse to fine (Noh et al. 2015, Fig. 4): for each stage the
    summed (C, h, w) activations, scaled to the input's size. Unpooling gives sparse maps that keep where the
    maxima were; the deconvolutions after it fill them in."""
    h, w = image.shape
    items = [("input", tile_grid(image[None]))]
    for name, a in stages:
        energy = a.sum(axis=0)  # (h', w')
        fy, fx = h // energy.shape[0], w // energy.shape[1]
        big = np.kron(energy, np.ones((fy, fx), np.float32))  # nearest-neighbour to (h, w)
        items.append((f"{name} {energy.shape[0]}x{energy.shape[1]}", tile_grid(big[None], per_tile=True)))
    items.append(("prediction", (overlay(image, pred, classes) * 255).astype(np.uint8)))
    return panels(items, scale=3)
