"""Training loop shared by the zoo's models: seeded and reproducible, a progress bar, a checkpoint and a
metrics file written (atomically) after every epoch, pictures at the end.

A model brings its own objective (``training_step``), held-out figures (``evaluate``) and pictures
(``write_pictures``); its config dataclass carries the defaults (``epochs``, ``batch_size``, ``lr``, ``dataset``).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from zoo.checkpoint import save_checkpoint
from zoo.data import load_dataset
from zoo.errors import ZooError
from zoo.io import atomic_write


def training_curves(run: dict, path: Path) -> Path:
    """One panel per logged quantity: the training losses (epoch means) and the held-out figures."""
    from zoo.pictures import line_plot, save_png

    series = {}
    for rows, prefix in ((run.get("train_history", []), "train "), (run["history"], "held-out ")):
        for row in rows:
            for k, v in row.items():
                constant = k in ("epoch", "seconds", "phase") or k.startswith("floor_")
                if not constant and isinstance(v, (int, float)):
                    series.setdefault(prefix + k, []).append((row["epoch"], float(v)))
    return save_png(path, line_plot(series, title=f"{run['model']}: per-epoch figures"))


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def train(
    name: str,
    out_dir,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    data: str | None = None,
    lr: float | None = None,
    limit: int | None = None,
    progress: bool = True,
    command: str | None = None,
    **overrides,
) -> dict:
    """Train registered model ``name`` into ``out_dir``; returns the final metrics (also in metrics.json)."""
    import torch
    from tqdm.auto import tqdm

    from zoo.registry import create_model

    torch.manual_seed(seed)
    model = create_model(name, **overrides)
    cfg = model.config
    epochs = cfg.epochs if epochs is None else epochs
    batch_size = cfg.batch_size if batch_size is None else batch_size
    lr = cfg.lr if lr is None else lr
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ZooError(f"epochs={epochs}, batch_size={batch_size}, lr={lr}; expected positive values")
    data = data or cfg.dataset
    size = tuple(cfg.image_size)
    channels = getattr(cfg, "nc", 1)
    train_set = load_dataset(data, "train", size=size, channels=channels)
    val_set = load_dataset(data, "val", size=size, channels=channels)
    X, y = train_set.images, train_set.labels  # (N, H, W), (N,) or None
    X_val, y_val = val_set.images, val_set.labels
    if limit is not None:
        X, y = X[:limit], (None if y is None else y[:limit])
        X_val, y_val = X_val[: max(1, limit // 4)], (None if y_val is None else y_val[: max(1, limit // 4)])
    if len(X) == 0 or len(X_val) == 0:
        raise ZooError(
            f"data '{data}' has {len(X)} training and {len(X_val)} held-out examples; need at least one of each"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_all = torch.from_numpy(X)
    y_all = None if y is None else torch.from_numpy(y)
    generator = torch.Generator().manual_seed(seed)
    optimizers = model.configure_optimizers(lr)
    run = {
        "model": name,
        "config": {**vars(cfg)},
        "data": data,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "train_examples": len(X),
        "val_examples": len(X_val),
        "command": command or "zoo " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "history": [],
    }
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(X), generator=generator)
        batches = range(0, len(X), batch_size)
        bar = tqdm(batches, desc=f"{name} epoch {epoch}/{epochs}", disable=not progress, leave=False, file=sys.stderr)
        sums: dict[str, float] = {}
        for i in bar:
            idx = order[i : i + batch_size]
            logs = model.training_step(x_all[idx], None if y_all is None else y_all[idx], optimizers, epoch)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
        model.eval()
        metrics = model.evaluate(X_val, y_val)
        run["history"].append({"epoch": epoch, "seconds": round(time.perf_counter() - start, 3), **metrics})
        run.setdefault("train_history", []).append({"epoch": epoch, **{k: v / len(batches) for k, v in sums.items()}})
        save_checkpoint(model, out_dir / "checkpoint.safetensors", epoch=epoch, metrics=metrics)
        run.setdefault("epoch_pictures", []).extend(str(p) for p in model.on_epoch_end(out_dir, epoch))
        _write_json(out_dir / "metrics.json", run)
        if progress:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            print(f"epoch {epoch}/{epochs}: {shown}", file=sys.stderr)
    run["train_seconds"] = round(time.perf_counter() - start, 3)
    run["final"] = run["history"][-1]
    save_checkpoint(
        model,
        out_dir / f"{name}.safetensors",
        epoch=epochs,
        metrics=run["final"],
        extra={"command": run["command"], "data": data, "seed": seed},
    )
    run["pictures"] = [str(p) for p in model.write_pictures(out_dir, X_val, y_val)]
    run["pictures"].append(str(training_curves(run, out_dir / "training_curves.png")))
    _write_json(out_dir / "metrics.json", run)
    return run
