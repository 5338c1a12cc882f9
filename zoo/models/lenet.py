"""LeNet-5 (LeCun et al. 1998) for the bundled 28x28 digits: the zoo's evaluation instrument. Its penultimate
84-d features give a Fréchet distance and its class probabilities an Inception-style score for generated
digits, without downloading an Inception network; it is also a zoo model of its own."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.config import Config, setting
from zoo.models.base import ZooModel
from zoo.registry import register_model


@dataclass
class LeNetConfig(Config):
    classes: int = setting(10, lo=2, hi=1000)
    image_size: list[int] = setting(factory=lambda: [28, 28], lo=28, hi=28)  # the layer sizes below are 28x28's
    augment_shift: float = setting(2.0, lo=0, hi=14)  # random translations up to this many pixels during training
    augment_rotate: float = setting(10.0, lo=0, hi=180)  # and random rotations up to this many degrees


class LeNet(ZooModel):
    input_names = ("image",)
    output_names = ("logits", "features")
    headline_metric = "val_accuracy"
    card_notes = {
        "intended_use": "Classifying single, centred handwritten digits in 28x28 grey images; its 84-d features "
        "and class probabilities are the zoo's instrument for the Frechet distance and Inception-style score of "
        "generated digits (zoo.evaluate).",
        "limitations": [
            "No reject class: a letter, a photo, several digits or a dark-on-light scan still gets a confident digit.",
            "Not for decisions about people (reading forms, cheques or addresses) without an evaluation on such data.",
        ],
        "tensors": {
            "image": {"kind": "image", "range": "[0, 1] (grey level / 255)", "meaning": "one grey digit per row"},
            "logits": {
                "range": "unbounded (softmax gives the class probabilities)",
                "meaning": "class scores",
                "classes": "index k is digit k",
            },
            "features": {"range": "[0, inf) (after ReLU)", "meaning": "the 84-d penultimate features (for FID)"},
        },
    }

    def __init__(self, config: LeNetConfig):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)  # (N, 1, 28, 28) -> (N, 6, 28, 28), pooled to 14x14
        self.conv2 = nn.Conv2d(6, 16, 5)  # (N, 6, 14, 14) -> (N, 16, 10, 10), pooled to 5x5
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, config.classes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # image: (N, 1, 28, 28) in [0, 1]
        x = F.max_pool2d(F.relu(self.conv1(image)), 2)  # (N, 6, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 16, 5, 5)
        x = F.relu(self.fc1(x.flatten(1)))  # (N, 120)
        features = F.relu(self.fc2(x))  # (N, 84)
        return self.fc3(features), features  # (N, classes), (N, 84)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random small shifts and rotations, one per image: 4,500 digits are few for a classifier."""
        c, n = self.config, len(x)
        angle = (torch.rand(n, device=x.device) * 2 - 1) * c.augment_rotate * torch.pi / 180
        shift = (torch.rand(n, 2, device=x.device) * 2 - 1) * c.augment_shift * 2 / x.shape[-1]  # grid units
        theta = torch.stack(
            [
                torch.stack([angle.cos(), -angle.sin(), shift[:, 0]], dim=1),
                torch.stack([angle.sin(), angle.cos(), shift[:, 1]], dim=1),
            ],
            dim=1,
        )  # (N, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")  # (N, 1, 28, 28)

    def training_step(self, x: torch.Tensor, y: torch.Tensor, optimizers: dict, epoch: int) -> dict:
        logits, _ = self(self.augment(x[:, None]))
        loss = F.cross_entropy(logits, y)
        self.step(optimizers["model"], loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> dict:
        logits, _ = self(self.as_tensor(images)[:, None])
        y = self.as_tensor(labels)
        return {
            "val_accuracy": float((logits.argmax(1) == y).float().mean()),
            "val_loss": float(F.cross_entropy(logits, y)),
        }

    def example_input(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return (torch.rand(batch, 1, *self.config.image_size),)

    def onnx_sample(self, images: np.ndarray, labels=None) -> np.ndarray:
        return images[:8, None]  # (8, 1, 28, 28)

    def onnx_metadata(self) -> dict:
        return {"input_range": "[0, 1]", "normalisation": "grey pixels / 255, (N, 1, 28, 28)", "image_size": "28x28"}

    def write_pictures(self, out_dir, images: np.ndarray, labels=None) -> list:
        from zoo.pictures import save_png, tile_grid

        with torch.no_grad():
            predicted = self(self.as_tensor(images[:64])[:, None])[0].argmax(1).cpu().numpy()
        wrong = images[:64][predicted != labels[:64]] if labels is not None else images[:0]
        pictures = [save_png(f"{out_dir}/inputs.png", tile_grid(images[:64], cols=8))]
        if len(wrong):
            pictures.append(save_png(f"{out_dir}/misclassified.png", tile_grid(wrong, cols=8)))
        return pictures


@register_model(config=LeNetConfig, train=dict(data="mnist", epochs=40, batch_size=64, lr=1e-3))
def lenet_mnist(**cfg) -> LeNet:
    """LeNet-5 digit classifier on the bundled MNIST digits (the zoo's evaluation instrument)."""
    return LeNet(LeNetConfig(**cfg))
