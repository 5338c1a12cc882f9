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

    train_keys, val_keys = keys(train_rows), [k for k in keys(val_rows) if k not in references]
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
            ax.plot(epochs, column(source, key), marker="." if len(epochs) <= 60 else None, label=label)
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
