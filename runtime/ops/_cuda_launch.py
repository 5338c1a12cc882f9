"""Launch configuration and shared device code for the Numba-CUDA kernels.

Every kernel is declared with ``@kernel(signature, ...)``: it is compiled lazily for the argument types it
meets at run time, and the listed signatures are what ``tests/test_ptx.py`` compiles to real PTX for
compute capabilities 8.0 and 9.0, so a kernel that runs in the simulator but would not build for a GPU fails.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
from numba import cuda, float32

from runtime.ops._cpu_kernels import LEAKY_RELU_ALPHA

# One place for launch geometry; tests may patch these before a kernel is first compiled.
THREADS_PER_BLOCK = 256
TILE = 16  # GEMM tile edge: (TILE, TILE) threads per block, two (TILE, TILE) float32 tiles of shared memory
# GEMMs with at most this many rows (batch-1 inference and other skinny products) take the skinny kernel: no
# shared memory or barriers, coalesced reads of a (K, N) weight, SKINNY_COLUMNS outputs of one row per thread.
SKINNY_MAX_ROWS = 16
SKINNY_COLUMNS = 4
# Every CUDA GEMM sums an output in chunks of K_CHUNK along K (a multiple of TILE): each chunk is one FMA chain
# from zero, and the chunks' sums are added in order. The skinny kernel runs the chunks in parallel blocks (split-K:
# a GEMV over fc6's K = 25,088 has 98 chunks to spread over the SMs) and the tiled kernel in sequence, so both
# give an output the same bits, whatever the batch.
K_CHUNK = 256


class KernelRecord:
    def __init__(self, py_func: Callable, signatures: tuple[str, ...]):
        self.name = f"{py_func.__module__}.{py_func.__name__}"
        self.py_func = py_func
        self.signatures = signatures


KERNELS: list[KernelRecord] = []


def kernel(*signatures: str):
    """``@cuda.jit`` that also records the kernel and its representative signatures for the PTX check."""

    def register(fn: Callable):
        KERNELS.append(KernelRecord(fn, signatures))
        return cuda.jit(fn)

    return register


def grid_1d(n: int) -> int:
    """Blocks for a grid-stride loop over ``n`` elements (capped: each thread then loops)."""
    return max(1, min(math.ceil(n / THREADS_PER_BLOCK), 65535))


@cuda.jit(device=True, inline=True)
def activate_alpha(v, activation, alpha):
    # Same codes as runtime.ops._cpu_kernels.ACTIVATIONS; NaN propagates (no fastmath). float32 constants keep
    # the arithmetic in single precision on the device. ``alpha`` (float32) is LeakyRelu's slope.
    if activation == 1:
        return float32(1.0) / (float32(1.0) + math.exp(-v))
    if activation == 2:
        return v if v >= 0 or v != v else float32(0.0)  # max(v, 0): -0.0 stays, -inf gives 0
    if activation == 3:
        return math.tanh(v)
    if activation == 4:
        return v if v >= 0 else alpha * v  # -0.0 stays, NaN stays NaN
    return v


@cuda.jit(device=True, inline=True)
def activate(v, activation):
    # activate_alpha with LeakyRelu at its ONNX default slope
    return activate_alpha(v, activation, float32(LEAKY_RELU_ALPHA))


def as_float32(x, what: str):
    from runtime.errors import InvalidFeed

    if x.dtype != np.float32:
        raise InvalidFeed(f"the cuda backend's {what} takes float32 tensors, got {x.dtype}")
    return x


# --- the run context: the session's stream and memory plan -------------------------------------------------------
#
# An InferenceSession on the cuda backend runs every launch and copy on its own stream and takes every device
# buffer from a DevicePlan made for the feed's shapes: the first run of a shape key allocates (a buffer freed by the
# graph's liveness is handed to a later node) and records each request; a warm run replays the record, so it makes
# no device allocation (no cuMemAlloc, no deferred free whose flush would synchronise the device) and its one
# synchronisation is the session's, after the copies of the outputs. Outside a session (an op called directly)
# the helpers below allocate, upload and check at once, on the default stream.


class _Current(threading.local):
    plan: DevicePlan | None = None
    stream = 0


_current = _Current()


@contextmanager
def running(plan: DevicePlan):
    """Within: the ops launch on ``plan.stream`` and take their buffers from ``plan`` (this thread only)."""
    _current.plan, _current.stream = plan, plan.stream
    try:
        yield plan
    finally:
        _current.plan, _current.stream = None, 0


def current_stream():
    """The stream every launch and copy goes to: the running session's, else the default stream (0)."""
    return _current.stream


def device_array(shape, dtype=np.float32, *, persistent: bool = False):
    """A device array of ``shape``: from the running session's plan, else freshly allocated. ``persistent``: kept
    to the end of the run (not free for the next nodes when the op's outputs do not hold it)."""
    plan = _current.plan
    if plan is None:
        return cuda.device_array(shape, dtype=dtype, stream=_current.stream)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else shape
    return plan.device_array(tuple(int(d) for d in shape), np.dtype(dtype), persistent)


def constant(host: np.ndarray):
    """A small host array (shapes, strides, indices, bounds) on the device: uploaded on a shape key's first run,
    kept with the plan and uploaded again only if its values changed."""
    host = np.ascontiguousarray(host)
    plan = _current.plan
    if plan is None:
        return cuda.to_device(host, stream=_current.stream)
    return plan.constant(host)


def check_later(flag, error: Callable[[int], Exception]) -> None:
    """``flag``, an int64 device array [found, value] an op's kernels filled: inside a session read once, with the
    outputs, at the end of the run (``error(value)`` raised then, naming the node); outside, read now."""
    plan = _current.plan
    if plan is None:
        found, value = flag.copy_to_host(stream=_current.stream)
        if found:
            raise error(int(value))
        return
    plan.checks.append((plan.node, flag, error))


def _address_range(a) -> tuple[int, int]:
    """The device byte range [start, end) of an array (the simulator's arrays wrap host memory)."""
    interface = a.__cuda_array_interface__ if hasattr(a, "__cuda_array_interface__") else a.__array_interface__
    start = interface["data"][0]
    return start, start + a.nbytes


class DevicePlan:
    """The device buffers of one shape key of one session: recorded on its first run, replayed after.

    Each request (``device_array``, ``constant``, a persistent flag) is one entry, in the order the run makes them;
    a replay that meets a request of another shape (a shape that depends on values, not on the key) allocates
    afresh and marks the plan ``stale``: the session records a new one on the next run.
    """

    def __init__(self, stream):
        self.stream = stream
        self.recording = True
        self.stale = False
        self.entries: list = []  # device_array: [view]; constant: [host copy, device array]
        self.cursor = 0
        self.node = None  # the node running (for check_later's error)
        self.checks: list = []  # (node, flag, error) of this run
        # recording only: flat buffers by id, their byte ranges, live-slot counts, the free ones, this step's
        self._buffers: list = []
        self._ranges: list[tuple[int, int, int]] = []
        self._refs: dict[int, int] = {}
        self._free: list[int] = []
        self._step: list[int] = []

    # --- requests from the ops ---------------------------------------------------------------------------------
    def device_array(self, shape: tuple, dtype: np.dtype, persistent: bool = False):
        if not self.recording:
            k = self.cursor
            self.cursor = k + 1
            if not self.stale and k < len(self.entries):  # once off the record, every request is fresh
                entry = self.entries[k]
                if len(entry) == 1 and entry[0].shape == shape and entry[0].dtype == dtype:
                    return entry[0]
            self.stale = True
            return cuda.device_array(shape, dtype=dtype, stream=self.stream)
        n = math.prod(shape)
        fits = (
            []
            if persistent
            else [b for b in self._free if self._buffers[b].dtype == dtype and self._buffers[b].size >= n]
        )
        if fits:
            b = min(fits, key=lambda b: self._buffers[b].size)  # best fit
            self._free.remove(b)
        else:
            b = len(self._buffers)
            flat = cuda.device_array(max(n, 1), dtype=dtype, stream=self.stream)
            self._buffers.append(flat)
            self._ranges.append((*_address_range(flat), b))
        if not persistent:
            self._step.append(b)
        view = self._buffers[b][:n].reshape(shape)
        self.entries.append([view])
        return view

    def constant(self, host: np.ndarray):
        if not self.recording:
            k = self.cursor
            self.cursor = k + 1
            if not self.stale and k < len(self.entries) and len(self.entries[k]) == 2:
                kept, device = self.entries[k]
                if kept.shape == host.shape and kept.dtype == host.dtype:
                    if not np.array_equal(kept, host):
                        device.copy_to_device(host, stream=self.stream)
                        kept[...] = host
                    return device
            self.stale = True
            return cuda.to_device(host, stream=self.stream)
        device = cuda.to_device(host, stream=self.stream)
        self.entries.append([host.copy(), device])
        return device

    # --- liveness, told by the session while recording ---------------------------------------------------------
    def _buffer_of(self, value) -> int | None:
        if value is None or isinstance(value, np.ndarray) or not value.size:
            return None
        start = _address_range(value)[0]
        for lo, hi, b in self._ranges:
            if lo <= start < hi:
                return b
        return None  # a weight, or a view of one

    def hold(self, value) -> None:
        """``value`` went into a slot: its buffer stays until every slot that holds it is released."""
        b = self._buffer_of(value)
        if b is not None:
            self._refs[b] = self._refs.get(b, 0) + 1

    def release(self, value) -> None:
        b = self._buffer_of(value)
        if b is not None:
            self._refs[b] -= 1
            if not self._refs[b]:
                self._free.append(b)

    def end_step(self) -> None:
        """The buffers this step took and no slot holds (an op's scratch) are free for the next steps."""
        for b in self._step:
            if not self._refs.get(b) and b not in self._free:
                self._free.append(b)
        self._step = []

    def begin_run(self) -> None:
        self.cursor = 0
        self.checks = []

    def end_run(self) -> None:
        if self.recording and not self.stale:
            self.recording = False
            self._ranges, self._refs, self._free, self._step = [], {}, [], []
