"""The zoo's front door, after timm's ``_factory.py``: ``create_model(name, pretrained=...)`` and
``list_models(pattern, pretrained=...)``. Shipped weights are found by their card (``weights/<name>.card.json``),
by weights name (``sparse-ae-mnist``) or by model name when one card is for that model (``sparse-ae``), and
are checked against the folder's manifest before they are read.

    import zoo
    zoo.list_models("dcgan*")                        # ['dcgan-64', 'dcgan-mnist', 'dcgan-mnist-no-phases']
    zoo.list_models(pretrained=True)                 # the models with shipped weights
    model = zoo.create_model("dcgan-mnist", pretrained=True)
    weights = zoo.pretrained_weights("dcgan-mnist")  # .meta: the card; .files: its files
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from zoo.builder import build_model, get_model_entry
from zoo.builder import list_models as _registered
from zoo.cards import default_weights_dir, load_cards, verify_file
from zoo.errors import ZooError


@dataclass(frozen=True)
class Weights:
    """One set of shipped weights: its card (``meta``: model, config, data, command, held-out metrics) and the
    folder its files are in."""

    name: str
    meta: dict
    folder: Path

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def checkpoint(self) -> Path:
        """The safetensors file, its sha256 checked against the folder's manifest."""
        return verify_file(self.folder / f"{self.name}.safetensors")

    @property
    def files(self) -> list[Path]:
        return [self.folder / f for f in self.meta.get("files", [])]

    @property
    def metrics(self) -> dict:
        return dict(self.meta.get("metrics", {}))

    def onnx(self, part: str | None = None) -> Path:
        """The ONNX file (of ``part`` for a model exported in parts), checked against the manifest."""
        onnx_files = [f for f in self.meta.get("files", []) if f.endswith(".onnx")]
        wanted = f"{self.name}.{part}.onnx" if part else f"{self.name}.onnx"
        if wanted not in onnx_files:
            raise ZooError(f"'{self.name}' ships {', '.join(onnx_files) or 'no ONNX file'}; not {wanted}")
        return verify_file(self.folder / wanted)

    def transforms(self, part: str | None = None):
        """The preprocessing its ONNX input expects (``zoo.images.InputSpec``): call it on image paths or
        arrays of pixels in [0, 1] to get the batch to feed. Torch-free."""
        import onnx

        from zoo.images import InputSpec

        model = onnx.load(str(self.onnx(part)), load_external_data=False)
        arg = model.graph.input[0]
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in arg.type.tensor_type.shape.dim]
        return InputSpec.from_onnx(arg.name, shape, {p.key: p.value for p in model.metadata_props})


def _cards(folder) -> list[dict]:
    return [c for c in load_cards(folder) if isinstance(c.get("name"), str) and isinstance(c.get("model"), str)]


def pretrained_weights(name: str, weights_dir=None) -> Weights:
    """The shipped weights called ``name``, or the one set shipped for model ``name``."""
    folder = Path(weights_dir or default_weights_dir())
    cards = _cards(folder)
    mine = [c for c in cards if c["name"] == name] or [c for c in cards if c["model"] == name]
    if len(mine) != 1:
        shipped = ", ".join(sorted(c["name"] for c in cards)) or "none"
        how = "several" if mine else "no"
        raise ZooError(f"{how} shipped weights for '{name}' in {folder}; shipped: {shipped}")
    return Weights(mine[0]["name"], mine[0], folder)


def list_models(pattern: str | None = None, pretrained: bool = False, weights_dir=None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters them as a shell glob (``"dcgan*"``); ``pretrained``:
    only the models with shipped weights."""
    names = _registered()
    if pretrained:
        shipped = {c["model"] for c in _cards(weights_dir or default_weights_dir())}
        names = [n for n in names if n in shipped]
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def create_model(name: str, pretrained: bool = False, weights_dir=None, **cfg):
    """The registered model ``name`` with its config overridden by ``cfg``; ``pretrained``: with its shipped
    weights (``name`` may then be a weights name), in eval mode, its card as ``model.pretrained``."""
    if not pretrained:
        return build_model(name, **cfg)
    if cfg:
        raise ZooError(f"pretrained weights come with their config; drop {', '.join(sorted(cfg))} or pretrained=True")
    from zoo.checkpoint import load_checkpoint

    weights = pretrained_weights(name, weights_dir)
    if name != weights.name and name != weights.model:
        raise ZooError(f"'{weights.name}' holds a '{weights.model}', not a '{name}'")
    get_model_entry(weights.model)
    model, _ = load_checkpoint(weights.checkpoint)
    model.pretrained = weights
    return model
