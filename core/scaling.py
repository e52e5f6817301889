"""The error-vs-density law of Rosenfeld, Frankle, Carbin, Shavit (ICML 2021) and its fits.

eps_hat(d) = eps_np * | (d - j p (eps_up / eps_np)^(1/gamma)) / (d - j p) |^gamma,  j = sqrt(-1):
flat at the unpruned error eps_np for d >> p, the high-error plateau eps_up for d -> 0, and a power
law of slope gamma between. Jointly over networks, d is replaced by m* = l^phi * w^psi * d.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

SINGLE = ("eps_up", "p", "gamma")
JOINT = ("eps_up", "p", "gamma", "phi", "psi")
LOWER = {"eps_up": 1e-4, "p": 1e-7, "gamma": 0.05, "phi": -4.0, "psi": -4.0}
UPPER = {"eps_up": 1.0, "p": 10.0, "gamma": 20.0, "phi": 4.0, "psi": 4.0}


def error_form(d: np.ndarray, eps_np: np.ndarray, eps_up: float, p: float, gamma: float) -> np.ndarray:
    """eps_hat(d); the modulus of the complex ratio is sqrt((d^2 + q^2) / (d^2 + p^2)), q = p (eps_up/eps_np)^(1/gamma)."""
    q = p * (eps_up / eps_np) ** (1.0 / gamma)
    return eps_np * ((d**2 + q**2) / (d**2 + p**2)) ** (gamma / 2.0)


def invariant(density: np.ndarray, depth: np.ndarray, width: np.ndarray, phi: float, psi: float) -> np.ndarray:
    """m* = l^phi * w^psi * d."""
    return np.asarray(depth, float) ** phi * np.asarray(width, float) ** psi * np.asarray(density, float)


def predict(table: pd.DataFrame, params: dict[str, float]) -> np.ndarray:
    """eps_hat for each row (columns density, eps_np, and depth/width when the params are joint)."""
    d = table["density"].to_numpy(float)
    if "phi" in params:
        d = invariant(d, table["depth"], table["width"], params["phi"], params["psi"])
    return error_form(d, table["eps_np"].to_numpy(float), params["eps_up"], params["p"], params["gamma"])


@dataclass
class Fit:
    """Best parameters of a least-squares fit on the relative error, and its residuals."""

    params: dict[str, float]
    relative_deviation: np.ndarray  # (eps_hat - eps) / eps per row

    @property
    def mu(self) -> float:
        """Mean relative deviation."""
        return float(np.mean(self.relative_deviation))

    @property
    def sigma(self) -> float:
        """Standard deviation of the relative deviation."""
        return float(np.std(self.relative_deviation))


def _starts(table: pd.DataFrame, names: tuple[str, ...], n_starts: int, seed: int) -> list[np.ndarray]:
    """Initial points: a data-driven one, then seeded draws (log-uniform for p) inside the bounds."""
    rng = np.random.default_rng(seed)
    first = {"eps_up": min(max(table["test_error"].max(), 1.01 * LOWER["eps_up"]), UPPER["eps_up"]),
             "p": max(float(table["density"].min()) * 3, LOWER["p"] * 10), "gamma": 1.0, "phi": 0.0, "psi": 0.0}
    starts = [np.array([first[n] for n in names])]
    for _ in range(n_starts - 1):
        draw = {"eps_up": rng.uniform(table["test_error"].median(), 1.0), "p": 10 ** rng.uniform(-4, 0),
                "gamma": 10 ** rng.uniform(-0.7, 0.8), "phi": rng.uniform(-1, 1), "psi": rng.uniform(-1, 1)}
        starts.append(np.array([draw[n] for n in names]))
    return [np.clip(s, [LOWER[n] for n in names], [UPPER[n] for n in names]) for s in starts]


def fit(table: pd.DataFrame, joint: bool = False, n_starts: int = 8, seed: int = 0) -> Fit:
    """Least squares on the relative error (scipy), from several starts, with bounded parameters.

    `table` needs density, test_error, eps_np (the network's unpruned error), and for a joint fit
    depth and width.
    """
    names = JOINT if joint else SINGLE
    error = table["test_error"].to_numpy(float)
    if (error <= 0).any():
        raise ValueError("test_error must be positive for a fit on the relative error; drop rows with zero error")

    def residual(theta: np.ndarray) -> np.ndarray:
        return predict(table, dict(zip(names, theta))) / error - 1.0

    bounds = ([LOWER[n] for n in names], [UPPER[n] for n in names])
    best = min((least_squares(residual, start, bounds=bounds, method="trf") for start in _starts(table, names, n_starts, seed)),
               key=lambda result: result.cost)
    params = dict(zip(names, map(float, best.x)))
    return Fit(params, residual(best.x))


def bootstrap_intervals(table: pd.DataFrame, joint: bool, n_bootstrap: int, seed: int = 0, n_starts: int = 3,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each parameter over fits to row-resampled tables."""
    rng = np.random.default_rng(seed)
    draws = [fit(table.iloc[rng.integers(0, len(table), len(table))], joint, n_starts, seed + b).params
             for b in range(n_bootstrap)]
    tail = (1 - level) / 2 * 100
    names = JOINT if joint else SINGLE
    if not draws:
        return {n: (np.nan, np.nan) for n in names}
    return {n: tuple(np.percentile([d[n] for d in draws], [tail, 100 - tail])) for n in names}


def with_unpruned_error(errors: pd.DataFrame) -> pd.DataFrame:
    """`errors` plus `curve` (network at one data fraction) and `eps_np`: that curve's mean dense (level 0) test error."""
    table = errors.assign(curve=errors["network"] + "@" + errors["data_fraction"].map("{:g}".format))
    dense = table[table["level"] == 0].groupby("curve")["test_error"].mean().rename("eps_np")
    return table.merge(dense, on="curve", how="left")


def heldout_rows(table: pd.DataFrame) -> np.ndarray:
    """Rows of the largest width, depth or data fraction (each dimension with more than one value)."""
    held = np.zeros(len(table), bool)
    for column in ("width", "depth", "data_fraction"):
        if table[column].nunique() > 1:
            held |= (table[column] == table[column].max()).to_numpy()
    return held


def fit_rows(scope: str, result: Fit, intervals: dict[str, tuple[float, float]]) -> list[dict]:
    """Long rows (scope, param, value, low, high) of one fit, mu and sigma included (no interval)."""
    rows = [{"scope": scope, "param": name, "value": value, "low": intervals.get(name, (np.nan,))[0],
             "high": intervals.get(name, (np.nan, np.nan))[1]} for name, value in result.params.items()]
    rows += [{"scope": scope, "param": name, "value": value, "low": np.nan, "high": np.nan}
             for name, value in (("mu", result.mu), ("sigma", result.sigma), ("n", float(len(result.relative_deviation))))]
    return rows
