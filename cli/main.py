"""``zoo``: train, export, run and inspect the zoo's models. Heavy imports (torch, numba) happen inside the
commands, so ``zoo --help`` is instant and the inference commands never import torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

BACKEND_CHOICES = ["cpu", "cuda", "ort"]


class ZooGroup(click.Group):
    """Turns the project's own errors into one-line messages and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        from runtime.errors import ZooRuntimeError
        from zoo.errors import ZooError

        try:
            return super().invoke(ctx)
        except (ZooError, ZooRuntimeError) as e:
            raise click.ClickException(str(e)) from None
        except ModuleNotFoundError as e:
            extra = {
                "torch": "torch",
                "safetensors": "torch",
                "onnxruntime": "test",
                "mlxtend": "torch",
                "sklearn": "torch",
                "numba_cuda": "cuda",
            }.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            raise click.ClickException(
                f"this command needs the '{e.name}' package; install it with: pip install 'deconv-zoo[{extra}]'"
            ) from None


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option("0.1.0", prog_name="zoo")
def cli():
    """Deconv Zoo: autoencoders, deconvolution and GANs, trained in PyTorch and served by a torch-free
    Numba / Numba-CUDA ONNX runtime."""


def weights_dir_default() -> Path:
    from zoo.cards import default_weights_dir

    return default_weights_dir()


@cli.command("list")
def list_cmd():
    """Registered models, their shipped weights and headline metrics."""
    from zoo.cards import load_cards

    cards = load_cards(weights_dir_default())
    try:
        import zoo

        names = [(n, zoo.get_model_entry(n).description) for n in zoo.list_models()]
    except ModuleNotFoundError:  # no torch: the shipped cards still say what there is
        names = sorted({(c["model"], c.get("description", "")) for c in cards})
    rows = [("model", "shipped weights", "headline metric", "description")]
    for name, description in names:
        mine = [c for c in cards if c["model"] == name]
        weights = ", ".join(c["name"] for c in mine) or "-"
        headline = (
            ", ".join(f"{c['headline']}={c['metrics'].get(c['headline'], float('nan')):.4g}" for c in mine) or "-"
        )
        rows.append((name, weights, headline, description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])


def _parse_overrides(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="--set")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@cli.command()
@click.argument("model")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs (default: the model's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size (default: the model's).")
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Adam step (default: the model's).",
)
@click.option("--seed", type=int, default=0, help="Seed for initialisation and shuffling: same seed, same weights.")
@click.option("--data", default=None, help="mnist, digits8, a folder of images or an .npy file (default: the model's).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N training examples.")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field, e.g. hidden=100."
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output folder [runs/MODEL].")
@click.option("--force", is_flag=True, help="Train into a folder that already holds a trained model.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from OUT/checkpoint.safetensors (same model, config, data and seed).",
)
def train(model, epochs, batch_size, lr, seed, data, limit, overrides, out_dir, force, quiet, resume):
    """Train MODEL; writes a checkpoint every epoch, metrics.json and the pictures. Under torchrun
    (--nproc_per_node=N) each process trains on 1/N of every batch; rank 0 writes the files."""
    from zoo.errors import ZooError
    from zoo.train import train as run_training

    out = Path(out_dir or Path("runs") / model)
    final = out / f"{model}.safetensors"
    if final.exists() and not force:
        raise ZooError(f"'{final}' already exists; choose another --out or pass --force to train over it")
    result = run_training(
        model,
        out,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        data=data,
        limit=limit,
        progress=not quiet,
        resume=resume,
        **_parse_overrides(overrides),
    )
    if result["rank"] != 0:  # under torchrun, rank 0 reports
        return
    shown = ", ".join(f"{k}={v:.4g}" for k, v in result["final"].items() if isinstance(v, float))
    click.echo(f"trained {model} in {result['train_seconds']:.1f} s: {shown}")
    click.echo(f"weights: {final}")
    for p in [out / "metrics.json", *result["pictures"]]:
        click.echo(f"wrote {p}")


@cli.command()
@click.argument("model")
@click.option(
    "--weights",
    "weights_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Checkpoint (.safetensors).",
)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--opset", type=click.IntRange(17, 23), default=18, help="ONNX opset of the default domain.")
@click.option("--part", default=None, help="For models exported in parts (a GAN): generator or discriminator.")
@click.option("--force", is_flag=True, help="Overwrite an existing ONNX file.")
def export(model, weights_path, out_path, opset, part, force):
    """Export MODEL's trained weights to a checked ONNX file (and a test_data_set_0 folder beside it)."""
    from zoo.checkpoint import load_checkpoint
    from zoo.data import load_dataset
    from zoo.errors import ZooError
    from zoo.export import export_onnx
    from zoo.io import check_writable

    check_writable(out_path, force)
    net, meta = load_checkpoint(weights_path)
    if meta["model"] != model:
        raise ZooError(f"'{weights_path}' holds a '{meta['model']}' checkpoint, not '{model}'")
    try:
        val = load_dataset(
            meta.get("data", net.config.dataset), "val", tuple(net.config.image_size), getattr(net.config, "nc", 1)
        )
        data = (val.images, val.labels)
    except ZooError:
        data = None  # the training data is not here: the test data set is made from random inputs
    report = export_onnx(net, out_path, part=part, data=data, metrics=meta.get("metrics"), overwrite=force, opset=opset)
    click.echo(
        f"wrote {report['path']} (opset {report['opset']}, IR {report['ir_version']}, "
        f"nodes: {' '.join(report['nodes'])})"
    )
    for k, v in report.items():
        if k.startswith("max_abs_err"):
            click.echo(f"  {k} = {v:.3g} on a batch of {report['batch']}")
    click.echo(f"wrote {report['test_data']}")


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Name of the shipped weights, e.g. sparse-ae-mnist.")
@click.option(
    "--weights-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Target folder [the repo's weights/].",
)
@click.option("--force", is_flag=True, help="Replace weights of the same name.")
def publish(run_dir, name, weights_dir, force):
    """Ship a finished `zoo train` run: checkpoint, checked ONNX export, model card, manifest sha256."""
    from zoo.publish import publish as publish_run

    card = publish_run(run_dir, name, weights_dir or weights_dir_default(), overwrite=force)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in card["metrics"].items() if isinstance(v, float))
    click.echo(f"published {name} ({card['model']}): {shown}")


def _read_array(path: str):
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise click.BadParameter(f"'{path}' does not exist", param_hint="--input")
    if p.suffix == ".pb":
        import onnx
        from onnx import numpy_helper

        t = onnx.TensorProto()
        try:
            t.ParseFromString(p.read_bytes())
        except Exception:
            raise click.BadParameter(f"'{path}' is not a serialized ONNX TensorProto", param_hint="--input") from None
        return numpy_helper.to_array(t)
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise click.BadParameter(f"'{path}' is not a .npy array ({e})", param_hint="--input") from None


def open_session(model_path: str, backend: str):
    """An inference session on ``backend``: this runtime's cpu/cuda, or ``ort`` (onnxruntime's CPU provider)."""
    if backend == "ort":
        import onnxruntime as ort

        return ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    import runtime

    return runtime.InferenceSession(model_path, backend=backend)


@cli.command()
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--input",
    "inputs",
    multiple=True,
    required=True,
    metavar="[NAME=]FILE",
    help="Input array (.npy or ONNX .pb); NAME= is needed only for models with several inputs.",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write: .npy for one output, .npz for all outputs by name.",
)
@click.option("--output-name", default=None, help="Which output goes to a .npy file [the first].")
@click.option(
    "--backend",
    type=click.Choice(BACKEND_CHOICES),
    default="cpu",
    help="cpu/cuda: this runtime; ort: onnxruntime.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def run(model_path, inputs, output_path, output_name, backend, force):
    """Run MODEL.onnx on arrays from files (no torch is imported)."""
    import io

    import numpy as np

    from zoo.io import atomic_write, check_writable

    out = check_writable(output_path, force)
    if out.suffix not in (".npy", ".npz"):
        raise click.BadParameter(f"'{output_path}' must end in .npy or .npz", param_hint="--output")
    named, positional = {}, []
    for item in inputs:
        name, sep, path = item.partition("=")
        if sep and not Path(item).exists():
            named[name] = _read_array(path)
        else:
            positional.append(_read_array(item))
    sess = open_session(model_path, backend)
    if positional:
        free = [i.name for i in sess.get_inputs() if i.name not in named]
        if len(positional) > len(free):
            raise click.BadParameter(
                f"got {len(positional)} unnamed inputs for the model's inputs {free}; name them as NAME=FILE",
                param_hint="--input",
            )
        named.update(zip(free, positional))
    names = [o.name for o in sess.get_outputs()]
    outputs = sess.run(None, named)
    buf = io.BytesIO()
    if out.suffix == ".npz":
        np.savez(buf, **dict(zip(names, outputs)))
    else:
        if output_name is not None and output_name not in names:
            raise click.BadParameter(
                f"unknown output '{output_name}'; the model's outputs are {names}", param_hint="--output-name"
            )
        k = names.index(output_name) if output_name else 0
        np.save(buf, outputs[k])
    atomic_write(out, buf.getvalue(), overwrite=force)
    for name, y in zip(names, outputs):
        click.echo(f"{name}: {y.dtype} {tuple(y.shape)}", err=True)
    click.echo(f"wrote {out} ({backend})")


@cli.command()
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(exists=True, dir_okay=False))
def info(model_path):
    """Inputs, outputs, ops and metadata of an ONNX file (as this runtime loads it)."""
    import runtime

    sess = runtime.InferenceSession(model_path, backend="cpu", optimize_graph=False)
    for arg in sess.get_inputs():
        click.echo(f"input  {arg.name}: {arg.type} {arg.shape}")
    for arg in sess.get_outputs():
        click.echo(f"output {arg.name}: {arg.type} {arg.shape}")
    click.echo("nodes  " + " ".join(n.op_type for n in sess._graph.nodes))
    for k, v in sess.get_modelmeta().custom_metadata_map.items():
        click.echo(f"meta   {k} = {v}")


def _generator_path(model: str) -> Path:
    """A shipped generator's ONNX file from its weights name (dcgan-mnist, cgen-mnist), or a path."""
    p = Path(model)
    if p.suffix == ".onnx":
        return p
    folder = weights_dir_default()
    for candidate in (folder / f"{model}.generator.onnx", folder / f"{model}.onnx"):
        if candidate.is_file():
            return candidate
    shipped = sorted(q.name.split(".")[0] for q in folder.glob("*.onnx"))
    raise click.BadParameter(f"no shipped generator '{model}' in {folder}; shipped: {', '.join(shipped)}")


@cli.command()
@click.argument("model")
@click.option("--n", "count", type=click.IntRange(1, 1024), default=64, help="Number of samples.")
@click.option("--seed", type=int, default=0, help="Seed of the latent points.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="cpu", help="cpu/cuda: this runtime; ort.")
@click.option("--interpolate", is_flag=True, help="A row of images between two latent points (or two class codes).")
@click.option("--steps", type=click.IntRange(2, 64), default=10, help="Images in the --interpolate row.")
@click.option("--classes", nargs=2, type=int, default=(0, 9), help="Class codes to interpolate between (cgen).")
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), default=None, help="PNG to write [MODEL-samples.png]."
)
@click.option("--force", is_flag=True, help="Overwrite an existing PNG.")
def sample(model, count, seed, backend, interpolate, steps, classes, out_path, force):
    """Draw samples from a generator (dcgan-mnist, cgen-mnist or an ONNX file) into a PNG grid (no torch)."""
    import math

    import numpy as np

    from zoo.io import check_writable
    from zoo.pictures import save_png, tile_grid

    path = _generator_path(model)
    out = check_writable(out_path or f"{Path(model).stem}-{'interpolation' if interpolate else 'samples'}.png", force)
    sess = open_session(str(path), backend)
    (arg,) = sess.get_inputs()
    width = arg.shape[1]
    if not isinstance(width, int):
        raise click.BadParameter(f"'{path}' has input {arg.name} of shape {arg.shape}; expected (batch, width)")
    rng = np.random.default_rng(seed)
    if arg.name == "class_code":
        a, b = (np.eye(width, dtype=np.float32)[c % width] for c in classes)
        codes = np.eye(width, dtype=np.float32)[np.arange(count) % width]  # (count, classes), class by column
    else:
        a, b = rng.standard_normal((2, width)).astype(np.float32)
        codes = rng.standard_normal((count, width)).astype(np.float32)  # (count, nz)
    if interpolate:
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
        codes = (1 - t) * a + t * b  # (steps, width): straight line between the two points
    (images,) = sess.run(None, {arg.name: np.ascontiguousarray(codes)})[:1]  # (n, C, H, W)
    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("output_range") == "[-1, 1]":
        images = (images + 1) / 2
    images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    cols = len(images) if interpolate else (width if arg.name == "class_code" else int(math.ceil(math.sqrt(count))))
    grid = tile_grid(np.clip(images, 0, 1), cols=min(cols, len(images)))
    scale = max(1, 256 // grid.shape[1]) if interpolate else 2
    from PIL import Image

    picture = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    save_png(out, picture)
    click.echo(f"wrote {out} ({len(images)} samples of {path.name}, {backend})")


@cli.command()
@click.argument("model")
@click.option(
    "--image",
    "image_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="An image file or an (H, W) .npy array, resized to the model's input [the first held-out canvas].",
)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), default=None, help="PNG to write [MODEL-stages.png]."
)
@click.option("--force", is_flag=True, help="Overwrite an existing PNG.")
def visualize(model, image_path, out_path, force):
    """The decoder's activations after each unpooling and deconvolution stage for one input, coarse to fine
    (DeconvNet: shipped weights such as deconvnet-digits, or a .safetensors checkpoint)."""
    import numpy as np

    from zoo.checkpoint import load_checkpoint
    from zoo.data import load_dataset, load_image_folder
    from zoo.errors import ZooError
    from zoo.io import check_writable
    from zoo.pictures import save_png

    path = Path(model)
    if path.suffix != ".safetensors":
        path = weights_dir_default() / f"{model}.safetensors"
        if not path.is_file():
            raise click.BadParameter(f"no shipped weights '{model}' in {path.parent}; pass a .safetensors checkpoint")
    out = check_writable(out_path or f"{path.name.split('.')[0]}-stages.png", force)
    net, meta = load_checkpoint(path)
    if not hasattr(net, "decoder_stages_picture"):
        raise ZooError(f"'{meta['model']}' has no decoder stages to show; expected a DeconvNet (deconvnet-*)")
    size = tuple(net.config.image_size)
    if image_path is None:
        image = load_dataset(net.config.dataset, "val", size=size).images[0]  # (H, W)
    elif image_path.endswith(".npy"):
        image = np.load(image_path, allow_pickle=False).astype(np.float32)
        if image.shape != size or not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ZooError(f"'{image_path}' holds {image.shape} values; expected a {size} array in [0, 1]")
    else:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as folder:  # the folder loader reads, converts and resizes one file
            shutil.copy(image_path, Path(folder) / Path(image_path).name)
            image = load_image_folder(folder, size)[0]
    save_png(out, net.decoder_stages_picture(image))
    click.echo(f"wrote {out} ({meta['model']}, {len(net.config.encoder)} unpooling stages)")


@cli.command()
@click.option("--models", default=None, help="Comma-separated shipped weights or model names [all shipped].")
@click.option("--batch", "batches", default="1,64", help="Comma-separated batch sizes.")
@click.option("--backend", type=click.Choice(["cpu", "cuda"]), default="cpu", help="This runtime's backend.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for every runner [all cores].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write every figure here.")
@click.option("--markdown", is_flag=True, help="Also print the table as Markdown (BENCHMARKS.md's form).")
@click.option("--cold/--no-cold", default=True, help="Also time a fresh process's first result.")
@click.option("--weights-dir", type=click.Path(file_okay=False), default=None, help="Where the ONNX files are.")
@click.option(
    "--random-weights/--no-random-weights",
    default=True,
    help="Also the architectures without shipped weights (dcgan-64), exported with seeded random weights.",
)
def bench(models, batches, backend, threads, json_path, markdown, cold, weights_dir, random_weights):
    """Time this runtime against onnxruntime and OpenVINO (and PyTorch, onnx.reference) on the shipped ONNX files
    and on dcgan-64 and deconvnet-vgg16 with random weights. Cold start uses a fresh Numba cache inside
    $NUMBA_CACHE_DIR when set."""
    import tempfile

    from zoo.bench import markdown_table, random_weight_cases, run_bench, shipped_cases, write_json

    try:
        sizes = [int(b) for b in batches.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"'{batches}' is not a comma-separated list of integers", param_hint="--batch"
        ) from None
    names = models.split(",") if models else None
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        cases = shipped_cases(Path(weights_dir or weights_dir_default()), sizes, names)
        if random_weights:
            cases += random_weight_cases(Path(tmp), sizes, names)
        if not cases:
            raise click.BadParameter(f"no shipped or benchmarked model matches {models!r}", param_hint="--models")
        report = run_bench(cases, backend=backend, threads=threads, cold=cold, log=click.echo)
    if markdown:
        click.echo(markdown_table(report))
    if json_path:
        click.echo(f"wrote {write_json(report, json_path)}")


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/demo", help="Output folder.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, help="Training epochs for the demo model.")
@click.option("--seed", type=int, default=0, help="Training seed.")
def demo(out_dir, epochs, seed):
    """The main job on the bundled data: train the sparse autoencoder briefly, export it, run the ONNX file on
    this runtime's CPU and CUDA backends and on onnxruntime, print the agreement, write the pictures."""
    from cli.demo import run_demo

    run_demo(Path(out_dir), epochs=epochs, seed=seed)


def main():
    cli(prog_name="zoo")


if __name__ == "__main__":
    sys.exit(main())
