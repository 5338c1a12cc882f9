"""The sparse autoencoder of the lecture (after Ng's UFLDL notes): two sigmoid layers D -> N1 -> D trained to
reconstruct their input, with a KL-divergence penalty that keeps each hidden unit's mean activation
rho_hat_j near a small target rho:

    J = 1/(2M) sum_m ||a2_m - x_m||^2 + beta sum_j KL(rho || rho_hat_j) + lambda/2 (||W1||^2 + ||W2||^2)

Its held-out figures say what the units look like (radii of gyration, beside the digits' own) and what a plain
principal component analysis with as many components as hidden units does with the same images.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zoo.config import Config, setting
from zoo.errors import ZooError
from zoo.models.base import ZooModel
from zoo.registry import REGISTRY, register_model


@dataclass
class SparseAEConfig(Config):
    visible: int = setting(784, lo=1, hi=1 << 20)  # D: input pixels, image_size[0] * image_size[1]
    hidden: int = setting(196, lo=1, hi=1 << 16)  # N1: hidden units
    rho: float = setting(0.1, lo=0, lo_open=True, hi=0.999999)  # target mean activation of each hidden unit
    beta: float = setting(3.0, lo=0, hi=1e6)  # weight of the sparsity penalty
    weight_decay: float = setting(3e-3, lo=0, hi=1e6)  # lambda, on the weights only (not the biases)
    image_size: list[int] = setting(factory=lambda: [28, 28], lo=1, hi=4096)

    def __post_init__(self):
        super().__post_init__()
        if len(self.image_size) != 2 or self.image_size[0] * self.image_size[1] != self.visible:
            raise ZooError(f"visible={self.visible} but image_size {self.image_size} has a different pixel count")


def kl_bernoulli(rho: float, rho_hat: torch.Tensor) -> torch.Tensor:
    """KL(rho || rho_hat) between Bernoulli variables, element-wise over rho_hat."""
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


def radius_of_gyration(images: np.ndarray) -> np.ndarray:
    """(N,) radii of gyration, in pixels, of N non-negative images (N, H, W): the root mean squared distance of
    a pixel from the image's centre of mass c, each pixel p weighted by its value w_p,
    sqrt(sum_p w_p |p - c|^2 / sum_p w_p) with c = sum_p w_p p / sum_p w_p. One lit pixel has 0, two equal
    pixels d apart d / 2; NaN for an image with no mass."""
    w = np.asarray(images, dtype=np.float64)  # (N, H, W)
    rows, cols = np.mgrid[: w.shape[1], : w.shape[2]]  # (H, W) each
    mass = w.sum(axis=(1, 2))  # (N,)
    with np.errstate(invalid="ignore", divide="ignore"):
        r0 = (w * rows).sum(axis=(1, 2)) / mass  # (N,): the centre of mass
        c0 = (w * cols).sum(axis=(1, 2)) / mass
        spread = w * ((rows - r0[:, None, None]) ** 2 + (cols - c0[:, None, None]) ** 2)  # (N, H, W)
        return np.sqrt(spread.sum(axis=(1, 2)) / mass)


def _median_radius(images: np.ndarray) -> float | None:
    """The median radius of gyration over the images that have mass (None when none has)."""
    radii = radius_of_gyration(images)
    radii = radii[np.isfinite(radii)]
    return float(np.median(radii)) if len(radii) else None


@functools.lru_cache(maxsize=4)
def training_pca(data: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(held-out images (M, D), training mean (D,), principal axes (min(N, D), D), by decreasing variance) of the
    bundled data ``data`` at ``size``: the axes from an SVD in float64 of its training split, centred. None when
    ``data`` has no images of that size. Once per process: a run evaluates after every epoch."""
    from zoo.data import load_dataset

    try:
        train, val = (load_dataset(data, split, size=size) for split in ("train", "val"))
    except ZooError:
        return None
    X = train.flat.astype(np.float64)  # (N, D)
    mean = X.mean(axis=0)
    _, _, axes = np.linalg.svd(X - mean, full_matrices=False)
    return val.flat, mean, axes


class SparseAutoencoder(ZooModel):
    input_names = ("image",)
    output_names = ("reconstruction", "code")
    headline_metric = "val_mse"
    card_notes = {
        "intended_use": "Teaching and feature learning as in the lecture (Ng's UFLDL notes): reconstructing small "
        "images through a sparse hidden code, and looking at the hidden units' receptive fields.",
        "limitations": [
            "Not a general image compressor: two sigmoid layers that know only their training images.",
            "Inputs must be flattened row-major, in [0, 1], with the training polarity.",
            "The code is sparse on average over the data (mean activation near rho), not in every image.",
            "The hidden units are not local pen strokes: what a unit adds to the decoder's output (the middle "
            "panel of receptive_fields.png) is a stroke fragment spread about as far as a whole digit. "
            "`unit_radius_median` is its median radius of gyration in pixels, `digit_radius_median` the held-out "
            "digits' own, `receptive_field_radius_median` that of the encoder weights' positive part.",
            "Not a good compressor either, and sparsity is not free: principal component analysis of the "
            "training images with as many components as hidden units reconstructs the held-out images with "
            "squared error `pca_mse` against this network's `val_mse`, and `pca_components_to_match` components "
            "already do as well as the network (figures on the bundled data sets only). The sparse code is for "
            "looking at features.",
        ],
        "tensors": {
            "image": {"kind": "image", "range": "[0, 1] (grey level / 255)", "meaning": "an image flattened row-major"},
            "reconstruction": {"range": "(0, 1) (sigmoid)", "meaning": "the reconstruction, flattened like the input"},
            "code": {"range": "(0, 1) (sigmoid)", "meaning": "the hidden units' activations (the sparse code)"},
        },
    }
    # the sparsity target under the units' mean activation, PCA under the reconstruction error, the digits' size
    # under the units'
    curve_references = {"rho": "mean_rho_hat", "pca_mse": "val_mse", "digit_radius_median": "unit_radius_median"}

    def __init__(self, config: SparseAEConfig):
        super().__init__()
        self.config = config
        D, N1 = config.visible, config.hidden
        self.encoder = nn.Linear(D, N1)  # W1: (N1, D), b1: (N1,)
        self.decoder = nn.Linear(N1, D)  # W2: (D, N1), b2: (D,)
        # UFLDL's initialisation: W uniform in +-sqrt(6 / (D + N1 + 1)), biases zero.
        r = math.sqrt(6.0 / (D + N1 + 1))
        for layer in (self.encoder, self.decoder):
            nn.init.uniform_(layer.weight, -r, r)
            nn.init.zeros_(layer.bias)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # image: (M, D) in [0, 1]
        code = torch.sigmoid(self.encoder(image))  # a1: (M, N1)
        reconstruction = torch.sigmoid(self.decoder(code))  # a2: (M, D)
        return reconstruction, code

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The total objective J and its parts (pre-activations included, for gradient checks)."""
        c = self.config
        M = x.shape[0]
        z1 = self.encoder(x)  # (M, N1)
        a1 = torch.sigmoid(z1)
        z2 = self.decoder(a1)  # (M, D)
        a2 = torch.sigmoid(z2)
        reconstruction = 0.5 * ((a2 - x) ** 2).sum() / M
        rho_hat = a1.mean(dim=0)  # (N1,)
        kl = kl_bernoulli(c.rho, rho_hat).sum()
        decay = 0.5 * c.weight_decay * (self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum())
        total = reconstruction + c.beta * kl + decay
        parts = dict(z1=z1, a1=a1, z2=z2, a2=a2, rho_hat=rho_hat, reconstruction=reconstruction, kl=kl, decay=decay)
        return total, parts

    def training_step(self, x: torch.Tensor, y, optimizers: dict, epoch: int) -> dict:
        # x: (M, H, W) -> (M, D)
        total, p = self.loss(x.reshape(len(x), -1))
        self.step(optimizers["model"], total)
        return {"loss": total.item(), "recon": p["reconstruction"].item(), "kl": p["kl"].item()}

    @torch.no_grad()
    def evaluate(self, X: np.ndarray, labels=None) -> dict:
        """Held-out figures on X: (M, D). rho_hat and the KL term are over the whole set; the shape of the units
        (``unit_figures``) and the PCA beside them (``pca_figures``)."""
        flat = X.reshape(len(X), -1)  # (M, D)
        x = self.as_tensor(flat)
        total, p = self.loss(x)
        metrics = {
            "val_mse": float(((p["a2"] - x) ** 2).mean()),
            "val_objective": float(total),
            "val_reconstruction_term": float(p["reconstruction"]),
            "mean_rho_hat": float(p["rho_hat"].mean()),
            "max_rho_hat": float(p["rho_hat"].max()),
            "rho": self.config.rho,
            "kl_term": float(self.config.beta * p["kl"]),
        }
        return metrics | self.unit_figures(flat) | self.pca_figures(flat, metrics["val_mse"])

    def unit_figures(self, flat: np.ndarray) -> dict:
        """How far the units spread, as medians of ``radius_of_gyration`` in pixels: ``unit_radius_median``
        over what unit j adds to the decoder's output, the positive part of sigmoid(W2[:, j] + b2) - sigmoid(b2)
        (its stroke, the middle panel of receptive_fields.png); ``receptive_field_radius_median`` over the
        positive part of its encoder weights W1[j] (the pixels that excite it); ``digit_radius_median`` over the
        held-out images ``flat`` (M, D) themselves. A unit with no positive part is left out."""
        h, w = self.config.image_size
        W1 = self.encoder.weight.detach().cpu().numpy().astype(np.float64)  # (N1, D)
        W2 = self.decoder.weight.detach().cpu().numpy().astype(np.float64)  # (D, N1)
        b2 = self.decoder.bias.detach().cpu().numpy().astype(np.float64)  # (D,)

        def sigmoid(z):
            return 1.0 / (1.0 + np.exp(-z))

        added = sigmoid(W2.T + b2) - sigmoid(b2)  # (N1, D): decoder(e_j) - decoder(0)
        images = {
            "unit_radius_median": np.maximum(added, 0),
            "receptive_field_radius_median": np.maximum(W1, 0),
            "digit_radius_median": np.maximum(flat, 0),
        }
        medians = {k: _median_radius(v.reshape(len(v), h, w)) for k, v in images.items()}
        return {k: v for k, v in medians.items() if v is not None}

    def pca_figures(self, flat: np.ndarray, val_mse: float) -> dict:
        """The network's reconstruction beside PCA's (``training_pca``), on the held-out images ``flat`` (M, D):
        ``pca_mse``, the mean squared error of projecting them on the leading k principal axes of the training
        images, k = the hidden units (or every axis, if fewer), and ``pca_components_to_match``, the fewest
        axes whose error is at most ``val_mse``. Plain PCA, not clipped to [0, 1] (clipping only lowers its
        error). Only when ``flat`` is the held-out split of the model's registered data, or its head (a run
        with ``limit``): that is the one set whose training split is known here (a run on ``--data DIR`` gets
        none)."""
        name = getattr(self, "model_name", None)
        fitted = training_pca(REGISTRY[name].train.data, tuple(self.config.image_size)) if name else None
        if fitted is None:
            return {}
        val, mean, axes = fitted
        if len(flat) > len(val) or not np.array_equal(flat, val[: len(flat)]):
            return {}
        centred = flat.astype(np.float64) - mean  # (M, D)
        k = min(self.config.hidden, len(axes))
        projected = centred @ axes[:k].T  # (M, k)
        pca_mse = float(((projected @ axes[:k] - centred) ** 2).mean())
        # squared error with 0, 1, ..., len(axes) components: the total less the variance each axis takes
        captured = np.concatenate([[0.0], np.cumsum(((centred @ axes.T) ** 2).sum(axis=0))])  # (len(axes) + 1,)
        errors = ((centred**2).sum() - captured) / centred.size
        matched = np.flatnonzero(errors <= val_mse)
        return {"pca_mse": pca_mse, **({"pca_components_to_match": int(matched[0])} if len(matched) else {})}

    def example_input(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return (torch.rand(batch, self.config.visible),)

    def onnx_sample(self, images: np.ndarray, labels=None) -> np.ndarray:
        return images[:8].reshape(min(8, len(images)), -1)  # (8, D)

    def onnx_metadata(self) -> dict:
        h, w = self.config.image_size
        return {
            "input_range": "[0, 1]",
            "normalisation": f"grey pixels / 255, flattened row-major from {h}x{w} to {h * w}",
            "image_size": f"{h}x{w}",
        }

    def write_pictures(self, out_dir, X: np.ndarray, labels=None) -> list:
        from zoo.pictures import sparse_ae_figures

        sd = {k: v.detach().cpu().numpy() for k, v in self.state_dict().items()}
        if labels is not None:  # the first held-out digit of each class: the split lists the zeros first
            first = sorted(np.unique(labels, return_index=True)[1])[:16]
            X = X[first]
        X = X[:16].reshape(min(16, len(X)), -1)  # (n, D)
        recon = self(self.as_tensor(X))[0].detach().cpu().numpy()
        return sparse_ae_figures(sd, self.config.image_size, X, recon, out_dir)


@register_model(config=SparseAEConfig, train=dict(data="mnist", epochs=300, batch_size=250, lr=3e-3))
def sparse_ae(**cfg) -> SparseAutoencoder:
    """Sparse autoencoder 784-196-784 on the bundled MNIST digits (UFLDL's MNIST settings)."""
    return SparseAutoencoder(SparseAEConfig(**cfg))


@register_model(config=SparseAEConfig, train=dict(data="digits8", epochs=1500, batch_size=256, lr=1e-2))
def sparse_ae_digits8(**cfg) -> SparseAutoencoder:
    """Sparse autoencoder 64-25-64 on scikit-learn's 8x8 digits (UFLDL's patch settings)."""
    defaults = dict(visible=64, hidden=25, rho=0.01, beta=3.0, weight_decay=1e-4, image_size=[8, 8])
    return SparseAutoencoder(SparseAEConfig(**{**defaults, **cfg}))
