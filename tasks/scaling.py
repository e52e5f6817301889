"""Task of the `scaling_law` flow: per-curve and joint fits, bootstrap intervals, extrapolation."""
from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.scaling import Fit, bootstrap_intervals, fit, fit_rows, heldout_rows, predict, with_unpruned_error
from core.store import RunStore

OUTPUTS = ("scaling_fit.parquet", "scaling_predictions.parquet")


@task(cache_policy=NO_CACHE, task_run_name="fit-scaling-law")
def fit_scaling_law(store: RunStore, prune_errors: str) -> tuple[str, str]:
    """Fit every curve on its own and all curves jointly (m* = l^phi w^psi d); extrapolate to the largest."""
    if all(store.is_complete(name) for name in OUTPUTS):
        return OUTPUTS
    config, logger = store.config, get_run_logger()
    table = with_unpruned_error(pd.read_parquet(prune_errors))
    table = table[table["test_error"] > 0].reset_index(drop=True)  # the relative error needs eps > 0
    rows, single = [], np.full(len(table), np.nan)
    for curve, part in table.groupby("curve"):
        result = fit(part, n_starts=config.n_starts, seed=config.seed)
        rows += fit_rows(curve, result, bootstrap_intervals(part, False, config.n_bootstrap, config.seed))
        single[part.index] = predict(part, result.params)
    joint = fit(table, joint=True, n_starts=config.n_starts, seed=config.seed)
    rows += fit_rows("joint", joint, bootstrap_intervals(table, True, config.n_bootstrap, config.seed))
    predictions = table.assign(predicted_error=predict(table, joint.params), predicted_error_single=single)
    held = heldout_rows(table)
    if config.extrapolate and held.any() and (~held).any():
        small = fit(table[~held], joint=True, n_starts=config.n_starts, seed=config.seed)
        extrapolated = predict(table, small.params)
        deviation = extrapolated[held] / table["test_error"].to_numpy()[held] - 1
        rows += fit_rows("extrapolation", Fit(small.params, deviation), {})  # mu, sigma on the held-out rows
        predictions = predictions.assign(heldout=held, predicted_error_extrapolation=extrapolated)
    store.write_table(OUTPUTS[0], pd.DataFrame(rows))
    store.write_table(OUTPUTS[1], predictions)
    logger.info("joint fit of %d rows: mu %.4f, sigma %.4f (%s)", len(table), joint.mu, joint.sigma,
                ", ".join(f"{k}={v:.3g}" for k, v in joint.params.items()))
    return OUTPUTS
