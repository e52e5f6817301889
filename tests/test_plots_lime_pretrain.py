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


def finetune() -> pd.DataFrame:
    """Two tasks x two arms x two seeds x two sizes; the last step (4) is what sample efficiency reads."""
    rows = []
    for task, shift in (("rewrite", 0.0), ("rewrite_multistep", -0.2)):
        for arm, base in (("scratch", 0.3), ("mixed", 0.5)):
            for seed in (0, 1):
                for size in (100, 1000):
                    for step in (2, 4):
                        exact = (base + shift + 0.1 * seed + 0.2 * (size == 1000)) * (step == 4)
                        rows.append({"task": task, "arm": arm, "seed": seed, "train_examples": size, "step": step,
                                     "exact_match": round(exact, 10)})
    return pd.DataFrame(rows)


def caught(monkeypatch, draw) -> object:
    """The figure `draw()` makes, caught instead of saved."""
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or path)
    draw()
    return drawn[0]


def test_sample_efficiency_has_a_panel_per_task_and_a_mean_line_per_arm(monkeypatch, tmp_path):
    figure = caught(monkeypatch, lambda: plots.lime_sample_efficiency(finetune(), tmp_path / "x.png"))
    one_step, multi_step = figure.axes
    assert one_step.get_title() == "sample efficiency: one-step term rewriting"
    assert multi_step.get_title() == "sample efficiency: multi-step term rewriting"
    assert [line.get_label() for line in one_step.lines] == ["scratch", "mixed"]
    assert one_step.lines[0].get_xdata().tolist() == [100, 1000]
    assert [label.get_text() for label in one_step.get_xticklabels()] == ["100", "1,000"]  # the sizes, no others
    assert one_step.lines[0].get_ydata().tolist() == pytest.approx([0.35, 0.55])  # seeds 0.3 / 0.4 at 100
    assert multi_step.lines[1].get_ydata().tolist() == pytest.approx([0.35, 0.55])  # mixed less 0.2


def test_transfer_curves_have_a_row_per_task_and_the_pretraining_panel_first(monkeypatch, tmp_path):
    pretrain = pd.DataFrame({"arm": ["mixed"] * 2, "seed": [0, 0], "step": [10, 20], "exact_match": [0.1, 0.6],
                             "token_accuracy": [0.5, 0.9]})
    figure = caught(monkeypatch, lambda: plots.lime_transfer_curves(pretrain, finetune(), tmp_path / "x.png"))
    assert len(figure.axes) == 2 * 3
    first, *one_step = figure.axes[:3]
    exact, tokens = first.lines
    assert exact.get_ydata().tolist() == [0.1, 0.6] and tokens.get_ydata().tolist() == [0.5, 0.9]
    assert exact.get_color() == tokens.get_color() == one_step[0].lines[1].get_color()  # mixed's colour throughout
    assert [ax.get_title() for ax in figure.axes[4:]] == ["100 training examples", "1000 training examples"]
    assert [ax.get_ylabel() for ax in (figure.axes[1], figure.axes[4])] == [
        "one-step term rewriting:\ntest exact match", "multi-step term rewriting:\ntest exact match"]
    assert not figure.axes[3].axison  # below the pretraining panel: nothing
    assert figure.axes[5].lines[0].get_ydata().tolist() == pytest.approx([0.0, 0.35])  # scratch, 1000, steps 2, 4
