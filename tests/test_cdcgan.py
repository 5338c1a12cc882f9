"""The class-conditional DCGAN against its definitions: the projection discriminator (Miyato & Koyama) with
AC-GAN's auxiliary classifier learning classes from real digits only (Odena et al.), the lecture's phases, and
the class code reaching the image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.config import TrainConfig


def _model(**cfg):
    torch.manual_seed(0)
    return zoo.create_model("cdcgan-mnist", ngf=8, ndf=8, **cfg)


def _batch(n=12):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_discriminator_heads_share_one_trunk():
    """The real/fake logit of an image said to be class k is the unconditional head plus the k-th row of the
    projection head (Miyato & Koyama's inner product with the class embedding); the class head is separate."""
    d = _model().discriminator.eval()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    classes = torch.tensor([3, 0, 9, 3, 5])
    adversarial, scores = d.heads(x, F.one_hot(classes, 10).float())
    assert adversarial.shape == (5, 1) and scores.shape == (5, 10)
    trunk = d.net[:-1](x)  # (5, 16, 7, 7)
    unconditional = F.conv2d(trunk, d.net[-1].weight).flatten(1)  # (5, 1)
    per_class = F.conv2d(trunk, d.projection.weight).flatten(1)  # (5, 10)
    torch.testing.assert_close(adversarial, unconditional + per_class[torch.arange(5), classes][:, None])
    torch.testing.assert_close(scores, F.conv2d(trunk, d.classifier.weight).flatten(1))
    probability, class_probability = d(x)  # the graph takes the image alone: a column per class
    torch.testing.assert_close(class_probability.sum(1), torch.ones(5))
    torch.testing.assert_close(probability, torch.sigmoid(unconditional + per_class))
    torch.testing.assert_close(probability[torch.arange(5), classes][:, None], torch.sigmoid(adversarial))


def test_generator_reads_the_class_code():
    g = _model().generator.eval()
    z = torch.randn(4, 100)
    a = g(z, F.one_hot(torch.tensor([0, 1, 2, 3]), 10).float())
    b = g(z, F.one_hot(torch.tensor([3, 2, 1, 0]), 10).float())
    assert not torch.allclose(a, b)
    assert torch.allclose(a[:1], g(z[:1], F.one_hot(torch.tensor([0]), 10).float()), atol=1e-6)  # batch-free


@pytest.mark.parametrize(
    "epoch, stepped", [(1, {"discriminator"}), (2, {"generator"}), (3, {"discriminator", "generator"})]
)
def test_the_lectures_phases_step_only_their_half(epoch, stepped):
    model = _model()
    opts = model.configure_optimizers(TrainConfig(lr=1e-3, beta1=0.5))
    before = {k: [p.detach().clone() for p in getattr(model, k).parameters()] for k in ("generator", "discriminator")}
    x, y = _batch()
    logs = model.training_step(x, y, opts, epoch)
    assert logs["phase"] == epoch
    for half, params in before.items():
        moved = any(not torch.equal(p, q) for p, q in zip(params, getattr(model, half).parameters()))
        assert moved == (half in stepped), half


def test_discriminator_loss_as_defined():
    """D's step minimises BCE(real as its class, 1) + BCE(fake as the class asked for, 0) + aux_weight * CE(class
    head on real, real labels): the gradient it applies equals autograd's of that loss written out here (no
    augmentation, so nothing random but z and the classes asked for, replayed from the same seed)."""
    model = _model(augment="none", aux_weight=0.5)
    x, y = _batch()
    torch.manual_seed(5)
    z = torch.randn(len(x), 100)
    asked = torch.randint(0, 10, (len(x),))
    real = x[:, None] * 2 - 1
    fake = model.generator(z, F.one_hot(asked, 10).float()).detach()
    ra, rc = model.discriminator.heads(real, F.one_hot(y, 10).float())
    fa, _ = model.discriminator.heads(fake, F.one_hot(asked, 10).float())
    loss = (F.binary_cross_entropy_with_logits(ra, torch.ones_like(ra))
            + F.binary_cross_entropy_with_logits(fa, torch.zeros_like(fa)) + 0.5 * F.cross_entropy(rc, y))  # fmt: skip
    expected = torch.autograd.grad(loss, list(model.discriminator.parameters()))
    sgd = {"discriminator": torch.optim.SGD(model.discriminator.parameters(), lr=0.0),
           "generator": torch.optim.SGD(model.generator.parameters(), lr=0.0)}  # fmt: skip
    torch.manual_seed(5)
    logs = model.training_step(x, y, sgd, epoch=1)
    got = [p.grad for p in model.discriminator.parameters()]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    assert logs["d_class_loss"] == pytest.approx(float(F.cross_entropy(rc, y).detach()), rel=1e-6)


def test_sample_grid_holds_z_along_a_row():
    model = _model().eval()
    grid = model.sample_grid()  # 6 rows of 10 classes: 28-pixel tiles with a 1-pixel gap
    assert grid.shape[1] == 10 * 28 + 11 and grid.shape[0] == 6 * 28 + 7


def test_mode_seeking_pairs_share_a_class_and_penalise_alike_images():
    """With mode_seeking on, the batch's second half asks for the first half's classes, and G's loss adds
    weight / mean_i(|G(z_i) - G(z_i')| / |z_i - z_i'|) over those pairs (Mao et al. 2019), replayed here."""
    model = _model(augment="none", aux_weight=0.0, mode_seeking=2.0)
    x, y = _batch()
    torch.manual_seed(5)
    z = torch.randn(len(x), 100)
    asked = torch.randint(0, 10, (len(x),))
    asked[6:12] = asked[:6]
    fake = model.generator(z, F.one_hot(asked, 10).float())
    ratio = ((fake[:6] - fake[6:]).abs().mean((1, 2, 3)) / (z[:6] - z[6:]).abs().mean(1)).mean()
    adv, _ = model.discriminator.heads(fake, F.one_hot(asked, 10).float())
    loss = F.binary_cross_entropy_with_logits(adv, torch.ones_like(adv)) + 2.0 / (ratio + 1e-5)
    expected = torch.autograd.grad(loss, list(model.generator.parameters()))
    sgd = {half: torch.optim.SGD(getattr(model, half).parameters(), lr=0.0) for half in ("generator", "discriminator")}
    torch.manual_seed(5)
    logs = model.training_step(x, y, sgd, epoch=2)
    assert logs["g_mode_ratio"] == pytest.approx(float(ratio.detach()), rel=1e-5)
    for g, e in zip((p.grad for p in model.generator.parameters()), expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
