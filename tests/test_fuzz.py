"""Property-based fuzzing of the runtime's refusals (hypothesis, bounded): mutated bytes of valid small ONNX
files (the shipped sparse autoencoder and a few one-node models) and mutated feeds (shapes, dtypes, NaN,
strides). The property: a session either loads and runs, returning arrays, or raises one of the runtime's own
refusals (InvalidModel, UnsupportedOp, InvalidFeed), never another exception type; and mutated files never
crash the interpreter (checked in a subprocess, whose return code would be negative on a signal)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

import runtime
from runtime.errors import InvalidFeed, InvalidModel, UnsupportedOp
from tests.conftest import ROOT, WEIGHTS, make_model

REFUSALS = (InvalidModel, UnsupportedOp, InvalidFeed)
MAX_FEED_ELEMENTS = 1 << 16  # a mutated file may declare (64, 10^8) inputs; the fuzzer does not feed those
FUZZ = settings(
    max_examples=80,
    deadline=2000,  # ms per example; the first run of a kernel compiles it
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _rng_array(shape, dtype, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def one_node_models() -> dict[str, bytes]:
    """Small valid models, one op each, covering the zoo's op families (dense, conv, pool, shape, softmax)."""
    f32 = np.float32
    return {
        "gemm-sigmoid": make_model(
            [
                helper.make_node("Gemm", ["x", "W", "b"], ["g"], name="gemm", transB=1),
                helper.make_node("Sigmoid", ["g"], ["y"], name="sig"),
            ],
            [("x", f32, ["n", 4])],
            [("y", f32, ["n", 3])],
            {"W": _rng_array((3, 4), f32), "b": _rng_array((3,), f32)},
        ),
        "conv": make_model(
            [helper.make_node("Conv", ["x", "K", "c"], ["y"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1])],
            [("x", f32, ["n", 1, 5, 5])],
            [("y", f32, ["n", 2, 5, 5])],
            {"K": _rng_array((2, 1, 3, 3), f32), "c": _rng_array((2,), f32)},
        ),
        "conv-transpose": make_model(
            [helper.make_node("ConvTranspose", ["x", "K"], ["y"], name="deconv", strides=[2, 2])],
            [("x", f32, ["n", 2, 3, 3])],
            [("y", f32, ["n", 1, 7, 7])],
            {"K": _rng_array((2, 1, 3, 3), f32)},
        ),
        "maxpool": make_model(
            [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])],
            [("x", f32, ["n", 1, 4, 4])],
            [("y", f32, ["n", 1, 2, 2])],
        ),
        "reshape-softmax": make_model(
            [
                helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
                helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=-1),
            ],
            [("x", f32, ["n", 2, 3])],
            [("y", f32, ["n", 6])],
            {"shape": np.array([-1, 6], np.int64)},
        ),
        "add-broadcast": make_model(
            [helper.make_node("Add", ["x", "b"], ["y"], name="add")],
            [("x", f32, ["n", 3])],
            [("y", f32, ["n", 3])],
            {"b": _rng_array((3,), f32)},
        ),
        "concat-transpose": make_model(
            [
                helper.make_node("Concat", ["x", "x"], ["c"], name="concat", axis=1),
                helper.make_node("Transpose", ["c"], ["y"], name="transpose", perm=[1, 0]),
            ],
            [("x", f32, ["n", 2])],
            [("y", f32, [4, "n"])],
        ),
        "gather": make_model(
            [helper.make_node("Gather", ["table", "i"], ["y"], name="gather", axis=0)],
            [("i", np.int64, ["k"])],
            [("y", f32, ["k", 3])],
            {"table": _rng_array((5, 3), f32)},
        ),
    }


MODELS = {"sparse-ae-digits8": (WEIGHTS / "sparse-ae-digits8.onnx").read_bytes(), **one_node_models()}
NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def declared_feed(sess: runtime.InferenceSession, rng: np.random.Generator) -> dict | None:
    """A feed that matches the declared inputs (symbolic dims drawn in 1..3), or None if one cannot be built."""
    feed, symbols = {}, {}
    for arg in sess.get_inputs():
        dtype = NP_TYPES.get(arg.type)
        if dtype is None:
            return None
        shape = [
            d if isinstance(d, int) and d > 0 else symbols.setdefault(d, int(rng.integers(1, 4))) for d in arg.shape
        ]
        if int(np.prod(shape, dtype=object)) > MAX_FEED_ELEMENTS:
            return None
        feed[arg.name] = (rng.standard_normal(shape) * 3).astype(dtype)
    return feed


def load_and_run(data: bytes, seed: int = 0) -> str:
    """Load ``data`` and run it on a declared feed; 'ran', 'refused at load' or 'refused at run'."""
    try:
        sess = runtime.InferenceSession(data)
    except REFUSALS as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return "refused at load"
    feed = declared_feed(sess, np.random.default_rng(seed))
    if feed is None:
        return "loaded"
    try:
        outputs = sess.run(None, feed)
    except REFUSALS as e:
        assert str(e), repr(e)
        return "refused at run"
    assert all(isinstance(y, np.ndarray) for y in outputs)
    return "ran"


def test_the_unmutated_models_run():
    """The fuzzer's seeds are valid: each loads and runs (so mutations start from working files)."""
    assert {name: load_and_run(data) for name, data in MODELS.items()} == dict.fromkeys(MODELS, "ran")


@st.composite
def mutated_model(draw) -> bytes:
    data = bytearray(MODELS[draw(st.sampled_from(sorted(MODELS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "delete", "insert", "truncate"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:]
        if not data:
            break
    return bytes(data)


@FUZZ
@given(data=mutated_model(), seed=st.integers(0, 2**16))
def test_mutated_model_bytes_are_run_or_refused(data, seed):
    assert load_and_run(data, seed) in ("ran", "loaded", "refused at load", "refused at run")


SESSIONS = {name: runtime.InferenceSession(data) for name, data in MODELS.items()}
DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_]


@st.composite
def mutated_feed(draw) -> tuple[str, dict]:
    name = draw(st.sampled_from(sorted(SESSIONS)))
    sess = SESSIONS[name]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    feed = declared_feed(sess, rng)
    for arg in sess.get_inputs():
        x = feed[arg.name]
        change = draw(st.sampled_from(["none", "shape", "dtype", "nan", "strided", "empty", "scalar", "drop"]))
        if change == "shape":
            shape = draw(st.lists(st.integers(0, 6), min_size=0, max_size=5))
            x = rng.standard_normal(shape).astype(x.dtype)
        elif change == "dtype":
            x = x.astype(draw(st.sampled_from(DTYPES)))
        elif change == "nan" and x.dtype.kind == "f" and x.size:
            x = x.copy()
            x.reshape(-1)[rng.integers(0, x.size, size=3)] = [np.nan, np.inf, -np.inf]
        elif change == "strided":
            x = np.repeat(x, 2, axis=-1)[..., ::2] if x.ndim else x
        elif change == "empty" and x.ndim:
            x = x[:0]
        elif change == "scalar":
            x = draw(st.sampled_from([1.0, [1.0, 2.0], None, "x", x.tolist()]))
        elif change == "drop":
            del feed[arg.name]
            continue
        feed[arg.name] = x
    if draw(st.booleans()) and draw(st.booleans()):
        feed["not_an_input"] = np.zeros(2, np.float32)
    return name, feed


@FUZZ
@given(case=mutated_feed())
def test_mutated_feeds_are_run_or_refused(case):
    name, feed = case
    try:
        outputs = SESSIONS[name].run(None, feed)
    except REFUSALS as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return
    assert all(isinstance(y, np.ndarray) for y in outputs)
    # what ran, ran on a feed that matched the declared inputs
    declared = {a.name: a for a in SESSIONS[name].get_inputs()}
    assert set(feed) == set(declared)
    for k, x in feed.items():
        if isinstance(x, list):  # converted to the declared dtype, as onnxruntime converts lists
            x = np.array(x, dtype=NP_TYPES[declared[k].type])
        assert x.dtype == NP_TYPES[declared[k].type] and x.ndim == len(declared[k].shape)


CHILD = textwrap.dedent(
    """
    import json
    import sys
    import numpy as np
    from tests.test_fuzz import MODELS, load_and_run

    rng = np.random.default_rng(int(sys.argv[1]))
    outcomes = {}
    for k in range(int(sys.argv[2])):
        name = sorted(MODELS)[k % len(MODELS)]
        data = bytearray(MODELS[name])
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            data[at] = int(rng.integers(0, 256))
        outcome = load_and_run(bytes(data), k)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(json.dumps(outcomes))
    """
)


@pytest.mark.parametrize("seed", [0, 1])
def test_mutated_files_do_not_crash_the_process(seed):
    """Random byte overwrites, loaded and run in a child process: it must exit normally (a segfault in a
    kernel would show as a negative return code), having met only the runtime's own refusals."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(seed), "150"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sum(outcomes.values()) == 150


# --- what the fuzzer found, kept as fixed examples --------------------------------------------------------
def _model_with(node_edit, model: str = "gather") -> bytes:
    proto = onnx.load_from_string(MODELS[model])
    node_edit(proto.graph.node[0])
    return proto.SerializeToString()


def _untyped_attribute(node):
    node.attribute[0].type = onnx.AttributeProto.UNDEFINED


def _attribute_of_wrong_type(node):
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("axis", [0, 1]))


def _drop_second_input(node):
    del node.input[1:]


FOUND = {
    "attribute-without-type": (_untyped_attribute, "gather", InvalidModel, ["'axis'", "UNDEFINED", "expected"]),
    "attribute-of-wrong-type": (_attribute_of_wrong_type, "gather", InvalidModel, ["'axis'", "INTS", "expected INT"]),
    "missing-required-input": (_drop_second_input, "reshape-softmax", InvalidModel, ["'reshape'", "first 2 inputs"]),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_fuzzer_finds_are_refused_at_load(case):
    edit, model, cls, needles = FOUND[case]
    with pytest.raises(cls) as info:
        runtime.InferenceSession(_model_with(edit, model))
    assert type(info.value) is cls
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_non_utf8_name_is_refused_and_control_characters_stay_escaped():
    """protobuf hands undecodable string fields back as bytes: refused by name, not a TypeError later on."""
    data = bytearray(MODELS["gather"])
    at = data.index(b"Gather")
    data[at] = 0xFF  # op_type b"\xffather"
    with pytest.raises(InvalidModel, match="op_type is not UTF-8 text"):
        runtime.InferenceSession(bytes(data))
    data[at : at + 1] = b"\n"  # op_type "\nather": a name that would break the message's line
    with pytest.raises(UnsupportedOp) as info:
        runtime.InferenceSession(bytes(data))
    assert "'\\nather'" in str(info.value) and "\n" not in str(info.value)


def test_declared_shape_that_does_not_broadcast_with_an_initializer_is_refused_at_run():
    """Declared x: (n, 2) against b: (3,) passes every load-time check (no shape inference); numpy's
    broadcasting error becomes InvalidFeed naming the node and the shapes."""
    model = make_model(
        [helper.make_node("Add", ["x", "b"], ["y"], name="add")],
        [("x", np.float32, ["n", 2])],
        [("y", np.float32, ["n", 3])],
        {"b": np.ones(3, np.float32)},
    )
    with pytest.raises(InvalidFeed) as info:
        runtime.InferenceSession(model).run(None, {"x": np.ones((4, 2), np.float32)})
    assert "'add'" in str(info.value) and "[(4, 2), (3,)]" in str(info.value)
