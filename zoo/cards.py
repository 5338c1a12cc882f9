"""Model cards as data: ``weights/<name>.card.json`` holds the measured figures, the exact command that
produced the weights and the files they live in; ``weights/MANIFEST.json`` holds each file's sha256.
No torch here: ``zoo list`` reads the cards on machines without it."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import ZooError
from zoo.io import sha256_of

MANIFEST = "MANIFEST.json"


def default_weights_dir() -> Path:
    """The repository's weights/ folder, or $ZOO_WEIGHTS_DIR."""
    import os

    return Path(os.environ.get("ZOO_WEIGHTS_DIR", Path(__file__).resolve().parents[1] / "weights"))


def load_cards(folder) -> list[dict]:
    folder = Path(folder)
    cards = []
    for p in sorted(folder.glob("*.card.json")):
        try:
            cards.append(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise ZooError(f"model card '{p}' is not valid JSON: {e}") from None
    return cards


def load_manifest(folder) -> dict[str, str]:
    p = Path(folder) / MANIFEST
    return json.loads(p.read_text()) if p.is_file() else {}


def verify_file(path) -> Path:
    """Refuse a file in a weights folder whose sha256 differs from the folder's manifest."""
    path = Path(path)
    manifest = load_manifest(path.parent)
    expected = manifest.get(path.name)
    if expected is None:
        raise ZooError(f"'{path.name}' is not listed in {path.parent / MANIFEST}; refused")
    actual = sha256_of(path)
    if actual != expected:
        raise ZooError(f"'{path}' has sha256 {actual[:16]}..., but the manifest says {expected[:16]}...; refused")
    return path


def render_card(card: dict) -> str:
    """The human-readable model card (Markdown) for a card's data."""
    m = card["metrics"]
    lines = [
        f"# {card['name']}",
        "",
        card.get("description", ""),
        "",
        f"- model: `{card['model']}`  config: `{json.dumps(card['config'], sort_keys=True)}`",
        f"- data: `{card['data']}` ({card['train_examples']} training / {card['val_examples']} held-out examples, "
        "fixed stratified split)",
        f"- trained with: `{card['command']}` (seed {card['seed']}, {card['train_seconds']:.1f} s on "
        f"{card['threads']} CPU threads, torch {card['torch']})",
        f"- files: {', '.join(f'`{f}`' for f in card['files'])} (sha256 in `{MANIFEST}`)",
        "",
        "## Held-out figures (recomputed from the shipped files by `tests/test_weights.py`)",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in sorted(m.items()) if isinstance(v, (int, float))],
        "",
    ]
    return "\n".join(lines)


def publish(run_dir, name: str, weights_dir, *, overwrite: bool = False) -> dict:
    """Ship a finished training run as ``weights_dir/name.{safetensors,onnx,card.json,md}`` and update the
    manifest; the ONNX file is exported (and checked) from the run's final checkpoint."""
    from zoo.checkpoint import load_checkpoint
    from zoo.data import load_dataset
    from zoo.export import export_onnx
    from zoo.io import atomic_write, check_writable

    run_dir, weights_dir = Path(run_dir), Path(weights_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ZooError(f"'{run_dir}' holds no metrics.json; expected the folder of a finished `zoo train` run")
    run = json.loads(metrics_path.read_text())
    if "final" not in run:
        raise ZooError(f"the run in '{run_dir}' did not finish (metrics.json has no final figures)")
    ckpt = run_dir / f"{run['model']}.safetensors"
    model, meta = load_checkpoint(ckpt)
    parts = list(model.export_parts()) or [None]
    onnx_files = {part: weights_dir / (f"{name}.{part}.onnx" if part else f"{name}.onnx") for part in parts}
    files = {ext: weights_dir / f"{name}{ext}" for ext in (".safetensors", ".card.json", ".md")}
    for p in [*files.values(), *onnx_files.values()]:
        check_writable(p, overwrite)
    weights_dir.mkdir(parents=True, exist_ok=True)
    val = load_dataset(run["data"], "val", tuple(model.config.image_size), getattr(model.config, "nc", 1))
    reports = {
        part: export_onnx(
            model, path, part=part, data=(val.images, val.labels), metrics=run["final"], overwrite=overwrite
        )
        for part, path in onnx_files.items()
    }
    atomic_write(files[".safetensors"], ckpt.read_bytes(), overwrite=overwrite)
    from zoo.registry import get_model_entry

    card = {
        "name": name,
        "model": run["model"],
        "description": get_model_entry(run["model"]).description,
        "config": run["config"],
        "data": run["data"],
        "seed": run["seed"],
        "command": run["command"],
        "train_examples": run["train_examples"],
        "val_examples": run["val_examples"],
        "train_seconds": run["train_seconds"],
        "threads": run["threads"],
        "torch": run["torch"],
        "headline": model.headline_metric,
        "metrics": {k: v for k, v in run["final"].items() if k not in ("epoch", "seconds")},
        "export": {
            (part or "model"): {k: v for k, v in r.items() if k not in ("path", "test_data")}
            for part, r in reports.items()
        },
        "files": [files[".safetensors"].name, *(p.name for p in onnx_files.values())],
    }
    atomic_write(files[".card.json"], (json.dumps(card, indent=2, sort_keys=True) + "\n").encode(), overwrite=overwrite)
    atomic_write(files[".md"], render_card(card).encode(), overwrite=overwrite)
    manifest = load_manifest(weights_dir)
    shipped = [files[".safetensors"], *onnx_files.values()]
    for r in reports.values():
        shipped += sorted(Path(r["test_data"]).glob("*.pb"))
    for p in shipped:
        manifest[str(p.relative_to(weights_dir))] = sha256_of(p)
    atomic_write(weights_dir / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    for picture in map(Path, run.get("pictures", [])):  # the run's final figures travel with the weights
        if picture.is_file():
            atomic_write(weights_dir / f"{name}.{picture.name}", picture.read_bytes(), overwrite=True)
    return card
