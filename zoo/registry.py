"""The model registry, after timm: each model file ends with ``@register_model`` factories, the name is the
factory's with ``_`` read as ``-``, and ``create_model(name, **cfg)`` builds one with its config overridden."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from zoo.errors import ZooError


@dataclass
class ModelEntry:
    name: str
    factory: Callable  # (**cfg) -> torch.nn.Module with a .config dataclass
    description: str


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


def register_model(fn: Callable) -> Callable:
    name = fn.__name__.replace("_", "-")
    doc = (fn.__doc__ or "").strip().splitlines()
    _REGISTRY[name] = ModelEntry(name, fn, doc[0] if doc else "")
    return fn


def _load() -> None:
    global _loaded
    if not _loaded:
        importlib.import_module("zoo.models")
        _loaded = True


def list_models() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    _load()
    if name not in _REGISTRY:
        raise ZooError(f"unknown model '{name}'; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **cfg):
    """Build the registered model ``name`` with its default config overridden by ``cfg``."""
    entry = get_model_entry(name)
    try:
        model = entry.factory(**cfg)
    except TypeError as e:
        raise ZooError(f"bad config for '{name}': {e}") from None
    model.model_name = name
    return model
