"""Task of the `scaling_law` flow: per-curve and joint fits on seed means, bootstrap intervals, extrapolation."""
from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.methods.scaling_law import (DENSE, Fit, bootstrap_intervals, dense_error, dip_rows, fit, fit_rows,
                                      heldout_by_dimension, heldout_rows, predict, seed_means, seed_spread, spread_rows,
                                      uses_modeled_dense_error)
from core.methods.scaling_law_warnings import (density_trend, extrapolation_warning, trend_rows, trend_warning,
                                               without_dip_warning)
from core.runs.store import RunStore

OUTPUTS = ("scaling_fit.parquet", "scaling_predictions.parquet")


def joint_fits(table: pd.DataFrame, config, spread: float, dip: bool, modeled: bool,
               suffix: str = "") -> tuple[list[dict], dict[str, np.ndarray]]:
    """One form's joint fit and extrapolation to the largest networks: long rows, and prediction columns.

    `config` is the run's ScalingLawFlowConfig; `modeled` fits the dense error eps_np(m, n) too. Scopes and columns
    end in `suffix`, then `_dip` for the dip form.
    """
    suffix += "_dip" if dip else ""
    joint = fit(table, joint=True, n_starts=config.n_starts, seed=config.seed, dip=dip, modeled=modeled)
    intervals = bootstrap_intervals(table, True, config.n_bootstrap, config.seed, dip=dip, modeled=modeled)
    rows = fit_rows("joint" + suffix, joint, intervals, spread)
    columns = {"predicted_error" + suffix: predict(table, joint.params)}
    if modeled:
        columns["eps_np_fitted" + suffix] = dense_error(table["data_fraction"], table["dense_params"],
                                                        **{n: joint.params[n] for n in DENSE})
    if not config.extrapolate:
        return rows, columns
    # all the largest networks at once, then each dimension alone: which one the law cannot reach
    for scope, held in {"": heldout_rows(table), **{f"_{k}": v for k, v in heldout_by_dimension(table).items()}}.items():
        if not held.any() or held.all():
            continue
        small = fit(table[~held], joint=True, n_starts=config.n_starts, seed=config.seed, dip=dip, modeled=modeled)
        extrapolated = predict(table, small.params)
        deviation = extrapolated[held] / table["test_error"].to_numpy()[held] - 1  # judged on the held-out rows
        warning = extrapolation_warning(table[~held], table[held], modeled)
        rows += fit_rows("extrapolation" + scope + suffix, Fit(small.params, deviation), {}, spread, warning)
        if not scope:
            columns |= {"heldout": held, "predicted_error_extrapolation" + suffix: extrapolated}
    return rows, columns


@task(cache_policy=NO_CACHE, task_run_name="fit-scaling-law")
def fit_scaling_law(store: RunStore, prune_errors: str) -> tuple[str, str]:
    """Fit every curve on its own and all curves jointly (m* = l^phi w^psi d) on seed means; extrapolate to the largest.
    With a modeled dense error (`dense_error`), the joint fits with each curve's measured one are made beside them."""
    store.remove_corrupt(*OUTPUTS)
    if all(store.is_complete(name, [prune_errors]) for name in OUTPUTS):
        return OUTPUTS
    config, logger = store.config, get_run_logger()
    means = seed_means(pd.read_parquet(prune_errors))
    spread = seed_spread(means)
    table = means[means["test_error"] > 0].reset_index(drop=True)  # the relative error needs eps > 0
    table["dip"] = dip_rows(table)
    trend = density_trend(table, spread)
    rows, single = spread_rows(means) + trend_rows(trend), np.full(len(table), np.nan)
    for curve, part in table.groupby("curve"):
        result = fit(part, n_starts=config.n_starts, seed=config.seed)
        rows += fit_rows(curve, result, bootstrap_intervals(part, False, config.n_bootstrap, config.seed), spread)
        single[part.index] = predict(part, result.params)
    columns = {"predicted_error_single": single}
    modeled = uses_modeled_dense_error(config.dense_error, table)
    for dip in (False, True) if config.dip_form else (False,):
        form_rows, form_columns = joint_fits(table, config, spread, dip, modeled)
        rows, columns = rows + form_rows, columns | form_columns
    if modeled:  # the paper's form with each curve's measured eps_np beside it, scopes ending in `_measured`
        form_rows, form_columns = joint_fits(table, config, spread, False, False, "_measured")
        rows, columns = rows + form_rows, columns | form_columns
    # how much of the joint sigma the dip explains: the paper's form fitted and judged outside the dip, where enough
    # pruned rows lie there to judge it (else the reason goes on the joint rows)
    left_out = without_dip_warning(table, modeled)
    if left_out is None:
        outside = fit(table[~table["dip"]], joint=True, n_starts=config.n_starts, seed=config.seed, modeled=modeled)
        rows += fit_rows("joint_without_dip", outside, {}, spread)
    notes = {row["scope"]: row["warning"] for row in rows if row["warning"]} | ({"joint": left_out} if left_out else {})
    grid = trend_warning(trend)  # about every fit of this grid
    for row in rows:
        row["warning"] = "; ".join(w for w in (grid, notes.get(row["scope"])) if w)
    for scope, note in ({"grid": grid} | notes).items():
        if note:
            logger.warning("%s: %s", scope, note)
    store.write_table(OUTPUTS[0], pd.DataFrame(rows), built_from=[prune_errors])
    store.write_table(OUTPUTS[1], table.assign(**columns), built_from=[prune_errors])
    sigma = {row["scope"]: row["value"] for row in rows if row["param"] == "sigma"}
    logger.info("%d seed means, seed spread %.4f; joint sigma %.4f, %s%s", len(table), spread, sigma["joint"],
                f"without the {table['dip'].sum()} dip rows {sigma['joint_without_dip']:.4f}" if left_out is None
                else "joint_without_dip left out", f", dip form {sigma['joint_dip']:.4f}" if config.dip_form else "")
    return OUTPUTS
