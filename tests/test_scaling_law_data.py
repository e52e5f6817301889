"""Dataset size in the scaling law: the dense error eps_np(m, n) modeled jointly with the pruning law, on synthetic
grids of known parameters, and the findings rows of the extrapolation to the largest data fraction."""
import math

import numpy as np
import pandas as pd
import pytest

from core.findings import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from core.methods.scaling_law import (DENSE, dense_error, error_form, fit, invariant, predict, seed_means,
                                      uses_modeled_dense_error)
from core.methods.scaling_law_warnings import extrapolation_warning, without_dip_warning
from core.methods.scaling_law_findings import (DATA_SIZE_FIT, DATA_SIZE_NOISE, EXTRAPOLATION_FIT, JOINT_FIT,
                                               scaling_law_findings)

PRUNING = {"eps_up": 0.8, "p": 0.5, "gamma": 1.2, "phi": 0.5, "psi": 0.8}
DENSE_TRUE = {"a": 0.1, "alpha": 0.5, "b": 0.3, "beta": 0.6, "c_inf": 0.05}
FRACTIONS = (0.125, 0.25, 0.5, 1.0)


def mlp_params(width: int, depth: int) -> int:
    """Parameters of an MLP on 40 inputs with 10 classes: weights and biases."""
    return 41 * width + (depth - 1) * (width + 1) * width + (width + 1) * 10


def data_grid(rng, noise: float = 0.01, widths=(16, 32, 64), depths=(1, 2, 3), fractions=FRACTIONS) -> pd.DataFrame:
    """Seed means of a grid that follows the joint law with eps_np = dense_error(n, m) (DENSE_TRUE), `noise`
    multiplicative; eps_np, as the flow has it, is each curve's (noisy) dense row."""
    rows = []
    for width in widths:
        for depth in depths:
            m = mlp_params(width, depth)
            for n in fractions:
                density = 0.8 ** np.arange(0, 20)
                eps_np = dense_error(np.array(n), np.array(m), **DENSE_TRUE)
                d = invariant(density, depth, width, PRUNING["phi"], PRUNING["psi"])
                error = error_form(d, np.full(len(d), eps_np), PRUNING["eps_up"], PRUNING["p"], PRUNING["gamma"])
                error = error * (1 + rng.normal(scale=noise, size=len(d)))
                rows.append(pd.DataFrame({"network": f"mlp_w{width}_d{depth}", "width": width, "depth": depth,
                                          "data_fraction": n, "density": density, "dense_params": float(m),
                                          "test_error": error, "eps_np": error[0]}))
    return pd.concat(rows, ignore_index=True)


def test_dense_error_by_hand():
    # n = 1/4, m = 4,000 parameters: 0.1 * 4^0.5 + 0.3 * 4^-0.5 + 0.05 = 0.2 + 0.15 + 0.05
    value = dense_error(np.array(0.25), np.array(4000.0), a=0.1, alpha=0.5, b=0.3, beta=0.5, c_inf=0.05)
    assert value == pytest.approx(0.4)
    # the modeled eps_np replaces the measured one in `predict`: at density 1e6 T = 1, so eps_hat = eps_np(m, n)
    table = pd.DataFrame({"density": [1e6], "eps_np": [0.9], "depth": [1.0], "width": [1.0], "data_fraction": [0.25],
                          "dense_params": [4000.0]})
    params = {**PRUNING, "a": 0.1, "alpha": 0.5, "b": 0.3, "beta": 0.5, "c_inf": 0.05}
    assert predict(table, params)[0] == pytest.approx(0.4, rel=1e-6)


def test_the_joint_fit_with_a_modeled_dense_error_recovers_known_parameters():
    table = data_grid(np.random.default_rng(0))
    result = fit(table, joint=True, n_starts=8, modeled=True)
    for name, value in (PRUNING | DENSE_TRUE).items():
        assert result.params[name] == pytest.approx(value, rel=0.15, abs=0.03), name
    assert abs(result.mu) < 0.005 and result.sigma < 0.015  # the 1% noise, nothing more


def test_fitted_without_the_largest_fraction_it_predicts_the_full_data_networks():
    """Extrapolation in n: the law never sees a full-data network, its dense error included."""
    table = data_grid(np.random.default_rng(1))
    held = (table["data_fraction"] == 1.0).to_numpy()
    small = fit(table[~held], joint=True, n_starts=8, modeled=True)
    deviation = predict(table[held], small.params) / table.loc[held, "test_error"] - 1
    assert abs(deviation.mean()) < 0.01 and deviation.std() < 0.02
    # what the law predicts there is the truth, not the noisy measured dense rows: within 2% of eps_np(m, 1)
    truth = dense_error(np.ones(held.sum()), table.loc[held, "dense_params"], **DENSE_TRUE)
    modeled = dense_error(np.ones(held.sum()), table.loc[held, "dense_params"], **{n: small.params[n] for n in DENSE})
    np.testing.assert_allclose(modeled, truth, rtol=0.02)


def test_on_an_exact_law_both_treatments_extrapolate_and_n_enters_through_the_data_term():
    """Where n enters only through eps_np, each curve's measured eps_np extrapolates as well (it is given the held-out
    dense rows); the modeled one carries n through a n^-alpha alone: without it (a = 0) the full-data networks are
    predicted below their error, by 0.1 / eps_np at the dense end (21-46% here), less where pruning dominates."""
    table = data_grid(np.random.default_rng(2))
    held = (table["data_fraction"] == 1.0).to_numpy()
    small = fit(table[~held], joint=True, n_starts=8, modeled=True)
    off = predict(table[held], {**small.params, "a": 0.0}) / table.loc[held, "test_error"] - 1
    assert off.mean() < -0.05 and (off < 0.03).all()
    measured = fit(table[~held], joint=True, n_starts=8)
    deviation = predict(table[held], measured.params) / table.loc[held, "test_error"] - 1
    assert abs(deviation.mean()) < 0.01 and deviation.std() < 0.02


def test_seed_means_carry_each_networks_dense_parameter_count():
    errors = pd.DataFrame({"network": ["a", "a", "a", "a", "b", "b"], "width": [4, 4, 4, 4, 8, 8],
                           "depth": 1, "data_fraction": [0.5, 0.5, 1.0, 1.0, 1.0, 1.0], "seed": 0,
                           "level": [0, 1, 0, 1, 0, 1], "density": [1, 0.8, 1, 0.8, 1, 0.8],
                           "test_error": 0.2, "params_remaining": [100, 80, 100, 80, 300, 240]})
    means = seed_means(errors)
    assert list(means["dense_params"]) == [100.0, 100.0, 100.0, 100.0, 300.0, 300.0]  # level 0's, on every level


def test_which_grids_model_the_dense_error():
    two = pd.DataFrame({"data_fraction": [0.5, 1.0]})
    one = pd.DataFrame({"data_fraction": [1.0, 1.0]})
    assert uses_modeled_dense_error("auto", two) and not uses_modeled_dense_error("auto", one)
    assert uses_modeled_dense_error("modeled", one) and not uses_modeled_dense_error("measured", two)


def test_a_modeled_dense_error_is_only_joint_and_needs_parameter_counts():
    table = data_grid(np.random.default_rng(3), widths=(16,), depths=(1,), fractions=(1.0,))
    with pytest.raises(ValueError, match="only in joint fits"):
        fit(table, modeled=True)
    with pytest.raises(ValueError, match="dense_params > 0"):
        fit(table.assign(dense_params=0.0), joint=True, modeled=True)


def test_an_extrapolation_in_n_from_one_data_fraction_decides_nothing_when_modeled():
    table = data_grid(np.random.default_rng(4), fractions=(0.5, 1.0))
    held = table["data_fraction"] == 1.0
    assert extrapolation_warning(table[~held], table[held]) is None  # measured eps_np: the data term is not fitted
    assert extrapolation_warning(table[~held], table[held], modeled=True) == (
        "fitted on one data_fraction (0.5): alpha not determined, so its predictions at data_fraction 1 are arbitrary")


def fits_table(data_fraction: dict | None, n_seeds: float = 4, warning: str = "") -> pd.DataFrame:
    """A scaling_fit table: joint and extrapolation as in test_findings_scaling_law, 50 spread points, and the
    extrapolation to the largest data fraction when `data_fraction` gives its mu, sigma, n and sigma_over_spread."""
    good = {"mu": 0.005, "sigma": 0.0402, "n": 101.0, "sigma_over_spread": 0.9}
    values = {"data": {"seed_spread": 0.04, "n_seeds": n_seeds, "points": 50}, "joint": good, "extrapolation": good,
              **({"extrapolation_data_fraction": data_fraction} if data_fraction else {})}
    return pd.DataFrame([{"scope": scope, "param": param, "value": value, "low": math.nan, "high": math.nan,
                          "warning": warning if scope == "extrapolation_data_fraction" else ""}
                         for scope, params in values.items() for param, value in params.items()])


def test_the_data_size_rows_follow_the_extrapolation_to_the_largest_fraction():
    """mu 0.078, sigma 0.1005 over n = 101: SE 0.0100, wholly outside +-0.02; ratio 2.4 with n = 101 and 50 points of 4
    seeds: SE = 2.4 x sqrt(1/200 + 1/300) = 0.2191, 4.1 SE above 1.5."""
    findings = scaling_law_findings(fits_table({"mu": 0.078, "sigma": 0.1005, "n": 101.0, "sigma_over_spread": 2.4}),
                                    "grid")
    assert findings["claim"][0] == JOINT_FIT.claim and len(findings) == 6
    assert list(findings["claim"][4:]) == [DATA_SIZE_FIT.claim, DATA_SIZE_NOISE.claim]
    data = findings.iloc[4:]
    assert list(data["estimate"]) == pytest.approx([0.078, 2.4])
    assert list(data["se"]) == pytest.approx([0.1005 / math.sqrt(101), 2.4 * math.sqrt(1 / 200 + 1 / 300)])
    assert list(data["verdict"]) == [NOT_SUPPORTED, NOT_SUPPORTED] and list(data["n_seeds"]) == [4, 4]
    within = scaling_law_findings(fits_table({"mu": -0.004, "sigma": 0.0402, "n": 101.0, "sigma_over_spread": 1.0}),
                                  "grid")
    assert list(within["verdict"][4:]) == [SUPPORTED, SUPPORTED]  # -0.004 +- 0.008 inside 0.02; 1.0 + 2 x 0.09 < 1.5


def test_no_data_size_rows_on_a_grid_of_one_fraction_and_none_testable_when_the_fit_decides_nothing():
    findings = scaling_law_findings(fits_table(None), "grid")
    assert list(findings["claim"])[2] == EXTRAPOLATION_FIT.claim and len(findings) == 4
    own = "fitted on one data_fraction (0.5): alpha not determined"
    flagged = scaling_law_findings(fits_table({"mu": 0.0, "sigma": 0.01, "n": 101.0, "sigma_over_spread": 0.5},
                                              warning=own), "grid")
    assert list(flagged["verdict"][4:]) == [INCONCLUSIVE] * 2 and flagged["estimate"][4:].isna().all()
    assert set(flagged["rule"][4:]) == {f"not testable here: {own}; give prune_grid at least two data fractions "
                                        "below the largest"}
    few = scaling_law_findings(fits_table({"mu": 0.0, "sigma": 0.01, "n": 101.0, "sigma_over_spread": 0.5}, 2), "g")
    assert set(few["verdict"][4:]) == {INCONCLUSIVE} and few["estimate"][4:].isna().all()


def test_the_fit_outside_the_dip_needs_more_rows_than_the_modeled_law_has_parameters():
    """8 pruned rows outside the dip: more than the 5 constants of the paper's joint law, not the 10 with eps_np(m, n)."""
    table = pd.DataFrame({"density": [1.0] + [0.5] * 8, "dip": False})
    assert without_dip_warning(table) is None
    assert without_dip_warning(table, modeled=True) == (
        "joint_without_dip left out: only 8 pruned rows lie outside the dip (at or above their dense network's error), "
        "no more than the 10 parameters of the joint law, and a fit on them and the dense rows would match them "
        "whatever the law")
