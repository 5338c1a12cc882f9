"""Training curves and the live metrics file: metrics.csv holds every epoch's figures as metrics.json does
(rewritten after each epoch, so a run can be watched); training_curves.png has axes, shared epochs, train and
held-out loss on one panel, the sparsity target and the GAN floors as reference lines, the GAN phases
shaded and lines broken where a phase computes no such loss."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from zoo.pictures import training_curves_figure
from zoo.train import train


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    train("sparse-ae-digits8", out, epochs=3, limit=64, progress=False)
    return out


def test_metrics_csv_matches_the_history(ae_run):
    run = json.loads((ae_run / "metrics.json").read_text())
    rows = list(csv.DictReader((ae_run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in run["history"]] == [1, 2, 3]
    for row, held_out, trained in zip(rows, run["history"], run["train_history"]):
        assert float(row["val_mse"]) == pytest.approx(held_out["val_mse"], rel=1e-9)
        assert float(row["train_loss"]) == pytest.approx(trained["loss"], rel=1e-9)


def test_curves_have_axes_shared_epochs_and_the_rho_target(ae_run):
    from zoo.models.sparse_ae import SparseAutoencoder

    run = json.loads((ae_run / "metrics.json").read_text())
    fig = training_curves_figure(run, SparseAutoencoder.curve_references)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in axes]
    first = axes[0]
    labels = [line.get_label() for line in first.lines]
    assert "train loss" in labels and "held-out val_objective" in labels  # one panel for both
    assert "rho" not in titles  # a constant is a reference line, not a flat panel
    rho_panel = axes[titles.index("mean_rho_hat")]
    dashed = [line for line in rho_panel.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(run["history"][0]["rho"])
    assert {tuple(line.get_xdata()) for ax in axes for line in ax.lines if line.get_linestyle() != "--"} == {(1, 2, 3)}
    assert axes[-1].get_xlabel() == "epoch" and axes[-1].get_xticks().size > 1
    assert (ae_run / "training_curves.png").stat().st_size > 10_000


def test_gan_curves_shade_the_phases_and_break_lines_between_them():
    history = [{"epoch": e, "seconds": float(e), "fid": 100.0 / e, "floor_fid_train_vs_val": 9.0} for e in (1, 2, 3)]
    train_history = [
        {"epoch": 1, "phase": 1.0, "d_loss": 1.3},
        {"epoch": 2, "phase": 2.0, "g_loss": 0.7},
        {"epoch": 3, "phase": 3.0, "d_loss": 1.1, "g_loss": 0.8},
    ]
    run = {"model": "dcgan-mnist", "history": history, "train_history": train_history}
    fig = training_curves_figure(run, {"floor_fid_train_vs_val": "fid"})
    loss = fig.axes[0]
    d_loss = next(line for line in loss.lines if line.get_label() == "train d_loss")
    assert math.isnan(d_loss.get_ydata()[1])  # phase 2 computes no D loss: the line breaks there
    assert [p.get_label() for p in loss.patches] == ["phase 1", "phase 2"]
    fid = next(ax for ax in fig.axes if ax.get_title() == "fid")
    assert any(np.allclose(line.get_ydata(), 9.0) and line.get_linestyle() == "--" for line in fid.lines)


def test_deconvnet_curves_draw_the_baseline_on_the_networks_figures():
    # the threshold-and-classify baseline is the same every epoch: a dashed line on the network's panel of the
    # same figure, and no flat panel of its own
    import zoo

    model = zoo.create_model("deconvnet-digits")
    history = [
        {"epoch": e, "val_miou": 0.5 + 0.1 * e, "val_iou_class_3": 0.4 + 0.1 * e, "baseline_val_miou": 0.94,
         "baseline_val_iou_class_3": 0.96}
        for e in (1, 2, 3)
    ]  # fmt: skip
    fig = training_curves_figure({"history": history}, model.curve_references)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert sorted(titles) == ["val_iou_class_3", "val_miou"]
    for title, value in (("val_miou", 0.94), ("val_iou_class_3", 0.96)):
        ax = fig.axes[titles.index(title)]
        dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(value)
