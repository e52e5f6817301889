"""The learning-curves figure of bench/lime_learning.py (core.plots.lime_pretrain.lime_learning_curves), drawn from
hand-made curves of two settings: the figure is caught before it is saved and its lines are read back."""
from __future__ import annotations

import pandas as pd
import pytest

import core.plots.lime_pretrain as plots


def curves() -> pd.DataFrame:
    """Two settings evaluated at steps 100 and 200 (one seed each): their seconds differ, so the right-hand panels'
    x values tell the seconds from the steps."""
    return pd.DataFrame({"name": ["plain", "plain", "curriculum", "curriculum"], "step": [100, 200, 100, 200],
                         "seconds": [10.0, 20.0, 7.0, 15.0], "exact_match": [0.0, 0.1, 0.2, 0.5],
                         "token_accuracy": [0.3, 0.4, 0.6, 0.9]})


@pytest.fixture
def figure(monkeypatch, tmp_path):
    """The figure lime_learning_curves draws from curves(), caught instead of saved."""
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or path)
    assert plots.lime_learning_curves(curves(), tmp_path / "x.png") == tmp_path / "x.png"
    return drawn[0]


def test_each_panel_has_a_line_per_setting_of_its_figure_against_steps_or_seconds(figure):
    exact_steps, exact_seconds, tokens_steps, tokens_seconds = figure.axes
    for ax in figure.axes:
        assert [line.get_label() for line in ax.lines] == ["plain", "curriculum"]  # in the table's order
    assert [ax.get_xlabel() for ax in (exact_steps, exact_seconds)] == ["pretraining step",
                                                                        "training seconds (evaluation left out)"]
    plain, curriculum = exact_steps.lines
    assert plain.get_xdata().tolist() == [100, 200] and plain.get_ydata().tolist() == [0.0, 0.1]
    assert exact_seconds.lines[1].get_xdata().tolist() == [7.0, 15.0]
    assert exact_seconds.lines[1].get_ydata().tolist() == [0.2, 0.5]
    assert tokens_steps.lines[1].get_ydata().tolist() == [0.6, 0.9]
    assert tokens_seconds.lines[0].get_xdata().tolist() == [10.0, 20.0]
    assert tokens_seconds.lines[0].get_ydata().tolist() == [0.3, 0.4]
