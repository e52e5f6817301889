"""The dct_sparse flow's figure (core.plots.dct_sparse.accuracy_vs_trainable_params), drawn from a hand-made table:
the figure is caught before it is saved and its lines read back."""
from __future__ import annotations

import pandas as pd
import pytest

import core.plots.dct_sparse as plots


def results_table(with_rules: bool = True) -> pd.DataFrame:
    """Dense at 1.0; sparse and dct_sparse on random and snip masks at densities 0.1 and 0.01; 2 seeds."""
    rows = [{"layer_type": "dense", "mask_rule": "none", "density": 1.0, "seed": s, "trainable_params": 1000,
             "test_accuracy": 0.9} for s in (0, 1)]
    for layer_type, offset in (("sparse", 0.0), ("dct_sparse", 0.2)):
        for rule, rule_offset in (("random", 0.0), ("snip", 0.05)):
            for density in (0.1, 0.01):
                rows += [{"layer_type": layer_type, "mask_rule": rule, "density": density, "seed": s,
                          "trainable_params": 1000 * density + 10 * s, "test_accuracy": density + offset + rule_offset
                          + 0.02 * s} for s in (0, 1)]
    table = pd.DataFrame(rows)
    return table if with_rules else table[table["mask_rule"] != "snip"].drop(columns="mask_rule")


@pytest.fixture
def draw(monkeypatch, tmp_path):
    """A function drawing a table's figure, returning it instead of saving it."""
    drawn = []
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig) or path)
    return lambda table: (plots.accuracy_vs_trainable_params(table, 0.1, tmp_path / "x.png"), drawn[-1])[1]


def test_a_line_per_layer_type_and_rule_coloured_by_rule_styled_by_layer_type(draw):
    ax = draw(results_table()).axes[0]
    lines = {bars.get_label(): bars.lines[0] for bars in ax.containers}  # errorbar: its data line first
    assert set(lines) == {"dense", "dct_sparse (random)", "dct_sparse (snip)", "sparse (random)", "sparse (snip)"}
    snip = lines["dct_sparse (snip)"]
    assert snip.get_xdata().tolist() == [15.0, 105.0]  # mean trainable parameters of 0.01 and 0.1, seeds 0 and 1
    assert snip.get_ydata() == pytest.approx([0.01 + 0.25 + 0.01, 0.1 + 0.25 + 0.01])
    assert snip.get_linestyle() == "-" and lines["sparse (snip)"].get_linestyle() == "--"
    assert snip.get_color() == lines["sparse (snip)"].get_color() != lines["sparse (random)"].get_color()
    assert lines["dense"].get_marker() == "*"
    assert sorted(t.get_text() for t in ax.texts) == ["1.00%", "10.00%"]  # densities on DCT+Sparse random only
    assert ax.get_xscale() == "log" and [line.get_ydata()[0] for line in ax.lines if line.get_label() == "chance"] == [0.1]
    spread = ax.containers[[bars.get_label() for bars in ax.containers].index("dct_sparse (snip)")].lines[2][0]
    assert spread.get_segments()[0][:, 1] == pytest.approx([0.27 - 0.02 / 2 ** 0.5, 0.27 + 0.02 / 2 ** 0.5])  # std of 0.26, 0.28


def test_a_table_from_before_mask_rules_draws_as_random_masks(draw):
    ax = draw(results_table(with_rules=False)).axes[0]
    assert {bars.get_label() for bars in ax.containers} == {"dense", "dct_sparse (random)", "sparse (random)"}
