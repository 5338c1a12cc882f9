"""The CLI against hostile files and arguments (issue 15): every error is one line and a non-zero exit, never a
traceback; nothing a file holds (names, metadata, card fields) reaches the terminal as control characters;
`zoo run --output x.npz` keeps every output under its own name."""

from __future__ import annotations

import errno
import io
import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from cli.main import cli
from tests.conftest import WEIGHTS, make_model
from zoo.text import printable

# A name that would clear the screen, set the window title, add a hyperlink, forge a line and reverse the text.
HOSTILE = "a\x1b[2Jb\x1b]0;title\x07c\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\r\nforged\u202eevil\x9b31m\u2066\x7fz"
F32 = np.float32


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def assert_clean(text: str) -> None:
    """No byte that drives a terminal: no C0 control but the line-ending newline, no DEL, no C1, no bidi."""
    bad = sorted(
        {
            f"U+{ord(c):04X}"
            for c in text
            if (ord(c) < 0x20 and c != "\n")
            or 0x7F <= ord(c) <= 0x9F
            or 0x202A <= ord(c) <= 0x202E
            or 0x2066 <= ord(c) <= 0x2069
            or ord(c) in (0x2028, 0x2029)
        }
    )
    assert not bad, f"control characters {bad} in {text!r}"


def assert_one_line_error(result, *fragments, code=None) -> None:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "Aborted!" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert result.output.rstrip("\n").splitlines()[-1] == errors[0], result.output
    assert_clean(result.output)
    for fragment in fragments:
        assert fragment in errors[0], result.output


def with_metadata(model: bytes, props: dict) -> bytes:
    m = onnx.ModelProto()
    m.ParseFromString(model)
    helper.set_model_props(m, props)
    return m.SerializeToString()


def identity_model(inputs, outputs, metadata=None) -> bytes:
    """Identity from the first input to every output; inputs/outputs are (name, dtype, shape) triples."""
    nodes = [helper.make_node("Identity", [inputs[0][0]], [o[0]], name=f"id{i}") for i, o in enumerate(outputs)]
    model = make_model(nodes, inputs, outputs)
    return with_metadata(model, metadata) if metadata else model


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_printable_escapes_what_drives_a_terminal():
    assert printable("a\x1b[2J\r\n\t\x7f\x9b\u202e\u2069\u2028\udcff b") == (
        "a\\x1b[2J\\r\\n\\t\\x7f\\x9b\\u202e\\u2069\\u2028\\udcff b"
    )
    assert printable("plain: ünïcode, 中文, tabs in names are\x09escaped") == (
        "plain: ünïcode, 中文, tabs in names are\\tescaped"
    )
    assert printable(3) == "3"


def test_info_escapes_names_shapes_and_metadata(tmp_path):
    model = identity_model(
        [(HOSTILE, F32, [HOSTILE, 2])],
        [(HOSTILE + "out", F32, [1, 2])],
        metadata={HOSTILE: HOSTILE, "model": HOSTILE},
    )
    result = invoke("info", write(tmp_path / "m.onnx", model))
    assert result.exit_code == 0, result.output
    assert_clean(result.output)
    lines = result.output.splitlines()
    assert len(lines) == 5  # input, output, nodes, two metadata lines: no forged line among them
    assert lines[0].startswith("input  a\\x1b[2Jb\\x1b]0;title\\x07c")
    assert "\\r\\nforged\\u202eevil\\x9b31m\\u2066\\x7fz" in lines[3]


def test_error_quoting_file_content_is_escaped(tmp_path):
    """The runtime refuses an unknown op and quotes its op_type; the message stays one clean line."""
    model = make_model([helper.make_node(HOSTILE, ["x"], ["y"], name=HOSTILE)], [("x", F32, [1])], [("y", F32, [1])])
    result = invoke("info", write(tmp_path / "m.onnx", model))
    assert_one_line_error(result, code=1)
    assert "\\x1b[2J" in result.output


def test_run_escapes_output_names(tmp_path):
    model = identity_model([("x", F32, [1, 2])], [(HOSTILE, F32, [1, 2])])
    np.save(tmp_path / "x.npy", np.ones((1, 2), F32))
    result = invoke(
        "run", write(tmp_path / "m.onnx", model), "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"
    )
    assert result.exit_code == 0, result.output
    assert_clean(result.output)
    assert "a\\x1b[2Jb" in result.stderr


def test_list_escapes_card_fields(tmp_path):
    card = {
        "name": HOSTILE,
        "model": "sparse-ae",
        "headline": HOSTILE,
        "metrics": {HOSTILE: 0.5},
        "description": HOSTILE,
    }
    (tmp_path / "evil.card.json").write_text(json.dumps(card))
    result = invoke("list", env={"ZOO_WEIGHTS_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert_clean(result.output)
    assert "a\\x1b[2Jb" in result.output and "=0.5" in result.output


@pytest.mark.parametrize("backend", ["cpu", "ort"])
def test_run_npz_keeps_outputs_named_like_savez_parameters(tmp_path, backend):
    """np.savez(buf, **outputs) dropped an output named allow_pickle and crashed on one named file."""
    names = ["allow_pickle", "file", "args", "kwds"]
    model = identity_model([("x", F32, [1, 2])], [(n, F32, [1, 2]) for n in names])
    np.save(tmp_path / "x.npy", np.array([[1, 2]], F32))
    result = invoke(
        "run", write(tmp_path / "m.onnx", model), "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz",
        "--backend", backend,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "y.npz", allow_pickle=False) as got:
        assert sorted(got.files) == sorted(names)
        for n in names:
            assert got[n].tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("name", ["a/b", "..", "a\\b", "/abs"])
def test_run_npz_refuses_names_that_are_no_member_names(tmp_path, name):
    model = identity_model([("x", F32, [1, 2])], [("fine", F32, [1, 2]), (name, F32, [1, 2])])
    np.save(tmp_path / "x.npy", np.ones((1, 2), F32))
    out = tmp_path / "y.npz"
    result = invoke("run", write(tmp_path / "m.onnx", model), "--input", tmp_path / "x.npy", "--output", out)
    assert_one_line_error(result, "cannot name an .npz member", "--output-name", code=2)
    assert not out.exists()
    # The same output still goes to a .npy file by name.
    result = invoke(
        "run", tmp_path / "m.onnx", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--output-name", name
    )
    assert result.exit_code == 0, result.output


@pytest.fixture
def bad_arrays(tmp_path):
    """.npy files that np.load refuses in every way it can: pickled objects, empty, truncated, a huge declared
    shape over 16 bytes, an .npz under a .npy name, and not .npy at all."""
    files = {}
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    files["object"] = buf.getvalue()
    files["empty"] = b""
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 784), F32))
    files["truncated"] = buf.getvalue()[:200]
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)})
    files["huge"] = buf.getvalue() + bytes(16)
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros(3))
    files["npz"] = buf.getvalue()
    files["garbage"] = b"\x93NUMPY garbage"
    return {k: write(tmp_path / f"{k}.npy", v) for k, v in files.items()}


@pytest.mark.parametrize("kind", ["object", "empty", "truncated", "huge", "npz", "garbage"])
def test_run_refuses_bad_npy_inputs_in_one_line(tmp_path, bad_arrays, kind):
    """An empty .npy raised EOFError, which click turns into "Aborted!" as for Ctrl-D."""
    out = tmp_path / "y.npy"
    result = invoke("run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", bad_arrays[kind], "--output", out)
    assert_one_line_error(result, f"'{bad_arrays[kind]}'", code=2)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["object", "empty", "truncated", "npz"])
def test_visualize_refuses_bad_npy_images_in_one_line(tmp_path, bad_arrays, kind):
    pytest.importorskip("torch")
    out = tmp_path / "v.png"
    result = invoke("visualize", "deconvnet-digits", "--image", bad_arrays[kind], "--out", out)
    assert_one_line_error(result, f"'{bad_arrays[kind]}'", code=2)
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "visualize"])
def test_a_device_file_is_not_read_as_input(tmp_path, command):
    """/dev/zero passes click's exists-and-not-a-folder check; reading it would never end."""
    if command == "visualize":
        pytest.importorskip("torch")
        args = ["visualize", "deconvnet-digits", "--image", "/dev/zero", "--out", tmp_path / "v.png"]
    else:
        args = ["run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", "/dev/zero", "--output", tmp_path / "y.npy"]
    assert_one_line_error(invoke(*args), "regular file", code=2)


def test_pb_input_with_external_data_is_refused_unread(tmp_path, monkeypatch):
    """A TensorProto whose data_location is EXTERNAL names a file to read; numpy_helper would open it."""
    (tmp_path / "secret.bin").write_bytes(np.zeros(2 * 784, F32).tobytes())
    t = numpy_helper.from_array(np.zeros((2, 784), F32), "image")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "secret.bin"), ("offset", "0"), ("length", str(2 * 784 * 4))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    pb = write(tmp_path / "x.pb", t.SerializeToString())
    monkeypatch.chdir(tmp_path)  # where numpy_helper would find secret.bin, and the run would succeed
    result = invoke("run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", pb, "--output", tmp_path / "y.npy")
    assert_one_line_error(result, "external data", code=2)
    assert not (tmp_path / "y.npy").exists()


def test_ort_load_error_is_one_line(tmp_path):
    model = make_model([helper.make_node("NoSuchOp", ["x"], ["y"])], [("x", F32, [1])], [("y", F32, [1])])
    np.save(tmp_path / "x.npy", np.ones(1, F32))
    result = invoke(
        "run", write(tmp_path / "m.onnx", model), "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
        "--backend", "ort",
    )  # fmt: skip
    assert_one_line_error(result, "onnxruntime cannot load", code=1)


def test_ort_run_error_is_one_line(tmp_path):
    """onnxruntime's InvalidArgument for a wrong shape spans three lines."""
    np.save(tmp_path / "x.npy", np.ones((2, 3), F32))
    result = invoke(
        "run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
        "--backend", "ort",
    )  # fmt: skip
    assert_one_line_error(result, "onnxruntime cannot run", "Expected: 784", code=1)


@pytest.mark.parametrize("backend", ["cpu", "ort"])
@pytest.mark.parametrize("case", ["autoencoder", "two-inputs", "rank-1", "int-input", "no-width"])
def test_sample_refuses_what_is_no_generator(tmp_path, case, backend):
    models = {
        "two-inputs": make_model(
            [helper.make_node("Add", ["a", "b"], ["y"])],
            [("a", F32, ["n", 4]), ("b", F32, ["n", 4])],
            [("y", F32, ["n", 4])],
        ),
        "rank-1": identity_model([("z", F32, [4])], [("y", F32, [4])]),
        "int-input": identity_model([("z", np.int64, ["n", 4])], [("y", np.int64, ["n", 4])]),
        "no-width": identity_model([("z", F32, ["n", "w"])], [("y", F32, ["n", "w"])]),
    }
    path = WEIGHTS / "sparse-ae-mnist.onnx" if case == "autoencoder" else write(tmp_path / "m.onnx", models[case])
    out = tmp_path / "s.png"
    result = invoke("sample", path, "--n", 4, "--out", out, "--backend", backend)
    assert_one_line_error(result, "expected", code=2)
    assert not out.exists()


def test_sample_seed_must_be_non_negative(tmp_path):
    result = invoke("sample", "dcgan-mnist", "--seed", -1, "--out", tmp_path / "s.png")
    assert_one_line_error(result, "--seed", code=2)


@pytest.mark.parametrize("batch", ["-1", "0", "1,0", "1.5", "", "a", "1,,2"])
def test_bench_batch_must_be_positive_integers(batch):
    result = invoke("bench", "--batch", batch, "--no-cold", "--no-random-weights")
    assert_one_line_error(result, "--batch", "integers >= 1", code=2)


def test_list_refuses_a_card_without_model(tmp_path):
    (tmp_path / "x.card.json").write_text(json.dumps({"name": "x", "metrics": {}}))
    result = invoke("list", env={"ZOO_WEIGHTS_DIR": str(tmp_path)})
    assert_one_line_error(result, "'x'", "model", code=1)
    (tmp_path / "x.card.json").write_text("[1, 2]")
    assert_one_line_error(invoke("list", env={"ZOO_WEIGHTS_DIR": str(tmp_path)}), "list", code=1)


def test_list_unreadable_card_is_one_line(tmp_path):
    (tmp_path / "x.card.json").mkdir()  # reading it is an IsADirectoryError
    result = invoke("list", env={"ZOO_WEIGHTS_DIR": str(tmp_path)})
    assert_one_line_error(result, "x.card.json", code=1)
    (tmp_path / "x.card.json").rmdir()
    (tmp_path / "x.card.json").write_bytes(b'{"name": "\xff"}')
    assert_one_line_error(invoke("list", env={"ZOO_WEIGHTS_DIR": str(tmp_path)}), code=1)


def _checkpoint_with_metadata(path, **metadata):
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(1, F32)}, str(path), metadata={"format": "deconv-zoo/1", **metadata})
    return path


@pytest.mark.parametrize(
    "metadata, fragment",
    [
        ({"model": "deconvnet-digits", "config": "{not json"}, "c.safetensors"),
        ({"model": "deconvnet-digits", "config": "[1, 2]"}, "c.safetensors"),
        ({"model": "deconvnet-digits"}, "c.safetensors"),
        ({"model": "deconvnet-digits", "config": json.dumps({"no_such_field": 1})}, "no_such_field"),
    ],
    ids=["not-json", "not-an-object", "no-config", "unknown-field"],
)
@pytest.mark.parametrize("command", ["visualize", "export"])
def test_checkpoint_metadata_that_is_no_config_is_one_line(tmp_path, metadata, fragment, command):
    pytest.importorskip("torch")
    ckpt = _checkpoint_with_metadata(tmp_path / "c.safetensors", **metadata)
    if command == "visualize":
        result = invoke("visualize", ckpt, "--out", tmp_path / "v.png")
    else:
        result = invoke("export", "deconvnet-digits", "--weights", ckpt, "--out", tmp_path / "m.onnx")
    assert_one_line_error(result, fragment, code=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


@pytest.mark.parametrize(
    "args",
    [
        ["run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", "{x}", "--output", "/proc/y.npy"],
        ["run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", "{x}", "--output", "{tmp}/" + "n" * 300 + ".npy"],
        ["sample", "dcgan-mnist", "--n", "4", "--out", "/proc/s.png"],
        ["sample", "dcgan-mnist", "--n", "4", "--out", "{tmp}/" + "n" * 300 + ".png"],
    ],
    ids=["run-proc", "run-name-too-long", "sample-proc", "sample-name-too-long"],
)
def test_unwritable_output_is_one_line(tmp_path, args):
    np.save(tmp_path / "x.npy", np.zeros((1, 784), F32))
    args = [str(a).format(x=tmp_path / "x.npy", tmp=tmp_path) for a in args]
    assert_one_line_error(invoke(*args), "cannot write", code=1)


@pytest.mark.parametrize("command", ["run", "sample"])
def test_disk_full_is_one_line(tmp_path, monkeypatch, command):
    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("zoo.io.atomic_write", full)
    monkeypatch.setattr("zoo.pictures.atomic_write", full)
    np.save(tmp_path / "x.npy", np.zeros((1, 784), F32))
    if command == "run":
        args = ["run", WEIGHTS / "sparse-ae-mnist.onnx", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"]
    else:
        args = ["sample", "dcgan-mnist", "--n", 4, "--out", tmp_path / "s.png"]
    assert_one_line_error(invoke(*args), "cannot write", "No space left on device", code=1)


def test_group_turns_an_unexpected_exception_into_one_line(monkeypatch):
    def broken(folder):
        raise RuntimeError("a bug\nover two lines \x1b[2J")

    monkeypatch.setattr("zoo.cards.load_cards", broken)
    result = invoke("list")
    assert_one_line_error(result, "unexpected RuntimeError: a bug\\nover two lines \\x1b[2J", "ZOO_DEBUG=1", code=1)
    result = invoke("list", env={"ZOO_DEBUG": "1"})
    assert isinstance(result.exception, RuntimeError)


def test_group_turns_an_oserror_into_one_line(monkeypatch):
    def unreadable(folder):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))

    monkeypatch.setattr("zoo.cards.load_cards", unreadable)
    assert_one_line_error(invoke("list"), "cannot read or write", "Permission denied", code=1)


def test_only_a_real_ctrl_c_is_aborted(monkeypatch):
    def interrupted(folder):
        raise KeyboardInterrupt

    def eof(folder):
        raise EOFError("no data left in file")

    monkeypatch.setattr("zoo.cards.load_cards", eof)
    assert_one_line_error(invoke("list"), "EOFError", code=1)
    monkeypatch.setattr("zoo.cards.load_cards", interrupted)
    result = invoke("list")
    assert result.exit_code != 0 and "Aborted!" in result.output and "Traceback" not in result.output
