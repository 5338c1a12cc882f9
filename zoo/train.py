"""Training loop shared by the zoo's models: seeded and reproducible, a progress bar, a checkpoint and a
metrics file written (atomically) after every epoch, pictures at the end.

A model brings its own objective (``training_step``), held-out figures (``evaluate``) and pictures
(``write_pictures``); the run's settings are a ``zoo.config.TrainConfig`` (data, epochs, batch size, step size
and its schedule, seed, limit): the model's registered training defaults overridden by the caller, resolved once
here and handed to the model's optimizers and to the schedule.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from zoo.builder import build_model, get_model_entry, split_settings
from zoo.checkpoint import read_metadata, save_checkpoint
from zoo.config import TrainConfig
from zoo.data import load_dataset
from zoo.errors import ZooError
from zoo.io import atomic_write


def training_curves(run: dict, path: Path, references: dict | None = None) -> Path:
    """training_curves.png: the run's per-epoch figures on shared epochs (``zoo.pictures``)."""
    from zoo.pictures import save_figure, training_curves_figure

    return save_figure(path, training_curves_figure(run, references))


def metrics_csv(run: dict) -> bytes:
    """One row per epoch: the training losses (``train_`` + name) and the held-out figures, for watching a run
    while it trains (``tail -f``, a spreadsheet, pandas)."""
    train = {r["epoch"]: r for r in run.get("train_history", [])}
    rows = [{**{f"train_{k}": v for k, v in train.get(r["epoch"], {}).items() if k != "epoch"}, **r}
            for r in run["history"]]  # fmt: skip
    keys = ["epoch", "seconds"] + sorted({k for r in rows for k in r} - {"epoch", "seconds"})

    def cell(v) -> str:
        return f"{v:.10g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""

    lines = [",".join(keys)] + [",".join(cell(r.get(k)) for k in keys) for r in rows]
    return ("\n".join(lines) + "\n").encode()


# training_curves.png is redrawn after an epoch when this long has passed since it was last drawn (and after the
# last epoch): every epoch for most runs, without a 1,500-epoch run spending minutes in matplotlib.
CURVES_EVERY_SECONDS = 10.0


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

    def device(self, spec: str):
        """The torch device ``spec`` names for this process ("auto": this rank's GPU if one is usable, else the
        CPU; "cuda" under torchrun: the GPU of this rank's LOCAL_RANK), checked to exist."""
        import torch

        if spec == "cpu" or spec == "auto" and not torch.cuda.is_available():
            self.on = torch.device("cpu")
            return self.on
        if not torch.cuda.is_available():
            raise ZooError(
                f"device '{spec}': no CUDA device is usable here (torch {torch.__version__}, "
                f"torch.cuda.is_available() is False); use --device cpu or auto"
            )
        index = int(spec.partition(":")[2]) if ":" in spec else self.local_rank
        if index >= torch.cuda.device_count():
            raise ZooError(f"device '{spec}': this machine has {torch.cuda.device_count()} CUDA devices (0-based)")
        if self.distributed and ":" in spec:
            raise ZooError(f"device '{spec}' under torchrun: give 'cuda' and each rank takes its LOCAL_RANK's GPU")
        torch.cuda.set_device(index)
        # fp32 means fp32: no TF32 in matmuls and convolutions, so a GPU run computes what a CPU run does
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.on = torch.device("cuda", index)
        return self.on

    def start(self) -> None:
        """Join the process group: NCCL when this rank trains on a GPU, gloo on the CPU."""
        if not self.distributed:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.on.type == "cuda" else "gloo")

    def _gather(self, t):
        """Every rank's copy of ``t`` (a CPU tensor of one size on every rank), rank by rank, on the CPU."""
        if not self.distributed:
            return [t]
        import torch
        import torch.distributed as dist

        t = t.to(self.on)  # NCCL's collectives take device tensors
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t)
        return [p.cpu() for p in parts]

    def gather_rng(self) -> dict:
        """Every rank's torch RNG states (CPU, and CUDA when training on a GPU) by name."""
        import torch

        states = {f"torch/{r}": s for r, s in enumerate(self._gather(torch.get_rng_state()))}
        if self.on.type == "cuda":
            cuda = torch.cuda.get_rng_state(self.on)
            states.update({f"cuda/{r}": s for r, s in enumerate(self._gather(cuda))})
        return states

    def set_rng(self, saved: dict) -> None:
        import torch

        own = f"torch/{self.rank}" if f"torch/{self.rank}" in saved else "torch/0"
        torch.set_rng_state(saved[own])
        if self.on.type == "cuda" and f"cuda/{self.rank}" in saved:
            torch.cuda.set_rng_state(saved[f"cuda/{self.rank}"], self.on)

    def sum(self, values: list[float]) -> list[float]:
        if not self.distributed or not values:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.on)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def finish(self) -> None:
        """Wait for rank 0's writing, then leave the process group."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def _resume_settings(run: dict) -> dict:
    """What must be the same for a checkpoint to be continued: the model, its config and the data stream (the
    epoch count may grow)."""
    keys = ("model", "config", "data", "seed", "batch_size", "lr", "train_examples", "val_examples", "limit")
    training = {k: v for k, v in run["train"].items() if k not in ("epochs", "device", "eval_every")}
    return {**{k: run[k] for k in keys}, "train": training}


def resolve_settings(name: str, settings: dict) -> tuple[dict, TrainConfig]:
    """``settings`` (None: not given) as (overrides of ``name``'s config, the run's TrainConfig: the model's
    training defaults with the given ones over them), every value checked."""
    model_settings, train_settings = split_settings(name, {k: v for k, v in settings.items() if v is not None})
    return model_settings, TrainConfig(**{**asdict(get_model_entry(name).train), **train_settings})


def check_out_dir(out_dir: Path, name: str, *, force: bool, resume: bool) -> None:
    """Refuse to train into a folder that holds anything (an unfinished run above all) unless asked to; a
    finished run is extended (``resume``) only with ``force``."""
    if force or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ZooError(f"'{out_dir}' is not a folder; expected a new or empty output folder for the run")
    final, checkpoint = out_dir / f"{name}.safetensors", out_dir / "checkpoint.safetensors"
    if resume and final.exists():
        raise ZooError(f"'{final}' already exists: the run finished; pass --force with --resume to extend it")
    if resume:
        return
    if final.exists():
        raise ZooError(f"'{final}' already exists; choose another --out or pass --force to train over it")
    if checkpoint.exists():
        try:
            epoch = read_metadata(checkpoint).get("epoch")
        except ZooError:
            epoch = None
        raise ZooError(
            f"'{out_dir}' holds an unfinished run (its last checkpoint is from epoch {epoch}); continue it with "
            "--resume, or pass --force to start over"
        )
    held = sorted(p.name for p in out_dir.iterdir())
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise ZooError(f"'{out_dir}' is not empty ({shown}); choose a new or empty --out, or pass --force")


def _check_finite(logs: dict, where: str, checkpoint: Path, epoch: int) -> None:
    bad = {k: v for k, v in logs.items() if not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in bad.items())
        kept = f"the last good checkpoint is '{checkpoint}' (epoch {epoch - 1})" if epoch > 1 else "nothing was kept"
        raise ZooError(f"training diverged at {where}: {shown}; {kept}; try a smaller lr")


def train(
    name: str,
    out_dir,
    *,
    progress: bool = True,
    command: str | None = None,
    resume: bool = False,
    force: bool = False,
    **settings,
) -> dict:
    """Train registered model ``name`` into ``out_dir``; returns the final metrics (also in metrics.json).

    ``settings``: any field of ``name``'s config (``hidden=100``) or of ``TrainConfig`` (``epochs=5``,
    ``data="digits8"``); a value None takes the default. A folder that already holds files is refused unless
    ``force``. ``resume``: continue from ``out_dir/checkpoint.safetensors`` (weights, optimizers, RNG and
    data-order states, history) as if the run had never stopped; refused if the checkpoint is missing or was
    written for another model, config or data stream. Under ``torchrun`` (WORLD_SIZE > 1) each rank trains on
    its slice of every global batch of ``batch_size`` and gradients are averaged (``zoo/models/base.py``); rank 0
    alone evaluates and writes the checkpoints, metrics and pictures. A loss or weight that becomes NaN or
    infinite stops the run with an error, the last epoch's checkpoint kept.
    """
    import torch
    from tqdm.auto import tqdm

    from zoo.checkpoint import load_resume_state
    from zoo.models.base import data_parallel_batch

    world = _World()
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint.safetensors"
    model_settings, train_cfg = resolve_settings(name, settings)
    if resume:
        if not checkpoint.is_file():
            raise ZooError(
                f"cannot resume: '{checkpoint}' does not exist; expected the checkpoint of an interrupted run"
            )
        saved_model = read_metadata(checkpoint)["model"]
        if saved_model != name:
            raise ZooError(f"cannot resume '{checkpoint}': it holds a '{saved_model}' run, not '{name}'")
    if world.is_main:
        check_out_dir(out_dir, name, force=force, resume=resume)
    device = world.device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    model = build_model(name, **model_settings).to(device)
    cfg = model.config
    data, epochs, batch_size, limit = train_cfg.data, train_cfg.epochs, train_cfg.batch_size, train_cfg.limit
    size = tuple(cfg.image_size)
    channels = model.image_channels
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
    world.start()
    x_all = torch.from_numpy(X).to(device)  # the whole set on the training device, once
    y_all = None if y is None else torch.from_numpy(y).to(device)
    generator = torch.Generator().manual_seed(train_cfg.seed)
    optimizers = model.configure_optimizers(train_cfg)
    run = {
        "model": name,
        "config": asdict(cfg),
        "train": asdict(train_cfg),
        "data": data,
        "seed": train_cfg.seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": train_cfg.lr,
        "limit": limit,
        "train_examples": len(X),
        "val_examples": len(X_val),
        "command": command or "zoo " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": world.size,
        "history": [],
    }
    first_epoch, seconds_before = 1, 0.0
    if resume:
        theirs = read_metadata(checkpoint).get("resume", {}).get("settings", {})
        mine = json.loads(json.dumps(_resume_settings(run)))  # as JSON would give it back
        differing = sorted(k for k in mine if theirs.get(k) != mine[k])
        if differing:
            shown = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, now {mine[k]!r}" for k in differing)
            raise ZooError(f"cannot resume '{checkpoint}': it was written by a different run ({shown})")
        saved = load_resume_state(checkpoint, model, optimizers)
        state = saved["state"]
        rng = saved["rng"]
        world.set_rng(rng)
        generator.set_state(rng["data_order"])
        for key in ("history", "train_history", "epoch_pictures"):
            run[key] = state["run"].get(key, [])
        run["resumed"] = [*state["run"].get("resumed", []), {"after_epoch": state["epoch"], "command": run["command"]}]
        run["command"] = state["run"]["command"]
        first_epoch = state["epoch"] + 1
        seconds_before = run["history"][-1]["seconds"] if run["history"] else 0.0
    progress = progress and world.is_main
    curves_written = -math.inf
    start = time.perf_counter() - seconds_before
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        order = torch.randperm(len(X), generator=generator, device="cpu")  # one global order on every rank
        batches = range(0, len(X), batch_size)
        bar = tqdm(batches, desc=f"{name} epoch {epoch}/{epochs}", disable=not progress, leave=False, file=sys.stderr)
        for optimizer in optimizers.values():  # the schedule: each epoch's step size from the run's first
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * train_cfg.lr_factor(epoch)
        sums: dict[str, float] = {}
        for b, i in enumerate(bar):
            idx = order[i : i + batch_size].to(device)
            share = 1.0
            if world.distributed:  # this rank's slice of the global batch
                shard = idx.tensor_split(world.size)[world.rank]
                share, idx = len(shard) / len(idx), shard
            with data_parallel_batch(share) if world.distributed else contextlib.nullcontext():
                logs = model.training_step(x_all[idx], None if y_all is None else y_all[idx], optimizers, epoch)
            _check_finite(logs, f"epoch {epoch}, batch {b + 1} of {len(batches)}", checkpoint, epoch)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + (v * share if share else 0.0)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
        keys = sorted(sums)
        sums = dict(zip(keys, world.sum([sums[k] for k in keys])))  # share-weighted: the global batches' means
        rng_states = world.gather_rng()
        if not world.is_main:
            continue
        weights = {n: float(p.detach().abs().max()) for n, p in model.named_parameters() if p.numel()}
        _check_finite({n: v for n, v in weights.items() if not math.isfinite(v)}, f"epoch {epoch}", checkpoint, epoch)
        model.eval()
        with torch.random.fork_rng(devices=[]):  # evaluation and pictures leave the training RNG alone
            metrics = model.evaluate(X_val, y_val) if train_cfg.evaluates(epoch) else {}
            pictures = [str(p) for p in model.on_epoch_end(out_dir, epoch)]
        run["history"].append({"epoch": epoch, "seconds": round(time.perf_counter() - start, 3), **metrics})
        run.setdefault("train_history", []).append({"epoch": epoch, **{k: v / len(batches) for k, v in sums.items()}})
        run.setdefault("epoch_pictures", []).extend(pictures)
        resume_state = {
            "optimizers": optimizers,
            "rng": {"data_order": generator.get_state(), **rng_states},
            "state": {
                "epoch": epoch,
                "settings": _resume_settings(run),
                "run": {k: run[k] for k in ("history", "train_history", "epoch_pictures", "command") if k in run}
                | ({"resumed": run["resumed"]} if "resumed" in run else {}),
            },
        }
        save_checkpoint(model, checkpoint, epoch=epoch, metrics=metrics, resume=resume_state)
        _write_json(out_dir / "metrics.json", run)
        atomic_write(out_dir / "metrics.csv", metrics_csv(run))
        if time.perf_counter() - curves_written > CURVES_EVERY_SECONDS or epoch == epochs:
            training_curves(run, out_dir / "training_curves.png", model.curve_references)
            curves_written = time.perf_counter()
        if progress and metrics:
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
        extra={"command": run["command"], "data": data, "seed": train_cfg.seed, "train": run["train"]},
    )
    run["pictures"] = [str(p) for p in model.write_pictures(out_dir, X_val, y_val)]
    run["pictures"].append(str(training_curves(run, out_dir / "training_curves.png", model.curve_references)))
    _write_json(out_dir / "metrics.json", run)
    world.finish()
    return {**run, "rank": world.rank}
