"""A fresh process's first inference (issue 14): the CPU kernels are compiled once into the kernel cache
(``runtime/ops/_kernel_cache.py``), by default in the user's cache directory and in NUMBA_CACHE_DIR when that is
set, and a later process loads them from there. Each case runs fresh interpreters with their own cache folders,
so what an earlier test compiled does not count."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import ROOT, WEIGHTS

MODEL = WEIGHTS / "sparse-ae-mnist.onnx"
DATA = WEIGHTS / "sparse-ae-mnist" / "test_data_set_0"

# Session creation and the first run of a shipped model, timed after the imports (whose cost, about a second,
# is no kernel's); its outputs saved to OUT.
FIRST_INFERENCE = """
import json, sys, time
import numpy as np
import onnx
from onnx import numpy_helper
import runtime
from runtime.ops import KERNEL_CACHE_DIR
model, data, out = sys.argv[1:4]
x = numpy_helper.to_array(onnx.load_tensor(data + "/input_0.pb"))
start = time.perf_counter()
session = runtime.InferenceSession(model, backend="cpu")
outputs = session.run(None, {session.get_inputs()[0].name: x})
seconds = time.perf_counter() - start
np.savez(out, *outputs)
print(json.dumps({"seconds": seconds, "cache": KERNEL_CACHE_DIR, "runtime": runtime.__file__}))
"""


def _env(tmp_path, **settings) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), **settings)
    return env


def _first_inference(env: dict, out, cwd=ROOT) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", FIRST_INFERENCE, str(MODEL), str(DATA), str(out)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _expected() -> list[np.ndarray]:
    return [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(DATA.glob("output_*.pb"))]


def _cached_files(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.suffix in (".nbi", ".nbc")) if folder.exists() else []


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """(its folder, its environment, the report) of a first inference with an empty user cache."""
    tmp_path = tmp_path_factory.mktemp("first-run")
    env = _env(tmp_path)
    return tmp_path, env, _first_inference(env, tmp_path / "cold.npz")


def test_first_inference_compiles_into_the_user_cache_and_the_next_process_loads_it(cold):
    tmp_path, env, first = cold
    user_cache = tmp_path / "xdg" / "deconv-zoo" / "numba"
    assert first["cache"].startswith(str(user_cache) + os.sep), first
    assert any(name.startswith("_gemm_cpu.gemm_panels-") for name in _cached_files(user_cache))
    warm = _first_inference(env, tmp_path / "warm.npz")
    assert warm["cache"] == first["cache"]
    assert warm["seconds"] <= 0.6 * first["seconds"], (first, warm)
    with np.load(tmp_path / "cold.npz") as a, np.load(tmp_path / "warm.npz") as b:
        cold_out, warm_out = [a[k] for k in a.files], [b[k] for k in b.files]
    for got, again, want in zip(cold_out, warm_out, _expected(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
        assert np.array_equal(got, again), "the cached kernels gave other bits than the freshly compiled ones"


def test_explicit_numba_cache_dir_wins(tmp_path):
    explicit = tmp_path / "explicit"
    env = _env(tmp_path, NUMBA_CACHE_DIR=str(explicit))
    script = "import numpy as np, runtime.ops._cpu_kernels as k; from runtime.ops import KERNEL_CACHE_DIR\n"
    script += "k.unary_(np.ones((2, 3), np.float32), 2); print(KERNEL_CACHE_DIR)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(explicit)
    assert _cached_files(explicit), "nothing was cached in NUMBA_CACHE_DIR"
    assert not (tmp_path / "xdg" / "deconv-zoo").exists()


def test_a_checkout_shares_the_cache_only_with_identical_kernel_sources(cold):
    """The cache is keyed on the kernels' sources, not on their path: a second copy of the same sources loads
    what the first compiled (a fresh virtual environment or clone starts warm); a copy with one kernel source
    changed gets a directory of its own (Numba alone keys a function on its own file, and conv.py's cached
    convolutions would keep an edited _gemm_cpu.py's old GEMM)."""
    tmp_path, env, first = cold
    same = tmp_path / "same"
    shutil.copytree(ROOT / "runtime", same / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    copy = _first_inference({**env, "PYTHONPATH": str(same)}, tmp_path / "copy.npz", cwd=same)
    assert copy["runtime"].startswith(str(same)), copy
    assert copy["cache"] == first["cache"]
    assert copy["seconds"] <= 0.6 * first["seconds"], (first, copy)
    edited = tmp_path / "edited"
    shutil.copytree(same, edited)
    with open(edited / "runtime" / "ops" / "_gemm_cpu.py", "a") as f:
        f.write("\n# an edit\n")
    script = "import runtime; from runtime.ops import KERNEL_CACHE_DIR; print(runtime.__file__, KERNEL_CACHE_DIR)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(edited)}, cwd=edited)  # fmt: skip
    assert done.returncode == 0, done.stderr
    where, cache = done.stdout.split()[-2:]
    assert where.startswith(str(edited)) and cache != first["cache"], done.stdout


# Two processes saving many signatures of one kernel into one cache directory at once, as `zoo warmup` and a
# user's first run might: with Numba's unlocked read-extend-write of the index, entries were lost or named
# another signature's data file.
CONCURRENT_SAVES = """
import sys
from numba.core.caching import IndexDataCacheFile
from runtime.ops import _kernel_cache
who = sys.argv[1]
index = IndexDataCacheFile(_kernel_cache._SourcesLocator.path, "probe.kernel-1.py311", _kernel_cache.TAG)
for i in range(60):
    index.save((who, i), f"{who}:{i}")
"""


def test_concurrent_saves_keep_every_signature_with_its_own_code(tmp_path):
    env = _env(tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_SAVES, who], env=env, cwd=ROOT, stderr=subprocess.PIPE)
        for who in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    check = "from numba.core.caching import IndexDataCacheFile\nfrom runtime.ops import _kernel_cache as c\n"
    check += "index = IndexDataCacheFile(c._SourcesLocator.path, 'probe.kernel-1.py311', c.TAG)\n"
    check += "print(sorted((k, index.load(k)) for k in index._load_index()))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    found = eval(done.stdout)
    assert found == sorted(((who, i), f"{who}:{i}") for who in "ab" for i in range(60))
