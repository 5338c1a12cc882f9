"""The runtime as an ``onnx.backend.base.Backend`` (prepare / run / supports_device), so that onnx's official
node tests (``onnx.backend.test.BackendTest``) run against it: ``tests/test_conformance.py``."""

from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from runtime.errors import BackendUnavailable
from runtime.session import InferenceSession

DEVICES = {"CPU": "cpu", "CUDA": "cuda"}


class ZooBackendRep(BackendRep):
    def __init__(self, session: InferenceSession):
        self.session = session

    def run(self, inputs, **kwargs):
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        names = [i.name for i in self.session.get_inputs()]
        # the official tests feed NumPy scalars (np.float32) as well as arrays
        return tuple(self.session.run(None, {n: np.asarray(x) for n, x in zip(names, inputs)}))


class ZooBackend(Backend):
    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> ZooBackendRep:
        super().prepare(model, device, **kwargs)
        return ZooBackendRep(InferenceSession(model.SerializeToString(), backend=DEVICES[device.split(":")[0]]))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        backend = DEVICES.get(device.split(":")[0])
        if backend == "cpu":
            return True
        if backend == "cuda":
            try:
                from runtime.session import _CUDA

                _CUDA()
                return True
            except BackendUnavailable:
                return False
        return False
