"""Figures of the prune_grid flow: test error against density (which the scaling_law flow overlays with its fit)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots.style import plt, save


def error_vs_density(errors, path: Path, predicted=None) -> Path:
    """Test error against density (log-log), one line per network and data fraction (mean over seeds);
    dashed lines: `predicted` (same columns plus `predicted_error`), e.g. a scaling-law fit."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups = errors.groupby(["network", "data_fraction"])
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, groups.ngroups)))
    for color, ((network, fraction), rows) in zip(colors, groups):
        mean = rows.groupby("level")[["density", "test_error"]].mean()
        label = network if errors["data_fraction"].nunique() == 1 else f"{network}, data {fraction:g}"
        ax.plot(mean["density"], mean["test_error"], "o-", ms=3, color=color, label=label)
        if predicted is not None:
            fit = predicted[(predicted["network"] == network) & (predicted["data_fraction"] == fraction)]
            fit = fit.groupby("level")[["density", "predicted_error"]].mean()
            ax.plot(fit["density"], fit["predicted_error"], "--", color=color, lw=1)
    ax.set(xscale="log", yscale="log", xlabel="density (fraction of prunable weights kept)", ylabel="test error",
           title="error vs density" + (" (dashed: fit)" if predicted is not None else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return save(fig, path)
