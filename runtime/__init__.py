"""Deconv Zoo's ONNX runtime: runs exported graphs with Numba kernels on the CPU and Numba-CUDA kernels on
NVIDIA GPUs, with onnxruntime's Python API: ``import runtime as ort`` for ``import onnxruntime as ort``. It never
imports torch, nor numba.cuda until a CUDA session is created or, on a machine with an NVIDIA driver,
``get_available_providers()`` asks whether a device is usable.

    import runtime as ort  # for: import onnxruntime as ort
    sess = ort.InferenceSession("weights/sparse-ae-mnist.onnx", providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})  # backend="cpu" / backend="cuda": the runtime's own spelling
"""

import ctypes
import glob
import os
import sys

# How Numba's OpenMP workers wait between parallel loops, read when OpenMP starts (so set before any kernel runs;
# a user's own setting wins). GNU OpenMP's default spins for long after every loop, holding cores that
# onnxruntime, PyTorch or a BLAS in the same process need (the sparse autoencoder at batch 64 took 4.1 ms
# beside spinning workers, 0.63 ms beside passive ones); fully passive workers sleep at once and take ~40 us to
# wake for the next loop, on every node of a model (a 36 us loop took 81 us). A short spin (GOMP_SPINCOUNT,
# about 0.1-0.5 ms here) keeps the workers awake from one node to the next and asleep soon after a run.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # other OpenMP runtimes: wait passively


def _threading_layer() -> str:
    """Numba's threading layer, chosen before any parallel kernel runs: TBB, which is safe both in a forked child
    and from several threads at once (GNU OpenMP kills a child forked after a parallel loop, so a
    ``multiprocessing.Pool`` hangs; Numba's own workqueue aborts when two threads launch kernels at once). The
    ``tbb`` wheel installs its library in ``<prefix>/lib``, which the loader does not search in a virtual
    environment: it is loaded here by path, so that Numba's TBB pool finds it. A user's NUMBA_THREADING_LAYER
    wins; without TBB, Numba's default order applies."""
    import numba

    if os.environ.get("NUMBA_THREADING_LAYER"):
        return numba.config.THREADING_LAYER
    for pattern in ("libtbb.so.12", "libtbb.12.dylib", "libtbb.so.12.*"):
        for path in glob.glob(os.path.join(sys.prefix, "lib", pattern)):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                break
            except OSError:
                continue
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401  (the layer's own library: importable only with TBB)
    except ImportError:
        return numba.config.THREADING_LAYER
    numba.config.THREADING_LAYER = "tbb"
    return "tbb"


THREADING_LAYER = _threading_layer()

from runtime.errors import (  # noqa: E402
    BackendUnavailable,
    InvalidFeed,
    InvalidModel,
    InvalidOption,
    MissingConfigEntry,
    UnsupportedOp,
    ZooRuntimeError,
)
from runtime.ops import BACKENDS, supported_ops  # noqa: E402
from runtime.options import (  # noqa: E402
    ExecutionMode,
    GraphOptimizationLevel,
    RunOptions,
    SessionOptions,
    get_available_providers,
    get_device,
)
from runtime.session import InferenceSession, ModelMetadata, NodeArg  # noqa: E402

__version__ = "0.1.0"  # the deconv-zoo package's version (pyproject.toml)

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "ExecutionMode",
    "GraphOptimizationLevel",
    "InferenceSession",
    "InvalidFeed",
    "InvalidModel",
    "InvalidOption",
    "MissingConfigEntry",
    "ModelMetadata",
    "NodeArg",
    "RunOptions",
    "SessionOptions",
    "UnsupportedOp",
    "ZooRuntimeError",
    "__version__",
    "get_available_providers",
    "get_device",
    "supported_ops",
]
