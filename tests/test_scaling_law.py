"""The scaling law and its dip form: limits, seed means and spread, and fits that recover known parameters."""
import numpy as np
import pandas as pd
import pytest

from core.methods.scaling_law import (DIP, SINGLE, Fit, dip_error_form, dip_rows, dip_step, error_form, fit, fit_rows,
                                      invariant, predict, seed_means, seed_spread, spread_rows, transition)

TRUE = {"eps_up": 0.85, "p": 0.02, "gamma": 1.5}
DIP_TRUE = {"eps_up": 0.8, "p": 0.01, "gamma": 1.5, "phi": 0.5, "psi": 0.8, "delta": 0.8, "s_over_p": 100.0, "kappa": 3.0}


def test_limits_of_the_form():
    eps_np = np.array(0.05)
    assert error_form(np.array(1e6), eps_np, **TRUE) == pytest.approx(0.05, rel=1e-6)  # flat for d >> p
    assert error_form(np.array(1e-9), eps_np, **TRUE) == pytest.approx(0.85, rel=1e-6)  # plateau for d -> 0
    # power law between: at d = sqrt(p q) the log-log slope is -gamma (q - p) / (q + p), -> -gamma for q >> p
    tiny = np.array(1e-4)  # eps_up / eps_np = 8500, so q / p = 8500^(1/gamma) = 417
    q = TRUE["p"] * (0.85 / 1e-4) ** (1 / TRUE["gamma"])
    d = np.sqrt(TRUE["p"] * q) * np.array([0.99, 1.01])
    slope = np.diff(np.log(error_form(d, tiny, **TRUE))) / np.diff(np.log(d))
    assert slope[0] == pytest.approx(-TRUE["gamma"] * (q - TRUE["p"]) / (q + TRUE["p"]), rel=1e-3)
    assert slope[0] == pytest.approx(-TRUE["gamma"], rel=0.01)


def test_modulus_equals_the_complex_ratio():
    d, eps_np = np.array([0.5, 0.01]), np.array([0.1, 0.1])
    q = TRUE["p"] * (TRUE["eps_up"] / 0.1) ** (1 / TRUE["gamma"])
    expected = 0.1 * np.abs((d - 1j * q) / (d - 1j * TRUE["p"])) ** TRUE["gamma"]
    np.testing.assert_allclose(error_form(d, eps_np, **TRUE), expected)


def noisy_table(params, rng, networks=((1, 32), (2, 64), (3, 128)), joint=False, levels=25):
    """The law (the dip form when params has delta) at 1% multiplicative noise."""
    form, shape = (dip_error_form, SINGLE + DIP) if "delta" in params else (error_form, SINGLE)
    rows = []
    for depth, width in networks:
        eps_np = 0.04 + 0.02 * rng.random()
        density = 0.8 ** np.arange(0, levels)
        d = invariant(density, depth, width, params["phi"], params["psi"]) if joint else density
        error = form(d, np.full_like(d, eps_np), **{name: params[name] for name in shape})
        rows.append(pd.DataFrame({"depth": depth, "width": width, "density": density, "eps_np": eps_np,
                                  "test_error": error * (1 + rng.normal(scale=0.01, size=len(d)))}))
    return pd.concat(rows, ignore_index=True)


def test_single_network_fit_recovers_known_parameters():
    table = noisy_table({**TRUE, "phi": 0, "psi": 0}, np.random.default_rng(0), networks=((1, 32),))
    result = fit(table)
    assert result.params["eps_up"] == pytest.approx(0.85, rel=0.05)
    assert result.params["p"] == pytest.approx(0.02, rel=0.15)
    assert result.params["gamma"] == pytest.approx(1.5, rel=0.1)
    assert abs(result.mu) < 0.01 and result.sigma < 0.02  # the 1% noise, nothing more


def test_joint_fit_recovers_the_invariant():
    true = {"eps_up": 0.8, "p": 0.5, "gamma": 1.2, "phi": 0.5, "psi": 0.8}
    table = noisy_table(true, np.random.default_rng(1), joint=True)
    result = fit(table, joint=True, n_starts=12)
    for name, value in true.items():
        assert result.params[name] == pytest.approx(value, rel=0.15, abs=0.05), name
    np.testing.assert_allclose(predict(table, result.params), table["test_error"], rtol=0.05)


def test_zero_error_cannot_be_fitted_relatively():
    table = pd.DataFrame({"density": [1.0, 0.5], "eps_np": [0.1, 0.1], "test_error": [0.1, 0.0]})
    with pytest.raises(ValueError, match="test_error must be positive"):
        fit(table)


def test_dip_form_is_the_paper_form_at_delta_one():
    d, eps_np = np.logspace(-5, 1, 50), np.full(50, 0.05)
    np.testing.assert_allclose(dip_error_form(d, eps_np, **TRUE, delta=1.0, s_over_p=50.0, kappa=3.0),
                               error_form(d, eps_np, **TRUE), rtol=1e-12)


def test_limits_of_the_dip_form():
    # p = 1e-8, s = 1: T's zero is at q = p (0.85 / (0.05 * 0.8))^(1/1.5) = 7.7e-8, so 1e-4 lies on the plateau
    shape = {"eps_up": 0.85, "p": 1e-8, "gamma": 1.5, "delta": 0.8, "s_over_p": 1e8, "kappa": 2.0}
    eps = dip_error_form(np.array([1e6, 1e-4, 1e-14]), np.full(3, 0.05), **shape)
    np.testing.assert_allclose(eps, [0.05, 0.8 * 0.05, 0.85], rtol=1e-5)  # eps_np, delta eps_np, eps_up


def test_the_dip_step_is_the_shallow_limit_of_the_papers_transition():
    # for |ln delta| << kappa the paper's T(d; s, delta, kappa) loses kappa: it tends to D(d; s, delta, 2)
    d = np.logspace(-2, 2, 41)
    for kappa in (10.0, 20.0):
        np.testing.assert_allclose(transition(d, 1.0, 0.97, kappa), dip_step(d, 1.0, 0.97, 2.0), rtol=1e-3)
    assert dip_step(np.array([1e-6, 1.0, 1e6]), 1.0, 0.8, 3.0) == pytest.approx([0.8, np.sqrt(0.8), 1.0], rel=1e-6)


def test_dip_fit_recovers_known_parameters_where_the_papers_form_cannot():
    table = noisy_table(DIP_TRUE, np.random.default_rng(2), joint=True, levels=40)
    assert (table["test_error"] / table["eps_np"]).min() < 0.9  # the generated curves dip below their dense error
    dip = fit(table, joint=True, dip=True)
    for name, value in DIP_TRUE.items():
        assert dip.params[name] == pytest.approx(value, rel=0.15, abs=0.05), name
    assert abs(dip.mu) < 0.005 and dip.sigma < 0.012  # the 1% noise, nothing more
    paper = fit(table, joint=True)
    assert paper.sigma > 4 * dip.sigma  # the monotone form cannot follow the dip


def hand_table():
    """Two networks at one data fraction; by hand: mlp_a has 3 seeds dense (0.10, 0.12, 0.14) and 2 at level 1
    (0.09, 0.11); mlp_b has one seed (0.20 dense, 0.30 at level 1)."""
    rows = [("mlp_a", 8, 1, seed, 0, 1.0, error) for seed, error in enumerate((0.10, 0.12, 0.14))]
    rows += [("mlp_a", 8, 1, seed, 1, 0.5, error) for seed, error in enumerate((0.09, 0.11))]
    rows += [("mlp_b", 16, 2, 0, 0, 1.0, 0.20), ("mlp_b", 16, 2, 0, 1, 0.25, 0.30)]
    columns = ["network", "width", "depth", "seed", "level", "density", "test_error"]
    return pd.DataFrame(rows, columns=columns).assign(data_fraction=0.5)


def test_seed_means_and_spread_by_hand():
    means = seed_means(hand_table()).sort_values(["network", "level"]).reset_index(drop=True)
    assert list(means["curve"]) == ["mlp_a@0.5"] * 2 + ["mlp_b@0.5"] * 2
    np.testing.assert_allclose(means["test_error"], [0.12, 0.10, 0.20, 0.30])
    np.testing.assert_allclose(means["eps_np"], [0.12, 0.12, 0.20, 0.20])
    np.testing.assert_allclose(means["density"], [1.0, 0.5, 1.0, 0.25])
    assert list(means["n_seeds"]) == [3, 2, 1, 1] and list(means["width"]) == [8, 8, 16, 16]
    # sample std (ddof=1): sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02 and sqrt((0.01^2 + 0.01^2) / 1) = 0.01 sqrt(2)
    np.testing.assert_allclose(means["relative_std"], [0.02 / 0.12, 0.01 * np.sqrt(2) / 0.10, np.nan, np.nan])
    expected = np.sqrt(((0.02 / 0.12) ** 2 + (0.01 * np.sqrt(2) / 0.10) ** 2) / 2)  # 0.1546: rms of the two points
    assert seed_spread(means) == pytest.approx(expected)
    data = {row["param"]: row["value"] for row in spread_rows(means)}
    assert data == pytest.approx({"seed_spread": expected, "n_seeds": 7 / 4, "points": 2})
    assert np.isnan(seed_spread(seed_means(hand_table().query("seed == 0"))))  # one seed everywhere: no spread


def test_dip_flags_pruned_rows_below_the_dense_error():
    table = pd.DataFrame({"density": [1.0, 0.8, 0.5, 0.3, 0.1, 1.0, 0.5],
                          "eps_np": [0.10] * 5 + [0.20] * 2,
                          "test_error": [0.10, 0.09, 0.10, 0.095, 0.30, 0.20, 0.21]})
    # dense never; at 0.5 equal to eps_np is not below it
    assert list(dip_rows(table)) == [False, True, False, True, False, False, False]
    assert not dip_rows(table.assign(test_error=table["eps_np"] * 0.5, density=1.0)).any()


def test_fit_rows_set_sigma_beside_the_spread():
    result = Fit({"eps_up": 0.5, "p": 0.1, "gamma": 1.0}, np.array([0.01, -0.01, 0.03, -0.03]))  # sigma sqrt(5e-4)
    rows = {row["param"]: row["value"] for row in fit_rows("joint", result, {}, spread=0.02)}
    assert rows["sigma_over_spread"] == pytest.approx(np.sqrt(5e-4) / 0.02) and rows["n"] == 4
    for spread in (np.nan, 0.0):
        assert np.isnan({row["param"]: row["value"] for row in fit_rows("joint", result, {}, spread)}["sigma_over_spread"])
