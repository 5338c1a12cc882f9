"""``zoo demo``: the sparse autoencoder end to end on the bundled MNIST digits, PyTorch -> ONNX -> this runtime.

Without a GPU the CUDA backend runs in Numba's CUDA simulator (a separate process, since the simulator is
chosen when numba is imported) on a few images: the simulator interprets each GPU thread in Python."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

SIMULATED_BATCH = 4


def _cuda_outputs(onnx_path: Path, x: np.ndarray, work: Path) -> tuple[np.ndarray, str]:
    """The CUDA backend's first output for x, on the GPU if there is one, else in the simulator."""
    try:
        from numba import cuda

        has_gpu = cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        import runtime

        sess = runtime.InferenceSession(str(onnx_path), backend="cuda")
        return sess.run(None, {sess.get_inputs()[0].name: x})[0], "cuda (GPU)"
    x = x[:SIMULATED_BATCH]
    np.save(work / "cuda_input.npy", x)
    out = work / "cuda_output.npy"
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "run",
        str(onnx_path),
        "--input",
        str(work / "cuda_input.npy"),
        "--output",
        str(out),
        "--backend",
        "cuda",
        "--force",
    ]
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise click.ClickException(f"the simulated CUDA run failed: {last}")
    return np.load(out), f"cuda (simulator, batch {SIMULATED_BATCH})"


def _earlier_demo(out: Path) -> bool:
    """Whether ``out`` holds what an earlier `zoo demo` wrote (its metrics.json names the demo's command)."""
    import json

    try:
        return json.loads((out / "metrics.json").read_text())["command"].startswith("zoo demo")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def run_demo(out: Path, epochs: int, seed: int, force: bool = False) -> None:
    import onnxruntime as ort

    import runtime
    from zoo.checkpoint import load_checkpoint
    from zoo.data import load_dataset
    from zoo.export import export_onnx
    from zoo.train import train

    started = time.perf_counter()
    again = force or _earlier_demo(out)
    out.mkdir(parents=True, exist_ok=True)
    click.echo(f"1. training sparse-ae for {epochs} epochs on the bundled MNIST digits -> {out}")
    result = train(
        "sparse-ae",
        out,
        epochs=epochs,
        seed=seed,
        progress=False,
        command=f"zoo demo --out {out} --epochs {epochs} --seed {seed}",
        force=again,  # a folder an earlier demo wrote is the demo's own; any other non-empty folder is refused
    )
    final = result["final"]
    click.echo(
        f"   held-out MSE {final['val_mse']:.4f}, mean rho_hat {final['mean_rho_hat']:.4f} "
        f"(rho {final['rho']}), KL term {final['kl_term']:.4f}, {result['train_seconds']:.1f} s"
    )

    onnx_path = out / "sparse-ae.onnx"
    click.echo(f"2. exporting to {onnx_path}")
    model, meta = load_checkpoint(out / "sparse-ae.safetensors")
    X = load_dataset("mnist", "val", size=(28, 28)).flat  # (500, 784)
    report = export_onnx(model, onnx_path, data=(X[:8], None), metrics=meta["metrics"], overwrite=True)
    click.echo(
        f"   nodes: {' '.join(report['nodes'])}; checker passed; IR {report['ir_version']}, opset {report['opset']}"
    )

    click.echo(f"3. running {onnx_path.name} on {len(X)} held-out digits")
    oracle = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    expected = oracle.run(None, {"image": X})[0]
    ort_ms = (time.perf_counter() - t) * 1e3
    rows = [("onnxruntime (CPU provider)", len(X), 0.0, ort_ms)]
    cpu = runtime.InferenceSession(str(onnx_path), backend="cpu")
    cpu.run(None, {"image": X})  # compile the kernels (serial and parallel variants) outside the timing
    t = time.perf_counter()
    got = cpu.run(None, {"image": X})[0]
    rows.append(("runtime cpu (Numba)", len(X), float(np.abs(got - expected).max()), (time.perf_counter() - t) * 1e3))
    t = time.perf_counter()
    got, label = _cuda_outputs(onnx_path, X, out)
    rows.append(
        (
            f"runtime {label}",
            len(got),
            float(np.abs(got - expected[: len(got)]).max()),
            (time.perf_counter() - t) * 1e3,
        )
    )
    click.echo(f"   {'backend':<44} {'batch':>5}  {'max |y - y_ort|':>15}  {'ms':>9}")
    for name, n, err, ms in rows:
        click.echo(f"   {name:<44} {n:>5}  {err:>15.3g}  {ms:>9.1f}")
    worst = max(r[2] for r in rows)
    verdict = "agree" if worst <= 1e-5 else "DISAGREE"
    click.echo(f"   all backends {verdict} with onnxruntime to {worst:.3g} (tolerance 1e-5)")
    click.echo("4. pictures")
    for p in result["pictures"]:
        click.echo(f"   {p}")
    click.echo(f"demo finished in {time.perf_counter() - started:.1f} s")
    if worst > 1e-5:
        raise click.ClickException("a backend disagreed with onnxruntime beyond 1e-5")
