"""The model registry, a leaf after timm's ``_registry.py``: the table of registered models and the
``register_model`` decorator that fills it, nothing else. Each model file ends with ``@register_model(...)``
factories; the name is the factory's with ``_`` read as ``-``. Building models from names is
``zoo/builder.py``'s work, and ``zoo/factory.py`` (``create_model``, ``list_models``) sits above it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zoo.config import TrainConfig


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable  # (**cfg) -> torch.nn.Module with a .config dataclass of type ``config``
    description: str
    config: type  # the model's config dataclass (a zoo.config.Config): its architecture and objective
    train: TrainConfig  # the run's defaults: data, epochs, batch size, step size, schedule


REGISTRY: dict[str, ModelEntry] = {}


def register_model(fn: Callable | None = None, *, config: type, train: dict | None = None):
    """``@register_model(config=SparseAEConfig, train=dict(data="mnist", epochs=300))`` over a factory."""

    def register(fn: Callable) -> Callable:
        name = fn.__name__.replace("_", "-")
        doc = (fn.__doc__ or "").strip().splitlines()
        REGISTRY[name] = ModelEntry(name, fn, doc[0] if doc else "", config, TrainConfig(**(train or {})))
        return fn

    return register if fn is None else register(fn)
