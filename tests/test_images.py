"""Images in: the preprocessing shared by `zoo run`, `zoo visualize` and Python, checked against the shipped
classifier as the oracle. Held-out digits drawn as a person would give them (dark ink on white paper, larger,
off-centre, with margins) must be read back as the digits they are; white-on-black input is left as it is."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import runtime
import zoo
from zoo.data import load_dataset
from zoo.errors import ZooError
from zoo.images import InputSpec, looks_inverted, preprocess

N = 60


@pytest.fixture(scope="module")
def digits():
    val = load_dataset("mnist", "val", size=(28, 28))
    pick = np.linspace(0, len(val.images) - 1, N).astype(int)
    return val.images[pick], val.labels[pick]


def as_drawing(digit: np.ndarray, k: int) -> Image.Image:
    """A digit as a scan of ink on paper: black on white, 4x larger, placed off-centre on a wider sheet."""
    big = Image.fromarray(((1 - digit) * 255).astype(np.uint8)).resize((112, 112), Image.BILINEAR)
    sheet = Image.new("L", (200, 160), 255)
    sheet.paste(big, (10 + 7 * (k % 10), 5 + 4 * (k % 7)))
    return sheet


def test_drawings_are_inverted_fitted_and_read_back(digits, tmp_path):
    images, labels = digits
    paths = []
    for k, d in enumerate(images):
        as_drawing(d, k).save(tmp_path / f"{k:03d}.png")
        paths.append(tmp_path / f"{k:03d}.png")
    spec = zoo.pretrained_weights("lenet-mnist").transforms()
    assert spec == InputSpec("image", (28, 28), 1, (0.0, 1.0), False, "mnist")
    batch, notes = preprocess(paths, spec)
    assert batch.shape == (N, 1, 28, 28) and batch.dtype == np.float32
    assert len(notes) == N and all("inverted" in n for n in notes)
    sess = runtime.InferenceSession(str(zoo.pretrained_weights("lenet-mnist").onnx()), backend="cpu")
    logits = sess.run(["logits"], {"image": batch})[0]
    accuracy = float((logits.argmax(1) == labels).mean())
    assert accuracy >= 0.9, accuracy  # the shipped LeNet reads 98.8 % of these digits as they are
    direct = sess.run(["logits"], {"image": images[:, None]})[0].argmax(1)
    assert float((logits.argmax(1) == direct).mean()) >= 0.9


def test_white_on_black_is_kept_and_invert_forces(digits):
    images, _ = digits
    spec = zoo.pretrained_weights("lenet-mnist").transforms()
    batch, notes = preprocess(list(images[:5]), spec)
    assert notes == [] and not any(looks_inverted(d) for d in images[:5])
    np.testing.assert_allclose(batch[:, 0].sum((1, 2)), images[:5].sum((1, 2)), rtol=0.15)
    forced, notes = preprocess(list(images[:1]), spec, invert=True)
    by_hand, _ = preprocess([1 - images[0]], spec, invert=False)
    np.testing.assert_array_equal(forced, by_hand)  # forcing inverts, whatever the picture looks like
    assert notes == [] and not np.array_equal(forced, batch[:1])


@pytest.mark.parametrize(
    "weights, part, shape, lo, hi",
    [("sparse-ae-mnist", None, (2, 784), 0.0, 1.0), ("dcgan-mnist", "discriminator", (2, 1, 28, 28), -1.0, 1.0),
     ("deconvnet-digits", None, (2, 1, 48, 48), 0.0, 1.0), ("sparse-ae-digits8", None, (2, 64), 0.0, 1.0)],
)  # fmt: skip
def test_each_shipped_image_input_gets_its_layout_and_range(digits, weights, part, shape, lo, hi):
    images, _ = digits
    spec = zoo.pretrained_weights(weights).transforms(part)
    batch = spec(list(images[:2]))
    assert batch.shape == shape and batch.min() >= lo - 1e-6 and batch.max() <= hi + 1e-6
    assert batch.min() < lo + 0.05 and batch.max() > hi - 0.3  # the range is used, not squeezed


def test_inputs_that_are_not_images_are_refused():
    with pytest.raises(ZooError, match="does not hold 28x28 images"):
        zoo.pretrained_weights("dcgan-mnist").transforms("generator")
    spec = zoo.pretrained_weights("lenet-mnist").transforms()
    with pytest.raises(ZooError, match=r"expected \(H, W\) or \(H, W, 3\) pixels in \[0, 1\]"):
        spec([np.full((28, 28), 3.0)])
