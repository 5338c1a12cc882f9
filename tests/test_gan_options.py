"""DCGAN's options for small data sets against their definitions: DiffAugment's translation and cutout
(against a pixel-loop oracle) and the probability of applying them, the moving average of the generator's
weights (against the recursion written out), the class head and CatGAN's entropies (against scipy), and the
trainer's evaluation every N epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import zoo
from zoo.models.dcgan import DCGANConfig, class_entropies, diff_augment


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """image (C, H, W) moved so that output[r, c] = image[r + dy, c + dx], the background (-1) filling in."""
    _, h, w = image.shape
    out = np.full_like(image, -1.0)
    for r in range(h):
        for c in range(w):
            if 0 <= r + dy < h and 0 <= c + dx < w:
                out[:, r, c] = image[:, r + dy, c + dx]
    return out


def test_translation_moves_each_image_by_at_most_an_eighth():
    torch.manual_seed(0)
    x = torch.rand(16, 2, 16, 16) * 2 - 1  # (N, C, H, W)
    y = diff_augment(x, "translation").numpy()
    seen = set()
    for i in range(len(x)):
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if np.array_equal(_shifted(x[i].numpy(), dy, dx), y[i])]  # fmt: skip
        assert shifts, f"image {i} is not a shift of at most 2 pixels of its input"
        seen.add(shifts[0])
    assert len(seen) > 1  # the shifts are drawn per image


def test_cutout_blanks_one_square_of_half_the_size():
    torch.manual_seed(1)
    x = torch.rand(8, 1, 12, 12) + 0.5  # strictly above the background
    y = diff_augment(x, "cutout")
    for i in range(len(x)):
        blank = (y[i, 0] == -1).numpy()
        rows, cols = np.nonzero(blank)
        assert blank.sum() == 36 and np.ptp(rows) == 5 and np.ptp(cols) == 5  # one 6x6 square
        np.testing.assert_array_equal(y[i, 0].numpy()[~blank], x[i, 0].numpy()[~blank])


@pytest.mark.parametrize("kinds", ["translation", "cutout", "translation,cutout"])
def test_augmentation_passes_the_gradient_to_what_it_keeps(kinds):
    x = (torch.rand(4, 1, 8, 8) * 2 - 1).requires_grad_(True)
    weights = torch.randn(4, 1, 8, 8)
    torch.manual_seed(2)
    (diff_augment(x, kinds) * weights).sum().backward()
    # finite difference in one kept pixel of each image: the gradient the gather carries is the weight there
    torch.manual_seed(2)
    y = diff_augment(x.detach(), kinds)
    for i in range(4):
        kept = torch.nonzero(x.grad[i, 0])
        assert len(kept) > 0
        r, c = kept[0].tolist()
        bumped = x.detach().clone()
        bumped[i, 0, r, c] += 0.5
        torch.manual_seed(2)
        delta = ((diff_augment(bumped, kinds) - y) * weights).sum().item() / 0.5
        assert delta == pytest.approx(x.grad[i, 0, r, c].item(), rel=1e-5)


def test_at_probability_zero_nothing_is_augmented():
    x = torch.rand(5, 1, 8, 8) * 2 - 1  # (N, C, H, W)
    torch.manual_seed(4)
    assert torch.equal(diff_augment(x, "translation,cutout", p=0.0), x)


def test_each_image_is_augmented_with_probability_p_or_kept_as_it_is():
    # cutout on images strictly above the background: an augmented image has exactly one 6x6 square at -1
    torch.manual_seed(5)
    n, p = 2000, 0.3
    x = torch.rand(n, 1, 12, 12) + 0.5  # (N, 1, 12, 12)
    y = diff_augment(x, "cutout", p=p)
    blank = y[:, 0] == -1  # (N, 12, 12)
    changed = blank.flatten(1).any(1)  # (N,)
    for i in range(n):
        if changed[i]:
            rows, cols = np.nonzero(blank[i].numpy())
            assert blank[i].sum() == 36 and np.ptp(rows) == 5 and np.ptp(cols) == 5
            np.testing.assert_array_equal(y[i, 0][~blank[i]].numpy(), x[i, 0][~blank[i]].numpy())
        else:
            assert torch.equal(y[i], x[i])
    share, sd = changed.float().mean().item(), (p * (1 - p) / n) ** 0.5
    assert abs(share - p) < 4 * sd, f"{share:.3f} of the images augmented, expected {p} +- {4 * sd:.3f}"


def test_an_image_kept_as_it_is_passes_the_whole_gradient():
    x = (torch.rand(64, 1, 8, 8) + 0.5).requires_grad_(True)  # (N, 1, 8, 8)
    weights = torch.randn(64, 1, 8, 8)
    torch.manual_seed(6)
    y = diff_augment(x, "cutout", p=0.5)
    (y * weights).sum().backward()
    kept = (y.detach() != -1).flatten(1).all(1)  # (N,): no pixel blanked
    assert 0 < kept.sum() < len(x)
    torch.testing.assert_close(x.grad[kept], weights[kept], rtol=0, atol=0)


def test_a_checkpoint_from_before_augment_p_augments_every_image():
    # a run stored before augment_p existed augmented every image: the config class's 1.0, whatever the
    # factory's default is now
    from dataclasses import asdict

    from zoo.builder import upgrade_config

    stored = asdict(zoo.create_model("dcgan-mnist", ngf=4, ndf=4, augment="translation").config)
    stored.pop("augment_p")
    config, _ = upgrade_config("dcgan-mnist", stored)
    assert config["augment"] == "translation" and config["augment_p"] == 1.0


def test_the_discriminator_sees_augmented_images_only_while_training():
    m = zoo.create_model("dcgan-mnist", ngf=4, ndf=4, augment="translation", augment_p=1.0)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    m.eval()
    assert m.seen_by_d(x) is x
    m.train()
    torch.manual_seed(3)
    assert not torch.equal(m.seen_by_d(x), x)
    assert DCGANConfig().augment == "none"  # off unless asked for (dcgan-mnist asks for it)
    assert zoo.create_model("dcgan-mnist", ngf=4, ndf=4, augment="none").train().seen_by_d(x) is x


def test_the_moving_average_follows_its_ramped_recursion_and_is_what_ships():
    torch.manual_seed(4)
    m = zoo.create_model("dcgan-mnist", ngf=4, ndf=4, nz=8, ema=0.9, samples_per_epoch_grid=4, class_latent=False)
    opt = m.configure_optimizers(zoo.get_model_entry("dcgan-mnist").train)
    expected = {k: v.clone() for k, v in m.generator.named_parameters()}
    for t in range(90):  # phase 3: both players step
        m.training_step(torch.rand(8, 28, 28), np.arange(8) % 10, opt, 3)
        decay = min(0.9, (1 + t) / (10 + t))  # 0.1, 0.18, 0.25, ..., then 0.9 from t = 80 on
        for k, v in m.generator.named_parameters():
            expected[k] = decay * expected[k] + (1 - decay) * v.detach()
    assert int(m.ema_steps) == 90
    for k, v in m.generator_ema.named_parameters():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7)
        assert not v.requires_grad
    for averaged, trained in zip(m.generator_ema.buffers(), m.generator.buffers()):
        assert torch.equal(averaged, trained)  # BatchNorm's running statistics: G's own
    assert m.sampler is m.generator_ema and m.export_parts()["generator"] is m.generator_ema
    plain = zoo.create_model("dcgan-mnist", ngf=4, ndf=4, ema=0.0)
    assert plain.sampler is plain.generator and not hasattr(plain, "generator_ema")


def test_evaluation_every_n_epochs(tmp_path, monkeypatch):
    import zoo.evaluate
    from zoo.train import train

    monkeypatch.setattr(zoo.evaluate, "available", lambda weights_dir=None: False)
    kw = dict(batch_size=8, seed=0, limit=16, progress=False, ngf=4, ndf=4, nz=8, samples_per_epoch_grid=4)
    kw["class_latent"] = False  # nz 8 holds no class of 10
    run = train("dcgan-mnist", tmp_path / "run", epochs=5, eval_every=2, **kw)
    evaluated = [h["epoch"] for h in run["history"] if "d_accuracy" in h]
    assert evaluated == [2, 4, 5]  # every second epoch and the last
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3, 4, 5]  # time is kept for every epoch
    assert run["final"]["epoch"] == 5 and "d_accuracy" in run["final"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["train"]["eval_every"] == 2


def test_class_entropies_match_scipy():
    from scipy.special import softmax
    from scipy.stats import entropy

    logits = np.random.default_rng(7).normal(0, 3, (9, 6))  # (N, K)
    p = softmax(logits, axis=1)
    per_sample, shares = class_entropies(torch.from_numpy(logits))
    assert per_sample.item() == pytest.approx(np.mean([entropy(row) for row in p]), rel=1e-12)
    assert shares.item() == pytest.approx(entropy(p.mean(0)), rel=1e-12)
    # one class for sure, every class as often: 0 and log K
    per_sample, shares = class_entropies(torch.eye(6, dtype=torch.float64) * 80)
    assert per_sample.item() == pytest.approx(0, abs=1e-12) and shares.item() == pytest.approx(np.log(6))


def _digits(n: int) -> tuple[torch.Tensor, np.ndarray]:
    from zoo.data import load_dataset

    data = load_dataset("mnist", "train")
    pick = np.random.default_rng(0).choice(len(data.images), n, replace=False)
    return torch.from_numpy(data.images[pick]), data.labels[pick]  # (n, 28, 28) in [0, 1], (n,)


def test_the_class_head_learns_the_labels_of_real_digits():
    torch.manual_seed(8)
    m = zoo.create_model("dcgan-mnist", ngf=8, ndf=8, class_weight=1.0, augment="none")
    opt = m.configure_optimizers(zoo.get_model_entry("dcgan-mnist").train)
    x, y = _digits(32)
    losses = [m.training_step(x, y, opt, 1)["d_class_loss"] for _ in range(60)]  # phase 1: D alone
    assert losses[0] > 1.5 and losses[-1] < losses[0] / 4, losses[::10]
    with torch.no_grad():
        _, classes = m.discriminator.logits_and_classes(m.to_model_space(x))
    assert (classes.argmax(1).numpy() == y).mean() == 1.0


def _with_a_trained_class_head(seed: int, **cfg):
    """(model, optimizers, digits, labels): a small dcgan-mnist whose class terms weigh 50 times the adversarial
    one, after 40 steps of phase 1 (D alone) on 64 digits, so that its class head is worth following."""
    torch.manual_seed(seed)
    m = zoo.create_model("dcgan-mnist", ngf=8, ndf=8, nz=16, class_weight=50.0, augment="none", **cfg)
    opt = m.configure_optimizers(zoo.get_model_entry("dcgan-mnist").train)
    x, y = _digits(64)
    for _ in range(40):
        m.training_step(x, y, opt, 1)
    return m, opt, x, y


def test_catgan_terms_make_each_sample_one_class_and_every_class_as_often():
    # phase 2 (G against the frozen D): with the class terms weighed far above the adversarial one, G's
    # samples move to lower per-sample entropy and higher share entropy of D's class estimates
    m, opt, x, y = _with_a_trained_class_head(9, class_latent=False)
    z = torch.randn(256, 16)

    def entropies():
        with torch.no_grad():
            return [v.item() for v in class_entropies(m.discriminator.logits_and_classes(m.generator(z))[1])]

    before = entropies()
    d_before = {k: v.clone() for k, v in m.discriminator.named_parameters()}
    for _ in range(60):
        m.training_step(x, y, opt, 2)
    after = entropies()
    assert after[0] < before[0] - 0.3 and after[0] - after[1] < before[0] - before[1] - 0.3, (before, after)
    for k, v in m.discriminator.named_parameters():
        assert torch.equal(v, d_before[k]), f"phase 2 changed D's {k}"


def test_the_class_head_needs_labels_in_range():
    m = zoo.create_model("dcgan-mnist", ngf=4, ndf=4, class_weight=1.0, classes=3)
    opt = m.configure_optimizers(zoo.get_model_entry("dcgan-mnist").train)
    x = torch.rand(4, 28, 28)
    with pytest.raises(zoo.ZooError, match="needs labelled training images"):
        m.training_step(x, None, opt, 3)
    with pytest.raises(zoo.ZooError, match=r"labels 0\.\.3: expected 0\.\.2"):
        m.training_step(x, np.array([0, 1, 2, 3]), opt, 3)
    with pytest.raises(zoo.ZooError, match=r"one class label per image; got labels of shape \(4, 28, 28\)"):
        m.training_step(x, np.zeros((4, 28, 28), np.uint8), opt, 3)  # mnist-seg's label maps
    with pytest.raises(zoo.ZooError, match="own class head"):
        zoo.create_model("cdcgan-mnist", ngf=4, ndf=4, class_weight=1.0)


def test_without_the_class_head_d_is_the_plain_dcgan_one():
    from dataclasses import asdict

    from zoo.builder import upgrade_config

    plain = zoo.create_model("dcgan-mnist", ngf=4, ndf=4, class_weight=0.0, class_latent=False).discriminator
    headed = zoo.create_model("dcgan-mnist", ngf=4, ndf=4, class_weight=1.0).discriminator
    assert not hasattr(plain, "class_head")
    assert set(headed.state_dict()) - set(plain.state_dict()) == {"class_head.weight"}
    # a run stored before class_weight existed had no class head
    stored = asdict(zoo.create_model("dcgan-mnist", ngf=4, ndf=4).config)
    stored.pop("class_weight"), stored.pop("classes"), stored.pop("class_latent")
    config, _ = upgrade_config("dcgan-mnist", stored)
    assert config["class_weight"] == 0.0 and config["class_latent"] is False


def test_class_latent_draws_the_one_hot_of_zs_largest_first_entries():
    torch.manual_seed(10)
    g = zoo.create_model("dcgan-mnist", ngf=4, ndf=4, nz=12, classes=5, class_weight=1.0, class_latent=True)
    g = g.generator.eval()
    z = torch.randn(4096, 12)
    wanted = z[:, :5].numpy().argmax(1)  # (N,): the oracle, numpy's argmax
    assert np.array_equal(g.latent_class(z).numpy(), wanted)
    assert np.bincount(wanted, minlength=5).min() > 4096 / 5 * 0.85  # every class about as likely
    # the image is the plain network's on [z, one_hot(argmax)]: bit-exact, the code exactly one-hot
    code = torch.nn.functional.one_hot(torch.from_numpy(wanted), 5).float()  # (N, 5)
    with torch.no_grad():
        expected = g.net(torch.cat([z, code], 1)[:, :, None, None])
        assert torch.equal(g(z), expected)
    # the exported graph gives what torch gives, through onnxruntime and through this runtime
    import onnxruntime as ort

    import runtime
    from zoo.export import torch_to_onnx

    proto = torch_to_onnx(g, (z[:8],)).SerializeToString()
    with torch.no_grad():
        ref = g(z[:256]).numpy()
    got_ort = ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, {"z": z[:256].numpy()})[0]
    got = runtime.InferenceSession(proto).run(None, {"z": z[:256].numpy()})[0]
    np.testing.assert_allclose(got_ort, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, got_ort, rtol=1e-5, atol=1e-5)


def test_class_latent_asks_the_class_head_for_the_class_read_from_z():
    # phase 2 (G against the frozen D): with AC-GAN's term weighed far above the adversarial one, D's class head
    # names the class read from z more often than before
    m, opt, x, y = _with_a_trained_class_head(11, class_latent=True)
    z = torch.randn(256, 16)
    wanted = z[:, :10].argmax(1)  # (256,)

    def named():
        with torch.no_grad():
            fake = m.generator(z)
            loss = m.g_losses(fake, wanted)["g_class_loss"].item()
            classes = m.discriminator.logits_and_classes(fake)[1]
        expected = torch.nn.functional.cross_entropy(classes, wanted).item()  # the loss is that cross-entropy
        assert loss == pytest.approx(expected, rel=1e-6)
        return (classes.argmax(1) == wanted).float().mean().item(), loss

    before = named()
    d_before = {k: v.clone() for k, v in m.discriminator.named_parameters()}
    for _ in range(60):
        logs = m.training_step(x, y, opt, 2)
    after = named()
    assert "g_class_loss" in logs and "g_class_entropy" not in logs
    assert after[0] > before[0] + 0.3 and after[1] < before[1] / 2, (before, after)
    for k, v in m.discriminator.named_parameters():
        assert torch.equal(v, d_before[k]), f"phase 2 changed D's {k}"


def test_class_latent_refusals():
    with pytest.raises(zoo.ZooError, match=r"class_latent needs the class head.*class_weight > 0"):
        zoo.create_model("dcgan-mnist", ngf=4, ndf=4, class_weight=0.0, class_latent=True)
    with pytest.raises(zoo.ZooError, match=r"first 10 entries; nz is 8"):
        zoo.create_model("dcgan-mnist", ngf=4, ndf=4, nz=8, class_weight=1.0, class_latent=True)
    with pytest.raises(zoo.ZooError, match="given its class as an input"):
        zoo.create_model("cdcgan-mnist", ngf=4, ndf=4, class_latent=True)


def test_latent_of_class_moves_each_points_largest_entry_to_the_class():
    from cli.main import latent_of_class

    z = np.random.default_rng(4).standard_normal((500, 12)).astype(np.float32)
    got = latent_of_class(z, 5, 3)
    assert (got[:, :5].argmax(1) == 3).all() and np.array_equal(got[:, 5:], z[:, 5:])
    assert np.array_equal(np.sort(got[:, :5], 1), np.sort(z[:, :5], 1))  # the same values, rearranged
    kept = z[:, :5].argmax(1) == 3
    assert kept.any() and np.array_equal(got[kept], z[kept])  # points already of class 3 as they were


@pytest.mark.parametrize(
    "name, cfg", [("cdcgan-mnist", {}), ("dcgan-mnist", dict(class_weight=1.0, class_latent=True))], ids=["code", "z"]
)
def test_zoo_sample_draws_the_class_asked_for(name, cfg, tmp_path):
    """`zoo sample --class` on an exported generator given its class as a one-hot input (cdcgan-mnist) or
    reading it from z (class_latent)."""
    from click.testing import CliRunner

    from cli.main import cli
    from zoo.export import export_onnx

    m = zoo.create_model(name, ngf=4, ndf=4, **cfg).eval()
    path = tmp_path / "g.onnx"
    export_onnx(m, path, part="generator")
    out = tmp_path / "sevens.png"
    result = CliRunner().invoke(cli, ["sample", str(path), "--class", "7", "--n", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "8 samples of class 7" in result.output and out.is_file()
    refused = CliRunner().invoke(cli, ["sample", str(path), "--class", "10", "--out", str(tmp_path / "x.png")])
    assert refused.exit_code == 2 and "classes 0 to 9" in refused.output
    if name == "cdcgan-mnist":
        return
    plain = tmp_path / "plain.onnx"
    export_onnx(zoo.create_model("dcgan-mnist", ngf=4, ndf=4, class_latent=False).eval(), plain, part="generator")
    refused = CliRunner().invoke(cli, ["sample", str(plain), "--class", "7", "--out", str(tmp_path / "y.png")])
    assert refused.exit_code == 2 and "takes no class code" in refused.output


def test_zoo_sample_refuses_a_latent_class_count_it_cannot_use(tmp_path):
    import onnx
    from click.testing import CliRunner

    from cli.main import cli
    from zoo.export import export_onnx

    path = tmp_path / "g.onnx"
    export_onnx(zoo.create_model("dcgan-mnist", ngf=4, ndf=4).eval(), path, part="generator")
    proto = onnx.load(path)
    for bad in ("\x1b[31m7", "101"):  # a terminal escape; more classes than z has entries
        for p in proto.metadata_props:
            if p.key == "latent_classes":
                p.value = bad
        onnx.save(proto, path)
        result = CliRunner().invoke(cli, ["sample", str(path), "--class", "7", "--out", str(tmp_path / "x.png")])
        assert result.exit_code == 2 and "expected a count from 2 to its latent width 100" in result.output
        assert "\x1b" not in result.output and not (tmp_path / "x.png").exists()
