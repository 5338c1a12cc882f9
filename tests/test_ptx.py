"""Every CUDA kernel compiles to real PTX for compute capabilities 8.0 and 9.0 (numba-cuda with NVVM, no GPU
needed). The simulator accepts code a GPU compiler rejects, so this runs in a subprocess without
NUMBA_ENABLE_CUDASIM, whichever pytest process collects it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runtime.ops import load_cuda_ops
from runtime.ops._cuda_launch import KERNELS

CAPABILITIES = [(8, 0), (9, 0)]

COMPILE_ALL = """
import json
from numba import cuda
from runtime.ops import load_cuda_ops
from runtime.ops._cuda_launch import KERNELS
load_cuda_ops()
out = []
for k in KERNELS:
    for sig in k.signatures:
        for cc in CAPABILITIES:
            try:
                ptx, _ = cuda.compile_ptx(k.py_func, sig, cc=cc)
                out.append([k.name, sig, list(cc), ptx.count(".entry"), ".target sm_%d%d" % cc in ptx, ""])
            except Exception as e:
                out.append([k.name, sig, list(cc), 0, False, f"{type(e).__name__}: {e}"])
print(json.dumps(out))
"""

load_cuda_ops()
KERNEL_NAMES = sorted({k.name for k in KERNELS})


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = f"CAPABILITIES = {CAPABILITIES!r}\n" + COMPILE_ALL
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_kernel_has_signatures():
    assert KERNEL_NAMES, "no CUDA kernel registered"
    assert all(k.signatures for k in KERNELS)


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_kernel_compiles_to_ptx(compiled, name):
    rows = [r for r in compiled if r[0] == name]
    assert len(rows) == len(CAPABILITIES) * len(next(k for k in KERNELS if k.name == name).signatures)
    for _, sig, cc, entries, right_target, error in rows:
        assert not error, f"{name} {sig} cc={cc}: {error}"
        assert entries == 1 and right_target, f"{name} {sig} cc={cc}: no kernel entry for sm_{cc[0]}{cc[1]}"
