"""Models from names and configs, after timm's ``_builder.py``: the step below the factory (``zoo/factory.py``)
and the checkpoint reader, which both build models through ``build_model``. Settings are routed here to the
model's config or to the run's ``TrainConfig``, older names upgraded. The model files are imported (and so
registered) on first use."""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib

from zoo.errors import ZooError
from zoo.registry import REGISTRY, ModelEntry


def _load() -> None:
    if not REGISTRY:
        importlib.import_module("zoo.models")


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters them as a shell glob (``"dcgan*"``)."""
    _load()
    names = sorted(REGISTRY)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def get_model_entry(name: str) -> ModelEntry:
    _load()
    if name not in REGISTRY:
        raise ZooError(f"unknown model '{name}'; registered models: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def build_model(name: str, **cfg):
    """The registered model ``name`` with its default config overridden by ``cfg`` (checked: unknown keys,
    wrong types and out-of-range values are refused before anything is built), random weights."""
    entry = get_model_entry(name)
    _, training = split_settings(name, cfg)
    if training:
        raise ZooError(
            f"{', '.join(sorted(training))}: a training setting, not part of '{name}''s config; "
            "give it to zoo.train.train or `zoo train`"
        )
    model = entry.factory(**cfg)
    model.model_name = name
    return model


# Names that earlier checkpoints and cards used for what now has one name (or one home) each.
LEGACY_NAMES = {"nc": "channels", "in_channels": "channels", "dataset": "data"}


def split_settings(name: str, settings: dict) -> tuple[dict, dict]:
    """``settings`` by key into (overrides of the model's config, overrides of its TrainConfig); a key that is in
    neither is refused with the valid keys of both listed."""
    from zoo.config import TrainConfig

    entry = get_model_entry(name)
    model_keys, train_keys = entry.config.keys(), TrainConfig.keys()
    unknown = sorted(set(settings) - set(model_keys) - set(train_keys))
    if unknown:
        raise ZooError(
            f"unknown setting {', '.join(unknown)} for '{name}'; model: {', '.join(model_keys)}; "
            f"training: {', '.join(train_keys)}"
        )
    return (
        {k: v for k, v in settings.items() if k in model_keys},
        {k: v for k, v in settings.items() if k in train_keys},
    )


def upgrade_config(name: str, stored: dict) -> tuple[dict, dict]:
    """A config as an earlier checkpoint or card stored it (training settings inside, older names) as
    (the model's config, the training settings it held)."""
    renamed = {LEGACY_NAMES.get(k, k): v for k, v in stored.items()}
    if "cosine_lr" in renamed:
        renamed["lr_schedule"] = "cosine" if renamed.pop("cosine_lr") else "constant"
    config, training = split_settings(name, renamed)
    # A setting the model gained after the file was written is absent from it: the run had none, which is the
    # config class's own default (a new option is off there), whatever the registered factory now defaults to.
    added = {f.name: f for f in dataclasses.fields(get_model_entry(name).config) if f.name not in config}
    for key, f in added.items():
        if f.default is not dataclasses.MISSING:
            config[key] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            config[key] = f.default_factory()
    return config, training
