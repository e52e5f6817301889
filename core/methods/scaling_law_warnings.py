"""When a scaling-law fit is no result: errors that rise with density (the law has them fall towards the dense
end), extrapolations that cannot determine an exponent, and a fit outside the dip with nothing left to judge."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.methods.scaling_law import parameter_names


@dataclass
class DensityTrend:
    """How the seed-mean error moves with density within curves: the law has it fall towards the dense end."""

    slope: float  # least-squares d ln(error) / d ln(density), one intercept per curve
    se: float  # its standard error from the seed spread, or from the residuals when the spread is unknown
    from_spread: bool

    @property
    def rises(self) -> bool:
        """Denser networks are worse beyond the noise: the slope is more than 2 standard errors above 0."""
        return bool(self.slope > 2 * self.se)


def density_trend(table: pd.DataFrame, spread: float) -> DensityTrend:
    """The within-curve slope of ln(test_error) on ln(density) over the seed means of `table`, and its standard error.

    A seed mean's ln error has variance spread^2 / n_seeds. Seeds are taken as independent from level to level, which
    overstates the noise of a slope when a seed's deviation persists along its curve (a conservative test). Without a
    spread (one seed per point), the residual variance about the slope stands in for it.
    """
    x, y = np.log(table["density"].to_numpy(float)), np.log(table["test_error"].to_numpy(float))
    curve = table["curve"].to_numpy()
    x_centred = x - pd.Series(x).groupby(curve).transform("mean").to_numpy()
    y_centred = y - pd.Series(y).groupby(curve).transform("mean").to_numpy()
    sxx = float(np.sum(x_centred**2))
    if sxx == 0:  # every curve a single density
        return DensityTrend(np.nan, np.nan, bool(np.isfinite(spread)))
    slope = float(np.sum(x_centred * y_centred) / sxx)
    if np.isfinite(spread):
        variance = spread**2 / table["n_seeds"].to_numpy(float)
        return DensityTrend(slope, float(np.sqrt(np.sum(x_centred**2 * variance)) / sxx), True)
    dof = len(table) - len(set(curve)) - 1
    residual = y_centred - slope * x_centred
    se = float(np.sqrt(np.sum(residual**2) / dof / sxx)) if dof > 0 else np.nan
    return DensityTrend(slope, se, False)


def trend_rows(trend: DensityTrend) -> list[dict]:
    """Long rows of scope "data": density_slope and density_slope_se (see `density_trend`)."""
    return [{"scope": "data", "param": name, "value": value, "low": np.nan, "high": np.nan, "warning": ""}
            for name, value in (("density_slope", trend.slope), ("density_slope_se", trend.se))]


def trend_warning(trend: DensityTrend) -> str | None:
    """The warning every fit of a grid whose error rises with density carries; None when it does not rise."""
    if not trend.rises:
        return None
    noise = "the seed spread" if trend.from_spread else "the residuals (one seed per point)"
    return (f"errors rise with density: within curves ln error grows by {trend.slope:.3f} per unit of ln density, "
            f"{trend.slope / trend.se:.1f} standard errors of {noise} above 0, where the law has error fall towards "
            "the dense end, so no fit of this grid tests the law")


def extrapolation_warning(fitted: pd.DataFrame, held: pd.DataFrame, modeled: bool = False) -> str | None:
    """Why an extrapolation fitted on the rows `fitted` says little on the rows `held`, or None.

    An exponent of m* (phi for depth, psi for width) is not determined where the fitted rows hold one value of its
    dimension: its factor is a constant that p absorbs, so the prediction at another value is arbitrary. So is the
    exponent of a `modeled` dense error's data term (alpha) where the fitted rows hold one data fraction.
    """
    exponents = (("phi", "depth"), ("psi", "width")) + ((("alpha", "data_fraction"),) if modeled else ())
    free = [(exponent, column) for exponent, column in exponents
            if fitted[column].nunique() == 1 and (held[column] != fitted[column].iloc[0]).any()]
    networks = fitted["network"].unique() if "network" in fitted else ()
    source = f"a single network ({networks[0]})" if len(networks) == 1 else None
    if free:
        source = source or " and ".join(f"one {column} ({fitted[column].iloc[0]:g})" for _, column in free)
        unknown = " and ".join(exponent for exponent, _ in free)
        reach = ", ".join(f"{column} {value:g}" for _, column in free
                          for value in sorted(set(held[column]) - {fitted[column].iloc[0]}))
        return f"fitted on {source}: {unknown} not determined, so its predictions at {reach} are arbitrary"
    if source:
        return (f"fitted on {source}: the held-out rows share its width and depth, so it tests one curve's shape "
                "at another data fraction, not the law across networks")
    return None


def without_dip_warning(table: pd.DataFrame, modeled: bool = False) -> str | None:
    """Why the paper's joint form (with a `modeled` dense error or not) cannot be judged outside the dip of `table`
    (column `dip`), or None: no more pruned rows lie outside it than the joint law has parameters, and a fit matches
    that few whatever the law."""
    outside = int(((table["density"] < 1) & ~table["dip"]).sum())
    size = len(parameter_names(True, modeled=modeled))
    if outside > size:
        return None
    return (f"joint_without_dip left out: only {outside} pruned rows lie outside the dip (at or above their dense "
            f"network's error), no more than the {size} parameters of the joint law, and a fit on them and the "
            "dense rows would match them whatever the law")
