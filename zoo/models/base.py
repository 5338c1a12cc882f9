"""What every zoo model brings to the shared trainer and exporter (``zoo/train.py``, ``zoo/export.py``):

- ``config``: a dataclass with the training defaults (``epochs``, ``batch_size``, ``lr``, ``dataset``, ``image_size``);
- ``configure_optimizers(lr)``: the optimizers by name (Adam over all parameters unless overridden);
- ``training_step(x, y, optimizers, epoch)``: one batch, its own backward passes and steps, returns logs;
- ``evaluate(images, labels)``: held-out figures; ``write_pictures(out_dir, images, labels)``: PNG paths;
- for export: ``input_names``, ``output_names``, ``example_input(batch)``, ``onnx_metadata()``.

Images reach a model as float32 arrays (N, H, W) in [0, 1] (or (N, H, W, C)); each model shapes them itself.
"""

from __future__ import annotations

import torch
from torch import nn


class ZooModel(nn.Module):
    input_names: tuple[str, ...] = ("image",)
    output_names: tuple[str, ...] = ("output",)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=lr)}

    @staticmethod
    def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def on_epoch_end(self, out_dir, epoch: int) -> list:
        """Pictures or logs written after each epoch (none by default)."""
        return []

    def onnx_metadata(self) -> dict:
        return {}

    headline_metric = "val_loss"  # the figure `zoo list` shows for shipped weights

    def export_parts(self) -> dict:
        """Modules exported as separate ONNX graphs (a GAN's generator and discriminator); empty: the model."""
        return {}

    def onnx_sample(self, images, labels):
        """Real inputs for the export's comparison and test_data_set_0 (None: random example inputs)."""
        return None
