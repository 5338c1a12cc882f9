"""Model cards and exported files that tell the truth: a published run's card and ONNX metadata record the run's
own model config, training settings, data and command (not the model's defaults); a user's card claims nothing
of this repository's tests; every shipped card carries its license, intended use, limitations, input/output
spec and code to run it, and its Markdown page is exactly what ``render_card`` makes of it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

import zoo
from cli.main import cli
from tests.conftest import ROOT, WEIGHTS
from zoo.cards import MANIFEST, load_cards
from zoo.errors import ZooError
from zoo.io import sha256_of

CARDS = load_cards(WEIGHTS)
COMMAND = ["train", "sparse-ae-digits8", "--epochs", "2", "--limit", "64", "--set", "hidden=7", "--seed", "3"]


def _onnx_meta(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny run through `zoo train` (as a user types it) published into a user's weights folder."""
    run, weights = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("my_weights")
    argv = [*COMMAND, "--out", str(run), "--quiet"]
    saved, sys.argv = sys.argv, ["zoo", *argv]  # the trainer records the command line it was started with
    try:
        result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    finally:
        sys.argv = saved
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["publish", str(run), "--name", "tiny", "--weights-dir", str(weights)])
    assert result.exit_code == 0, result.output
    card = json.loads((weights / "tiny.card.json").read_text())
    return run, weights, card


def test_published_card_records_the_run(published):
    run, weights, card = published
    assert card["config"]["hidden"] == 7 and "epochs" not in card["config"] and "dataset" not in card["config"]
    assert card["train"]["epochs"] == 2 and card["train"]["limit"] == 64 and card["train"]["seed"] == 3
    assert card["data"] == card["train"]["data"] == "digits8"
    assert card["command"] == "zoo " + " ".join([*COMMAND, "--out", str(run), "--quiet"])
    assert card["train"] == json.loads((run / "metrics.json").read_text())["train"]
    page = (weights / "tiny.md").read_text()
    assert f"`{card['command']}`" in page
    assert '"hidden": 7' in page and '"epochs": 2' in page and '"limit": 64' in page


def test_exported_onnx_records_the_run(published):
    run, weights, card = published
    meta = _onnx_meta(weights / "tiny.onnx")
    assert json.loads(meta["config"]) == card["config"]
    assert json.loads(meta["train"]) == card["train"]
    assert meta["data"] == "digits8" and meta["command"] == card["command"]
    assert meta["source_commit"]  # a commit, "<commit>-dirty" or "unknown": a user's folder takes any


def test_zoo_export_records_the_checkpoints_run(published, tmp_path):
    from zoo.checkpoint import read_metadata

    run, _, card = published
    ckpt = run / "sparse-ae-digits8.safetensors"
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(cli, ["export", "sparse-ae-digits8", "--weights", str(ckpt), "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta, saved = _onnx_meta(out), read_metadata(ckpt)
    assert json.loads(meta["train"]) == saved["train"] == card["train"]
    assert meta["data"] == saved["data"] and meta["command"] == saved["command"]
    assert json.loads(meta["config"])["hidden"] == 7


def test_export_refuses_unknown_provenance(tmp_path):
    import zoo
    from zoo.export import export_onnx

    model = zoo.create_model("sparse-ae-digits8", hidden=3)
    with pytest.raises(ZooError, match="unknown provenance secret"):
        export_onnx(model, tmp_path / "m.onnx", provenance={"secret": 1})
    assert not any(tmp_path.iterdir())


def test_a_users_card_claims_nothing_of_this_repos_tests(published):
    _, weights, card = published
    page = (weights / "tiny.md").read_text()
    assert "test_weights" not in page and "verified_by" not in card
    assert "measured on the held-out split at publish time" in page
    assert card["license"] == "unspecified" and "- license: unspecified" in page
    assert '"tiny.onnx"' in card["snippets"]["python"]  # beside the card, not in this repo's weights/


def test_a_users_license_is_recorded(published, tmp_path):
    run, _, _ = published
    result = CliRunner().invoke(
        cli, ["publish", str(run), "--name", "mine", "--weights-dir", str(tmp_path), "--license", "CC-BY-4.0"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "mine.card.json").read_text())["license"] == "CC-BY-4.0"
    assert "- license: CC-BY-4.0" in (tmp_path / "mine.md").read_text()


def test_the_published_python_snippet_runs(published, monkeypatch):
    _, weights, card = published
    monkeypatch.chdir(weights)
    scope = {}
    exec(card["snippets"]["python"], scope)
    assert scope["reconstruction"].shape == (1, 64) and scope["code"].shape == (1, 7)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("card", CARDS, ids=[c["name"] for c in CARDS])
def test_the_javascript_snippets_parse(card, tmp_path):
    script = tmp_path / "run.mjs"
    script.write_text(card["snippets"]["javascript"])
    out = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_publishing_into_the_repos_weights_needs_a_clean_tree(published, tmp_path, monkeypatch):
    """The repository's weights/ folder (played by tmp_path) takes only exports from a clean checkout; what
    ships there is MIT and claims the recomputation by tests/test_weights.py."""
    import zoo.export
    import zoo.publish
    from zoo.publish import publish

    run, _, _ = published
    repo = tmp_path / "weights"
    monkeypatch.setattr(zoo.publish, "repo_weights_dir", lambda: repo)
    for commit in ("0123456789ab-dirty", "unknown"):
        monkeypatch.setattr(zoo.export, "source_commit", lambda commit=commit: commit)
        with pytest.raises(ZooError, match="clean checkout"):
            publish(run, "tiny", repo)
        assert not repo.exists()
    monkeypatch.setattr(zoo.export, "source_commit", lambda: "0123456789ab")
    card = publish(run, "tiny", repo)
    assert card["license"] == "MIT" and card["verified_by"] == "tests/test_weights.py"
    assert "recomputed from the shipped files by `tests/test_weights.py`" in (repo / "tiny.md").read_text()
    assert _onnx_meta(repo / "tiny.onnx")["source_commit"] == "0123456789ab"
    assert '"weights/tiny.onnx"' in card["snippets"]["python"]


def test_refresh_restores_a_card_and_its_manifest_hashes(published, tmp_path):
    from zoo.publish import refresh_cards

    _, weights, card = published
    folder = tmp_path / "w"
    shutil.copytree(weights, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert {"tiny.card.json", "tiny.md"} <= set(manifest)  # a publish of this version lists its documents
    stale = {k: v for k, v in card.items() if k not in ("intended_use", "limitations", "io", "snippets", "license")}
    (folder / "tiny.card.json").write_text(json.dumps(stale))
    (folder / "tiny.md").write_text("# tiny\n")
    assert refresh_cards(folder) == ["tiny.card.json", "tiny.md"]
    assert json.loads((folder / "tiny.card.json").read_text()) == card
    assert (folder / "tiny.md").read_bytes() == (weights / "tiny.md").read_bytes()
    manifest = json.loads((folder / MANIFEST).read_text())
    for rel in ("tiny.card.json", "tiny.md"):
        assert manifest[rel] == sha256_of(folder / rel)
    assert refresh_cards(folder) == []


# --- the shipped cards ------------------------------------------------------------------------------------


@pytest.mark.parametrize("card", CARDS, ids=[c["name"] for c in CARDS])
def test_a_shipped_card_documents_itself(card):
    from zoo.publish import render_card

    page = (WEIGHTS / f"{card['name']}.md").read_text()
    assert card["license"] == "MIT" and "- license: MIT" in page
    assert card["verified_by"] == "tests/test_weights.py"
    assert "recomputed from the shipped files by `tests/test_weights.py`" in page
    assert card["intended_use"] and card["intended_use"] in page
    assert card["limitations"] and all(f"- {text}" in page for text in card["limitations"])
    assert sorted(card["io"]) == sorted(f for f in card["files"] if f.endswith(".onnx"))
    for spec in card["io"].values():
        for t in (*spec["inputs"], *spec["outputs"]):
            assert t["shape"][0] == "batch" and t["dtype"] == "float32" and t["range"] and t["meaning"], t
            assert f"| `{t['name']}` | ({', '.join(map(str, t['shape']))}) | float32 | {t['range']} |" in page
            if t["name"] == "image":  # the digits themselves, in or out
                assert "white digits on black" in t["polarity"], t
    assert any("classes" in t for spec in card["io"].values() for t in (*spec["inputs"], *spec["outputs"])) == (
        card["model"] in ("lenet-mnist", "cgen-mnist", "cdcgan-mnist", "deconvnet-digits")
    )
    for language in ("python", "javascript"):
        assert card["snippets"][language].rstrip("\n") in page
    assert page == render_card(card)  # the page cannot drift from its card


@pytest.mark.parametrize("card", CARDS, ids=[c["name"] for c in CARDS])
def test_a_shipped_cards_io_spec_is_its_onnx_files(card):
    from zoo.publish import io_spec

    for file, spec in card["io"].items():
        got = io_spec(onnx.load(str(WEIGHTS / file), load_external_data=False), {}, "")
        for role in ("inputs", "outputs"):
            assert [(t["name"], t["shape"], t["dtype"]) for t in got[role]] == [
                (t["name"], t["shape"], t["dtype"]) for t in spec[role]
            ]


@pytest.mark.parametrize("card", CARDS, ids=[c["name"] for c in CARDS])
def test_a_shipped_cards_settings_are_its_commands(card):
    """Each TrainConfig flag of the recorded command is in the card's training settings; the model config
    holds no training setting."""
    from zoo.config import TrainConfig
    from zoo.publish import _train_flags

    assert set(card["train"]) == set(TrainConfig.keys())
    assert not set(card["config"]) & set(TrainConfig.keys()) and "dataset" not in card["config"]
    for key, value in _train_flags(card["command"]).items():
        assert card["train"][key] == value, key
    assert card["train"]["data"] == card["data"] and card["train"]["seed"] == card["seed"]


def test_the_shipped_cards_need_no_refresh(tmp_path, monkeypatch):
    """refresh_cards (which brings the cards to this version's fields) changes nothing in a copy of weights/."""
    import zoo.publish

    folder = tmp_path / "weights"
    folder.mkdir()
    for p in WEIGHTS.iterdir():
        if p.is_file() and p.suffix != ".png":
            shutil.copy(p, folder / p.name)
    monkeypatch.setattr(zoo.publish, "repo_weights_dir", lambda: folder)
    assert zoo.publish.refresh_cards(folder) == []


def test_the_shipped_python_snippets_run(monkeypatch):
    monkeypatch.chdir(ROOT)
    for card in CARDS:
        scope = {}
        exec(card["snippets"]["python"], scope)
        for spec in card["io"].values():
            for t in spec["outputs"]:
                assert scope[t["name"]].shape == (1, *t["shape"][1:]), (card["name"], t["name"])


def _make_weights() -> dict[str, str]:
    """The Makefile's `make weights` list: shipped name -> the registered model it trains."""
    text = (ROOT / "Makefile").read_text()
    line = next(line for line in text.splitlines() if line.startswith("SHIPPED :="))
    pairs = [pair.split(":") for pair in line.split(":=", 1)[1].split()]
    return {name: model for model, name in pairs}


@pytest.mark.parametrize("card", CARDS, ids=[c["name"] for c in CARDS])
def test_make_weights_retrains_each_card_as_it_says(card):
    """`make weights` trains every shipped model, with `--seed 0` over the model's registered settings: those
    must be the card's (apart from where it ran and how often it was evaluated), or the rerun would not
    reproduce the card."""
    from dataclasses import asdict

    from zoo.builder import get_model_entry

    shipped = _make_weights()
    assert shipped.get(card["name"]) == card["model"], f"`make weights` does not retrain {card['name']}"
    trains = {**asdict(get_model_entry(card["model"]).train), "seed": 0}
    ignored = ("device", "eval_every")
    assert {k: v for k, v in trains.items() if k not in ignored} == {
        k: v for k, v in card["train"].items() if k not in ignored
    }
    with torch.device("meta"):
        built = asdict(zoo.create_model(card["model"]).config)
    # a setting added after the card was written is absent from it; its default is what the run did then
    assert {k: built.get(k) for k in card["config"]} == card["config"], "the registered config is not the card's"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("card", CARDS, ids=[c["name"] for c in CARDS])
def test_make_weights_trains_each_card_on_its_thread_count(card):
    """torch's CPU kernels split their sums by the thread count: a model retrained on another count than its card's
    ends with other weights (LeNet on 1 thread instead of 2 does), so `make weights` sets the card's."""
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(["make", "-n", "-s", f"retrain-{card['name']}", "STAMP=Makefile", f"BIN={bin_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    own = f"{bin_dir}/zoo train {card['model']} --seed 0 --out runs/{card['name']} "
    line = next((x for x in done.stdout.splitlines() if own in x), None)
    assert line is not None, done.stdout
    assert line.startswith(f"OMP_NUM_THREADS={card['threads']} "), line


def test_a_card_shows_its_ablations_as_their_own_cards_have_them():
    """A card's ablation table (``card_ablations``) is copied from the ablations' own shipped cards, whose
    figures tests/test_weights.py recomputes from their files; every named ablation is shipped."""
    import zoo.publish

    by_name = {card["name"]: card for card in CARDS}
    for card in CARDS:
        with torch.device("meta"):
            named = zoo.create_model(card["model"], **card["config"]).card_ablations
        assert set(card.get("ablations", {})) == set(named), card["name"]
        for name, entry in card.get("ablations", {}).items():
            other = by_name[name]
            assert entry["metrics"] == other["metrics"] and entry["command"] == other["command"]
        if card.get("ablations"):  # a row per figure both runs have, this card's value first
            page = (WEIGHTS / f"{card['name']}.md").read_text()
            shared = [k for k, _ in zoo.publish.ABLATION_ROWS if k in card["metrics"]]
            shared = [k for k in shared if all(k in by_name[n]["metrics"] for n in card["ablations"])]
            assert shared, card["name"]
            for key in shared:
                row = dict(zoo.publish.ABLATION_ROWS)[key]
                runs = [card["metrics"], *(by_name[n]["metrics"] for n in sorted(card["ablations"]))]
                sd = key.removesuffix("_mean") + "_sd"
                cells = [
                    f"{r[key]:.4g}" + (f" ± {r[sd]:.2g}" if key.endswith("_mean") and sd in r else "") for r in runs
                ]
                assert f"| {row} | " + " | ".join(cells) + " |" in page


def test_only_the_registered_ablation_trained_the_same_way_is_copied():
    """``ablations`` copies a named card only if it is a run of the model it is named after, with this card's
    training settings (where it ran and how often it was evaluated aside), and never the card itself."""
    from zoo.publish import ablations

    with torch.device("meta"):
        model = zoo.create_model("dcgan-mnist")
    (name,) = model.card_ablations
    train = {"epochs": 80, "seed": 0, "device": "cpu", "eval_every": 10}
    card = {"name": "dcgan-mnist", "train": train}
    other = {"model": name, "train": {**train, "device": "cuda", "eval_every": 1}, "command": "c", "metrics": {"x": 1}}
    assert ablations(model, card, {name: other})["ablations"][name]["metrics"] == {"x": 1}
    assert ablations(model, card, {}) == {}  # not shipped in that folder
    assert ablations(model, card, {name: {**other, "model": "dcgan-mnist"}}) == {}  # a run of another model
    assert ablations(model, card, {name: {**other, "train": {**train, "epochs": 200}}}) == {}  # another budget
    assert ablations(model, {**card, "name": name}, {name: other}) == {}  # the card itself
