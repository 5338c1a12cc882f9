"""The cuda backend's memory plan and stream, counted under the simulator (whose entry points the counts patch; on
a GPU these tests skip): a session's first run of a feed's shapes allocates its device buffers; a warm run of the
same shapes makes no device allocation, exactly one synchronisation (the session's stream, after the copies of the
outputs) and puts every launch and copy on that stream, with outputs equal to the first run's and close to
onnxruntime's. A run of a new batch size records a plan of its own and leaves the old one warm.

The counts are of numba.cuda's entry points (``device_array``, ``device_array_like``, ``to_device``,
``pinned_array``, ``mapped_array``, ``synchronize``, a stream's ``synchronize``, a device array's
``copy_to_host`` and ``copy_to_device``) and of the kernels' launch configurations, patched where the simulator
defines them; a copy to or from the host on the default stream counts as a synchronisation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.cuda
F32 = np.float32
ROOT = Path(__file__).resolve().parents[1]


class _Counts:
    def __init__(self):
        self.allocations, self.synchronisations, self.launch_streams, self.copy_streams = [], 0, [], []

    def reset(self):
        self.__init__()


@pytest.fixture
def counts(monkeypatch):
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("counts numba.cuda's entry points as the simulator defines them")
    from numba import cuda
    from numba.cuda.simulator import api, kernel
    from numba.cuda.simulator.cudadrv import devicearray

    c = _Counts()

    def counting_allocation(name, original):
        def wrapper(*args, **kwargs):
            c.allocations.append(name)
            return original(*args, **kwargs)

        return wrapper

    for name in ("device_array", "device_array_like", "to_device", "pinned_array", "mapped_array"):
        if hasattr(cuda, name):
            monkeypatch.setattr(cuda, name, counting_allocation(name, getattr(cuda, name)))

    def synchronize(*args, **kwargs):
        c.synchronisations += 1

    monkeypatch.setattr(cuda, "synchronize", synchronize)
    monkeypatch.setattr(api.stream, "synchronize", synchronize)
    fake_array = devicearray.FakeCUDAArray
    to_host, to_device = fake_array.copy_to_host, fake_array.copy_to_device

    def copy_to_host(self, ary=None, stream=0):
        c.copy_streams.append(stream)
        if stream == 0:
            c.synchronisations += 1
        return to_host(self, ary, stream)

    def copy_to_device(self, ary, stream=0):
        c.copy_streams.append(stream)
        if stream == 0:
            c.synchronisations += 1
        return to_device(self, ary, stream)

    monkeypatch.setattr(fake_array, "copy_to_host", copy_to_host)
    monkeypatch.setattr(fake_array, "copy_to_device", copy_to_device)
    configure = kernel.FakeCUDAKernel.__getitem__

    def getitem(self, configuration):
        c.launch_streams.append(configuration[2] if len(configuration) > 2 else 0)
        return configure(self, configuration)

    monkeypatch.setattr(kernel.FakeCUDAKernel, "__getitem__", getitem)
    return c


def _model(nodes, inputs, outputs, initializers, opset=18) -> bytes:
    graph = helper.make_graph(
        nodes,
        "plan",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(v, name) for name, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return model.SerializeToString()


def _unpool_chain() -> tuple[bytes, str, tuple]:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxUnpool", ["p", "i"], ["u"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("ConvTranspose", ["u", "w2", "b2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    weights = {
        "w1": rng.standard_normal((3, 2, 3, 3)).astype(F32),
        "b1": rng.standard_normal(3).astype(F32),
        "w2": rng.standard_normal((3, 2, 3, 3)).astype(F32),
        "b2": rng.standard_normal(2).astype(F32),
    }
    return _model(nodes, [("x", ["N", 2, 4, 4])], ["y"], weights), "x", (2, 4, 4)


def _gemm_chain() -> tuple[bytes, str, tuple]:
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["g"], transB=1, alpha=0.5),
        helper.make_node("Sigmoid", ["g"], ["y"]),
    ]
    weights = {
        "w1": rng.standard_normal((5, 4)).astype(F32),
        "b1": rng.standard_normal(4).astype(F32),
        "w2": rng.standard_normal((3, 4)).astype(F32),
        "b2": rng.standard_normal(3).astype(F32),
    }
    return _model(nodes, [("x", ["N", 5])], ["y"], weights), "x", (5,)


def _broadcasting() -> tuple[bytes, str, tuple]:
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Add", ["x", "a"], ["s"]),
        helper.make_node("Mul", ["s", "m"], ["t"]),
        helper.make_node("Transpose", ["t"], ["p"], perm=[0, 2, 1]),
        helper.make_node("Gather", ["p", "idx"], ["g"], axis=1),
        helper.make_node("Clip", ["g", "lo"], ["y"]),
        helper.make_node("Sub", ["x", "m"], ["z"]),
    ]
    weights = {
        "a": rng.standard_normal(4).astype(F32),
        "m": rng.standard_normal((3, 1)).astype(F32),
        "idx": np.array([3, 0, 2], dtype=np.int64),
        "lo": np.array(-0.25, dtype=F32),
    }
    return _model(nodes, [("x", ["N", 3, 4])], ["y", "z"], weights), "x", (3, 4)


def _sparse_ae() -> tuple[bytes, str, tuple]:
    return (ROOT / "weights" / "sparse-ae-digits8.onnx").read_bytes(), "image", (64,)


MODELS = {"unpool-chain": _unpool_chain, "gemm-chain": _gemm_chain, "broadcasting": _broadcasting,
          "sparse-ae-digits8": _sparse_ae}  # fmt: skip


@pytest.mark.parametrize("name", list(MODELS))
def test_a_warm_run_makes_no_allocation_and_one_synchronisation(name, counts):
    import onnxruntime

    import runtime

    model, input_name, sample_shape = MODELS[name]()
    session = runtime.InferenceSession(model, backend="cuda")
    oracle = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    stream = session._device.stream
    rng = np.random.default_rng(3)
    feeds = {batch: {input_name: rng.standard_normal((batch, *sample_shape)).astype(F32)} for batch in (2, 1)}

    counts.reset()
    first = session.run(None, feeds[2])
    assert counts.allocations, "the first run of a shape key allocates its plan"
    for _ in range(2):
        counts.reset()
        warm = session.run(None, feeds[2])
        assert counts.allocations == [], "a warm run allocates nothing on the device"
        assert counts.synchronisations == 1
        assert counts.launch_streams and all(s is stream for s in counts.launch_streams)
        assert all(s is stream for s in counts.copy_streams)
        for a, b in zip(first, warm):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(warm, oracle.run(None, feeds[2])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    counts.reset()
    other = session.run(None, feeds[1])  # a new batch size: a plan of its own
    assert counts.allocations and counts.synchronisations == 1
    for a, b in zip(other, oracle.run(None, feeds[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    counts.reset()
    again = session.run(None, feeds[2])  # the old key stays warm
    assert counts.allocations == [] and counts.synchronisations == 1
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_the_plan_reuses_the_buffers_of_dead_values(counts):
    """Liveness: a chain of element-wise ops of one shape runs in two buffers (the feed's and one more, taken in
    turn), not one per node."""
    import runtime

    ops = ["Sigmoid", "Tanh", "Sigmoid", "Tanh", "Sigmoid", "Tanh"]
    names = ["x", *(f"v{k}" for k in range(len(ops)))]
    nodes = [helper.make_node(op, [a], [b]) for op, a, b in zip(ops, names, names[1:])]
    model = _model(nodes, [("x", ["N", 8])], [names[-1]], {})
    session = runtime.InferenceSession(model, backend="cuda", optimize_graph=False)
    x = np.linspace(-2, 2, 16, dtype=F32).reshape(2, 8)
    counts.reset()
    y = session.run(None, {"x": x})[0]
    assert counts.allocations == ["device_array"] * 2
    expected = x
    for op in ops:
        expected = np.tanh(expected) if op == "Tanh" else 1 / (1 + np.exp(-expected))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_an_index_out_of_range_is_reported_at_the_end_of_the_run(counts):
    import runtime
    from runtime.errors import ZooRuntimeError

    nodes = [helper.make_node("MaxUnpool", ["x", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(
        nodes,
        "unpool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    session = runtime.InferenceSession(model, backend="cuda")
    x = np.ones((1, 1, 2, 2), F32)
    good = np.array([0, 3, 8, 15], dtype=np.int64).reshape(1, 1, 2, 2)
    session.run(None, {"x": x, "i": good})
    counts.reset()
    with pytest.raises(ZooRuntimeError, match="MaxUnpool"):
        session.run(None, {"x": x, "i": np.array([0, 3, 8, 16], dtype=np.int64).reshape(1, 1, 2, 2)})
    assert counts.synchronisations == 1
    counts.reset()
    y = session.run(None, {"x": x, "i": good})[0]
    assert y.reshape(-1)[[0, 3, 8, 15]].tolist() == [1, 1, 1, 1] and y.sum() == 4


def test_a_split_k_gemm_takes_its_chunk_sums_from_the_plan(counts, monkeypatch):
    # K = 70 in chunks of 32: the skinny kernel's (3, batch, N) chunk sums are scratch of the plan, reused warm
    import onnxruntime

    import runtime
    from runtime.ops import gemm_cuda

    monkeypatch.setattr(gemm_cuda, "K_CHUNK", 32)
    monkeypatch.setattr(gemm_cuda, "THREADS_PER_BLOCK", 8)
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"])]
    weights = {"w": rng.standard_normal((70, 6)).astype(F32), "b": rng.standard_normal(6).astype(F32)}
    model = _model(nodes, [("x", ["N", 70])], ["y"], weights)
    session = runtime.InferenceSession(model, backend="cuda")
    feed = {"x": rng.standard_normal((2, 70)).astype(F32)}
    first = session.run(None, feed)
    counts.reset()
    warm = session.run(None, feed)
    assert counts.allocations == [] and counts.synchronisations == 1
    np.testing.assert_array_equal(first[0], warm[0])
    oracle = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(warm[0], oracle.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_a_traced_run_synchronises_after_every_node(counts, monkeypatch, capsys):
    # ZOO_TRACE=1 times each node's kernels: one synchronisation before the first node, one after each, and the
    # run's own at the end
    import runtime

    monkeypatch.setenv("ZOO_TRACE", "1")
    model, input_name, sample_shape = _gemm_chain()
    session = runtime.InferenceSession(model, backend="cuda")
    feed = {input_name: np.ones((2, *sample_shape), F32)}
    session.run(None, feed)
    counts.reset()
    session.run(None, feed)
    nodes = len(session._steps)
    assert counts.synchronisations == nodes + 2
    assert capsys.readouterr().err.count("[zoo-trace]") == 2 * nodes
