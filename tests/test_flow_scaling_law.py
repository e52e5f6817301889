"""The `scaling_law` flow on a pruning table generated from known parameters."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.findings import COLUMNS
from core.methods.scaling_law import error_form, invariant
from core.methods.scaling_law_findings import EXTRAPOLATION_FIT, EXTRAPOLATION_NOISE, JOINT_FIT, JOINT_NOISE
from core.runs.store import RunStore
from flows.prune_grid import PruneGridFlowConfig
from flows.scaling_law import ScalingLawFlowConfig, scaling_law_flow

TRUE = {"eps_up": 0.8, "p": 0.5, "gamma": 1.2, "phi": 0.5, "psi": 0.8}


def synthetic_prune_run(root: Path) -> str:
    """A prune_grid run folder whose prune_errors.parquet follows the joint law with 1% noise."""
    config = PruneGridFlowConfig(widths=[16, 32, 64], depths=[1, 2, 3], seeds=[0, 1])
    store = RunStore.open("prune_grid", config, root)
    rng, rows = np.random.default_rng(0), []
    for width in config.widths:
        for depth in config.depths:
            eps_np = 0.3 / (width * depth) ** 0.3
            for seed in config.seeds:
                level = np.arange(0, 20)
                density = 0.8**level
                m = invariant(density, depth, width, TRUE["phi"], TRUE["psi"])
                error = error_form(m, np.full(len(m), eps_np), TRUE["eps_up"], TRUE["p"], TRUE["gamma"])
                rows.append(pd.DataFrame({"network": f"mlp_w{width}_d{depth}", "width": width, "depth": depth,
                                          "data_fraction": 1.0, "seed": seed, "level": level, "density": density,
                                          "params_remaining": 0, "train_error": error, "test_loss": 0.0,
                                          "test_error": error * (1 + rng.normal(scale=0.01, size=len(m)))}))
    store.write_table("prune_errors.parquet", pd.concat(rows, ignore_index=True))
    return store.run_id


@pytest.mark.usefixtures("prefect_harness")
def test_flow_recovers_the_law_and_extrapolates(tmp_path):
    run = synthetic_prune_run(tmp_path)
    config = ScalingLawFlowConfig(prune_run=run, n_bootstrap=4, n_starts=6, dip_form=True)
    folder = Path(scaling_law_flow(config, data_root=str(tmp_path)))
    fits = pd.read_parquet(folder / "scaling_fit.parquet")
    joint = fits[fits.scope == "joint"].set_index("param")
    for name, value in TRUE.items():
        assert joint.loc[name, "value"] == pytest.approx(value, rel=0.15, abs=0.05), name
        assert joint.loc[name, "low"] <= joint.loc[name, "high"]
    assert joint.loc["n", "value"] == 9 * 20  # the seed means: 9 networks, 20 levels
    assert abs(joint.loc["mu", "value"]) < 0.01 and joint.loc["sigma", "value"] < 0.02
    # each seed has 1% noise: the sample variance of 2 seeds estimates 0.01^2 without bias, and the rms over
    # 180 points has a relative standard error of 1 / sqrt(2 * 180) = 5%
    data = fits[fits.scope == "data"].set_index("param")["value"]
    spread = data["seed_spread"]
    assert spread == pytest.approx(0.01, rel=0.15) and data["n_seeds"] == 2 and data["points"] == 180
    # a mean of 2 seeds has 0.01 / sqrt(2) noise, and so has each curve's measured eps_np: the joint sigma
    # cannot fall below the first, and the law being exact it stays near sqrt(1/2 + 1/2) * 0.01
    sigma = joint.loc["sigma", "value"]
    assert spread / np.sqrt(2) * 0.9 < sigma < 1.5 * spread
    assert joint.loc["sigma_over_spread", "value"] == pytest.approx(sigma / spread)
    extrapolation = fits[fits.scope == "extrapolation"].set_index("param")["value"]
    assert extrapolation["n"] == 5 * 20  # width 64 or depth 3: 5 of the 9 networks, 20 levels
    assert abs(extrapolation["mu"]) < 0.03 and extrapolation["sigma"] < 0.05
    by_width, by_depth = (fits[fits.scope == f"extrapolation_{d}"].set_index("param")["value"] for d in ("width", "depth"))
    assert by_width["n"] == by_depth["n"] == 3 * 20  # each dimension alone: width 64, or depth 3 (one data fraction)
    assert by_width["sigma"] < 0.05 and by_depth["sigma"] < 0.05
    curves = {f"mlp_w{w}_d{d}@1" for w in (16, 32, 64) for d in (1, 2, 3)}
    forms = {"joint", "extrapolation", "joint_without_dip", "joint_dip", "extrapolation_dip"}
    forms |= {f"extrapolation_{d}{form}" for d in ("width", "depth") for form in ("", "_dip")}
    assert set(fits.scope) == {"data"} | forms | curves
    assert set(fits.loc[fits.param == "sigma_over_spread", "scope"]) == forms | curves
    predictions = pd.read_parquet(folder / "scaling_predictions.parquet")
    assert len(predictions) == 9 * 20 and predictions["heldout"].sum() == 100
    assert (predictions["n_seeds"] == 2).all() and not predictions.loc[predictions["level"] == 0, "dip"].any()
    without_dip = fits[fits.scope == "joint_without_dip"].set_index("param")["value"]
    assert without_dip["n"] == 180 - predictions["dip"].sum()
    # the dip form holds the paper's (delta = 1), so its least-squares optimum is no worse
    dip = fits[fits.scope == "joint_dip"].set_index("param")["value"]
    assert np.hypot(dip["mu"], dip["sigma"]) <= np.hypot(joint.loc["mu", "value"], joint.loc["sigma", "value"]) * 1.001
    assert {"predicted_error_dip", "predicted_error_extrapolation_dip"} <= set(predictions.columns)
    single = fits[fits.scope == "mlp_w32_d2@1"].set_index("param")["value"]
    assert single["sigma"] < 0.02  # each curve alone fits to its noise
    for name in ("error_vs_density_fit.png", "collapse.png", "predicted_vs_actual.png", "seed_scatter.png"):
        assert (folder / "figures" / name).is_file()
    assert "| scope | mu | sigma | sigma_over_spread | seed_spread | warning |" in (folder / "report.md").read_text()
    # the law holds, on a grid of 9 networks: nothing to warn about, and the error falls as density rises
    assert (fits["warning"] == "").all() and "WARNING" not in (folder / "report.md").read_text()
    assert data["density_slope"] < -2 * data["density_slope_se"]
    findings = pd.read_parquet(folder / "findings.parquet")
    assert list(findings.columns) == list(COLUMNS)
    claims = (JOINT_FIT, JOINT_NOISE, EXTRAPOLATION_FIT, EXTRAPOLATION_NOISE)
    assert list(findings["claim"]) == [claim.claim for claim in claims]
    assert set(findings["rule"]) == {"not testable here: 2 seeds, and a verdict needs a standard error over at "  # the
                                     "least 3; run prune_grid with at least 3 seeds per grid point"}  # grid has 2
    assert set(findings["scope"]) == {f"mnist1d, 20 epochs, 2 seeds; prune_grid run {run}"}
    report = (folder / "report.md").read_text()
    assert report.index("## Findings") < report.index("## Tables")


def rising_prune_run(root: Path) -> str:
    """A prune_grid run of two networks (widths 16, 32; depth 1) whose error falls at every pruning level, as a small
    under-trained grid's may: error = eps_np * density^0.2, 1% noise per seed."""
    config = PruneGridFlowConfig(widths=[16, 32], depths=[1], seeds=[0, 1])
    store = RunStore.open("prune_grid", config, root)
    rng, rows, level = np.random.default_rng(1), [], np.arange(0, 10)
    for width in config.widths:
        for seed in config.seeds:
            error = 0.1 * (0.8**level) ** 0.2 * (1 + rng.normal(scale=0.01, size=len(level)))
            rows.append(pd.DataFrame({"network": f"mlp_w{width}_d1", "width": width, "depth": 1, "data_fraction": 1.0,
                                      "seed": seed, "level": level, "density": 0.8**level, "params_remaining": 0,
                                      "train_error": error, "test_error": error, "test_loss": 0.0}))
    store.write_table("prune_errors.parquet", pd.concat(rows, ignore_index=True))
    return store.run_id


@pytest.mark.usefixtures("prefect_harness")
def test_a_grid_where_pruning_helps_and_an_extrapolation_from_one_network_are_flagged(tmp_path, prefect_log):
    config = ScalingLawFlowConfig(prune_run=rising_prune_run(tmp_path), n_bootstrap=0, n_starts=2)
    folder = Path(scaling_law_flow(config, data_root=str(tmp_path)))
    fits = pd.read_parquet(folder / "scaling_fit.parquet")
    data = fits[fits.scope == "data"].set_index("param")["value"]
    assert data["density_slope"] == pytest.approx(0.2, abs=0.01)  # the slope the errors were made with
    grid = fits.loc[fits.scope == "data", "warning"].iloc[0]
    assert grid.startswith("errors rise with density: within curves ln error grows by 0.20")
    assert fits["warning"].str.startswith(grid).all()  # every fit of this grid carries it
    # every pruned row is below its dense error: outside the dip lie only the 2 dense rows, which any fit matches
    assert "joint_without_dip" not in set(fits.scope)
    left_out = "joint_without_dip left out: only 0 pruned rows lie outside the dip"
    assert fits.loc[fits.scope == "joint", "warning"].str.startswith(f"{grid}; {left_out}").all()
    single = ("fitted on a single network (mlp_w16_d1): psi not determined, so its predictions at width 32 are "
              "arbitrary")
    for scope in ("extrapolation", "extrapolation_width"):
        assert (fits.loc[fits.scope == scope, "warning"] == f"{grid}; {single}").all()
    quality = fits[fits.param.isin(["mu", "sigma"])].pivot(index="scope", columns="param", values="value")
    assert not ((quality["mu"] == 0) & (quality["sigma"] == 0)).any()  # no row of zeros reads as a result
    report = (folder / "report.md").read_text()
    assert f"WARNING: {grid}" in report and f"| {single} |" in report
    logged = [m for m in prefect_log if m.startswith(("grid:", "joint:", "extrapolation"))]
    assert logged[:3] == [f"grid: {grid}", f"extrapolation: {single}", f"extrapolation_width: {single}"]
    assert len(logged) == 4 and logged[3].startswith(f"joint: {left_out}")


def test_missing_prune_run_is_explained(tmp_path):
    assert not ScalingLawFlowConfig().dip_form  # the paper's form alone unless asked
    with pytest.raises(ValueError, match="prune_run is required"):
        scaling_law_flow.fn(ScalingLawFlowConfig(), data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no run 'prune_grid-000000000000'"):
        scaling_law_flow.fn(ScalingLawFlowConfig(prune_run="prune_grid-000000000000"), data_root=str(tmp_path))
    other = tmp_path / "runs" / "cscore" / "cscore-0123456789ab"
    other.mkdir(parents=True)
    (other / "config.json").write_text('{"flow": "cscore", "config": {}}')
    with pytest.raises(ValueError, match="prune_run='cscore-0123456789ab' is a cscore run; give the id of a prune_grid run"):
        scaling_law_flow.fn(ScalingLawFlowConfig(prune_run="cscore-0123456789ab"), data_root=str(tmp_path))
