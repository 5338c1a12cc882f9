"""Deconv Zoo's ONNX runtime: runs exported graphs with Numba kernels on the CPU and Numba-CUDA kernels on
NVIDIA GPUs, with onnxruntime's API shape. It never imports torch (nor numba.cuda until a CUDA session is
created).

    import runtime
    sess = runtime.InferenceSession("weights/sparse-ae-mnist.onnx", backend="cpu")
    (y,) = sess.run(None, {"x": x})
"""

import os

# Numba's OpenMP workers spin-wait after every parallel loop by default, holding the cores that the next BLAS
# GEMM needs: measured on 2 cores, the sparse autoencoder at batch 64 took 4.1 ms spinning and 0.63 ms
# passive. Read when OpenMP starts, so set before any kernel runs; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
