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
import os
import subprocess
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from zoo.errors import ZooError
from zoo.io import atomic_write, check_folder_replaceable, check_writable

OPSET = 18
IR_VERSION = 10  # onnxruntime-gpu 1.31 reads IR <= 13; onnx 1.23 would write 14
# Allowed difference between torch and the exported graph (float32): |got - torch| <= ATOL + RTOL * |torch| per
# element, the runtime's own contract (float32 sums in another order: DeconvNet's logits near 16 drift ~5 ulps).
TOLERANCE = 1e-5
RTOL = 1e-6


def excess(got: list, expected: list) -> float:
    """How far the worst element is beyond ``TOLERANCE + RTOL * |expected|`` (<= 0: within)."""
    return max(float((np.abs(g - e) - TOLERANCE - RTOL * np.abs(e)).max()) for g, e in zip(got, expected))


# Weights above this size go to a ``<name>.onnx.data`` file beside the graph (protobuf caps a file at 2 GiB, and
# a graph that loads without its weights is quick to inspect): deconvnet-vgg16 (~1 GB) does, the others do not.
EXTERNAL_DATA_BYTES = 256 * 2**20


def _max_pool2d_with_indices(self, kernel_size, stride=(), padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """aten.max_pool2d_with_indices as one ONNX MaxPool with its Indices output. ONNX numbers the indices over
    the whole (N, C, H, W) tensor, PyTorch per (H, W) plane: the pair below stays consistent because both
    ends of the switches speak ONNX's numbering (the indices may only feed MaxUnpool)."""
    from onnxscript import opset18 as op

    pads = [int(padding[0]), int(padding[-1])] * 2
    return op.MaxPool(
        self,
        kernel_shape=list(kernel_size),
        strides=list(stride or kernel_size),
        pads=pads,
        dilations=list(dilation),
        ceil_mode=int(ceil_mode),
        storage_order=0,
    )  # (values, indices)


def _max_unpool2d(self, indices, output_size):
    """aten.max_unpool2d as ONNX MaxUnpool. PyTorch passes only the output size; when it is s times the input
    (the usual 2x2, stride-2 switches) the kernel and stride are s and MaxUnpool infers the size itself;
    otherwise the full output_shape goes in, and onnxruntime scatters the global indices into it."""
    from onnxscript import opset18 as op

    size_in = [int(d) for d in self.shape[2:]]
    size_out = [int(d) for d in output_size]
    scale = [o // i for o, i in zip(size_out, size_in)]
    if all(s >= 1 and o == s * i for s, o, i in zip(scale, size_out, size_in)):
        return op.MaxUnpool(self, indices, kernel_shape=scale, strides=scale)
    scale = [max(1, s) for s in scale]
    shape = op.Concat(op.Shape(self, start=0, end=2), op.Constant(value_ints=size_out), axis=0)  # (4,): N, C, H, W
    return op.MaxUnpool(self, indices, shape, kernel_shape=scale, strides=scale)


def switch_translations() -> dict:
    """Native ONNX MaxPool (with Indices) -> MaxUnpool pairs, in place of the exporter's index arithmetic and
    ScatterND: the graph then reads like Noh et al.'s switches."""
    import torch

    return {
        torch.ops.aten.max_pool2d_with_indices.default: _max_pool2d_with_indices,
        torch.ops.aten.max_unpool2d.default: _max_unpool2d,
    }


# What a checkpoint's metadata says of the run that made it (zoo/train.py), carried into the ONNX file's
# metadata_props beside the model's config: the TrainConfig, the data, the command.
PROVENANCE_KEYS = ("train", "data", "command")


def provenance_of(meta: dict) -> dict:
    """The run's provenance from a checkpoint's metadata (``zoo.checkpoint.read_metadata``): what it records of
    ``PROVENANCE_KEYS`` (a checkpoint of an earlier trainer holds no ``train``)."""
    return {k: meta[k] for k in PROVENANCE_KEYS if meta.get(k) is not None}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_commit() -> str:
    """The commit of the zoo's code (``git describe --always``), ``-dirty`` when a tracked file outside weights/
    differs from it, "unknown" outside a git checkout. Unlike ``git describe --dirty``, the weights folder is
    left out: publishing one model's files there must not mark the next model's export as made from a dirty
    tree (the code that exports is what the commit names)."""
    commit = _git("describe", "--always", "--abbrev=12")
    if not commit:
        return "unknown"
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)weights")
    if changed is None:
        return "unknown"
    return f"{commit}-dirty" if changed else commit


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

    translations = model.onnx_translation_table() if hasattr(model, "onnx_translation_table") else {}
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
            **({"custom_translation_table": translations} if translations else {}),
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
    provenance: dict | None = None,
    overwrite: bool = False,
    opset: int = OPSET,
) -> dict:
    """Export ``model`` (or its ``part``) to ``out_path``. ``data`` = (images, labels) of held-out data gives
    the real inputs for the comparison and test_data_set_0 (else random example inputs are used).
    ``provenance``: the run that trained the weights, as ``provenance_of(checkpoint metadata)`` gives it
    (``train``: the TrainConfig as a dict, ``data``, ``command``); recorded in ``metadata_props``.
    Returns the report: path, opset, IR version, max errors against torch."""
    import torch

    import runtime

    out_path = check_writable(out_path, overwrite)
    if out_path.suffix != ".onnx":
        raise ZooError(f"'{out_path}' does not end in .onnx; expected an ONNX file path")
    test_dir = check_folder_replaceable(out_path.with_suffix("") / "test_data_set_0", overwrite)
    provenance = dict(provenance or {})
    unknown = sorted(set(provenance) - set(PROVENANCE_KEYS))
    if unknown:
        raise ZooError(f"unknown provenance {', '.join(unknown)}; expected some of {', '.join(PROVENANCE_KEYS)}")
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
        **{k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in provenance.items()},
        "source_commit": source_commit(),
        "torch_version": torch.__version__,
        **model.onnx_metadata(),
    }
    onnx.helper.set_model_props(proto, meta)
    for v in (*proto.graph.input, *proto.graph.output):
        if not v.type.tensor_type.shape.dim[0].dim_param:
            raise ZooError(f"the export fixed the batch dimension of '{v.name}'; the model must not depend on len(x)")
    weight_bytes = sum(len(t.raw_data) or t.ByteSize() for t in proto.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_BYTES
    data_path = out_path.with_name(out_path.name + ".data")
    if external:
        check_writable(data_path, overwrite)
    # Everything this writes has been checked by now: the graph, its weights file, the test data folder.
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as staging:
        # Everything is written and checked in a staging folder beside the target, then renamed into place.
        staged = Path(staging) / out_path.name
        if external:
            onnx.save_model(
                proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                location=data_path.name, size_threshold=1024,
            )  # fmt: skip
            source = str(staged)
        else:
            source = proto.SerializeToString()
        try:
            onnx.checker.check_model(str(staged) if external else proto, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ZooError(f"the exported graph fails onnx.checker: {str(e).splitlines()[0]}") from None

        sample = model.onnx_sample(*data) if data is not None else None
        if sample is None:
            sample = tuple(t.numpy() for t in example)
        # one array per graph input (a conditional generator takes z and a class code)
        xs = [np.ascontiguousarray(a, dtype=np.float32) for a in (sample if isinstance(sample, tuple) else (sample,))]
        with torch.no_grad():
            expected = model(*(torch.from_numpy(x) for x in xs))
        expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
        feed = dict(zip(model.input_names, xs, strict=True))
        report = {
            "path": str(out_path),
            "opset": opset,
            "ir_version": IR_VERSION,
            "batch": len(xs[0]),
            "nodes": [n.op_type for n in proto.graph.node],
            "weight_bytes": weight_bytes,
            **({"external_data": str(data_path)} if external else {}),
        }
        got = runtime.InferenceSession(source, backend="cpu").run(None, feed)
        report["max_abs_err_runtime_vs_torch"] = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
        beyond = excess(got, expected)
        del got
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
            got = sess.run(None, feed)
            report["max_abs_err_onnxruntime_vs_torch"] = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
            beyond = max(beyond, excess(got, expected))
            del sess, got
        worst = max(v for k, v in report.items() if k.startswith("max_abs_err"))
        if not beyond <= 0:
            raise ZooError(
                f"the exported graph differs from torch by {worst:.3g} (tolerance {TOLERANCE} + {RTOL} x |torch|); "
                "not written"
            )

        # The test data set is written whole in the staging folder and swapped in as a folder, so no stale
        # output_k.pb of an earlier export survives beside the new graph.
        staged_tests = Path(staging) / "test_data_set_0"
        staged_tests.mkdir()
        for k, (name, x) in enumerate(feed.items()):
            (staged_tests / f"input_{k}.pb").write_bytes(numpy_helper.from_array(x, name).SerializeToString())
        for k, (name, y) in enumerate(zip(model.output_names, expected)):
            (staged_tests / f"output_{k}.pb").write_bytes(numpy_helper.from_array(y, name).SerializeToString())
        for f in staged_tests.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())

        check_writable(out_path, overwrite)  # again, right before writing: the export took a while
        check_folder_replaceable(test_dir, overwrite)
        if external:
            check_writable(data_path, overwrite)
            for staged_file in (Path(staging) / data_path.name, staged):  # the weights first, the graph last
                with open(staged_file, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(Path(staging) / data_path.name, data_path)
            os.replace(staged, out_path)
        else:
            atomic_write(out_path, source, overwrite=overwrite)
        test_dir.parent.mkdir(exist_ok=True)
        if test_dir.exists():
            os.replace(test_dir, Path(staging) / "replaced_test_data")  # deleted with the staging folder
        os.replace(staged_tests, test_dir)
    report["test_data"] = str(test_dir)
    return report
