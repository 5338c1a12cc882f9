"""Property-based fuzzing of the ``zoo`` command (hypothesis, bounded): random commands (info, run, sample, list,
visualize, export, publish, bench), options and files (valid, truncated, mutated or empty ONNX, .npy, .pb, PNG,
safetensors and model-card files, wrong types, huge declared sizes, odd image modes, names with control
characters). The property: exit 0, or one line starting with "Error:" and a non-zero exit; never a traceback,
never a control character on the terminal, never a hang; no file created but the named output, no file changed
that the user did not name (and --force allowed). In-process through CliRunner; nothing that trains, exports a
real checkpoint or benchmarks for real is drawn."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cli.main import cli
from tests.conftest import WEIGHTS, make_model
from tests.test_cli_errors import HOSTILE, assert_clean, identity_model

FUZZ = settings(
    deadline=None,  # the first session of a kind compiles kernels, the first visualize imports torch
    derandomize=True,  # the same examples on every run: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Examples per command: about 140 in all, some 30 s on two cores.
EXAMPLES = {"run": 35, "sample": 25, "visualize": 20, "info": 20, "list": 12, "export": 8, "publish": 10, "bench": 6}
SECONDS_PER_COMMAND = 60  # a hang fails the example instead of the whole run
F32 = np.float32
NAMES = ["a", "b", "in put", "x\x1b[2J", "new\nline", "bidi\u202e", "名前"]


class Hang(BaseException):
    """Raised by the alarm; a BaseException, so that CliRunner does not take it for the command's own error."""


def _generator(width: int = 4, output_range: str | None = "[-1, 1]") -> bytes:
    """A generator in miniature: z (n, width) -> Reshape -> images (n, 1, 2, width // 2)."""
    model = make_model(
        [helper.make_node("Reshape", ["z", "shape"], ["images"], name="reshape")],
        [("z", F32, ["n", width])],
        [("images", F32, ["n", 1, 2, width // 2])],
        {"shape": np.array([-1, 1, 2, width // 2], np.int64)},
    )
    if output_range is None:
        return model
    from tests.test_cli_errors import with_metadata

    return with_metadata(model, {"output_range": output_range, "model": HOSTILE})


MODELS = {
    "identity": identity_model([("x", F32, ["n", 4])], [("y", F32, ["n", 4])]),
    "hostile-names": identity_model(
        [(HOSTILE, F32, [HOSTILE, 4])], [("allow_pickle", F32, [HOSTILE, 4]), ("file", F32, [HOSTILE, 4])]
    ),
    "slash-output": identity_model([("x", F32, ["n", 4])], [("a/b", F32, ["n", 4])]),
    "generator": _generator(),
    "generator-no-range": _generator(output_range=None),
    "huge-width": identity_model([("z", F32, ["n", 10**9])], [("y", F32, ["n", 10**9])]),
    "two-inputs": make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [("a", F32, ["n", 4]), ("b", F32, ["n", 4])],
        [("y", F32, ["n", 4])],
    ),
    "int": identity_model([("x", np.int64, ["n", 4])], [("y", np.int64, ["n", 4])]),
    "unknown-op": make_model([helper.make_node(HOSTILE, ["x"], ["y"])], [("x", F32, [1])], [("y", F32, [1])]),
}


def _npy(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _png(mode: str, size=(6, 5), fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format=fmt)
    return buf.getvalue()


def _pb(a: np.ndarray | None = None, external: str | None = None, dims=None) -> bytes:
    t = numpy_helper.from_array(np.zeros((2, 4), F32) if a is None else a, "x")
    if external is not None:
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", external
    if dims is not None:
        del t.dims[:]
        t.dims.extend(dims)
    return t.SerializeToString()


def _safetensors(metadata: dict | None, tensors: dict | None = None) -> bytes:
    from safetensors.numpy import save

    return save(tensors or {"w": np.zeros(2, F32)}, metadata=metadata)


CHECKPOINTS = {
    "not-json": {"format": "deconv-zoo/1", "model": "deconvnet-digits", "config": "{oops"},
    "no-config": {"format": "deconv-zoo/1", "model": "deconvnet-digits"},
    "other-format": {"format": "something-else"},
    "hostile-model": {"format": "deconv-zoo/1", "model": HOSTILE, "config": "{}"},
    "wrong-shapes": {"format": "deconv-zoo/1", "model": "sparse-ae-digits8", "config": "{}"},
}

CARDS = [
    {"name": "ok", "model": "sparse-ae", "headline": "val_mse", "metrics": {"val_mse": 0.01}},
    {"name": HOSTILE, "model": "sparse-ae", "headline": HOSTILE, "metrics": {HOSTILE: "x"}, "description": HOSTILE},
    {"name": "no-model", "metrics": {}},
    {"name": "bad-metrics", "model": "sparse-ae", "metrics": [1]},
    [1, 2],
    "text",
]

# `zoo bench` options refused before anything is timed (a real benchmark takes minutes).
BENCH_REFUSED = [
    ["--help"],
    ["--batch", "-1"],
    ["--batch", "0"],
    ["--batch", "1.5"],
    ["--batch", ""],
    ["--threads", "0"],
]


@st.composite
def file_bytes(draw, suffix: str) -> bytes:
    """Contents for a file ending in ``suffix``: usually of its kind (valid, then maybe cut or mutated), sometimes
    of another kind or nothing."""
    kind = draw(st.sampled_from([suffix] * 4 + [".onnx", ".npy", ".png", "empty", "random"]))
    if kind == "empty":
        return b""
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == ".onnx":
        data = MODELS[draw(st.sampled_from(sorted(MODELS)))]
    elif kind == ".npy":
        data = draw(
            st.sampled_from(
                [
                    _npy(np.ones((2, 4), F32)),
                    _npy(np.ones((1, 4), F32)),
                    _npy(np.full((48, 48), 0.5, F32)),
                    _npy(np.ones((4,), np.float64)),
                    _npy(np.zeros((0, 4), F32)),
                    _npy(np.array(["abc", "de"])),
                    _npy(np.array([{"pickled": 1}], dtype=object), allow_pickle=True),
                    _npy_header((10**11,)) + bytes(16),
                    _npy_header((2, 4), "|O"),
                    _npy(np.full((48, 48), 7.0, F32)),
                ]
            )
        )
    elif kind == ".npz":
        buf = io.BytesIO()
        np.savez(buf, x=np.ones((2, 4), F32))
        data = buf.getvalue()
    elif kind == ".pb":
        data = draw(
            st.sampled_from(
                [_pb(), _pb(external="secret.bin"), _pb(external="../secret.bin"), _pb(dims=[10**12, 4]), _pb(dims=[3])]
            )
        )
    elif kind == ".png":  # whatever the format, Pillow reads it by its content
        mode = draw(st.sampled_from(["L", "RGB", "1", "P", "I;16", "I", "LA", "RGBA", "F", "CMYK"]))
        fmt = "TIFF" if mode in ("F", "CMYK", "I") else "PNG"
        data = _png(mode, size=draw(st.sampled_from([(6, 5), (1, 1), (300, 2)])), fmt=fmt)
    elif kind == ".txt":
        data = draw(st.text(max_size=20)).encode("utf-8", "surrogatepass")
    elif kind == ".safetensors":
        which = draw(st.sampled_from(sorted(CHECKPOINTS) + ["huge-header"]))
        data = (1 << 60).to_bytes(8, "little") + b"{}" if which == "huge-header" else _safetensors(CHECKPOINTS[which])
    elif kind == ".json":
        data = json.dumps(draw(st.sampled_from(CARDS))).encode()
    else:
        raise AssertionError(kind)
    edit = draw(st.sampled_from(["keep", "keep", "truncate", "flip"]))
    if edit == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif edit == "flip" and data:
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        data = bytes(data)
    return data


@st.composite
def scenario(draw, command: str):
    """(files to create, relative to the workspace: bytes or None for a folder; argv; named outputs; --force)."""
    files: dict[str, bytes | None] = {"secret.bin": np.zeros(8, F32).tobytes()}

    def a_file(suffix: str) -> str:
        name = draw(st.sampled_from(NAMES)) + suffix
        if draw(st.integers(0, 9)) == 9:
            return "missing" + suffix  # a path that does not exist
        files[name] = draw(file_bytes(suffix))
        return name

    def an_output(suffix: str, pre_existing: bool = True) -> str:
        name = "out-" + draw(st.sampled_from(NAMES)) + draw(st.sampled_from([suffix, suffix, ".txt", ""]))
        name = draw(st.sampled_from([name, name, f"sub/{name}", "/proc/zoo-fuzz" + suffix]))
        if pre_existing and not name.startswith("/") and draw(st.booleans()):
            files[name] = b"the user's own file"
        return name

    force = draw(st.booleans())
    outputs: list[str] = []
    if command == "info":
        argv = ["info", a_file(".onnx")]
    elif command == "run":
        argv = ["run", a_file(".onnx")]
        for _ in range(draw(st.integers(1, 3))):
            given = a_file(draw(st.sampled_from([".npy", ".npy", ".pb", ".npz"])))
            argv += ["--input", draw(st.sampled_from([given, f"x={given}", f"{HOSTILE}={given}"]))]
        outputs.append(an_output(draw(st.sampled_from([".npy", ".npz"]))))
        argv += ["--output", outputs[-1], "--backend", draw(st.sampled_from(["cpu", "ort"]))]
        if draw(st.booleans()):
            argv += ["--output-name", draw(st.sampled_from(["y", "file", "a/b", HOSTILE, "nope"]))]
    elif command == "sample":
        model = draw(st.sampled_from(["file", "file", "dcgan-mnist", "nope"]))
        argv = ["sample", a_file(".onnx") if model == "file" else model]
        argv += ["--n", str(draw(st.sampled_from([1, 3, 16, 0, 5000]))), "--seed", str(draw(st.integers(-2, 2**33)))]
        argv += ["--backend", draw(st.sampled_from(["cpu", "ort"]))]
        if draw(st.booleans()):
            argv += ["--interpolate", "--steps", str(draw(st.sampled_from([2, 3, 1, 100])))]
        if draw(st.booleans()):
            argv += ["--classes", *(str(draw(st.integers(-20, 20))) for _ in range(2))]
        stem = Path(argv[1]).stem
        default = f"{stem}-{'interpolation' if '--interpolate' in argv else 'samples'}.png"
        outputs.append(an_output(".png") if draw(st.booleans()) else default)
        argv += ["--out", outputs[-1]] if outputs[-1] != default else []
    elif command == "list":
        argv = ["list"]
        for i in range(draw(st.integers(0, 3))):
            files[f"weights/card{i}.card.json"] = draw(file_bytes(".json"))
        if draw(st.integers(0, 5)) == 0:
            files["weights/folder.card.json"] = None
    elif command == "visualize":
        which = draw(st.sampled_from(["shipped", "file", "deconvnet-digits", "nope"]))
        model = {"shipped": str(WEIGHTS / "deconvnet-digits.safetensors"), "file": None}.get(which, which)
        argv = ["visualize", model or a_file(".safetensors")]
        if draw(st.booleans()):
            argv += ["--image", a_file(draw(st.sampled_from([".npy", ".png", ".txt"])))]
        default = f"{Path(argv[1]).name.split('.')[0]}-stages.png"
        outputs.append(an_output(".png") if draw(st.booleans()) else default)
        argv += ["--out", outputs[-1]] if outputs[-1] != default else []
    elif command == "export":  # never a loadable checkpoint: the real export is test_cli.py's
        outputs.append(an_output(".onnx"))
        argv = ["export", "deconvnet-digits", "--weights", a_file(".safetensors"), "--out", outputs[-1]]
        argv += ["--opset", str(draw(st.sampled_from([18, 5, 99])))]
    elif command == "bench":  # only what is refused before anything is timed
        argv = ["bench", *draw(st.sampled_from(BENCH_REFUSED))]
    else:  # publish a folder that is no finished run
        run_dir = draw(st.sampled_from(["run", "missing-run", "secret.bin"]))
        if run_dir == "run":
            files["run/metrics.json"] = draw(
                st.sampled_from([b"", b"{", b"[]", b'{"final": {}}', b'{"model": "sparse-ae", "final": {}}'])
            )
            if draw(st.booleans()):
                files["run/sparse-ae.safetensors"] = draw(file_bytes(".safetensors"))
        outputs.append("published")
        argv = ["publish", run_dir, "--name", draw(st.sampled_from(["ok", "../up", "a/b", HOSTILE, ""]))]
        argv += ["--weights-dir", outputs[-1]]
    if force and command in ("run", "sample", "visualize", "export", "publish"):
        argv.append("--force")
    return files, argv, outputs, force


def _tree(root: Path) -> dict[str, str | None]:
    """Every path under root: a file's sha256, None for a folder."""
    out = {}
    for folder, dirs, names in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(folder, d), root)] = None
        for n in names:
            p = os.path.join(folder, n)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def _alarm(signum, frame):
    raise Hang(f"a command ran for more than {SECONDS_PER_COMMAND} s")


def _allowed(path: str, outputs: list[str], command: str) -> bool:
    """Whether ``path`` (relative to the workspace's parent) is a named output, inside one, or a folder on the
    way to one."""
    for out in outputs:
        out = os.path.normpath(os.path.join("ws", out))
        if path == out or path.startswith(out + os.sep) or out.startswith(path + os.sep):
            return True
        if command == "export" and path.startswith(os.path.join(os.path.dirname(out), "test_data_set_0")):
            return True
    return False


def _check_one(case):
    files, argv, outputs, force = case
    with tempfile.TemporaryDirectory(prefix="zoo-cli-fuzz-") as root:
        ws = Path(root) / "ws"
        (ws / "weights").mkdir(parents=True)
        for name, data in files.items():
            p = ws / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.mkdir() if data is None else p.write_bytes(data)
        before = _tree(Path(root))
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_COMMAND)
        try:
            with contextlib.chdir(ws):
                result = CliRunner().invoke(cli, argv, env={"ZOO_WEIGHTS_DIR": str(ws / "weights"), "ZOO_DEBUG": None})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        after = _tree(Path(root))

    event(f"{argv[0]}: exit {result.exit_code}")
    shown = f"zoo {' '.join(map(repr, argv))}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (shown, result.exc_info)
    assert "Traceback" not in result.output and "Aborted!" not in result.output, shown
    assert_clean(result.output)
    if result.exit_code != 0:
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and result.output.rstrip("\n").splitlines()[-1] == errors[0], shown
    created = sorted(p for p in after.keys() - before.keys() if not _allowed(p, outputs, argv[0]))
    assert not created, (shown, created)
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    assert all(force and _allowed(p, outputs, argv[0]) for p in changed), (shown, changed)


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_cli_fuzz(command):
    if command in ("visualize", "export", "publish"):
        pytest.importorskip("torch")  # they load checkpoints
    shipped = _tree(WEIGHTS)
    settings(FUZZ, max_examples=EXAMPLES[command])(given(case=scenario(command))(_check_one))()
    assert _tree(WEIGHTS) == shipped, "the fuzzed commands changed the shipped weights"
