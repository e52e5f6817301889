"""The scaling law: its limits, and fits that recover known parameters from noisy generated tables."""
import numpy as np
import pandas as pd
import pytest

from core.scaling import error_form, fit, invariant, predict

TRUE = {"eps_up": 0.85, "p": 0.02, "gamma": 1.5}


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


def noisy_table(params, rng, networks=((1, 32), (2, 64), (3, 128)), joint=False):
    rows = []
    for depth, width in networks:
        eps_np = 0.04 + 0.02 * rng.random()
        density = 0.8 ** np.arange(0, 25)
        d = invariant(density, depth, width, params["phi"], params["psi"]) if joint else density
        error = error_form(d, np.full_like(d, eps_np), params["eps_up"], params["p"], params["gamma"])
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
