"""The sparse autoencoder of the lecture (after Ng's UFLDL notes): two sigmoid layers D -> N1 -> D trained to
reconstruct their input, with a KL-divergence penalty that keeps each hidden unit's mean activation
rho_hat_j near a small target rho:

    J = 1/(2M) sum_m ||a2_m - x_m||^2 + beta sum_j KL(rho || rho_hat_j) + lambda/2 (||W1||^2 + ||W2||^2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zoo.config import Config, setting
from zoo.errors import ZooError
from zoo.models.base import ZooModel
from zoo.registry import register_model


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
        ],
        "tensors": {
            "image": {"kind": "image", "range": "[0, 1] (grey level / 255)", "meaning": "an image flattened row-major"},
            "reconstruction": {"range": "(0, 1) (sigmoid)", "meaning": "the reconstruction, flattened like the input"},
            "code": {"range": "(0, 1) (sigmoid)", "meaning": "the hidden units' activations (the sparse code)"},
        },
    }
    curve_references = {"rho": "mean_rho_hat"}  # the sparsity target under the units' mean activation

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
        """Held-out figures on X: (M, D). rho_hat and the KL term are over the whole set."""
        x = self.as_tensor(X.reshape(len(X), -1))
        total, p = self.loss(x)
        return {
            "val_mse": float(((p["a2"] - x) ** 2).mean()),
            "val_objective": float(total),
            "val_reconstruction_term": float(p["reconstruction"]),
            "mean_rho_hat": float(p["rho_hat"].mean()),
            "max_rho_hat": float(p["rho_hat"].max()),
            "rho": self.config.rho,
            "kl_term": float(self.config.beta * p["kl"]),
        }

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
