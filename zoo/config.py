"""Settings, after nanoGPT's split: a model's config dataclass holds its architecture and objective, ``TrainConfig``
holds the run (data, epochs, batch size, step size and its schedule, seed). Each value has one home and is
checked there, before anything is allocated: every field of a ``Config`` declares its type through its
annotation and its range through ``setting(...)``, and a value of the wrong type, out of range or not finite is
refused with the field's name, the value and what was expected. No torch here."""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

from zoo.errors import ZooError


def setting(default=MISSING, *, factory=MISSING, lo=None, hi=None, lo_open=False, choices=None):
    """A config field with its bounds: ``lo <= value <= hi`` (``lo < value`` with ``lo_open``) or one of
    ``choices``; for a list field the bounds hold for each element."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _expected(kind, meta) -> str:
    name = getattr(kind, "__name__", str(kind))
    if meta.get("choices"):
        return "one of " + ", ".join(map(repr, meta["choices"]))
    lo, hi = meta.get("lo"), meta.get("hi")
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if meta.get('lo_open') else '>='} {lo:g}")
    if hi is not None:
        bounds.append(f"<= {hi:g}")
    return f"{'a finite ' if name == 'float' else 'an ' if name == 'int' else 'a '}{name}" + (
        " " + " and ".join(bounds) if bounds else ""
    )


def _check_scalar(key: str, value, kind, meta):
    """``value`` as ``kind`` (an int is a float too; nothing else converts), within the bounds of ``meta``."""
    what = _expected(kind, meta)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind in (int, float) and isinstance(value, bool) or not isinstance(value, kind):
        raise ZooError(f"{key}={value!r}: expected {what}")
    if kind is float and not math.isfinite(value):
        raise ZooError(f"{key}={value!r}: expected {what}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ZooError(f"{key}={value!r}: expected {what}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo) or hi is not None and value > hi:
        raise ZooError(f"{key}={value!r}: expected {what}")
    return value


def _check(key: str, value, hint, meta):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _check(key, value, hint, meta)
    if hint is list or origin is list:
        element = args[0] if args else None
        if not isinstance(value, (list, tuple)):
            raise ZooError(f"{key}={value!r}: expected a list")
        if element is None:
            return list(value)
        return [_check(f"{key}[{i}]", v, element, meta) for i, v in enumerate(value)]
    return _check_scalar(key, value, hint, meta)


class Config:
    """A dataclass whose fields are checked on construction (subclasses' ``__post_init__`` call this first)."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _check(f.name, getattr(self, f.name), hints[f.name], f.metadata))

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def build(cls, what: str, **values):
        """``cls(**values)``, refusing unknown keys with the valid ones listed."""
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ZooError(f"unknown {what} setting {', '.join(unknown)}; valid: {', '.join(cls.keys())}")
        return cls(**values)


@dataclass
class TrainConfig(Config):
    """One training run. ``lr_schedule="cosine"``: the step size of epoch e (1-based) is
    ``lr * (1 + cos(pi * (e - 1) / epochs)) / 2``."""

    data: str = "mnist"  # a bundled data set (mnist, digits8, mnist-seg, photos64), a folder of images or a .npy
    epochs: int = setting(10, lo=1, hi=1_000_000)
    batch_size: int = setting(64, lo=1, hi=1 << 16)
    lr: float = setting(1e-3, lo=0, lo_open=True, hi=10.0)  # Adam's step size
    beta1: float = setting(0.9, lo=0, hi=0.999999)  # Adam's first-moment decay
    lr_schedule: str = setting("constant", choices=("constant", "cosine"))
    seed: int = setting(0, lo=0, hi=2**63 - 1)  # initialisation and data order: same seed, same weights
    limit: int | None = setting(None, lo=1)  # train on the first N examples only (and hold out N // 4)
    eval_every: int = setting(1, lo=1, hi=1_000_000)  # held-out figures every N epochs (and after the last)
    device: str = "auto"  # auto (a GPU if one is usable), cpu, cuda or cuda:N

    def __post_init__(self):
        super().__post_init__()
        if not self.data:
            raise ZooError("data='': expected a bundled data set, a folder of images or an .npy file")
        if not re.fullmatch(r"auto|cpu|cuda(:\d{1,2})?", self.device):
            raise ZooError(f"device={self.device!r}: expected auto, cpu, cuda or cuda:N")

    def evaluates(self, epoch: int) -> bool:
        """Whether the held-out figures are computed after ``epoch`` (1-based): every ``eval_every``-th and the last."""
        return epoch % self.eval_every == 0 or epoch == self.epochs

    def lr_factor(self, epoch: int) -> float:
        if self.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (epoch - 1) / self.epochs)))
