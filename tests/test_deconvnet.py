"""DeconvNet (Noh et al. 2015): the segmentation canvases, the mean IoU, the architecture against the paper,
the export's native MaxPool -> MaxUnpool switches (checked against torch and onnxruntime), a short training
run, and the decoder-stage picture. The full 252M-parameter network's export and 224x224 forward pass are in
the slow test at the end (``pytest -m slow``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import zoo
from cli.main import cli
from tests.conftest import assert_close, ort_run, runtime_run
from zoo.config import TrainConfig
from zoo.data import SEG_CLASSES, SEG_DIGIT, SEG_STROKE, digit_canvases, load_dataset
from zoo.evaluate import segmentation_scores
from zoo.export import export_onnx

# The digits model cut down for the quick suite: the same stages, fewer channels.
SMALL = dict(encoder=[[4, 4], [8], [8]], fc_width=16, image_size=[48, 48])


# ---------------------------------------------------------------------------------------------- data


def test_canvases_are_deterministic_and_labelled_where_the_strokes_are():
    a, b = load_dataset("mnist-seg", "val"), load_dataset("mnist-seg", "val")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.images.shape == a.labels.shape == (600, 48, 48)
    assert a.images.dtype == np.float32 and 0.0 <= a.images.min() and a.images.max() <= 1.0
    # every pixel at or above the stroke threshold is a digit, every other one background (boxes never overlap)
    assert np.array_equal(a.labels > 0, a.images >= SEG_STROKE)
    assert set(np.unique(a.labels)) == set(range(SEG_CLASSES))


def test_canvases_place_the_given_digits_without_overlap():
    rng = np.random.default_rng(0)
    digits = 0.5 + 0.5 * rng.random((5, 28, 28), dtype=np.float32)  # every pixel of a crop is a stroke
    images, maps = digit_canvases(digits, np.arange(5), count=50, seed=1)
    for image, m in zip(images, maps):
        # each placed digit labels its whole 20x20 crop; boxes that overlapped would label fewer pixels
        painted = int((m > 0).sum())
        assert painted % (SEG_DIGIT * SEG_DIGIT) == 0 and 1 <= painted // (SEG_DIGIT * SEG_DIGIT) <= 3
        assert np.array_equal(m > 0, image > 0)


def test_warped_training_canvases_stay_labelled_where_the_strokes_are():
    from zoo.data import _mnist

    X, y = _mnist()
    images, maps = digit_canvases(X[:50], y[:50], count=40, seed=3, warp=True)
    plain, _ = digit_canvases(X[:50], y[:50], count=40, seed=3, warp=False)
    assert np.array_equal(maps > 0, images >= SEG_STROKE)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert not np.array_equal(images, plain)  # warped digits (and so other places) differ from the plain ones


def test_train_and_val_canvases_come_from_disjoint_digits():
    from zoo.data import _mnist, split_indices

    X, y = _mnist()
    train_idx, val_idx = split_indices(len(X), y)
    assert not set(train_idx) & set(val_idx)
    val = load_dataset("mnist-seg", "val")
    # the first held-out canvas's digits are all found among the held-out crops
    crops = X[val_idx][:, 4:24, 4:24]  # (n, 20, 20)
    image = val.images[0]
    found = 0
    for top in range(48 - 20 + 1):
        for left in range(48 - 20 + 1):
            window = image[top : top + 20, left : left + 20]
            if window.max() > 0 and (np.abs(crops - window).max(axis=(1, 2)) == 0).any():
                found += 1
    assert found >= 1


# --------------------------------------------------------------------------------------------- metric


def _miou_by_sets(pred: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """The definition, one class at a time with pixel sets."""
    ious = []
    for c in range(classes):
        p, t = set(np.flatnonzero(pred == c)), set(np.flatnonzero(truth == c))
        if p | t:
            ious.append(len(p & t) / len(p | t))
    return float(np.mean(ious))


@pytest.mark.parametrize("seed", range(4))
def test_miou_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, (3, 9, 7))
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 6, truth.shape))
    scores = segmentation_scores(pred, truth, classes=6)
    assert scores["val_miou"] == pytest.approx(_miou_by_sets(pred, truth, 6), abs=1e-12)
    assert scores["val_pixel_accuracy"] == pytest.approx(float((pred == truth).mean()), abs=1e-12)
    assert segmentation_scores(truth, truth, 6)["val_miou"] == 1.0


# ------------------------------------------------------------------------------------------ architecture


def test_vgg16_deconvnet_is_the_papers():
    cfg = zoo.create_model("deconvnet-digits").config  # cheap: the vgg16's config only
    vgg = type(cfg)()  # DeconvNetConfig's defaults are the paper's
    assert vgg.decoder == [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64, 64]]
    assert vgg.fc_kernel == (7, 7) and vgg.classes == 21
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    convs += [(256, 512)] + [(512, 512)] * 5
    deconvs = [(512, 512)] * 5 + [(512, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64)]
    deconvs += [(64, 64), (64, 64)]
    bn = lambda c: 2 * c  # noqa: E731 - learned scale and shift
    expected = sum(9 * i * o + o + bn(o) for i, o in convs + deconvs)
    expected += 7 * 7 * 512 * 4096 + 4096 + bn(4096)  # fc6
    expected += 4096 * 4096 + 4096 + bn(4096)  # fc7
    expected += 7 * 7 * 4096 * 512 + 512 + bn(512)  # fc6-deconv
    expected += 64 * 21 + 21  # score
    model = zoo.create_model("deconvnet-vgg16")
    assert sum(p.numel() for p in model.parameters()) == expected
    assert 251e6 < expected < 253e6


def test_stages_run_coarse_to_fine_and_unpooling_keeps_the_switches():
    torch.manual_seed(0)
    model = zoo.create_model("deconvnet-digits", **SMALL).eval()
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        scores, seen = model.stages(x)
    assert scores.shape == (2, 11, 48, 48)
    assert [n for n, _ in seen] == ["fc6-deconv", "unpool3", "deconv3", "unpool2", "deconv2", "unpool1", "deconv1"]
    assert [a.shape[-1] for _, a in seen] == [6, 12, 12, 24, 24, 48, 48]
    for (_, before), (name, unpooled) in zip(seen, seen[1:]):
        if name.startswith("unpool"):
            # at most one non-zero per 2x2 window, and the window's values are the pooled map's
            windows = unpooled.unfold(2, 2, 2).unfold(3, 2, 2)  # (N, C, h, w, 2, 2)
            assert int((windows != 0).sum(dim=(-1, -2)).max()) <= 1
            assert torch.equal(windows.sum(dim=(-1, -2)), before)


@pytest.mark.parametrize("skip, gain", [(False, 1.0), (True, 1.0), (True, 16.0)])
def test_input_skip_puts_the_pixels_beside_the_last_features(skip, gain):
    # the score layer is a 1x1 convolution over the last decoder stage's features, and with input_skip over the
    # input pixels (times skip_gain) too: written out here as an einsum over the channels
    torch.manual_seed(0)
    model = zoo.create_model("deconvnet-digits", **SMALL, input_skip=skip, skip_gain=gain).eval()
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        scores, seen = model.stages(x)
    features = torch.cat([seen[-1][1], gain * x], 1) if skip else seen[-1][1]  # (2, w (+ 1), 48, 48)
    w, b = model.score.weight[:, :, 0, 0], model.score.bias  # (11, w (+ 1)), (11,)
    expected = torch.einsum("nchw,kc->nkhw", features, w) + b[None, :, None, None]
    assert model.score.in_channels == seen[-1][1].shape[1] + skip
    # float32 sums of the same terms in another order: 1e-5 absolute at unit gain, growing with the gain as
    # the pixels' terms do
    assert torch.allclose(scores, expected, atol=1e-5 * gain)


@pytest.mark.parametrize("window", [1, 3])
def test_fc_window_keeps_the_last_map(window, tmp_path):
    # fc6 over the whole last map is the paper's (one code per image); an fc_window keeps the map, so each
    # place has its code: fc6 and fc7 are then k x k and 1 x 1 convolutions at the last pool's size, and the
    # exported graph agrees with torch and onnxruntime
    torch.manual_seed(0)
    model = zoo.create_model("deconvnet-digits", **SMALL, fc_window=window).eval()
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        h = x
        for stage in model.encoder:
            h = F.max_pool2d(stage(h), 2, 2)  # (2, w, 48 / 2^k, 48 / 2^k)
        fc7 = model.fc7(model.fc6(h))
        assert fc7.shape == (2, SMALL["fc_width"], *h.shape[-2:])
        assert model.fc6_deconv(fc7).shape == h.shape
        # a 1x1 window is a per-place linear map: written out as an einsum
        if window == 1:
            conv = model.fc6[0]
            pre = torch.einsum("nchw,kc->nkhw", h, conv.weight[:, :, 0, 0]) + conv.bias[None, :, None, None]
            assert torch.allclose(model.fc6[:2](h), model.fc6[1](pre), atol=1e-5)
    report = export_onnx(model, tmp_path / "windowed.onnx")
    assert report["max_abs_err_runtime_vs_torch"] <= 1e-5
    assert report["max_abs_err_onnxruntime_vs_torch"] <= 1e-5
    with pytest.raises(zoo.ZooError, match="odd"):
        zoo.create_model("deconvnet-digits", **SMALL, fc_window=2)


def test_fc_dropout_drops_while_training_and_leaves_the_exported_network_as_it_was(tmp_path):
    # VGG16's dropout after fc6 and fc7: while training, each output is zeroed with probability p and the rest
    # scaled by 1 / (1 - p) (checked against the same stage without it); in eval mode, and in the export, the
    # network is the one without dropout, with the same state (no new tensors, so either loads the other's)
    p = 0.5
    torch.manual_seed(0)
    plain = zoo.create_model("deconvnet-digits", **SMALL, fc_window=3).eval()
    dropped = zoo.create_model("deconvnet-digits", **SMALL, fc_window=3, fc_dropout=p)
    dropped.load_state_dict(plain.state_dict())  # strict: the same tensors under the same names
    dropped.eval()  # first, while both hold the same BatchNorm statistics
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(dropped(x), plain(x))
    report = export_onnx(dropped, tmp_path / "dropout.onnx")
    assert "Dropout" not in {n.op_type for n in onnx.load(str(tmp_path / "dropout.onnx")).graph.node}
    assert report["max_abs_err_runtime_vs_torch"] <= 1e-5
    assert report["max_abs_err_onnxruntime_vs_torch"] <= 1e-5
    dropped.train()
    inputs = {"fc6": torch.rand(64, SMALL["encoder"][-1][-1], 6, 6), "fc7": torch.rand(64, SMALL["fc_width"], 6, 6)}
    for name, x in inputs.items():  # x: what the last pool hands fc6, or what fc6 hands fc7
        stage = getattr(dropped, name)
        with torch.no_grad():
            before = stage[:3](x)  # (64, fc, 6, 6): conv, BatchNorm (batch statistics), ReLU
            after = stage(x)  # the same, then dropout
        zeroed = (after == 0) & (before != 0)
        assert torch.allclose(after[~zeroed], before[~zeroed] / (1 - p), rtol=1e-6, atol=0)
        assert abs(float(zeroed.sum() / (before != 0).sum()) - p) < 0.02  # ~18k live outputs: p within 2 points


def test_the_soft_jaccard_term_is_one_minus_the_soft_iou_of_the_classes_present():
    # against its definition written in numpy, summed over the whole batch; a class absent from the truth does
    # not count; scores that put all the mass on the true class leave nothing to lose; autograd's gradient
    # against central finite differences in float64
    from zoo.models.deconvnet import soft_jaccard_loss

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3, 5, 6, 7))  # (N, K, H, W)
    truth = rng.choice([0, 1, 3, 4], size=(3, 6, 7))  # class 2 absent
    p = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    t = np.stack([truth == k for k in range(5)], 1)  # (N, K, H, W)
    iou = [(p[:, k] * t[:, k]).sum() / (p[:, k] + t[:, k] - p[:, k] * t[:, k]).sum() for k in (0, 1, 3, 4)]
    got = soft_jaccard_loss(torch.tensor(scores), torch.tensor(truth))
    assert abs(float(got) - (1 - np.mean(iou))) < 1e-12
    sharp = torch.tensor(np.where(t, 50.0, -50.0))  # (N, K, H, W): the truth, all but certain
    assert float(soft_jaccard_loss(sharp, torch.tensor(truth))) < 1e-12
    x = torch.tensor(scores[:1, :, :2, :2].copy(), requires_grad=True)  # (1, 5, 2, 2)
    assert torch.autograd.gradcheck(lambda s: soft_jaccard_loss(s, torch.tensor(truth[:1, :2, :2])), (x,))


def test_the_jaccard_weight_adds_the_term_to_the_training_loss():
    # one training step's reported loss: the cross-entropy alone, and with the term times its weight
    from zoo.models.deconvnet import soft_jaccard_loss

    x = torch.rand(4, 48, 48)
    y = torch.randint(0, 11, (4, 48, 48))
    losses = {}
    for w in (0.0, 2.0):
        torch.manual_seed(0)
        model = zoo.create_model("deconvnet-digits", **SMALL, fc_window=3, jaccard_weight=w)
        with torch.no_grad():
            scores = model(x[:, None])  # (4, 11, 48, 48), before the step moves anything
        expected = F.cross_entropy(scores, y) + w * soft_jaccard_loss(scores, y)
        adam = model.configure_optimizers(TrainConfig())
        losses[w] = (model.training_step(x, y, adam, 0)["loss"], float(expected))
    for got, expected in losses.values():
        assert abs(got - expected) < 1e-5 * expected
    assert losses[2.0][0] > losses[0.0][0]


def test_a_checkpoint_from_before_the_options_is_rebuilt_without_them():
    # a config stored before an option existed lacks its key: the run had the paper's network there, whatever
    # the factory's default is now, and the layers are rebuilt with the shapes that file holds
    from dataclasses import asdict

    from zoo.builder import build_model, upgrade_config

    with torch.device("meta"):
        stored = asdict(zoo.create_model("deconvnet-digits", **SMALL).config)
    for key in ("input_skip", "skip_gain", "fc_window", "fc_dropout", "jaccard_weight"):
        stored.pop(key)
    config, _ = upgrade_config("deconvnet-digits", stored)
    options = ("input_skip", "skip_gain", "fc_window", "fc_dropout", "jaccard_weight")
    assert tuple(config[k] for k in options) == (False, 1.0, 0, 0, 0)
    with torch.device("meta"):
        model = build_model("deconvnet-digits", **config)
    assert model.score.in_channels == SMALL["encoder"][0][-1]  # (11, 4, 1, 1): the last decoder stage alone
    assert model.fc6[0].kernel_size == (6, 6) and model.fc6[0].padding == (0, 0)  # the whole 6x6 map


def test_bad_configs_are_refused():
    with pytest.raises(zoo.ZooError, match="multiples of 8"):  # three 2x2 pools
        zoo.create_model("deconvnet-digits", image_size=[44, 44])
    with pytest.raises(zoo.ZooError, match="multiples of 16"):  # four
        zoo.create_model("deconvnet-digits", image_size=[40, 40], encoder=[[4], [4], [4], [4]])
    with pytest.raises(zoo.ZooError, match="non-empty"):
        zoo.create_model("deconvnet-digits", encoder=[[4], []])


# ------------------------------------------------------------------------------------------------ export


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    torch.manual_seed(1)
    model = zoo.create_model("deconvnet-digits", **SMALL).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so that folding them is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("deconvnet") / "small.onnx"
    report = export_onnx(model, path)
    return model, path, report


def test_export_emits_native_switches(small_export):
    model, path, report = small_export
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    stages = len(model.config.encoder)
    assert ops.count("MaxPool") == ops.count("MaxUnpool") == stages
    assert not {"ScatterND", "ScatterElements", "Slice", "Sub"} & set(ops), ops
    pools = [n for n in graph.node if n.op_type == "MaxPool"]
    unpools = [n for n in graph.node if n.op_type == "MaxUnpool"]
    assert all(len(n.output) == 2 for n in pools)  # values and Indices
    # the deepest pool's switches feed the first unpooling, and so on outward
    assert [u.input[1] for u in unpools] == [p.output[1] for p in reversed(pools)]
    assert report["max_abs_err_runtime_vs_torch"] <= 1e-5
    assert report["max_abs_err_onnxruntime_vs_torch"] <= 1e-5


def test_the_onnx_sample_keeps_away_from_pool_ties(small_export):
    # the export's check and the test data set use held-out canvases whose every 2x2 pool window has its two
    # largest values apart by at least TIE_MARGIN (relative; exact ties and windows of zeros do not count):
    # pool_margins against its definition written in numpy over the encoder's activations, and onnxruntime's
    # own activations find no near tie in the chosen canvases
    from tests.conftest import near_tie_samples, pool_window_gaps
    from zoo.models.deconvnet import TIE_MARGIN

    model, path, _ = small_export
    val = load_dataset("mnist-seg", "val")
    x = val.images[:64]  # (64, 48, 48)
    expected = np.full(len(x), np.inf, np.float32)
    h = torch.from_numpy(x[:, None])  # (64, 1, 48, 48)
    with torch.no_grad():
        for stage in model.encoder:
            h = stage(h)  # (64, c, s, s)
            gap = pool_window_gaps(h.numpy())  # (64, c, s/2, s/2)
            expected = np.minimum(expected, gap.reshape(len(x), -1).min(1))
            h = F.max_pool2d(h, 2, 2)
    assert np.allclose(model.pool_margins(x), expected, rtol=1e-6, atol=0)
    sample = model.onnx_sample(val.images)  # (8, 1, 48, 48)
    chosen = np.flatnonzero(model.pool_margins(val.images[:256]) >= TIE_MARGIN)[:8]
    assert len(chosen) == 8 and np.array_equal(sample[:, 0], val.images[chosen])
    assert not near_tie_samples(str(path), {"image": sample}).any()


@pytest.mark.parametrize("batch", [1, 5])
def test_exported_graph_agrees_with_torch_and_onnxruntime(small_export, batch):
    model, path, _ = small_export
    x = np.random.default_rng(batch).random((batch, 1, 48, 48), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = runtime_run(str(path), {"image": x})
    assert_close(got, ort_run(str(path), {"image": x}), atol=1e-5)
    assert_close(got, [expected], atol=1e-5)


class _OddUnpool(torch.nn.Module):
    """Pooling that drops a row and a column, so that MaxUnpool needs its output_shape input."""

    input_names = ("image",)
    output_names = ("output",)

    def onnx_translation_table(self):
        from zoo.export import switch_translations

        return switch_translations()

    def forward(self, image):
        pooled, where = F.max_pool2d(image, 2, 2, return_indices=True)  # (N, C, 3, 4)
        return F.max_unpool2d(pooled * 2.0, where, 2, 2, output_size=image.shape[-2:])  # (N, C, 7, 9)


def test_switches_with_odd_sizes_pass_the_output_shape():
    from zoo.export import torch_to_onnx

    module = _OddUnpool()
    proto = torch_to_onnx(module, (torch.rand(2, 3, 7, 9),))
    proto.ir_version = 10
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MaxUnpool") == 1 and len(next(n for n in proto.graph.node if n.op_type == "MaxUnpool").input) == 3
    data = proto.SerializeToString()
    x = np.random.default_rng(0).standard_normal((3, 3, 7, 9)).astype(np.float32)
    expected = module(torch.from_numpy(x)).numpy()
    assert_close(ort_run(data, {"image": x}), [expected], atol=0)
    assert_close(runtime_run(data, {"image": x}), [expected], atol=0)


# ------------------------------------------------------------------------------------- training, pictures


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    from zoo.train import train

    out = tmp_path_factory.mktemp("deconvnet-run")
    run = train("deconvnet-digits", out, epochs=3, limit=256, batch_size=32, progress=False, lr=3e-3, **SMALL)
    return out, run


def test_short_training_run_learns_and_reports_the_card_figures(short_run):
    out, run = short_run
    losses = [row["loss"] for row in run["train_history"]]
    assert losses[-1] < losses[0]
    final = run["final"]
    for key in ("val_miou", "val_pixel_accuracy", "val_iou_background"):
        assert 0.0 <= final[key] <= 1.0
    # the figures are the final weights' on the held-out canvases the run used (limit 256 -> 64 canvases)
    from zoo.checkpoint import load_checkpoint

    model, meta = load_checkpoint(out / "deconvnet-digits.safetensors")
    val = load_dataset("mnist-seg", "val")
    images, labels = val.images[:64], val.labels[:64]
    assert segmentation_scores(model.predict(images), labels, SEG_CLASSES) == pytest.approx(
        {k: v for k, v in final.items() if k.startswith("val_")}, nan_ok=True
    )
    for picture in ("segmentations.png", "decoder_stages.png", "training_curves.png"):
        assert (out / picture).stat().st_size > 0


def test_visualize_writes_the_decoder_stages(short_run, tmp_path):
    out, _ = short_run
    target = tmp_path / "stages.png"
    result = CliRunner().invoke(cli, ["visualize", str(out / "deconvnet-digits.safetensors"), "--out", str(target)])
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(target) as im:
        assert im.width > im.height > 48
    again = CliRunner().invoke(cli, ["visualize", str(out / "deconvnet-digits.safetensors"), "--out", str(target)])
    assert again.exit_code != 0 and "already exists" in again.output


def test_visualize_refuses_a_model_without_a_decoder(tmp_path):
    from zoo.checkpoint import save_checkpoint

    model = zoo.create_model("sparse-ae-digits8")
    save_checkpoint(model, tmp_path / "ae.safetensors")
    result = CliRunner().invoke(cli, ["visualize", str(tmp_path / "ae.safetensors"), "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0 and "no decoder stages" in result.output
    assert "Traceback" not in result.output


# -------------------------------------------------------------------------------------- the full network


@pytest.mark.slow
def test_vgg16_deconvnet_exports_with_external_data_and_runs(tmp_path):
    """The paper's network (~1 GB of float32 weights): external data, and one 224x224 image through this
    runtime agreeing with onnxruntime."""
    torch.manual_seed(0)
    model = zoo.create_model("deconvnet-vgg16").eval()
    path = tmp_path / "deconvnet-vgg16.onnx"
    report = export_onnx(model, path)
    assert (tmp_path / "deconvnet-vgg16.onnx.data").stat().st_size > 1_000_000_000
    assert path.stat().st_size < 1_000_000
    del model
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    got = runtime_run(str(path), {"image": x})
    expected = ort_run(str(path), {"image": x})
    assert got[0].shape == (1, 21, 224, 224)
    assert_close(got, expected, atol=1e-4)
    assert report["max_abs_err_runtime_vs_torch"] <= 1e-5
