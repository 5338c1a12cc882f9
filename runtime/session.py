"""InferenceSession: onnxruntime's API shape over the runtime's graph executor, so that switching between
the two is one line: ``runtime.InferenceSession(path, backend="cpu")`` for
``onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from runtime.errors import BackendUnavailable, InvalidFeed, ZooRuntimeError
from runtime.fusion import optimize
from runtime.graph import Graph, ValueInfo, build_graph, read_model
from runtime.ops import ABSENT, BACKENDS
from runtime.ops._cpu_kernels import register_weights


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

    def to_device(self, a: np.ndarray):
        # Shape tensors (integers) stay on the host: the ops that read them need their values there.
        if a.dtype.kind == "f" and a.size:
            return self.cuda.to_device(np.asarray(a, order="C"))
        return a

    def to_host(self, a) -> np.ndarray:
        return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


class InferenceSession:
    """Runs an ONNX model on the ``cpu`` (Numba) or ``cuda`` (Numba-CUDA) backend."""

    def __init__(self, path_or_bytes, backend: str = "cpu", *, optimize_graph: bool = True):
        if backend not in BACKENDS:
            raise BackendUnavailable(f"unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}")
        self._device = _CUDA() if backend == "cuda" else _CPU()
        self.backend = backend
        model, base_dir = read_model(path_or_bytes)
        graph = build_graph(model, base_dir, backend)
        self._graph: Graph = optimize(graph, backend) if optimize_graph else graph
        self._weights = {
            k: self._device.to_device(np.asarray(v, order="C")) for k, v in self._graph.initializers.items()
        }
        # Overridable initialisers' defaults: in the weights' slots, but fed at run time as far as the
        # preparations can tell (they are no constants).
        self._defaults = {k: self._device.to_device(np.asarray(v, order="C")) for k, v in self._graph.defaults.items()}
        if backend == "cpu":  # constant from here on: kernels may keep derived layouts of them (``packed``)
            for w in self._weights.values():
                w.flags.writeable = False
            register_weights(self._weights.values())
        self._trace = os.environ.get("ZOO_TRACE") == "1"
        self._build_plan()
        self._declared_outputs = [v.name for v in self._graph.outputs]
        # The (name, dtype, shape) of each input of the last feed that passed every check: a feed of plain
        # C-contiguous arrays with exactly these passes again without them (4 us of a 20 us batch-1 run).
        self._accepted_feed: tuple | None = None

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
        return ModelMetadata(g.producer, g.graph_name, g.doc_string, dict(g.metadata))

    def get_providers(self) -> list[str]:
        return [self.backend]

    def run(self, output_names, input_feed: dict, run_options=None) -> list[np.ndarray]:
        wanted = self._declared_outputs if output_names is None else self._check_output_names(output_names)
        feed = input_feed if self._is_accepted_feed(input_feed) else self._check_feed(input_feed)
        on_cuda = self.backend == "cuda"
        slot = self._slot
        values = self._weight_slots.copy()  # [slot] -> value; slot 0 is an omitted input, always None
        for name, value in feed.items():
            values[slot[name]] = self._device.to_device(value) if on_cuda else value
        for node, impl, attrs, inputs, outputs, freed in self._steps:
            args = [values[i] for i in inputs]
            start = time.perf_counter() if self._trace else 0.0
            if on_cuda and all(a is None or isinstance(a, np.ndarray) for a in args):
                impl = node.op.impl["cpu"]  # host-resident tensors (integers, shapes, empties) stay on the host
            try:
                result = impl(*args, **attrs)
            except ZooRuntimeError as e:
                raise type(e)(f"{node.describe()}: {e}") from None
            except (ValueError, TypeError, IndexError, ArithmeticError, MemoryError) as e:
                # Shapes no load-time check can see (the runtime infers none): an Add whose declared input
                # does not broadcast with its initializer, pads too large to allocate. Found by tests/test_fuzz.py.
                shapes = [None if a is None else tuple(a.shape) for a in args]
                raise InvalidFeed(
                    f"{node.describe()} cannot run on inputs of shapes {shapes} ({type(e).__name__}: {e}); "
                    "expected inputs that fit the op and its attributes"
                ) from None
            if type(result) is tuple:
                for i, value in zip(outputs, result):
                    values[i] = value
            else:
                values[outputs[0]] = result
            values[0] = None  # where an unused output ("") went
            if self._trace:
                self._print_trace(node, result if type(result) is tuple else (result,), time.perf_counter() - start)
            for i in freed:
                values[i] = None
        outputs = [self._device.to_host(values[slot[name]]) for name in wanted]
        # A view (Identity, Reshape) of a feed or a weight must not let the caller write into either, nor a
        # weight or a default itself be handed out: the caller owns what it gets, as from onnxruntime.
        return [
            y.copy() if not y.flags.owndata or not y.flags.writeable or self._aliases(y, feed) else y for y in outputs
        ]

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
            raise InvalidFeed(f"missing input(s) {missing}; the model's inputs are {sorted(expected)}")
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

    def _print_trace(self, node, results, seconds: float) -> None:
        shapes = ", ".join(str(tuple(r.shape)) for r in results if r is not None)
        print(f"[zoo-trace] {node.describe():<48} -> {shapes:<24} {seconds * 1e3:8.3f} ms", file=sys.stderr)


def _check_one_input(info: ValueInfo, value, symbols: dict) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        if hasattr(value, "__array__") or isinstance(value, (list, tuple, int, float)):
            raise InvalidFeed(f"input '{info.name}' must be a numpy.ndarray of {info.type}, got {type(value).__name__}")
        raise InvalidFeed(f"input '{info.name}' must be a numpy.ndarray, got {type(value).__name__}")
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
