"""`scaling_law` flow: fit the error-vs-density law to a `prune_grid` run, per network and jointly.

Per curve (a network at one data fraction) the law has eps_np (its unpruned error, measured),
eps_up, p and gamma; jointly, density is replaced by m* = l^phi w^psi d, and dataset size enters only through
eps_np, measured per curve or modeled as eps_np(m, n) (`dense_error`). With `extrapolate`, the
joint law is also fitted on all but the largest width, depth and data fraction and judged on them.
Every fit runs on the seed means of each (network, data fraction, level); the seed-to-seed spread is
reported beside each fit's sigma. With `dip_form`, a second form that can follow the lottery-ticket dip
is fitted beside the paper's (see core/methods/scaling_law.py). A fit that is no test of the law says why in the
`warning` column and the log: errors that rise with density, an exponent an extrapolation cannot determine.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow
from pydantic import Field

from core.config import ADDED_SETTING, RUN_REFERENCE, Config, RuntimeConfig
from flows.common import checked_data_root, upstream_table

FLOW = "scaling_law"


class ScalingLawFlowConfig(Config):
    """Which pruning run to fit, and how hard to search."""

    prune_run: Annotated[str | None, RUN_REFERENCE] = Field(None, description="run id of a prune_grid run (see `regularity ls --flow prune_grid`)")
    n_starts: int = Field(8, ge=1, description="least-squares starts per fit (the best is kept)")
    n_bootstrap: int = Field(50, ge=0, description="bootstrap resamples for the parameter intervals")
    extrapolate: bool = Field(True, description="also fit on the smaller networks and predict the largest")
    dip_form: bool = Field(False, description="also fit the dip form (the paper's form times a step down to a "
                           "lottery-ticket dip at moderate density); the paper's form is always fitted and reported")
    dense_error: Annotated[Literal["auto", "modeled", "measured"], ADDED_SETTING] = Field(
        "auto", description="the unpruned error eps_np(l, w, n) in the joint fits, through which alone dataset size n "
        "enters the law: modeled (a n^-alpha + b m^-beta + c_inf, Rosenfeld et al. 2020, m the dense parameters, "
        "fitted jointly with the pruning law, so that extrapolation predicts a dense error never fitted), measured "
        "(each curve's mean dense error, as the paper's fits take it), or auto: modeled on a grid of several data "
        "fractions (the measured fits are then reported beside it, scopes ending in _measured), measured otherwise")
    seed: int = Field(0, ge=0, description="seed of the random starts and bootstrap resamples")
    runtime: RuntimeConfig = Field(RuntimeConfig(), description="execution settings; not part of the run id")


@flow(name=FLOW, description="Fit the pruning scaling law per network and jointly; extrapolate to larger networks.")
def scaling_law_flow(config: ScalingLawFlowConfig = ScalingLawFlowConfig(), data_root: str | None = None) -> str:
    """Run (or resume) the fits of `config`; returns the run folder."""
    import pandas as pd
    from core.methods.scaling_law_findings import scaling_law_findings
    from core.plots.prune_grid import error_vs_density
    from core.plots.scaling_law import collapse_on_invariant, predicted_vs_actual, seed_scatter
    from core.runs.store import RunStore
    from flows.report import publish
    from flows.runner import configure_runtime
    from tasks.scaling_law import fit_scaling_law

    data_root = checked_data_root(data_root)  # a deployment parameter may not point outside
    configure_runtime(config.runtime)
    if not config.prune_run:
        raise ValueError("prune_run is required: the run id of a prune_grid run (see `regularity ls --flow prune_grid`)")
    errors = upstream_table("prune_run", config.prune_run, {"prune_grid": "prune_errors.parquet"}, data_root)
    store = RunStore.open(FLOW, config, data_root)
    fit_scaling_law(store, str(errors))
    fits, predictions = store.read_table("scaling_fit.parquet"), store.read_table("scaling_predictions.parquet")
    joint = fits[fits["scope"] == "joint"].set_index("param")["value"].to_dict()
    spread = fits[fits["scope"] == "data"].set_index("param").loc["seed_spread", "value"]
    folder = store.root / "figures"
    figures = store.figures(lambda: [
        error_vs_density(predictions, folder / "error_vs_density_fit.png", predicted=predictions),
        collapse_on_invariant(predictions, joint, folder / "collapse.png"),
        predicted_vs_actual(predictions, folder / "predicted_vs_actual.png"),
        seed_scatter(pd.read_parquet(errors), predictions, spread, folder / "seed_scatter.png")])
    quality = fits[fits["param"].isin(["mu", "sigma", "sigma_over_spread"])]
    summary = quality.pivot(index="scope", columns="param", values="value").reset_index().assign(seed_spread=spread)
    warnings = fits["warning"] if "warning" in fits else pd.Series("", fits.index)  # none in tables of older code
    # the grid's warnings lead every row's: said once above the table, each scope's own beside it
    grid = warnings[fits["scope"] == "data"].iloc[0]
    own = warnings.groupby(fits["scope"]).first().map(lambda text: text.removeprefix(grid).removeprefix("; "))
    summary["warning"] = summary["scope"].map(own)
    warned = f". WARNING: {grid}" if grid else ""
    findings = scaling_law_findings(fits, scope=prune_run_scope(errors, config.prune_run))
    publish(store, summary, figures, f"scaling law fitted to {config.prune_run}{warned}", findings=findings)
    return str(store.root)


def prune_run_scope(errors: Path, prune_run: str) -> str:
    """The findings' scope: the fitted prune_grid run's data, epochs and seeds (from its config.json), and its id."""
    from pydantic import ValidationError

    from flows.common import run_scope
    from flows.prune_grid import PruneGridFlowConfig

    stored = json.loads((errors.parent / "config.json").read_text())["config"]
    stored.pop("precision", None)  # a run id's record of a non-fp32 runtime, not a setting
    try:
        grid = run_scope(PruneGridFlowConfig.model_validate(stored))
    except ValidationError:  # a run of older code, with settings since renamed
        return f"prune_grid run {prune_run}"
    return f"{grid}; prune_grid run {prune_run}"
