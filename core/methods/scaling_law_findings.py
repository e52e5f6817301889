"""The scaling law's claims (Rosenfeld, Frankle, Carbin, Shavit, ICML 2021) checked on a `scaling_law` run's fits.

Every fit runs on seed means (see core/methods/scaling_law.py), so the fits have no per-seed replicates: the standard
errors here are over the grid points a fit is judged on, and `n_seeds` is the seeds behind each point.
"""
from __future__ import annotations

import math

import pandas as pd

from core.findings import MIN_SEEDS, Z, Claim, beyond, findings_table, not_testable, row, too_few_seeds, within

PAPER = 'Rosenfeld, Frankle, Carbin, Shavit, "On the Predictability of Pruning Across Scales", ICML 2021'
MU_MARGIN = 0.02  # the paper's fits have |mu| < 2%
NOISE_RATIO = 1.5  # "close to the seed-to-seed noise": the paper gives no number (see noise_row's rule)
JOINT_FIT = Claim(
    PAPER, "The error of pruned networks is predictable in terms of an invariant tying width, depth and pruning "
    "level, with a mean relative deviation |mu| under 2%.",
    "mu of the joint fit: the mean of (predicted - measured) / measured error over the grid's seed means")
JOINT_NOISE = Claim(
    PAPER, "The joint fit's deviation sigma is close to the seed-to-seed variation of the error.",
    "sigma of the joint fit over the seed spread (sigma_over_spread)")
EXTRAPOLATION_FIT = Claim(
    PAPER, "Fitted on smaller networks, the functional form predicts the error of larger ones with |mu| under 2%.",
    "mu of the extrapolation: the joint law fitted without the largest width, depth and data fraction, judged on them")
EXTRAPOLATION_NOISE = Claim(
    PAPER, "Fitted on smaller networks, the functional form predicts the error of larger ones within the "
    "seed-to-seed variation of the error.",
    "sigma of the extrapolation (on the held-out rows) over the seed spread (sigma_over_spread)")
DATA_SIZE_FIT = Claim(
    PAPER, "The approximation is accurate over orders of magnitude in dataset size: dataset size enters only through "
    "the unpruned error eps_np(l, w, n), and the form predicts networks trained on more data with |mu| under 2%.",
    "mu of extrapolation_data_fraction: the joint law fitted without the largest data fraction, judged on it (eps_np "
    "as the run's dense_error has it: modeled, so predicted at the held-out fraction too, or measured)")
DATA_SIZE_NOISE = Claim(
    PAPER, "The approximation is accurate over orders of magnitude in dataset size: it predicts networks trained on "
    "more data within the seed-to-seed variation of the error.",
    "sigma of extrapolation_data_fraction (on the held-out rows) over the seed spread (sigma_over_spread)")
DATA_SCOPE = "extrapolation_data_fraction"


def scaling_law_findings(fits: pd.DataFrame, scope: str) -> pd.DataFrame:
    """The joint fit's and the extrapolation's bias and noise, from `scaling_fit.parquet`, each against the paper; and
    the same for the extrapolation to the largest data fraction, on a grid of several (scope DATA_SCOPE)."""
    values = fits.pivot_table(index="scope", columns="param", values="value", aggfunc="first")
    warnings = fits.groupby("scope")["warning"].first() if "warning" in fits else pd.Series("", values.index)
    data = values.loc["data"]
    seeds = int(round(data["n_seeds"]))
    grid = warnings.get("data", "")
    checks = [("joint", JOINT_FIT, JOINT_NOISE), ("extrapolation", EXTRAPOLATION_FIT, EXTRAPOLATION_NOISE)]
    checks += [(DATA_SCOPE, DATA_SIZE_FIT, DATA_SIZE_NOISE)] if DATA_SCOPE in values.index else []
    rows = []
    for fit_scope, bias, noise in checks:
        own = warnings.get(fit_scope, "").removeprefix(grid).removeprefix("; ")
        why = untestable(fit_scope, fit_scope in values.index, grid, own, seeds)
        if why:
            rows += [not_testable(claim, why, scope, seeds) for claim in (bias, noise)]
            continue
        fit = values.loc[fit_scope]
        rows += [bias_row(bias, fit["mu"], fit["sigma"], int(fit["n"]), seeds, scope),
                 noise_row(noise, fit["sigma_over_spread"], int(fit["n"]), int(data["points"]), seeds, scope)]
    return findings_table(rows)


def untestable(fit_scope: str, fitted: bool, grid: str, own: str, seeds: int) -> str | None:
    """Why a fit's claims cannot be checked on this run (None when they can): no fit, a grid the law cannot be fitted
    to, an extrapolation that decides nothing, or too few seeds per grid point."""
    if not fitted:
        return (f"no {fit_scope} fit in this run: run scaling_law with extrapolate=true on a prune_grid run with more "
                "than one width or depth")
    if grid:
        return f"{grid}; train the prune_grid networks to convergence (e.g. a larger train.lr or more epochs)"
    if own and fit_scope == "extrapolation":
        return f"{own}; give prune_grid at least two widths and two depths below the largest"
    if own and fit_scope == DATA_SCOPE:
        return f"{own}; give prune_grid at least two data fractions below the largest"
    return too_few_seeds(seeds, "run prune_grid with at least 3 seeds per grid point")


def bias_row(claim: Claim, mu: float, sigma: float, n: int, seeds: int, scope: str) -> dict:
    """|mu| inside the paper's 2%, with SE sigma / sqrt(n) over the n seed means the fit is judged on."""
    se = sigma / math.sqrt(n)
    rule = (f"mu ± {Z:g} SE (SE = sigma / sqrt(n) over the n seed means judged) inside ± {MU_MARGIN:g} (the paper's "
            f"|mu| < 2%): supported; wholly outside: not supported; else inconclusive (and with < {MIN_SEEDS} seeds)")
    return row(claim, mu, se, seeds, within(mu, se, seeds, MU_MARGIN), rule, scope)


def noise_row(claim: Claim, ratio: float, n: int, points: int, seeds: int, scope: str) -> dict:
    """sigma / seed spread below NOISE_RATIO, with the SE of a ratio of two standard deviations (normal theory)."""
    se = ratio * math.sqrt(1 / (2 * (n - 1)) + 1 / (2 * points * (seeds - 1))) if n > 1 else math.nan
    rule = (f"sigma / seed spread below {NOISE_RATIO:g} by more than {Z:g} SE: supported; above it by more than "
            f"{Z:g} SE: not supported; else inconclusive. SE = ratio x sqrt(1 / (2 (n - 1)) + 1 / (2 points "
            "(n_seeds - 1))), n seed means judged, the spread pooled over `points` grid points. The paper says only "
            f"'close to' the seed variation: {NOISE_RATIO:g}x chosen, since an exact law fitted to means of n_seeds "
            "seeds already has sigma about sqrt(2 / n_seeds) x the spread")
    return row(claim, ratio, se, seeds, beyond(-ratio, se, seeds, threshold=-NOISE_RATIO), rule, scope)
