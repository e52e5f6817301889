"""The scaling_law flow's findings rules (core.methods.scaling_law_findings) on hand-made fit tables."""
import json
import math

import pandas as pd
import pytest

from core.findings import COLUMNS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from core.methods.scaling_law_findings import (EXTRAPOLATION_FIT, EXTRAPOLATION_NOISE, JOINT_FIT, JOINT_NOISE,
                                               scaling_law_findings)

CLAIMS = [JOINT_FIT.claim, JOINT_NOISE.claim, EXTRAPOLATION_FIT.claim, EXTRAPOLATION_NOISE.claim]
RISES = "errors rise with density: within curves ln error grows by 0.100 per unit of ln density"


def fits(joint: dict, extrapolation: dict | None, n_seeds: float = 3, warnings: dict | None = None) -> pd.DataFrame:
    """A scaling_fit table: `joint` and `extrapolation` give mu, sigma, n and sigma_over_spread; scope data holds
    n_seeds and 50 points; `warnings` maps a scope to its warning (a grid's warning leads every scope's)."""
    values = {"data": {"seed_spread": 0.04, "n_seeds": n_seeds, "points": 50}, "joint": joint,
              **({"extrapolation": extrapolation} if extrapolation else {})}
    warnings = warnings or {}
    return pd.DataFrame([{"scope": scope, "param": param, "value": value, "low": math.nan, "high": math.nan,
                          "warning": warnings.get(scope, "")}
                         for scope, params in values.items() for param, value in params.items()])


def fit(mu: float, sigma: float, ratio: float) -> dict:
    """A fit judged on n = 101 seed means: SE of mu = sigma / sqrt(101); with 50 points of 3 seeds, the SE of the
    ratio is ratio x sqrt(1 / 200 + 1 / 200) = ratio / 10."""
    return {"mu": mu, "sigma": sigma, "n": 101.0, "sigma_over_spread": ratio}


def test_a_fit_inside_2_percent_and_near_the_seed_noise_is_supported():
    findings = scaling_law_findings(fits(fit(0.005, 0.0402, 0.9), fit(-0.004, 0.0402, 1.2)), "mnist1d; run x")
    assert list(findings.columns) == list(COLUMNS) and list(findings["claim"]) == CLAIMS
    assert list(findings["estimate"]) == pytest.approx([0.005, 0.9, -0.004, 1.2])
    assert list(findings["se"]) == pytest.approx([0.0402 / math.sqrt(101), 0.09, 0.0402 / math.sqrt(101), 0.12])
    assert list(findings["verdict"]) == [SUPPORTED] * 4  # 0.005 + 2 x 0.004 < 0.02; 0.9 + 2 x 0.09 < 1.5
    assert list(findings["n_seeds"]) == [3] * 4 and set(findings["scope"]) == {"mnist1d; run x"}
    assert "inside ± 0.02" in findings["rule"][0] and "below 1.5 by more than 2 SE" in findings["rule"][1]


def test_a_biased_fit_far_above_the_seed_noise_is_not_supported():
    """mu 0.06 with SE 0.01 lies wholly outside ± 0.02; sigma 2.4 x the spread, SE 0.24, is 3.75 SE above 1.5."""
    findings = scaling_law_findings(fits(fit(0.06, 0.1005, 2.4), fit(-0.06, 0.1005, 2.4)), "s")
    assert list(findings["estimate"]) == pytest.approx([0.06, 2.4, -0.06, 2.4])
    assert list(findings["se"]) == pytest.approx([0.1005 / math.sqrt(101), 0.24] * 2)
    assert list(findings["verdict"]) == [NOT_SUPPORTED] * 4


def test_a_fit_at_the_margins_is_inconclusive():
    """mu 0.015 ± 2 x 0.01 straddles 0.02; sigma 1.6 x the spread ± 2 x 0.16 straddles 1.5."""
    findings = scaling_law_findings(fits(fit(0.015, 0.1005, 1.6), fit(0.015, 0.1005, 1.6)), "s")
    assert list(findings["estimate"]) == pytest.approx([0.015, 1.6] * 2)
    assert list(findings["se"]) == pytest.approx([0.1005 / math.sqrt(101), 0.16] * 2)
    assert list(findings["verdict"]) == [INCONCLUSIVE] * 4


def test_a_grid_whose_error_rises_with_density_tests_no_claim():
    findings = scaling_law_findings(fits(fit(0.0, 0.01, 0.5), fit(0.0, 0.01, 0.5), warnings={
        "data": RISES, "joint": RISES, "extrapolation": RISES}), "s")
    assert list(findings["claim"]) == CLAIMS and findings["estimate"].isna().all()
    assert set(findings["verdict"]) == {INCONCLUSIVE}
    assert set(findings["rule"]) == {f"not testable here: {RISES}; train the prune_grid networks to convergence "
                                     "(e.g. a larger train.lr or more epochs)"}


def test_an_extrapolation_that_decides_nothing_or_was_not_run_is_not_testable_but_the_joint_fit_is():
    own = "fitted on a single network (mlp_w16_d1): psi not determined"
    findings = scaling_law_findings(fits(fit(0.005, 0.0402, 0.9), fit(0.0, 0.01, 0.5), warnings={
        "extrapolation": own}), "s")
    assert list(findings["verdict"]) == [SUPPORTED, SUPPORTED, INCONCLUSIVE, INCONCLUSIVE]
    assert list(findings["rule"][2:]) == [f"not testable here: {own}; give prune_grid at least two widths and two "
                                          "depths below the largest"] * 2
    missing = scaling_law_findings(fits(fit(0.005, 0.0402, 0.9), None), "s")
    assert list(missing["claim"]) == CLAIMS and missing["rule"][3] == (
        "not testable here: no extrapolation fit in this run: run scaling_law with extrapolate=true on a prune_grid "
        "run with more than one width or depth")


@pytest.mark.parametrize("n_seeds", [1, 2])
def test_too_few_seeds_per_grid_point_are_not_testable(n_seeds):
    """One seed leaves no spread (sigma_over_spread NaN); two leave a spread too noisy to judge by."""
    ratio = math.nan if n_seeds == 1 else 0.9
    findings = scaling_law_findings(fits(fit(0.005, 0.0402, ratio), fit(0.005, 0.0402, ratio), n_seeds), "s")
    assert set(findings["rule"]) == {f"not testable here: {n_seeds} seed{'s' * (n_seeds > 1)}, and a verdict needs a "
                                     "standard error over at least 3; run prune_grid with at least 3 seeds per grid "
                                     "point"}
    assert list(findings["n_seeds"]) == [n_seeds] * 4 and findings["estimate"].isna().all()


def test_the_scope_names_the_fitted_grid_or_only_its_run_when_its_config_is_of_older_code(tmp_path):
    from flows.prune_grid import PruneGridFlowConfig
    from flows.scaling_law import prune_run_scope

    config = PruneGridFlowConfig(seeds=[0, 1, 2]).model_dump(mode="json") | {"precision": "bf16"}
    (tmp_path / "config.json").write_text(json.dumps({"flow": "prune_grid", "config": config}))
    assert prune_run_scope(tmp_path / "prune_errors.parquet", "prune_grid-abc") == (
        "mnist1d, 20 epochs, 3 seeds; prune_grid run prune_grid-abc")
    (tmp_path / "config.json").write_text(json.dumps({"flow": "prune_grid", "config": config | {"renamed": 1}}))
    assert prune_run_scope(tmp_path / "prune_errors.parquet", "prune_grid-abc") == "prune_grid run prune_grid-abc"
