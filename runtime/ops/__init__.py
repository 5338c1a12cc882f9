"""The op registry: one function per ONNX op_type, named exactly like it, with the spec's attribute names
and defaults as keyword arguments (https://onnx.ai/onnx/operators/).

Modules in this package register their ops with ``@onnx_op``; ``dtypes`` there names, per input, the element
types the op's kernels take where that is fewer than the ONNX schema allows (checked at load, so that a float16
Softmax is refused before anything runs rather than failing inside Numba). A ``*_cuda`` module beside an op module adds
the CUDA variant with ``@<Op>.cuda`` and is imported only when a CUDA session is created, so that
``import runtime`` needs neither numba-cuda nor a GPU.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

from runtime.ops._kernel_cache import KERNEL_CACHE_DIR  # noqa: F401  (before any kernel: see the module)

BACKENDS = ("cpu", "cuda")

# Element types (NumPy names) for ``onnx_op(dtypes=...)``.
FLOATS = ("float32", "float64")  # no float16: Numba's CPU kernels have no half-precision arithmetic
INTEGERS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


class OpDef:
    """One ONNX op_type and its implementation on each backend."""

    def __init__(self, fn: Callable, domain: str = "", since: int = 1, dtypes: dict | None = None):
        self.op_type = fn.__name__
        self.domain = domain
        self.since = since  # the oldest default-domain opset whose semantics the function implements
        self.impl: dict[str, Callable] = {"cpu": fn}
        self.preparation: Callable | None = None  # see ``prepare``
        params = inspect.signature(fn).parameters.values()
        # An op with optional outputs (MaxPool's Indices) takes the keyword ``_outputs``: a tuple of booleans
        # saying which of its outputs the node uses, so it need not compute the others.
        self.wants_outputs = any(p.name == "_outputs" for p in params)
        self.attributes = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "_outputs"}
        self.max_inputs = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self.required_inputs = sum(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
        self.variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
        # the inputs' names, in order (a variadic one last, standing for all the rest)
        self.inputs = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        unknown = sorted(set(dtypes or ()) - set(self.inputs))
        if unknown:
            raise TypeError(f"{self.op_type}: dtypes names {unknown}, which are not among its inputs {self.inputs}")
        self.dtypes: dict[str, tuple[str, ...]] = dict(dtypes or {})  # input name -> NumPy dtype names it takes

    def input_dtypes(self, k: int) -> tuple[str, ...] | None:
        """The dtypes the ``k``-th input may have (None: whatever the ONNX schema allows)."""
        if not self.inputs:
            return None
        return self.dtypes.get(self.inputs[min(k, len(self.inputs) - 1)])

    def prepare(self, fn: Callable) -> Callable:
        """Register ``fn(constants, **attrs)`` as this op's CPU preparation: called once per node at load with the
        node's inputs that are session weights (None for those fed at run time, ``ABSENT`` for optional ones the
        node leaves out) and its attributes, it returns the node's
        runner (a callable taking the node's inputs, the attributes bound) with whatever it could make once
        (packed weights, the bias operand, the kernel's choice), or None to leave the node to the op function."""
        self.preparation = fn
        return fn

    def prepared(self, constants: tuple, attrs: dict) -> Callable | None:
        return None if self.preparation is None else self.preparation(constants, **attrs)

    def cuda(self, fn: Callable) -> Callable:
        """Register ``fn`` as this op's CUDA implementation (same signature, device arrays in and out)."""
        self.impl["cuda"] = fn
        return fn

    def __call__(self, *args, **kwargs):
        return self.impl["cpu"](*args, **kwargs)


OPS: dict[tuple[str, str], OpDef] = {}
ABSENT = "absent"  # in a preparation's ``constants``: an optional input the node leaves out (None: one fed)


def attribute_key(value):
    """An ints attribute (kernel_shape, pads, strides, …) as a hashable tuple of ints for the ops' per-shape
    caches; None stays None. The loader already gives tuples, which pass as they are."""
    if value is None or type(value) is tuple:
        return value
    return tuple(int(v) for v in value)


def onnx_op(fn: Callable | None = None, *, domain: str = "", since: int = 1, dtypes: dict | None = None):
    """Register a CPU op function under its own name as the ONNX op_type (in ``domain``); ``since``: the oldest
    opset with the semantics it implements (older models using the op are refused at load); ``dtypes``: input
    name -> the NumPy dtype names its kernels take, for inputs that take fewer than the ONNX schema allows."""

    def register(f: Callable) -> OpDef:
        op = OpDef(f, domain, since, dtypes)
        OPS[(domain, op.op_type)] = op
        return op

    return register(fn) if fn is not None else register


def _import_op_modules(cuda: bool) -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name.endswith("_cuda") != cuda:
            continue
        importlib.import_module(f"{__name__}.{info.name}")


_cuda_loaded = False


def load_cuda_ops() -> None:
    """Import the ``*_cuda`` modules (which import numba.cuda) and attach their kernels to the ops."""
    global _cuda_loaded
    if not _cuda_loaded:
        _import_op_modules(cuda=True)
        _cuda_loaded = True


def supported_ops(backend: str = "cpu") -> list[str]:
    """The op_types (prefixed by their domain when not the default one) that ``backend`` implements."""
    if backend == "cuda":
        load_cuda_ops()
    return sorted(f"{d}.{t}" if d else t for (d, t), op in OPS.items() if backend in op.impl)


_import_op_modules(cuda=False)
