"""Deconv Zoo's ONNX runtime: runs exported graphs with Numba kernels on the CPU and Numba-CUDA kernels on
NVIDIA GPUs, with onnxruntime's API shape. It never imports torch (nor numba.cuda until a CUDA session is
created).

    import runtime
    sess = runtime.InferenceSession("weights/sparse-ae-mnist.onnx", backend="cpu")
    (y,) = sess.run(None, {"x": x})
"""

from runtime.errors import BackendUnavailable, InvalidFeed, InvalidModel, UnsupportedOp, ZooRuntimeError
from runtime.ops import supported_ops
from runtime.session import BACKENDS, InferenceSession, ModelMetadata, NodeArg

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
