"""Training loop shared by the zoo's models: seeded and reproducible, a progress bar, a checkpoint and a
metrics file written (atomically) after every epoch, pictures at the end.

A model brings its own objective (``training_step``), held-out figures (``evaluate``) and pictures
(``write_pictures``); its config dataclass carries the defaults (``epochs``, ``batch_size``, ``lr``, ``dataset``).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from pathlib import Path

from zoo.checkpoint import read_metadata, save_checkpoint
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


class _World:
    """This process's place in a ``torchrun`` launch (WORLD_SIZE, RANK, LOCAL_RANK), or a world of one."""

    def __init__(self):
        import os

        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ZooError(f"WORLD_SIZE={self.size}, RANK={self.rank}; expected 0 <= RANK < WORLD_SIZE")

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, model) -> None:
        """Join the process group: NCCL when the model's parameters live on a GPU, gloo on the CPU."""
        if not self.distributed:
            return
        import torch.distributed as dist

        on_gpu = any(p.is_cuda for p in model.parameters())
        if not dist.is_initialized():
            dist.init_process_group("nccl" if on_gpu else "gloo")

    def gather_rng(self):
        """Every rank's torch RNG state (uint8 tensors of one size), rank by rank."""
        import torch

        state = torch.get_rng_state()
        if not self.distributed:
            return [state]
        import torch.distributed as dist

        states = [torch.empty_like(state) for _ in range(self.size)]
        dist.all_gather(states, state)
        return states

    def sum(self, values: list[float]) -> list[float]:
        if not self.distributed or not values:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def finish(self) -> None:
        """Wait for rank 0's writing, then leave the process group."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def _resume_settings(run: dict, limit) -> dict:
    """What must be the same for a checkpoint to be continued: the model, its config and the data stream."""
    keys = ("model", "config", "data", "seed", "batch_size", "lr", "train_examples", "val_examples")
    return {**{k: run[k] for k in keys}, "limit": limit}


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
    resume: bool = False,
    **overrides,
) -> dict:
    """Train registered model ``name`` into ``out_dir``; returns the final metrics (also in metrics.json).

    ``resume``: continue from ``out_dir/checkpoint.safetensors`` (weights, optimizers, RNG and data-order
    states, history) as if the run had never stopped; refused if the checkpoint is missing or was written for
    another model, config or data stream. Under ``torchrun`` (WORLD_SIZE > 1) each rank trains on its slice of
    every global batch of ``batch_size`` and gradients are averaged (``zoo/models/base.py``); rank 0 alone
    evaluates and writes the checkpoints, metrics and pictures.
    """
    import torch
    from tqdm.auto import tqdm

    from zoo.checkpoint import load_resume_state
    from zoo.models.base import data_parallel_batch
    from zoo.registry import create_model

    world = _World()
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint.safetensors"
    if resume:
        if not checkpoint.is_file():
            raise ZooError(
                f"cannot resume: '{checkpoint}' does not exist; expected the checkpoint of an interrupted run"
            )
        saved_model = read_metadata(checkpoint)["model"]
        if saved_model != name:
            raise ZooError(f"cannot resume '{checkpoint}': it holds a '{saved_model}' run, not '{name}'")
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
    out_dir.mkdir(parents=True, exist_ok=True)
    world.start(model)
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
        "world_size": world.size,
        "history": [],
    }
    first_epoch, seconds_before = 1, 0.0
    if resume:
        theirs = read_metadata(checkpoint).get("resume", {}).get("settings", {})
        mine = json.loads(json.dumps(_resume_settings(run, limit)))  # as JSON would give it back
        differing = sorted(k for k in mine if theirs.get(k) != mine[k])
        if differing:
            shown = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, now {mine[k]!r}" for k in differing)
            raise ZooError(f"cannot resume '{checkpoint}': it was written by a different run ({shown})")
        saved = load_resume_state(checkpoint, model, optimizers)
        state = saved["state"]
        rng = saved["rng"]
        own = f"torch/{world.rank}" if f"torch/{world.rank}" in rng else "torch/0"
        torch.set_rng_state(rng[own])
        generator.set_state(rng["data_order"])
        for key in ("history", "train_history", "epoch_pictures"):
            run[key] = state["run"].get(key, [])
        run["resumed"] = [*state["run"].get("resumed", []), {"after_epoch": state["epoch"], "command": run["command"]}]
        run["command"] = state["run"]["command"]
        first_epoch = state["epoch"] + 1
        seconds_before = run["history"][-1]["seconds"] if run["history"] else 0.0
    progress = progress and world.is_main
    start = time.perf_counter() - seconds_before
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        order = torch.randperm(len(X), generator=generator)  # the same global order on every rank
        batches = range(0, len(X), batch_size)
        bar = tqdm(batches, desc=f"{name} epoch {epoch}/{epochs}", disable=not progress, leave=False, file=sys.stderr)
        sums: dict[str, float] = {}
        for i in bar:
            idx = order[i : i + batch_size]
            share = 1.0
            if world.distributed:  # this rank's slice of the global batch
                shard = idx.tensor_split(world.size)[world.rank]
                share, idx = len(shard) / len(idx), shard
            with data_parallel_batch(share) if world.distributed else contextlib.nullcontext():
                logs = model.training_step(x_all[idx], None if y_all is None else y_all[idx], optimizers, epoch)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + (v * share if share else 0.0)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
        keys = sorted(sums)
        sums = dict(zip(keys, world.sum([sums[k] for k in keys])))  # share-weighted: the global batches' means
        rng_states = world.gather_rng()
        if not world.is_main:
            continue
        model.eval()
        with torch.random.fork_rng(devices=[]):  # evaluation and pictures leave the training RNG alone
            metrics = model.evaluate(X_val, y_val)
            pictures = [str(p) for p in model.on_epoch_end(out_dir, epoch)]
        run["history"].append({"epoch": epoch, "seconds": round(time.perf_counter() - start, 3), **metrics})
        run.setdefault("train_history", []).append({"epoch": epoch, **{k: v / len(batches) for k, v in sums.items()}})
        run.setdefault("epoch_pictures", []).extend(pictures)
        resume_state = {
            "optimizers": optimizers,
            "rng": {"data_order": generator.get_state(), **{f"torch/{r}": s for r, s in enumerate(rng_states)}},
            "state": {
                "epoch": epoch,
                "settings": _resume_settings(run, limit),
                "run": {k: run[k] for k in ("history", "train_history", "epoch_pictures", "command") if k in run}
                | ({"resumed": run["resumed"]} if "resumed" in run else {}),
            },
        }
        save_checkpoint(model, checkpoint, epoch=epoch, metrics=metrics, resume=resume_state)
        _write_json(out_dir / "metrics.json", run)
        if progress:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            print(f"epoch {epoch}/{epochs}: {shown}", file=sys.stderr)
    run["train_seconds"] = round(time.perf_counter() - start, 3)
    if not world.is_main:
        world.finish()
        return {**run, "rank": world.rank, "final": {}, "pictures": []}
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
    world.finish()
    return {**run, "rank": world.rank}
