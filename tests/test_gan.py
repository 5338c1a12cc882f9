"""DCGAN and the class-conditional generator: the lecture's architecture stage by stage, the three-phase
schedule, both generator objectives against their definitions, and training on a user's folder of images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.models.dcgan import DCGANConfig
from zoo.train import train


def stage_shapes(generator, z):
    """The (C, H, W) after each transposed convolution of generator(z), from forward hooks."""
    shapes = []
    ups = [m for m in generator.net if isinstance(m, torch.nn.ConvTranspose2d)]
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:]))) for m in ups]
    generator(z)
    for h in hooks:
        h.remove()
    return shapes


def test_dcgan64_generator_is_the_lectures():
    g = zoo.create_model("dcgan-64").generator.eval()
    assert stage_shapes(g, torch.randn(2, 100)) == [
        (1024, 4, 4), (512, 8, 8), (256, 16, 16), (128, 32, 32), (3, 64, 64),
    ]  # fmt: skip
    ups = [m for m in g.net if isinstance(m, torch.nn.ConvTranspose2d)][1:]
    for m in ups:
        assert m.kernel_size == (5, 5) and m.stride == (2, 2) and m.padding == (2, 2) and m.output_padding == (1, 1)
    assert isinstance(g.net[-1], torch.nn.Tanh)
    assert not isinstance(g.net[-2], torch.nn.BatchNorm2d)  # no BatchNorm at the output
    out = g(torch.randn(3, 100))
    assert out.shape == (3, 3, 64, 64) and out.min() >= -1 and out.max() <= 1


def test_dcgan_mnist_stages():
    m = zoo.create_model("dcgan-mnist").eval()
    assert stage_shapes(m.generator, torch.randn(2, 100)) == [(64, 7, 7), (32, 14, 14), (1, 28, 28)]
    assert m.generator.net[0].in_channels == 100 + 10  # z and the one-hot of its class
    assert m.discriminator(torch.rand(2, 1, 28, 28)).shape == (2, 1)


def test_pytorch_example_config_parameter_counts():
    """The 4x4-kernel, 64-wide setting of PyTorch's DCGAN example has 3,576,704 + 2,765,568 parameters."""
    m = zoo.create_model("dcgan-64", kernel_size=4, ngf=64, ndf=64)
    assert sum(p.numel() for p in m.generator.parameters()) == 3_576_704
    assert sum(p.numel() for p in m.discriminator.parameters()) == 2_765_568


def test_discriminator_mirrors_generator():
    d = zoo.create_model("dcgan-64").discriminator
    convs = [m for m in d.net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512, 1024, 1]
    assert isinstance(d.net[1], torch.nn.LeakyReLU) and d.net[1].negative_slope == 0.2
    assert not isinstance(d.net[1], torch.nn.BatchNorm2d)  # no BatchNorm at the input


def test_initialisation_is_normal_0_02():
    torch.manual_seed(0)
    m = zoo.create_model("dcgan-64")
    w = torch.cat([p.flatten() for n, p in m.named_parameters() if p.ndim == 4])
    assert abs(w.mean().item()) < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.02)
    bn = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    scales = torch.cat([b.weight for b in bn])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("bad", [dict(kernel_size=3), dict(g_loss="wasserstein"), dict(image_size=[63, 63])])
def test_config_errors(bad):
    with pytest.raises(zoo.ZooError):
        DCGANConfig(**bad)


@pytest.mark.parametrize("kind", ["minimax", "non-saturating"])
def test_generator_objectives_match_their_definitions(kind):
    torch.manual_seed(0)
    m = zoo.create_model("dcgan-mnist", ngf=8, ndf=8, g_loss=kind, augment="none")
    fake = m.generator(torch.randn(5, 100))
    d = m.discriminator(fake)[:, 0]
    expected = torch.log(1 - d).mean() if kind == "minimax" else -torch.log(d).mean()
    assert m.g_losses(fake)["g_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # max_D E log D(x) + E log(1 - D(G(z))) as a loss
    real = torch.rand(5, 1, 28, 28) * 2 - 1
    d_real = m.discriminator(real)[:, 0]
    expected_d = -(torch.log(d_real).mean() + torch.log(1 - d).mean())
    assert m.d_losses(real, fake)["d_loss"].item() == pytest.approx(expected_d.item(), rel=1e-5)


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


@pytest.mark.parametrize("epoch, g_moves, d_moves", [(1, False, True), (2, True, False), (3, True, True)])
def test_three_phase_schedule(epoch, g_moves, d_moves):
    """Phase 1: D against the untrained G; phase 2: G against the frozen D; phase 3: both compete."""
    torch.manual_seed(0)
    m = zoo.create_model("dcgan-mnist", ngf=8, ndf=8, phase1_epochs=1, phase2_epochs=1).train()
    assert m.phase(epoch) == epoch
    opts = m.configure_optimizers(zoo.TrainConfig(lr=2e-4, beta1=0.5))
    assert opts["generator"].defaults["betas"] == (0.5, 0.999) and opts["generator"].defaults["lr"] == 2e-4
    g0, d0 = _params(m.generator), _params(m.discriminator)
    logs = m.training_step(torch.rand(8, 28, 28), np.arange(8) % 10, opts, epoch)  # labels for its class head
    assert _changed(g0, m.generator) == g_moves
    assert _changed(d0, m.discriminator) == d_moves
    assert ("g_loss" in logs) == g_moves and ("d_loss" in logs) == d_moves
    # dcgan-mnist reads a class from z: G's class term is the head's cross-entropy on it (class_latent)
    assert ("g_class_loss" in logs) == g_moves and ("d_class_loss" in logs) == d_moves


def test_train_dcgan_on_a_folder_of_images(tmp_path):
    """`zoo train dcgan-64 --data DIR`: a user's RGB images of mixed sizes, resized, all three phases."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(24):
        size = (20 + k % 3, 18 + k % 5)
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"img{k:02d}.png")
    out = tmp_path / "run"
    run = train(
        "dcgan-64", out, epochs=3, batch_size=8, seed=0, data=str(folder), progress=False,
        ngf=8, ndf=8, image_size=[16, 16], samples_per_epoch_grid=16,
    )  # fmt: skip
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3]
    assert [t["phase"] for t in run["train_history"]] == [1.0, 2.0, 3.0]
    for epoch in (1, 2, 3):
        assert (out / f"samples_epoch_{epoch:03d}.png").is_file()
    assert (out / "training_curves.png").is_file() and (out / "samples.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["final"]["d_real_mean"] <= 1.0


def test_train_refuses_grey_data_for_an_rgb_model(tmp_path):
    with pytest.raises(zoo.ZooError, match="3 channel"):
        train("dcgan-64", tmp_path, epochs=1, data="mnist", progress=False, image_size=[28, 28], ngf=8, ndf=8)


def test_cgen_learns_the_class_means():
    """The minimiser of E||G(c) - x||^2 over a class is the class mean: a few hundred steps get close."""
    from zoo.data import load_dataset

    torch.manual_seed(0)
    data = load_dataset("mnist", "train", size=(28, 28))
    m = zoo.create_model("cgen-mnist")
    opts = m.configure_optimizers(zoo.TrainConfig(lr=1e-3, beta1=0.5))
    x, y = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    for _ in range(300):
        idx = torch.randint(0, len(x), (128,))
        m.training_step(x[idx], y[idx], opts, 1)
    means = np.stack([data.images[data.labels == c].mean(0) for c in range(10)])
    generated = m.typical_digits()
    assert ((generated - means) ** 2).mean() < 0.01
    # each generated digit is nearest to its own class mean
    distances = ((generated[:, None] - means[None]) ** 2).sum(axis=(2, 3))
    assert (distances.argmin(axis=1) == np.arange(10)).all()
