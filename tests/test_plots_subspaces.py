"""The subspaces flow's accuracy-by-epoch figure (core.plots.subspaces.accuracy_by_epoch), drawn from a hand-made
subspace_epochs table: the figure is caught before it is saved and its lines, bands and markers are read back."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import core.plots.subspaces as plots

# the line midpoint at 0% noise, per seed: test accuracy and validation accuracy after epochs 1, 2, 3
LINE_ACCURACY = {0: [0.50, 0.60, 0.70], 1: [0.51, 0.61, 0.71], 2: [0.52, 0.62, 0.72]}  # means 0.51, 0.61, 0.71
LINE_VALIDATION = {0: [0.4, 0.6, 0.5], 1: [0.4, 0.5, 0.6], 2: [0.7, 0.7, 0.6]}  # best epochs 2, 3, 1 (the first of a tie)


def epochs_table() -> pd.DataFrame:
    """Standard training and the line at 0% and 20% noise, epochs 1-3; SWA's average from epoch 2 on; 3 seeds."""
    rows = []
    for noise in (0.0, 0.2):
        for seed in range(3):
            for epoch in (1, 2, 3):
                line = (LINE_ACCURACY[seed][epoch - 1], LINE_VALIDATION[seed][epoch - 1]) if noise == 0 else (0.3, 0.3)
                arms = [("standard", "model", 0.4, 0.4), ("line", "midpoint", *line)]
                arms += [("swa", "model", 0.45, 0.45)] if epoch >= 2 else []
                rows += [{"method": method, "noise": noise, "seed": seed, "epoch": epoch, "point": point,
                          "validation_accuracy": validation, "accuracy": accuracy, "confidence": 0.5, "ece": 0.1}
                         for method, point, accuracy, validation in arms]
    return pd.DataFrame(rows)


@pytest.fixture
def figure(monkeypatch, tmp_path):
    """The figure accuracy_by_epoch draws from epochs_table(), caught instead of saved."""
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or path)
    assert plots.accuracy_by_epoch(epochs_table(), tmp_path / "x.png") == tmp_path / "x.png"
    return drawn[0]


def test_one_panel_per_noise_level_and_a_test_and_validation_line_per_arm(figure):
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == ["label noise 0%", "label noise 20%"]
    solid = [line for line in axes[0].lines if line.get_linestyle() == "-"]
    assert [line.get_label() for line in solid] == ["standard", "swa", "line midpoint"]
    dashed = [line for line in axes[0].lines if line.get_linestyle() == "--"]
    assert len(dashed) == 3 and [d.get_color() for d in dashed] == [s.get_color() for s in solid]
    line_test, line_validation = solid[2], dashed[2]
    assert line_test.get_xdata().tolist() == [1, 2, 3]
    assert line_test.get_ydata() == pytest.approx([0.51, 0.61, 0.71])
    assert line_validation.get_ydata() == pytest.approx([0.5, 0.6, 17 / 30])  # (0.5 + 0.6 + 0.6) / 3 at epoch 3
    assert solid[1].get_xdata().tolist() == [2, 3]  # SWA's average exists from swa_start on
    assert [text.get_text() for text in axes[1].get_legend().get_texts()] == ["standard", "swa", "line midpoint"]


def test_bands_are_one_standard_error_and_the_marker_is_the_early_stopped_point(figure):
    ax = figure.axes[0]
    bands = ax.collections  # per arm: test, then validation
    assert len(bands) == 6
    # the line's test band at epoch 1: 0.51 +/- the standard error of 0.50, 0.51, 0.52 (sample std 0.01)
    vertices = bands[4].get_paths()[0].vertices
    at_first = vertices[np.isclose(vertices[:, 0], 1.0), 1]
    assert (at_first.min(), at_first.max()) == (pytest.approx(0.51 - 0.01 / np.sqrt(3)),
                                                pytest.approx(0.51 + 0.01 / np.sqrt(3)))
    markers = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(markers) == 3
    # best validation epochs 2, 3, 1: mean epoch 2; test accuracy there 0.60, 0.71, 0.52: mean 0.61
    assert (markers[2].get_xdata()[0], markers[2].get_ydata()[0]) == (pytest.approx(2.0), pytest.approx(0.61))
    assert markers[2].get_color() == [line for line in ax.lines if line.get_label() == "line midpoint"][0].get_color()
