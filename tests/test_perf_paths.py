"""The fast paths of the CPU backend, each against onnxruntime (or against the general path it short-cuts):
the 2x2 stride-2 MaxPool kernel and the general values-only one, ConvTranspose of a 1x1 input as one GEMM
(DCGAN's projection), Reshape's remembered target shapes, the session's re-use of a feed's checks, the GEMM's
paths. No timings here: these check that the fast paths give the same answers.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import runtime
from runtime.errors import InvalidFeed
from runtime.ops import conv as conv_ops
from runtime.ops import pool as pool_ops
from tests.conftest import assert_close, case_rng, make_model, ort_run, randn, runtime_run

F32 = np.float32


def _max_pool_model(shape, indices: bool, **attrs) -> bytes:
    outputs = [("y", F32, None)] + ([("i", np.int64, None)] if indices else [])
    node = helper.make_node("MaxPool", ["x"], [name for name, _, _ in outputs], **attrs)
    return make_model([node], [("x", F32, list(shape))], outputs)


@pytest.mark.parametrize(
    "shape, attrs",
    [
        ((3, 4, 8, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),  # the unrolled 2x2 kernel
        ((2, 3, 9, 7), dict(kernel_shape=[2, 2], strides=[2, 2])),  # odd sizes: the last row/column unread
        ((2, 3, 9, 7), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),  # windows past the end: general
        ((2, 3, 8, 8), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1])),  # padded: general
        ((2, 3, 10, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 2])),
        ((2, 3, 10, 9), dict(kernel_shape=[3, 2], strides=[1, 3], dilations=[2, 2])),
        ((64, 16, 10, 10), dict(kernel_shape=[2, 2], strides=[2, 2])),
        ((2, 5, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),  # 1-D
    ],
)
def test_max_pool_values_match_onnxruntime_with_nan_and_inf(shape, attrs):
    rng = case_rng(f"maxpool-{shape}-{attrs}")
    x = randn(rng, shape)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=max(4, flat.size // 20), replace=False)
    flat[picks[0::3]] = np.nan
    flat[picks[1::3]] = -np.inf
    flat[picks[2::3]] = np.inf
    # onnxruntime's kernel with Indices is the oracle: its values-only one (MLAS) treats NaN by SIMD width
    got = runtime_run(_max_pool_model(shape, False, **attrs), {"x": x})[0]
    expected = ort_run(_max_pool_model(shape, True, **attrs), {"x": x})[0]
    np.testing.assert_array_equal(got, expected)


def test_max_pool_parallel_kernels_match_serial(monkeypatch):
    rng = case_rng("maxpool-parallel")
    x = randn(rng, (4, 8, 12, 12))
    x.reshape(-1)[::7] = np.nan
    for attrs in (dict(kernel_shape=[2, 2], strides=[2, 2]), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)):
        serial = pool_ops.MaxPool(x, _outputs=(True, False), **attrs)
        monkeypatch.setattr(pool_ops, "MAX_POOL_PARALLEL_TAPS", 1)
        parallel = pool_ops.MaxPool(x, _outputs=(True, False), **attrs)
        monkeypatch.undo()
        np.testing.assert_array_equal(serial, parallel)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("activation", [None, "Relu", "Tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose_of_1x1_input_is_one_gemm(batch, activation, bias):
    rng = case_rng(f"projection-{batch}-{activation}-{bias}")
    inits = {"w": randn(rng, (10, 6, 4, 3), scale=0.5)}  # (C_in, C_out, kH, kW)
    inputs = ["x", "w"]
    if bias:
        inits["b"] = randn(rng, (6,))
        inputs.append("b")
    nodes = [helper.make_node("ConvTranspose", inputs, ["t" if activation else "y"])]
    if activation:
        nodes.append(helper.make_node(activation, ["t"], ["y"]))
    model = make_model(nodes, [("x", F32, [batch, 10, 1, 1])], [("y", F32, None)], inits)
    x = randn(rng, (batch, 10, 1, 1))
    got = runtime_run(model, {"x": x})[0]
    assert got.shape == (batch, 6, 4, 3)
    assert_close(got, ort_run(model, {"x": x})[0])


def test_projection_path_is_taken_only_where_col2im_is_the_identity():
    def geometry(x_shape, w_shape, **attrs):
        return conv_ops.conv_geometry("ConvTranspose", x_shape, w_shape, **attrs)

    assert conv_ops._is_projection(geometry((2, 10, 1, 1), (10, 6, 4, 4)))
    assert not conv_ops._is_projection(geometry((2, 10, 1, 1), (10, 6, 4, 4), pads=[1, 1, 1, 1]))
    assert not conv_ops._is_projection(geometry((2, 10, 1, 1), (10, 3, 4, 4), group=2))
    assert not conv_ops._is_projection(geometry((2, 10, 2, 2), (10, 6, 4, 4)))
    assert not conv_ops._is_projection(geometry((2, 10, 1, 1), (10, 6, 4, 4), output_shape=[6, 6]))


def test_reshape_remembers_targets_and_still_refuses_bad_ones():
    from runtime.ops.shape import Reshape

    x = np.arange(24, dtype=F32).reshape(2, 3, 4)
    for _ in range(2):  # the second call is served from the cache
        assert Reshape(x, np.array([0, -1], np.int64)).shape == (2, 12)
        assert Reshape(x, np.array([4, 0, 2], np.int64), allowzero=0).shape == (4, 3, 2)
    for bad in ([5, -1], [-1, -1], [2, 3, 4, 0], [-2, -12]):
        with pytest.raises(InvalidFeed):
            Reshape(x, np.array(bad, np.int64))


def test_session_reuses_a_feeds_checks_only_for_the_same_kind_of_feed():
    rng = case_rng("feed-fast-path")
    node = helper.make_node("Relu", ["x"], ["y"])
    model = make_model([node], [("x", F32, ["n", 3])], [("y", F32, None)])
    sess = runtime.InferenceSession(model)
    x = randn(rng, (4, 3))
    for _ in range(2):
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))
    x6 = randn(rng, (6, 3))
    np.testing.assert_array_equal(sess.run(None, {"x": x6})[0], np.maximum(x6, 0))  # a new shape: checked anew
    strided = randn(rng, (6, 6))[:, ::2]  # (6, 3), not C-contiguous: copied by the checks
    np.testing.assert_array_equal(sess.run(None, {"x": strided})[0], np.maximum(strided, 0))
    with pytest.raises(InvalidFeed):
        sess.run(None, {"x": x6.astype(np.float64)})
    with pytest.raises(InvalidFeed):
        sess.run(None, {"x": x6, "extra": x6})
    with pytest.raises(InvalidFeed):
        sess.run(None, {"x": randn(rng, (6, 4))})
    np.testing.assert_array_equal(sess.run(None, {"x": x6.tolist()})[0], np.maximum(x6, 0))  # a list: converted
    np.testing.assert_array_equal(sess.run(None, {"x": x6})[0], np.maximum(x6, 0))


def _cached_dispatchers():
    """Every Numba dispatcher with an on-disk cache in the runtime's CPU modules, by module attribute."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import runtime.ops

    found = {}
    for info in pkgutil.iter_modules(runtime.ops.__path__):
        if info.name.endswith("_cuda") or info.name == "_cuda_launch":
            continue
        module = importlib.import_module(f"runtime.ops.{info.name}")
        for name, value in vars(module).items():
            variants = value if isinstance(value, tuple) else (value,)  # (serial, parallel) pairs
            for i, d in enumerate(variants):
                if isinstance(d, CPUDispatcher) and type(d._cache).__name__ != "NullCache":
                    found[f"{info.name}.{name}[{i}]"] = d
    return found


def test_every_cached_kernel_has_its_own_cache_file():
    """Numba names a cache file after the function's module, qualified name and first line, and does not key it
    on ``parallel``: a serial and a parallel dispatcher of one function would share a file, and whichever compiled
    first would serve both in every later process (a parallel kernel silently running serially)."""
    dispatchers = _cached_dispatchers()
    assert any(d.targetoptions.get("parallel") for d in dispatchers.values())
    owners = {}
    for name, d in dispatchers.items():
        f = d.py_func
        key = (f.__module__, f.__qualname__, f.__code__.co_firstlineno)
        assert key not in owners or owners[key] is d, f"{name} and {owners[key]} share the cache file of {key}"
        owners.setdefault(key, d)


def test_parallel_twin_runs_in_parallel_after_the_serial_one_compiled(tmp_path):
    """In a fresh process with an empty cache, the serial variant of a kernel compiles (and is cached) first;
    the parallel variant must still be a parallel kernel, in that process and in the next one."""
    import subprocess
    import sys

    script = (
        "import numba, numpy as np\n"
        "from runtime.ops import conv\n"
        "from runtime.ops._cpu_kernels import serial_and_parallel\n"
        "def probe(out):\n"
        "    for i in numba.prange(out.size):\n"  # enough work per iteration that TBB hands some to a worker
        "        v = 0.0\n"
        "        for j in range(200000):\n"
        "            v = v * 0.5 + j\n"
        "        out[i] = numba.get_thread_id() + (v < 0)\n"
        "serial, parallel = serial_and_parallel(probe)\n"
        "numba.set_num_threads(2)\n"
        "a = np.zeros(64, np.int64)\n"
        "serial(a); assert a.max() == 0, 'the serial kernel used several threads'\n"
        "parallel(a); print(int(a.max()))\n"
    )
    path = tmp_path / "probe_kernels.py"
    path.write_text(script)
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_NUM_THREADS": "2"}
    for _ in range(2):  # compiling, then loading from the cache
        out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[-1] == "1", "the parallel kernel ran on one thread"


@pytest.fixture
def fresh_conv_plans():
    """Conv's plans are kept per geometry: made afresh under a test's patched tiling, and forgotten after it."""
    plans = (conv_ops._conv_plan, conv_ops._direct_plan)
    for plan in plans:
        plan.cache_clear()
    yield
    for plan in plans:
        plan.cache_clear()


@pytest.mark.parametrize(
    "x_shape, w_shape, attrs",
    [
        ((3, 4, 9, 7), (5, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
        ((2, 6, 5, 6, 7), (4, 3, 3, 2, 3), dict(group=2, strides=[1, 2, 1], pads=[1, 0, 1, 1, 0, 1])),
        ((5, 3, 11), (4, 3, 3), dict(strides=[2], dilations=[2], pads=[2, 1])),
        ((2, 3, 6, 6), (20, 3, 3, 3), dict(pads=[1, 1, 1, 1])),  # 3 row panels of W: blocks of them as tasks
    ],
)
@pytest.mark.parametrize("tile", ["one-row", "uneven", "whole-sample", "row-blocks"])
@pytest.mark.parametrize("path", ["direct", "im2col"])
def test_conv_tiles_give_the_same_bits_for_any_tiling_and_thread_count(x_shape, w_shape, attrs, tile, path,
                                                                        monkeypatch, fresh_conv_plans):  # fmt: skip
    """Conv runs one task per (sample, tile of output rows), or in the direct convolution per (sample, run of
    panels of columns). Every tiling agrees with onnxruntime, and with the tiling fixed the bits do not depend on
    the number of threads."""
    import numba

    monkeypatch.setattr(conv_ops, "DIRECT_MIN_LANES", 0.0 if path == "direct" else 2.0)
    monkeypatch.setattr(conv_ops, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(conv_ops, "MIN_TASKS", 1000 if tile == "row-blocks" else 1)  # row-blocks: W's rows split
    monkeypatch.setattr(conv_ops, "MIN_TILE_COLUMNS", 1)
    row_bytes = 4 * w_shape[1] * int(np.prod(w_shape[2:])) * x_shape[-1]  # an upper bound on col's bytes per row
    tile_bytes = {"one-row": 1, "uneven": 2 * row_bytes, "whole-sample": 1 << 30, "row-blocks": 1 << 30}[tile]
    monkeypatch.setattr(conv_ops, "TILE_BYTES", tile_bytes)
    rng = case_rng(f"conv-tiles-{x_shape}-{tile}")
    feed = {"x": randn(rng, x_shape), "w": randn(rng, w_shape), "b": randn(rng, (w_shape[0],))}
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    model = make_model([node], [(k, F32, list(v.shape)) for k, v in feed.items()], [("y", F32, None)])
    expected = ort_run(model, feed)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results.append(runtime_run(model, feed))
    finally:
        numba.set_num_threads(before)
    assert_close(results[0], expected)
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])


@pytest.mark.parametrize("batch, c_out", [(3, 40), (48, 5), (2, 1)], ids=["W-rows", "x-rows", "few-outputs"])
@pytest.mark.parametrize("activation", [None, "LeakyRelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_of_a_full_window_is_one_gemm(batch, c_out, activation, bias, monkeypatch):
    """A Conv whose single window is the whole input runs as one GEMM, with more rows than columns or fewer, in
    blocks over the cores (the thresholds lowered so that these small shapes take the parallel kernel)."""
    from runtime.ops import _gemm_cpu

    monkeypatch.setattr(_gemm_cpu, "PARALLEL_FLOPS", 0)
    monkeypatch.setattr(_gemm_cpu, "BLOCK_FLOPS", 1)
    rng = case_rng(f"full-window-{batch}-{c_out}-{activation}-{bias}")
    inits = {"w": randn(rng, (c_out, 6, 5, 4), scale=0.3)}
    inputs = ["x", "w"] + (["b"] if bias else [])
    if bias:
        inits["b"] = randn(rng, (c_out,))
    nodes = [helper.make_node("Conv", inputs, ["t" if activation else "y"])]
    if activation:
        nodes.append(helper.make_node(activation, ["t"], ["y"], alpha=0.2))
    model = make_model(nodes, [("x", F32, [batch, 6, 5, 4])], [("y", F32, None)], inits)
    x = randn(rng, (batch, 6, 5, 4))
    got = runtime_run(model, {"x": x})[0]
    assert got.shape == (batch, c_out, 1, 1)
    assert_close(got, ort_run(model, {"x": x})[0])


def test_full_window_path_is_taken_only_where_im2col_is_the_identity():
    def geometry(x_shape, w_shape, **attrs):
        return conv_ops.conv_geometry("Conv", x_shape, w_shape, **attrs)

    assert conv_ops.is_full_window(geometry((2, 3, 7, 7), (5, 3, 7, 7)))
    assert conv_ops.is_full_window(geometry((2, 3, 1, 1), (5, 3, 1, 1)))  # a 1x1 conv of a 1x1 map
    assert not conv_ops.is_full_window(geometry((2, 3, 7, 7), (5, 3, 7, 7), pads=[1, 1, 1, 1]))
    assert not conv_ops.is_full_window(geometry((2, 4, 7, 7), (6, 2, 7, 7), group=2))
    assert not conv_ops.is_full_window(geometry((2, 3, 8, 7), (5, 3, 7, 7)))


# (rows M, the GEMM's thresholds patched): how a (M, 50) x (50, 30) Gemm runs
GEMM_PATHS = {
    "serial": (70, {}),  # 0.2 MFLOP: the GEMM and its epilogue in one serial kernel call
    "parallel": (70, {"PARALLEL_FLOPS": 0, "BLOCK_FLOPS": 1}),  # one block of (8 rows x 32 columns) per task
    "one-row": (1, {}),  # the 1-high micro-kernel
    "odd-rows": (13, {"PARALLEL_FLOPS": 0}),  # an 8-high panel, then a 5-row one padded to 8
}


@pytest.mark.parametrize("path", list(GEMM_PATHS))
@pytest.mark.parametrize("weight", [False, True], ids=["B-fed", "B-weight"])
@pytest.mark.parametrize("bias_shape", [None, "1x1", "N", "Mx1", "MxN"])
@pytest.mark.parametrize("activation", ["", "Sigmoid", "Relu", "Tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_gemm_paths_with_their_epilogue_match_onnxruntime(path, weight, bias_shape, activation, dtype, monkeypatch):
    """Each way a Gemm runs on the CPU (serial, in parallel blocks, short panels) with B fed or packed once as a
    session weight, bias and activation fused, every broadcast of C: against onnxruntime, and the same bits for
    any thread count and either way of giving B."""
    import numba

    from runtime.ops import _gemm_cpu
    from runtime.ops import gemm as gemm_cpu
    from runtime.ops._cpu_kernels import register_weights

    M, thresholds = GEMM_PATHS[path]
    N, K = 30, 50
    for name, value in thresholds.items():
        monkeypatch.setattr(_gemm_cpu, name, value)
    rng = case_rng(f"gemm-{path}-{bias_shape}-{activation}-{dtype.__name__}")
    A, B = randn(rng, (M, K), dtype), randn(rng, (N, K), dtype)  # transB: B is (N, K)
    shape = {None: None, "1x1": (1, 1), "N": (N,), "Mx1": (M, 1), "MxN": (M, N)}[bias_shape]
    C = None if shape is None else randn(rng, shape, dtype)
    fused = activation != ""
    op = gemm_cpu.FusedGemm if fused else gemm_cpu.Gemm
    kwargs = dict(transB=1, beta=0.5) | ({"activation": activation} if fused else {})
    B_used = B
    if weight:
        B_used = B.copy()
        B_used.flags.writeable = False
        register_weights([B_used])
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results.append(op(A, B_used, C, **kwargs))
    finally:
        numba.set_num_threads(before)
    assert (gemm_cpu.weight_panels(B_used, 1) is not None) == weight
    inputs = [("A", dtype, [M, K]), ("B", dtype, [N, K])]
    if C is not None:
        inputs.append(("C", dtype, list(shape)))
    nodes = [helper.make_node("Gemm", [n for n, _, _ in inputs], ["t" if fused else "y"], transB=1, beta=0.5)]
    if fused:
        nodes.append(helper.make_node(activation, ["t"], ["y"]))
    model = make_model(nodes, inputs, [("y", dtype, None)])
    feed = {"A": A, "B": B} | ({"C": C} if C is not None else {})
    assert results[0].flags.c_contiguous and results[0].shape == (M, N)
    assert_close([results[0]], ort_run(model, feed), atol=1e-5 if dtype == np.float32 else 1e-12)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    np.testing.assert_array_equal(op(A, B, C, **kwargs), results[0])  # B fed or packed: the same bits


def test_batched_matmul_matches_numpy():
    """MatMul of stacks (batch axes, broadcast operands, a transposed view, vectors) through the runtime's GEMM."""
    from runtime.ops import gemm as gemm_cpu

    rng = case_rng("matmul-stacks")
    cases = [((2, 3, 40, 20), (2, 3, 20, 9)), ((4, 40, 20), (20, 9)), ((40, 20), (5, 20, 9)), ((20,), (3, 20, 9)),
             ((4, 40, 20), (20,)), ((7,), (7,))]  # fmt: skip
    for a_shape, b_shape in cases:
        a, b = randn(rng, a_shape), randn(rng, b_shape)
        got = gemm_cpu.MatMul(a, b)
        assert got.shape == np.matmul(a, b).shape
        np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-5)
    a, b = randn(rng, (40, 20)), randn(rng, (9, 20)).T  # B as a transposed (Fortran-order) view
    np.testing.assert_allclose(gemm_cpu.MatMul(a, b), a @ b, rtol=1e-5, atol=1e-5)


def test_packed_layouts_are_kept_for_a_sessions_weights_only():
    """ConvTranspose keeps its weights' GEMM layout (``packed``) for a session's weights, which are read-only,
    for as long as they live; a weight fed as an input is repacked on every run, so changing it in place between
    runs changes the result."""
    import gc

    from runtime.ops import _cpu_kernels

    rng = case_rng("packed")
    x, w = randn(rng, (1, 4, 3, 3)), randn(rng, (4, 2, 3, 3))
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    as_weight = make_model([node], [("x", F32, [1, 4, 3, 3])], [("y", F32, None)], {"w": w})
    session = runtime.InferenceSession(as_weight)
    first = session.run(None, {"x": x})[0]
    (weight,) = [v for v in session._weights.values()]
    assert not weight.flags.writeable
    assert any(key[0] == id(weight) for key in _cpu_kernels._PACKED)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], first)
    assert_close([first], ort_run(as_weight, {"x": x}))
    weight_id = id(weight)
    del session, weight
    gc.collect()
    assert weight_id not in _cpu_kernels._WEIGHTS
    assert not any(key[0] == weight_id for key in _cpu_kernels._PACKED)

    as_input = make_model([node], [("x", F32, [1, 4, 3, 3]), ("w", F32, [4, 2, 3, 3])], [("y", F32, None)])
    session = runtime.InferenceSession(as_input)
    feed = {"x": x, "w": w.copy()}
    assert_close(session.run(None, feed), ort_run(as_input, feed))
    feed["w"] *= -2.0  # in place: the same array object, new values
    assert_close(session.run(None, feed), ort_run(as_input, feed))


@pytest.mark.parametrize("activation, exact, bound", [("Sigmoid", lambda v: 1 / (1 + np.exp(-v)), 3e-7),
                                                      ("Tanh", np.tanh, 5e-7)])  # fmt: skip
def test_float32_logistic_and_tanh_are_accurate_and_keep_nan(activation, exact, bound):
    """float32 Sigmoid and Tanh use rational approximations on clamped inputs (onnxruntime's MLAS scheme) that
    LLVM can vectorise: within ``bound`` of the exact value everywhere, in range, NaN kept, -0.0 kept by Tanh;
    float64 keeps the libm functions."""
    from runtime.ops._cpu_kernels import ACTIVATIONS, bias_activation_

    grid = np.concatenate([np.linspace(-40, 40, 400_001), [-np.inf, np.inf, -0.0, 0.0, 1e-30, -1e-30]])
    lo = 0.0 if activation == "Sigmoid" else -1.0
    for dtype, tol in ((np.float32, bound), (np.float64, 1e-15)):
        x = grid.astype(dtype).reshape(1, -1)
        y = bias_activation_(x.copy(), None, 0.0, ACTIVATIONS[activation])
        want = exact(x.astype(np.float64))
        assert np.abs(y - want).max() <= tol, (dtype, np.abs(y - want).max())
        assert y.min() >= lo and y.max() <= 1.0
    nan = bias_activation_(np.array([[np.nan, 1.0]], np.float32), None, 0.0, ACTIVATIONS[activation])
    assert np.isnan(nan[0, 0]) and not np.isnan(nan[0, 1])
    if activation == "Tanh":
        assert np.signbit(bias_activation_(np.array([[-0.0]], np.float32), None, 0.0, ACTIVATIONS["Tanh"])[0, 0])
    # and against onnxruntime's own float32 kernel, over the whole grid
    model = make_model([helper.make_node(activation, ["x"], ["y"])], [("x", F32, [1, grid.size])], [("y", F32, None)])
    x = grid.astype(F32).reshape(1, -1)
    np.testing.assert_allclose(runtime_run(model, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("op", ["Gemm", "Conv"])
def test_a_few_outputs_give_the_same_bits_alone_and_in_a_batch_of_any_size(op):
    """A head of few outputs (a Gemm of 3 columns, a whole-window Conv of 1 channel) runs its fma chains one by
    one on the weights' rows for a few rows (``gemm_chains``) and through the packed GEMM for more: each sample's
    bits are the same alone and in batches on either side of the switch, and meet onnxruntime."""
    from runtime.ops._gemm_cpu import CHAIN_MAX_ROWS

    rng = case_rng(f"few-outputs-{op}")
    if op == "Gemm":
        inits = {"w": randn(rng, (3, 300), scale=0.05), "b": randn(rng, (3,))}
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
        shape = [300]
    else:
        inits = {"w": randn(rng, (1, 16, 7, 7), scale=0.03), "b": randn(rng, (1,))}
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"])
        shape = [16, 7, 7]
    model = make_model([node], [("x", F32, ["n", *shape])], [("y", F32, None)], inits)
    session = runtime.InferenceSession(model)
    big = CHAIN_MAX_ROWS * 3
    x = randn(rng, (big, *shape))
    outputs = session.run(None, {"x": x})
    assert_close(outputs, ort_run(model, {"x": x}))
    everything = outputs[0]
    for n in (1, 2, CHAIN_MAX_ROWS, CHAIN_MAX_ROWS + 1):
        np.testing.assert_array_equal(session.run(None, {"x": x[:n]})[0], everything[:n], err_msg=f"batch {n}")


def test_the_direct_convolution_is_left_where_each_task_would_stream_a_large_weight_for_few_columns():
    """The direct path's tasks each read all of W for their own columns: with 52 MB of weights and 16 outputs a
    sample it is taken at batch 1 (im2col's one tile has fewer columns still) and not at batch 64 (im2col's tiles
    span samples); a layer whose weights stay in cache takes it at any batch."""

    def direct(x_shape, w_shape, **attrs):
        return conv_ops._takes_direct(conv_ops.conv_geometry("Conv", x_shape, w_shape, **attrs), 4)

    big = dict(strides=[2, 2], pads=[2, 2, 2, 2])
    assert direct((1, 512, 8, 8), (1024, 512, 5, 5), **big)
    assert not direct((64, 512, 8, 8), (1024, 512, 5, 5), **big)
    assert direct((64, 64, 14, 14), (128, 64, 4, 4), strides=[2, 2], pads=[1, 1, 1, 1])
    assert not direct((8, 16, 2, 2), (16, 16, 3, 3), pads=[1, 1, 1, 1])  # 4 outputs in 32 columns
