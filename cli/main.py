"""``zoo``: train, export, run and inspect the zoo's models. Heavy imports (torch, numba) happen inside the
commands, so ``zoo --help`` is instant and the inference commands never import torch. Every error is one line
and a non-zero exit (``ZOO_DEBUG=1`` shows the traceback of an unexpected one); whatever a file put in a name,
a metadata value or a message is printed with its control characters escaped (``zoo.text.printable``)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path

import click

BACKEND_CHOICES = ["cpu", "cuda", "ort"]


class ZooGroup(click.Group):
    """Every error as one line and a non-zero exit, never a traceback: the project's own errors and click's as
    they are, an OSError as the file that could not be read or written, anything else as its type and message
    (ZOO_DEBUG=1 lets those through with their traceback). Every message goes through ``printable``: text a
    file put in it cannot drive the terminal. A real Ctrl-C stays click's ``Aborted!``."""

    def invoke(self, ctx):
        from zoo.text import printable

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as e:
            e.message = printable(e.message)
            raise
        except Exception as e:
            message = one_line_message(e)
            if message is None:
                raise
            raise click.ClickException(printable(message)) from None


MISSING_PACKAGE_EXTRAS = {
    "torch": "torch",
    "safetensors": "torch",
    "onnxruntime": "test",
    "mlxtend": "torch",
    "sklearn": "torch",
    "numba_cuda": "cuda",
}


def one_line_message(e: Exception) -> str | None:
    """The one-line message for an exception a command let through, or None to let it through as it is."""
    from zoo.errors import ZooError

    # A runtime error can only come from a runtime already imported; importing it here would cost every
    # command numba's start-up.
    runtime_errors = sys.modules.get("runtime.errors")
    if isinstance(e, ZooError) or (runtime_errors is not None and isinstance(e, runtime_errors.ZooRuntimeError)):
        return str(e)
    extra = MISSING_PACKAGE_EXTRAS.get((e.name or "").split(".")[0]) if isinstance(e, ModuleNotFoundError) else None
    if extra is not None:
        return f"this command needs the '{e.name}' package; install it with: pip install 'deconv-zoo[{extra}]'"
    if os.environ.get("ZOO_DEBUG") == "1" or (isinstance(e, OSError) and e.errno == errno.EPIPE):
        return None  # click itself ends quietly on a closed pipe
    if isinstance(e, OSError) and e.filename is not None:
        return f"cannot read or write '{e.filename}': {e.strerror or e}"
    return f"unexpected {type(e).__name__}: {e} (ZOO_DEBUG=1 shows the traceback)"


@contextlib.contextmanager
def writing(path):
    """An OSError raised while writing ``path`` (disk full, a /proc or read-only folder, a name too long) as the
    one-line error that names the file."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.EPIPE or os.environ.get("ZOO_DEBUG") == "1":
            raise
        raise click.ClickException(f"cannot write '{path}': {e.strerror or e}") from None


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option("0.1.0", prog_name="zoo")
def cli():
    """Deconv Zoo: autoencoders, deconvolution and GANs, trained in PyTorch and served by a torch-free
    Numba / Numba-CUDA ONNX runtime."""


def weights_dir_default() -> Path:
    from zoo.cards import default_weights_dir

    return default_weights_dir()


@cli.command("list")
@click.argument("pattern", required=False)
@click.option("--pretrained", is_flag=True, help="Only the models with shipped weights.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model (name, description, weights).")
def list_cmd(pattern, pretrained, as_json):
    """Registered models (PATTERN: a shell glob such as 'dcgan*'), their shipped weights and headline metrics."""
    import fnmatch

    from zoo.text import printable

    cards = _checked_cards(weights_dir_default())
    try:
        import zoo

        names = [(n, zoo.get_model_entry(n).description) for n in zoo.list_models()]
    except ModuleNotFoundError:  # no torch: the shipped cards still say what there is
        names = sorted({(c["model"], c.get("description", "")) for c in cards})
    names = [(n, d) for n, d in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]
    if pretrained:
        names = [(n, d) for n, d in names if any(c["model"] == n for c in cards)]
    if as_json:
        for name, description in names:
            weights = {c["name"]: c["metrics"] for c in cards if c["model"] == name}
            click.echo(json.dumps({"model": name, "description": description, "weights": weights}, sort_keys=True))
        return
    rows = [("model", "shipped weights", "headline metric", "description")]
    for name, description in names:
        mine = [c for c in cards if c["model"] == name]
        weights = ", ".join(c["name"] for c in mine) or "-"
        headline = ", ".join(f"{c.get('headline')}={_figure(c['metrics'].get(c.get('headline')))}" for c in mine)
        rows.append(tuple(printable(cell) for cell in (name, weights, headline or "-", description)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])


CARD_FIELDS = {"model": str, "name": str, "metrics": dict}


def _checked_cards(folder: Path) -> list[dict]:
    """The model cards in ``folder``, each refused unless it holds the fields `zoo list` shows."""
    from zoo.cards import load_cards
    from zoo.errors import ZooError

    try:
        cards = load_cards(folder)
    except UnicodeDecodeError as e:
        raise ZooError(f"a model card in '{folder}' is not UTF-8 text ({e}); expected JSON") from None
    for i, card in enumerate(cards):
        if not isinstance(card, dict):
            raise ZooError(f"model card #{i + 1} in '{folder}' is a JSON {type(card).__name__}; expected an object")
        wrong = [k for k, kind in CARD_FIELDS.items() if not isinstance(card.get(k), kind)]
        wrong += [] if isinstance(card.get("description", ""), str) else ["description"]
        if wrong:
            label = card["name"] if isinstance(card.get("name"), str) else f"#{i + 1}"
            raise ZooError(
                f"model card '{label}' in '{folder}' has no valid {', '.join(wrong)}; expected a model and a name "
                "(strings) and metrics (an object), as `zoo publish` writes them"
            )
    return cards


def _figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


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
@click.option(
    "--seed", type=int, default=None, help="Seed for initialisation and shuffling: same seed, same weights [0]."
)
@click.option("--data", default=None, help="mnist, digits8, a folder of images or an .npy file (default: the model's).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N training examples.")
@click.option(
    "--device",
    default=None,
    metavar="auto|cpu|cuda[:N]",
    help="Where to train: auto takes a GPU when one is usable (fp32, TF32 off) [auto].",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="A setting of the model's config (hidden=100) or of the run (epochs=5); VALUE is read as JSON.",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output folder [runs/MODEL].")
@click.option(
    "--force",
    is_flag=True,
    help="Train into a folder that already holds files (a run, finished or not); with --resume: extend a finished run.",
)
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from OUT/checkpoint.safetensors (same model, config, data and seed).",
)
def train(model, epochs, batch_size, lr, seed, data, limit, device, overrides, out_dir, force, quiet, resume):
    """Train MODEL; writes a checkpoint every epoch, metrics.json and the pictures. Under torchrun
    (--nproc_per_node=N) each process trains on 1/N of every batch; rank 0 writes the files."""
    from zoo.train import train as run_training

    options = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, data=data, limit=limit, device=device)
    settings = _parse_overrides(overrides)
    twice = sorted(k for k, v in options.items() if v is not None and k in settings)
    if twice:
        raise click.BadParameter(f"{', '.join(twice)} given both as an option and in --set", param_hint="--set")
    out = Path(out_dir or Path("runs") / model)
    final = out / f"{model}.safetensors"
    result = run_training(model, out, progress=not quiet, resume=resume, force=force, **{**options, **settings})
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
    from zoo.checkpoint import load_checkpoint, training_data
    from zoo.data import load_dataset
    from zoo.errors import ZooError
    from zoo.export import export_onnx, provenance_of
    from zoo.io import check_writable

    with writing(out_path):
        check_writable(out_path, force)
    net, meta = checked_checkpoint(load_checkpoint, weights_path)
    if meta["model"] != model:
        raise ZooError(f"'{weights_path}' holds a '{meta['model']}' checkpoint, not '{model}'")
    try:
        val = load_dataset(training_data(meta), "val", tuple(net.config.image_size), net.image_channels)
        data = (val.images, val.labels)
    except ZooError:
        data = None  # the training data is not here: the test data set is made from random inputs
    with writing(out_path):
        report = export_onnx(
            net,
            out_path,
            part=part,
            data=data,
            metrics=meta.get("metrics"),
            provenance=provenance_of(meta),
            overwrite=force,
            opset=opset,
        )
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
@click.option(
    "--license",
    "license_name",
    default=None,
    help="License recorded on the card [MIT in the repo's weights/, else unspecified].",
)
def publish(run_dir, name, weights_dir, force, license_name):
    """Ship a finished `zoo train` run: checkpoint, checked ONNX export, model card, manifest sha256.
    Publishing into the repo's own weights/ needs a clean checkout (the exports name their source commit)."""
    from zoo.publish import publish as publish_run

    card = publish_run(run_dir, name, weights_dir or weights_dir_default(), overwrite=force, license=license_name)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in card["metrics"].items() if isinstance(v, float))
    click.echo(f"published {name} ({card['model']}): {shown}")


def _read_array(path: str):
    p = Path(path)
    if not p.is_file():
        raise click.BadParameter(f"'{path}' does not exist or is not a regular file", param_hint="--input")
    if p.suffix == ".pb":
        return _read_tensor_proto(p)
    return load_npy(p, "--input")


def load_npy(path: Path, param_hint: str):
    """The array in a .npy file, or a one-line refusal: pickled objects, a truncated, empty or huge-declared file,
    an .npz archive (which np.load reads whatever its name)."""
    import numpy as np

    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, MemoryError) as e:
        # An empty file is an EOFError, which click, left with it, reports as "Aborted!", as for Ctrl-D.
        message = f"'{path}' is not a .npy array ({type(e).__name__}: {e})"
        raise click.BadParameter(message, param_hint=param_hint) from None
    if not isinstance(a, np.ndarray):
        a.close()
        raise click.BadParameter(f"'{path}' is an .npz archive; expected one .npy array", param_hint=param_hint)
    return a


def _read_tensor_proto(path: Path):
    import onnx
    from onnx import numpy_helper

    t = onnx.TensorProto()
    try:
        t.ParseFromString(path.read_bytes())
    except Exception:
        raise click.BadParameter(f"'{path}' is not a serialized ONNX TensorProto", param_hint="--input") from None
    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
        # numpy_helper would open whatever file the tensor names, wherever it is.
        raise click.BadParameter(
            f"'{path}' keeps its values in another file (external data); expected them inside the .pb",
            param_hint="--input",
        )
    try:
        return numpy_helper.to_array(t)
    except Exception as e:  # a declared shape or type its data does not fill
        raise click.BadParameter(
            f"'{path}' holds a TensorProto that is no array ({type(e).__name__}: {e})", param_hint="--input"
        ) from None


def open_session(model_path: str, backend: str):
    """An inference session on ``backend``: this runtime's cpu/cuda, or ``ort`` (onnxruntime's CPU provider)."""
    if not Path(model_path).is_file():  # a FIFO or /dev/zero would never end
        raise click.BadParameter(f"'{model_path}' does not exist or is not a regular file", param_hint="MODEL")
    if backend == "ort":
        return OrtSession(model_path)
    import runtime

    return runtime.InferenceSession(model_path, backend=backend)


class OrtSession:
    """onnxruntime's CPU session, its errors (pybind11 types, messages over several lines) turned into one-line
    ClickExceptions and its C++ log silenced (it would print the file's names as they are)."""

    def __init__(self, path: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: every error also comes back as the exception
        self.path = path
        try:
            self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise click.ClickException(f"onnxruntime cannot load '{path}': {' '.join(str(e).split())}") from None

    def get_inputs(self):
        return self._session.get_inputs()

    def get_outputs(self):
        return self._session.get_outputs()

    def get_modelmeta(self):
        return self._session.get_modelmeta()

    def run(self, output_names, feed: dict) -> list:
        import numpy as np

        try:
            outputs = self._session.run(output_names, feed)
        except Exception as e:
            raise click.ClickException(f"onnxruntime cannot run '{self.path}': {' '.join(str(e).split())}") from None
        for arg, y in zip(self.get_outputs(), outputs):
            if not isinstance(y, np.ndarray):
                raise click.ClickException(
                    f"output '{arg.name}' of '{self.path}' is a {type(y).__name__} ({arg.type}); expected a tensor"
                )
        return outputs


@cli.command()
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--input",
    "inputs",
    multiple=True,
    required=True,
    metavar="[NAME=]FILE",
    help="An array (.npy or ONNX .pb), an image (.png, .jpg, ...) or a folder of images; images are prepared as "
    "the model's metadata says (size, channels, range, white strokes on black). NAME= only for several inputs.",
)
@click.option(
    "--output",
    "output_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Where to write: .npy for one output, .npz for all outputs by name, .png for a picture (a generator's "
    "grid, a segmenter's overlays with a key, a classifier's inputs and classes). Optional for image inputs.",
)
@click.option("--output-name", default=None, help="Which output goes to a .npy file [the first].")
@click.option(
    "--invert/--no-invert",
    default=None,
    help="Invert image inputs, or never [auto: dark ink on a light background is inverted, and said so].",
)
@click.option("--top", type=click.IntRange(1, 20), default=3, help="Classes shown per image for a classifier.")
@click.option(
    "--backend",
    type=click.Choice(BACKEND_CHOICES),
    default="cpu",
    help="cpu/cuda: this runtime; ort: onnxruntime.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def run(model_path, inputs, output_path, output_name, invert, top, backend, force):
    """Run MODEL.onnx on arrays or images from files (no torch is imported); for image inputs, what the model
    says of each is printed (a classifier's top classes, the classes a segmenter found)."""
    import io

    import numpy as np

    from zoo.images import InputSpec, preprocess
    from zoo.io import atomic_write, check_writable
    from zoo.pictures import describe_outputs, output_kind, outputs_picture, save_png
    from zoo.text import printable

    out = None
    if output_path is not None:
        with writing(output_path):
            out = check_writable(output_path, force)
        if out.suffix not in (".npy", ".npz", ".png"):
            raise click.BadParameter(f"'{output_path}' must end in .npy, .npz or .png", param_hint="--output")
    named, positional, images = {}, [], []
    for item in inputs:
        name, sep, path = item.partition("=")
        if sep and not Path(item).exists():
            named[name] = _read_array(path)
        elif _is_image_input(Path(item)):
            images += _image_files(Path(item))
        else:
            positional.append(_read_array(item))
    if images and (positional or named):
        raise click.BadParameter("give images or arrays, not both", param_hint="--input")
    if out is None and not images:
        raise click.BadParameter("an --output file is needed for array inputs (.npy, .npz or .png)")
    sess = open_session(model_path, backend)
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    shown_inputs, captions, spec = None, [printable(str(p)) for p in images], None
    if images:
        spec = InputSpec.from_session(sess)
        batch, notes = preprocess(images, spec, invert)
        for note in notes:
            click.echo(printable(note), err=True)
        named[spec.name] = batch
        lo, hi = spec.value_range
        grey = batch.reshape(len(batch), -1, *spec.size) if spec.flat else batch  # (N, C, H, W)
        shown_inputs = np.clip((grey.mean(axis=1) - lo) / (hi - lo), 0, 1)  # (N, H, W) in [0, 1]
    if positional:
        free = [i.name for i in sess.get_inputs() if i.name not in named]
        if len(positional) > len(free):
            raise click.BadParameter(
                f"got {len(positional)} unnamed inputs for the model's inputs {free}; name them as NAME=FILE",
                param_hint="--input",
            )
        named.update(zip(free, positional))
    names = [o.name for o in sess.get_outputs()]
    if out is not None and out.suffix == ".npz":
        check_npz_names(names)
    elif output_name is not None and output_name not in names:
        raise click.BadParameter(
            f"unknown output '{output_name}'; the model's outputs are {names}", param_hint="--output-name"
        )
    outputs = sess.run(None, named)
    flat = int(np.prod(spec.size)) * spec.channels if spec is not None and spec.flat else None
    kind = output_kind(outputs, names, meta, flat)
    if out is not None and out.suffix == ".png":
        picture = outputs_picture(kind, shown_inputs, outputs, names, meta, captions or [""] * len(outputs[0]))
        with writing(out):
            save_png(out, picture)
    elif out is not None:
        if out.suffix == ".npz":
            data = npz_bytes(dict(zip(names, outputs)))
        else:
            buf = io.BytesIO()
            np.save(buf, outputs[names.index(output_name) if output_name else 0], allow_pickle=False)
            data = buf.getvalue()
        with writing(out):
            atomic_write(out, data, overwrite=force)
    if images:
        for caption, line in zip(captions, describe_outputs(kind, outputs, names, meta, top)):
            click.echo(printable(f"{caption}: {line}"))
    for name, y in zip(names, outputs):
        click.echo(printable(f"{name}: {y.dtype} {tuple(y.shape)}"), err=True)
    if out is not None:
        click.echo(printable(f"wrote {out} ({backend})"))


def _is_image_input(path: Path) -> bool:
    from zoo.data import IMAGE_SUFFIXES

    return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES


def _image_files(path: Path) -> list[Path]:
    """An image file, or the image files in a folder (sorted, not recursive)."""
    from zoo.data import IMAGE_SUFFIXES

    if not path.is_dir():
        if not path.is_file():
            raise click.BadParameter(f"'{path}' does not exist or is not a regular file", param_hint="--input")
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise click.BadParameter(f"'{path}' holds no images ({', '.join(IMAGE_SUFFIXES)})", param_hint="--input")
    return files


def check_npz_names(names: list[str]) -> None:
    """Refuse output names that cannot be .npz members (NAME.npy inside a zip): a path, an empty name, twice."""
    for name in names:
        if name in ("", ".", "..") or any(c in name for c in "/\\\0") or len(name.encode()) > 60000:
            raise click.BadParameter(
                f"output name '{name}' cannot name an .npz member (expected no '/', '\\' or NUL, "
                "not empty, '.' or '..'); write that output to a .npy file with --output-name",
                param_hint="--output",
            )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise click.BadParameter(f"the model has two outputs named {twice}; expected distinct names", "--output")


def npz_bytes(arrays: dict) -> bytes:
    """An .npz archive as np.savez writes one (a stored NAME.npy member per array), built here because
    np.savez takes the names as keyword arguments: an output named ``allow_pickle`` was taken for the option
    and dropped, one named ``file`` raised a TypeError."""
    import io
    import zipfile

    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, a in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)
    return buf.getvalue()


@cli.command()
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(exists=True, dir_okay=False))
def info(model_path):
    """Inputs, outputs, ops and metadata of an ONNX file (as this runtime loads it); names and metadata are
    printed with their control characters escaped."""
    import runtime
    from zoo.text import printable

    sess = runtime.InferenceSession(model_path, backend="cpu", optimize_graph=False)
    lines = [f"input  {arg.name}: {arg.type} {arg.shape}" for arg in sess.get_inputs()]
    lines += [f"output {arg.name}: {arg.type} {arg.shape}" for arg in sess.get_outputs()]
    lines.append("nodes  " + " ".join(n.op_type for n in sess._graph.nodes))
    lines += [f"meta   {k} = {v}" for k, v in sess.get_modelmeta().custom_metadata_map.items()]
    for line in lines:
        click.echo(printable(line))


def _generator_path(model: str) -> Path:
    """A shipped generator's ONNX file from its weights name (dcgan-mnist, cdcgan-mnist, cgen-mnist), or a path."""
    p = Path(model)
    if p.suffix == ".onnx":
        return p
    folder = weights_dir_default()
    for candidate in (folder / f"{model}.generator.onnx", folder / f"{model}.onnx"):
        if candidate.is_file():
            return candidate
    shipped = sorted(q.name.split(".")[0] for q in folder.glob("*.onnx"))
    raise click.BadParameter(f"no shipped generator '{model}' in {folder}; shipped: {', '.join(shipped)}")


MAX_LATENT_WIDTH = 1 << 16  # a generator's input (batch, width); more is no generator the zoo ships


@cli.command()
@click.argument("model")
@click.option(
    "--n",
    "count",
    type=click.IntRange(1, 1024),
    default=None,
    help="Number of samples [64; with class codes and no --class: 8 rows of one per class].",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of the latent points.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="cpu", help="cpu/cuda: this runtime; ort.")
@click.option(
    "--class",
    "wanted",
    type=click.IntRange(min=0),
    default=None,
    help="Only this class (a generator with a class code, cdcgan-mnist or cgen-mnist, or one that reads its class "
    "from z, dcgan-mnist).",
)
@click.option("--interpolate", is_flag=True, help="A row of images between two latent points (or two class codes).")
@click.option("--steps", type=click.IntRange(2, 64), default=10, help="Images in the --interpolate row.")
@click.option(
    "--classes", nargs=2, type=int, default=(0, 9), help="Class codes to interpolate between (without --class)."
)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), default=None, help="PNG to write [MODEL-samples.png]."
)
@click.option("--force", is_flag=True, help="Overwrite an existing PNG.")
def sample(model, count, seed, backend, wanted, interpolate, steps, classes, out_path, force):
    """Draw samples from a generator (dcgan-mnist, cdcgan-mnist, cgen-mnist or an ONNX file) into a PNG grid
    (no torch)."""
    import math

    import numpy as np

    from zoo.io import check_writable
    from zoo.pictures import save_png, tile_grid
    from zoo.text import printable

    path = _generator_path(model)
    out_path = out_path or f"{Path(model).stem}-{'interpolation' if interpolate else 'samples'}.png"
    with writing(out_path):
        out = check_writable(out_path, force)
    sess = open_session(str(path), backend)
    latent, code = _generator_inputs(path, sess.get_inputs())
    k = code.shape[1] if code is not None else 0  # classes
    in_latent = _latent_classes(path, sess, latent) if code is None else 0  # classes read from z's first entries
    if wanted is not None and not (k or in_latent):
        raise click.BadParameter(
            f"'{path}' takes no class code (inputs: {latent.name}); drop --class", param_hint="--class"
        )
    if wanted is not None and wanted >= max(k, in_latent):
        raise click.BadParameter(f"{wanted}: '{path}' has classes 0 to {max(k, in_latent) - 1}", param_hint="--class")
    rng = np.random.default_rng(seed)
    by_column = code is not None and wanted is None and not interpolate  # one column per class
    if count is None:
        count = (k if latent is None else 8 * k) if by_column else 1 if latent is None and wanted is not None else 64
    feed = {}
    if interpolate:
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]  # (steps, 1)
        if code is not None and wanted is None:  # between two class codes, the latent point held
            a, b = (np.eye(k, dtype=np.float32)[c % k] for c in classes)
            feed[code.name] = (1 - t) * a + t * b  # (steps, classes)
            if latent is not None:
                feed[latent.name] = np.repeat(rng.standard_normal((1, latent.shape[1])).astype(np.float32), steps, 0)
        else:  # between two latent points, of one class when there is a class code
            if latent is None:
                raise click.BadParameter(f"'{path}' has no latent input to move along", param_hint="--interpolate")
            a, b = rng.standard_normal((2, latent.shape[1])).astype(np.float32)
            feed[latent.name] = (1 - t) * a + t * b  # (steps, nz): straight line between the two points
            if code is not None:
                feed[code.name] = np.repeat(np.eye(k, dtype=np.float32)[[wanted]], steps, 0)  # (steps, classes)
    else:
        if code is not None:
            which = np.full(count, wanted) if wanted is not None else np.arange(count) % k  # (count,)
            feed[code.name] = np.eye(k, dtype=np.float32)[which]  # (count, classes)
        if latent is not None:
            rows = math.ceil(count / k) if by_column else count
            z = rng.standard_normal((rows, latent.shape[1])).astype(np.float32)  # (rows, nz)
            feed[latent.name] = np.repeat(z, k, 0)[:count] if by_column else z  # a row shares its z
    if wanted is not None and in_latent:  # on a line between two such points the largest stays at the class
        feed[latent.name] = latent_of_class(feed[latent.name], in_latent, wanted)
    images = sess.run(None, {name: np.ascontiguousarray(v) for name, v in feed.items()})[0]  # (n, C, H, W)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or 0 in images.shape or images.dtype.kind not in "fiu":
        raise click.BadParameter(
            f"'{path}' gives a {images.dtype} output of shape {images.shape}; expected images (n, 1 or 3, H, W)",
            param_hint="MODEL",
        )
    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("output_range") == "[-1, 1]":
        images = (images + 1) / 2
    images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    cols = len(images) if interpolate else (k if by_column else int(math.ceil(math.sqrt(count))))
    grid = tile_grid(np.clip(images, 0, 1), cols=min(cols, len(images)))
    scale = max(2, 56 // images.shape[1])  # a grid and a strip alike: tiles of at least 56 pixels
    from PIL import Image

    picture = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with writing(out):
        save_png(out, picture)
    of_class = f" of class {wanted}" if wanted is not None else ""
    click.echo(printable(f"wrote {out} ({len(images)} samples{of_class} of {path.name}, {backend})"))


def latent_of_class(z, classes: int, wanted: int):
    """Latent points z (n, nz) with, in each row, the largest of the first ``classes`` entries swapped with entry
    ``wanted``: points of that class for a generator that draws the index of the largest, each drawn with the
    distribution N(0, 1) has given that class."""
    import numpy as np

    z = z.copy()  # (n, nz)
    rows, top = np.arange(len(z)), z[:, :classes].argmax(1)  # (n,)
    z[rows, top], z[rows, wanted] = z[rows, wanted], z[rows, top]
    return z


def _latent_classes(path: Path, sess, latent) -> int:
    """The classes a generator reads from its latent's first entries (the ``latent_classes`` metadata of
    dcgan-mnist: the class drawn is the index of the largest), or 0."""
    from zoo.text import printable

    value = sess.get_modelmeta().custom_metadata_map.get("latent_classes")
    if value is None:
        return 0
    if not (value.isascii() and value.isdigit() and 2 <= int(value) <= latent.shape[1]):
        raise click.BadParameter(
            f"'{path}' has metadata latent_classes '{printable(value[:40])}'; expected a count from 2 to its "
            f"latent width {latent.shape[1]}",
            param_hint="MODEL",
        )
    return int(value)


def _generator_inputs(path: Path, inputs: list):
    """(latent input or None, class-code input or None) of a generator: one tensor(float) input of shape
    (batch, width), latent points unless it is named class_code, or the two inputs z and class_code."""
    shapes = ", ".join(f"{arg.name} {arg.type} {arg.shape}" for arg in inputs) or "none"
    names = [arg.name for arg in inputs]

    def fits(arg) -> bool:
        shape = list(arg.shape or [])
        width = shape[1] if len(shape) == 2 else None
        return arg.type == "tensor(float)" and isinstance(width, int) and 0 < width <= MAX_LATENT_WIDTH

    if len(inputs) == 1 and fits(inputs[0]):
        return (None, inputs[0]) if names == ["class_code"] else (inputs[0], None)
    if sorted(names) == ["class_code", "z"] and all(fits(arg) for arg in inputs):
        by_name = {arg.name: arg for arg in inputs}
        return by_name["z"], by_name["class_code"]
    raise click.BadParameter(
        f"'{path}' has inputs {shapes}; expected a generator: one tensor(float) input of shape (batch, width), or "
        f"two named z and class_code, width at most {MAX_LATENT_WIDTH}",
        param_hint="MODEL",
    )


@cli.command()
@click.argument("model")
@click.option(
    "--image",
    "image_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="An image file or an (H, W) .npy array, prepared as `zoo run` prepares images [the first held-out canvas].",
)
@click.option(
    "--invert/--no-invert",
    default=None,
    help="Invert the image, or never [auto: dark ink on a light background is inverted, and said so].",
)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), default=None, help="PNG to write [MODEL-stages.png]."
)
@click.option("--force", is_flag=True, help="Overwrite an existing PNG.")
def visualize(model, image_path, invert, out_path, force):
    """The decoder's activations after each unpooling and deconvolution stage for one input, coarse to fine
    (DeconvNet: shipped weights such as deconvnet-digits, or a .safetensors checkpoint)."""
    from zoo.checkpoint import load_checkpoint, training_data
    from zoo.data import load_dataset
    from zoo.errors import ZooError
    from zoo.io import check_writable
    from zoo.pictures import save_png
    from zoo.text import printable

    path = Path(model)
    if path.suffix != ".safetensors":
        path = weights_dir_default() / f"{model}.safetensors"
        if not path.is_file():
            raise click.BadParameter(f"no shipped weights '{model}' in {path.parent}; pass a .safetensors checkpoint")
    out_path = out_path or f"{path.name.split('.')[0]}-stages.png"
    with writing(out_path):
        out = check_writable(out_path, force)
    net, meta = checked_checkpoint(load_checkpoint, path)
    if not hasattr(net, "decoder_stages_picture"):
        raise ZooError(f"'{meta['model']}' has no decoder stages to show; expected a DeconvNet (deconvnet-*)")
    size = tuple(net.config.image_size)
    if image_path is None:
        image = load_dataset(training_data(meta), "val", size=size).images[0]  # (H, W)
    else:
        from zoo.images import InputSpec, preprocess

        spec = InputSpec("image", size, 1, (0.0, 1.0), flat=False)
        batch, notes = preprocess([_read_image(Path(image_path))], spec, invert)  # (1, 1, H, W)
        for note in notes:
            click.echo(printable(note.replace("image:", f"{image_path}:", 1)), err=True)
        image = batch[0, 0]
    with writing(out):
        save_png(out, net.decoder_stages_picture(image))
    click.echo(printable(f"wrote {out} ({meta['model']}, {len(net.config.encoder)} unpooling stages)"))


def _read_image(path: Path):
    """One picture as floats in [0, 1], (H, W) or (H, W, 3): an .npy array or an image file."""
    import numpy as np

    from zoo.data import IMAGE_SUFFIXES, load_image
    from zoo.errors import ZooError

    if not path.is_file():  # a FIFO or /dev/zero would never end
        raise click.BadParameter(f"'{path}' is not a regular file", param_hint="--image")
    if path.suffix == ".npy":
        image = load_npy(path, "--image")
        if image.dtype.kind not in "biuf" or image.ndim not in (2, 3) or image.size == 0:
            raise ZooError(f"'{path}' holds a {image.dtype} array of shape {image.shape}; expected (H, W) numbers")
        image = image.astype(np.float32)
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ZooError(f"'{path}' holds values outside [0, 1]; expected an (H, W) array in [0, 1]")
        return image
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise click.BadParameter(
            f"'{path}' is neither .npy nor an image ({', '.join(IMAGE_SUFFIXES)})", param_hint="--image"
        )
    return load_image(path)


def checked_checkpoint(load, path):
    """``load(path)``, metadata that is no JSON or no config of the model it names refused in one line."""
    try:
        return load(path)
    except (ValueError, KeyError, TypeError) as e:
        raise click.ClickException(
            f"'{path}' has checkpoint metadata this zoo cannot use ({type(e).__name__}: {e}); expected the JSON "
            "model name and config a Deconv Zoo checkpoint carries"
        ) from None


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

    try:
        sizes = [int(b) for b in batches.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(
            f"'{batches}' is not a comma-separated list of batch sizes; expected integers >= 1", param_hint="--batch"
        )
    from zoo.bench import markdown_table, random_weight_cases, run_bench, shipped_cases, write_json

    names = models.split(",") if models else None
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        cases = shipped_cases(Path(weights_dir or weights_dir_default()), sizes, names)
        if random_weights:
            cases += random_weight_cases(Path(tmp), sizes, names)
        if not cases:
            raise click.BadParameter(f"no shipped or benchmarked model matches {models!r}", param_hint="--models")
        report = run_bench(
            cases, backend=backend, threads=threads, cold=cold, log=click.echo, progress=sys.stderr.isatty()
        )
    if markdown:
        click.echo(markdown_table(report))
    if json_path:
        click.echo(f"wrote {write_json(report, json_path)}")


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/demo", help="Output folder.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, help="Training epochs for the demo model.")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Training seed.")
@click.option("--force", is_flag=True, help="Write into a folder that holds other files (an earlier demo's need not).")
def demo(out_dir, epochs, seed, force):
    """The main job on the bundled data: train the sparse autoencoder briefly, export it, run the ONNX file on
    this runtime's CPU and CUDA backends and on onnxruntime, print the agreement, write the pictures."""
    from cli.demo import run_demo

    run_demo(Path(out_dir), epochs=epochs, seed=seed, force=force)


@cli.command()
@click.option("--weights-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Where the ONNX files are [the shipped weights].")  # fmt: skip
def warmup(weights_dir):
    """Compile the CPU kernels the shipped models use into the kernel cache, so that a fresh process's first
    inference loads them (about a minute once; seconds when they are already cached)."""
    from cli import warmup as kernels

    folder = Path(weights_dir) if weights_dir else weights_dir_default()
    models = sorted(folder.glob("*.onnx"))
    if not models:
        raise click.BadParameter(f"no ONNX files in {folder}", param_hint="--weights-dir")
    seconds = kernels.warmup(models, report=click.echo)
    click.echo(f"{len(models)} models in {seconds:.1f} s; kernels cached in {kernels.cache_dir()}")


def main():
    cli(prog_name="zoo")


if __name__ == "__main__":
    sys.exit(main())
