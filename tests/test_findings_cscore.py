"""The C-score flow's findings rule on hand-made holdout runs: 4 examples, example 0 mislabeled, one ratio, 6 runs in
3 groups (run index mod 3); within a group run r holds out examples 0 and 1, run r + 3 examples 2 and 3, so each
example's C-score in a group is whether that group's model got it right when it held it out."""
import math

import numpy as np
import pyarrow as pa
import pytest

from core.findings import COLUMNS
from core.methods.cscore import MISLABELED_AT_LOW_END, OOD_AT_LOW_END, cscore_findings, run_groups
from core.runs.rows import pack_bool_rows

NOISY = np.array([True, False, False, False])
HELD_OUT = ([0, 1], [2, 3])


def holdout_runs(right_by_group: list[list[bool]]) -> pa.Table:
    """runs.parquet of 3 groups of 2 runs at ratio 0.5: each model right on every example it trained on, and on the
    held-out ones as `right_by_group[group]` says."""
    groups = len(right_by_group)
    in_subset, correct = [], []
    for run in range(2 * groups):
        trained = np.ones(4, bool)
        trained[HELD_OUT[run // groups]] = False
        in_subset.append(trained)
        correct.append(trained | np.array(right_by_group[run % groups]))
    return pa.table({"run": list(range(2 * groups)), "ratio": [0.5] * (2 * groups),
                     "in_subset": pack_bool_rows(np.array(in_subset)),
                     "train_correct": pack_bool_rows(np.array(correct))})


def cscores(noisy=NOISY, foreign=None) -> pa.Table:
    return pa.table({"is_noisy": noisy} | ({} if foreign is None else {"is_foreign": foreign}))


def only_row(frame):
    """The mislabeled row; the out-of-distribution row beside it is not testable (no foreign examples)."""
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 2
    row, ood = frame.iloc[0], frame.iloc[1]
    assert row["claim"] == MISLABELED_AT_LOW_END.claim and row["scope"] == "toy"
    assert row["claim"].startswith("The score identifies out-of-distribution and mislabeled examples at one end")
    assert ood["measure"] == OOD_AT_LOW_END.measure and ood["rule"] == (
        "not testable here: no foreign examples; set dataset.foreign (e.g. noise) and dataset.foreign_fraction (e.g. "
        "0.05)")
    return row


def test_foreign_examples_at_the_low_end_are_the_out_of_distribution_row():
    """Example 0 foreign (and no label noise): the same AUROCs as for a mislabeled example 0, on the second row."""
    right = [[False, True, True, True], [False, False, True, True], [False, True, True, True]]
    frame = cscore_findings(holdout_runs(right), cscores(np.zeros(4, bool), NOISY), "toy")
    mislabeled, ood = frame.iloc[0], frame.iloc[1]
    assert mislabeled["rule"].startswith("not testable here: no label is known to be wrong")
    assert ood["claim"] == MISLABELED_AT_LOW_END.claim and ood["measure"].endswith("the out-of-distribution end")
    assert ood["estimate"] == pytest.approx(17 / 18) and ood["se"] == pytest.approx(1 / 18)
    assert ood["verdict"] == "supported" and ood["n_seeds"] == 3
    both = cscore_findings(holdout_runs(right), cscores(NOISY, np.array([False, True, False, False])), "toy")
    assert both["estimate"][0] == pytest.approx(17 / 18) and both["estimate"][1] != both["estimate"][0]


def test_groups_are_run_index_mod_g_with_two_runs_of_every_ratio_each():
    assert run_groups(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 2)).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1] * 2
    assert run_groups(np.arange(5)).tolist() == [0, 1, 0, 1, 0]
    assert run_groups(np.arange(3)).tolist() == [0, 0, 0]


def test_mislabeled_examples_at_the_low_end_supported():
    # AUROC of a low score for example 0, by group: 1 (only it wrong), 5/6 (tied with example 1: 0.5 + 1 + 1 of 3), 1
    right = [[False, True, True, True], [False, False, True, True], [False, True, True, True]]
    row = only_row(cscore_findings(holdout_runs(right), cscores(), "toy"))
    # mean 17/18; deviations 1/18, -2/18, 1/18: variance 6/324 / 2, SE sqrt(1/108 / 3) = 1/18
    assert row["estimate"] == pytest.approx(17 / 18) and row["se"] == pytest.approx(1 / 18)
    assert row["n_seeds"] == 3 and row["verdict"] == "supported"
    assert row["rule"].startswith("replicate: each of 3 disjoint groups of runs (run index mod 3); mean AUROC over "
                                  "them > 0.5 (chance: the paper states no number) by more than 2 SE: supported")


def test_mislabeled_examples_scoring_high_not_supported():
    # AUROC 0 (only example 0 right), 1/6 (examples 0 and 1 right: a tie, 0.5 of 3), 0
    right = [[True, False, False, False], [True, True, False, False], [True, False, False, False]]
    row = only_row(cscore_findings(holdout_runs(right), cscores(), "toy"))
    assert row["estimate"] == pytest.approx(1 / 18) and row["se"] == pytest.approx(1 / 18)
    assert row["verdict"] == "not supported"


def test_groups_that_disagree_are_inconclusive():
    # AUROC 1, 0, 0.5 (all right: every pair tied): mean 0.5, SD 0.5, SE 0.5 / sqrt 3
    right = [[False, True, True, True], [True, False, False, False], [True, True, True, True]]
    row = only_row(cscore_findings(holdout_runs(right), cscores(), "toy"))
    assert row["estimate"] == pytest.approx(0.5) and row["se"] == pytest.approx(0.5 / math.sqrt(3))
    assert row["verdict"] == "inconclusive"


def test_without_label_noise_or_replicates_not_testable():
    right = [[False, True, True, True]] * 3
    row = only_row(cscore_findings(holdout_runs(right), cscores(np.zeros(4, bool)), "toy"))
    assert row["verdict"] == "inconclusive" and row["n_seeds"] == 0
    assert math.isnan(row["estimate"]) and math.isnan(row["se"])
    assert row["rule"] == ("not testable here: no label is known to be wrong; set dataset.label_noise (e.g. 0.1) to "
                           "flip some")
    for groups in (1, 2):  # 2 or 4 runs per ratio: fewer groups than MIN_SEEDS = 3
        row = only_row(cscore_findings(holdout_runs([[False, True, True, True]] * groups), cscores(), "toy"))
        assert row["verdict"] == "inconclusive" and row["n_seeds"] == groups and math.isnan(row["estimate"])
        assert row["rule"] == (f"not testable here: {2 * groups} runs per ratio make {groups} group(s) of 2 or more "
                               "runs, fewer than 3; set runs_per_ratio to 6 or more")
