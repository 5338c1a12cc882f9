"""InferenceSession: onnxruntime's Python API over the runtime's graph executor, so that switching between the
two is the import line: ``import runtime as ort`` runs a script written for ``import onnxruntime as ort``
unchanged (``providers=``, ``SessionOptions``, NodeArgs, list feeds). ``backend="cpu"`` / ``backend="cuda"`` is
the runtime's own spelling of ``providers=["CPUExecutionProvider"]`` / ``["CUDAExecutionProvider"]``, strict
where the providers fall back: it raises where no GPU is usable.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import numba
import numpy as np

from runtime.errors import BackendUnavailable, InvalidFeed, InvalidOption, ZooRuntimeError
from runtime.fusion import optimize
from runtime.graph import Graph, ValueInfo, build_graph, read_model
from runtime.ops import ABSENT, BACKENDS
from runtime.ops._cpu_kernels import register_weights
from runtime.options import (
    BACKEND_OF_PROVIDER,
    CPU_PROVIDER,
    CUDA_PROVIDER,
    PROVIDER_OF_BACKEND,
    GraphOptimizationLevel,
    RunOptions,
    SessionOptions,
    cuda_provider_options,
    get_available_providers,
    normalize_providers,
)

# The operands that are weights of a matrix product: every multiply-add of the op reads one of their elements.
PRODUCT_WEIGHTS = {
    "Conv": (1,), "FusedConv": (1,), "ConvTranspose": (1,), "FusedConvTranspose": (1,),
    "Gemm": (0, 1), "FusedGemm": (0, 1), "MatMul": (0, 1),
}  # fmt: skip


def flush_subnormal_weights(graph: Graph, weights: dict) -> None:
    """Subnormal values (|w| < 2⁻¹²⁶ in float32) of the initialisers that are weights of Conv, ConvTranspose,
    Gemm or MatMul replaced by zero, in place in ``weights`` (a copy of the graph's). On Intel cores each fused
    multiply-add with a subnormal operand takes a microcode assist of ~100 cycles: sparse-ae-mnist's weights
    (6 % subnormal, from weight decay) ran 6.6x slower than OpenVINO, which flushes them too, at batch 64.
    An output moves by at most Σ|x|·2⁻¹²⁶, far below the rounding of a normal result."""
    names = {n.inputs[i] for n in graph.nodes for i in PRODUCT_WEIGHTS.get(n.op_type, ()) if i < len(n.inputs)}
    for name in names & weights.keys():
        w = weights[name]
        if isinstance(w, np.ndarray) and w.dtype.kind == "f" and w.size:
            tiny = np.finfo(w.dtype).tiny
            subnormal = (np.abs(w) < tiny) & (w != 0)
            if subnormal.any():
                weights[name] = np.where(subnormal, w.dtype.type(0), w)


@dataclass(frozen=True)
class NodeArg:
    """An input or output of the graph, as onnxruntime's ``NodeArg``."""

    name: str
    shape: list
    type: str

    def __repr__(self) -> str:
        return f"NodeArg(name='{self.name}', type='{self.type}', shape={self.shape})"


@dataclass(frozen=True)
class ModelMetadata:
    """As onnxruntime's ``ModelMetadata``: the model's ``metadata_props`` are in ``custom_metadata_map``."""

    producer_name: str
    graph_name: str
    description: str
    custom_metadata_map: dict = field(default_factory=dict)
    domain: str = ""
    version: int = 2**63 - 1  # onnxruntime's value for a model without model_version
    graph_description: str = ""


class _CPU:
    name = "cpu"

    def to_device(self, a: np.ndarray):
        return a

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)


class _CUDA:
    name = "cuda"

    def __init__(self):
        try:
            from numba import cuda

            from runtime.ops import load_cuda_ops

            load_cuda_ops()
        except ImportError as e:
            raise BackendUnavailable(
                f"backend 'cuda' needs the numba-cuda package ({e}); install deconv-zoo[cuda] or use backend='cpu'"
            ) from None
        if not cuda.is_available():
            raise BackendUnavailable(
                "backend 'cuda' found no usable NVIDIA GPU (numba.cuda.is_available() is False); use backend='cpu', "
                "or set NUMBA_ENABLE_CUDASIM=1 before numba is imported to run the kernels in the simulator"
            )
        self.cuda = cuda
        # Every launch and copy of the session's runs goes to this stream; a run synchronises it once, at the end.
        self.stream = cuda.stream()

    def to_device(self, a: np.ndarray):
        # Shape tensors (integers) stay on the host: the ops that read them need their values there.
        if a.dtype.kind == "f" and a.size:
            return self.cuda.to_device(np.asarray(a, order="C"))
        return a


# Memory plans a cuda session keeps (one per feed shape key, the least recently run dropped first).
PLANS_PER_SESSION = 8


def _call(node, impl, args: list, attrs: dict):
    """One node's kernel on its inputs, any failure named after the node."""
    try:
        return impl(*args, **attrs)
    except ZooRuntimeError as e:
        raise type(e)(f"{node.describe()}: {e}") from None
    except (ValueError, TypeError, IndexError, ArithmeticError, MemoryError) as e:
        # Shapes no load-time check can see (the runtime infers none): an Add whose declared input does not
        # broadcast with its initializer, pads too large to allocate. Found by tests/test_fuzz.py.
        shapes = [None if a is None else tuple(a.shape) for a in args]
        raise InvalidFeed(
            f"{node.describe()} cannot run on inputs of shapes {shapes} ({type(e).__name__}: {e}); "
            "expected inputs that fit the op and its attributes"
        ) from None


class InferenceSession:
    """Runs an ONNX model on the ``cpu`` (Numba) or ``cuda`` (Numba-CUDA) backend, with onnxruntime's signature.

    ``providers`` in onnxruntime's forms (names, or (name, options) tuples, with or without ``provider_options``):
    the first available of CUDAExecutionProvider and CPUExecutionProvider is used, the CPU when none is given or
    usable; a name not available here is skipped with onnxruntime's UserWarning. ``backend`` is this runtime's
    own spelling and never falls back; given with ``providers``, both must name the same backend.
    ``optimize_graph=False`` is ``graph_optimization_level=ORT_DISABLE_ALL``. The keyword arguments onnxruntime
    reads (``enable_fallback``, ``read_config_from_model``, ``disabled_optimizers``) are accepted and ignored.
    """

    _ORT_KWARGS = frozenset({"enable_fallback", "read_config_from_model", "disabled_optimizers"})

    def __init__(
        self,
        path_or_bytes,
        sess_options: SessionOptions | None = None,
        providers=None,
        provider_options=None,
        *,
        backend: str | None = None,
        optimize_graph: bool | None = None,
        **kwargs,
    ):
        unknown = sorted(set(kwargs) - self._ORT_KWARGS)
        if unknown:
            raise TypeError(f"InferenceSession() got unexpected keyword argument(s) {unknown}")
        options = SessionOptions() if sess_options is None else SessionOptions.from_any(sess_options)
        if optimize_graph is not None:
            disabled = options.graph_optimization_level == GraphOptimizationLevel.ORT_DISABLE_ALL
            if sess_options is not None and disabled == bool(optimize_graph):
                raise InvalidOption(
                    f"optimize_graph={optimize_graph} contradicts sess_options.graph_optimization_level="
                    f"{options.graph_optimization_level.name}; give one of them"
                )
            options.graph_optimization_level = (
                GraphOptimizationLevel.ORT_ENABLE_ALL if optimize_graph else GraphOptimizationLevel.ORT_DISABLE_ALL
            )
        self._sess_options = options
        self._source = path_or_bytes  # set_providers() reloads it, as onnxruntime keeps its path or bytes
        self._create(backend, providers, provider_options)

    def _create(self, backend, providers, provider_options) -> None:
        backend, options = _choose_backend(backend, providers, provider_options)
        device = _CPU()
        if backend == "cuda":
            try:
                device = _CUDA()
            except BackendUnavailable as e:
                if options is None:  # backend="cuda": the runtime's own spelling does not fall back
                    raise
                warnings.warn(f"Failed to create {CUDA_PROVIDER}: {e}. Falling back to {CPU_PROVIDER}.", stacklevel=3)
                backend, device = "cpu", _CPU()
        self._device, self.backend = device, backend
        self._plans: dict = {}  # cuda: feed key -> DevicePlan, least recently run first
        self._plans_lock = threading.Lock()  # a plan's buffers serve one run at a time
        self._provider_options = {CPU_PROVIDER: {}}
        if backend == "cuda":
            self._provider_options = {CUDA_PROVIDER: (options or {}).get(CUDA_PROVIDER, {"device_id": "0"})}
            self._provider_options[CPU_PROVIDER] = {}
        so = self._sess_options
        threads = so.intra_op_num_threads
        self._threads = min(threads, numba.config.NUMBA_NUM_THREADS) if threads > 0 else 0  # 0: numba's count
        self._profile: list | None = [] if so.enable_profiling else None
        self._profile_start = time.perf_counter()
        model, base_dir = read_model(self._source)
        version = model.model_version if model.HasField("model_version") else 2**63 - 1
        self._model_info = (model.domain, version, model.graph.doc_string)
        graph = build_graph(model, base_dir, backend)
        optimize_graph = so.graph_optimization_level != GraphOptimizationLevel.ORT_DISABLE_ALL
        self._graph: Graph = optimize(graph, backend) if optimize_graph else graph
        self._weights = {
            k: self._device.to_device(np.asarray(v, order="C")) for k, v in self._graph.initializers.items()
        }
        # Overridable initialisers' defaults: in the weights' slots, but fed at run time as far as the
        # preparations can tell (they are no constants).
        self._defaults = {k: self._device.to_device(np.asarray(v, order="C")) for k, v in self._graph.defaults.items()}
        if backend == "cpu":  # constant from here on: kernels may keep derived layouts of them (``packed``)
            flush_subnormal_weights(self._graph, self._weights)
            for w in self._weights.values():
                w.flags.writeable = False
            register_weights(self._weights.values())
        self._trace = os.environ.get("ZOO_TRACE") == "1"
        self._build_plan()
        self._declared_outputs = [v.name for v in self._graph.outputs]
        # The (name, dtype, shape) of each input of the last feed that passed every check: a feed of plain
        # C-contiguous arrays with exactly these passes again without them (4 us of a 20 us batch-1 run).
        self._accepted_feed: tuple | None = None
        if so.optimized_model_filepath:
            warnings.warn(
                f"SessionOptions.optimized_model_filepath='{so.optimized_model_filepath}' is not written: "
                "this runtime keeps its rewritten graph in memory only",
                stacklevel=3,
            )

    # --- the onnxruntime-shaped API -------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg(v.name, list(v.shape), v.type) for v in self._graph.inputs]

    def get_overridable_initializers(self) -> list[NodeArg]:
        """The initialisers also listed as graph inputs (IR >= 4): a feed may give them, as in onnxruntime."""
        return [NodeArg(v.name, list(v.shape), v.type) for v in self._graph.overridable]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg(v.name, list(v.shape), v.type) for v in self._graph.outputs]

    def get_modelmeta(self) -> ModelMetadata:
        g = self._graph
        return ModelMetadata(g.producer, g.graph_name, g.doc_string, dict(g.metadata), *self._model_info)

    def get_providers(self) -> list[str]:
        """onnxruntime's names of the providers in use: ``['CPUExecutionProvider']``, or
        ``['CUDAExecutionProvider', 'CPUExecutionProvider']`` (integer and shape tensors stay on the host)."""
        return list(self._provider_options)

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {name: dict(options) for name, options in self._provider_options.items()}

    def get_session_options(self) -> SessionOptions:
        """A copy of the options the session was created with (changing it changes nothing, as in onnxruntime)."""
        return self._sess_options.copy()

    def set_providers(self, providers=None, provider_options=None) -> None:
        """Re-creates the session on ``providers`` (the CPU when None), as onnxruntime does."""
        self._create(None, [CPU_PROVIDER] if providers is None else providers, provider_options)

    def end_profiling(self) -> str:
        """With ``enable_profiling``: writes the timings recorded since the session was created (or since the last
        call) as onnxruntime's JSON trace, ``<profile_file_prefix>_<date>_<time>.json`` in the working folder, and
        returns its name; '' without profiling."""
        if self._profile is None:
            return ""
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        path = f"{self._sess_options.profile_file_prefix}_{stamp}_{int(time.time() * 1000) % 1000}.json"
        with open(path, "w") as f:
            json.dump(self._profile, f)
        self._profile = []
        return path

    def run(self, output_names, input_feed: dict, run_options: RunOptions | None = None) -> list[np.ndarray]:
        if run_options is not None:
            if not isinstance(run_options, RunOptions) and type(run_options).__name__ != "RunOptions":
                raise TypeError(f"run_options must be a runtime.RunOptions or None, got {type(run_options).__name__}")
            if run_options.terminate:
                raise ZooRuntimeError("the run was not started: run_options.terminate is set")
        try:
            threads = self._threads
            if threads:  # numba's thread count is per calling thread: set for this run, restored after
                before = numba.get_num_threads()
                if before != threads:
                    numba.set_num_threads(threads)
                    try:
                        return self._run(output_names, input_feed)
                    finally:
                        numba.set_num_threads(before)
            return self._run(output_names, input_feed)
        except InvalidFeed as error:  # the caller's feed: reported from this call, not from the checks inside
            raise error.with_traceback(None) from None

    def _run(self, output_names, input_feed) -> list[np.ndarray]:
        wanted = self._declared_outputs if output_names is None else self._check_output_names(output_names)
        feed = input_feed if self._is_accepted_feed(input_feed) else self._check_feed(input_feed)
        if self.backend == "cuda":
            with self._plans_lock:
                return self._run_cuda(wanted, feed)
        slot = self._slot
        values = self._weight_slots.copy()  # [slot] -> value; slot 0 is an omitted input, always None
        for name, value in feed.items():
            values[slot[name]] = value
        timed = self._trace or self._profile is not None
        run_start = time.perf_counter() if timed else 0.0
        for node, impl, attrs, inputs, outputs, freed in self._steps:
            args = [values[i] for i in inputs]
            start = time.perf_counter() if timed else 0.0
            result = _call(node, impl, args, attrs)
            if type(result) is tuple:
                for i, value in zip(outputs, result):
                    values[i] = value
            else:
                values[outputs[0]] = result
            values[0] = None  # where an unused output ("") went
            if timed:
                self._record(node, result if type(result) is tuple else (result,), start)
            for i in freed:
                values[i] = None
        outputs = [self._device.to_host(values[slot[name]]) for name in wanted]
        if self._profile is not None:
            self._profile.append(self._event("model_run", "Session", run_start, {}))
        # A view (Identity, Reshape) of a feed or a weight must not let the caller write into either, nor a
        # weight or a default itself be handed out: the caller owns what it gets, as from onnxruntime.
        return [
            y.copy() if not y.flags.owndata or not y.flags.writeable or self._aliases(y, feed) else y for y in outputs
        ]

    def _run_cuda(self, wanted, feed) -> list[np.ndarray]:
        """``_run`` on the device: every launch and copy on the session's stream, every device buffer from the
        memory plan of the feed's shapes (recorded on its first run, replayed after: no allocation), one
        synchronisation after the copies of the outputs and of the ops' deferred checks."""
        from runtime.ops._cuda_launch import DevicePlan, running

        key = tuple(
            (name, v.dtype.str, v.shape, None if v.dtype.kind == "f" or v.size > 64 else v.tobytes())
            for name, v in feed.items()
        )  # integer feeds are shape tensors on the host: their values can set the shapes
        plan = self._plans.pop(key, None)
        if plan is None or plan.stale:
            plan = DevicePlan(self._device.stream)
        self._plans[key] = plan
        while len(self._plans) > PLANS_PER_SESSION:
            del self._plans[next(iter(self._plans))]
        plan.begin_run()
        recording = plan.recording
        try:
            with running(plan):
                outputs = self._run_planned(plan, wanted, feed)
            plan.end_run()
        except BaseException:
            if recording:  # a record cut short is no plan
                self._plans.pop(key, None)
            raise
        return [
            y.copy() if not y.flags.owndata or not y.flags.writeable or self._aliases(y, feed) else y for y in outputs
        ]

    def _run_planned(self, plan, wanted, feed) -> list[np.ndarray]:
        """The steps of ``_run`` on the device, with ``plan`` (recording: told what each step holds and frees)."""
        stream, recording = plan.stream, plan.recording
        slot = self._slot
        values = self._weight_slots.copy()  # [slot] -> value; slot 0 is an omitted input, always None
        for name, value in feed.items():
            if value.dtype.kind == "f" and value.size:  # shape tensors (integers) and empties stay on the host
                device_value = plan.device_array(value.shape, value.dtype)
                device_value.copy_to_device(value, stream=stream)
                value = device_value
                if recording:
                    plan.hold(value)
            values[slot[name]] = value
        if recording:
            plan.end_step()
        timed = self._trace or self._profile is not None
        if timed:  # traced or profiled: a node's time is its kernels' (a synchronisation each), not its launches'
            stream.synchronize()
        run_start = time.perf_counter() if timed else 0.0
        for node, impl, attrs, inputs, outputs, freed in self._steps:
            args = [values[i] for i in inputs]
            start = time.perf_counter() if timed else 0.0
            if all(a is None or isinstance(a, np.ndarray) for a in args):
                impl = node.op.impl["cpu"]  # host-resident tensors (integers, shapes, empties) stay on the host
            plan.node = node
            result = _call(node, impl, args, attrs)
            results = result if type(result) is tuple else (result,)
            for i, value in zip(outputs, results):
                values[i] = value
                if recording and i:
                    plan.hold(value)
            values[0] = None  # where an unused output ("") went
            if timed:
                stream.synchronize()
                self._record(node, results, start)
            if recording:
                plan.end_step()
                for i in freed:
                    plan.release(values[i])
            for i in freed:
                values[i] = None
        device_outputs = [values[slot[name]] for name in wanted]
        outputs = [
            y.copy_to_host(stream=stream) if hasattr(y, "copy_to_host") else np.asarray(y) for y in device_outputs
        ]
        flags = [(node, flag.copy_to_host(stream=stream), error) for node, flag, error in plan.checks]
        stream.synchronize()  # the run's one synchronisation
        for node, (found, value), error in flags:
            if found:
                e = error(int(value))
                raise type(e)(f"{node.describe()}: {e}")
        if self._profile is not None:
            self._profile.append(self._event("model_run", "Session", run_start, {}))
        return outputs

    def _aliases(self, y: np.ndarray, feed: dict) -> bool:
        return any(y is f for f in feed.values()) or any(y is d for d in self._defaults.values())

    # --- internals -------------------------------------------------------------------------------------
    def _build_plan(self) -> None:
        """The execution plan, resolved once (a batch-1 run of a small model is mostly its loop: every lookup
        saved counts). Each value gets a slot in a list, slot 0 standing for an omitted input; per step: the node,
        its implementation, its input and output slots, and the slots of the intermediates read for the last time
        there (freed after it; never a graph output)."""
        g = self._graph
        names = [*self._weights, *self._defaults, *(v.name for v in g.inputs)]
        names += [o for n in g.nodes for o in n.outputs if o]
        self._slot = {"": 0} | {name: i for i, name in enumerate(dict.fromkeys(names), start=1)}
        self._weight_slots = [None] * (len(self._slot))
        for name, value in (*self._weights.items(), *self._defaults.items()):
            self._weight_slots[self._slot[name]] = value
        last_use = {}
        for step, node in enumerate(g.nodes):
            for name in node.inputs:
                if name and name not in self._weights:
                    last_use[name] = step
        kept = {v.name for v in g.outputs}
        freed: dict[int, list[int]] = {}
        for name, step in last_use.items():
            if name not in kept:
                freed.setdefault(step, []).append(self._slot[name])
        self._steps = []
        for step, node in enumerate(g.nodes):
            impl, attrs = node.op.impl[self.backend], node.attrs
            if self.backend == "cpu":  # per-node state made once (packed weights, ...): the runner binds the attrs
                constants = tuple(self._weights.get(i) if i else ABSENT for i in node.inputs)
                try:
                    runner = node.op.prepared(constants + (ABSENT,) * (node.op.max_inputs - len(constants)), attrs)
                except ZooRuntimeError as e:  # an attribute value refused at load, named with its node
                    raise type(e)(f"{node.describe()}: {e}") from None
                if runner is not None:
                    impl, attrs = runner, {}
            inputs, outputs = tuple(self._slot[i] for i in node.inputs), tuple(self._slot[o] for o in node.outputs)
            self._steps.append((node, impl, attrs, inputs, outputs, tuple(freed.get(step, ()))))

    def _check_output_names(self, output_names) -> list[str]:
        declared = [v.name for v in self._graph.outputs]
        if output_names is None:
            return declared
        if isinstance(output_names, str):
            raise InvalidFeed(f"output_names must be a list of names or None, got the string '{output_names}'")
        output_names = list(output_names)
        if not output_names:  # onnxruntime: an empty list asks for every output, as None does
            return declared
        for name in output_names:
            if name not in declared:
                raise InvalidFeed(f"unknown output '{name}'; the model's outputs are {declared}")
        return list(output_names)

    def _check_feed(self, input_feed) -> dict[str, np.ndarray]:
        if not isinstance(input_feed, dict):
            raise InvalidFeed(f"the feed must be a dict {{input name: ndarray}}, got {type(input_feed).__name__}")
        expected = {v.name: v for v in self._graph.inputs}
        accepted = expected | {v.name: v for v in self._graph.overridable}
        unknown = sorted(set(input_feed) - set(accepted))
        if unknown:
            extra = f" (and overridable initializers {sorted(self._defaults)})" if self._defaults else ""
            raise InvalidFeed(f"unknown input name(s) {unknown}; the model's inputs are {sorted(expected)}{extra}")
        missing = sorted(set(expected) - set(input_feed))
        if missing:
            wanted = ", ".join(f"'{n}' ({expected[n].type} {list(expected[n].shape)})" for n in missing)
            raise InvalidFeed(f"missing input(s) {wanted}; the model's inputs are {sorted(expected)}, each to be fed")
        symbols: dict[str, tuple[str, int]] = {}
        feed = {}
        for name, value in input_feed.items():
            feed[name] = _check_one_input(accepted[name], value, symbols)
        if all(feed[name] is value and type(value) is np.ndarray for name, value in input_feed.items()):
            self._accepted_feed = tuple((name, value.dtype, value.shape) for name, value in feed.items())
        return feed

    def _is_accepted_feed(self, input_feed) -> bool:
        """Whether ``input_feed`` holds the names, dtypes and shapes of the last feed that passed every check,
        as C-contiguous plain arrays (which those checks pass unchanged)."""
        accepted = self._accepted_feed
        if accepted is None or type(input_feed) is not dict or len(input_feed) != len(accepted):
            return False
        for name, dtype, shape in accepted:
            value = input_feed.get(name)
            if type(value) is not np.ndarray or value.shape != shape or value.dtype != dtype:
                return False
            if not value.flags.c_contiguous:
                return False
        return True

    def _record(self, node, results, start: float) -> None:
        if self._profile is not None:
            provider = PROVIDER_OF_BACKEND[self.backend]
            args = {"op_name": node.op_type, "provider": provider}
            self._profile.append(self._event(f"{node.name}_kernel_time", "Node", start, args))
        if self._trace:
            shapes = ", ".join(str(tuple(r.shape)) for r in results if r is not None)
            seconds = time.perf_counter() - start
            print(f"[zoo-trace] {node.describe():<48} -> {shapes:<24} {seconds * 1e3:8.3f} ms", file=sys.stderr)

    def _event(self, name: str, category: str, start: float, args: dict) -> dict:
        """One complete event ("ph": "X") of the Chrome trace format onnxruntime's profiler writes; times in us."""
        now = time.perf_counter()
        return {
            "cat": category, "pid": os.getpid(), "tid": threading.get_native_id(),
            "dur": round((now - start) * 1e6), "ts": round((start - self._profile_start) * 1e6),
            "ph": "X", "name": name, "args": args,
        }  # fmt: skip


def _choose_backend(backend, providers, provider_options) -> tuple[str, dict | None]:
    """The backend and, when chosen through ``providers``, the providers' options by name (None for the runtime's
    own ``backend=``, which never falls back)."""
    if backend is not None:
        if backend not in BACKENDS:
            raise BackendUnavailable(f"unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}")
        pairs = normalize_providers(providers, provider_options, list(BACKEND_OF_PROVIDER))
        if pairs and BACKEND_OF_PROVIDER[pairs[0][0]] != backend:
            raise InvalidOption(
                f"backend='{backend}' and providers={[name for name, _ in pairs]} name different backends; "
                f"give one of them (backend='{backend}' is providers=['{PROVIDER_OF_BACKEND[backend]}'])"
            )
        if pairs and backend == "cuda":
            cuda_provider_options(pairs[0][1])
        return backend, None
    pairs = normalize_providers(providers, provider_options, get_available_providers())
    usable = [(name, options) for name, options in pairs if name in BACKEND_OF_PROVIDER]
    if not usable:
        return "cpu", {CPU_PROVIDER: {}}
    name, options = usable[0]
    if name == CUDA_PROVIDER:
        return "cuda", {CUDA_PROVIDER: cuda_provider_options(options), CPU_PROVIDER: {}}
    return "cpu", {CPU_PROVIDER: {}}  # onnxruntime keeps no CPU provider option either


def _check_one_input(info: ValueInfo, value, symbols: dict) -> np.ndarray:
    if isinstance(value, list):
        # As onnxruntime: a (nested) list becomes an array of the declared type by numpy's conversion
        # (PyArray_FromAny with that dtype), so [[1, 2]] is float32 for a float input and [1.5] an int64 1.
        try:
            value = np.array(value, dtype=info.dtype)
        except (ValueError, TypeError, OverflowError) as e:
            raise InvalidFeed(
                f"input '{info.name}': cannot make a {info.type} tensor from the given list ({type(e).__name__}: {e})"
            ) from None
    elif not isinstance(value, np.ndarray):
        # onnxruntime refuses scalars (Python or numpy), tuples and other array-likes alike.
        raise InvalidFeed(
            f"input '{info.name}' must be a numpy.ndarray or a list of {info.type}, got {type(value).__name__}"
            + (f"; for a scalar pass np.array(value, dtype=np.{info.dtype})" if np.isscalar(value) else "")
        )
    if value.dtype != info.dtype:
        raise InvalidFeed(f"input '{info.name}' has dtype {value.dtype}; expected {info.type} (numpy {info.dtype})")
    if info.has_rank and value.ndim != len(info.shape):
        raise InvalidFeed(
            f"input '{info.name}' has rank {value.ndim} (shape {value.shape}); expected rank {len(info.shape)} "
            f"with shape {_shape_text(info.shape)}"
        )
    for axis, (want, got) in enumerate(zip(info.shape, value.shape)):
        if isinstance(want, int) and want > 0 and want != got:
            raise InvalidFeed(
                f"input '{info.name}' has shape {value.shape}; expected {_shape_text(info.shape)} "
                f"(dimension {axis} must be {want})"
            )
        if isinstance(want, str):
            seen = symbols.setdefault(want, (info.name, got))
            if seen[1] != got:
                raise InvalidFeed(f"input '{info.name}' has {want}={got} but input '{seen[0]}' has {want}={seen[1]}")
    return np.asarray(value, order="C")  # copies only what is not C-contiguous; 0-d stays 0-d


def _shape_text(shape: list) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
