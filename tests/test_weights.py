"""The shipped weights: every figure on a model card is recomputed here from the shipped files, the files
match the manifest's sha256, and every shipped ONNX file agrees with onnxruntime on both backends."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from tests.conftest import (
    SIMULATED,
    WEIGHTS,
    assert_close,
    ort_run,
    read_test_data,
    runtime_run,
    switch_flips,
)
from zoo.bench import _feed_for, macs_per_sample
from zoo.cards import MANIFEST, load_cards, load_manifest, verify_file
from zoo.data import load_dataset
from zoo.errors import ZooError

CARDS = load_cards(WEIGHTS)
CARD_IDS = [c["name"] for c in CARDS]
ONNX_FILES = [f for c in CARDS for f in c["files"] if f.endswith(".onnx")]
SHIPPED = (
    "sparse-ae-mnist", "sparse-ae-digits8", "lenet-mnist", "cgen-mnist", "dcgan-mnist", "cdcgan-mnist",
    "deconvnet-digits",
)  # fmt: skip


def _val(card):
    c = card["config"]
    return load_dataset(card["data"], "val", size=tuple(c["image_size"]), channels=c.get("channels", c.get("nc", 1)))


def test_the_issues_weights_are_shipped():
    for name in SHIPPED:
        assert name in CARD_IDS, name
        for ext in (".safetensors", ".md", ".card.json"):
            assert (WEIGHTS / f"{name}{ext}").is_file()


def test_manifest_matches_every_shipped_file():
    from zoo.io import sha256_of

    manifest = load_manifest(WEIGHTS)
    for card in CARDS:
        for name in card["files"]:
            verify_file(WEIGHTS / name)
    for rel, digest in manifest.items():
        assert sha256_of(WEIGHTS / rel) == digest, rel


def test_weights_folder_stays_modest():
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert total < 60 * 2**20, f"weights/ holds {total / 2**20:.1f} MB"


def test_tampered_weights_are_refused(tmp_path):
    shutil.copy(WEIGHTS / MANIFEST, tmp_path / MANIFEST)
    copy = tmp_path / "sparse-ae-mnist.safetensors"
    data = bytearray((WEIGHTS / "sparse-ae-mnist.safetensors").read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(ZooError, match="sha256"):
        verify_file(copy)
    (tmp_path / "stray.onnx").write_bytes(b"x")
    with pytest.raises(ZooError, match="not listed"):
        verify_file(tmp_path / "stray.onnx")


@pytest.mark.parametrize("card", CARDS, ids=CARD_IDS)
def test_card_metrics_recomputed_with_torch(card):
    from zoo.checkpoint import load_checkpoint

    model, meta = load_checkpoint(verify_file(WEIGHTS / f"{card['name']}.safetensors"))
    val = _val(card)
    recomputed = model.evaluate(val.images, val.labels)
    for key, value in card["metrics"].items():
        assert recomputed[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("card", [c for c in CARDS if c["model"].startswith("sparse-ae")], ids=lambda c: c["name"])
def test_sparse_ae_figures_recomputed_without_torch(card):
    """The headline figure again, this time through the shipped ONNX file on this runtime."""
    X = _val(card).images.reshape(-1, card["config"]["visible"])
    reconstruction, code = runtime_run(str(WEIGHTS / f"{card['name']}.onnx"), {"image": X})
    assert float(((reconstruction - X) ** 2).mean()) == pytest.approx(card["metrics"]["val_mse"], rel=1e-4)
    assert float(code.mean()) == pytest.approx(card["metrics"]["mean_rho_hat"], rel=1e-4)


def test_lenet_accuracy_recomputed_without_torch():
    card = next(c for c in CARDS if c["name"] == "lenet-mnist")
    val = _val(card)
    logits, features = runtime_run(str(WEIGHTS / "lenet-mnist.onnx"), {"image": val.images[:, None]})
    assert features.shape == (len(val.images), 84)
    assert float((logits.argmax(1) == val.labels).mean()) == pytest.approx(card["metrics"]["val_accuracy"], abs=1e-6)


def test_cgen_class_accuracy_recomputed_without_torch():
    from zoo.evaluate import class_accuracy

    card = next(c for c in CARDS if c["name"] == "cgen-mnist")
    (images,) = runtime_run(str(WEIGHTS / "cgen-mnist.onnx"), {"class_code": np.eye(10, dtype=np.float32)})
    assert class_accuracy(images[:, 0], np.arange(10)) == {"class_accuracy": card["metrics"]["class_accuracy"]}


def test_cdcgan_class_figures_recomputed_through_the_onnx_files():
    """The conditional generator's class accuracies from its shipped ONNX file on this runtime, fed the card's
    own draws (z from torch's seeded generator, as ``CDCGAN.draw`` makes them; the network itself is not
    run in torch): LeNet's and the SVM's accuracy, overall and class by class, within a handful of flipped
    decisions of the card's (float32 sums in another order)."""
    import torch

    from zoo.evaluate import DRAWS, classify, svm_classify

    card = next(c for c in CARDS if c["name"] == "cdcgan-mnist")
    m, nz, k = card["metrics"], card["config"]["nz"], card["config"]["classes"]
    n = card["val_examples"]
    classes = np.arange(n) % k  # (n,): every class in turn
    code = np.eye(k, dtype=np.float32)[classes]  # (n, classes)
    images = []
    for seed in range(DRAWS):
        z = torch.randn(n, nz, generator=torch.Generator().manual_seed(seed)).numpy()  # (n, nz)
        (g,) = runtime_run(str(WEIGHTS / "cdcgan-mnist.generator.onnx"), {"z": z, "class_code": code})
        images.append((g[:, 0] + 1) / 2)  # (n, 28, 28) in [0, 1]
    images, wanted = np.concatenate(images), np.tile(classes, DRAWS)
    lenet, svm = classify(images)[0].argmax(1), svm_classify(images)
    slack = 3 / len(wanted)
    assert float((lenet == wanted).mean()) == pytest.approx(m["class_accuracy"], abs=slack)
    assert float((svm == wanted).mean()) == pytest.approx(m["class_accuracy_svm"], abs=slack)
    for c in range(k):
        mine = wanted == c
        assert float((lenet[mine] == c).mean()) == pytest.approx(m[f"class_accuracy_{c}"], abs=3 / mine.sum())


def test_deconvnet_miou_recomputed_without_torch():
    """The segmentation card's figures from the shipped ONNX file on this runtime's CPU backend."""
    from zoo.evaluate import segmentation_scores

    card = next(c for c in CARDS if c["name"] == "deconvnet-digits")
    val = _val(card)
    sess_path = str(WEIGHTS / "deconvnet-digits.onnx")
    pred = np.concatenate(
        [runtime_run(sess_path, {"image": val.images[i : i + 100, None]})[0].argmax(1) for i in range(0, len(val), 100)]
    )  # (N, H, W)
    scores = segmentation_scores(pred, val.labels, card["config"]["classes"])
    for key in ("val_miou", "val_pixel_accuracy"):
        assert scores[key] == pytest.approx(card["metrics"][key], abs=1e-4), key


@pytest.mark.slow
@pytest.mark.cuda
def test_deconvnet_on_the_cuda_backend_at_full_size():
    """The shipped segmentation network, one canvas, on the CUDA backend (about 4 minutes in the simulator,
    which ``make test`` leaves out: its other CUDA tests cover every kernel at small sizes)."""
    path = str(WEIGHTS / "deconvnet-digits.onnx")
    x = _val(next(c for c in CARDS if c["name"] == "deconvnet-digits")).images[:1, None]  # (1, 1, 48, 48)
    (got,), (expected,) = runtime_run(path, {"image": x}, "cuda"), ort_run(path, {"image": x})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)  # scores of order 10: float32 sums
    assert np.array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("card", CARDS, ids=CARD_IDS)
def test_onnx_metadata_carries_the_card(card):
    for file in (f for f in card["files"] if f.endswith(".onnx")):
        proto = onnx.load(str(WEIGHTS / file))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["model"] == card["model"]
        headline = card["headline"]
        assert json.loads(meta["metrics"])[headline] == pytest.approx(card["metrics"][headline])
        assert proto.ir_version <= 13


# The simulator interprets every GPU thread in Python (seconds per million multiply-adds): on CUDA it runs a
# file only at the batch sizes that need at most this many; a GPU runs them all.
SIMULATOR_MAX_MACS = 2_500_000


def _simulated_batches(file) -> list[int]:
    macs = macs_per_sample(WEIGHTS / file)
    return [b for b in (1, 2, 7, 256) if not SIMULATED or b * macs <= SIMULATOR_MAX_MACS]


def _cases():
    for file in ONNX_FILES:
        cuda_batches = _simulated_batches(file)
        for batch in (1, 7, 256):
            yield pytest.param(file, "cpu", batch, id=f"{file}-cpu-{batch}")
            if batch in cuda_batches:
                yield pytest.param(file, "cuda", batch, id=f"{file}-cuda-{batch}", marks=pytest.mark.cuda)


@pytest.mark.parametrize("file, backend, batch", list(_cases()))
def test_shipped_onnx_matches_onnxruntime(file, backend, batch):
    path = str(WEIGHTS / file)
    feed = _feed_for(WEIGHTS / file, batch, seed=batch)
    got, expected = runtime_run(path, feed, backend), ort_run(path, feed)
    # Random inputs put a few max-pool windows within a few ulps of a tie; which value wins then follows the
    # summation order, which differs between this runtime and onnxruntime, and between onnxruntime's AVX2 and
    # AVX-512 kernels. The samples where the two runtimes' switches differ may differ where the switch sent the
    # value, if every such flip is between two values within TIE_MARGIN of each other (in onnxruntime's own
    # activations); every other sample agrees to rounding. Real images have no such near ties (tests below).
    unpools = any(n.op_type == "MaxUnpool" for n in onnx.load(path, load_external_data=False).graph.node)
    excused, widest = switch_flips(path, feed, backend) if unpools else (np.zeros(batch, bool), 0.0)
    if unpools:
        from zoo.models.deconvnet import TIE_MARGIN  # the ONNX sample's margin from a tie (torch: only here)

        assert widest < TIE_MARGIN, f"a switch flipped between values {widest:.2g} apart (relative): not a near tie"
    assert excused.mean() <= 0.05, f"{excused.sum()} of {batch} random samples flipped a switch"
    # rtol: a deep model's float32 sums, taken in another order than onnxruntime's, drift by a few ulps of the
    # output (DeconvNet-digits after 26 convolutions: 1.0e-5 on a logit of ~16, 5 ulps); atol: the same few ulps
    # of the output's scale, where a score near 0 is the difference of sums that size (deconvnet-digits: 1.2e-5
    # on a score of 0.33 among scores up to 29)
    kept = [e[~excused] for e in expected]
    scale = max((float(np.abs(e).max()) for e in kept if e.size and np.issubdtype(e.dtype, np.floating)), default=0)
    assert_close([g[~excused] for g in got], kept, rtol=1e-6, atol=max(1e-5, 1e-6 * scale))
    if excused.any():
        # a flipped switch moves one value, and everything downstream of it moves a little: from the first pool
        # a few pixels, from the deepest one the whole image (fc6 sees every place). The answer stays: the
        # class of at least 99 % of the excused samples' pixels is the same
        for g, e in zip(got, expected):
            assert g.shape == e.shape and np.isfinite(g).all()
            if g.ndim == 4:  # (N, classes, H, W) scores
                agree = (g[excused].argmax(1) == e[excused].argmax(1)).mean()
                assert agree >= 0.99, f"{excused.sum()} near-tie samples: classes agree on {agree:.4f} of pixels"


def _data_set_cases():
    for file in ONNX_FILES:
        yield pytest.param(file, "cpu", id=f"{file}-cpu")
        if 2 in _simulated_batches(file):
            yield pytest.param(file, "cuda", id=f"{file}-cuda", marks=pytest.mark.cuda)


@pytest.mark.parametrize("file, backend", list(_data_set_cases()))
def test_shipped_test_data_set(file, backend):
    """The ONNX Model Zoo style test data beside each shipped file (inputs and torch's outputs)."""
    feed, expected = read_test_data(WEIGHTS / file[: -len(".onnx")] / "test_data_set_0")
    feed = {name: x[:2] for name, x in feed.items()} if backend == "cuda" else feed
    got = runtime_run(str(WEIGHTS / file), feed, backend)
    n = len(next(iter(feed.values())))
    assert_close(got, [e[:n] for e in expected], rtol=1e-6)  # rtol: as in the test above
