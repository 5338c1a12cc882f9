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
    widths = [max(im.width, int(font.getlength(title)) + 2) for (title, _), im in zip(items, imgs)]
    width = sum(widths) + margin * (len(imgs) + 1)
    height = max(im.height for im in imgs) + caption_h + 2 * margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = margin
    for (title, _), im, w in zip(items, imgs, widths):
        draw.text((x, margin // 2), title, fill="black", font=font)
        canvas.paste(im, (x, margin + caption_h))
        x += w + margin
    return canvas


def training_curves_figure(run: dict, references: dict[str, str] | None = None):
    """A matplotlib figure of a run's per-epoch figures, epochs shared on one x axis: the training losses and
    the held-out objective on the first panel, each other held-out figure on its own; ``references`` maps a
    constant (``rho``, ``floor_fid_train_vs_val``) to the figure it is a target or floor for, drawn there as a
    dashed line; a GAN's phases are shaded and a line breaks where a loss is not computed (phase 2 has no D
    loss)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    references = references or {}
    train_rows, val_rows = run.get("train_history", []), run.get("history", [])
    bookkeeping = {"epoch", "seconds", "phase"}
    epochs = sorted({r["epoch"] for r in (*train_rows, *val_rows)})

    def column(rows, key):  # (epochs,) with NaN where the key was not logged
        by_epoch = {r["epoch"]: r.get(key) for r in rows}
        values = [by_epoch.get(e) for e in epochs]
        return np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in values])

    def keys(rows):
        return sorted({k for r in rows for k, v in r.items() if k not in bookkeeping and isinstance(v, (int, float))})

    # a figure's spread over draws and the real-data floors of figures without a panel of their own are not drawn
    drawn = [k for k in keys(val_rows) if k not in references and not k.endswith("_sd") and not k.startswith("floor_")]
    train_keys, val_keys = keys(train_rows), drawn
    losses = [k for k in val_keys if k in ("val_loss", "val_objective")]
    panels_ = (
        [
            (
                "loss (train: epoch means)",
                [("train " + k, train_rows, k) for k in train_keys] + [("held-out " + k, val_rows, k) for k in losses],
            )
        ]
        if train_keys or losses
        else []
    )
    panels_ += [(k, [("held-out", val_rows, k)]) for k in val_keys if k not in losses]
    cols = 1 if len(panels_) <= 1 else 2
    rows = max(1, math.ceil(len(panels_) / cols))
    fig = Figure(figsize=(5.2 * cols, 2.6 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    phases = column(train_rows, "phase")
    for ax, (title, lines) in zip(axes, panels_):
        for label, source, key in lines:
            x, y = np.array(epochs, dtype=np.float64), column(source, key)
            if source is val_rows:  # held-out figures of a run evaluated every few epochs: joined across the gaps
                x, y = x[np.isfinite(y)], y[np.isfinite(y)]
            ax.plot(x, y, marker="." if len(x) <= 60 else None, label=label)
        for constant, target in references.items():
            if target == title:
                value = column(val_rows, constant)
                if np.isfinite(value).any():
                    ax.axhline(np.nanmean(value), ls="--", color="grey", label=f"{constant} = {np.nanmean(value):.4g}")
        if np.isfinite(phases).any():  # the lecture's three phases, shaded
            for phase, shade in ((1, "#fbe3d6"), (2, "#dbeaf7"), (3, None)):
                span = [e for e, p in zip(epochs, phases) if p == phase]
                if span and shade:
                    ax.axvspan(
                        min(span) - 0.5,
                        max(span) + 0.5,
                        color=shade,
                        zorder=0,
                        label=f"phase {phase}" if ax is axes[0] else None,
                    )
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if len(lines) > 1 or references:
            ax.legend(fontsize=7, loc="best")
    for ax in axes[len(panels_) :]:
        ax.set_visible(False)
    for ax in axes[-cols:]:
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{run.get('model', '')}: per-epoch figures", fontsize=10)
    return fig


def save_figure(path: str | Path, fig) -> Path:
    """A matplotlib figure as a PNG, written atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


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


# Class colours: background black, then saturated hues that stay apart and none of them grey (PASCAL VOC's map
# paints its class 7 -- the digit 6 here -- (128, 128, 128), the colour of a grey input under an overlay).
PALETTE = [
    (0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (255, 221, 0),
]  # fmt: skip


def label_colours(classes: int) -> np.ndarray:
    """(classes, 3) uint8: class 0 black, then PALETTE's hues, then hues spaced by the golden angle at full
    saturation (never grey)."""
    import colorsys

    colours = [PALETTE[k] if k < len(PALETTE) else None for k in range(classes)]
    for k in range(len(PALETTE), classes):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.85, 0.95)
        colours[k] = (int(r * 255), int(g * 255), int(b * 255))
    return np.array(colours, np.uint8).reshape(classes, 3)


def class_names(classes: int, meta: dict | None = None) -> list[str]:
    """Names for a segmenter's classes: its metadata's ``class_names`` (a JSON list; the model names them, see
    ``DeconvNet.class_names``), else background and "class k"."""
    import json

    meta = meta or {}
    try:
        names = json.loads(meta.get("class_names", "null"))
    except ValueError:
        names = None
    if isinstance(names, list) and len(names) == classes and all(isinstance(n, str) for n in names):
        return names
    return ["background"] + [f"class {k}" for k in range(1, classes)]


def legend(names: list[str], colours: np.ndarray, swatch: int = 12) -> Image.Image:
    """A key: one swatch and name per class, in columns of up to 11 rows."""
    font = ImageFont.load_default()
    rows = min(len(names), 11)
    cols = math.ceil(len(names) / rows)
    width = max(len(n) for n in names) * 7 + swatch + 14
    canvas = Image.new("RGB", (cols * width + 8, rows * (swatch + 4) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (name, colour) in enumerate(zip(names, colours)):
        x, y = 4 + (k // rows) * width, 4 + (k % rows) * (swatch + 4)
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(int(c) for c in colour), outline="black")
        draw.text((x + swatch + 4, y), name, fill="black", font=font)
    return canvas


def beside(left: Image.Image, right: Image.Image, margin: int = 8) -> Image.Image:
    """Two pictures side by side on white, tops aligned."""
    canvas = Image.new("RGB", (left.width + right.width + margin, max(left.height, right.height)), "white")
    canvas.paste(left.convert("RGB"), (0, 0))
    canvas.paste(right.convert("RGB"), (left.width + margin, 0))
    return canvas


def overlay(image: np.ndarray, labels: np.ndarray, classes: int, alpha: float = 0.6) -> np.ndarray:
    """An (H, W) grey image in [0, 1] with its (H, W) label map painted over it: (H, W, 3) in [0, 1]."""
    colour = label_colours(classes)[labels].astype(np.float32) / 255.0  # (H, W, 3)
    grey = np.repeat(image[:, :, None], 3, axis=2)
    painted = labels[:, :, None] > 0
    return np.where(painted, (1 - alpha) * grey + alpha * colour, grey)


def segmentation_panel(images: np.ndarray, pred: np.ndarray, truth: np.ndarray, names: list[str]) -> Image.Image:
    """Rows of inputs, predictions and truths, and the key of the class colours, one per name."""
    k, classes = len(images), len(names)
    rows = np.concatenate(
        [
            np.repeat(images[:, :, :, None], 3, axis=3),
            np.stack([overlay(images[i], pred[i], classes) for i in range(k)]),
            np.stack([overlay(images[i], truth[i], classes) for i in range(k)]),
        ]
    )  # (3k, H, W, 3)
    grid = panels([("rows: input, prediction, truth", tile_grid(rows, cols=k))], scale=3)
    return beside(grid, legend(names, label_colours(classes)))


def segmentation_overlays(images: np.ndarray, pred: np.ndarray, names: list[str], captions: list[str]) -> Image.Image:
    """``zoo run``'s picture of a segmenter: each input beside its predicted classes painted over it, one row
    per input, and the key. images: (N, H, W) in [0, 1]; pred: (N, H, W) classes."""
    classes = len(names)
    rows = [
        (caption, tile_grid(np.stack([np.repeat(im[:, :, None], 3, 2), overlay(im, p, classes)]), cols=2))
        for caption, im, p in zip(captions, images, pred)
    ]
    scale = max(1, 192 // max(images.shape[1:]))
    stacked = [panels([row], scale=scale) for row in rows]
    column = Image.new("RGB", (max(p.width for p in stacked), sum(p.height for p in stacked)), "white")
    y = 0
    for p in stacked:
        column.paste(p, (0, y))
        y += p.height
    return beside(column, legend(names, label_colours(classes)))


def captioned_grid(images: np.ndarray, captions: list[str], cols: int | None = None) -> Image.Image:
    """Images ((N, H, W) or (N, H, W, 3) in [0, 1]) each under its caption, in a grid."""
    cols = cols or min(len(images), 8)
    scale = max(1, 96 // max(images.shape[1:3]))
    tiles = [panels([(c, tile_grid(im[None]))], scale=scale) for c, im in zip(captions, images)]
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    canvas = Image.new("RGB", (cols * w, math.ceil(len(tiles) / cols) * h), "white")
    for k, t in enumerate(tiles):
        canvas.paste(t, ((k % cols) * w, (k // cols) * h))
    return canvas


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


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def output_kind(outputs: list[np.ndarray], output_names: list[str], meta: dict, flat_input: int | None) -> str:
    """What a model's first output is, for showing it: "images" (N, 1 or 3, H, W), "segmentation" (N, classes,
    H, W) scores, "classes" (N, K) logits, "reconstruction" (N, D) rows like its input's, or "other"."""
    y = outputs[0]
    if y.ndim == 4 and y.shape[1] in (1, 3) and "argmax" not in meta.get("output", ""):
        return "images"
    if y.ndim == 4 and y.shape[1] > 1:
        return "segmentation"
    if y.ndim == 2 and flat_input is not None and y.shape[1] == flat_input:
        return "reconstruction"
    if y.ndim == 2 and 2 <= y.shape[1] <= 1000 and output_names[0] in ("logits", "scores", "probabilities", "output"):
        return "classes"
    return "other"


def describe_outputs(kind: str, outputs, names, meta: dict, top: int = 3) -> list[str]:
    """One line per sample a person can read: a classifier's top classes, the classes a segmenter found."""
    y = outputs[0]
    if kind == "classes":
        p = y if names[0] == "probabilities" else _softmax(y.astype(np.float64))
        best = np.argsort(-p, axis=1)[:, :top]
        return [", ".join(f"{c} {100 * p[i, c]:.1f} %" for c in best[i]) for i in range(len(y))]
    if kind == "segmentation":
        labels = class_names(y.shape[1], meta)
        pred = y.argmax(axis=1)  # (N, H, W)
        lines = []
        for p in pred:
            counts = np.bincount(p.ravel(), minlength=len(labels))
            found = [f"{labels[c]} ({counts[c]} px)" for c in np.argsort(-counts) if c > 0 and counts[c] > 0]
            lines.append(", ".join(found) or "background only")
        return lines
    return [f"{tuple(y.shape[1:])} {y.dtype}" for _ in range(len(y))]


def outputs_picture(kind: str, inputs: np.ndarray | None, outputs, names, meta: dict, captions: list[str]):
    """``zoo run --output x.png``: a generator's grid, a segmenter's overlays with a key, a classifier's inputs
    under their classes, an autoencoder's inputs above their reconstructions. ``inputs``: the images fed, (N, H, W)
    in [0, 1], or None when the inputs were no images."""
    from zoo.errors import ZooError

    y = outputs[0]
    if kind == "images":
        images = (y + 1) / 2 if meta.get("output_range") == "[-1, 1]" else y
        images = np.clip(images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1), 0, 1)
        grid = tile_grid(images, cols=math.ceil(math.sqrt(len(images))))
        return panels([(f"{len(images)} outputs", grid)], scale=max(1, 256 // grid.shape[1]))
    if inputs is None:
        raise ZooError(f"no picture of a {kind} output without image inputs; write .npy or .npz instead")
    if kind == "segmentation":
        names_ = class_names(y.shape[1], meta)
        return segmentation_overlays(inputs, y.argmax(axis=1), names_, [Path(c).name for c in captions])
    if kind == "classes":
        top1 = describe_outputs(kind, outputs, names, meta, top=1)
        return captioned_grid(inputs, [f"{Path(c).name[:12]}: {t}" for c, t in zip(captions, top1)])
    if kind == "reconstruction":
        k, (h, w) = len(inputs), inputs.shape[1:]
        pairs = np.concatenate([inputs, np.clip(y.reshape(k, h, w), 0, 1)])  # (2k, h, w)
        return panels([("top: inputs, bottom: reconstructions", tile_grid(pairs, cols=k))], scale=max(1, 56 // h))
    raise ZooError(f"no picture for an output of shape {tuple(y.shape)}; write .npy or .npz instead")
