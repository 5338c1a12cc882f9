"""Nothing a user had is lost or overwritten: publish commits a whole set or nothing (crashes simulated at
every rename, in this process and with kill -9), weights names cannot leave the weights folder, export checks
its test data folder before writing, --force replaces only regular files, and odd or hostile images and
arrays given as data are one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import ROOT
from zoo.cards import load_cards, load_manifest, verify_file
from zoo.errors import ZooError
from zoo.io import STAGING_PREFIX, atomic_write, check_writable, recover, sha256_of


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_manifest_matches(folder: Path) -> None:
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    for rel, digest in manifest.items():
        assert sha256_of(folder / rel) == digest, rel


class Crash(BaseException):
    """A simulated kill: not an Exception, so no handler meant for errors runs."""


def crash_at(monkeypatch, k: int, start_when=None):
    """Make the k-th os.replace (counted from the first whose target satisfies ``start_when``) raise Crash."""
    real = os.replace
    count = {"n": 0, "armed": start_when is None}

    def replace(src, dst, *a, **kw):
        count["armed"] = count["armed"] or start_when(str(dst))
        if count["armed"]:
            count["n"] += 1
            if count["n"] == k:
                raise Crash(f"killed before rename {k}: {src} -> {dst}")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    return count


# --- 1. publish --force is atomic as a set ------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short training runs (seeds 1 and 2) of the 8x8 model; the second one without one of its pictures,
    so that its published set differs from the first in its files, not only in their bytes."""
    out = []
    for seed in (1, 2):
        run = tmp_path_factory.mktemp(f"run{seed}")
        result = invoke(
            "train", "sparse-ae-digits8", "--epochs", 1, "--limit", 64, "--out", run, "--quiet", "--seed", seed
        )
        assert result.exit_code == 0, result.output
        out.append(run)
    metrics = json.loads((out[1] / "metrics.json").read_text())
    assert len(metrics["pictures"]) >= 2
    metrics["pictures"] = metrics["pictures"][1:]
    (out[1] / "metrics.json").write_text(json.dumps(metrics))
    return out


@pytest.fixture(scope="module")
def published(runs, tmp_path_factory):
    """A weights folder holding another name's file and a user's note, then run 1 published as 'tiny' (old),
    and the same folder after run 2 was published over it with --force (new)."""
    from _pytest.monkeypatch import MonkeyPatch

    from zoo.publish import publish

    mp = MonkeyPatch()
    mp.setattr("zoo.export.source_commit", lambda: "fixed")  # the same bytes from every export of a run
    old = tmp_path_factory.mktemp("old")
    (old / "other.onnx").write_bytes(b"another name's graph")
    (old / "MANIFEST.json").write_text(json.dumps({"other.onnx": sha256_of(old / "other.onnx")}))
    (old / "notes.txt").write_text("mine")
    publish(runs[0], "tiny", old)
    new = tmp_path_factory.mktemp("new")
    shutil.copytree(old, new, dirs_exist_ok=True)
    publish(runs[1], "tiny", new, overwrite=True)
    again = tmp_path_factory.mktemp("again")
    shutil.copytree(old, again, dirs_exist_ok=True)
    publish(runs[1], "tiny", again, overwrite=True)
    mp.undo()
    assert snapshot(again) == snapshot(new), "publishing the same run twice gave different bytes"
    return old, new


def test_publish_ships_the_whole_set_under_its_manifest(published):
    old, new = published
    for folder in (old, new):
        assert_manifest_matches(folder)
        assert (folder / "notes.txt").read_text() == "mine"
        assert "other.onnx" in load_manifest(folder)
        assert not list(folder.glob(f"{STAGING_PREFIX}*"))
    manifest = load_manifest(old)
    for rel in ("tiny.safetensors", "tiny.onnx", "tiny.card.json", "tiny.md", "tiny/test_data_set_0/input_0.pb"):
        assert rel in manifest, rel
    dropped = set(snapshot(old)) - set(snapshot(new))
    assert dropped and all(rel.startswith("tiny.") and rel.endswith(".png") for rel in dropped)  # the old picture
    assert (old / "tiny.safetensors").read_bytes() != (new / "tiny.safetensors").read_bytes()


def _count_renames(monkeypatch, runs, folder, start_when) -> int:
    from zoo.publish import publish

    count = crash_at(monkeypatch, 0, start_when)
    publish(runs[1], "tiny", folder, overwrite=True)
    monkeypatch.undo()
    return count["n"]


def test_publish_force_killed_at_any_rename_leaves_old_or_new_set(published, runs, tmp_path, monkeypatch):
    """A crash before each rename of the commit (the journal's first: the commit point) is recovered by the
    next reader into exactly the old folder or exactly the new one, manifest hashes matching."""
    from zoo.publish import publish

    old, new = published
    at_commit = lambda dst: dst.endswith("JOURNAL.json")  # noqa: E731
    monkeypatch.setattr("zoo.export.source_commit", lambda: "fixed")
    shutil.copytree(old, tmp_path / "count")
    steps = _count_renames(monkeypatch, runs, tmp_path / "count", at_commit)
    assert steps >= 6  # the journal, the files, the test-data folder, the card, the manifest
    readers = [load_manifest, load_cards, lambda f: verify_file(f / "tiny.onnx"), recover]
    outcomes = []
    for k in range(1, steps + 1):
        folder = tmp_path / f"crash{k}"
        shutil.copytree(old, folder)
        monkeypatch.setattr("zoo.export.source_commit", lambda: "fixed")
        crash_at(monkeypatch, k, at_commit)
        with pytest.raises(Crash):
            publish(runs[1], "tiny", folder, overwrite=True)
        monkeypatch.undo()
        readers[k % len(readers)](folder)  # any reader finishes (or undoes) the interrupted publish
        state = snapshot(folder)
        assert state in (snapshot(old), snapshot(new)), f"crash before rename {k} left a mixture"
        assert_manifest_matches(folder)
        outcomes.append("old" if state == snapshot(old) else "new")
    assert outcomes[0] == "old" and set(outcomes[1:]) == {"new"}  # rolled back before the journal, forward after


def test_publish_crash_while_staging_leaves_the_old_set(published, runs, tmp_path, monkeypatch):
    """A crash during the export into the staging folder: nothing of the user's set was touched."""
    from zoo.publish import publish

    old, _ = published
    folder = tmp_path / "w"
    shutil.copytree(old, folder)
    crash_at(monkeypatch, 1)
    with pytest.raises(Crash):
        publish(runs[1], "tiny", folder, overwrite=True)
    monkeypatch.undo()
    load_manifest(folder)
    assert snapshot(folder) == snapshot(old)


def test_publish_removes_what_killed_publishes_left(published, runs, tmp_path):
    """A dead staging folder (this kind of publish) and, once an hour old, the temporary files and export
    folders of the earlier file-by-file kind; a young one may be a live writer's and stays."""
    from zoo.publish import publish

    old, new = published
    folder = tmp_path / "w"
    shutil.copytree(old, folder)
    dead = folder / f"{STAGING_PREFIX}tiny.k1ll3d00"
    (dead / "new").mkdir(parents=True)
    (dead / "new" / "tiny.onnx").write_bytes(b"half")
    stale = [
        folder / ".tiny.onnx.abcd1234",
        folder / ".tiny.safetensors.x_y12345.tmp",
        folder / ".MANIFEST.json.q1w2e3r4.tmp",
    ]
    stale[0].mkdir()
    for p in stale[1:]:
        p.write_bytes(b"left behind")
    young = folder / ".tiny.md.zzzzzzzz.tmp"
    young.write_bytes(b"being written")
    for p in stale:
        os.utime(p, (0, 0))
    publish(runs[1], "tiny", folder, overwrite=True)
    assert not dead.exists() and not any(p.exists() for p in stale) and young.exists()
    young.unlink()
    assert set(snapshot(folder)) == set(snapshot(new))
    assert_manifest_matches(folder)


KILLED_COMMIT = """
import json, os, signal, sys
from pathlib import Path
from zoo.io import folder_lock, sha256_of, staged_set

folder, k = Path(sys.argv[1]), int(sys.argv[2])
real, n = os.replace, [0]
def replace(src, dst):
    if str(dst).endswith("JOURNAL.json") or n[0]:
        n[0] += 1
        if n[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace
with staged_set(folder, "a") as s:
    s.path("a.bin").write_bytes(b"new weights")
    tests = s.path("a/test_data_set_0")
    tests.mkdir()
    (tests / "input_0.pb").write_bytes(b"new input")
    s.path("a.card.json").write_text("new card")
    with folder_lock(folder):
        manifest = json.loads((folder / "MANIFEST.json").read_text())
        for rel in ("a.bin", "a/test_data_set_0/input_0.pb", "a.card.json"):
            manifest[rel] = sha256_of(s.new / rel)
        for rel in ("a.old.png", "a/test_data_set_0/output_1.pb"):
            manifest.pop(rel)
        s.path("MANIFEST.json").write_text(json.dumps(manifest))
        s.commit(["a.bin", "a/test_data_set_0", "a.card.json", "MANIFEST.json"], ["a.old.png"])
print(n[0])
"""


def _old_synthetic_set(folder: Path) -> None:
    folder.mkdir()
    files = {
        "a.bin": b"old weights",
        "a/test_data_set_0/input_0.pb": b"old input",
        "a/test_data_set_0/output_1.pb": b"old output",
        "a.card.json": b"old card",
        "a.old.png": b"old picture",
        "b.bin": b"another set",
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "MANIFEST.json").write_text(json.dumps({rel: sha256_of(folder / rel) for rel in files}))


def test_kill_9_at_every_rename_of_a_commit_is_recovered(tmp_path):
    """The commit machinery under a real kill -9 at each rename: the dead process's staging folder (with or
    without its journal) is recovered by the next reader: the old set, or the new one with no stale file."""
    run = lambda *a: subprocess.run([sys.executable, "-c", KILLED_COMMIT, *map(str, a)], cwd=ROOT, capture_output=True)  # noqa: E731
    _old_synthetic_set(tmp_path / "old")
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    done = run(tmp_path / "new", 0)
    assert done.returncode == 0, done.stderr.decode()
    steps = int(done.stdout)
    old, new = snapshot(tmp_path / "old"), snapshot(tmp_path / "new")
    assert "a/test_data_set_0/output_1.pb" not in new and "a.old.png" not in new and new["b.bin"] == b"another set"
    for k in range(1, steps + 1):
        folder = tmp_path / f"killed{k}"
        shutil.copytree(tmp_path / "old", folder)
        assert run(folder, k).returncode == -signal.SIGKILL
        assert list(folder.glob(f"{STAGING_PREFIX}*")), "a killed commit leaves its staging folder"
        load_manifest(folder)
        assert snapshot(folder) == (old if k == 1 else new), k
        assert_manifest_matches(folder)


def test_a_live_staging_folder_is_left_alone_and_a_dead_one_removed(tmp_path):
    """Stale staging folders of crashed publishes are removed; one whose publisher is alive is not."""
    _old_synthetic_set(tmp_path / "w")
    holder = (
        "import sys, time; from zoo.io import staged_set\n"
        "with staged_set(sys.argv[1], 'live') as s:\n    print(s.root, flush=True); time.sleep(60)"
    )
    live = subprocess.Popen(
        [sys.executable, "-c", holder, str(tmp_path / "w")], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        root = Path(live.stdout.readline().strip())
        dead = tmp_path / "w" / f"{STAGING_PREFIX}dead.x"
        (dead / "new").mkdir(parents=True)
        (dead / "new" / "a.bin").write_bytes(b"half-staged")
        load_manifest(tmp_path / "w")
        assert root.is_dir() and not dead.exists()
    finally:
        live.kill()
        live.wait()
    recover(tmp_path / "w")
    assert not root.exists()
    assert (tmp_path / "w" / "a.bin").read_bytes() == b"old weights"


# --- 2. weights names stay inside the weights folder -------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "", ".hidden", "a/b", "..", "x..y", "x.y", "Upper", "a" * 65, "x\n"])
def test_publish_refuses_names_that_are_not_plain(name, runs, tmp_path):
    weights = tmp_path / "sub" / "weights"
    result = invoke("publish", runs[0], "--name", name, "--weights-dir", weights)
    assert result.exit_code == 1
    assert f"{name!r} is not a valid weights name; expected" in result.output, result.output
    assert result.output.count("\n") == 1  # one line
    assert "Traceback" not in result.output
    assert list(tmp_path.rglob("*")) == []  # nothing written, not even the weights folder


# --- 3. export checks and replaces its test data folder as a whole -----------------------------------------


@pytest.fixture(scope="module")
def small_model():
    import zoo

    return zoo.create_model("sparse-ae-digits8")


def test_export_refuses_existing_test_data_without_force(small_model, tmp_path):
    from zoo.export import export_onnx

    mine = tmp_path / "x" / "test_data_set_0" / "input_0.pb"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"user's input")
    with pytest.raises(ZooError, match="already holds files; pass --force"):
        export_onnx(small_model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists() and mine.read_bytes() == b"user's input"


def test_export_force_replaces_the_test_data_folder_as_a_whole(small_model, tmp_path):
    from onnx import numpy_helper

    from zoo.export import export_onnx

    stale = tmp_path / "x" / "test_data_set_0" / "output_7.pb"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    (tmp_path / "x" / "mine.txt").write_text("kept")
    export_onnx(small_model, tmp_path / "x.onnx", overwrite=True)
    tests = tmp_path / "x" / "test_data_set_0"
    assert sorted(p.name for p in tests.iterdir()) == ["input_0.pb", "output_0.pb", "output_1.pb"]
    assert (tmp_path / "x" / "mine.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x", "x.onnx"]  # no staging folder left
    from tests.conftest import runtime_run

    x = numpy_helper.to_array(_load_tensor(tests / "input_0.pb"))
    y = numpy_helper.to_array(_load_tensor(tests / "output_0.pb"))
    got = runtime_run(str(tmp_path / "x.onnx"), {small_model.input_names[0]: x})[0]
    np.testing.assert_allclose(got, y, atol=1e-5)


def _load_tensor(path):
    from onnx import TensorProto

    t = TensorProto()
    t.ParseFromString(path.read_bytes())
    return t


@pytest.mark.parametrize("force", [False, True])
def test_export_refuses_a_file_where_the_test_data_folder_goes(small_model, tmp_path, force):
    from zoo.export import export_onnx

    (tmp_path / "x").write_text("a file named like the model")
    with pytest.raises(ZooError, match="is not a directory"):
        export_onnx(small_model, tmp_path / "x.onnx", overwrite=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    assert (tmp_path / "x").read_text() == "a file named like the model"


# --- 4. --force replaces regular files only ----------------------------------------------------------------


def _special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    target = tmp_path / "target.png"
    target.write_bytes(b"the link's target")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    sock_path = tmp_path / "sock.png"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    (tmp_path / "dir.png").mkdir()
    return {"FIFO": fifo, "symbolic link": link, "socket": sock_path, "directory": tmp_path / "dir.png"}


@pytest.mark.parametrize("force", [False, True])
def test_check_writable_refuses_what_is_not_a_regular_file(tmp_path, force):
    for kind, path in _special_files(tmp_path).items():
        with pytest.raises(ZooError, match=kind):
            check_writable(path, force)
        with pytest.raises(ZooError, match=kind):
            atomic_write(path, b"x", overwrite=force)
    assert (tmp_path / "fifo.png").is_fifo() and (tmp_path / "link.png").is_symlink()
    assert (tmp_path / "target.png").read_bytes() == b"the link's target"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    if os.path.exists("/dev/null"):  # checked only: the refusal comes before anything is written
        with pytest.raises(ZooError, match="character device"):
            check_writable("/dev/null", force)


def test_cli_force_does_not_replace_a_fifo(tmp_path):
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    result = invoke("export", "sparse-ae-digits8", "--weights", tmp_path / "none.safetensors", "--out", fifo, "--force")
    assert result.exit_code == 1 and "FIFO" in result.output and "Traceback" not in result.output
    assert fifo.is_fifo()


def test_check_writable_refuses_a_file_in_the_way_of_the_parent(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ZooError, match="is not a directory"):
        check_writable(tmp_path / "f" / "sub" / "out.png", True)


# --- 5. images and arrays that would load wrong or crash ---------------------------------------------------


def _tiff(folder: Path, array: np.ndarray, mode: str) -> Path:
    from PIL import Image

    folder.mkdir(exist_ok=True)
    path = folder / "a.tif"
    Image.fromarray(array, mode=mode).save(path) if mode != "F" else Image.fromarray(array).save(path)
    return path


def test_32_bit_integer_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from zoo.data import load_image_folder

    ramp = (np.arange(64, dtype=np.int32).reshape(8, 8) * 1000).astype(np.int32)  # 0 .. 63000
    _tiff(tmp_path / "d", ramp, "I")
    assert Image.open(tmp_path / "d" / "a.tif").mode == "I"
    got = load_image_folder(tmp_path / "d")[0]
    np.testing.assert_allclose(got, ramp / 65535.0, atol=1e-6)
    assert 0 < got.mean() < 1 and len(np.unique(got)) == 64
    _tiff(tmp_path / "e", ramp * 1000, "I")
    with pytest.raises(ZooError, match=r"32-bit integer pixels in \[0, 63000000\]; expected 8- or 16-bit"):
        load_image_folder(tmp_path / "e")


def test_float_images_in_0_1_load_as_they_are_and_others_are_refused(tmp_path):
    from PIL import Image

    from zoo.data import load_image_folder

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    _tiff(tmp_path / "d", ramp, "F")
    assert Image.open(tmp_path / "d" / "a.tif").mode == "F"
    np.testing.assert_array_equal(load_image_folder(tmp_path / "d")[0], ramp)
    assert load_image_folder(tmp_path / "d", channels=3).shape == (1, 8, 8, 3)
    _tiff(tmp_path / "e", ramp * 255, "F")
    with pytest.raises(ZooError, match=r"float pixels in \[0, 255\]; expected float images in \[0, 1\]"):
        load_image_folder(tmp_path / "e")


def _png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims ``width`` x ``height`` pixels."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize("side", [11_000, 20_000])  # above Pillow's warning limit; above its error limit
def test_decompression_bombs_are_one_line_errors(tmp_path, side):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bomb.png").write_bytes(_png_claiming(side, side))
    from zoo.data import load_image_folder

    with pytest.raises(ZooError, match="bomb.png' is too large to decode safely") as e:
        load_image_folder(tmp_path / "d")
    assert "\n" not in str(e.value)
    result = invoke("train", "sparse-ae-digits8", "--data", tmp_path / "d", "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 1 and "too large to decode safely" in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("content", ["truncated", "garbage"])
def test_corrupt_images_are_errors_naming_the_file(tmp_path, content):
    import io

    from PIL import Image

    from zoo.data import load_image_folder

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()[:200] if content == "truncated" else b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "broken.png").write_bytes(data)
    with pytest.raises(ZooError, match="cannot read image '.*broken.png'") as e:
        load_image_folder(tmp_path / "d")
    assert "\n" not in str(e.value)


def test_a_fifo_among_the_images_is_refused_not_read(tmp_path):
    from zoo.data import load_image_folder

    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "d" / "pipe.png")
    with pytest.raises(ZooError, match="pipe.png' is not a regular file"):
        load_image_folder(tmp_path / "d")


def _npy(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.npy"
    if kind == "object":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "garbage":
        path.write_bytes(b"not an array at all")
    elif kind == "truncated":
        np.save(path, np.zeros((10, 8, 8), np.float32))
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "empty":
        np.save(path, np.zeros((0, 8, 8), np.float32))
    elif kind == "strings":
        np.save(path, np.array([["a", "b"]]))
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, x=np.zeros((2, 8, 8)))
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("object", "cannot read '.*object.npy': Object arrays cannot be loaded"),
        ("garbage", "cannot read '.*garbage.npy'"),
        ("truncated", "cannot read '.*truncated.npy'"),
        ("empty", r"empty.npy' holds no pixels \(shape \(0, 8, 8\)\); expected at least one image"),
        ("strings", "strings.npy' holds <U1 values; expected numbers"),
        ("npz", "npz.npy' is an .npz archive"),
    ],
)
def test_bad_npy_data_are_errors_naming_the_file(tmp_path, kind, message):
    from zoo.data import load_dataset

    path = _npy(tmp_path, kind)
    with pytest.raises(ZooError, match=message) as e:
        load_dataset(str(path), "all", size=(8, 8))
    assert "\n" not in str(e.value)
