"""The lecture's fully connected generative network: a one-hot class code in, an image out, trained to
minimise the squared error to the members of that class. The minimiser of E||G(c) - x||^2 over the class's
images is their mean, so each code learns its class's "typical" digit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zoo.config import Config, setting
from zoo.errors import ZooError
from zoo.models.base import ZooModel
from zoo.registry import register_model


@dataclass
class CGenConfig(Config):
    classes: int = setting(10, lo=1, hi=1000)
    hidden: list[int] = setting(factory=lambda: [256, 512], lo=1, hi=1 << 14)  # widths of the hidden layers
    image_size: list[int] = setting(factory=lambda: [28, 28], lo=1, hi=512)

    def __post_init__(self):
        super().__post_init__()
        if len(self.image_size) != 2:
            raise ZooError(f"image_size={self.image_size}: expected [height, width]")


class ClassConditionalGenerator(ZooModel):
    input_names = ("class_code",)
    output_names = ("image",)
    headline_metric = "class_accuracy"
    card_notes = {
        "intended_use": "Teaching: a network trained with squared error on a class code learns the class mean, "
        "its 'typical' digit; drawing those typical digits.",
        "limitations": [
            "One fixed image per class code (no noise input): a blurred average, not varied or realistic samples.",
            "Codes that are not one-hot were never trained: mixtures give undefined blends.",
        ],
        "tensors": {
            "class_code": {
                "range": "one-hot: 1.0 at the class index, 0.0 elsewhere",
                "meaning": "which class to draw",
                "classes": "index k is digit k",
            },
            "image": {"kind": "image", "range": "[0, 1]", "meaning": "the class's typical image"},
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
        from zoo.evaluate import class_accuracy

        generated = self.typical_digits()
        means = np.stack([images[labels == c].mean(0) for c in range(self.config.classes)])
        out = self(self.codes(self.as_tensor(labels)))[:, 0].cpu().numpy()
        metrics = {
            "val_mse": float(((out - images) ** 2).mean()),
            "mse_to_class_mean": float(((generated - means) ** 2).mean()),
        }
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
