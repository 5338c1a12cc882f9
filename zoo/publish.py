"""Publishing a finished training run into a weights folder: the checkpoint, its checked ONNX export(s) with
their ``test_data_set_0`` folders, the model card (JSON and Markdown), the run's pictures and the folder's
``MANIFEST.json`` are staged together and committed as one set through ``zoo.io.staged_set``: a crash at any
point leaves the old set or the new one, never a mixture (the next publish or reader finishes the commit)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from zoo.cards import MANIFEST, load_manifest
from zoo.errors import ZooError
from zoo.io import check_folder_replaceable, check_writable, folder_lock, sha256_of, staged_set

# A weights name becomes file names (``<name>.onnx``, ``<name>.<part>.onnx``, ``<name>.<picture>.png``) and a
# folder inside the weights folder: no path separators or '..', nothing hidden, lowercase (case-insensitive file
# systems), and no dots, so that no name's files can be mistaken for another's (``dcgan-mnist.generator``).
NAME_RULE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
NAME_EXPECTED = "expected 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise ZooError(f"{name!r} is not a valid weights name; {NAME_EXPECTED}")
    return name


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


def _test_data(onnx_name: str) -> str:
    return f"{onnx_name.removesuffix('.onnx')}/test_data_set_0"


def _check_targets(weights_dir: Path, files: list[str], folders: list[str], overwrite: bool) -> None:
    check_writable(weights_dir / MANIFEST, True)  # replaced by every publish, but never if it is a link or a device
    for rel in files:
        check_writable(weights_dir / rel, overwrite)
    for rel in folders:
        check_folder_replaceable(weights_dir / rel, overwrite)


def _sweep_debris(weights_dir: Path, names: list[str], min_age_s: float = 3600.0) -> None:
    """Delete what a killed publish of the earlier, file-by-file kind left beside these files: the temporary
    files of ``atomic_write`` (``.<file>.<8 chars>.tmp``) and the export's staging folders (``.<file>.<8 chars>``),
    once they are an hour old (a live writer's are younger)."""
    import time

    patterns = [re.compile(rf"\.{re.escape(n)}\.[a-z0-9_]{{8}}(\.tmp)?") for n in names]
    for p in weights_dir.iterdir():
        if any(pat.fullmatch(p.name) for pat in patterns) and time.time() - p.lstat().st_mtime > min_age_s:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _old_set(weights_dir: Path, name: str) -> list[str]:
    """The paths of what is published under ``name`` now, as its card lists them (never anything of another
    name: every path must be ``<name>.<something>``, a plain file name)."""
    old = {f"{name}.card.json", f"{name}.md"}
    try:
        card = json.loads((weights_dir / f"{name}.card.json").read_text())
    except (OSError, ValueError):
        card = {}
    listed = [*card.get("files", []), *card.get("pictures", [])] if isinstance(card, dict) else []
    for f in listed:
        if isinstance(f, str) and f.startswith(f"{name}.") and "/" not in f and "\\" not in f and ".." not in f:
            old.add(f)
            if f.endswith(".onnx"):
                old.update({f"{f}.data", _test_data(f)})
    return sorted(rel for rel in old if os.path.lexists(weights_dir / rel))


def _manifest_entries(root: Path, rel: str) -> dict[str, str]:
    """sha256 of the staged file ``root/rel``, or of every file in the staged folder ``root/rel``."""
    path = root / rel
    if not path.is_dir():
        return {rel: sha256_of(path)}
    return {str(p.relative_to(root)): sha256_of(p) for p in sorted(path.rglob("*")) if p.is_file()}


def publish(run_dir, name: str, weights_dir, *, overwrite: bool = False) -> dict:
    """Ship a finished training run as ``weights_dir/name.{safetensors,onnx,card.json,md}`` (with the ONNX
    files' test data and the run's pictures) and update the manifest, all or nothing; the ONNX file is exported
    (and checked) from the run's final checkpoint. ``overwrite`` replaces the whole set published as ``name``."""
    import zoo
    from zoo.checkpoint import load_checkpoint
    from zoo.data import load_dataset
    from zoo.export import export_onnx

    name = check_name(name)
    run_dir, weights_dir = Path(run_dir), Path(weights_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ZooError(f"'{run_dir}' holds no metrics.json; expected the folder of a finished `zoo train` run")
    run = json.loads(metrics_path.read_text())
    if "final" not in run:
        raise ZooError(f"the run in '{run_dir}' did not finish (metrics.json has no final figures)")
    if os.path.lexists(weights_dir) and not weights_dir.is_dir():
        raise ZooError(f"'{weights_dir}' is not a directory; expected the weights folder")
    ckpt = run_dir / f"{run['model']}.safetensors"
    model, meta = load_checkpoint(ckpt)
    parts = list(model.export_parts()) or [None]
    onnx_names = {part: f"{name}.{part}.onnx" if part else f"{name}.onnx" for part in parts}
    pictures = {f"{name}.{p.name}": p for p in map(Path, run.get("pictures", [])) if p.is_file()}
    weights = [f"{name}.safetensors", *onnx_names.values()]
    documents = [*pictures, f"{name}.card.json", f"{name}.md"]
    files = [*weights, *documents]
    folders = [_test_data(f) for f in onnx_names.values()]
    _check_targets(weights_dir, files, folders, overwrite)  # before the slow export; again at the commit
    val = load_dataset(run["data"], "val", tuple(model.config.image_size), getattr(model.config, "nc", 1))

    with staged_set(weights_dir, name) as staged:
        reports = {
            part: export_onnx(model, staged.path(f), part=part, data=(val.images, val.labels), metrics=run["final"])
            for part, f in onnx_names.items()
        }
        external = [Path(r["external_data"]).name for r in reports.values() if "external_data" in r]
        shutil.copyfile(ckpt, staged.path(f"{name}.safetensors"))
        for target, picture in pictures.items():  # the run's final figures travel with the weights
            shutil.copyfile(picture, staged.path(target))
        card = {
            "name": name,
            "model": run["model"],
            "description": zoo.get_model_entry(run["model"]).description,
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
                (part or "model"): {k: v for k, v in r.items() if k not in ("path", "test_data", "external_data")}
                for part, r in reports.items()
            },
            "files": weights,
            "pictures": list(pictures),
        }
        staged.path(f"{name}.card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        staged.path(f"{name}.md").write_text(render_card(card))
        install = [*weights, *external, *folders, *documents]  # and the manifest last

        with folder_lock(weights_dir):  # the manifest is read, merged and replaced by one publisher at a time
            _check_targets(weights_dir, [*files, *external], folders, overwrite)
            _sweep_debris(weights_dir, [*files, *external, MANIFEST])
            old = _old_set(weights_dir, name)
            gone = [*old, *install]
            manifest = {
                rel: digest
                for rel, digest in load_manifest(weights_dir).items()
                if not any(rel == g or rel.startswith(g + "/") for g in gone)
            }
            for rel in install:
                manifest.update(_manifest_entries(staged.new, rel))
            staged.path(MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            try:
                staged.commit([*install, MANIFEST], [rel for rel in old if rel not in install])
            except OSError as e:
                raise ZooError(
                    f"publishing '{name}' into '{weights_dir}' was interrupted ({e}); "
                    "the next publish or load of that folder completes it"
                ) from None
    return card
