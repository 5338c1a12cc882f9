"""Shared helpers: one-node ONNX graphs, the onnxruntime oracle (CPU provider, requested explicitly), and
the ``cuda`` marker, whose tests run where a CUDA backend exists: a GPU, or NUMBA_ENABLE_CUDASIM=1
(``make test`` runs them in a second pytest process with the simulator)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
IR_VERSION = 10
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ATOL = 1e-5  # float32 agreement with onnxruntime


def cuda_available() -> bool:
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA backend: no GPU and NUMBA_ENABLE_CUDASIM is not 1")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 18, opsets=None, name: str = "test") -> bytes:
    """A model from helper-built nodes; inputs/outputs are (name, np dtype, shape) triples; ``opsets``, a list
    of (domain, version), replaces the single default-domain ``opset``. Never passes through onnx.checker."""

    def vi(name, dtype, shape):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)

    graph = helper.make_graph(
        nodes,
        name,
        [vi(*i) for i in inputs],
        [vi(*o) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), name) for name, v in dict(initializers).items()],
    )
    opsets = opsets if opsets is not None else [("", opset)]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def ort_run(model: bytes | str, feed: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def runtime_run(model: bytes | str, feed: dict, backend: str = "cpu") -> list[np.ndarray]:
    import runtime

    return runtime.InferenceSession(model, backend=backend).run(None, feed)


def read_test_data(folder: Path) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """An ONNX Model Zoo ``test_data_set_k`` folder: (feed {input name: array} from input_0.pb, input_1.pb, ...,
    the expected outputs from output_0.pb, ...)."""

    def tensors(prefix: str) -> list:
        files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
        return [onnx.load_tensor(str(p)) for p in files]

    feed = {t.name: numpy_helper.to_array(t) for t in tensors("input")}
    return feed, [numpy_helper.to_array(t) for t in tensors("output")]


def assert_close(got, expected, atol: float = ATOL, switch_flips: float = 0.0, rtol: float = 0.0):
    """Elementwise agreement within ``atol + rtol·|expected|``. ``switch_flips``: the fraction of elements allowed
    to differ more, for graphs with max-pool switches (DeconvNet) fed random inputs, where two windows whose values
    differ by an ulp in another implementation's summation order can pick another maximum and send that value to a
    neighbouring pixel. Exact ties (real images' flat backgrounds) stay exact in this runtime: real inputs get no
    allowance (tests/test_weights.py, tests/test_invariance.py)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape, (g.shape, e.shape)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        if switch_flips:
            off = ~np.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
            assert off.mean() <= switch_flips, f"{off.sum()} of {off.size} elements differ by more than {atol}"
        else:
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, equal_nan=True)


def _with_pool_outputs(model: str, indices: bool) -> tuple[list, bytes]:
    """The file's MaxPool nodes (those with an ``Indices`` output when ``indices``) and the serialised graph
    with each one's input, and its ``Indices`` when asked, added as graph outputs."""
    proto = onnx.load(model)
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool" and (len(n.output) > 1 or not indices)]
    for n in pools:
        if indices:
            proto.graph.output.append(helper.make_tensor_value_info(n.output[1], TensorProto.INT64, None))
        proto.graph.output.append(helper.make_tensor_value_info(n.input[0], TensorProto.FLOAT, None))
    return pools, proto.SerializeToString()


def _ort_outputs(source: bytes, feed: dict) -> dict[str, np.ndarray]:
    """Every graph output of ``source`` by name, as onnxruntime's CPU provider computes it."""
    import onnxruntime as ort

    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def pool_window_gaps(x: np.ndarray, kernel=(2, 2), strides=(2, 2)) -> np.ndarray:
    """(N, C, h, w) for (N, C, H, W) activations: each unpadded pool window's gap between its two largest values,
    relative to the largest; inf for exact ties and for windows whose largest value is not positive."""
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(2, 3))[:, :, :: strides[0], :: strides[1]]
    top = np.sort(windows.reshape(*windows.shape[:4], -1), axis=-1)[..., -2:]  # (N, C, h, w, 2)
    gap = (top[..., 1] - top[..., 0]) / np.where(top[..., 1] > 0, top[..., 1], 1)
    return np.where((top[..., 1] > 0) & (gap > 0), gap, np.inf)


def near_tie_samples(model: str, feed: dict, rel: float = 1e-6) -> np.ndarray:
    """(batch,) bool: the samples in which some MaxPool window's two largest values (positive, as onnxruntime
    computes them) are apart by less than ``rel`` of the largest but not equal: a few ulps, so that a summation
    order other than onnxruntime's (another runtime's, or onnxruntime's own on another instruction set) may
    pick the other one as the maximum, and DeconvNet's unpooling then sends it to a neighbouring pixel. Exact
    ties (ReLU's zeros) are not near ties: every implementation resolves them to the first index."""
    pools, source = _with_pool_outputs(model, indices=False)
    theirs = _ort_outputs(source, feed)
    batch = len(next(iter(feed.values())))
    tied = np.zeros(batch, bool)
    for n in pools:
        x = theirs[n.input[0]]  # (N, C, H, W): what the pool takes
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        kernel, strides = attrs["kernel_shape"], attrs.get("strides", [1] * len(attrs["kernel_shape"]))
        assert not any(attrs.get("pads", [])) and len(kernel) == 2, f"{n.name}: only unpadded 2-d pools here"
        tied |= (pool_window_gaps(x, kernel, strides) < rel).reshape(batch, -1).any(1)
    return tied


def switch_flips(model: str, feed: dict, backend: str = "cpu") -> tuple[np.ndarray, float]:
    """Where this runtime's max-pool switches differ from onnxruntime's: ((batch,) bool, the largest gap, relative
    to onnxruntime's maximum, between the two values picked in a sample's first such window). Every MaxPool's
    ``Indices`` is read from both runtimes, and the values from onnxruntime's own activations: a flip is
    legitimate only where those two values are a near tie, so that the summation order decides which wins."""
    pools, source = _with_pool_outputs(model, indices=True)
    theirs = _ort_outputs(source, feed)
    ours = dict(zip(theirs, runtime_run(source, feed, backend)))
    batch = len(next(iter(feed.values())))
    flipped, widest = np.zeros(batch, bool), 0.0
    for n in pools:  # in graph order: a sample is judged at its first flip (after it, its activations differ)
        differ = (theirs[n.output[1]] != ours[n.output[1]]) & ~flipped[:, None, None, None]  # (N, C, h, w)
        if differ.any():
            x = theirs[n.input[0]].reshape(-1)  # ONNX's indices number the whole N x C x H x W tensor
            a, b = x[theirs[n.output[1]][differ]], x[ours[n.output[1]][differ]]
            widest = max(widest, float((np.abs(a - b) / np.maximum(np.abs(a), np.finfo(np.float32).tiny)).max()))
            flipped |= differ.reshape(batch, -1).any(1)
    return flipped, widest


def case_rng(case_id: str) -> np.random.Generator:
    """One fixed generator per test case, seeded from its id."""
    return np.random.default_rng(zlib.crc32(case_id.encode()))


def randn(rng, shape, dtype=np.float32, scale=1.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)


def sprinkle(rng, x: np.ndarray, values) -> np.ndarray:
    """``x`` with ``values`` written at distinct random positions."""
    flat = x.copy().reshape(-1)
    flat[rng.choice(flat.size, size=len(values), replace=False)] = np.asarray(values, dtype=x.dtype)
    return flat.reshape(x.shape)


__all__ = ["TensorProto", "helper", "onnx"]
