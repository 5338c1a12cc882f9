"""ONNX export in one checked function (after timm's ``onnx_export``): eval mode, named inputs and outputs,
a dynamic batch axis, an IR version that onnxruntime-gpu reads, provenance in ``metadata_props``,
``onnx.checker`` with ``full_check``, and the exported graph compared with torch in this runtime and in
onnxruntime before anything is written. A ``test_data_set_0`` folder (ONNX Model Zoo layout) goes beside it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from zoo.errors import ZooError
from zoo.io import atomic_write, check_writable

OPSET = 18
IR_VERSION = 10  # onnxruntime-gpu 1.31 reads IR <= 13; onnx 1.23 would write 14
TOLERANCE = 1e-5  # max abs difference allowed between torch and the exported graph (float32)


def source_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _clean(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's bookkeeping (per-value and per-node metadata, doc strings)."""
    g = proto.graph
    for v in (*g.input, *g.output, *g.value_info):
        del v.metadata_props[:]
        v.doc_string = ""
    for n in g.node:
        del n.metadata_props[:]
        n.doc_string = ""
    for t in g.initializer:
        del t.metadata_props[:]
    del proto.metadata_props[:]
    return proto


def torch_to_onnx(model, example: tuple, opset: int = OPSET) -> onnx.ModelProto:
    import torch

    names_in, names_out = list(model.input_names), list(model.output_names)
    batch = torch.export.Dim("batch")
    dynamic = tuple({0: batch} for _ in example)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            input_names=names_in,
            output_names=names_out,
            dynamic_shapes=dynamic,
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    return _clean(program.model_proto)


def model_part(model, part: str | None):
    """The module to export: the model itself, or one of its ``export_parts()`` (a GAN's generator)."""
    parts = model.export_parts()
    if part is None:
        if parts:
            raise ZooError(f"'{model.model_name}' is exported in parts; choose one of: {', '.join(parts)}")
        return model
    if part not in parts:
        raise ZooError(f"'{model.model_name}' has no part '{part}'; its parts: {', '.join(parts) or 'none'}")
    return parts[part]


def export_onnx(
    model,
    out_path,
    *,
    part: str | None = None,
    data: tuple | None = None,
    metrics: dict | None = None,
    overwrite: bool = False,
    opset: int = OPSET,
) -> dict:
    """Export ``model`` (or its ``part``) to ``out_path``. ``data`` = (images, labels) of held-out data gives
    the real inputs for the comparison and test_data_set_0 (else random example inputs are used).
    Returns the report: path, opset, IR version, max errors against torch."""
    import torch

    import runtime

    out_path = check_writable(out_path, overwrite)
    full = model.eval()
    model = model_part(full, part)
    example = model.example_input(2)
    proto = torch_to_onnx(model, example, opset)
    proto.ir_version = IR_VERSION
    proto.producer_name = "deconv-zoo"
    proto.producer_version = "0.1.0"
    proto.doc_string = (type(model).__doc__ or "").strip().splitlines()[0] if type(model).__doc__ else ""
    meta = {
        "model": full.model_name,
        **({"part": part} if part else {}),
        "config": json.dumps(asdict(full.config), sort_keys=True),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "source_commit": source_commit(),
        "torch_version": torch.__version__,
        **model.onnx_metadata(),
    }
    onnx.helper.set_model_props(proto, meta)
    for v in (*proto.graph.input, *proto.graph.output):
        if not v.type.tensor_type.shape.dim[0].dim_param:
            raise ZooError(f"the export fixed the batch dimension of '{v.name}'; the model must not depend on len(x)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ZooError(f"the exported graph fails onnx.checker: {str(e).splitlines()[0]}") from None
    onnx_bytes = proto.SerializeToString()

    sample = model.onnx_sample(*data) if data is not None else None
    if sample is None:
        sample = example[0].numpy()
    x = np.ascontiguousarray(sample, dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    feed = {model.input_names[0]: x}
    report = {
        "path": str(out_path),
        "opset": opset,
        "ir_version": IR_VERSION,
        "batch": len(x),
        "nodes": [n.op_type for n in proto.graph.node],
    }
    got = runtime.InferenceSession(onnx_bytes, backend="cpu").run(None, feed)
    report["max_abs_err_runtime_vs_torch"] = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        got = sess.run(None, feed)
        report["max_abs_err_onnxruntime_vs_torch"] = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    worst = max(v for k, v in report.items() if k.startswith("max_abs_err"))
    if not worst <= TOLERANCE:
        raise ZooError(f"the exported graph differs from torch by {worst:.3g} (tolerance {TOLERANCE}); not written")

    atomic_write(out_path, onnx_bytes, overwrite=overwrite)
    test_dir = out_path.parent / out_path.stem / "test_data_set_0"
    test_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(test_dir / "input_0.pb", numpy_helper.from_array(x, model.input_names[0]).SerializeToString())
    for k, (name, y) in enumerate(zip(model.output_names, expected)):
        atomic_write(test_dir / f"output_{k}.pb", numpy_helper.from_array(y, name).SerializeToString())
    report["test_data"] = str(test_dir)
    return report
