"""``zoo warmup``: compile the CPU kernels the shipped models use into the runtime's on-disk kernel cache
(``runtime/ops/_kernel_cache.py`` says where), so that a fresh process's first inference loads them instead of
compiling them. Each model runs on zeros at a few batch sizes (a batch chooses between serial and parallel
kernels); a kernel already cached is loaded, so a second warmup takes seconds."""

from __future__ import annotations

import time
from pathlib import Path

# 1: `zoo run` on an image; 10: a class-conditional generator's one sample per class; 64: `zoo sample`'s grid
WARMUP_BATCHES = (1, 10, 64)
ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
               "tensor(int32)": "int32"}  # fmt: skip


def run_model(path: str, batches: tuple[int, ...] = WARMUP_BATCHES) -> float:
    """Run the ONNX file ``path`` on this runtime's CPU backend on zeros at each batch size (every dynamic
    dimension set to it); the seconds it took, compilation included."""
    import numpy as np

    import runtime

    start = time.perf_counter()
    session = runtime.InferenceSession(path, backend="cpu")
    for batch in batches:
        feeds = {
            i.name: np.zeros([d if isinstance(d, int) else batch for d in i.shape], ONNX_DTYPES.get(i.type, "float32"))
            for i in session.get_inputs()
        }
        session.run(None, feeds)
    return time.perf_counter() - start


def warmup(models: list[Path], report=print) -> float:
    """Compile and cache the kernels of ``models`` (ONNX files), one after the other; ``report`` gets one line per
    model. Returns the seconds it took. (Worker processes did not help: on 2 cores already busy, two of them
    took 100 s for what one process does in 51 s, each compiling the GEMM and the convolutions again.)"""
    start = time.perf_counter()
    for path in models:
        report(f"{Path(path).stem:<32} {run_model(str(path)):6.1f} s")
    return time.perf_counter() - start


def cache_dir() -> str:
    """Where the kernels are cached (``runtime.ops.KERNEL_CACHE_DIR``), for the command's last line."""
    from runtime.ops import KERNEL_CACHE_DIR

    return KERNEL_CACHE_DIR or "Numba's default location (__pycache__ beside the sources)"
