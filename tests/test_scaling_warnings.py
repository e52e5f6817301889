"""When a scaling-law fit is no result: errors that rise with density, extrapolations that cannot determine an
exponent, and a fit outside the dip with nothing left to judge."""
import numpy as np
import pandas as pd
import pytest

from core.methods.scaling_law_warnings import (DensityTrend, density_trend, extrapolation_warning, trend_rows,
                                               trend_warning, without_dip_warning)

LN2 = np.log(2)


def two_curves(slope: float, n_seeds: int = 4, wobble: float = 0.0) -> pd.DataFrame:
    """Curves a and b at densities 1, 1/2, 1/4: ln error = own intercept + slope ln density (+ wobble on b's middle)."""
    density = np.array([1.0, 0.5, 0.25] * 2)
    intercept = np.repeat([np.log(0.1), np.log(0.3)], 3)
    ln_error = intercept + slope * np.log(density) + np.array([0, 0, 0, 0, wobble, 0])
    return pd.DataFrame({"curve": np.repeat(["a@1", "b@1"], 3), "density": density, "test_error": np.exp(ln_error),
                         "n_seeds": n_seeds})


def test_slope_and_its_noise_by_hand():
    # centred ln densities per curve: ln 2, 0, -ln 2, so Sxx = 4 ln^2 2. With spread 0.1 and 4 seeds each ln mean has
    # variance 0.0025: SE = sqrt(4 ln^2 2 * 0.0025) / (4 ln^2 2) = 0.025 / ln 2 = 0.0361
    trend = density_trend(two_curves(0.5), spread=0.1)
    assert trend.slope == pytest.approx(0.5) and trend.se == pytest.approx(0.025 / LN2) and trend.from_spread
    assert trend.rises  # 13.9 standard errors
    assert not density_trend(two_curves(-0.5), 0.1).rises  # the law's direction: sparser is worse
    assert not density_trend(two_curves(0.07), 0.1).rises and density_trend(two_curves(0.073), 0.1).rises  # 2 SE
    assert trend_warning(trend) == (
        "errors rise with density: within curves ln error grows by 0.500 per unit of ln density, 13.9 standard errors "
        "of the seed spread above 0, where the law has error fall towards the dense end, so no fit of this grid tests "
        "the law")
    assert trend_warning(density_trend(two_curves(-0.5), 0.1)) is None
    assert [(r["param"], r["value"]) for r in trend_rows(trend)] == [("density_slope", pytest.approx(0.5)),
                                                                     ("density_slope_se", pytest.approx(0.025 / LN2))]


def test_without_a_spread_the_residuals_give_the_noise_as_ordinary_least_squares_does():
    table = two_curves(0.3, n_seeds=1, wobble=0.05)
    trend = density_trend(table, spread=np.nan)
    # independently: least squares with one intercept per curve, SE^2 = RSS / (N - 3) * (X'X)^-1 of the slope
    x = np.c_[np.log(table["density"]), table["curve"] == "a@1", table["curve"] == "b@1"].astype(float)
    y = np.log(table["test_error"].to_numpy())
    beta, rss, *_ = np.linalg.lstsq(x, y, rcond=None)
    se = np.sqrt(rss[0] / (len(y) - 3) * np.linalg.inv(x.T @ x)[0, 0])
    assert trend.slope == pytest.approx(beta[0]) and trend.se == pytest.approx(se) and not trend.from_spread
    assert "standard errors of the residuals (one seed per point) above 0" in trend_warning(trend)
    flat = density_trend(two_curves(0.3).assign(density=1.0), 0.1)  # one density per curve: no slope to speak of
    assert np.isnan(flat.slope) and not flat.rises and trend_warning(flat) is None
    assert not DensityTrend(0.3, np.nan, False).rises  # residuals of a perfect line: unknown noise, no claim


def grid(widths, depths, fractions=(1.0,)) -> pd.DataFrame:
    """One row per network (mlp_w<width>_d<depth>) and data fraction."""
    return pd.DataFrame([{"network": f"mlp_w{w}_d{d}", "width": w, "depth": d, "data_fraction": f}
                         for w in widths for d in depths for f in fractions])


def split(table: pd.DataFrame, held: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    return table[~held], table[held]


def test_an_extrapolation_from_one_network_or_one_width_is_said_to_be_arbitrary():
    two = grid([16, 32], [2])
    assert extrapolation_warning(*split(two, two["width"] == 32)) == (
        "fitted on a single network (mlp_w16_d2): psi not determined, so its predictions at width 32 are arbitrary")
    square = grid([16, 32], [1, 2])
    largest = (square["width"] == 32) | (square["depth"] == 2)
    assert extrapolation_warning(*split(square, largest)) == (
        "fitted on a single network (mlp_w16_d1): phi and psi not determined, so its predictions at depth 2, width 32 "
        "are arbitrary")
    assert extrapolation_warning(*split(square, square["width"] == 32)) == (
        "fitted on one width (16): psi not determined, so its predictions at width 32 are arbitrary")
    assert extrapolation_warning(*split(square, square["depth"] == 2)) == (
        "fitted on one depth (1): phi not determined, so its predictions at depth 2 are arbitrary")
    more_data = grid([16], [2], fractions=(0.5, 1.0))
    assert extrapolation_warning(*split(more_data, more_data["data_fraction"] == 1.0)) == (
        "fitted on a single network (mlp_w16_d2): the held-out rows share its width and depth, so it tests one "
        "curve's shape at another data fraction, not the law across networks")
    wide = grid([16, 32, 64], [1, 2, 3])
    assert extrapolation_warning(*split(wide, (wide["width"] == 64) | (wide["depth"] == 3))) is None
    assert extrapolation_warning(*split(wide, wide["width"] == 64)) is None


def test_the_fit_outside_the_dip_needs_more_pruned_rows_than_parameters():
    # 2 dense rows, 8 pruned: k of them outside the dip
    def table(k):
        return pd.DataFrame({"density": [1.0] * 2 + [0.5] * 8, "dip": [False] * 2 + [True] * (8 - k) + [False] * k})
    assert without_dip_warning(table(6)) is None
    assert without_dip_warning(table(5)) == (
        "joint_without_dip left out: only 5 pruned rows lie outside the dip (at or above their dense network's "
        "error), no more than the 5 parameters of the joint law, and a fit on them and the dense rows would match them "
        "whatever the law")
    assert without_dip_warning(table(0)).startswith("joint_without_dip left out: only 0 pruned rows")
