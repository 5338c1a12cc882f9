"""Numerics as a contract, on the CPU backend: a sample's outputs are the same bits whether it runs alone or at any
position of a batch of any size, on any number of Numba threads, with any OpenBLAS kernel (the runtime no longer
calls BLAS: its GEMM sums each output in one fixed order), from eight threads sharing one session, and in a
child process forked after parallel kernels ran (Numba's TBB threading layer). Checked on every shipped ONNX file
and on the random-weight architectures of ``zoo bench`` (at the widths of tests/test_models.py).

The oracle here is the runtime itself under another batch, thread count or process: the property is bit
equality. Agreement with onnxruntime and torch is tested elsewhere (tests/test_weights.py, tests/test_models.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest

import runtime
from tests.conftest import ROOT, WEIGHTS
from zoo.bench import RANDOM_WEIGHT_MODELS, _feed_for

SHIPPED = sorted(p.name for p in WEIGHTS.glob("*.onnx"))
BATCH = 64


def _real_inputs(path) -> dict:
    """The shipped file's own test inputs (real digits and canvases), where it has them."""
    folder = path.parent / path.stem / "test_data_set_0"
    feed = {}
    for p in sorted(folder.glob("input_*.pb")):
        t = onnx.load_tensor(str(p))
        feed[t.name] = onnx.numpy_helper.to_array(t)
    return feed


def _batch_feed(path, batch: int = BATCH) -> dict:
    """``batch`` samples: the file's real test inputs first (exact ties on flat backgrounds), then random ones."""
    feed = _feed_for(path, batch, seed=7)
    for name, real in _real_inputs(path).items():
        n = min(batch, len(real))
        feed[name][:n] = real[:n]
    return feed


@pytest.fixture(scope="module")
def random_weight_files(tmp_path_factory):
    """The bench's random-weight architectures, exported at the test widths (tests/test_models.py)."""
    torch = pytest.importorskip("torch")
    import zoo
    from tests.test_models import TEST_CONFIG
    from zoo.export import export_onnx

    folder = tmp_path_factory.mktemp("invariance")
    files = []
    for name, part in RANDOM_WEIGHT_MODELS:
        torch.manual_seed(0)
        model = zoo.create_model(name, **TEST_CONFIG.get(name, {})).eval()
        path = folder / f"{name}.{part or 'model'}.onnx"
        export_onnx(model, path, part=part)
        files.append(path)
    return files


def _assert_rows_equal(got: list, full: list, rows: slice, what: str) -> None:
    for k, (g, f) in enumerate(zip(got, full)):
        np.testing.assert_array_equal(g, f[rows], err_msg=f"{what}: output {k}")


def _check_batch_invariance(path) -> None:
    sess = runtime.InferenceSession(str(path))
    feed = _batch_feed(path)
    full = sess.run(None, feed)
    for n in range(BATCH):  # every position, alone
        one = {k: v[n : n + 1] for k, v in feed.items()}
        _assert_rows_equal(sess.run(None, one), full, slice(n, n + 1), f"{path.name}: sample {n} alone")
    for size in (3, 8):
        for start in range(0, BATCH - size + 1, size):
            part = {k: v[start : start + size] for k, v in feed.items()}
            rows = slice(start, start + size)
            _assert_rows_equal(sess.run(None, part), full, rows, f"{path.name}: batch of {size} from {start}")


@pytest.mark.parametrize("file", SHIPPED)
def test_shipped_sample_alone_equals_its_row_in_every_batch(file):
    _check_batch_invariance(WEIGHTS / file)


def test_bench_architectures_sample_alone_equals_its_row_in_every_batch(random_weight_files):
    for path in random_weight_files:
        _check_batch_invariance(path)


def test_constant_canvas_gives_one_value_per_channel_in_the_interior():
    """The mechanism behind DeconvNet's switches: identical windows give identical sums. A constant canvas
    through the shipped DeconvNet's first convolution has one value per channel away from the border, so every
    2x2 pool window there is an exact tie and picks its first element, as in torch and onnxruntime."""
    from runtime.ops.conv import Conv

    proto = onnx.load(str(WEIGHTS / "deconvnet-digits.onnx"))
    init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    first = next(n for n in proto.graph.node if n.op_type == "Conv")
    W = init[first.input[1]]
    B = init[first.input[2]] if len(first.input) > 2 else None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in first.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    for batch in (1, 5):
        x = np.full((batch, W.shape[1], 48, 48), 0.25, np.float32)
        y = Conv(x, W, B, **attrs)
        k = W.shape[-1]
        interior = y[:, :, k:-k, k:-k].reshape(batch, W.shape[0], -1)  # (N, C_out, pixels)
        assert all(len(np.unique(interior[n, c])) == 1 for n in range(batch) for c in range(W.shape[0]))


# --- thread counts and BLAS kernels, each in its own process --------------------------------------------------

_DIGEST_SCRIPT = """
import hashlib, json, sys
import numpy as np, numba
sys.path.insert(0, {root!r})
import runtime
from tests.test_invariance import SHIPPED, _batch_feed
from tests.conftest import WEIGHTS
out = {{"layer": None}}
for file in SHIPPED:
    sess = runtime.InferenceSession(str(WEIGHTS / file))
    h = hashlib.sha256()
    for y in sess.run(None, _batch_feed(WEIGHTS / file)):
        h.update(np.ascontiguousarray(y).tobytes())
    out[file] = h.hexdigest()
out["layer"] = numba.threading_layer()
print(json.dumps(out))
"""

ENVIRONMENTS = {
    "1-thread": {"NUMBA_NUM_THREADS": "1"},
    "2-threads": {"NUMBA_NUM_THREADS": "2"},
    "4-threads": {"NUMBA_NUM_THREADS": "4"},
    "Haswell": {"OPENBLAS_CORETYPE": "Haswell", "NUMBA_NUM_THREADS": "2"},
    "SkylakeX": {"OPENBLAS_CORETYPE": "SkylakeX", "NUMBA_NUM_THREADS": "2"},
}


def _digests(extra_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "NUMBA_NUM_THREADS")}
    env.update(extra_env)
    script = _DIGEST_SCRIPT.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_outputs_are_the_same_bits_for_every_thread_count_and_blas_kernel():
    results = {name: _digests(env) for name, env in ENVIRONMENTS.items()}
    reference = results["2-threads"]
    for name, digests in results.items():
        assert digests["layer"] == "tbb", f"{name}: threading layer {digests['layer']}"
        for file in SHIPPED:
            assert digests[file] == reference[file], f"{file}: {name} differs from 2 threads"


# --- threads sharing a session, fork and spawn -----------------------------------------------------------------


def _digest(outputs) -> str:
    h = hashlib.sha256()
    for y in outputs:
        h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("file", ["deconvnet-digits.onnx", "dcgan-mnist.generator.onnx", "sparse-ae-mnist.onnx"])
def test_eight_threads_sharing_a_session_get_the_single_threaded_results(file):
    path = WEIGHTS / file
    sess = runtime.InferenceSession(str(path))
    feeds = [_batch_feed(path, b) for b in (1, 8, 64)]
    expected = [_digest(sess.run(None, f)) for f in feeds]
    got, errors = [], []

    def work(t):
        try:
            for r in range(3):
                i = (t + r) % len(feeds)
                got.append((i, _digest(sess.run(None, feeds[i]))))
        except Exception as e:  # reported below, with the thread's error
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(got) == 24
    assert all(d == expected[i] for i, d in got)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_session_works_in_a_child_forked_after_parallel_kernels_ran():
    path = WEIGHTS / "deconvnet-digits.onnx"
    sess = runtime.InferenceSession(str(path))
    feed = _batch_feed(path, 16)
    expected = _digest(sess.run(None, feed))  # parallel kernels have run in this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report, leave without running the parent's cleanup
        code = 1
        try:
            os.write(write, _digest(sess.run(None, feed)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 128).decode()
    os.close(read)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with status {status}"
    assert child == expected


def _pool_worker(file: str) -> str:
    path = WEIGHTS / file
    return _digest(runtime.InferenceSession(str(path)).run(None, _batch_feed(path, 8)))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool_after_parallel_kernels(method):
    import multiprocessing

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    file = "dcgan-mnist.discriminator.onnx"
    expected = _pool_worker(file)  # parallel kernels run in the parent first
    with multiprocessing.get_context(method).Pool(2) as pool:
        result = pool.map_async(_pool_worker, [file, file])
        got = result.get(timeout=300)
    assert got == [expected, expected]
