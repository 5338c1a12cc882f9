"""The sparse autoencoder (zoo/models/sparse_ae.py): its objective

    J = 1/(2M) sum_m ||a2_m - x_m||^2 + beta sum_j KL(rho || rho_hat_j) + lambda/2 (||W1||^2 + ||W2||^2)

checked against UFLDL's closed-form backpropagation and a central-difference gradient check in float64, the
KL term, the units' shape (radii of gyration of hand-made images) and the PCA beside the network (scikit-learn),
config validation, and a short seeded training run (reproducibility, checkpoint, metrics, pictures)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

import zoo
from zoo.models.sparse_ae import SparseAEConfig, SparseAutoencoder, kl_bernoulli, radius_of_gyration

D, H, W, N1, M = 16, 4, 4, 5, 7
RHO, BETA, LAMBDA = 0.1, 3.0, 1e-3


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def small_model(seed: int = 0) -> SparseAutoencoder:
    """A float64 D=16 (4x4), N1=5 model whose weights and biases are moved well away from the initialisation,
    so the hidden units' mean activations differ from rho and from each other."""
    torch.manual_seed(seed)
    model = zoo.create_model(
        "sparse-ae", visible=D, hidden=N1, image_size=[H, W], rho=RHO, beta=BETA, weight_decay=LAMBDA
    ).double()
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.7 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


def small_batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 2000)
    return torch.rand(M, D, generator=g, dtype=torch.float64)


def numpy_params(model) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return sd["encoder.weight"], sd["encoder.bias"], sd["decoder.weight"], sd["decoder.bias"]


def closed_form(model, x: torch.Tensor) -> dict:
    """UFLDL's backpropagation for J, in NumPy float64, from the parameters alone."""
    W1, b1, W2, b2 = numpy_params(model)
    X = x.numpy()
    z1 = X @ W1.T + b1  # (M, N1)
    a1 = sigmoid(z1)
    z2 = a1 @ W2.T + b2  # (M, D)
    a2 = sigmoid(z2)
    rho_hat = a1.mean(axis=0)  # (N1,)
    delta2 = (a2 - X) * a2 * (1 - a2) / M  # (M, D)
    sparsity = (BETA / M) * (-RHO / rho_hat + (1 - RHO) / (1 - rho_hat))  # (N1,)
    delta1 = (delta2 @ W2 + sparsity) * a1 * (1 - a1)  # (M, N1)
    kl = np.sum(RHO * np.log(RHO / rho_hat) + (1 - RHO) * np.log((1 - RHO) / (1 - rho_hat)))
    J = 0.5 * np.sum((a2 - X) ** 2) / M + BETA * kl + 0.5 * LAMBDA * (np.sum(W1**2) + np.sum(W2**2))
    return dict(
        z1=z1,
        a1=a1,
        z2=z2,
        a2=a2,
        rho_hat=rho_hat,
        delta1=delta1,
        delta2=delta2,
        kl=kl,
        J=J,
        dW1=delta1.T @ X + LAMBDA * W1,
        db1=delta1.sum(axis=0),
        dW2=delta2.T @ a1 + LAMBDA * W2,
        db2=delta2.sum(axis=0),
    )


def assert_tight(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-15)


# --- the objective and its gradients -------------------------------------------------------------


def test_setup_moves_rho_hat_away_from_rho():
    p = closed_form(small_model(), small_batch())
    assert np.all(np.abs(p["rho_hat"] - RHO) > 0.05), p["rho_hat"]
    assert np.ptp(p["rho_hat"]) > 0.05  # the units differ from one another


def test_loss_value_and_parts_match_numpy():
    model, x = small_model(), small_batch()
    total, parts = model.loss(x)
    ref = closed_form(model, x)
    assert total.dtype == torch.float64
    for k in ("z1", "a1", "z2", "a2", "rho_hat"):
        assert_tight(parts[k].detach().numpy(), ref[k])
    assert_tight(parts["kl"].item(), ref["kl"])
    W1, _, W2, _ = numpy_params(model)
    assert_tight(parts["decay"].item(), 0.5 * LAMBDA * (np.sum(W1**2) + np.sum(W2**2)))
    assert_tight(parts["reconstruction"].item(), 0.5 * np.sum((ref["a2"] - x.numpy()) ** 2) / M)
    assert_tight(total.item(), ref["J"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backprop_deltas_match_closed_form(seed):
    model, x = small_model(seed), small_batch(seed)
    total, parts = model.loss(x)
    parts["z1"].retain_grad()
    parts["z2"].retain_grad()
    total.backward()
    ref = closed_form(model, x)
    assert_tight(parts["z2"].grad.numpy(), ref["delta2"])
    assert_tight(parts["z1"].grad.numpy(), ref["delta1"])
    # the sparsity term is a real part of delta1 here, not a rounding error
    no_sparsity = (ref["delta2"] @ numpy_params(model)[2]) * ref["a1"] * (1 - ref["a1"])
    assert np.max(np.abs(no_sparsity - ref["delta1"])) > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parameter_gradients_match_closed_form(seed):
    model, x = small_model(seed), small_batch(seed)
    total, _ = model.loss(x)
    total.backward()
    ref = closed_form(model, x)
    assert_tight(model.encoder.weight.grad.numpy(), ref["dW1"])
    assert_tight(model.encoder.bias.grad.numpy(), ref["db1"])  # no weight decay on the biases
    assert_tight(model.decoder.weight.grad.numpy(), ref["dW2"])
    assert_tight(model.decoder.bias.grad.numpy(), ref["db2"])


def test_central_difference_gradient_check():
    """UFLDL's check: ||num - auto|| / ||num + auto|| over every parameter."""
    model, x = small_model(), small_batch()
    total, _ = model.loss(x)
    total.backward()
    params = list(model.parameters())
    auto = torch.cat([p.grad.reshape(-1) for p in params]).numpy()
    eps = 1e-5
    num = []
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for i in range(flat.numel()):
                orig = flat[i].item()
                flat[i] = orig + eps
                up = model.loss(x)[0].item()
                flat[i] = orig - eps
                down = model.loss(x)[0].item()
                flat[i] = orig
                num.append((up - down) / (2 * eps))
    num = np.array(num)
    assert num.shape == (N1 * D + N1 + D * N1 + D,)
    rel = np.linalg.norm(num - auto) / np.linalg.norm(num + auto)
    assert rel <= 1e-9, rel


def test_autograd_gradcheck_on_flat_parameters():
    model, x = small_model(), small_batch()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone().requires_grad_(True)

    loss = _LossWrapper(model)

    def J(flat):
        chunks = torch.split(flat, [math.prod(s) for s in shapes])
        params = {f"m.{n}": c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return torch.func.functional_call(loss, params, (x,), strict=True)

    assert torch.autograd.gradcheck(J, (flat0,), eps=1e-6, atol=1e-8, rtol=1e-6)


class _LossWrapper(torch.nn.Module):
    """forward(x) = model.loss(x)[0], so functional_call can swap the parameters of the loss."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m.loss(x)[0]


# --- the KL term ------------------------------------------------------------------------------------


def test_kl_is_zero_when_rho_hat_equals_rho():
    for rho in (0.01, 0.05, 0.1, 0.5, 0.9):
        kl = kl_bernoulli(rho, torch.full((6,), rho, dtype=torch.float64))
        assert kl.shape == (6,)
        # zero up to the rounding of torch's scalar / tensor (computed as scalar * reciprocal(tensor)):
        # 0.95 * (1 / 0.95) is 1 - 2^-53 in float64, so the KL at rho = 0.05 comes out as -1e-16
        assert torch.all(kl.abs() <= 4 * torch.finfo(torch.float64).eps), (rho, kl)
    kl32 = kl_bernoulli(0.1, torch.full((6,), 0.1, dtype=torch.float32))
    assert torch.all(kl32.abs() < 1e-6)


def test_kl_positive_elsewhere_and_matches_formula():
    rho = 0.1
    rho_hat = torch.tensor([1e-4, 0.01, 0.05, 0.0999, 0.1001, 0.2, 0.5, 0.9, 0.9999], dtype=torch.float64)
    kl = kl_bernoulli(rho, rho_hat)
    assert torch.all(kl > 0), kl
    r = rho_hat.numpy()
    expected = rho * np.log(rho / r) + (1 - rho) * np.log((1 - rho) / (1 - r))
    assert_tight(kl.numpy(), expected)
    # moving away from rho on either side increases it
    assert np.all(np.diff(kl.numpy()[:4]) < 0) and np.all(np.diff(kl.numpy()[4:]) > 0)


def test_model_kl_near_zero_when_hidden_units_sit_at_rho():
    model = small_model()
    with torch.no_grad():
        model.encoder.weight.zero_()
        model.encoder.bias.fill_(math.log(RHO / (1 - RHO)))  # sigmoid(b1) = rho
    _, parts = model.loss(small_batch())
    np.testing.assert_allclose(parts["rho_hat"].detach().numpy(), RHO, rtol=1e-12)
    assert abs(parts["kl"].item()) < 1e-12


# --- evaluate ----------------------------------------------------------------------------------------


def test_evaluate_matches_numpy_forward():
    model = small_model()
    X = np.random.default_rng(5).random((40, D))  # float64, like the model
    got = model.evaluate(X)
    W1, b1, W2, b2 = numpy_params(model)
    a1 = sigmoid(X @ W1.T + b1)
    a2 = sigmoid(a1 @ W2.T + b2)
    rho_hat = a1.mean(axis=0)
    assert_tight(got["val_mse"], np.mean((a2 - X) ** 2))
    assert_tight(got["mean_rho_hat"], rho_hat.mean())
    assert_tight(got["max_rho_hat"], rho_hat.max())
    kl = np.sum(RHO * np.log(RHO / rho_hat) + (1 - RHO) * np.log((1 - RHO) / (1 - rho_hat)))
    assert_tight(got["kl_term"], BETA * kl)
    assert got["rho"] == RHO
    # an (M, H, W) array is flattened the same way
    assert model.evaluate(X.reshape(40, H, W)) == got


def test_forward_returns_reconstruction_and_code():
    model, x = small_model(), small_batch()
    recon, code = model(x)
    _, parts = model.loss(x)
    assert recon.shape == (M, D) and code.shape == (M, N1)
    assert torch.equal(recon, parts["a2"]) and torch.equal(code, parts["a1"])


# --- what the units look like, and PCA beside them ------------------------------------------------


def test_radius_of_gyration_of_known_images():
    one = np.zeros((1, 9, 9))
    one[0, 4, 6] = 0.7
    assert radius_of_gyration(one)[0] == pytest.approx(0.0, abs=1e-12)
    pairs = np.zeros((3, 9, 9))
    pairs[0, 2, 1] = pairs[0, 2, 7] = 1.0  # 6 apart along a row
    pairs[1, 0, 3] = pairs[1, 8, 3] = 0.2  # 8 apart along a column, any equal weight
    pairs[2, 1, 1] = pairs[2, 4, 5] = 0.5  # 5 apart diagonally (3, 4, 5)
    np.testing.assert_allclose(radius_of_gyration(pairs), [3.0, 4.0, 2.5], rtol=1e-12)
    unequal = np.zeros((1, 9, 9))
    unequal[0, 0, 0], unequal[0, 0, 8] = 1.0, 3.0  # weights w1, w2 d apart: d sqrt(w1 w2) / (w1 + w2)
    np.testing.assert_allclose(radius_of_gyration(unequal), 8 * math.sqrt(3) / 4, rtol=1e-12)
    square = np.ones((1, 5, 5))  # a uniform n x n square: sqrt(2 (n^2 - 1) / 12)
    np.testing.assert_allclose(radius_of_gyration(square), math.sqrt(2 * 24 / 12), rtol=1e-12)
    np.testing.assert_allclose(radius_of_gyration(4 * pairs), radius_of_gyration(pairs), rtol=1e-12)
    assert np.isnan(radius_of_gyration(np.zeros((1, 9, 9)))).all()


def test_unit_figures_of_units_with_known_shapes():
    """Units built by hand: unit j's positive encoder weights and its stroke in the decoder's output are two
    equal pixels 2 (j + 1) apart, so each radius is j + 1; the held-out images are two pixels 1, 2, 3 apart."""
    model = zoo.create_model("sparse-ae", visible=64, hidden=3, image_size=[8, 8]).double()
    W1, W2 = torch.full((3, 8, 8), -0.5, dtype=torch.float64), torch.zeros(64, 3, dtype=torch.float64)
    for j in range(3):
        W1[j, 1, 0] = W1[j, 1, 2 * (j + 1)] = 0.9  # the rest negative: left out by the positive part
        stroke = torch.zeros(8, 8, dtype=torch.float64)
        stroke[0, 3] = stroke[2 * (j + 1), 3] = 2.0
        W2[:, j] = stroke.reshape(-1) - (stroke.reshape(-1) == 0) * 1.0  # darkening elsewhere: left out too
    with torch.no_grad():
        model.encoder.weight.copy_(W1.reshape(3, 64))
        model.decoder.weight.copy_(W2)
        model.decoder.bias.zero_()
    X = np.zeros((3, 8, 8))
    for i, d in enumerate((1, 2, 3)):
        X[i, 4, 0] = X[i, 4, d] = 1.0
    got = model.evaluate(X)
    assert got["receptive_field_radius_median"] == pytest.approx(2.0, rel=1e-12)  # radii 1, 2, 3
    assert got["unit_radius_median"] == pytest.approx(2.0, rel=1e-12)
    assert got["digit_radius_median"] == pytest.approx(1.0, rel=1e-12)  # radii 0.5, 1, 1.5
    assert "pca_mse" not in got  # these are not the held-out split of the model's data


def _pca_oracle(train: np.ndarray, X: np.ndarray, k: int) -> float:
    from sklearn.decomposition import PCA

    if k == 0:  # the training mean alone
        return float(((X - train.mean(0)) ** 2).mean())
    pca = PCA(n_components=k, svd_solver="full").fit(train)
    return float(((pca.inverse_transform(pca.transform(X)) - X) ** 2).mean())


def test_pca_figures_match_scikit_learn():
    """PCA at the network's code width, and the fewest components that do as well as the network, against
    scikit-learn's PCA fitted on the training digits."""
    from zoo.data import load_dataset

    torch.manual_seed(0)
    model = zoo.create_model("sparse-ae-digits8", hidden=5)
    train = load_dataset("digits8", "train", size=(8, 8)).flat.astype(np.float64)
    X = load_dataset("digits8", "val", size=(8, 8)).images
    got = model.evaluate(X)
    flat = X.reshape(len(X), -1).astype(np.float64)
    assert got["pca_mse"] == pytest.approx(_pca_oracle(train, flat, 5), rel=1e-9)
    errors = [_pca_oracle(train, flat, k) for k in range(65)]
    expected = next(k for k, e in enumerate(errors) if e <= got["val_mse"])
    assert got["pca_components_to_match"] == expected
    # a run with limit holds out the head of the split: the same PCA, on those images
    head = model.evaluate(X[:40])
    assert head["pca_mse"] == pytest.approx(_pca_oracle(train, flat[:40], 5), rel=1e-9)
    # images that are not the model's held-out split (a run on other data) get no PCA figures
    assert "pca_mse" not in model.evaluate(X[::-1].copy())
    noise = np.random.default_rng(0).random((9, 64), np.float32)
    assert "pca_mse" not in zoo.create_model("sparse-ae-digits8").evaluate(noise)


# --- config validation and the registry -------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_rho_outside_unit_interval_rejected(rho):
    with pytest.raises(zoo.ZooError, match="rho"):
        zoo.create_model("sparse-ae", visible=16, hidden=5, image_size=[4, 4], rho=rho)


@pytest.mark.parametrize("visible,image_size", [(16, [4, 5]), (784, [8, 8]), (64, [28, 28])])
def test_visible_must_match_image_size(visible, image_size):
    with pytest.raises(zoo.ZooError, match="visible"):
        zoo.create_model("sparse-ae", visible=visible, hidden=5, image_size=image_size)


def test_digits8_defaults_and_mismatched_override():
    m = zoo.create_model("sparse-ae-digits8")
    assert (m.config.visible, m.config.hidden, m.config.image_size) == (64, 25, [8, 8])
    assert m.encoder.weight.shape == (25, 64) and m.decoder.weight.shape == (64, 25)
    with pytest.raises(zoo.ZooError):
        zoo.create_model("sparse-ae-digits8", visible=784)  # image_size stays 8x8


def test_unknown_model_names_the_registered_ones():
    assert {"sparse-ae", "sparse-ae-digits8"} <= set(zoo.list_models())
    with pytest.raises(zoo.ZooError) as e:
        zoo.create_model("nope")
    msg = str(e.value)
    assert "nope" in msg
    for name in zoo.list_models():
        assert name in msg


def test_unknown_config_key_rejected():
    with pytest.raises(zoo.ZooError, match="bogus"):
        zoo.create_model("sparse-ae", bogus=1)


def test_create_model_sets_name_and_config():
    m = zoo.create_model("sparse-ae", visible=16, hidden=5, image_size=[4, 4])
    assert m.model_name == "sparse-ae"
    assert isinstance(m.config, SparseAEConfig) and m.config.hidden == 5
    r = math.sqrt(6.0 / (16 + 5 + 1))
    for layer in (m.encoder, m.decoder):
        assert layer.weight.detach().abs().max().item() <= r
        assert torch.all(layer.bias == 0)


# --- a short training run --------------------------------------------------------------------------

TRAIN = dict(epochs=2, progress=False, limit=200)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from zoo.train import train

    root = tmp_path_factory.mktemp("train")
    out = {}
    for key, seed in (("a", 3), ("b", 3), ("c", 4)):
        out[key] = (root / key, train("sparse-ae-digits8", root / key, seed=seed, **TRAIN))
    return out


def _without_timing(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "seconds"}


def _tensors(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_training_is_bit_reproducible(runs):
    (a, run_a), (b, run_b) = runs["a"], runs["b"]
    for fname in ("checkpoint.safetensors", "sparse-ae-digits8.safetensors"):
        ta, tb = _tensors(a / fname), _tensors(b / fname)
        # the weights, and in the per-epoch checkpoint the resume state (optimizer moments, RNG states) too
        assert {k for k in ta if not k.startswith("_resume/")} == {
            "encoder.weight",
            "encoder.bias",
            "decoder.weight",
            "decoder.bias",
        }
        assert any(k.startswith("_resume/") for k in ta) == (fname == "checkpoint.safetensors")
        assert set(ta) == set(tb)
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape
            assert np.array_equal(ta[k], tb[k]), (fname, k)
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert _without_timing(ma["final"]) == _without_timing(mb["final"])
    assert [_without_timing(h) for h in ma["history"]] == [_without_timing(h) for h in mb["history"]]
    assert _without_timing(run_a["final"]) == _without_timing(run_b["final"])


def test_different_seed_gives_different_weights(runs):
    ta = _tensors(runs["a"][0] / "checkpoint.safetensors")
    tc = _tensors(runs["c"][0] / "checkpoint.safetensors")
    assert not np.array_equal(ta["encoder.weight"], tc["encoder.weight"])
    assert not np.array_equal(ta["decoder.weight"], tc["decoder.weight"])
    assert runs["a"][1]["final"]["val_mse"] != runs["c"][1]["final"]["val_mse"]


def test_training_writes_metrics_checkpoint_and_pictures(runs):
    from PIL import Image

    out, run = runs["a"]
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    for k in ("val_mse", "mean_rho_hat", "kl_term"):
        assert k in final and math.isfinite(final[k]), k
    assert 0.0 < final["val_mse"] < 1.0
    assert 0.0 < final["mean_rho_hat"] < 1.0
    assert final["kl_term"] >= 0.0
    assert final["epoch"] == 2 and len(metrics["history"]) == 2
    assert metrics["seed"] == 3 and metrics["model"] == "sparse-ae-digits8"
    assert metrics["train_examples"] == 200 and metrics["val_examples"] == 50
    assert (out / "checkpoint.safetensors").is_file()
    for name in ("receptive_fields.png", "reconstructions.png"):
        path = out / name
        assert path.is_file(), name
        assert str(path) in metrics["pictures"]
        with Image.open(path) as im:
            im.load()
            assert im.format == "PNG" and im.mode == "RGB", (name, im.mode)
            assert 100 <= im.width <= 4000 and 50 <= im.height <= 4000, (name, im.size)
            assert np.asarray(im).std() > 1.0  # not a blank canvas


def test_checkpoint_metadata_names_model_config_epoch(runs):
    from zoo.checkpoint import read_metadata

    out, run = runs["a"]
    meta = read_metadata(out / "checkpoint.safetensors")
    assert meta["model"] == "sparse-ae-digits8"
    assert meta["epoch"] == 2
    expected_config = asdict(zoo.create_model("sparse-ae-digits8").config)
    assert meta["config"] == expected_config
    assert meta["metrics"] == {k: v for k, v in run["history"][-1].items() if k not in ("epoch", "seconds")}
    final = read_metadata(out / "sparse-ae-digits8.safetensors")
    assert final["model"] == "sparse-ae-digits8" and final["epoch"] == 2 and final["config"] == expected_config
    assert final["seed"] == 3 and final["data"] == "digits8"


def test_per_epoch_checkpoint_after_one_epoch(tmp_path):
    from zoo.checkpoint import read_metadata
    from zoo.train import train

    run = train("sparse-ae-digits8", tmp_path, seed=3, epochs=1, progress=False, limit=100)
    meta = read_metadata(tmp_path / "checkpoint.safetensors")
    assert meta["epoch"] == 1 and meta["model"] == "sparse-ae-digits8"
    assert meta["metrics"]["val_mse"] == run["final"]["val_mse"]


def test_load_checkpoint_reproduces_trained_outputs(runs):
    from zoo.checkpoint import load_checkpoint
    from zoo.data import load_dataset

    out, run = runs["a"]
    X_val = load_dataset("digits8", "val", size=(8, 8)).flat[:50]  # what train() held out with limit=200
    for fname in ("checkpoint.safetensors", "sparse-ae-digits8.safetensors"):
        model, meta = load_checkpoint(out / fname)
        assert isinstance(model, SparseAutoencoder) and not model.training
        assert model.model_name == "sparse-ae-digits8"
        # the same held-out figures, to the bit, as the trained model's
        assert model.evaluate(X_val) == _without_timing({k: v for k, v in run["final"].items() if k != "epoch"})
        # and the same outputs as a forward pass from the stored tensors
        sd = _tensors(out / fname)
        a1 = sigmoid(X_val.astype(np.float64) @ sd["encoder.weight"].T + sd["encoder.bias"])
        a2 = sigmoid(a1 @ sd["decoder.weight"].T + sd["decoder.bias"])
        with torch.no_grad():
            recon, code = model(torch.from_numpy(X_val))
        np.testing.assert_allclose(code.numpy(), a1, rtol=0, atol=1e-5)
        np.testing.assert_allclose(recon.numpy(), a2, rtol=0, atol=1e-5)


def test_reconstructions_show_one_digit_of_each_class(monkeypatch, tmp_path):
    """The held-out split lists its digits class by class; the picture takes the first of each class (it showed
    sixteen zeros)."""
    import zoo.pictures
    from zoo.data import load_dataset

    seen = {}
    monkeypatch.setattr(zoo.pictures, "sparse_ae_figures", lambda sd, size, X, recon, out: seen.update(X=X) or [])
    val = load_dataset("mnist", "val", size=(28, 28))
    zoo.create_model("sparse-ae").write_pictures(tmp_path, val.images, val.labels)
    rows = {tuple(r) for r in val.images.reshape(len(val.images), -1)}
    assert len(seen["X"]) == 10 and all(tuple(x) in rows for x in seen["X"])
    flat = val.images.reshape(len(val.images), -1)
    classes = [int(val.labels[np.flatnonzero((flat == x).all(1))[0]]) for x in seen["X"]]
    assert sorted(classes) == list(range(10))
