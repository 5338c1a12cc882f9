"""Checkpoints as safetensors (never pickle): the tensors plus, in the header's metadata, everything needed to
rebuild the model from the file alone: ``{"model": name, "config": {...}, "epoch": ..., "metrics": {...}}``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from zoo.errors import ZooError
from zoo.io import atomic_write

FORMAT = "deconv-zoo/1"


def save_checkpoint(
    model,
    path,
    *,
    epoch: int | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    overwrite: bool = True,
) -> Path:
    from safetensors.torch import save

    meta = {
        "format": FORMAT,
        "model": model.model_name,
        "config": json.dumps(asdict(model.config)),
        "epoch": json.dumps(epoch),
        "metrics": json.dumps(metrics or {}),
        **{k: json.dumps(v) for k, v in (extra or {}).items()},
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, save(tensors, metadata=meta), overwrite=overwrite)


def read_metadata(path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ZooError(f"checkpoint '{path}' does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise ZooError(f"'{path}' is not a safetensors checkpoint: {e}") from None
    if meta.get("format") != FORMAT:
        raise ZooError(
            f"'{path}' is not a Deconv Zoo checkpoint (metadata format {meta.get('format')!r}, expected {FORMAT})"
        )
    return {k: (v if k in ("format", "model") else json.loads(v)) for k, v in meta.items()}


def load_numpy(path) -> tuple[dict, dict]:
    """(state dict as NumPy arrays, metadata) without torch."""
    from safetensors.numpy import load_file

    meta = read_metadata(path)
    return load_file(str(path)), meta


def load_checkpoint(path):
    """Rebuild the model named in the checkpoint with its stored config and load its weights."""
    from safetensors.torch import load_file

    from zoo.registry import create_model

    meta = read_metadata(path)
    model = create_model(meta["model"], **meta["config"])
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as e:
        raise ZooError(f"'{path}' does not match model '{meta['model']}': {str(e).splitlines()[0]}") from None
    model.eval()
    return model, meta
