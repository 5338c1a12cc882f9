"""``zoo bench``: this runtime against its peers — onnxruntime (spinning off in the alternation, and its default
spinning alone), OpenVINO (float32 precision, latency hint; the ``bench`` extra) — and PyTorch eager and
onnx.reference on small models, on the same ONNX files in one process, with equal thread counts.

Method: each runner is warmed up, then the runners take turns (A B C A B C ...) so that drifts of the machine
hit all alike; each reports the median of its runs, the ratio of medians to onnxruntime and to the best peer,
and this runtime's GFLOP/s (the graph's multiply-adds, ``macs_per_sample``) as a share of the machine's measured
float32 FMA peak (``fma_peak_gflops``). Cold start (time to the first result in a fresh process, Numba cache
empty and then warm) is measured in subprocesses, which also report their peak resident memory.

The cases are the shipped ONNX files (``weights/``) and architectures benchmarked with seeded random weights
(``RANDOM_WEIGHT_MODELS``: exported once per run into a temporary folder, PyTorch eager on the same module).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Imported before torch: importing the runtime bounds how long GNU OpenMP's workers spin (GOMP_SPINCOUNT, unless
# the user set a wait policy), which every OpenMP runtime in the process reads when it starts. Were torch's
# started first with its default, its workers would spin long after each run and hold the cores while the next
# runner starts: LeNet at batch 64 on this runtime took 5.96 ms after torch's spinning workers and 2.44 ms after
# passive ones, alternating in one process.
import runtime  # noqa: E402

REFERENCE_MAX_PARAMS = 1_000_000  # onnx.reference is an interpreter: only on small models

# Architectures without shipped weights, benchmarked with seeded random weights: (registered model name, part).
# To add one, append it here: ``zoo bench --models NAME`` then selects it like a shipped file.
RANDOM_WEIGHT_MODELS: list[tuple[str, str | None]] = [
    ("dcgan-64", "generator"),
    ("dcgan-64", "discriminator"),
    ("deconvnet-vgg16", None),  # 252M parameters, ~1 GB of external data: exported once per run
]
MAX_BATCH = {"deconvnet-vgg16": 1}  # a 224x224 DeconvNet batch of 64 would hold ~40 GB of activations
RANDOM_WEIGHT_SEED = 0


@dataclass
class Case:
    name: str
    onnx_path: Path
    batch: int
    checkpoint: Path | None = None  # for the PyTorch eager runner
    part: str | None = None
    feed: dict = field(default_factory=dict)
    torch_module: object = None  # the PyTorch eager module itself, for the random-weight cases


def _feed_for(onnx_path: Path, batch: int, seed: int = 0) -> dict:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    init = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feed = {}
    for v in model.graph.input:
        if v.name in init:
            continue
        shape = [batch if not d.HasField("dim_value") else d.dim_value for d in v.type.tensor_type.shape.dim]
        if v.name == "class_code":
            feed[v.name] = np.eye(shape[1], dtype=np.float32)[rng.integers(0, shape[1], batch)]
        elif v.name == "z":
            feed[v.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            feed[v.name] = rng.random(shape, dtype=np.float32)
    return feed


def shipped_cases(weights_dir: Path, batches: list[int], models: list[str] | None) -> list[Case]:
    from zoo.cards import load_cards

    cases = []
    for card in load_cards(weights_dir):
        if models and card["name"] not in models and card["model"] not in models:
            continue
        for file in card["files"]:
            if not file.endswith(".onnx"):
                continue
            parts = file[: -len(".onnx")].split(".")
            part = parts[1] if len(parts) > 1 else None
            for b in batches:
                path = weights_dir / file
                label = f"{card['name']}.{part}" if part else card["name"]
                cases.append(
                    Case(label, path, b, weights_dir / f"{card['name']}.safetensors", part, _feed_for(path, b))
                )
    return cases


def random_weight_cases(out_dir: Path, batches: list[int], models: list[str] | None) -> list[Case]:
    """The ``RANDOM_WEIGHT_MODELS`` selected by ``models`` (all when None), exported into ``out_dir``; none
    without PyTorch (the export needs it)."""
    try:
        import torch
    except ImportError:
        return []

    import zoo
    from zoo.export import export_onnx, model_part

    cases = []
    built = {}
    for name, part in RANDOM_WEIGHT_MODELS:
        label = f"{name}.{part}" if part else name
        if models and name not in models and label not in models:
            continue
        if not any(b <= MAX_BATCH.get(name, b) for b in batches):
            continue
        if name not in built:
            torch.manual_seed(RANDOM_WEIGHT_SEED)  # the model's own initialisation, seeded
            built[name] = zoo.create_model(name).eval()
        path = Path(out_dir) / f"{label}.onnx"
        if not path.is_file():
            export_onnx(built[name], path, part=part)
        module = model_part(built[name], part).eval()
        for b in batches:
            if b <= MAX_BATCH.get(name, b):
                cases.append(Case(f"{label} (random)", path, b, None, part, _feed_for(path, b), torch_module=module))
    return cases


def _torch_runner(case: Case, threads: int):
    import torch

    torch.set_num_threads(threads)
    if case.torch_module is not None:
        module = case.torch_module
    else:
        from zoo.checkpoint import load_checkpoint
        from zoo.export import model_part

        model, _ = load_checkpoint(case.checkpoint)
        module = model_part(model, case.part).eval()
    tensors = [torch.from_numpy(v) for v in case.feed.values()]

    def run():
        with torch.inference_mode():
            return module(*tensors)

    return run


def _param_count(onnx_path: Path) -> int:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def onnxruntime_session(case: Case, backend: str, threads: int, spinning: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if backend == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")  # onnxruntime-gpu: it may still fall back (no device)
    return ort.InferenceSession(str(case.onnx_path), so, providers=providers)


def onnxruntime_label(sess, backend: str) -> str:
    """The onnxruntime runner's name: "onnxruntime" in the CPU bench; in the cuda bench the provider its session
    actually got ("onnxruntime-CUDA", or "onnxruntime-CPU" where onnxruntime has no usable CUDA provider: then
    it is no CUDA peer, and the cuda bench has none)."""
    if backend == "cpu":
        return "onnxruntime"
    return "onnxruntime-CUDA" if sess.get_providers()[0] == "CUDAExecutionProvider" else "onnxruntime-CPU"


def macs_per_sample(onnx_path) -> int:
    """Multiply-adds of one sample through the graph's Gemm, MatMul, Conv and ConvTranspose nodes whose weight is
    an initializer (shapes from ONNX shape inference; the weights' data is not read)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path), load_external_data=False))
    g = model.graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*g.value_info, *g.input, *g.output)}
    weights = {t.name: int(np.prod(t.dims)) for t in g.initializer}
    total = 0
    for n in g.node:
        w = weights.get(n.input[1], 0) if len(n.input) > 1 else 0
        if n.op_type in ("Gemm", "MatMul"):
            total += w
        elif n.op_type == "Conv":
            total += w * int(np.prod(dims[n.output[0]][2:]))
        elif n.op_type == "ConvTranspose":
            total += w * int(np.prod(dims[n.input[0]][2:]))
    return total


# OpenVINO reads ONNX itself; these ops it has no conversion for ("No conversion rule found"): its runner is
# reported n/a with the reason, as is one that fails to compile for another reason.
OPENVINO_MISSING_OPS = ("MaxUnpool",)


def openvino_runner(case: Case, threads: int):
    """(run, None), or (None, the reason there is none): OpenVINO with float32 inference (its default on CPUs
    with bf16 is bf16, off by up to 0.04 here), the latency hint (one stream) and ``threads`` threads."""
    try:
        import openvino as ov
    except ImportError:
        return None, "openvino not installed (pip install 'deconv-zoo[bench]')"
    import onnx

    ops = {n.op_type for n in onnx.load(str(case.onnx_path), load_external_data=False).graph.node}
    missing = sorted(ops & set(OPENVINO_MISSING_OPS))
    if missing:
        return None, f"OpenVINO has no {', '.join(missing)}"
    try:
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        compiled = core.compile_model(str(case.onnx_path), "CPU", config)
    except Exception as e:  # OpenVINO's own errors: report, do not stop the bench
        return None, f"OpenVINO failed to compile it: {str(e).strip().splitlines()[0][:120]}"
    request = compiled.create_infer_request()
    feed = dict(case.feed)

    def run():
        request.infer(feed)
        return request

    return run, None


def runners_for(case: Case, backend: str, threads: int) -> dict:
    # onnxruntime's workers spin-wait by default, between its operators and for many milliseconds after a run,
    # holding the cores while the next runner in the alternation works (LeNet at batch 64 on this runtime: 1.35 ms
    # after a non-spinning onnxruntime, 4.5-6.5 ms after a spinning one, in every run of an 8-run turn). In the
    # alternation it therefore runs with spinning off; its default, spinning, is timed alone afterwards
    # (``time_spinning_onnxruntime``) and reported beside it.
    ort_sess = onnxruntime_session(case, backend, threads, spinning=False)
    ours = runtime.InferenceSession(str(case.onnx_path), backend=backend)
    if backend == "cuda" and ours.get_providers()[0] != "CUDAExecutionProvider":
        raise runtime.BackendUnavailable(f"the cuda bench's session runs on {ours.get_providers()}, not on CUDA")
    out = {
        onnxruntime_label(ort_sess, backend): lambda: ort_sess.run(None, case.feed),
        f"runtime-{backend}": lambda: ours.run(None, case.feed),
    }
    if backend == "cpu":
        run, _ = openvino_runner(case, threads)
        if run is not None:
            out["openvino"] = run
    if case.torch_module is not None or (case.checkpoint is not None and case.checkpoint.is_file()):
        try:
            out["torch" if backend == "cpu" else "torch-cpu"] = _torch_runner(case, threads)  # eager, CPU
        except ImportError:
            pass
    if case.batch == 1 and _param_count(case.onnx_path) <= REFERENCE_MAX_PARAMS:
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(str(case.onnx_path))
        out["onnx.reference"] = lambda: ref.run(None, case.feed)
    return out


# Runs per turn: the runners take turns in blocks of this many runs (A×k B×k C×k A×k …), so that a runner's
# worker threads still spinning after its turn (onnxruntime's and OpenMP's spin briefly after their work, then
# sleep) touch only the first run of the next runner's block, which the median ignores. (Sleeping between runs
# instead is no cure on a VM: an idle vCPU takes milliseconds to wake, and every runner measured that.)
BLOCK_RUNS = 8


def time_alternating(runners: dict, min_runs: int = 16, max_runs: int = 400, min_seconds: float = 1.0) -> dict:
    """Warm each runner up, then run them in turns of BLOCK_RUNS runs until each has min_runs runs and they have
    run min_seconds together."""
    for fn in runners.values():
        fn()
        fn()
    times = {k: [] for k in runners}
    start = time.perf_counter()
    while True:
        for k, fn in runners.items():
            for _ in range(BLOCK_RUNS):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        n = len(next(iter(times.values())))
        if n >= max_runs or (n >= min_runs and time.perf_counter() - start >= min_seconds):
            return times


def time_spinning_onnxruntime(case: Case, backend: str, threads: int) -> list[float]:
    """onnxruntime as it runs by default (spinning workers), alone: no other runner shares the cores with its
    spinning threads, which stop when the session is gone."""
    sess = onnxruntime_session(case, backend, threads, spinning=True)  # freed on return: its threads with it
    return time_alternating({"onnxruntime-spinning": lambda: sess.run(None, case.feed)})["onnxruntime-spinning"]


def peak_memory_mb(fn) -> float:
    """Peak of NumPy-tracked allocations during one call (tracemalloc sees NumPy's buffers)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


COLD_START = """
import sys, time, numpy as np
t0 = time.perf_counter()
import runtime
sess = runtime.InferenceSession(sys.argv[1], backend=sys.argv[2])
feed = dict(np.load(sys.argv[3]))
sess.run(None, feed)
seconds = time.perf_counter() - t0
# VmHWM, this process image's peak RSS (getrusage's ru_maxrss would carry the parent's peak across fork + exec)
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
    print(seconds, int(hwm) / 1024)
except (OSError, IndexError):
    print(seconds, "nan")
"""


def cold_start(case: Case, backend: str, threads: int) -> dict:
    """Seconds from `import runtime` to the first result in a fresh process: Numba cache empty, then warm; and
    that process's peak resident memory (MiB). The cache is a fresh folder inside $NUMBA_CACHE_DIR when the user
    set it (else inside the system's temporary folder), removed afterwards."""
    parent = os.environ.get("NUMBA_CACHE_DIR") or None
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=parent, prefix="zoo-bench-") as cache:
        feed_file = Path(tmp) / "feed.npz"
        np.savez(feed_file, **case.feed)
        env = {
            **os.environ,
            "NUMBA_CACHE_DIR": cache,
            "NUMBA_NUM_THREADS": str(threads),
            "OPENBLAS_NUM_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
        }
        result = {"numba_cache_dir_parent": parent or tempfile.gettempdir()}
        for label in ("empty_cache", "warm_cache"):
            done = subprocess.run(
                [sys.executable, "-c", COLD_START, str(case.onnx_path), backend, str(feed_file)],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip().splitlines()[-1])
            seconds, rss_mb = (float(v) for v in done.stdout.strip().splitlines()[-1].split())
            result[f"{label}_s"] = seconds
            result[f"{label}_peak_rss_mb"] = rss_mb
        return result


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (Linux's /proc/cpuinfo), else the platform's."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def blas_kernels() -> list[str]:
    """Each BLAS loaded in this process and the kernel it picked (threadpoolctl): this runtime calls none, its
    peers and NumPy may."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["threadpoolctl not installed"]
    return [f"{p['internal_api']} {p.get('architecture', '')}".strip() for p in threadpool_info()
            if p.get("user_api") == "blas"]  # fmt: skip


def machine_info(threads: int) -> dict:
    import numba
    import onnx
    import onnxruntime

    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "blas": blas_kernels(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": _threading_layer(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "onnxruntime_session": {
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
            "spinning": "off in the alternation; on (its default) for onnxruntime-spinning, timed alone",
        },
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
        "runs_per_turn": BLOCK_RUNS,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import openvino

        info["openvino"] = openvino.__version__
    except ImportError:
        pass
    return info


def _threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer is chosen at the first one
        return f"not started (configured: {numba.config.THREADING_LAYER})"


def run_bench(
    cases: list[Case],
    backend: str = "cpu",
    threads: int | None = None,
    cold: bool = True,
    log=print,
    progress: bool = False,
) -> dict:
    """Time every case; ``log`` gets the header and one table row per case as it is measured, ``progress`` shows
    a bar over the cases on stderr (the rows are written above it)."""
    import numba
    from tqdm.auto import tqdm

    threads = threads or os.cpu_count() or 1
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass
    from runtime.ops._gemm_cpu import fma_peak_gflops

    peak = fma_peak_gflops(threads) if backend == "cpu" else None
    report = {"machine": {}, "backend": backend, "peak_gflops": peak, "results": []}
    ours = f"runtime-{backend}"
    log(
        f"{cpu_model()}; {threads} threads; measured float32 FMA peak {peak or float('nan'):.0f} GFLOP/s; BLAS "
        f"in the process: {', '.join(blas_kernels()) or 'none'}; OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )
    log(_HEADER)
    macs = {}
    bar = tqdm(cases, desc="bench", unit="case", file=sys.stderr, disable=not progress, leave=False)
    if progress:
        log = tqdm.write  # rows above the bar, not through it
    for case in bar:
        bar.set_postfix_str(f"{case.name} b{case.batch}", refresh=True)
        runners = runners_for(case, backend, threads)
        times = time_alternating(runners)
        if backend == "cpu":  # spinning workers are a CPU matter
            times["onnxruntime-spinning"] = time_spinning_onnxruntime(case, backend, threads)
        medians = {k: statistics.median(v) for k, v in times.items()}
        if case.onnx_path not in macs:
            macs[case.onnx_path] = macs_per_sample(case.onnx_path)
        flops = 2 * macs[case.onnx_path] * case.batch
        ort = _onnxruntime_key(medians)
        peers = {k: v for k, v in medians.items() if k in (PEERS if backend == "cpu" else CUDA_PEERS)}
        best_peer = min(peers, key=peers.get) if peers else None  # the cuda bench without onnxruntime-CUDA: none
        _, openvino_missing = openvino_runner(case, threads) if "openvino" not in medians else (None, None)
        row = {
            "model": case.name,
            "batch": case.batch,
            "runs": len(times[ours]),
            "median_ms": {k: v * 1e3 for k, v in medians.items()},
            "quartiles_ms": {k: [q * 1e3 for q in statistics.quantiles(v, n=4)[::2]] for k, v in times.items()},
            "ratio_to_onnxruntime": {k: v / medians[ort] for k, v in medians.items()},
            "best_peer": best_peer,
            "ratio_to_best_peer": medians[ours] / peers[best_peer] if best_peer else None,
            "gflop": flops / 1e9,
            "gflops": {k: flops / v / 1e9 for k, v in medians.items()},
            "percent_of_peak": 100 * flops / medians[ours] / 1e9 / peak if peak else None,
            "peak_numpy_alloc_mb": peak_memory_mb(runners[ours]),
        }
        if openvino_missing:
            row["openvino_na"] = openvino_missing
        if backend != "cpu":
            row["onnxruntime_runner"] = ort  # the provider its session got: onnxruntime-CPU is no CUDA peer
        if cold and case.batch == min(c.batch for c in cases if c.name == case.name):
            row["cold_start"] = cold_start(case, backend, threads)
        report["results"].append(row)
        log(_format_row(row, ours))
    report["machine"] = machine_info(threads)  # after the runs: Numba's threading layer is known by then
    return report


PEERS = ("onnxruntime", "onnxruntime-spinning", "openvino")
CUDA_PEERS = ("onnxruntime-CUDA",)  # the cuda bench's: onnxruntime-CPU is timed beside it but is no CUDA peer


def _onnxruntime_key(medians: dict) -> str:
    """The onnxruntime runner's name in a row (``onnxruntime_label``): plain in the CPU bench."""
    return next(k for k in ("onnxruntime", "onnxruntime-CUDA", "onnxruntime-CPU") if k in medians)


_HEADER = (
    f"{'model':<34} {'batch':>5} {'runtime ms':>11} {'ort ms':>9} {'ort-spin ms':>11} {'openvino ms':>11} "
    f"{'vs best':>7} {'GFLOP/s':>8} {'% peak':>6}  cold (empty/warm cache)"
)


def _format_row(row: dict, ours: str) -> str:
    """One line of the table: times in ms, this runtime's ratio to the best peer, its GFLOP/s and % of peak."""
    m = row["median_ms"]
    ov = f"{m['openvino']:11.3f}" if "openvino" in m else f"{'n/a':>11}"
    spin = f"{m['onnxruntime-spinning']:11.3f}" if "onnxruntime-spinning" in m else f"{'n/a':>11}"
    ratio = f"{row['ratio_to_best_peer']:7.2f}" if row["best_peer"] else f"{'n/a':>7}"
    pct = row.get("percent_of_peak")
    cold = row.get("cold_start")
    cold_text = f"  {cold['empty_cache_s']:.2f}/{cold['warm_cache_s']:.2f} s" if cold else ""
    ort = _onnxruntime_key(m)
    label = "" if ort == "onnxruntime" else f"  ({ort})"
    return (
        f"{row['model']:<34} {row['batch']:>5} {m[ours]:11.3f} {m[ort]:9.3f} "
        f"{spin} {ov} {ratio} {row['gflops'][ours]:8.1f} "
        f"{'' if pct is None else f'{pct:6.1f}'}{cold_text}{label}"
    )


def markdown_table(report: dict) -> str:
    """The report as BENCHMARKS.md's table: per case the medians of this runtime and each peer (ms), the ratio
    to the best peer, this runtime's GFLOP/s and share of the measured peak."""
    ours = f"runtime-{report['backend']}"
    first = _onnxruntime_key(report["results"][0]["median_ms"]) if report["results"] else "onnxruntime"
    ort_head = "onnxruntime ms (no spinning, alternating)" if first == "onnxruntime" else f"{first} ms"
    lines = [
        f"| model | batch | GFLOP | this runtime ms | {ort_head} | onnxruntime ms "
        "(default spinning, alone) | OpenVINO ms (f32) | ratio to the best peer | GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        m = row["median_ms"]
        ov = f"{m['openvino']:.3f}" if "openvino" in m else f"n/a ({row.get('openvino_na', 'not run')})"
        spin = f"{m['onnxruntime-spinning']:.3f}" if "onnxruntime-spinning" in m else "n/a"
        best = (f"**{row['ratio_to_best_peer']:.2f}** ({row['best_peer']})" if row["best_peer"]
                else "n/a (no CUDA peer)")  # fmt: skip
        ort = _onnxruntime_key(m)
        pct = row.get("percent_of_peak")
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['gflop']:.4f} | {m[ours]:.3f} | {m[ort]:.3f} | "
            f"{spin} | {ov} | {best} | "
            f"{row['gflops'][ours]:.1f} | {'' if pct is None else f'{pct:.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def write_json(report: dict, path) -> Path:
    from zoo.io import atomic_write

    return atomic_write(path, (json.dumps(report, indent=2) + "\n").encode())
