"""Deconv Zoo's ONNX runtime: runs exported graphs with Numba kernels on the CPU and Numba-CUDA kernels on
NVIDIA GPUs, with onnxruntime's API shape. It never imports torch (nor numba.cuda until a CUDA session is
created).

    import runtime
    sess = runtime.InferenceSession("weights/sparse-ae-mnist.onnx", backend="cpu")
    (y,) = sess.run(None, {"x": x})
"""

import os

# How Numba's OpenMP workers wait between parallel loops, read when OpenMP starts (so set before any kernel runs;
# a user's own setting wins). GNU OpenMP's default spins for long after every loop, holding cores that
# onnxruntime, PyTorch or a BLAS in the same process need (the sparse autoencoder at batch 64 took 4.1 ms
# beside spinning workers, 0.63 ms beside passive ones); fully passive workers sleep at once and take ~40 us to
# wake for the next loop, on every node of a model (a 36 us loop took 81 us). A short spin (GOMP_SPINCOUNT,
# about 0.1-0.5 ms here) keeps the workers awake from one node to the next and asleep soon after a run.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # other OpenMP runtimes: wait passively

from runtime.errors import BackendUnavailable, InvalidFeed, InvalidModel, UnsupportedOp, ZooRuntimeError  # noqa: E402
from runtime.ops import supported_ops  # noqa: E402
from runtime.session import BACKENDS, InferenceSession, ModelMetadata, NodeArg  # noqa: E402

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "InferenceSession",
    "InvalidFeed",
    "InvalidModel",
    "ModelMetadata",
    "NodeArg",
    "UnsupportedOp",
    "ZooRuntimeError",
    "supported_ops",
]
