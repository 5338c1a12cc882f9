"""DeconvNet (Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015, §3): a
VGG16 encoder whose 2x2 max pools keep their switches (the argmax positions), fc6/fc7 as convolutions, and a
mirrored decoder that unpools with those switches (each value back to where its maximum came from, zeros
elsewhere) and densifies the sparse maps with 3x3 transposed convolutions, down to a 1x1 score layer.

    deconvnet-vgg16:  3x224x224 -> conv 64,64 | 128,128 | 256x3 | 512x3 | 512x3 (pool after each: 7x7x512)
                      -> fc6 7x7 conv 4096 (1x1) -> fc7 1x1 4096 -> fc6-deconv 7x7 (7x7x512)
                      -> unpool + deconv 512,512,512 | 512,512,256 | 256,256,128 | 128,64 | 64,64 -> score 21
    deconvnet-digits: 1x48x48 -> conv 16,16 | 32,32 | 64,64 (6x6x64) -> fc 512 (3x3 window) -> the mirror -> 11

Every convolution and deconvolution is followed by BatchNorm and ReLU, as in the paper. Two options are not in
the paper, and deconvnet-digits uses both (the README and its factory give the measurements): ``input_skip``
gives the 1x1 score layer the input pixels, times ``skip_gain``, beside the last decoder stage's features (an
ONNX ``Mul`` and ``Concat``), so where a stroke ends, which the image's own intensities say, need not survive
the pools and unpools; ``fc_window`` makes fc6 a k x k convolution that keeps the last map, so that each of
several objects in one image keeps a code of its own (the paper ran on one object proposal at a time).
The ONNX export keeps the switches visible: each pool is an ONNX ``MaxPool`` with its ``Indices`` output and
each unpooling a ``MaxUnpool`` fed by them (``zoo.export.switch_translations``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.config import Config, TrainConfig, setting
from zoo.errors import ZooError
from zoo.models.base import ZooModel
from zoo.registry import register_model

VGG16 = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
# the smallest relative gap between a pool window's two largest values for the ONNX sample: well above the few
# ulps by which another summation order moves them (a logit of ~16 moves by 1e-5 after 26 convolutions)
TIE_MARGIN = 1e-5
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass
class DeconvNetConfig(Config):
    channels: int = setting(3, lo=1, hi=4)  # image channels
    classes: int = setting(21, lo=2, hi=1000)  # PASCAL VOC: background + 20 object classes
    image_size: list[int] = setting(factory=lambda: [224, 224], lo=2, hi=1024)
    # conv widths per pooling stage
    encoder: list[list[int]] = setting(factory=lambda: [list(s) for s in VGG16], lo=1, hi=4096)
    fc_width: int = setting(4096, lo=1, hi=1 << 14)  # fc6 and fc7, as convolutions
    # 0: fc6 spans the whole map the last pool leaves (the paper's, which ran on one object proposal at a
    # time); an odd k: fc6 is a k x k convolution that keeps that map's size, so that several objects in one
    # image each keep a code of their own, and fc6-deconv the k x k deconvolution back
    fc_window: int = setting(0, lo=0, hi=63)
    weight_decay: float = setting(0.0, lo=0, hi=1.0)  # Adam's L2 penalty on every parameter
    background_weight: float = setting(1.0, lo=0, hi=1e3)  # the cross-entropy's weight on background pixels
    # not in Noh et al.: the 1x1 score layer also sees the input pixels beside the last decoder features, so the
    # exact extent of a stroke (which an image's own intensities say) need not survive the pools
    input_skip: bool = setting(False)
    # the skipped pixels enter the score layer times this: Adam moves a weight by about its step size per
    # update, so a unit gain leaves the pixels' weights too small for a sharp edge at the stroke level
    skip_gain: float = setting(1.0, lo=1e-3, hi=1e3)
    # VGG16's dropout after fc6 and fc7 (Simonyan & Zisserman; 0.5 there), off in the paper's BatchNorm network:
    # the probability of zeroing each of their outputs while training (the exported graph has none)
    fc_dropout: float = setting(0.0, lo=0, hi=0.9)
    # not in Noh et al.: the weight of a soft Jaccard term added to the cross-entropy (1 - the mean over the
    # batch's classes of sum(p * t) / sum(p + t - p * t), p the softmax and t the one-hot truth), which scores a
    # batch as the mean IoU does and not pixel by pixel (Rahman & Wang 2016)
    jaccard_weight: float = setting(0.0, lo=0, hi=100.0)

    def __post_init__(self):
        super().__post_init__()
        if len(self.image_size) != 2:
            raise ZooError(f"image_size={self.image_size}: expected [height, width]")
        if not self.encoder or any(not stage for stage in self.encoder):
            raise ZooError(f"encoder={self.encoder}; expected a list of non-empty lists of conv widths")
        scale = 2 ** len(self.encoder)
        if any(s % scale for s in self.image_size):
            raise ZooError(
                f"image_size {self.image_size} with {len(self.encoder)} 2x2 pools; expected multiples of {scale}"
            )
        if self.fc_window and self.fc_window % 2 == 0:
            raise ZooError(f"fc_window={self.fc_window}; expected 0 (the whole map) or an odd size")

    @property
    def fc_kernel(self) -> tuple[int, int]:
        """fc6's kernel: the whole map the last pool leaves (7x7 for 224x224 through five pools), or
        fc_window square."""
        if self.fc_window:
            return self.fc_window, self.fc_window
        scale = 2 ** len(self.encoder)
        return self.image_size[0] // scale, self.image_size[1] // scale

    @property
    def fc_padding(self) -> int:
        """fc6's padding: none over the whole map; half the window otherwise, so that the map keeps its size."""
        return self.fc_window // 2

    @property
    def decoder(self) -> list[list[int]]:
        """Deconvolution widths per unpooling stage, deepest first: each encoder stage mirrored, its last layer
        narrowing to the width that entered the stage (VGG16: 512,512,512 | 512,512,256 | 256,256,128 | 128,64 |
        64,64)."""
        out = []
        for k in reversed(range(len(self.encoder))):
            entering = self.encoder[k - 1][-1] if k > 0 else self.encoder[0][-1]
            out.append([*self.encoder[k][:-1], entering])
        return out


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def deconv_bn_relu(c_in: int, c_out: int, kernel=3, padding=1) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel, padding=padding), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def dropout(p: float) -> list[nn.Module]:
    """A dropout layer to append to a stage, or none at all when ``p`` is 0 (no module in the state either)."""
    return [nn.Dropout(p)] if p else []


def soft_jaccard_loss(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """1 - the soft IoU averaged over the classes present in the batch's truth: scores (N, K, H, W), truth
    (N, H, W) class indices; the softmax stands in for the argmax, so the measure has a gradient."""
    p = scores.softmax(1)  # (N, K, H, W)
    t = F.one_hot(truth, scores.shape[1]).permute(0, 3, 1, 2).to(p.dtype)  # (N, K, H, W)
    hits = (p * t).sum((0, 2, 3))  # (K,)
    union = (p + t).sum((0, 2, 3)) - hits  # (K,)
    present = t.sum((0, 2, 3)) > 0  # (K,)
    return 1 - (hits[present] / union[present]).mean()


def unpool_with_switches(x: torch.Tensor, switches: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W): each value goes back to the position its 2x2 window's maximum came from."""
    return F.max_unpool2d(x, switches, 2, 2, output_size=size)


class DeconvNet(ZooModel):
    input_names = ("image",)
    output_names = ("scores",)
    headline_metric = "val_miou"
    card_notes = {
        "intended_use": "Semantic segmentation as in Noh et al.: the class of every pixel; its decoder stages show "
        "what unpooling with switches and transposed convolutions do.",
        "limitations": [
            "The graph is fixed to its training image size; other sizes must be resized or tiled first.",
            "Touching or overlapping objects, and anything unlike its training canvases, are outside what it saw.",
        ],
        "tensors": {
            "image": {"kind": "image", "range": "[0, 1] (grey level / 255)", "meaning": "one image per row"},
            "scores": {
                "range": "unbounded; the argmax over axis 1 is a pixel's class",
                "meaning": "per-pixel class scores",
                "classes": "0 is background; in mnist-seg, 1 + d is digit d",
            },
        },
    }

    @property
    def curve_references(self) -> dict[str, str]:
        """The training-free baseline's figures (constant over the epochs), each drawn as a dashed line on the
        network's same figure instead of a flat panel of its own."""
        names = ["miou", "miou_digits", "pixel_accuracy", "iou_background"]
        names += [f"iou_class_{k}" for k in range(1, self.config.classes)]
        return {f"baseline_val_{n}": f"val_{n}" for n in names}

    def __init__(self, config: DeconvNetConfig):
        super().__init__()
        self.config = c = config
        widths = [c.channels] + [w for stage in c.encoder for w in stage]
        self.encoder = nn.ModuleList()
        k = 0
        for stage in c.encoder:  # each stage: 3x3 convs at one size, then a 2x2 pool that keeps its switches
            self.encoder.append(
                nn.Sequential(*(conv_bn_relu(widths[k + i], widths[k + i + 1]) for i in range(len(stage))))
            )
            k += len(stage)
        top = c.encoder[-1][-1]
        self.fc6 = nn.Sequential(
            nn.Conv2d(top, c.fc_width, c.fc_kernel, padding=c.fc_padding),
            nn.BatchNorm2d(c.fc_width),
            nn.ReLU(True),
            *dropout(c.fc_dropout),
        )
        self.fc7 = nn.Sequential(
            nn.Conv2d(c.fc_width, c.fc_width, 1), nn.BatchNorm2d(c.fc_width), nn.ReLU(True), *dropout(c.fc_dropout)
        )
        self.fc6_deconv = deconv_bn_relu(c.fc_width, top, kernel=c.fc_kernel, padding=c.fc_padding)
        self.decoder = nn.ModuleList()
        c_in = top
        for stage in c.decoder:  # each stage: unpool with the mirrored pool's switches, then 3x3 deconvolutions
            layers = []
            for w in stage:
                layers.append(deconv_bn_relu(c_in, w))
                c_in = w
            self.decoder.append(nn.Sequential(*layers))
        self.score = nn.Conv2d(c_in + (c.channels if c.input_skip else 0), c.classes, 1)

    def stages(self, image: torch.Tensor) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
        """The class scores and the decoder's activations after each unpooling and deconvolution stage."""
        # image: (N, C, H, W)
        x, switches, sizes = image, [], []
        for stage in self.encoder:
            x = stage(x)  # (N, w, h, w')
            sizes.append(x.shape[-2:])
            x, where = F.max_pool2d(x, 2, 2, return_indices=True)  # (N, w, h/2, w'/2), switches of the same shape
            switches.append(where)
        x = self.fc7(self.fc6(x))  # (N, fc, 1, 1), or (N, fc, H/2^s, W/2^s) with an fc_window
        x = self.fc6_deconv(x)  # (N, top, H/2^s, W/2^s)
        seen = [("fc6-deconv", x)]
        for depth, stage in enumerate(self.decoder):
            k = len(self.encoder) - 1 - depth
            x = unpool_with_switches(x, switches[k], sizes[k])  # (N, w, 2h, 2w'): sparse
            seen.append((f"unpool{k + 1}", x))
            x = stage(x)  # (N, w_out, 2h, 2w'): dense again
            seen.append((f"deconv{k + 1}", x))
        if self.config.input_skip:
            pixels = image * self.config.skip_gain if self.config.skip_gain != 1 else image  # (N, C, H, W)
            x = torch.cat([x, pixels], 1)  # (N, w + C, H, W): the features and the pixels side by side
        return self.score(x), seen  # (N, classes, H, W)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.stages(image)[0]

    def training_step(self, x: torch.Tensor, y, optimizers: dict, epoch: int) -> dict:
        # x: (B, H, W) in [0, 1], y: (B, H, W) class per pixel
        scores = self(x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2))
        weight = torch.ones(self.config.classes, device=scores.device)
        weight[0] = self.config.background_weight  # (classes,)
        loss = F.cross_entropy(scores, y.long(), weight=weight)
        if self.config.jaccard_weight:
            loss = loss + self.config.jaccard_weight * soft_jaccard_loss(scores, y.long())
        self.step(optimizers["model"], loss)
        return {"loss": loss.item()}

    def configure_optimizers(self, train: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        adam = torch.optim.Adam(
            self.parameters(), lr=train.lr, betas=(train.beta1, 0.999), weight_decay=self.config.weight_decay
        )
        return {"model": adam}

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch: int = 100) -> np.ndarray:
        """(N, H, W) images in [0, 1] -> (N, H, W) int64 classes."""
        out = [self(self.as_tensor(images[i : i + batch])[:, None]).argmax(1) for i in range(0, len(images), batch)]
        return torch.cat(out).cpu().numpy()

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> dict:
        from zoo.data import SEG_DIGIT, SEG_STROKE
        from zoo.evaluate import available, segmentation_scores, threshold_baseline_scores

        scores = segmentation_scores(self.predict(images), labels, self.config.classes)
        if self.config.classes == 11 and self.config.channels == 1 and available():  # digit canvases
            # the training-free baseline beside it: threshold at the labels' stroke level, classify each blob
            scores |= threshold_baseline_scores(images, labels, self.config.classes, SEG_STROKE, SEG_DIGIT)
        return scores

    def example_input(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return (torch.rand(batch, self.config.channels, *self.config.image_size),)

    @torch.no_grad()
    def pool_margins(self, images: np.ndarray) -> np.ndarray:
        """(N,) for (N, H, W) images: over every 2x2 pool window of the encoder, the smallest gap between its two
        largest values relative to the largest. Exact ties (every implementation keeps the first) and windows
        of zeros do not count: a window whose two values are apart by a few ulps is where another summation
        order may pick the other switch, and the unpooling then sends that value elsewhere."""
        was_training = self.training
        self.eval()
        x = self.as_tensor(np.asarray(images, np.float32))[:, None]  # (N, 1, H, W)
        margin = torch.full((len(x),), float("inf"))  # (N,)
        for stage in self.encoder:
            x = stage(x)  # (N, c, h, w)
            n, c, h, w = x.shape
            windows = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
            windows = windows.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)  # (N, c, h/2, w/2, 4)
            top = windows.topk(2, dim=-1).values  # (N, c, h/2, w/2, 2), largest first
            gap = (top[..., 0] - top[..., 1]) / top[..., 0].clamp_min(torch.finfo(x.dtype).tiny)
            gap = torch.where((top[..., 0] > 0) & (gap > 0), gap, torch.inf)  # (N, c, h/2, w/2)
            margin = torch.minimum(margin, gap.reshape(n, -1).amin(1).cpu())
            x = F.max_pool2d(x, 2, 2)  # (N, c, h/2, w/2)
        self.train(was_training)
        return margin.numpy()

    def onnx_sample(self, images: np.ndarray, labels=None) -> np.ndarray:
        """The export's check and its test data set: the first 8 held-out images whose answer does not hinge on
        rounding (no pool window within TIE_MARGIN of a tie); if fewer than 8 of the first 256 qualify, the 8
        farthest from one. A flipped switch moves a value by up to its size, past any tolerance."""
        margins = self.pool_margins(images[:256])  # (n,)
        chosen = np.flatnonzero(margins >= TIE_MARGIN)[:8]
        if len(chosen) < min(8, len(margins)):
            chosen = np.sort(np.argsort(-margins, kind="stable")[:8])
        return images[chosen, None]  # (8, 1, H, W)

    def onnx_translation_table(self) -> dict:
        from zoo.export import switch_translations

        return switch_translations()

    def onnx_metadata(self) -> dict:
        h, w = self.config.image_size
        return {
            "input_range": "[0, 1]",
            "normalisation": f"pixels / 255, (N, {self.config.channels}, {h}, {w})",
            "image_size": f"{h}x{w}",
            "output": f"scores (N, {self.config.classes}, {h}, {w}); the class of a pixel is the argmax over axis 1",
            "class_names": json.dumps(self.class_names()),
        }

    def class_names(self) -> list[str]:
        """PASCAL VOC's for 21 classes, background and the digits for 11, else numbered."""
        if self.config.classes == len(VOC_CLASSES):
            return list(VOC_CLASSES)
        if self.config.classes == 11:
            return ["background"] + [f"digit {d}" for d in range(10)]
        return ["background"] + [f"class {k}" for k in range(1, self.config.classes)]

    def write_pictures(self, out_dir, images: np.ndarray, labels: np.ndarray) -> list:
        from pathlib import Path

        from zoo.pictures import save_png, segmentation_panel

        out_dir = Path(out_dir)
        n = min(8, len(images))
        pred = self.predict(images[:n])
        paths = [
            save_png(
                out_dir / "segmentations.png", segmentation_panel(images[:n], pred, labels[:n], self.class_names())
            )
        ]
        paths.append(save_png(out_dir / "decoder_stages.png", self.decoder_stages_picture(images[0])))
        return paths

    @torch.no_grad()
    def decoder_stages_picture(self, image: np.ndarray):
        """The lecture's figure for one (H, W) image: the decoder's activations, coarse to fine."""
        from zoo.pictures import decoder_stages_panel

        scores, seen = self.stages(self.as_tensor(np.asarray(image, np.float32))[None, None])
        stages = [(name, a[0].cpu().numpy()) for name, a in seen]
        return decoder_stages_panel(image, stages, scores[0].argmax(0).cpu().numpy(), self.config.classes)


@register_model(
    config=DeconvNetConfig, train=dict(data="none", epochs=20, batch_size=32, lr=1e-3, lr_schedule="cosine")
)
def deconvnet_vgg16(**cfg) -> DeconvNet:
    """DeconvNet as in Noh et al. 2015: VGG16 encoder with switches, mirrored unpool/deconv decoder, 21 classes."""
    return DeconvNet(DeconvNetConfig(**cfg))


@register_model(
    config=DeconvNetConfig, train=dict(data="mnist-seg", epochs=12, batch_size=32, lr=2e-3, lr_schedule="cosine")
)
def deconvnet_digits(**cfg) -> DeconvNet:
    """DeconvNet at reduced width and depth, trained to segment multi-digit MNIST canvases (11 classes)."""
    defaults = dict(
        channels=1,
        classes=11,
        image_size=[48, 48],
        encoder=[[16, 16], [32, 32], [64, 64]],
        fc_width=512,
        # measured on the held-out canvases, the same 12 epochs (mIoU): 0.857 as in the paper (four stages, to 3x3x128);
        # 0.875 with input_skip and background weighed 0.3 (a halo of false digit pixels around the strokes, 5.7 % of
        # the digit pixels: the pixels' weights had grown to only ~4, too small for a sharp edge at the stroke level);
        # 0.956 with skip_gain 16, background weighed 1 and fc_window 3 (a code per place: the digits of one canvas no
        # longer share one 512-wide code); binary IoU 0.936 -> 0.996; 0.967 (every class >= 0.925) with these three
        # stages instead of four: a code per 8-pixel place of a 6x6 map, not per 16-pixel place of a 3x3 one (fc6/fc7 on
        # 36 places, no 128-wide stage: 79 M multiply-adds a canvas against 77 M, 1.0 M parameters against 2.0 M). On
        # four stages the same 7,500 steps over more distinct canvases did worse: 40,000 canvases for 6 epochs 0.951,
        # 60,000 for 4 epochs 0.934. Not taken either (four stages): weight_decay 1e-4, 0.930; 16 epochs (the cosine
        # over 16), 0.956; the training digits also bent by elastic distortion (Simard et al.'s gain 34, sigma 4),
        # 0.947; fc_window 5, 0.936; jaccard_weight 1, 0.946 (digit 3 at 0.891)
        input_skip=True,
        skip_gain=16.0,
        background_weight=1.0,
        fc_window=3,
    )
    return DeconvNet(DeconvNetConfig(**{**defaults, **cfg}))
