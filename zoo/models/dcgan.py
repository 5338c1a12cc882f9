"""DCGAN (Radford, Metz & Chintala 2016), as the lecture draws it: the generator projects z to a small stack of
feature maps and doubles their size with strided transposed convolutions (BatchNorm and ReLU inside, Tanh at
the output); the discriminator mirrors it with strided convolutions (LeakyReLU 0.2, BatchNorm except at the
input) down to one probability.

    dcgan-64:    z(100) -> 4x4x1024 -> 8x8x512 -> 16x16x256 -> 32x32x128 -> 64x64x3   (5x5 kernels, stride 2)
    dcgan-mnist: [z(100), one-hot of argmax z[:10]] -> 7x7x64 -> 14x14x32 -> 28x28x1 (5x5 kernels, stride 2)

The projection of z is a transposed convolution from 1x1 to the first stage's size (the same linear map as
"project and reshape", kept as a convolution so the graph is convolutions throughout).

Two options for small training sets, off by default: ``augment``, differentiable augmentation of everything the
discriminator sees (Zhao et al. 2020, DiffAugment: the same kind of random translation or cutout applied to real
and generated images, so that the generator is not meant to produce them; on the bundled digits the shift still
leaks, see the README), and ``ema``, an exponential moving average of the generator's weights (Karras et al. 2018;
Yazıcı et al. 2019), which is then the generator evaluated, sampled and exported.

With labelled images, ``class_weight`` gives the discriminator a class head beside its real/fake one, learnt
from the real images' labels, and asks the generator for Springenberg's (2016, CatGAN) two properties of its
samples under that head: each one clearly one class, all classes equally often. With ``class_latent`` too, G
reads a class from z itself (the index of the largest of z's first entries, so every class is as likely) and
is asked for D's class head to name it (AC-GAN's loss). The graph still takes z alone; ``cdcgan-mnist`` is the
generator that is given a class code as an input.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.config import Config, TrainConfig, setting
from zoo.errors import ZooError
from zoo.models.base import ZooModel
from zoo.registry import register_model

G_LOSSES = ("non-saturating", "minimax")
AUGMENTS = ("none", "translation", "cutout", "translation,cutout")


@dataclass
class DCGANConfig(Config):
    nz: int = setting(100, lo=1, hi=1 << 14)  # latent size
    # generator width: the last hidden stage has ngf channels, each earlier one twice as many
    ngf: int = setting(128, lo=1, hi=1 << 12)
    ndf: int = setting(128, lo=1, hi=1 << 12)  # discriminator width, mirrored
    channels: int = setting(3, lo=1, hi=4)  # image channels
    image_size: list[int] = setting(factory=lambda: [64, 64], lo=8, hi=1024)
    # 5 (the lecture: padding 2, output_padding 1) or 4 (PyTorch's example: padding 1)
    kernel_size: int = setting(5, choices=(4, 5))
    # "minimax": minimise log(1 - D(G(z))) as in the lecture's objective
    g_loss: str = setting("non-saturating", choices=G_LOSSES)
    phase1_epochs: int = setting(1, lo=0, hi=1_000_000)  # phase 1: D against the untrained G
    phase2_epochs: int = setting(1, lo=0, hi=1_000_000)  # phase 2: G against the frozen D
    # DiffAugment of the discriminator's inputs, real and generated alike: a random shift by up to 1/8 of the
    # size ("translation", the background filling in), a blanked square of half the size ("cutout")
    augment: str = setting("none", choices=AUGMENTS)
    # the probability that each image is augmented; below 1, D also sees images as they are, so that a
    # transformation it cannot undo does not leak into G (Karras et al. 2020, ADA: no leak at p <= 0.8)
    augment_p: float = setting(1.0, lo=0.0, hi=1.0)
    # decay of the moving average of G's weights that is shipped as the generator, ramped up from the first
    # step as min(ema, (1 + t) / (10 + t)) so that G's random initial weights fade from it; 0: G is shipped
    ema: float = setting(0.0, lo=0.0, hi=0.99999)
    # a class head on D, learnt from the labelled real images (cross-entropy), and for G Springenberg's (2016)
    # CatGAN terms on it: each sample confidently one class (low entropy of D's class estimate), the classes
    # equally often over the batch (high entropy of the batch's mean estimate); this weight on both; 0: no head
    class_weight: float = setting(0.0, lo=0.0, hi=1e3)
    # with the class head: G reads a class k from its latent, the largest of z's first ``classes`` entries (each
    # class as likely), takes a one-hot of k beside z, and is asked for D's class head to name k (AC-GAN's
    # cross-entropy, Odena et al. 2017, weight class_weight) instead of CatGAN's terms; the graph still takes z
    class_latent: bool = setting(False)
    classes: int = setting(10, lo=2, hi=1 << 12)  # labels 0 .. classes - 1 (the class head's width)
    samples_per_epoch_grid: int = setting(64, lo=1, hi=1024)

    def __post_init__(self):
        super().__post_init__()
        if len(self.image_size) != 2 or self.image_size[0] != self.image_size[1]:
            raise ZooError(f"image_size {self.image_size}: DCGAN here takes square images")
        if self.stages < 1:
            raise ZooError(f"image_size {self.image_size[0]} cannot be halved; expected e.g. 28, 32 or 64")
        if self.class_latent and self.class_weight <= 0:
            raise ZooError("class_latent needs the class head to learn the classes from; set class_weight > 0")
        if self.class_latent and self.nz < self.classes:
            raise ZooError(f"class_latent reads a class from z's first {self.classes} entries; nz is {self.nz}")

    @property
    def stages(self) -> int:
        """Stride-2 stages: halve the size while it is even and above 4 (64 -> 4: 4 stages; 28 -> 7: 2)."""
        size, n = self.image_size[0], 0
        while size % 2 == 0 and size > 4:
            size, n = size // 2, n + 1
        return n

    @property
    def base_size(self) -> int:
        return self.image_size[0] >> self.stages


def _up(c_in: int, c_out: int, k: int) -> nn.ConvTranspose2d:
    # doubles H and W: 5x5 with padding 2 and output_padding 1, or 4x4 with padding 1
    pad, out_pad = (2, 1) if k == 5 else (1, 0)
    return nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=pad, output_padding=out_pad, bias=False)


def _down(c_in: int, c_out: int, k: int) -> nn.Conv2d:
    # halves H and W (no bias, as in the PyTorch reference: BatchNorm or the next layer absorbs it)
    return nn.Conv2d(c_in, c_out, k, stride=2, padding=2 if k == 5 else 1, bias=False)


def diff_augment(x: torch.Tensor, kinds: str, p: float = 1.0) -> torch.Tensor:
    """x (N, C, H, W) in [-1, 1], each image transformed by ``kinds`` (see ``DCGANConfig.augment``) with
    probability p, else kept as it is, with the torch RNG; differentiable in x (only gathers and selects), so G's
    gradient flows through it."""
    augmented = _augment_all(x, kinds)  # (N, C, H, W)
    if p >= 1:
        return augmented
    chosen = torch.rand(len(x), device="cpu").to(x.device) < p  # (N,)
    return torch.where(chosen[:, None, None, None], augmented, x)


def _augment_all(x: torch.Tensor, kinds: str) -> torch.Tensor:
    """x (N, C, H, W), every image transformed by ``kinds``."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :, None]  # (1, H, 1)
    cols = torch.arange(w, device=x.device)[None, None, :]  # (1, 1, W)
    background = torch.full_like(x, -1.0)  # (N, C, H, W)
    if "translation" in kinds:
        sy, sx = max(1, round(h / 8)), max(1, round(w / 8))
        dy = torch.randint(-sy, sy + 1, (n, 1, 1), device="cpu").to(x.device)  # (N, 1, 1)
        dx = torch.randint(-sx, sx + 1, (n, 1, 1), device="cpu").to(x.device)
        src_r, src_c = rows + dy, cols + dx  # (N, H, 1), (N, 1, W): where each output pixel comes from
        inside = ((src_r >= 0) & (src_r < h)) & ((src_c >= 0) & (src_c < w))  # (N, H, W)
        picked = x[torch.arange(n, device=x.device)[:, None, None], :, src_r.clamp(0, h - 1), src_c.clamp(0, w - 1)]
        x = torch.where(inside[:, None], picked.permute(0, 3, 1, 2), background)  # (N, C, H, W)
    if "cutout" in kinds:
        ch, cw = h // 2, w // 2
        top = torch.randint(0, h - ch + 1, (n, 1, 1), device="cpu").to(x.device)  # (N, 1, 1)
        left = torch.randint(0, w - cw + 1, (n, 1, 1), device="cpu").to(x.device)
        hole = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (N, H, W)
        x = torch.where(hole[:, None], background, x)
    return x


def class_entropies(class_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CatGAN's two entropies (nats) of class estimates softmax(class_logits) (N, K): the mean over the samples
    of each one's entropy (low: each sample is clearly one class), and the entropy of their mean, the batch's
    class shares (high, at most log K: every class as often)."""
    log_p = F.log_softmax(class_logits, 1)  # (N, K)
    per_sample = -(log_p.exp() * log_p).sum(1).mean()
    shares = log_p.exp().mean(0)  # (K,)
    return per_sample, -(shares * shares.clamp_min(1e-30).log()).sum()


def dcgan_init(m: nn.Module) -> None:
    """The paper's initialisation: weights N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


# a softmax of z's first entries times this is the one-hot of their largest (the others below 1e-40 once it leads
# by 1e-4; closer ties, about 1 draw in 10^4, blend two codes): an argmax the graph writes with float ops alone
HARD_CODE_SCALE = 1e6


class Generator(ZooModel):
    input_names = ("z",)
    output_names = ("image",)

    def __init__(self, c: DCGANConfig, code_width: int = 0):
        super().__init__()
        self.config = c
        if c.class_latent:  # the one-hot class code read from z goes in beside it
            code_width = c.classes
            pick = torch.zeros(c.nz, c.classes)  # (nz, classes): z's first `classes` entries, scaled
            pick[: c.classes] = torch.eye(c.classes) * HARD_CODE_SCALE
            self.register_buffer("pick", pick)
        widths = [c.ngf * 2 ** (c.stages - 1 - i) for i in range(c.stages)]  # e.g. [1024, 512, 256, 128]
        layers = [
            # project: (N, nz + code_width, 1, 1) -> (N, widths[0], base, base); code_width: a conditional G's code
            nn.ConvTranspose2d(c.nz + code_width, widths[0], c.base_size, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for w_in, w_out in zip(widths, widths[1:]):
            # (N, w_in, s, s) -> (N, w_out, 2s, 2s)
            layers += [_up(w_in, w_out, c.kernel_size), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        # (N, widths[-1], S/2, S/2) -> (N, C, S, S), no BatchNorm at the output
        layers += [_up(widths[-1], c.channels, c.kernel_size), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def latent_class(self, z: torch.Tensor) -> torch.Tensor:
        """The class (N,) that latent points z (N, nz) draw with ``class_latent``: argmax of z's first entries."""
        return z[:, : self.config.classes].argmax(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z: (N, nz) -> image: (N, C, S, S) in [-1, 1]
        if self.config.class_latent:
            code = torch.softmax(z @ self.pick, 1)  # (N, classes): one-hot of latent_class(z)
            z = torch.cat([z, code], 1)  # (N, nz + classes)
        return self.net(z[:, :, None, None])

    def example_input(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, self.config.nz),)

    def onnx_sample(self, images, labels) -> np.ndarray:
        return np.random.default_rng(0).standard_normal((8, self.config.nz)).astype(np.float32)  # (8, nz)

    def onnx_metadata(self) -> dict:
        s, k = self.config.image_size[0], self.config.classes
        meta = {
            "input_range": "z ~ N(0, 1)",
            "output_range": "[-1, 1]",
            "normalisation": f"output (N, {self.config.channels}, {s}, {s}) in [-1, 1]; pixel = (y + 1) / 2",
            "image_size": f"{s}x{s}",
        }
        if self.config.class_latent:  # `zoo sample --class` puts the largest of z's first k entries at the class
            meta["input_range"] = f"z ~ N(0, 1); the class drawn is the index of the largest of z[:, :{k}]"
            meta["latent_classes"] = str(k)
        return meta


class Discriminator(ZooModel):
    input_names = ("image",)
    output_names = ("probability",)

    def __init__(self, c: DCGANConfig):
        super().__init__()
        self.config = c
        self.widths = widths = [c.ndf * 2**i for i in range(c.stages)]  # e.g. [128, 256, 512, 1024]
        layers = [_down(c.channels, widths[0], c.kernel_size), nn.LeakyReLU(0.2, True)]  # no BatchNorm at the input
        for w_in, w_out in zip(widths, widths[1:]):
            # (N, w_in, s, s) -> (N, w_out, s/2, s/2)
            layers += [_down(w_in, w_out, c.kernel_size), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2, True)]
        # (N, widths[-1], base, base) -> (N, 1, 1, 1): one logit
        layers += [nn.Conv2d(widths[-1], 1, c.base_size, stride=1, padding=0, bias=False)]
        self.net = nn.Sequential(*layers)
        if c.class_weight > 0:  # class scores from the same features; used in training, not exported
            self.class_head = nn.Conv2d(widths[-1], c.classes, c.base_size, stride=1, padding=0, bias=False)
        self.apply(dcgan_init)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).flatten(1)  # (N, 1)

    def logits_and_classes(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real/fake logits (N, 1), class logits (N, classes)) of images (N, C, S, S), from one pass of the
        convolutional trunk; only with the class head (``class_weight`` > 0)."""
        h = self.net[:-1](image)  # (N, widths[-1], base, base)
        return self.net[-1](h).flatten(1), self.class_head(h).flatten(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # image: (N, C, S, S) in [-1, 1] -> probability that it is real: (N, 1)
        return torch.sigmoid(self.logits(image))

    def example_input(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        s = self.config.image_size[0]
        return (torch.rand(batch, self.config.channels, s, s) * 2 - 1,)

    def onnx_sample(self, images: np.ndarray, labels=None) -> np.ndarray:
        x = images[:8]  # (8, H, W) or (8, H, W, C) in [0, 1]
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x * 2 - 1, dtype=np.float32)  # (8, C, H, W) in [-1, 1]

    def onnx_metadata(self) -> dict:
        s = self.config.image_size[0]
        return {
            "input_range": "[-1, 1]",
            "normalisation": f"(N, {self.config.channels}, {s}, {s}) images, pixel * 2 - 1",
            "image_size": f"{s}x{s}",
        }


class DCGAN(ZooModel):
    """A generator and a discriminator trained against each other; exported as two ONNX graphs."""

    headline_metric = "fid"
    card_notes = {
        "intended_use": "Sampling new images from random latent vectors (the generator) and studying adversarial "
        "training as in the lecture; the discriminator is shipped so both halves of the game can be inspected.",
        "limitations": [
            "Sample quality is what its FID and Inception-style score say, both measured with the zoo's LeNet "
            "(not Inception), so they compare runs of this zoo, not published GAN figures.",
            "A GAN may drop modes (some classes rare or missing); without class_latent it cannot be asked for a class.",
            "With class_weight > 0 (dcgan-mnist) training used the images' labels, through the discriminator's "
            "class head; the generator takes z alone. With class_latent (dcgan-mnist) the class it draws is the "
            "index of the largest of z's first `classes` entries (`zoo sample dcgan-mnist --class 7` sets it).",
            "The discriminator is a training by-product, not a calibrated real/fake detector.",
        ],
        "tensors": {
            "z": {"range": "unbounded; draw each entry from N(0, 1)", "meaning": "the latent vector of a sample"},
            "generator/image": {
                "kind": "image",
                "range": "[-1, 1] (tanh); pixel = (y + 1) / 2",
                "meaning": "a generated image",
            },
            "discriminator/image": {"kind": "image", "range": "[-1, 1]: pixel * 2 - 1", "meaning": "an image to score"},
            "probability": {"range": "[0, 1] (sigmoid)", "meaning": "the discriminator's probability that it is real"},
        },
    }
    curve_references = {
        "floor_fid_train_vs_val": "fid",
        "floor_inception_score_val": "inception_score",
        **{f"floor_{k}_mean": f"{k}_mean" for k in ("fid", "inception_score", "pca_fd", "confident")},
    }

    generator_type: type = Generator  # a conditional GAN (zoo/models/cdcgan.py) brings its own two halves
    discriminator_type: type = Discriminator

    def __init__(self, config: DCGANConfig):
        super().__init__()
        self.config = config
        self.generator = self.generator_type(config)
        self.discriminator = self.discriminator_type(config)
        if config.ema > 0:  # the average starts at G's initial weights and is never trained directly
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
            self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))  # averaging steps so far
        fixed = torch.Generator().manual_seed(1234)  # the same z every epoch, so the grids show G's progress
        self.register_buffer("fixed_z", torch.randn(config.samples_per_epoch_grid, config.nz, generator=fixed))

    @property
    def sampler(self) -> Generator:
        """The generator that is evaluated, sampled and exported: the moving average when there is one."""
        return self.generator_ema if self.config.ema > 0 else self.generator

    @torch.no_grad()
    def update_average(self) -> None:
        """ema <- decay * ema + (1 - decay) * G for the weights, decay = min(ema, (1 + t) / (10 + t)) at the t-th
        step; BatchNorm's running statistics copied from G."""
        if self.config.ema <= 0:
            return
        t = int(self.ema_steps)
        decay = min(self.config.ema, (1 + t) / (10 + t))
        self.ema_steps += 1
        for averaged, trained in zip(self.generator_ema.parameters(), self.generator.parameters()):
            averaged.lerp_(trained, 1.0 - decay)
        for averaged, trained in zip(self.generator_ema.buffers(), self.generator.buffers()):
            averaged.copy_(trained)

    def export_parts(self) -> dict[str, ZooModel]:
        return {"generator": self.sampler, "discriminator": self.discriminator}

    def configure_optimizers(self, train: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        betas = (train.beta1, 0.999)
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=train.lr, betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=train.lr, betas=betas),
        }

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        # pixels (M, H, W) or (M, H, W, C) in [0, 1] -> (M, C, H, W) in [-1, 1]
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return x * 2 - 1

    def phase(self, epoch: int) -> int:
        c = self.config
        return 1 if epoch <= c.phase1_epochs else 2 if epoch <= c.phase1_epochs + c.phase2_epochs else 3

    def seen_by_d(self, x: torch.Tensor) -> torch.Tensor:
        """What the discriminator is shown of images x (N, C, S, S): x, or x augmented while training."""
        if self.config.augment == "none" or not self.training:
            return x
        return diff_augment(x, self.config.augment, self.config.augment_p)

    def d_losses(self, real: torch.Tensor, fake: torch.Tensor, labels=None) -> dict[str, torch.Tensor]:
        """D's losses on real (M, C, S, S) and generated images: "d_loss", max_D E[log D(x)] + E[log(1 - D(G(z)))]
        as a loss to minimise; with the class head and labels, "d_class_loss", its cross-entropy on the real
        images' labels (M,)."""
        d, heads = self.discriminator, self.config.class_weight > 0 and labels is not None
        real_logits, real_classes = (
            d.logits_and_classes(self.seen_by_d(real)) if heads else (d.logits(self.seen_by_d(real)), None)
        )
        fake_logits = d.logits(self.seen_by_d(fake))  # (M, 1)
        losses = {
            "d_loss": F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        }
        if heads:
            losses["d_class_loss"] = F.cross_entropy(real_classes, labels)
        return losses

    def g_losses(self, fake: torch.Tensor, wanted: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """G's losses on its images (M, C, S, S): "g_loss", the adversarial one; with the class head, CatGAN's
        "g_class_entropy" (to lower) and "g_share_entropy" (to raise) of D's class estimates, or, given the
        classes the images were drawn as (``class_latent``, (M,)), "g_class_loss", the head's cross-entropy on
        them."""
        d, heads = self.discriminator, self.config.class_weight > 0
        logits, classes = (
            d.logits_and_classes(self.seen_by_d(fake)) if heads else (d.logits(self.seen_by_d(fake)), None)
        )
        if self.config.g_loss == "minimax":
            # min_G E[log(1 - D(G(z)))] = -BCE(D(G(z)), 0); saturates while D rejects the fakes
            losses = {"g_loss": -F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))}
        else:  # non-saturating: max_G E[log D(G(z))] = min_G BCE(D(G(z)), 1)
            losses = {"g_loss": F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))}
        if heads and wanted is not None:
            losses["g_class_loss"] = F.cross_entropy(classes, wanted)
        elif heads:
            losses["g_class_entropy"], losses["g_share_entropy"] = class_entropies(classes)
        return losses

    def class_labels(self, y, device) -> torch.Tensor | None:
        """The labels (M,) the class head learns, checked; None without the head."""
        if self.config.class_weight <= 0:
            return None
        if y is None:
            raise ZooError(
                f"class_weight {self.config.class_weight} needs labelled training images and this data set has "
                "none; train with --set class_weight=0"
            )
        labels = torch.as_tensor(y, device=device).long()  # (M,)
        if labels.ndim != 1:
            raise ZooError(
                f"class_weight > 0 needs one class label per image; got labels of shape {tuple(labels.shape)}"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.config.classes):
            raise ZooError(f"labels {int(labels.min())}..{int(labels.max())}: expected 0..{self.config.classes - 1}")
        return labels

    def training_step(self, x: torch.Tensor, y, optimizers: dict, epoch: int) -> dict:
        real = self.to_model_space(x)  # (M, C, S, S)
        labels = self.class_labels(y, real.device)  # (M,) or None
        z = torch.randn(len(real), self.config.nz, device=real.device)
        phase, w = self.phase(epoch), self.config.class_weight
        logs = {"phase": float(phase)}
        if phase in (1, 3):
            # update D: its loss on real data and on G's current output (G not updated here)
            d = self.d_losses(real, self.generator(z).detach(), labels)
            self.step(optimizers["discriminator"], d["d_loss"] + w * d.get("d_class_loss", 0.0))
            logs |= {k: v.item() for k, v in d.items()}
        if phase in (2, 3):
            # update G against the current D; D's parameters receive gradients but are not stepped
            wanted = self.generator.latent_class(z) if self.config.class_latent else None  # (M,) or None
            g = self.g_losses(self.generator(z), wanted)
            class_term = g.get("g_class_loss", 0.0) + g.get("g_class_entropy", 0.0) - g.get("g_share_entropy", 0.0)
            self.step(optimizers["generator"], g["g_loss"] + w * class_term)
            optimizers["discriminator"].zero_grad(set_to_none=True)
            self.update_average()
            logs |= {k: v.item() for k, v in g.items()}
        return logs

    def latent(self, count: int, seed: int) -> torch.Tensor:
        """(count, nz) latent points of an evaluation draw: the same on every device (drawn on the CPU from
        ``seed``, then moved)."""
        seeded = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn(count, self.config.nz, generator=seeded, device="cpu").to(self.device)

    @torch.no_grad()
    def evaluate(self, images: np.ndarray, labels=None) -> dict:
        from zoo.evaluate import DRAWS, IMAGE_SIZE, available, generative_figures, per_class_figures, real_data_floor

        self.eval()
        real = self.to_model_space(self.as_tensor(images))

        def draw(seed: int) -> torch.Tensor:
            return self.sampler(self.latent(len(real), seed))  # (M, C, S, S) in [-1, 1]

        fake = draw(0)
        d_real = self.discriminator(real)
        d_fake = self.discriminator(fake)
        metrics = {
            "d_real_mean": float(d_real.mean()),
            "d_fake_mean": float(d_fake.mean()),
            "d_accuracy": float(((d_real > 0.5).float().mean() + (d_fake < 0.5).float().mean()) / 2),
        }
        if tuple(fake.shape[1:]) != (1, *IMAGE_SIZE) or not available():
            return metrics  # no digit classifier for these images
        # DRAWS draws of z (the first is the one above), each as many images as held-out digits, beside the
        # floor measured the same way: DRAWS training subsets of that size against the same digits
        draws = [((g + 1) / 2).squeeze(1).cpu().numpy() for g in (fake, *(draw(s) for s in range(1, DRAWS)))]
        metrics |= generative_figures(draws, images)  # with fid and inception_score of the first draw
        if self.config.class_latent and labels is not None:  # each draw's classes, read from its z
            intended = [self.sampler.latent_class(self.latent(len(real), s)).cpu().numpy() for s in range(DRAWS)]
            metrics |= per_class_figures(draws, intended, images, np.asarray(labels))
        floor = real_data_floor()  # what real digits score: the floor of the FID, the ceiling of the score
        metrics["floor_fid_train_vs_val"] = floor["fid_train_vs_val"]
        metrics["floor_inception_score_val"] = floor["inception_score_val"]
        return metrics | {k: v for k, v in floor.items() if k.startswith("floor_")}

    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        from zoo.pictures import tile_grid

        self.eval()
        g = (self.sampler(self.fixed_z) + 1) / 2  # (n, C, S, S) in [0, 1]
        g = g[:, 0] if self.config.channels == 1 else g.permute(0, 2, 3, 1)
        return tile_grid(g.cpu().numpy(), cols=int(math.sqrt(len(g))))

    def on_epoch_end(self, out_dir, epoch: int) -> list:
        from zoo.pictures import save_png

        return [save_png(f"{out_dir}/samples_epoch_{epoch:03d}.png", self.sample_grid())]

    def write_pictures(self, out_dir, images: np.ndarray, labels=None) -> list:
        from zoo.pictures import save_png

        return [save_png(f"{out_dir}/samples.png", self.sample_grid())]


# Radford et al.'s optimiser: Adam with step 2e-4 and beta1 0.5.
@register_model(config=DCGANConfig, train=dict(data="photos64", epochs=25, batch_size=64, lr=2e-4, beta1=0.5))
def dcgan_64(**cfg) -> DCGAN:
    """DCGAN as in the lecture: z(100) -> 4x4x1024 -> ... -> 64x64x3, 5x5 transposed convolutions, stride 2."""
    return DCGAN(DCGANConfig(**cfg))


MNIST_TRAIN = dict(data="mnist", epochs=120, batch_size=64, lr=2e-4, beta1=0.5, eval_every=10)
# measured on the bundled digits (80 epochs, seed 0, 1 thread; LeNet-FID mean of 5 draws / pixel-PCA FD / Inception-
# style score / smallest and largest class share): no class head 56.9 / 2.73 / 7.27 / 0.042-0.160; class_weight 1
# 39.1 / 2.50 / 7.74 / 0.057-0.145; 3 35.9 / 2.47 / 7.86 / 0.053-0.150; 10 32.4 / 3.17 / 7.98 / 0.074-0.128
# (nearer under LeNet, further under the pixel instrument). With class_weight 3, a moving average of G (ema 0.99)
# moved LeNet-FID both ways, by about one draw's spread (40.9 / 35.5 / 50.4 / 34.7 / 36.3 / 32.2 at epochs 30-80
# against 42.1 / 39.7 / 43.4 / 35.6 / 31.6 / 35.9). DiffAugment's translation at augment_p 0.2, no class head:
# 74.5 at 40 epochs, against ~83 for the run without.
# With the class read from z (class_latent; 120 epochs, ngf = ndf = 32, ema 0.99, class_weight 3): DiffAugment's
# translation applied to every image leaked (LeNet-FID 57 and pixel FD 17 at 40 epochs, digits off centre); none
# at all let D memorise (class accuracy 0.72 at 30 epochs, FID 53 / 9.4); applied to a fifth of the images it led
# at every epoch measured (30.0 / 8.8 at 30 epochs) -- the defaults below: 12.8 / 2.12 at 120 epochs, Inception-
# style score 9.69, class shares 0.091-0.111 (the lecture's phases off: 13.4 / 2.17 / 9.71).
MNIST_DEFAULTS = dict(
    ngf=32,
    ndf=32,
    channels=1,
    image_size=[28, 28],
    class_weight=3.0,
    class_latent=True,
    augment="translation",
    augment_p=0.2,
    ema=0.99,
)


@register_model(config=DCGANConfig, train=MNIST_TRAIN)
def dcgan_mnist(**cfg) -> DCGAN:
    """DCGAN sized for the bundled 28x28 digits, drawing the class the largest of z's first 10 entries names:
    [z(100), one-hot(10)] -> 7x7x64 -> 14x14x32 -> 28x28x1."""
    model = DCGAN(DCGANConfig(**{**MNIST_DEFAULTS, **cfg}))
    model.card_ablations = {
        "dcgan-mnist-no-phases": "without the lecture's phases 1-2 (phase1_epochs=0, phase2_epochs=0): the two "
        "networks compete from the first step, for the same number of epochs"
    }
    return model


@register_model(config=DCGANConfig, train=MNIST_TRAIN)
def dcgan_mnist_no_phases(**cfg) -> DCGAN:
    """dcgan-mnist without the lecture's phases 1-2, competing from the first step (the ablation of its card)."""
    return DCGAN(DCGANConfig(**{**MNIST_DEFAULTS, "phase1_epochs": 0, "phase2_epochs": 0, **cfg}))
