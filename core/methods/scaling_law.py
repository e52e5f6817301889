"""The error-vs-density law of Rosenfeld, Frankle, Carbin, Shavit (ICML 2021) and its fits.

eps_hat(d) = eps_np * T(d; p, eps_up / eps_np, gamma), with the transition
T(d; p, r, gamma) = | (d - j p r^(1/gamma)) / (d - j p) |^gamma,  j = sqrt(-1):
flat at the unpruned error eps_np for d >> p, the high-error plateau eps_up for d -> 0, and a power
law of slope gamma between. Jointly over networks, d is replaced by m* = l^phi * w^psi * d.

The dip form, an option beside the paper's form, follows the lottery-ticket dip: pruned networks that
beat the dense one at moderate density. It multiplies in a step of the log error from 0 (d >> s) down to
ln delta (d << s), a logistic in ln d at the dip's edge s = p * s_over_p, of depth delta <= 1 and steepness kappa:
  eps_hat(d) = eps_np * D(d; s, delta, kappa) * T(d; p, eps_up / (eps_np delta), gamma),
  D(d; s, delta, kappa) = delta ** expit(kappa ln(s / d)).
Limits: eps_np for d -> inf; delta * eps_np on the plateau p << d << s; eps_up for d -> 0 (D -> delta cancels
the 1/delta in T's ratio). With delta = 1, D = 1 and the form is exactly the paper's. Why not a second T
for the dip: for a shallow dip (|ln delta| << kappa), T(d; s, delta, kappa) -> exp(ln delta / (1 + (d/s)^2))
whatever kappa, so its sharpness cannot be fitted; D is that limit at kappa = 2 with kappa left free.
The edge is fitted as the ratio s_over_p >= 1, so that box bounds keep the dip at larger density than
the paper's transition.

Dataset size n enters the paper's joint law only through the unpruned error eps_np(l, w, n). Its fits take eps_np as
measured, one value per curve (`measured`, the treatment here until now). With eps_np `modeled`, the dense error is the
law of Rosenfeld et al. (ICLR 2020), eps_np(m, n) = a n^-alpha + b m^-beta + c_inf (without its envelope), m the dense
network's parameters (in thousands), n the data fraction; its five constants are fitted jointly with the five of the
pruning law over every (density, depth, width, n), so that the law predicts a network at a data size (or width, or
depth) it was never fitted on, its dense error included.

Fits run on seed means: one row per (network, data fraction, level), see `seed_means`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from scipy.special import expit

SINGLE = ("eps_up", "p", "gamma")
JOINT = SINGLE + ("phi", "psi")
DIP = ("delta", "s_over_p", "kappa")
DENSE = ("a", "alpha", "b", "beta", "c_inf")
LOWER = {"eps_up": 1e-4, "p": 1e-7, "gamma": 0.05, "phi": -4.0, "psi": -4.0, "delta": 0.05, "s_over_p": 1.0,
         "kappa": 0.2, "a": 0.0, "alpha": 0.01, "b": 0.0, "beta": 0.01, "c_inf": 0.0}
UPPER = {"eps_up": 1.0, "p": 10.0, "gamma": 20.0, "phi": 4.0, "psi": 4.0, "delta": 1.0, "s_over_p": 1e4,
         "kappa": 20.0, "a": 5.0, "alpha": 3.0, "b": 5.0, "beta": 3.0, "c_inf": 1.0}
GRID_POINT = ["network", "data_fraction", "level"]
PARAMS_UNIT = 1000.0  # the dense error's m is counted in thousands of parameters


def parameter_names(joint: bool, dip: bool = False, modeled: bool = False) -> tuple[str, ...]:
    """The fitted parameters of the paper's form (or the dip form), per curve or joint, with the dense error's when
    it is `modeled` (joint fits only)."""
    return (JOINT if joint else SINGLE) + (DENSE if modeled else ()) + (DIP if dip else ())


def dense_error(data_fraction: np.ndarray, dense_params: np.ndarray, a: float, alpha: float, b: float, beta: float,
                c_inf: float) -> np.ndarray:
    """eps_np(m, n) = a n^-alpha + b m^-beta + c_inf: n the data fraction, m the dense parameters / PARAMS_UNIT."""
    m = np.asarray(dense_params, float) / PARAMS_UNIT
    return a * np.asarray(data_fraction, float) ** -alpha + b * m ** -beta + c_inf


def transition(d: np.ndarray, scale: float, ratio: float | np.ndarray, sharpness: float) -> np.ndarray:
    """T(d; p, r, gamma): r for d -> 0, 1 for d -> inf; ((d^2 + q^2) / (d^2 + p^2))^(gamma/2), q = p r^(1/gamma)."""
    q = scale * ratio ** (1.0 / sharpness)
    return ((d**2 + q**2) / (d**2 + scale**2)) ** (sharpness / 2.0)


def error_form(d: np.ndarray, eps_np: np.ndarray, eps_up: float, p: float, gamma: float) -> np.ndarray:
    """eps_hat(d) = eps_np T(d; p, eps_up / eps_np, gamma), the paper's form."""
    return eps_np * transition(d, p, eps_up / eps_np, gamma)


def dip_step(d: np.ndarray, s: float, delta: float, kappa: float) -> np.ndarray:
    """D(d; s, delta, kappa) = delta^expit(kappa ln(s / d)): delta for d << s, 1 for d >> s."""
    return delta ** expit(kappa * np.log(s / d))


def dip_error_form(d: np.ndarray, eps_np: np.ndarray, eps_up: float, p: float, gamma: float, delta: float,
                   s_over_p: float, kappa: float) -> np.ndarray:
    """The dip form eps_np D(d; s, delta, kappa) T(d; p, eps_up / (eps_np delta), gamma), s = p s_over_p."""
    return eps_np * dip_step(d, p * s_over_p, delta, kappa) * transition(d, p, eps_up / (eps_np * delta), gamma)


def invariant(density: np.ndarray, depth: np.ndarray, width: np.ndarray, phi: float, psi: float) -> np.ndarray:
    """m* = l^phi * w^psi * d."""
    return np.asarray(depth, float) ** phi * np.asarray(width, float) ** psi * np.asarray(density, float)


def predict(table: pd.DataFrame, params: dict[str, float]) -> np.ndarray:
    """eps_hat for each row (columns density, eps_np, and depth/width for joint params; data_fraction and dense_params
    instead of eps_np when params model the dense error); the dip form if params has delta."""
    return _predict(_columns(table), params)


def _columns(table: pd.DataFrame) -> dict[str, np.ndarray | None]:
    """The columns `predict` reads, as float arrays (None where the table has none)."""
    return {c: table[c].to_numpy(float) if c in table else None
            for c in ("density", "eps_np", "depth", "width", "data_fraction", "dense_params")}


def _predict(columns: dict[str, np.ndarray | None], params: dict[str, float]) -> np.ndarray:
    """`predict` on columns already taken out of the table: a fit calls it thousands of times."""
    d = columns["density"]
    if "phi" in params:
        d = invariant(d, columns["depth"], columns["width"], params["phi"], params["psi"])
    eps_np = columns["eps_np"]
    if "a" in params:
        eps_np = dense_error(columns["data_fraction"], columns["dense_params"], **{n: params[n] for n in DENSE})
    form, names = (dip_error_form, SINGLE + DIP) if "delta" in params else (error_form, SINGLE)
    return form(d, eps_np, **{n: params[n] for n in names})


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
    """Initial points: a data-driven one, then seeded draws (log-uniform for p and s_over_p) inside the bounds."""
    rng = np.random.default_rng(seed)
    lowest_ratio = float((table["test_error"] / table["eps_np"]).min())
    dense = float(table["eps_np"].min())
    first = {"eps_up": min(max(table["test_error"].max(), 1.01 * LOWER["eps_up"]), UPPER["eps_up"]),
             "p": max(float(table["density"].min()) * 3, LOWER["p"] * 10), "gamma": 1.0, "phi": 0.0, "psi": 0.0,
             # delta < 1: at delta = 1 the dip factor is 1 and flat in s_over_p and kappa
             "delta": min(lowest_ratio, 0.99), "s_over_p": 30.0, "kappa": 2.0,
             "a": dense / 4, "alpha": 0.5, "b": dense / 4, "beta": 0.5, "c_inf": dense / 2}
    starts = [np.array([first[n] for n in names])]
    for _ in range(n_starts - 1):
        draw = {"eps_up": rng.uniform(table["test_error"].median(), 1.0), "p": 10 ** rng.uniform(-4, 0),
                "gamma": 10 ** rng.uniform(-0.7, 0.8), "phi": rng.uniform(-1, 1), "psi": rng.uniform(-1, 1),
                "delta": rng.uniform(0.5, 1.0), "s_over_p": 10 ** rng.uniform(0.5, 3),
                "kappa": 10 ** rng.uniform(-0.3, 1), "a": rng.uniform(0, dense), "alpha": 10 ** rng.uniform(-1, 0.3),
                "b": rng.uniform(0, dense), "beta": 10 ** rng.uniform(-1, 0.3), "c_inf": rng.uniform(0, dense)}
        starts.append(np.array([draw[n] for n in names]))
    return [np.clip(s, [LOWER[n] for n in names], [UPPER[n] for n in names]) for s in starts]


def fit(table: pd.DataFrame, joint: bool = False, n_starts: int = 8, seed: int = 0, dip: bool = False,
        modeled: bool = False) -> Fit:
    """Least squares on the relative error (scipy), from several starts, with bounded parameters.

    `table` needs density, test_error, eps_np (the network's unpruned error), and for a joint fit
    depth and width. `dip` fits the dip form instead of the paper's. `modeled` (joint fits only) fits the dense
    error eps_np(m, n) too (`dense_error`, from columns data_fraction and dense_params), jointly with the rest.
    """
    if modeled and not joint:
        raise ValueError("the dense error is modeled only in joint fits: one curve has one data size and one network")
    names = parameter_names(joint, dip, modeled)
    error = table["test_error"].to_numpy(float)
    if (error <= 0).any():
        raise ValueError("test_error must be positive for a fit on the relative error; drop rows with zero error")
    if modeled and not (table.get("dense_params", pd.Series([0.0])) > 0).all():
        raise ValueError("a modeled dense error needs each network's parameter count (dense_params > 0)")

    columns = _columns(table)

    def residual(theta: np.ndarray) -> np.ndarray:
        return _predict(columns, dict(zip(names, theta))) / error - 1.0

    bounds = ([LOWER[n] for n in names], [UPPER[n] for n in names])
    best = min((least_squares(residual, start, bounds=bounds, method="trf") for start in _starts(table, names, n_starts, seed)),
               key=lambda result: result.cost)
    params = dict(zip(names, map(float, best.x)))
    return Fit(params, residual(best.x))


def bootstrap_intervals(table: pd.DataFrame, joint: bool, n_bootstrap: int, seed: int = 0, n_starts: int = 3,
                        level: float = 0.95, dip: bool = False,
                        modeled: bool = False) -> dict[str, tuple[float, float]]:
    """Percentile intervals of each parameter over fits to row-resampled tables."""
    rng = np.random.default_rng(seed)
    draws = [fit(table.iloc[rng.integers(0, len(table), len(table))], joint, n_starts, seed + b, dip, modeled).params
             for b in range(n_bootstrap)]
    tail = (1 - level) / 2 * 100
    names = parameter_names(joint, dip, modeled)
    if not draws:
        return {n: (np.nan, np.nan) for n in names}
    return {n: tuple(np.percentile([d[n] for d in draws], [tail, 100 - tail])) for n in names}


def with_unpruned_error(errors: pd.DataFrame) -> pd.DataFrame:
    """`errors` plus `curve` (network at one data fraction) and `eps_np`: that curve's mean dense (level 0) test error."""
    table = errors.assign(curve=errors["network"] + "@" + errors["data_fraction"].map("{:g}".format))
    dense = table[table["level"] == 0].groupby("curve")["test_error"].mean().rename("eps_np")
    return table.merge(dense, on="curve", how="left")


def seed_means(errors: pd.DataFrame) -> pd.DataFrame:
    """One row per (network, data fraction, level) of the per-seed `errors`: width, depth, density, the mean
    test_error, n_seeds, relative_std (sample std over seeds / mean; NaN with one seed), curve and eps_np, and
    dense_params (the network's parameters at level 0) where `errors` has params_remaining."""
    means = errors.groupby(GRID_POINT, as_index=False).agg(
        width=("width", "first"), depth=("depth", "first"), density=("density", "mean"),
        test_error=("test_error", "mean"), test_error_std=("test_error", "std"), n_seeds=("test_error", "count"))
    means["relative_std"] = means.pop("test_error_std") / means["test_error"]
    if "params_remaining" in errors:
        dense = errors[errors["level"] == 0].groupby("network")["params_remaining"].max().astype(float)
        means["dense_params"] = means["network"].map(dense)
    return with_unpruned_error(means)


def uses_modeled_dense_error(choice: str, table: pd.DataFrame) -> bool:
    """Whether the joint fits model eps_np(m, n): `modeled`, or `auto` on a grid of several data fractions."""
    return choice == "modeled" or (choice == "auto" and table["data_fraction"].nunique() > 1)


def seed_spread(means: pd.DataFrame) -> float:
    """Seed-to-seed spread: the root-mean-square of `relative_std` over the grid points that have one (>= 2 seeds,
    mean error > 0), i.e. the typical relative deviation of one seed from its point's mean; NaN if none has."""
    relative_std = means["relative_std"].to_numpy(float)
    relative_std = relative_std[np.isfinite(relative_std)]
    return float(np.sqrt(np.mean(relative_std**2))) if len(relative_std) else np.nan


def dip_rows(table: pd.DataFrame) -> np.ndarray:
    """The lottery-ticket dip: pruned rows (density < 1) whose test error is below their curve's eps_np."""
    return ((table["density"] < 1) & (table["test_error"] < table["eps_np"])).to_numpy()


def heldout_by_dimension(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per grid dimension with more than one value (width, depth, data_fraction): the rows of its largest value."""
    return {column: (table[column] == table[column].max()).to_numpy()
            for column in ("width", "depth", "data_fraction") if table[column].nunique() > 1}


def heldout_rows(table: pd.DataFrame) -> np.ndarray:
    """Rows of the largest width, depth or data fraction (each dimension with more than one value)."""
    return np.logical_or.reduce([np.zeros(len(table), bool), *heldout_by_dimension(table).values()])


def spread_rows(means: pd.DataFrame) -> list[dict]:
    """Long rows of scope "data": seed_spread, n_seeds (mean per grid point), points (grid points in the spread)."""
    values = {"seed_spread": seed_spread(means), "n_seeds": float(means["n_seeds"].mean()),
              "points": float(np.isfinite(means["relative_std"]).sum())}
    return [{"scope": "data", "param": name, "value": value, "low": np.nan, "high": np.nan, "warning": ""}
            for name, value in values.items()]


def fit_rows(scope: str, result: Fit, intervals: dict[str, tuple[float, float]], spread: float,
             warning: str | None = None) -> list[dict]:
    """Long rows (scope, param, value, low, high, warning) of one fit; mu, sigma, n and sigma / `spread` without
    interval; `warning` says why the fit may not be a result ("" when nothing does)."""
    rows = [{"scope": scope, "param": name, "value": value, "low": intervals.get(name, (np.nan,))[0],
             "high": intervals.get(name, (np.nan, np.nan))[1]} for name, value in result.params.items()]
    summary = (("mu", result.mu), ("sigma", result.sigma), ("n", float(len(result.relative_deviation))),
               ("sigma_over_spread", result.sigma / spread if spread > 0 else np.nan))
    rows += [{"scope": scope, "param": name, "value": value, "low": np.nan, "high": np.nan} for name, value in summary]
    return [{**row, "warning": warning or ""} for row in rows]
