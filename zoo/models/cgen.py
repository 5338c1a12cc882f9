"""The lecture's fully connected generative network: a one-hot class code in, an image out, trained to
minimise the squared error to the members of that class. The minimiser of E||G(c) - x||^2 over the class's
images is their mean, so each code learns its class's "typical" digit: the class mean, blurred and low in
contrast. Its held-out figures measure exactly that (``evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zoo.config import Config, setting
from zoo.errors import ZooError
from zoo.models.base import ZooModel
from zoo.registry import register_model

# A pixel with ink is at least INK; of those, the "grey" ones are below FULL_STROKE (neither background nor the
# saturated core of a pen stroke). A real MNIST digit's ink is about half grey (antialiased edges); a mean of
# many digits is grey nearly everywhere.
INK, FULL_STROKE = 0.1, 0.9


@dataclass
class CGenConfig(Config):
    classes: int = setting(10, lo=1, hi=1000)
    hidden: list[int] = setting(factory=lambda: [256, 512], lo=1, hi=1 << 14)  # widths of the hidden layers
    image_size: list[int] = setting(factory=lambda: [28, 28], lo=1, hi=512)

    def __post_init__(self):
        super().__post_init__()
        if len(self.image_size) != 2:
            raise ZooError(f"image_size={self.image_size}: expected [height, width]")


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Pearson correlations over the pixels between images a[n] and b[n], both (N, H, W); NaN where an
    image is constant."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def contrast_figures(images: np.ndarray) -> dict:
    """Means over images (N, H, W) in [0, 1] of their brightest pixel (``max_pixel_mean``) and of the share of
    their inked pixels (>= INK) that are grey (< FULL_STROKE) (``grey_fraction``; images without ink left out)."""
    flat = images.reshape(len(images), -1)  # (N, H*W)
    inked = (flat >= INK).sum(1)
    grey = ((flat >= INK) & (flat < FULL_STROKE)).sum(1)
    return {
        "max_pixel_mean": float(flat.max(1).mean()),
        "grey_fraction": float((grey[inked > 0] / inked[inked > 0]).mean()),
    }


class ClassConditionalGenerator(ZooModel):
    input_names = ("class_code",)
    output_names = ("image",)
    headline_metric = "class_accuracy"
    card_notes = {
        "intended_use": "Teaching: a network trained with squared error on a class code learns the class mean; "
        "showing that the objective's optimum is an average, not a sample.",
        "limitations": [
            "The images are (close to) the class means of the training digits, not samples of digits: for a "
            "fixed code the squared error E||G(c) - x||^2 is least at the mean of the class, so each image is a "
            "blurred, low-contrast average. `class_mean_correlation_min` and `_mean` are the Pearson correlations of "
            "the images with the held-out class means, against `real_class_mean_correlation_mean` for a real "
            "held-out digit and its class mean; `max_pixel_mean` and `grey_fraction` (of the inked pixels, the "
            "share below a full stroke) against the held-out digits' `real_max_pixel_mean` and "
            "`real_grey_fraction`.",
            "LeNet naming each image's class (`class_accuracy`) says more about the classifier than about the "
            "images: it accepts a blurred class mean, and it does not score realism.",
            "One fixed image per class code (no noise input): no variety within a class.",
            "Codes that are not one-hot were never trained: mixtures give undefined blends.",
        ],
        "tensors": {
            "class_code": {
                "range": "one-hot: 1.0 at the class index, 0.0 elsewhere",
                "meaning": "which class to draw",
                "classes": "index k is digit k",
            },
            "image": {"kind": "image", "range": "[0, 1]", "meaning": "(close to) the class's mean image"},
        },
    }

    def __init__(self, config: CGenConfig):
        super().__init__()
        self.config = config
        h, w = config.image_size
        widths = [config.classes, *config.hidden]
        layers = []
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers += [nn.Linear(widths[-1], h * w), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, class_code: torch.Tensor) -> torch.Tensor:
        # class_code: (N, classes) one-hot -> image: (N, 1, H, W) in [0, 1]
        return self.net(class_code).reshape(-1, 1, *self.config.image_size)  # -1 keeps the batch dynamic

    def codes(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels, self.config.classes).float()  # (N, classes)

    def training_step(self, x: torch.Tensor, y: torch.Tensor, optimizers: dict, epoch: int) -> dict:
        loss = ((self(self.codes(y))[:, 0] - x) ** 2).sum(dim=(1, 2)).mean()
        self.step(optimizers["model"], loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def typical_digits(self) -> np.ndarray:
        return self(torch.eye(self.config.classes, device=self.device))[:, 0].cpu().numpy()  # (classes, H, W)

    @torch.no_grad()
    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> dict:
        """Held-out figures: the reconstruction error of every held-out digit from its class's image
        (``val_mse``); how close each class's image is to the held-out class mean (``mse_to_class_mean``, and
        ``class_mean_correlation_min`` / ``_mean``: Pearson correlation over the pixels, worst class and mean
        over the classes, beside ``real_class_mean_correlation_mean``, a held-out digit's with its class mean,
        mean over the digits); the images' contrast (``contrast_figures``); LeNet's accuracy on them. Classes
        without held-out digits are left out of the class-mean figures."""
        from zoo.evaluate import class_accuracy

        generated = self.typical_digits()  # (classes, H, W)
        present = [c for c in range(self.config.classes) if (labels == c).any()]
        means = np.stack([images[labels == c].mean(0) for c in present])  # (present, H, W)
        out = self(self.codes(self.as_tensor(labels)))[:, 0].cpu().numpy()
        r_generated = pearson(generated[present], means)  # (present,)
        r_real = pearson(images, means[np.searchsorted(present, labels)])  # (M,)
        metrics = {
            "val_mse": float(((out - images) ** 2).mean()),
            "mse_to_class_mean": float(((generated[present] - means) ** 2).mean()),
            "class_mean_correlation_min": float(r_generated.min()),
            "class_mean_correlation_mean": float(r_generated.mean()),
            "real_class_mean_correlation_mean": float(np.nanmean(r_real)),
        }
        metrics |= contrast_figures(generated) | {f"real_{k}": v for k, v in contrast_figures(images).items()}
        metrics.update(class_accuracy(generated, np.arange(self.config.classes)))
        return metrics

    def example_input(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return (self.codes(torch.arange(batch) % self.config.classes),)

    def onnx_sample(self, images, labels) -> np.ndarray:
        return np.eye(self.config.classes, dtype=np.float32)  # one code per class

    def onnx_metadata(self) -> dict:
        h, w = self.config.image_size
        return {
            "input_range": "one-hot class codes (N, classes)",
            "output_range": "[0, 1]",
            "normalisation": f"output (N, 1, {h}, {w}) grey pixels in [0, 1]",
            "image_size": f"{h}x{w}",
        }

    def write_pictures(self, out_dir, images: np.ndarray, labels=None) -> list:
        from zoo.pictures import panels, save_png, tile_grid

        means = np.stack([images[labels == c].mean(0) for c in range(self.config.classes)])
        fig = panels(
            [
                ("G(one-hot c), c = 0..9", tile_grid(self.typical_digits(), cols=self.config.classes)),
                ("held-out class means", tile_grid(means, cols=self.config.classes)),
            ],
            scale=2,
        )
        return [save_png(f"{out_dir}/typical_digits.png", fig)]


@register_model(config=CGenConfig, train=dict(data="mnist", epochs=30, batch_size=64, lr=1e-3))
def cgen_mnist(**cfg) -> ClassConditionalGenerator:
    """Class-conditional fully connected generator: one-hot digit class -> its typical 28x28 digit."""
    return ClassConditionalGenerator(CGenConfig(**cfg))
