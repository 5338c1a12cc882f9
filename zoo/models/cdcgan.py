"""A class-conditional DCGAN: the lecture's "generate X̂ given a code y" with the convolutional generator the
lecture says large signals need, trained adversarially. The generator takes a latent vector z and a one-hot
class code y side by side. The discriminator is told the class too: its real/fake logit is an unconditional
head plus a class-specific linear head picked by the code (the projection discriminator of Miyato & Koyama
2018), and a second head names the class (the auxiliary classifier of Odena, Olah & Shlens 2017, AC-GAN),
learnt from real digits only. The generator is trained to be taken for real as the class it was asked for,
and for that class by the auxiliary classifier (weight ``aux_weight``).

    cdcgan-mnist: [z(100), y(10)] -> 7x7x64 -> 14x14x32 -> 28x28x1   (DCGAN's stages, 5x5 kernels, stride 2)
                  28x28x1 -> 14x14x32 -> 7x7x64 -> real as each class? (10) and class scores (10)

Everything else is DCGAN's (``zoo/models/dcgan.py``): the lecture's three phases, the non-saturating loss,
DiffAugment of the discriminator's inputs and the moving average of the generator's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.config import setting
from zoo.errors import ZooError
from zoo.models.dcgan import DCGAN, DCGANConfig, Discriminator, Generator, dcgan_init
from zoo.registry import register_model


@dataclass
class CDCGANConfig(DCGANConfig):
    # weight of the classification losses (D's on real images, G's on its own) beside the adversarial ones
    aux_weight: float = setting(1.0, lo=0.0, hi=1e3)
    # mode seeking (Mao et al. 2019): G's loss adds this times 1 / (|G(z1, y) - G(z2, y)| / |z1 - z2|) for
    # pairs of latent points with the same class, so that z is not ignored; 0: off
    mode_seeking: float = setting(0.0, lo=0.0, hi=1e3)

    def __post_init__(self):
        if self.class_latent:
            raise ZooError("class_latent: cdcgan's generator is given its class as an input (class_code)")
        super().__post_init__()
        if self.class_weight > 0:
            raise ZooError(
                f"class_weight {self.class_weight}: cdcgan's discriminator has its own class head; set aux_weight"
            )


class ConditionalGenerator(Generator):
    input_names = ("z", "class_code")
    output_names = ("image",)

    def __init__(self, c: CDCGANConfig):
        super().__init__(c, code_width=c.classes)

    def forward(self, z: torch.Tensor, class_code: torch.Tensor) -> torch.Tensor:
        # z: (N, nz), class_code: (N, classes) one-hot -> image: (N, C, S, S) in [-1, 1]
        return self.net(torch.cat([z, class_code], 1)[:, :, None, None])  # (N, nz + classes, 1, 1) first

    def example_input(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        code = torch.eye(self.config.classes)[torch.arange(batch) % self.config.classes]  # (batch, classes)
        return torch.randn(batch, self.config.nz), code

    def onnx_sample(self, images, labels) -> tuple[np.ndarray, np.ndarray]:
        z = np.random.default_rng(0).standard_normal((10, self.config.nz)).astype(np.float32)  # (10, nz)
        return z, np.eye(self.config.classes, dtype=np.float32)[np.arange(10) % self.config.classes]

    def onnx_metadata(self) -> dict:
        return super().onnx_metadata() | {
            "input_range": "z ~ N(0, 1); class_code one-hot (N, classes)",
            "class_names": '["' + '", "'.join(str(k) for k in range(self.config.classes)) + '"]',
        }


class ConditionalDiscriminator(Discriminator):
    """One convolutional trunk, two heads on its (N, widths[-1], base, base) features: the real/fake logit of
    an image *as each class* (Miyato & Koyama 2018's projection: the unconditional head plus a class-specific
    linear head; training picks the column of the class the image is said to be), and class scores (AC-GAN's
    auxiliary classifier, Odena et al. 2017). It takes the image alone: its first output has a column per
    class, so no class code goes in."""

    output_names = ("probability", "class_probability")

    def __init__(self, c: CDCGANConfig):
        super().__init__(c)
        width, base = self.widths[-1], c.base_size
        self.projection = nn.Conv2d(width, c.classes, base, stride=1, padding=0, bias=False)  # a logit per class
        self.classifier = nn.Conv2d(width, c.classes, base, stride=1, padding=0, bias=False)
        dcgan_init(self.projection)
        dcgan_init(self.classifier)

    def all_heads(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real-as-class-k logits (N, classes), class logits (N, classes)) of images (N, C, S, S) in [-1, 1]."""
        h = self.net[:-1](image)  # (N, widths[-1], base, base)
        return self.net[-1](h).flatten(1) + self.projection(h).flatten(1), self.classifier(h).flatten(1)

    def heads(self, image: torch.Tensor, class_code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real/fake logits (N, 1) of images said to be of the classes ``class_code`` (N, classes) one-hot,
        class logits (N, classes))."""
        as_each, classes = self.all_heads(image)
        return (as_each * class_code).sum(1, keepdim=True), classes  # (N, 1): the code's column

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        as_each, classes = self.all_heads(image)
        return torch.sigmoid(as_each), torch.softmax(classes, 1)  # (N, classes), (N, classes)


class CDCGAN(DCGAN):
    """DCGAN asked for a class: generator (z, class code) -> image; discriminator image -> real as each class?,
    and which class."""

    generator_type = ConditionalGenerator
    discriminator_type = ConditionalDiscriminator
    headline_metric = "class_accuracy_min"
    card_notes = {
        "intended_use": "Drawing digits of a chosen class (`zoo sample cdcgan-mnist --class 7`) and seeing a "
        "conditional generator work as the lecture describes: one latent vector z, one class code y.",
        "limitations": [
            "Class accuracy and FID are measured with the zoo's LeNet and a pixel SVM, not Inception, so they "
            "compare runs of this zoo, not published GAN figures.",
            "The class code must be one-hot; mixtures of codes are outside what it was trained on.",
            "The discriminator is a training by-product, not a calibrated real/fake detector or digit classifier.",
        ],
        "tensors": DCGAN.card_notes["tensors"]
        | {
            "class_code": {"range": "one-hot rows", "meaning": "the class to draw", "classes": "column k is digit k"},
            "generator/image": DCGAN.card_notes["tensors"]["generator/image"]
            | {"meaning": "a generated image of the class asked for"},
            "probability": {
                "range": "[0, 1] (sigmoid)",
                "meaning": "the discriminator's probability that it is a real image of class k, column by column",
                "classes": "column k is digit k",
            },
            "class_probability": {"range": "[0, 1], rows sum to 1", "meaning": "the discriminator's class estimate"},
        },
    }

    def codes(self, classes: torch.Tensor) -> torch.Tensor:
        """(N,) class indices -> (N, classes) one-hot float codes."""
        return F.one_hot(classes.long(), self.config.classes).to(torch.float32)

    def training_step(self, x: torch.Tensor, y, optimizers: dict, epoch: int) -> dict:
        real = self.to_model_space(x)  # (M, C, S, S)
        real_classes = torch.as_tensor(y, device=real.device).long()  # (M,)
        z = torch.randn(len(real), self.config.nz, device=real.device)  # (M, nz)
        asked = torch.randint(0, self.config.classes, (len(real),), device="cpu").to(real.device)  # (M,)
        pairs = len(real) // 2 if self.config.mode_seeking > 0 else 0
        if pairs:  # the second half asks for the first half's classes: pairs (i, pairs + i) share a class
            asked[pairs : 2 * pairs] = asked[:pairs]
        code = self.codes(asked)  # (M, classes)
        phase, w = self.phase(epoch), self.config.aux_weight
        logs = {"phase": float(phase)}
        if phase in (1, 3):
            # D: real vs generated, and the class of the real images (not of the generated ones: D would learn
            # to recognise G's mistakes as classes)
            fake = self.generator(z, code).detach()
            real_adv, real_cls = self.discriminator.heads(self.seen_by_d(real), self.codes(real_classes))
            fake_adv, _ = self.discriminator.heads(self.seen_by_d(fake), code)
            adversarial = F.binary_cross_entropy_with_logits(real_adv, torch.ones_like(real_adv))
            adversarial = adversarial + F.binary_cross_entropy_with_logits(fake_adv, torch.zeros_like(fake_adv))
            classification = F.cross_entropy(real_cls, real_classes)
            self.step(optimizers["discriminator"], adversarial + w * classification)
            logs |= {"d_loss": adversarial.item(), "d_class_loss": classification.item()}
        if phase in (2, 3):
            # G: be taken for real (non-saturating) and for the class asked for
            fake = self.generator(z, code)  # (M, C, S, S)
            fake_adv, fake_cls = self.discriminator.heads(self.seen_by_d(fake), code)
            adversarial = F.binary_cross_entropy_with_logits(fake_adv, torch.ones_like(fake_adv))
            classification = F.cross_entropy(fake_cls, asked)
            loss = adversarial + w * classification
            if pairs:
                a, b = slice(0, pairs), slice(pairs, 2 * pairs)
                ratio = (fake[a] - fake[b]).abs().mean((1, 2, 3)) / (z[a] - z[b]).abs().mean(1)  # (pairs,)
                loss = loss + self.config.mode_seeking / (ratio.mean() + 1e-5)
                logs["g_mode_ratio"] = ratio.mean().item()
            self.step(optimizers["generator"], loss)
            optimizers["discriminator"].zero_grad(set_to_none=True)
            self.update_average()
            logs |= {"g_loss": adversarial.item(), "g_class_loss": classification.item()}
        return logs

    def draw(self, count: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
        """``count`` samples (count, C, S, S) in [-1, 1] of the classes 0, 1, ..., 0, 1, ... (returned, (count,)),
        z from ``latent`` (the same on every device)."""
        classes = np.arange(count) % self.config.classes
        code = self.codes(torch.from_numpy(classes).to(self.device))  # (count, classes)
        return self.sampler(self.latent(count, seed), code), classes

    @torch.no_grad()
    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> dict:
        from zoo.evaluate import DRAWS, generative_figures, per_class_figures, real_data_floor

        self.eval()
        real = self.to_model_space(self.as_tensor(images))
        fake, asked = self.draw(len(real), 0)
        # the probability of each image being real as its class: the column of its label, or of the class asked
        d_real = self.discriminator(real)[0].gather(1, self.as_tensor(np.asarray(labels, np.int64))[:, None])
        d_fake = self.discriminator(fake)[0].gather(1, self.as_tensor(asked.astype(np.int64))[:, None])  # (M, 1)
        metrics = {
            "d_real_mean": float(d_real.mean()),
            "d_fake_mean": float(d_fake.mean()),
            "d_accuracy": float(((d_real > 0.5).float().mean() + (d_fake < 0.5).float().mean()) / 2),
        }
        # DRAWS draws of as many images as held-out digits, every class in turn: the unconditional figures
        # beside their real-data floor, then class by class
        draws, intended = [], []
        for seed in range(DRAWS):
            images_k, classes = self.draw(len(real), seed)
            draws.append(((images_k + 1) / 2).squeeze(1).cpu().numpy())  # (M, S, S) in [0, 1]
            intended.append(classes)  # (M,)
        figures = generative_figures(draws, images)
        if figures:
            metrics |= figures | {k: v for k, v in real_data_floor().items() if k.startswith("floor_")}
            metrics |= per_class_figures(draws, intended, images, np.asarray(labels))
        return metrics

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """One row per fixed z, one column per class: the same latent "style" drawn as every digit."""
        from zoo.pictures import tile_grid

        self.eval()
        k = self.config.classes
        rows = max(1, len(self.fixed_z) // k)
        z = self.fixed_z[:rows].repeat_interleave(k, 0)  # (rows * k, nz): each z k times
        code = self.codes(torch.arange(rows * k, device=self.device) % k)  # (rows * k, classes)
        g = (self.sampler(z, code) + 1) / 2  # (rows * k, C, S, S) in [0, 1]
        g = g[:, 0] if self.config.channels == 1 else g.permute(0, 2, 3, 1)
        return tile_grid(g.cpu().numpy(), cols=k)


@register_model(
    config=CDCGANConfig, train=dict(data="mnist", epochs=120, batch_size=64, lr=2e-4, beta1=0.5, eval_every=10)
)
def cdcgan_mnist(**cfg) -> CDCGAN:
    """Class-conditional DCGAN for the bundled 28x28 digits: [z(100), one-hot y(10)] -> 28x28x1, AC-GAN's D."""
    # measured on the bundled digits: a moving average of G with decay 0.999 lost to G itself (LeNet-FID 22 vs 18
    # at 60 epochs); at 80 epochs aux_weight 1 beat 0.3 and 0.1 on class accuracy and FID alike; at 120 epochs
    # (8,520 steps) aux_weight 3 beat 1: LeNet-FID 9.4 vs 11.6, worst class under LeNet 99.6 % vs 98.0 %. With
    # aux_weight 3 at 120 epochs, a moving average with decay 0.99 kept LeNet-FID (9.5 vs 9.4) and lifted the
    # pixel SVM's worst class from 98.8 % to 99.2 % (at or above 99.2 % from epoch 80 on); aux_weight 5 without it:
    # 11.0, worst classes 99.2 % and 99.2 %
    defaults = dict(ngf=32, ndf=32, channels=1, image_size=[28, 28], augment="translation", ema=0.99, aux_weight=3.0)
    return CDCGAN(CDCGANConfig(**{**defaults, **cfg}))
