"""What every zoo model brings to the shared trainer and exporter (``zoo/train.py``, ``zoo/export.py``):

- ``config``: its architecture and objective (a ``zoo.config.Config`` dataclass with ``image_size``); the run's
  settings (data, epochs, batch size, step size) are a ``zoo.config.TrainConfig`` given to the trainer;
- ``image_channels``: the channels of the images it takes (1 unless its config has ``channels``);
- ``configure_optimizers(train)``: the optimizers by name (Adam over all parameters unless overridden);
- ``training_step(x, y, optimizers, epoch)``: one batch, its own backward passes and steps, returns logs;
- ``evaluate(images, labels)``: held-out figures; ``write_pictures(out_dir, images, labels)``: PNG paths;
- for export: ``input_names``, ``output_names``, ``example_input(batch)``, ``onnx_metadata()``.

Images reach a model as float32 arrays (N, H, W) in [0, 1] (or (N, H, W, C)); each model shapes them itself.

Data-parallel training (``torchrun``, see ``zoo/train.py``) averages gradients here, in ``ZooModel.step``,
between ``backward`` and ``optimizer.step``, with one ``all_reduce`` per step, rather than by wrapping the model
in DistributedDataParallel: the models' ``training_step`` call their own sub-modules directly (``self(...)``,
``self.generator(...)``) and run several backward passes and optimizers per batch (a GAN's discriminator and
generator phases), which DDP's one-forward-one-backward hooks do not see. Each rank's gradient (of the mean over
its shard) is weighted by its shard's share of the global batch before the sum, so N ranks with batch B/N step
exactly as one process with batch B does for any loss that is a mean over examples.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import torch
from torch import nn

from zoo.config import TrainConfig

# This rank's share of the global batch being trained on (n_rank / n_global); None when not data-parallel.
_shard_share: contextvars.ContextVar[float | None] = contextvars.ContextVar("shard_share", default=None)


@contextlib.contextmanager
def data_parallel_batch(share: float):
    """Within this block ``ZooModel.step`` sums gradients across ranks, this rank's weighted by ``share``."""
    token = _shard_share.set(share)
    try:
        yield
    finally:
        _shard_share.reset(token)


def all_reduce_gradients(optimizer: torch.optim.Optimizer, share: float) -> None:
    """Replace each gradient of ``optimizer``'s parameters by the share-weighted sum over ranks, with one
    all_reduce of a flat buffer. Every rank reaches here with the same parameters holding gradients."""
    import torch.distributed as dist

    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    # A rank whose shard is empty (a last batch smaller than the world) has a NaN mean loss: it adds nothing.
    flat = torch.zeros_like(flat) if share == 0 else flat * share
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class ZooModel(nn.Module):
    input_names: tuple[str, ...] = ("image",)
    output_names: tuple[str, ...] = ("output",)
    # What a model card says of the family (``zoo.publish``): "intended_use" and "limitations" (texts; the card
    # adds what its training data implies) and "tensors": per input/output name (or "<part>/<name>" for a model
    # exported in parts) its "range", "meaning", optional "classes", and "kind": "image" for tensors whose
    # polarity the card states from the training data.
    card_notes: dict = {}
    # Shipped cards whose runs differ from this model's in one choice (an ablation): card name -> what differs.
    # Its card shows their figures beside its own, copied from their cards (which recompute them from their files).
    card_ablations: dict[str, str] = {}

    @property
    def device(self) -> torch.device:
        """Where the model's parameters (or buffers) live; tensors it creates go there too."""
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    def as_tensor(self, a) -> torch.Tensor:
        """A NumPy array as a tensor on the model's device."""
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @property
    def image_channels(self) -> int:
        return self.config.channels if hasattr(self.config, "channels") else 1

    def configure_optimizers(self, train: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=train.lr, betas=(train.beta1, 0.999))}

    @staticmethod
    def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        share = _shard_share.get()
        if share is not None:
            all_reduce_gradients(optimizer, share)
        optimizer.step()

    def on_epoch_end(self, out_dir, epoch: int) -> list:
        """Pictures or logs written after each epoch (none by default)."""
        return []

    def onnx_metadata(self) -> dict:
        return {}

    headline_metric = "val_loss"  # the figure `zoo list` shows for shipped weights
    # held-out constants drawn as dashed lines on the curve of the figure they are a target or floor for
    curve_references: dict[str, str] = {}

    def export_parts(self) -> dict:
        """Modules exported as separate ONNX graphs (a GAN's generator and discriminator); empty: the model."""
        return {}

    def onnx_translation_table(self) -> dict:
        """aten op -> onnxscript function, for ops the exporter must emit natively (DeconvNet's switches)."""
        return {}

    def onnx_sample(self, images, labels):
        """Real inputs for the export's comparison and test_data_set_0 (None: random example inputs)."""
        return None
