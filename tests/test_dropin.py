"""``import runtime as ort`` in place of ``import onnxruntime as ort``: one user script run under both, the same
printed metadata and outputs; then each piece of the API (providers, SessionOptions, RunOptions, feeds,
profiling) against onnxruntime 1.31's own behaviour, checked in the installed package
(onnxruntime/capi/onnxruntime_inference_collection.py) and by running it here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxruntime.capi.onnxruntime_inference_collection import check_and_normalize_provider_args

import runtime
from tests.conftest import ROOT, WEIGHTS, near_tie_samples
from zoo.cards import load_cards
from zoo.data import load_dataset
from zoo.models.deconvnet import TIE_MARGIN

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
LENET = str(WEIGHTS / "lenet-mnist.onnx")

# The user's script, written for onnxruntime: it is run as it stands, then with its import line replaced.
USER_SCRIPT = """\
import json
import sys

import numpy as np
import onnxruntime as ort

so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
inputs = np.load(sys.argv[1])
report, arrays = {}, {}
for model in ("lenet-mnist", "deconvnet-digits"):
    for providers in (["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]):
        sess = ort.InferenceSession(f"weights/{model}.onnx", sess_options=so, providers=providers)
        assert "CPUExecutionProvider" in sess.get_providers()
        (inp,) = sess.get_inputs()
        x = inputs[model]
        by_array = sess.run(None, {inp.name: x})
        by_list = sess.run([o.name for o in sess.get_outputs()], {inp.name: x.tolist()})
        options = sess.get_session_options()
        key = f"{model} {providers[0]}"
        report[key] = {
            "cpu_in_providers": "CPUExecutionProvider" in sess.get_providers(),
            "inputs": [[i.name, i.shape, i.type] for i in sess.get_inputs()],
            "outputs": [[o.name, o.shape, o.type] for o in sess.get_outputs()],
            "options": [options.intra_op_num_threads, options.graph_optimization_level.name],
            "results": [[str(y.dtype), list(y.shape)] for y in by_array],
            "list_feed_equals_array_feed": all(np.array_equal(a, b) for a, b in zip(by_array, by_list)),
            "classes": by_array[0].argmax(axis=1).tolist(),
        }
        for i, y in enumerate(by_array):
            arrays[f"{key} {i}"] = y
np.savez(sys.argv[2], **arrays)
print(json.dumps(report, sort_keys=True))
"""


@pytest.fixture(scope="module")
def user_inputs(tmp_path_factory) -> str:
    """Two validation images per model: real digits (the DeconvNet's flat backgrounds make exact max-pool ties),
    for DeconvNet the first two whose pool windows are nowhere within TIE_MARGIN of a near tie in onnxruntime's
    activations, as its export sample is chosen: there another summation order may pick the other switch and
    move a score by up to its size, which is not what this test is about (tests/test_weights.py is)."""
    images = {}
    for card in load_cards(WEIGHTS):
        if card["name"] in ("lenet-mnist", "deconvnet-digits"):
            size = tuple(card["config"]["image_size"])
            x = load_dataset(card["data"], "val", size=size, channels=1).images[:32, None]  # (32, 1, H, W)
            if card["name"] == "deconvnet-digits":
                x = x[~near_tie_samples(str(WEIGHTS / "deconvnet-digits.onnx"), {"image": x}, rel=TIE_MARGIN)]
            assert len(x) >= 2, f"{card['name']}: fewer than 2 of the first 32 canvases away from a pool tie"
            images[card["name"]] = x[:2]
    path = tmp_path_factory.mktemp("dropin") / "inputs.npz"
    np.savez(path, **images)
    return str(path)


def _run_user_script(text: str, inputs: str, out) -> dict:
    script = out.parent / f"{out.stem}.py"
    script.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "ZOO_TRACE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(script), inputs, str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_one_user_script_runs_unchanged_on_both(user_inputs, tmp_path):
    assert USER_SCRIPT.count("import onnxruntime as ort") == 1
    ours = USER_SCRIPT.replace("import onnxruntime as ort", "import runtime as ort")
    expected = _run_user_script(USER_SCRIPT, user_inputs, tmp_path / "with_onnxruntime.npz")
    got = _run_user_script(ours, user_inputs, tmp_path / "with_runtime.npz")
    assert got == expected  # metadata, options, output shapes and dtypes, classes: identical
    assert all(r["list_feed_equals_array_feed"] and r["cpu_in_providers"] for r in got.values())
    assert len(got) == 4
    with np.load(tmp_path / "with_onnxruntime.npz") as a, np.load(tmp_path / "with_runtime.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            # rtol as in tests/test_weights.py: float32 sums taken in another order than onnxruntime's drift by
            # a few ulps of the output (deconvnet-digits: 1.2e-5 on a score of ~7, 1.9e-6 relative)
            np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=1e-5, err_msg=name)


# --- providers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "providers, provider_options",
    [
        (None, None),
        ([CPU], None),
        ([(CPU, {})], None),
        ([(CPU, {"arena_extend_strategy": "kSameAsRequested"})], None),
        ([CPU], [{"some_option": 1}]),
        ((CPU,), None),
    ],
)
def test_cpu_provider_forms_as_onnxruntime(providers, provider_options):
    ref = ort.InferenceSession(LENET, providers=providers, provider_options=provider_options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # onnxruntime warns about none of these
        sess = runtime.InferenceSession(LENET, providers=providers, provider_options=provider_options)
    assert sess.get_providers() == ref.get_providers() == [CPU]
    assert sess.get_provider_options() == ref.get_provider_options() == {CPU: {}}
    assert sess.backend == "cpu"


def test_unknown_provider_is_skipped_with_onnxruntimes_warning():
    for module in (ort, runtime):
        with pytest.warns(UserWarning, match="Specified provider 'FooExecutionProvider' is not in available provider"):
            sess = module.InferenceSession(LENET, providers=["FooExecutionProvider", CPU])
        assert sess.get_providers() == [CPU]


def test_duplicate_provider_warns_as_onnxruntime():
    for module in (ort, runtime):
        with pytest.warns(UserWarning, match=f"Duplicate provider '{CPU}' encountered, ignoring."):
            module.InferenceSession(LENET, providers=[CPU, CPU])


@pytest.mark.parametrize(
    "providers, provider_options",
    [
        (42, None),
        ([CPU], 42),
        ([CPU], [{}, {}]),
        ([(CPU, {})], [{}]),
        ([CPU], ["x"]),
        ([(CPU,)], None),
        ([(CPU, "x")], None),
    ],
)
def test_malformed_providers_refused_with_onnxruntimes_message(providers, provider_options):
    """onnxruntime raises these ValueErrors in check_and_normalize_provider_args, then catches them and falls
    back to the CPU, printing to stdout; this runtime raises them."""
    with pytest.raises(ValueError) as expected:
        check_and_normalize_provider_args(providers, provider_options, [CPU])
    with pytest.raises(runtime.InvalidOption) as got:
        runtime.InferenceSession(LENET, providers=providers, provider_options=provider_options)
    assert str(got.value) == str(expected.value)
    assert isinstance(got.value, ValueError)


def test_providers_as_a_bare_string_refused():
    with pytest.raises(runtime.InvalidOption, match="sequence of names, got the string 'CPUExecutionProvider'"):
        runtime.InferenceSession(LENET, providers=CPU)


@pytest.mark.skipif(runtime.get_device() == "GPU", reason="a CUDA backend is usable here")
def test_cuda_provider_falls_back_to_the_cpu_with_a_warning():
    """Without a GPU onnxruntime-gpu logs 'Failed to create CUDAExecutionProvider' to stderr and runs on the CPU;
    a CPU-only onnxruntime warns that the provider is not available. This runtime warns (UserWarning), once."""
    ref = ort.InferenceSession(LENET, providers=[CUDA, CPU])
    for providers in ([CUDA, CPU], [CUDA], [(CUDA, {"device_id": 0})]):
        with pytest.warns(UserWarning, match=f"'{CUDA}' is not in available provider names") as record:
            sess = runtime.InferenceSession(LENET, providers=providers)
        assert len(record) == 1
        assert sess.get_providers() == ref.get_providers() == [CPU]
        assert sess.backend == "cpu"
    assert runtime.get_available_providers() == [CPU]
    assert runtime.get_device() == "CPU"


def test_backend_keyword_is_the_runtimes_own_spelling():
    sess = runtime.InferenceSession(LENET, backend="cpu")
    assert sess.get_providers() == [CPU] and sess.backend == "cpu"
    assert runtime.InferenceSession(LENET, backend="cpu", providers=[CPU]).backend == "cpu"
    with pytest.raises(runtime.InvalidOption, match="backend='cpu' and providers=\\['CUDAExecutionProvider'"):
        runtime.InferenceSession(LENET, backend="cpu", providers=[CUDA, CPU])
    with pytest.raises(runtime.InvalidOption, match="name different backends"):
        runtime.InferenceSession(LENET, backend="cuda", providers=[CPU])
    with pytest.raises(runtime.BackendUnavailable, match="unknown backend 'tpu'"):
        runtime.InferenceSession(LENET, backend="tpu")


def test_cuda_provider_options():
    from runtime.options import cuda_provider_options

    assert cuda_provider_options({}) == {"device_id": "0"}
    assert cuda_provider_options({"device_id": "0"}) == {"device_id": "0"}
    with pytest.warns(UserWarning, match="option 'gpu_mem_limit' is not supported by this runtime; ignored"):
        assert cuda_provider_options({"gpu_mem_limit": str(2**30)}) == {"device_id": "0"}
    with pytest.warns(UserWarning, match="Unknown CUDAExecutionProvider option 'bogus'; ignored"):
        cuda_provider_options({"bogus": "1"})
    with pytest.raises(runtime.InvalidOption, match="device_id 1 is not supported.*CUDA_VISIBLE_DEVICES"):
        cuda_provider_options({"device_id": "1"})
    with pytest.raises(runtime.InvalidOption, match='Failed to parse provider option "device_id" with value "x"'):
        cuda_provider_options({"device_id": "x"})


@pytest.mark.cuda
def test_cuda_provider_on_a_cuda_backend():
    """Where a CUDA backend is usable (a GPU, or the simulator: it counts as a device), CUDAExecutionProvider is
    available and runs the CUDA backend; onnxruntime's list for a CUDA session is [CUDA, CPU]."""
    assert runtime.get_available_providers() == [CUDA, CPU]
    assert runtime.get_device() == "GPU"
    with pytest.warns(UserWarning, match="'gpu_mem_limit' is not supported"):
        sess = runtime.InferenceSession(LENET, providers=[(CUDA, {"device_id": 0, "gpu_mem_limit": 2**30}), CPU])
    assert sess.backend == "cuda"
    assert sess.get_providers() == [CUDA, CPU]
    assert sess.get_provider_options() == {CUDA: {"device_id": "0"}, CPU: {}}
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    (expected, _) = ort.InferenceSession(LENET, providers=[CPU]).run(None, {"image": x})
    (got, _) = sess.run(None, {"image": x.tolist()})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    sess.set_providers([CPU])
    assert sess.backend == "cpu" and sess.get_providers() == [CPU]
    with pytest.raises(runtime.InvalidOption, match="device_id 1"):
        runtime.InferenceSession(LENET, providers=[CUDA], provider_options=[{"device_id": 1}])


def test_set_providers_recreates_the_session():
    sess = runtime.InferenceSession(LENET, providers=[CPU])
    x = np.zeros((1, 1, 28, 28), np.float32)
    before = sess.run(None, {"image": x})
    assert sess.set_providers([CPU]) is None
    assert sess.get_providers() == [CPU]
    sess.set_providers()  # onnxruntime 1.31: the CPU when none are given
    assert sess.get_providers() == [CPU]
    for a, b in zip(before, sess.run(None, {"image": x})):
        np.testing.assert_array_equal(a, b)


def test_available_providers_device_and_version():
    assert CPU in runtime.get_available_providers() and runtime.get_available_providers()[-1] == CPU
    assert runtime.get_device() in ("CPU", "GPU")
    assert isinstance(runtime.__version__, str) and runtime.__version__.count(".") == 2
    assert set(runtime.get_available_providers()) <= set(ort.get_all_providers())


# --- InferenceSession's other arguments -----------------------------------------------------------------------
def test_sess_options_of_another_type_refused():
    for module in (ort, runtime):
        with pytest.raises(TypeError):
            module.InferenceSession(LENET, "cpu")
    with pytest.raises(TypeError, match="backend='cpu'"):
        runtime.InferenceSession(LENET, "cuda")


def test_onnxruntimes_keywords_accepted_unknown_ones_refused():
    runtime.InferenceSession(LENET, providers=[CPU], enable_fallback=0, disabled_optimizers=["x"])
    with pytest.raises(TypeError, match="provider"):  # onnxruntime ignores a misspelt keyword; this runtime says so
        runtime.InferenceSession(LENET, provider=[CPU])


def test_onnxruntimes_own_session_options_are_read():
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = runtime.InferenceSession(LENET, so, providers=[CPU])
    got = sess.get_session_options()
    assert got.intra_op_num_threads == 1
    assert got.graph_optimization_level is runtime.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_modelmeta_as_onnxruntime():
    a = runtime.InferenceSession(LENET).get_modelmeta()
    b = ort.InferenceSession(LENET, providers=[CPU]).get_modelmeta()
    for field in ("producer_name", "graph_name", "description", "custom_metadata_map", "domain", "version"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.graph_description == b.graph_description


# --- SessionOptions -------------------------------------------------------------------------------------------
OPTION_NAMES = [
    "intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level", "execution_mode",
    "log_severity_level", "log_verbosity_level", "logid", "enable_profiling", "profile_file_prefix",
    "optimized_model_filepath", "enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse",
    "use_deterministic_compute", "use_per_session_threads",
]  # fmt: skip


def _plain(value):
    return (type(value).__name__, int(value)) if hasattr(value, "name") and hasattr(value, "__int__") else value


def test_session_options_defaults_as_onnxruntime():
    ours, theirs = runtime.SessionOptions(), ort.SessionOptions()
    for name in OPTION_NAMES:
        assert _plain(getattr(ours, name)) == _plain(getattr(theirs, name)), name


def test_enums_as_onnxruntime():
    for kind in ("GraphOptimizationLevel", "ExecutionMode"):
        theirs = {name: int(v) for name, v in getattr(ort, kind).__members__.items()}
        assert {m.name: m.value for m in getattr(runtime, kind)} == theirs


@pytest.mark.parametrize(
    "name, value",
    [
        ("intra_op_num_threads", "2"),
        ("intra_op_num_threads", 2.0),
        ("graph_optimization_level", 1),
        ("graph_optimization_level", "ORT_ENABLE_ALL"),
        ("execution_mode", 1),
        ("logid", 3),
    ],
)
def test_session_options_type_errors_as_onnxruntime(name, value):
    for module in (ort, runtime):
        with pytest.raises(TypeError):
            setattr(module.SessionOptions(), name, value)


def test_session_options_values_accepted_as_onnxruntime():
    for module in (ort, runtime):
        so = module.SessionOptions()
        so.intra_op_num_threads = -1
        so.log_severity_level = 7
        so.enable_profiling = 1
        assert (so.intra_op_num_threads, so.log_severity_level, so.enable_profiling) == (-1, 7, True)
        with pytest.raises(AttributeError):
            so.no_such_option = 1


def test_session_config_entries_as_onnxruntime():
    for module in (ort, runtime):
        so = module.SessionOptions()
        so.add_session_config_entry("session.load_model_format", "ONNX")
        assert so.get_session_config_entry("session.load_model_format") == "ONNX"
        with pytest.raises(RuntimeError, match="SessionOptions does not have configuration with key: missing"):
            so.get_session_config_entry("missing")
        with pytest.raises(TypeError):
            so.add_session_config_entry("k", 3)


def test_get_session_options_is_a_copy_with_the_values():
    so = runtime.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("k", "v")
    sess = runtime.InferenceSession(LENET, so, providers=[CPU])
    got = sess.get_session_options()
    assert got is not so and got.intra_op_num_threads == 1 and got.get_session_config_entry("k") == "v"
    so.intra_op_num_threads = 2
    assert sess.get_session_options().intra_op_num_threads == 1  # as onnxruntime: fixed at creation


def test_intra_op_num_threads_sets_numbas_threads_for_each_run(monkeypatch):
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread only")
    so = runtime.SessionOptions()
    so.intra_op_num_threads = 1
    sess = runtime.InferenceSession(LENET, so, providers=[CPU])
    seen = []
    real = runtime.session.numba.set_num_threads
    outside = numba.get_num_threads()
    real(2)  # an earlier test may have left this thread at 1, which would make the session's setting a no-op
    monkeypatch.setattr(runtime.session.numba, "set_num_threads", lambda n: (seen.append(n), real(n))[1])
    before = numba.get_num_threads()
    sess.run(None, {"image": np.zeros((1, 1, 28, 28), np.float32)})
    assert seen == [1, before] and numba.get_num_threads() == before
    seen.clear()
    runtime.InferenceSession(LENET, providers=[CPU]).run(None, {"image": np.zeros((1, 1, 28, 28), np.float32)})
    assert seen == []  # 0: numba's own count, untouched
    real(outside)


def test_graph_optimization_level_disable_all_is_optimize_graph_false():
    so = runtime.SessionOptions()
    so.graph_optimization_level = runtime.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = runtime.InferenceSession(LENET, so)
    unoptimized = runtime.InferenceSession(LENET, optimize_graph=False)
    optimized = runtime.InferenceSession(LENET)
    ops = [n.op_type for n in plain._graph.nodes]
    assert ops == [n.op_type for n in unoptimized._graph.nodes]
    assert ops != [n.op_type for n in optimized._graph.nodes]
    assert unoptimized.get_session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"
    with pytest.raises(runtime.InvalidOption, match="optimize_graph=True contradicts"):
        runtime.InferenceSession(LENET, so, optimize_graph=True)


def test_enable_profiling_writes_onnxruntimes_trace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = np.zeros((1, 1, 28, 28), np.float32)
    events = {}
    for module in (ort, runtime):
        so = module.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = f"{module.__name__}_profile"
        sess = module.InferenceSession(LENET, so, providers=[CPU])
        sess.run(None, {"image": x})
        path = sess.end_profiling()
        assert path.startswith(f"{module.__name__}_profile") and path.endswith(".json")
        events[module] = json.loads((tmp_path / path).read_text())
    keys = {"cat", "pid", "tid", "dur", "ts", "ph", "name", "args"}
    assert all(set(e) == keys for e in events[runtime])
    assert {e["cat"] for e in events[runtime]} <= {e["cat"] for e in events[ort]}
    assert "model_run" in {e["name"] for e in events[runtime]}
    nodes = [e for e in events[runtime] if e["cat"] == "Node"]
    assert nodes and all(e["name"].endswith("_kernel_time") and e["args"]["provider"] == CPU for e in nodes)
    assert runtime.InferenceSession(LENET).end_profiling() == ""  # as onnxruntime without profiling


# --- run and RunOptions ---------------------------------------------------------------------------------------
def test_run_options_as_onnxruntime():
    x = np.zeros((1, 1, 28, 28), np.float32)
    for module in (ort, runtime):
        ro = module.RunOptions()
        assert (ro.log_severity_level, ro.log_verbosity_level, ro.logid) == (-1, 0, "")
        assert (ro.only_execute_path_to_fetches, ro.terminate) == (False, False)
        ro.log_severity_level = 3
        ro.add_run_config_entry("k", "v")
        assert ro.get_run_config_entry("k") == "v"
        with pytest.raises(RuntimeError, match="RunOptions does not have configuration with key: x"):
            ro.get_run_config_entry("x")
        sess = module.InferenceSession(LENET, providers=[CPU])
        assert len(sess.run(None, {"image": x}, ro)) == 2
        assert len(sess.run(["logits"], {"image": x}, run_options=None)) == 1
        with pytest.raises(TypeError):
            sess.run(None, {"image": x}, run_options=object())
    ro = runtime.RunOptions()
    ro.terminate = True
    with pytest.raises(runtime.ZooRuntimeError, match="terminate"):
        runtime.InferenceSession(LENET).run(None, {"image": x}, ro)


# --- feeds ----------------------------------------------------------------------------------------------------
def _identity(elem_type: int, shape) -> bytes:
    x = helper.make_tensor_value_info("x", elem_type, shape)
    y = helper.make_tensor_value_info("y", elem_type, None)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnxruntime 1.31 reads IR <= 13
    return model.SerializeToString()


DECLARED = {
    "float[2,2]": (TensorProto.FLOAT, [2, 2]),
    "float[N,3]": (TensorProto.FLOAT, ["N", 3]),
    "double[2]": (TensorProto.DOUBLE, [2]),
    "int64[2]": (TensorProto.INT64, [2]),
    "int32[2]": (TensorProto.INT32, [2]),
    "uint8[2]": (TensorProto.UINT8, [2]),
    "bool[2]": (TensorProto.BOOL, [2]),
}
FEEDS = {
    "float lists": [[1.0, 2.0], [3.0, 4.0]],
    "int lists": [[1, 2], [3, 4]],
    "floats": [1.5, 2.5],
    "ints": [1, 2],
    "bools": [True, False],
    "one row of 3": [[1.0, 2.0, 3.0]],
    "3 ints": [1, 2, 3],
    "ragged": [[1.0], [2.0, 3.0]],
    "a float and a word": [1.5, "a"],
    "numeric strings": ["1.5", "2"],
    "words": ["a", "b"],
    "empty": [],
    "out of uint8's range": [300, -1],
    "out of float32's range": [1e40, 1.0],
    "out of int64's range": [2**63, 1],
    "with None": [1.0, None],
    "numpy scalars": [np.float32(1), np.float32(2)],
    "0-d arrays": [np.array(1.0), np.array(2.0)],
    "python float": 1.5,
    "python int": 2,
    "python bool": True,
    "numpy float32": np.float32(1.5),
    "tuple": (1.0, 2.0),
    "float64 array": np.array([1.0, 2.0]),
    "int64 array": np.array([1, 2]),
    "float32 array": np.array([1.0, 2.0], np.float32),
    "memoryview": memoryview(b"ab"),
}


def _outcome(sess, value):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow warning, under both
        try:
            (y,) = sess.run(None, {"x": value})
        except Exception as e:
            return "refused", e
    return "accepted", y


@pytest.mark.parametrize("declared", list(DECLARED))
def test_feeds_accepted_and_refused_as_onnxruntime(declared):
    """onnxruntime turns a list into an array of the input's declared type by numpy's conversion and refuses
    scalars, tuples and arrays of another dtype; so does this runtime, with one-line InvalidFeed errors."""
    model = _identity(*DECLARED[declared])
    ref = ort.InferenceSession(model, providers=[CPU])
    sess = runtime.InferenceSession(model, providers=[CPU])
    for what, value in FEEDS.items():
        (expected_kind, expected), (kind, got) = _outcome(ref, value), _outcome(sess, value)
        assert kind == expected_kind, f"{declared} fed {what}: onnxruntime {expected_kind} ({expected}), runtime {kind}"
        if kind == "accepted":
            assert got.dtype == expected.dtype and got.shape == expected.shape, (declared, what)
            np.testing.assert_array_equal(got, expected, err_msg=f"{declared} fed {what}")
        else:
            assert isinstance(got, runtime.InvalidFeed), (declared, what, got)
            assert "\n" not in str(got) and "'x'" in str(got), str(got)


def test_scalar_refusal_says_how_to_feed_one():
    sess = runtime.InferenceSession(_identity(TensorProto.FLOAT, []), providers=[CPU])
    with pytest.raises(runtime.InvalidFeed, match="got float; for a scalar pass np.array\\(value, dtype=np.float32\\)"):
        sess.run(None, {"x": 1.5})
    (y,) = sess.run(None, {"x": np.array(1.5, np.float32)})
    assert y.shape == () and y == 1.5
