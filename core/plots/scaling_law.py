"""Figures of the scaling_law flow: the joint invariant, predicted against measured error, the seeds around the fit."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots.style import plt, save


def collapse_on_invariant(predictions, params: dict[str, float], path: Path) -> Path:
    """Every network's error / eps_np against m* = l^phi w^psi d: one curve if the joint law holds."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    m = predictions["depth"] ** params["phi"] * predictions["width"] ** params["psi"] * predictions["density"]
    for curve, rows in predictions.assign(m=m).groupby("curve"):
        ax.plot(rows["m"], rows["test_error"] / rows["eps_np"], "o", ms=3, alpha=0.6, label=curve)
    ax.set(xscale="log", yscale="log", xlabel=f"m* = l^{params['phi']:.2f} w^{params['psi']:.2f} d",
           ylabel="test error / unpruned error", title="all networks on the joint invariant")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)
    return save(fig, path)


def predicted_vs_actual(predictions, path: Path) -> Path:
    """Joint-fit prediction against measured error (and the extrapolated ones, when present)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot(predictions["test_error"], predictions["predicted_error"], "o", ms=3, alpha=0.5, label="joint fit")
    if "predicted_error_extrapolation" in predictions:
        held = predictions[predictions["heldout"]]
        ax.plot(held["test_error"], held["predicted_error_extrapolation"], "x", ms=4, label="extrapolated (held out)")
    lims = [predictions["test_error"].min() * 0.8, predictions["test_error"].max() * 1.2]
    ax.plot(lims, lims, "k:", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="measured test error", ylabel="predicted test error", title="prediction")
    ax.legend(fontsize=8)
    return save(fig, path)


def seed_scatter(per_seed, predictions, spread: float, path: Path) -> Path:
    """One panel per curve: each seed's error / joint-fit prediction − 1 against density, the seed mean's over it
    (dip rows ringed), and a band of ± the seed-to-seed spread, where the seeds fall if the fit is exact."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    keys = ["network", "data_fraction", "level"]
    seeds = per_seed.merge(predictions[keys + ["curve", "predicted_error"]], on=keys)
    curves = list(predictions.groupby("curve"))
    cols = min(6, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.0 * rows + 0.5), sharex=True, sharey=True, squeeze=False)
    for ax, (curve, mean) in zip(axes.flat, curves):
        if np.isfinite(spread):
            ax.axhspan(-spread, spread, color="0.85", lw=0)
        ax.axhline(0, color="black", lw=0.6)
        own = seeds[seeds["curve"] == curve]
        ax.plot(own["density"], own["test_error"] / own["predicted_error"] - 1, ".", ms=2.5, color="tab:blue", alpha=0.6)
        mean = mean.sort_values("density")
        deviation = mean["test_error"] / mean["predicted_error"] - 1
        ax.plot(mean["density"], deviation, "-", color="black", lw=1)
        ax.plot(mean["density"][mean["dip"]], deviation[mean["dip"]], "o", mfc="none", mec="tab:red", ms=4)
        ax.set_xscale("log")
        ax.set_title(curve, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    handles = [Line2D([], [], ls="", marker=".", color="tab:blue", label="one seed"),
               Line2D([], [], color="black", label="seed mean"),
               Line2D([], [], ls="", marker="o", mfc="none", mec="tab:red", label="dip (mean below dense error)"),
               Patch(color="0.85", label=f"± seed spread ({spread:.3g})")]
    fig.legend(handles=handles, loc="upper center", ncol=4, fontsize=7, frameon=False)
    fig.supxlabel("density (fraction of prunable weights kept)", fontsize=8)
    fig.supylabel("test error / joint fit − 1", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return save(fig, path)
