"""Publishing a finished training run into a weights folder: the checkpoint, its checked ONNX export(s) with
their ``test_data_set_0`` folders, the model card (JSON and Markdown), the run's pictures and the folder's
``MANIFEST.json`` are staged together and committed as one set through ``zoo.io.staged_set``: a crash at any
point leaves the old set or the new one, never a mixture (the next publish or reader finishes the commit).

A card records the run as it was (the model config, the ``TrainConfig``, data and command from metrics.json),
its license, intended use and limitations (the family's ``card_notes``), the graphs' inputs and outputs and code
to run them; only a card in this repository's weights/ (exported from a clean checkout) claims that
``tests/test_weights.py`` recomputes its figures. ``refresh_cards`` brings existing cards to these fields."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from zoo.cards import MANIFEST, load_manifest, verify_file
from zoo.errors import ZooError
from zoo.io import check_folder_replaceable, check_writable, folder_lock, sha256_of, staged_set

# A weights name becomes file names (``<name>.onnx``, ``<name>.<part>.onnx``, ``<name>.<picture>.png``) and a
# folder inside the weights folder: no path separators or '..', nothing hidden, lowercase (case-insensitive file
# systems), and no dots, so that no name's files can be mistaken for another's (``dcgan-mnist.generator``).
NAME_RULE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
NAME_EXPECTED = "expected 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise ZooError(f"{name!r} is not a valid weights name; {NAME_EXPECTED}")
    return name


# The folder whose cards ``tests/test_weights.py`` recomputes, and the license of what ships in it (LICENSE).
REPO_LICENSE = "MIT"
UNSPECIFIED = "unspecified"
VERIFIED_BY = "tests/test_weights.py"
NOT_STATED = "not stated by the model's family (its card_notes)"
# How the bundled data sets draw their images (zoo/data.py): ink is the high end of the range.
POLARITY = {
    name: "white digits on black: the stroke at the high end of the range, the background at the low end"
    for name in ("mnist", "digits8", "mnist-seg")
} | {"photos64": "natural colour photographs (RGB channels, no figure/ground convention)"}
LEGACY_TRAIN_NOTE = (
    "training settings reconstructed by zoo.publish.refresh_cards: the trainer of the time stored the model's "
    "default settings in its config; shown here are those defaults overridden by the flags of the command, with "
    "the final checkpoint's epoch"
)


def repo_weights_dir() -> Path | None:
    """This repository's own weights/ folder (whatever $ZOO_WEIGHTS_DIR says), the one whose cards its tests
    recompute; None when the zoo runs from elsewhere than a checkout with those tests."""
    root = Path(__file__).resolve().parents[1]
    return root / "weights" if (root / "tests" / "test_weights.py").is_file() else None


def is_repo_weights(weights_dir) -> bool:
    repo = repo_weights_dir()
    return repo is not None and Path(weights_dir).resolve() == repo.resolve()


def check_shippable_source(weights_dir) -> str:
    """The source commit of an export into this repository's weights/ folder, refused unless it names a clean
    tree: a shipped file's ``source_commit`` must say which code made it (a user's own folder takes anything,
    "unknown" included)."""
    from zoo import export

    commit = export.source_commit()
    if commit == "unknown" or commit.endswith("-dirty"):
        raise ZooError(
            f"publishing into the repository's '{weights_dir}' needs a clean checkout (source commit {commit!r}): "
            "commit or stash the changes outside weights/ first, or publish into another --weights-dir"
        )
    return commit


def _polarity(data: str) -> str:
    return POLARITY.get(data, f"as in the training images ('{data}'); not checked by the zoo")


def _tensor_spec(value, part: str | None, notes: dict, polarity: str) -> dict:
    from onnx.helper import tensor_dtype_to_np_dtype

    t = value.type.tensor_type
    note = notes.get(f"{part}/{value.name}") or notes.get(value.name) or {}
    spec = {
        "name": value.name,
        "shape": [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim],
        "dtype": tensor_dtype_to_np_dtype(t.elem_type).name,
        **{k: note[k] for k in ("range", "meaning", "classes") if k in note},
    }
    if note.get("kind") == "image":
        spec["polarity"] = polarity
    return spec


def io_spec(proto, notes: dict, polarity: str) -> dict:
    """The inputs and outputs of an ONNX graph as a card lists them: name, shape (the batch axis named),
    dtype, and from the model's ``card_notes`` their range, meaning, classes and (images) polarity."""
    props = {p.key: p.value for p in proto.metadata_props}
    part = props.get("part")
    weights = {t.name for t in proto.graph.initializer}
    return {
        "inputs": [_tensor_spec(v, part, notes, polarity) for v in proto.graph.input if v.name not in weights],
        "outputs": [_tensor_spec(v, part, notes, polarity) for v in proto.graph.output],
    }


def _example_shape(spec: dict) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]  # a batch of one


JS_ARRAYS = {"float32": "Float32Array", "float64": "Float64Array", "int32": "Int32Array", "int64": "BigInt64Array",
             "int8": "Int8Array", "uint8": "Uint8Array", "bool": "Uint8Array"}  # fmt: skip


def snippets(io: dict, folder: str) -> dict:
    """Code that runs each ONNX file on a batch of one (zeros of the right shape): in Python with this
    repository's runtime, and in JavaScript with onnxruntime-node. ``folder``: the path prefix of the files."""
    import keyword

    py = ["import numpy as np", "", "import runtime  # this repository's ONNX runtime: Numba kernels, no torch"]
    js = [
        "// npm install onnxruntime-node; save as run.mjs, then: node run.mjs",
        'import * as ort from "onnxruntime-node";',
    ]
    several = len(io) > 1
    for file, spec in io.items():
        path = json.dumps(f"{folder}{file}")
        feed = ", ".join(
            f'"{i["name"]}": np.zeros({tuple(_example_shape(i))}, np.{i["dtype"]})' for i in spec["inputs"]
        )
        names = [o["name"] for o in spec["outputs"]]
        if all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
            unpack = f"({names[0]},)" if len(names) == 1 else ", ".join(names)
        else:
            unpack = "outputs"
        py += [
            "",
            f'sess = runtime.InferenceSession({path}, backend="cpu")  # or backend="cuda"',
            f"feed = {{{feed}}}  # shapes and ranges: see Inputs and outputs",
            f"{unpack} = sess.run(None, feed)",
        ]
        pad = "  " if several else ""
        block = [
            f"{pad}const session = await ort.InferenceSession.create({path});",
            f"{pad}const feeds = {{",
            *[
                f"{pad}  {json.dumps(i['name'])}: new ort.Tensor({json.dumps(i['dtype'])}, "
                f"new {JS_ARRAYS.get(i['dtype'], 'Float32Array')}({' * '.join(map(str, _example_shape(i)))}), "
                f"{json.dumps(_example_shape(i))}),"
                for i in spec["inputs"]
            ],
            f"{pad}}};",
            f"{pad}const results = await session.run(feeds);",
            f"{pad}for (const [name, tensor] of Object.entries(results)) console.log(name, tensor.dims);",
        ]
        js += ["", *(["{", *block, "}"] if several else block)]
    return {"python": "\n".join(py) + "\n", "javascript": "\n".join(js) + "\n"}


def documentation(card: dict, notes: dict, protos: dict, *, repo: bool, license: str) -> dict:
    """The fields of a card that say what the weights are for, what they are not, how to feed them and under
    which license: from the model family's ``card_notes``, the run's data and the exported graphs ``protos``
    (ONNX file name -> ModelProto)."""
    io = {f: io_spec(p, notes.get("tensors", {}), _polarity(card["data"])) for f, p in protos.items()}
    data_note = (
        f"Trained on '{card['data']}' only ({card['train_examples']} examples; the figures below are from "
        f"{card['val_examples']} held-out examples of the same source): inputs unlike those are outside what "
        "it learned."
    )
    doc = {
        "license": license,
        "intended_use": notes.get("intended_use", NOT_STATED),
        "limitations": [data_note, *notes.get("limitations", [])],
        "io": io,
        "snippets": snippets(io, "weights/" if repo else ""),
    }
    return doc | ({"verified_by": VERIFIED_BY} if repo else {})


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _shape(shape: list) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


GENERATIVE_ROWS = (
    ("fid", "Fréchet distance, LeNet features (FID; lower is better)"),
    ("pca_fd", "Fréchet distance, 50 pixel principal components (lower is better)"),
    ("inception_score", "Inception-style score, LeNet (10 is the ceiling)"),
    ("confident", "share of images LeNet calls one digit with p >= 0.9"),
)


def _generative_table(m: dict) -> list[str]:
    """Generated against real digits, each figure as mean ± sd over draws of held-out size (``zoo.evaluate``)."""
    if "fid_mean" not in m:
        return []
    lines = [
        "Generated digits beside real ones: mean ± sd over 5 draws of as many images as held-out digits, each "
        "against the held-out digits; the real row's draws are training digits of the same size (the floor).",
        "",
        "| figure | generated | real digits | ratio |",
        "|---|---|---|---|",
    ]
    for key, label in GENERATIVE_ROWS:
        g, r = (m.get(f"{key}_mean"), m.get(f"{key}_sd")), (m.get(f"floor_{key}_mean"), m.get(f"floor_{key}_sd"))
        if None in (*g, *r):
            continue
        lines.append(f"| {label} | {g[0]:.4g} ± {g[1]:.2g} | {r[0]:.4g} ± {r[1]:.2g} | {g[0] / r[0]:.2f} |")
    if "class_share_min" in m and "floor_class_share_min" in m:
        lines.append(
            f"| class shares, smallest to largest (LeNet's argmax; 0.1 each when balanced) | "
            f"{m['class_share_min']:.3f} – {m['class_share_max']:.3f} | "
            f"{m['floor_class_share_min']:.3f} – {m['floor_class_share_max']:.3f} | |"
        )
    return [*lines, ""]


def _per_class_table(m: dict, config: dict) -> list[str]:
    """A class-conditional generator class by class (``zoo.evaluate.per_class_figures``): how often LeNet and
    the pixel SVM see the class asked for, and the class's FID beside real digits' at the same size."""
    if "class_accuracy_svm" not in m:
        return []
    lines = [
        "Asked for each class in turn (5 draws pooled): the share that LeNet and a pixel SVM (a second classifier, "
        "nothing shared with LeNet) call that class, and LeNet's FID against the held-out digits of the class "
        "beside the floor, as many training digits of the class against the same held-out ones.",
        "",
        "| class | LeNet accuracy | SVM accuracy | FID | floor FID | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for k in range(config.get("classes", 10)):
        keys = (f"class_accuracy_{k}", f"class_accuracy_svm_{k}", f"fid_class_{k}", f"floor_fid_class_{k}")
        if all(key in m for key in keys):
            a, b, f, r = (m[key] for key in keys)
            lines.append(f"| {k} | {a:.3f} | {b:.3f} | {f:.4g} | {r:.4g} | {f / r:.2f} |")
    lines.append(
        f"| all (held-out real digits) | {m['class_accuracy']:.3f} ({m.get('real_class_accuracy', float('nan')):.3f})"
        f" | {m['class_accuracy_svm']:.3f} ({m.get('real_class_accuracy_svm', float('nan')):.3f}) | | | |"
    )
    return [*lines, ""]


def _segmentation_table(m: dict, config: dict) -> list[str]:
    """The network's IoU beside the training-free baseline's, overall and class by class."""
    if "baseline_val_miou" not in m:
        return []
    lines = [
        "The network beside a baseline without training (`zoo.evaluate.threshold_and_classify`: threshold the "
        "canvas at the labels' stroke level, group the ink into digit-sized blobs, classify each with LeNet):",
        "",
        "| IoU on held-out canvases | network | threshold + LeNet |",
        "|---|---|---|",
    ]
    rows = [("mean over the classes (mIoU)", "val_miou"), ("background", "val_iou_background"),
            ("mean over the digits", "val_miou_digits")]  # fmt: skip
    rows += [(f"digit {k - 1}", f"val_iou_class_{k}") for k in range(1, config.get("classes", 11))]
    for label, key in rows:
        if key in m and f"baseline_{key}" in m:
            lines.append(f"| {label} | {m[key]:.3f} | {m[f'baseline_{key}']:.3f} |")
    return [*lines, ""]


ABLATION_ROWS = (
    ("fid_mean", "LeNet-FID (mean of 5 draws)"),
    ("pca_fd_mean", "pixel-PCA Fréchet distance (mean of 5 draws)"),
    ("inception_score_mean", "Inception-style score, LeNet (mean of 5 draws)"),
    ("confident_mean", "share LeNet calls one digit with p >= 0.9"),
    ("class_share_min", "smallest class share"),
    ("class_share_max", "largest class share"),
    ("val_mse", "held-out reconstruction MSE"),
    ("val_miou", "held-out mIoU"),
)


def ablations(model, card: dict, cards: dict[str, dict]) -> dict:
    """The card field ``ablations`` of ``card`` (a run of ``model``): for each card named in
    ``model.card_ablations`` that ``cards`` (name -> card, the folder's) holds, what differs and its figures,
    copied from that card. Only a card of the model it is named after (the registered ablation), trained
    with this card's settings (the same budget; where it ran and how often it was evaluated aside): anything
    else published under that name is not the ablation and is left out, as is this card itself."""

    def budget(c: dict) -> dict:
        return {k: v for k, v in c.get("train", {}).items() if k not in ("device", "eval_every")}

    out = {}
    for name, what in getattr(model, "card_ablations", {}).items():
        other = cards.get(name)
        if name == card["name"] or not isinstance(other, dict) or other.get("model") != name:
            continue
        if budget(other) != budget(card):
            continue
        out[name] = {"what": what, "command": other["command"], "metrics": other["metrics"]}
    return {"ablations": out} if out else {}


def _folder_cards(weights_dir: Path, names) -> dict[str, dict]:
    """The cards ``names`` in ``weights_dir`` that are there, read; one that is not JSON is a one-line error."""
    cards = {}
    for name in names:
        path = weights_dir / f"{check_name(name)}.card.json"
        if path.is_file():
            try:
                cards[name] = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ZooError(
                    f"'{path}' is not a card ({e.__class__.__name__}); expected the JSON zoo publish writes"
                ) from None
    return cards


def _ablation_table(card: dict) -> list[str]:
    """This card's figures beside those of the runs that differ from it in one choice (``ablations``)."""
    found = card.get("ablations", {})
    if not found:
        return []
    m = card["metrics"]
    names = sorted(found)
    lines = ["## Ablation", ""]
    lines += [f"- `{n}`: {found[n]['what']} (`{found[n]['command']}`; figures from its card)" for n in names]
    lines += ["", f"| figure | {card['name']} | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for key, label in ABLATION_ROWS:
        if key in m and all(key in found[n]["metrics"] for n in names):
            cells = [_with_sd(m, key), *(_with_sd(found[n]["metrics"], key) for n in names)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _with_sd(m: dict, key: str) -> str:
    """``m[key]``, with ± its sd over the draws when ``key`` is a mean that has one (fid_mean: fid_sd)."""
    sd = m.get(key.removesuffix("_mean") + "_sd") if key.endswith("_mean") else None
    return f"{m[key]:.4g}" + (f" ± {sd:.2g}" if sd is not None else "")


def render_card(card: dict) -> str:
    """The human-readable model card (Markdown) for a card's data."""
    m = card["metrics"]
    checked = (
        f"recomputed from the shipped files by `{card['verified_by']}`"
        if card.get("verified_by")
        else "measured on the held-out split at publish time"
    )
    lines = [
        f"# {card['name']}",
        "",
        card.get("description", ""),
        "",
        f"- model: `{card['model']}`",
        f"- license: {card.get('license', UNSPECIFIED)}",
        f"- files: {', '.join(f'`{f}`' for f in card['files'])} (sha256 in `{MANIFEST}`)",
        "",
        "## Intended use",
        "",
        card.get("intended_use", NOT_STATED),
        "",
        "## Limitations",
        "",
        *[f"- {text}" for text in card.get("limitations", [])],
        "",
        "## Training run",
        "",
        f"- data: `{card['data']}` ({card['train_examples']} training / {card['val_examples']} held-out examples, "
        "fixed stratified split)",
        f"- command: `{card['command']}`",
        *[f"- resumed after epoch {r['after_epoch']} by `{r['command']}`" for r in card.get("resumed", [])],
        f"- training settings: `{json.dumps(card.get('train', {}), sort_keys=True)}`",
        *([f"  ({card['train_note']})"] if card.get("train_note") else []),
        f"- model config: `{json.dumps(card['config'], sort_keys=True)}`",
        f"- {card['train_seconds']:.1f} s on {card['threads']} CPU threads, torch {card['torch']}",
        "",
        "## Inputs and outputs",
        "",
    ]
    columns = ("name", "shape", "dtype", "range", "polarity", "classes", "meaning")
    io = card.get("io", {})
    for file in sorted(io, key=lambda f: card["files"].index(f) if f in card["files"] else len(card["files"])):
        spec = io[file]  # in the order of the card's files (the JSON's keys are sorted)
        lines += [f"`{file}`:", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for role in ("inputs", "outputs"):
            for t in spec[role]:
                cells = [f"`{t['name']}`", _shape(t["shape"]), *(_cell(t.get(k, "-")) for k in columns[2:])]
                lines.append(f"| {role[:-1]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"## Held-out figures ({checked})",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in sorted(m.items()) if isinstance(v, (int, float))],
        "",
        *([f"({card['metrics_note']})", ""] if card.get("metrics_note") else []),
        *_generative_table(m),
        *_per_class_table(m, card.get("config", {})),
        *_segmentation_table(m, card.get("config", {})),
        *_ablation_table(card),
    ]
    snippet = card.get("snippets", {})
    if snippet:
        lines += [
            "## Running it",
            "",
            "Python, with this repository's runtime (`runtime/`, no torch):",
            "",
            "```python",
            snippet["python"].rstrip("\n"),
            "```",
            "",
            "JavaScript, with onnxruntime-node (any onnxruntime binding reads the same files):",
            "",
            "```js",
            snippet["javascript"].rstrip("\n"),
            "```",
            "",
        ]
    return "\n".join(lines)


def _test_data(onnx_name: str) -> str:
    return f"{onnx_name.removesuffix('.onnx')}/test_data_set_0"


def _check_targets(weights_dir: Path, files: list[str], folders: list[str], overwrite: bool) -> None:
    check_writable(weights_dir / MANIFEST, True)  # replaced by every publish, but never if it is a link or a device
    for rel in files:
        check_writable(weights_dir / rel, overwrite)
    for rel in folders:
        check_folder_replaceable(weights_dir / rel, overwrite)


def _sweep_debris(weights_dir: Path, names: list[str], min_age_s: float = 3600.0) -> None:
    """Delete what a killed publish of the earlier, file-by-file kind left beside these files: the temporary
    files of ``atomic_write`` (``.<file>.<8 chars>.tmp``) and the export's staging folders (``.<file>.<8 chars>``),
    once they are an hour old (a live writer's are younger)."""
    import time

    patterns = [re.compile(rf"\.{re.escape(n)}\.[a-z0-9_]{{8}}(\.tmp)?") for n in names]
    for p in weights_dir.iterdir():
        if any(pat.fullmatch(p.name) for pat in patterns) and time.time() - p.lstat().st_mtime > min_age_s:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _old_set(weights_dir: Path, name: str) -> list[str]:
    """The paths of what is published under ``name`` now, as its card lists them (never anything of another
    name: every path must be ``<name>.<something>``, a plain file name)."""
    old = {f"{name}.card.json", f"{name}.md"}
    try:
        card = json.loads((weights_dir / f"{name}.card.json").read_text())
    except (OSError, ValueError):
        card = {}
    listed = [*card.get("files", []), *card.get("pictures", [])] if isinstance(card, dict) else []
    for f in listed:
        if isinstance(f, str) and f.startswith(f"{name}.") and "/" not in f and "\\" not in f and ".." not in f:
            old.add(f)
            if f.endswith(".onnx"):
                old.update({f"{f}.data", _test_data(f)})
    return sorted(rel for rel in old if os.path.lexists(weights_dir / rel))


def _manifest_entries(root: Path, rel: str) -> dict[str, str]:
    """sha256 of the staged file ``root/rel``, or of every file in the staged folder ``root/rel``."""
    path = root / rel
    if not path.is_dir():
        return {rel: sha256_of(path)}
    return {str(p.relative_to(root)): sha256_of(p) for p in sorted(path.rglob("*")) if p.is_file()}


def _run_settings(run: dict) -> tuple[dict, dict]:
    """(the model's config, the run's TrainConfig as a dict) of a metrics.json; one of an earlier trainer (no
    ``train``: training keys inside its config, the values it used at the top level) is upgraded."""
    from dataclasses import asdict

    from zoo.builder import upgrade_config
    from zoo.config import TrainConfig

    config, legacy = upgrade_config(run["model"], run["config"])
    if isinstance(run.get("train"), dict):
        return config, run["train"]
    used = {k: run[k] for k in ("data", "seed", "epochs", "batch_size", "lr", "limit") if run.get(k) is not None}
    return config, asdict(TrainConfig.build("training", **{**legacy, **used}))


def publish(run_dir, name: str, weights_dir, *, overwrite: bool = False, license: str | None = None) -> dict:
    """Ship a finished training run as ``weights_dir/name.{safetensors,onnx,card.json,md}`` (with the ONNX
    files' test data and the run's pictures) and update the manifest, all or nothing; the ONNX file is exported
    (and checked) from the run's final checkpoint. ``overwrite`` replaces the whole set published as ``name``.
    ``license``: the card's; by default MIT in this repository's weights/ folder (which also needs a clean
    checkout, see ``check_shippable_source``), else "unspecified"."""
    import onnx

    import zoo
    from zoo.checkpoint import load_checkpoint
    from zoo.data import load_dataset
    from zoo.export import export_onnx

    name = check_name(name)
    run_dir, weights_dir = Path(run_dir), Path(weights_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ZooError(f"'{run_dir}' holds no metrics.json; expected the folder of a finished `zoo train` run")
    run = json.loads(metrics_path.read_text())
    if "final" not in run:
        raise ZooError(f"the run in '{run_dir}' did not finish (metrics.json has no final figures)")
    if os.path.lexists(weights_dir) and not weights_dir.is_dir():
        raise ZooError(f"'{weights_dir}' is not a directory; expected the weights folder")
    repo = is_repo_weights(weights_dir)
    if repo:
        check_shippable_source(weights_dir)
    license = license or (REPO_LICENSE if repo else UNSPECIFIED)
    if not isinstance(license, str) or not license.strip() or "\n" in license:
        raise ZooError(f"license {license!r}: expected a one-line name such as MIT or CC-BY-4.0")
    config, train = _run_settings(run)
    provenance = {"train": train, "data": run["data"], "command": run["command"]}
    ckpt = run_dir / f"{run['model']}.safetensors"
    model, meta = load_checkpoint(ckpt)
    parts = list(model.export_parts()) or [None]
    onnx_names = {part: f"{name}.{part}.onnx" if part else f"{name}.onnx" for part in parts}
    # the run's pictures, found in its folder: the paths it stored are relative to where it was trained
    pictures = {f"{name}.{p.name}": run_dir / p.name for p in map(Path, run.get("pictures", []))}
    pictures = {target: p for target, p in pictures.items() if p.is_file()}
    weights = [f"{name}.safetensors", *onnx_names.values()]
    documents = [*pictures, f"{name}.card.json", f"{name}.md"]
    files = [*weights, *documents]
    folders = [_test_data(f) for f in onnx_names.values()]
    _check_targets(weights_dir, files, folders, overwrite)  # before the slow export; again at the commit
    val = load_dataset(run["data"], "val", tuple(model.config.image_size), model.image_channels)

    with staged_set(weights_dir, name) as staged:
        reports = {
            part: export_onnx(
                model,
                staged.path(f),
                part=part,
                data=(val.images, val.labels),
                metrics=run["final"],
                provenance=provenance,
            )
            for part, f in onnx_names.items()
        }
        external = [Path(r["external_data"]).name for r in reports.values() if "external_data" in r]
        shutil.copyfile(ckpt, staged.path(f"{name}.safetensors"))
        for target, picture in pictures.items():  # the run's final figures travel with the weights
            shutil.copyfile(picture, staged.path(target))
        card = {
            "name": name,
            "model": run["model"],
            "description": zoo.get_model_entry(run["model"]).description,
            "config": config,
            "train": train,
            "data": run["data"],
            "seed": train["seed"],
            "command": run["command"],
            **({"resumed": run["resumed"]} if run.get("resumed") else {}),
            "train_examples": run["train_examples"],
            "val_examples": run["val_examples"],
            "train_seconds": run["train_seconds"],
            "threads": run["threads"],
            "torch": run["torch"],
            "headline": model.headline_metric,
            "metrics": {k: v for k, v in run["final"].items() if k not in ("epoch", "seconds")},
            "export": {
                (part or "model"): {k: v for k, v in r.items() if k not in ("path", "test_data", "external_data")}
                for part, r in reports.items()
            },
            "files": weights,
            "pictures": list(pictures),
        }
        protos = {f: onnx.load(str(staged.path(f)), load_external_data=False) for f in onnx_names.values()}
        card |= documentation(card, type(model).card_notes, protos, repo=repo, license=license)
        card |= ablations(model, card, _folder_cards(weights_dir, getattr(model, "card_ablations", {})))
        staged.path(f"{name}.card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        staged.path(f"{name}.md").write_text(render_card(card))
        install = [*weights, *external, *folders, *documents]  # and the manifest last

        with folder_lock(weights_dir):  # the manifest is read, merged and replaced by one publisher at a time
            _check_targets(weights_dir, [*files, *external], folders, overwrite)
            _sweep_debris(weights_dir, [*files, *external, MANIFEST])
            old = _old_set(weights_dir, name)
            gone = [*old, *install]
            manifest = {
                rel: digest
                for rel, digest in load_manifest(weights_dir).items()
                if not any(rel == g or rel.startswith(g + "/") for g in gone)
            }
            for rel in install:
                manifest.update(_manifest_entries(staged.new, rel))
            staged.path(MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            try:
                staged.commit([*install, MANIFEST], [rel for rel in old if rel not in install])
            except OSError as e:
                raise ZooError(
                    f"publishing '{name}' into '{weights_dir}' was interrupted ({e}); "
                    "the next publish or load of that folder completes it"
                ) from None
    return card


def _train_flags(command: str) -> dict:
    """The TrainConfig settings a recorded ``zoo train`` command line gave (``--epochs 5``, ``--set lr=0.1``)."""
    import shlex

    from zoo.config import TrainConfig

    keys, words, given = TrainConfig.keys(), shlex.split(command), {}
    for flag, value in zip(words, words[1:]):
        if flag == "--set" and "=" in value:
            flag, value = "--" + value.split("=", 1)[0], value.split("=", 1)[1]
        key = flag.removeprefix("--").replace("-", "_")
        if flag.startswith("--") and key in keys:
            try:
                given[key] = json.loads(value)
            except json.JSONDecodeError:
                given[key] = value
    return given


def _upgraded_card(card: dict, weights_dir: Path, license: str | None) -> tuple[dict, object]:
    """``card`` with the fields of this version: the model config and the run's ``train`` settings apart
    (reconstructed for a card of the earlier trainer, see LEGACY_TRAIN_NOTE), and the documentation; with the
    model it describes, built on torch's meta device."""
    from dataclasses import asdict

    import onnx
    import torch

    from zoo.builder import build_model, upgrade_config
    from zoo.checkpoint import read_metadata
    from zoo.config import TrainConfig

    card = dict(card)
    if "train" not in card:
        meta = read_metadata(weights_dir / f"{card['name']}.safetensors")
        config, train = upgrade_config(card["model"], meta["config"])
        train |= _train_flags(card["command"]) | {"data": card["data"], "seed": card["seed"]}
        if isinstance(meta.get("epoch"), int):
            train["epochs"] = meta["epoch"]  # the final checkpoint's epoch is the run's last
        with torch.device("meta"):
            card["config"] = asdict(build_model(card["model"], **config).config)
        card["train"] = asdict(TrainConfig.build("training", **train))
        card["train_note"] = LEGACY_TRAIN_NOTE
    if "device" not in card["train"]:  # runs from before the trainer placed anything on a GPU: all on the CPU
        card["train"] = {**card["train"], "device": "cpu"}
    if "eval_every" not in card["train"]:  # runs from before eval_every: evaluated after every epoch
        card["train"] = {**card["train"], "eval_every": 1}
    with torch.device("meta"):
        model = build_model(card["model"], **card["config"])
    card.pop("ablations", None)  # filled in by refresh_cards from the folder's refreshed cards
    notes = type(model).card_notes
    repo = is_repo_weights(weights_dir)
    license = license or card.get("license") or (REPO_LICENSE if repo else UNSPECIFIED)
    protos = {
        f: onnx.load(str(weights_dir / f), load_external_data=False) for f in card["files"] if f.endswith(".onnx")
    }
    card.pop("verified_by", None)
    return card | documentation(card, notes, protos, repo=repo, license=license), model


def reevaluated_metrics(card: dict, weights_dir: Path) -> dict:
    """``card``'s metrics with the figures its model's evaluation gives now and the card lacks, computed from
    the shipped checkpoint on the held-out split (the figures the run recorded are kept as they are)."""
    from zoo.checkpoint import load_checkpoint
    from zoo.data import load_dataset

    model, _ = load_checkpoint(verify_file(weights_dir / f"{card['name']}.safetensors"))
    c = model.config
    val = load_dataset(card["data"], "val", size=tuple(c.image_size), channels=model.image_channels)
    now = model.evaluate(val.images, val.labels)
    return card["metrics"] | {k: v for k, v in now.items() if k not in card["metrics"]}


def refresh_cards(weights_dir=None, *, license: str | None = None, reevaluate: bool = False) -> list[str]:
    """Bring every ``*.card.json`` in ``weights_dir`` (this repository's weights/ by default) to the fields of
    this version and re-render its ``.md``, without touching a weights file; the manifest's sha256 of a card
    or page it lists are updated. All rewritten files are committed as one set. Returns the paths rewritten.
    Run by hand after a change to the cards' fields (``python -c "import zoo.publish as p;
    p.refresh_cards()"``); ``tests/test_cards.py`` checks that the shipped cards need none. ``reevaluate``:
    also add the figures a model's evaluation has gained since its card was written (``reevaluated_metrics``),
    noted on the card; ``tests/test_weights.py`` recomputes them like every other figure. A card's
    ``ablations`` are copied from the other cards as refreshed here."""
    weights_dir = Path(weights_dir) if weights_dir is not None else repo_weights_dir()
    if weights_dir is None or not weights_dir.is_dir():
        raise ZooError(f"'{weights_dir}' is not a weights folder")
    with folder_lock(weights_dir):
        cards, models = {}, {}
        for path in sorted(weights_dir.glob("*.card.json")):
            card, model = _upgraded_card(json.loads(path.read_text()), weights_dir, license)
            if reevaluate:
                metrics = reevaluated_metrics(card, weights_dir)
                added = sorted(set(metrics) - set(card["metrics"]))
                if added:
                    card["metrics"] = metrics
                    card["metrics_note"] = (
                        f"{', '.join(added)}: computed after training from the shipped checkpoint on the same "
                        "held-out split, by the evaluation of a later version of the zoo"
                    )
            cards[check_name(card["name"])] = card
            models[card["name"]] = model
        pages = {}
        for name, card in cards.items():  # each card's ablations from the others as refreshed
            card |= ablations(models[name], card, cards)
            pages[f"{name}.card.json"] = json.dumps(card, indent=2, sort_keys=True) + "\n"
            pages[f"{name}.md"] = render_card(card)
        changed = [
            rel
            for rel, text in pages.items()
            if not (weights_dir / rel).is_file() or (weights_dir / rel).read_text() != text
        ]
        if not changed:
            return []
        with staged_set(weights_dir, "refresh-cards") as staged:
            for rel in changed:
                staged.path(rel).write_text(pages[rel])
            install = list(changed)
            manifest = load_manifest(weights_dir)
            listed = [rel for rel in changed if rel in manifest]
            if listed:
                manifest |= {rel: sha256_of(staged.new / rel) for rel in listed}
                staged.path(MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                install.append(MANIFEST)
            staged.commit(install, [])
    return changed
