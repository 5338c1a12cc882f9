"""The op registry: one function per ONNX op_type, named exactly like it, with the spec's attribute names
and defaults as keyword arguments (https://onnx.ai/onnx/operators/).

Modules in this package register their ops with ``@onnx_op``; a ``*_cuda`` module beside an op module adds
the CUDA variant with ``@<Op>.cuda`` and is imported only when a CUDA session is created, so that
``import runtime`` needs neither numba-cuda nor a GPU.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

BACKENDS = ("cpu", "cuda")


class OpDef:
    """One ONNX op_type and its implementation on each backend."""

    def __init__(self, fn: Callable, domain: str = "", since: int = 1):
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
        self.variadic = any(p.kind is p.VAR_POSITIONAL for p in params)

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


def onnx_op(fn: Callable | None = None, *, domain: str = "", since: int = 1):
    """Register a CPU op function under its own name as the ONNX op_type (in ``domain``); ``since``: the oldest
    opset with the semantics it implements (older models using the op are refused at load)."""

    def register(f: Callable) -> OpDef:
        op = OpDef(f, domain, since)
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
