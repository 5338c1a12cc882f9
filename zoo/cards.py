"""Model cards as data: ``weights/<name>.card.json`` holds the measured figures, the exact command that
produced the weights and the files they live in; ``weights/MANIFEST.json`` holds each file's sha256.
No torch here: ``zoo list`` reads the cards on machines without it. Publishing is ``zoo.publish``; a reader
first finishes a publish that a crash interrupted (``zoo.io.recover``), so it sees the old set or the new one."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import ZooError
from zoo.io import recover, sha256_of

MANIFEST = "MANIFEST.json"


def default_weights_dir() -> Path:
    """The repository's weights/ folder, or $ZOO_WEIGHTS_DIR."""
    import os

    return Path(os.environ.get("ZOO_WEIGHTS_DIR", Path(__file__).resolve().parents[1] / "weights"))


def load_cards(folder) -> list[dict]:
    folder = Path(folder)
    recover(folder)
    cards = []
    for p in sorted(folder.glob("*.card.json")):
        try:
            cards.append(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise ZooError(f"model card '{p}' is not valid JSON: {e}") from None
    return cards


def load_manifest(folder) -> dict[str, str]:
    recover(folder)
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
