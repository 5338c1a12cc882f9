"""Checkpoints as safetensors (never pickle): the tensors plus, in the header's metadata, everything needed to
rebuild the model from the file alone: ``{"model": name, "config": {...}, "epoch": ..., "metrics": {...}}``.

The trainer's per-epoch checkpoint also carries what resuming needs to continue exactly as if never stopped:
every optimizer's tensors (under ``RESUME_PREFIX + "optimizer/<name>/<param index>/<key>"``) and scalars and
param_groups (in the ``resume`` metadata), the torch RNG state of each rank and the data-order generator's state
(``RESUME_PREFIX + "rng/..."``), the run's history so far and the settings it was started with. Model weights
keep their own names, so ``load_checkpoint`` reads either kind of file; the resume tensors' names hold a ``/``,
which no module attribute can.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from zoo.errors import ZooError
from zoo.io import atomic_write

FORMAT = "deconv-zoo/1"
RESUME_PREFIX = "_resume/"


def save_checkpoint(
    model,
    path,
    *,
    epoch: int | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    overwrite: bool = True,
    resume: dict | None = None,
) -> Path:
    """``resume``: ``{"optimizers": {name: optimizer}, "rng": {name: uint8 tensor}, "state": {...}}`` for a
    checkpoint that training can continue from (see ``load_resume_state``)."""
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
    if resume is not None:
        state = dict(resume.get("state", {}))
        state["optimizers"] = {}
        for name, optimizer in resume["optimizers"].items():
            opt_tensors, state["optimizers"][name] = _split_optimizer_state(optimizer.state_dict())
            tensors.update({f"{RESUME_PREFIX}optimizer/{name}/{k}": v for k, v in opt_tensors.items()})
        tensors.update({f"{RESUME_PREFIX}rng/{k}": v.contiguous().cpu() for k, v in resume.get("rng", {}).items()})
        meta["resume"] = json.dumps(state)
    return atomic_write(path, save(tensors, metadata=meta), overwrite=overwrite)


def _split_optimizer_state(sd: dict) -> tuple[dict, dict]:
    """An optimizer's state_dict as (tensors by "<param index>/<key>", everything else as JSON-able data)."""
    import torch

    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = []
    for group in sd["param_groups"]:
        if any(isinstance(v, torch.Tensor) for v in group.values()):
            raise ZooError(f"optimizer param_group {sorted(group)} holds a tensor; expected plain numbers to save")
        groups.append(group)
    return tensors, {"scalars": scalars, "param_groups": groups}


def _join_optimizer_state(tensors: dict, data: dict) -> dict:
    """The inverse of ``_split_optimizer_state``: a state_dict ``optimizer.load_state_dict`` accepts."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entries in data["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    # JSON turned tuples (Adam's betas) into lists; torch's optimizers keep tuples there.
    groups = [
        {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
        for g in data["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def load_resume_state(path, model, optimizers: dict) -> dict:
    """Load the weights and every optimizer's state from a per-epoch checkpoint into ``model`` and
    ``optimizers``; returns ``{"meta": ..., "state": <the saved resume data>, "rng": {name: tensor}}``."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if "resume" not in meta:
        raise ZooError(f"'{path}' holds no training state (optimizers, RNG); expected a per-epoch checkpoint")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors' own error types for a damaged body
        raise ZooError(f"'{path}' cannot be read: {e}") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith(RESUME_PREFIX)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ZooError(f"'{path}' does not match model '{meta['model']}': {str(e).splitlines()[0]}") from None
    state = meta["resume"]
    saved = set(state["optimizers"])
    if saved != set(optimizers):
        raise ZooError(f"'{path}' holds optimizers {sorted(saved)}; the model trains with {sorted(optimizers)}")
    for name, optimizer in optimizers.items():
        prefix = f"{RESUME_PREFIX}optimizer/{name}/"
        opt_tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        optimizer.load_state_dict(_join_optimizer_state(opt_tensors, state["optimizers"][name]))
    prefix = f"{RESUME_PREFIX}rng/"
    rng = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {"meta": meta, "state": state, "rng": rng}


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
    out = {}
    for k, v in meta.items():
        try:
            out[k] = v if k in ("format", "model") else json.loads(v)
        except json.JSONDecodeError:
            raise ZooError(
                f"'{path}': its metadata field {k!r} is not JSON; expected a Deconv Zoo checkpoint"
            ) from None
    if not isinstance(out.get("model"), str) or not isinstance(out.get("config"), dict):
        raise ZooError(f"'{path}': its metadata has no model name and config; expected a Deconv Zoo checkpoint")
    return out


def stored_shapes(path) -> dict[str, tuple[int, ...]]:
    """The shape of every model tensor in a checkpoint, from its header alone (nothing is read or allocated)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if not k.startswith(RESUME_PREFIX)}


def rebuild_model(path, meta: dict):
    """The model a checkpoint's metadata describes, its config checked against the stored tensors' shapes on
    torch's meta device first: a small file whose config claims a huge model is refused before anything is
    allocated."""
    import torch

    from zoo.builder import build_model, upgrade_config

    config, _ = upgrade_config(meta["model"], meta["config"])  # the training settings earlier files held go
    with torch.device("meta"):
        skeleton = build_model(meta["model"], **config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = stored_shapes(path)
    for k in sorted(set(expected) | set(stored)):
        if expected.get(k) != stored.get(k):
            raise ZooError(
                f"'{path}' does not match its config for '{meta['model']}': tensor '{k}' is "
                f"{stored.get(k, 'missing')} in the file, {expected.get(k, 'absent')} by the config"
            )
    return build_model(meta["model"], **config)


def load_checkpoint(path):
    """Rebuild the model named in the checkpoint with its stored config and load its weights."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    model = rebuild_model(path, meta)
    try:
        weights = {k: v for k, v in load_file(str(path)).items() if not k.startswith(RESUME_PREFIX)}
    except Exception as e:  # safetensors' own error types for a damaged body
        raise ZooError(f"'{path}' cannot be read: {e}") from None
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ZooError(f"'{path}' does not match model '{meta['model']}': {str(e).splitlines()[0]}") from None
    model.eval()
    return model, meta


def training_data(meta: dict) -> str:
    """The data a checkpoint's model was trained on: as recorded, else its model's registered default."""
    from zoo.builder import get_model_entry

    if isinstance(meta.get("data"), str):
        return meta["data"]
    legacy = meta["config"].get("dataset")
    return legacy if isinstance(legacy, str) else get_model_entry(meta["model"]).train.data
