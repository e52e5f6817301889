"""The prune_grid flow's findings rules (core.methods.pruning) on hand-made error tables of 3 seeds."""
import math

import pandas as pd
import pytest

from core.findings import COLUMNS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from core.methods.pruning import ERROR_RISES, LOW_ERROR_PLATEAU, pruning_findings

SE_OF_0_01_STEPS = 0.01 / math.sqrt(3)  # the SE of three values 0.01 apart: sample std 0.01 over sqrt(3)


def curve(network: str, dense: list[float], first: list[float], sparsest: list[float]) -> pd.DataFrame:
    """prune_errors rows of one network at data fraction 1: levels 0 (dense), 1 and 2 (the sparsest) per seed."""
    return pd.DataFrame([{"network": network, "data_fraction": 1.0, "seed": seed, "level": level, "test_error": error}
                         for level, errors in enumerate((dense, first, sparsest)) for seed, error in enumerate(errors)])


def plus(values: list[float], steps: list[float]) -> list[float]:
    return [v + s for v, s in zip(values, steps)]


def test_near_dense_error_at_the_first_level_and_a_rise_at_the_sparsest_are_supported():
    """One curve, dense errors 0.1, 0.2, 0.3 (mean 0.2): level 1 adds 0.2 x [0.01, 0.02, 0.03], so the relative
    changes are 0.01, 0.02, 0.03 (mean 0.02, SE 0.01 / sqrt 3); the sparsest level adds 0.3, 0.4, 0.5 points."""
    dense = [0.1, 0.2, 0.3]
    findings = pruning_findings(curve("mlp_w8_d1", dense, plus(dense, [0.002, 0.004, 0.006]),
                                      plus(dense, [0.3, 0.4, 0.5])), scope="digits")
    assert list(findings.columns) == list(COLUMNS)
    plateau, rise = findings.to_dict("records")
    assert plateau["claim"] == LOW_ERROR_PLATEAU.claim and rise["claim"] == ERROR_RISES.claim
    assert plateau["estimate"] == pytest.approx(0.02) and plateau["se"] == pytest.approx(SE_OF_0_01_STEPS)
    assert rise["estimate"] == pytest.approx(0.4) and rise["se"] == pytest.approx(10 * SE_OF_0_01_STEPS)
    assert (plateau["verdict"], rise["verdict"]) == (SUPPORTED, SUPPORTED)
    assert plateau["n_seeds"] == rise["n_seeds"] == 3 and set(findings["scope"]) == {"digits"}
    assert "inside ± 0.1" in plateau["rule"] and "> 0 by more than 2 SE" in rise["rule"]


def test_curves_are_averaged_per_seed_each_against_its_own_mean_dense_error():
    """A second curve (dense 0.4 every seed) with relative changes 0.03, 0.04, 0.05: per seed means 0.02, 0.03, 0.04."""
    dense = [0.1, 0.2, 0.3]
    errors = pd.concat([curve("mlp_w8_d1", dense, plus(dense, [0.002, 0.004, 0.006]), dense),
                        curve("mlp_w16_d1", [0.4] * 3, [0.412, 0.416, 0.42], [0.4] * 3)])
    plateau = pruning_findings(errors, scope="digits").iloc[0]
    assert plateau["estimate"] == pytest.approx(0.03) and plateau["se"] == pytest.approx(SE_OF_0_01_STEPS)


def test_a_large_change_at_the_first_level_and_a_fall_at_the_sparsest_are_not_supported():
    """Relative changes 0.30, 0.31, 0.32 at level 1 (dense 0.2 every seed); the sparsest 0.05, 0.04, 0.03 below."""
    findings = pruning_findings(curve("mlp_w8_d1", [0.2] * 3, [0.26, 0.262, 0.264], [0.15, 0.16, 0.17]), "digits")
    plateau, rise = findings.to_dict("records")
    assert plateau["estimate"] == pytest.approx(0.31) and plateau["se"] == pytest.approx(SE_OF_0_01_STEPS)
    assert rise["estimate"] == pytest.approx(-0.04) and rise["se"] == pytest.approx(SE_OF_0_01_STEPS)
    assert (plateau["verdict"], rise["verdict"]) == (NOT_SUPPORTED, NOT_SUPPORTED)


def test_seeds_that_disagree_are_inconclusive():
    """Relative changes 0, 0.1, 0.2 (mean 0.1 = the margin, SE 0.1 / sqrt 3); sparsest -0.1, 0, +0.1 around dense."""
    findings = pruning_findings(curve("mlp_w8_d1", [0.2] * 3, [0.2, 0.22, 0.24], [0.1, 0.2, 0.3]), "digits")
    plateau, rise = findings.to_dict("records")
    assert plateau["estimate"] == pytest.approx(0.1) and plateau["se"] == pytest.approx(10 * SE_OF_0_01_STEPS)
    assert rise["estimate"] == pytest.approx(0.0, abs=1e-12) and rise["se"] == pytest.approx(10 * SE_OF_0_01_STEPS)
    assert (plateau["verdict"], rise["verdict"]) == (INCONCLUSIVE, INCONCLUSIVE)


def test_too_few_seeds_are_not_testable_and_say_how_to_make_it_testable():
    errors = curve("mlp_w8_d1", [0.2] * 3, [0.2] * 3, [0.5] * 3)
    findings = pruning_findings(errors[errors["seed"] == 0], "digits")
    assert list(findings["claim"]) == [LOW_ERROR_PLATEAU.claim, ERROR_RISES.claim]
    assert set(findings["verdict"]) == {INCONCLUSIVE} and findings["estimate"].isna().all()
    assert set(findings["rule"]) == {"not testable here: 1 seed, and a verdict needs a standard error over at least 3; "
                                     "run prune_grid with at least 3 seeds"}
    assert list(findings["n_seeds"]) == [1, 1]
