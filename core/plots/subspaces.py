"""Figures of the subspaces flow: accuracy and ECE along each path, gains over standard training."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots.style import plt, save


def subspace_paths(alpha, summary, path: Path) -> Path:
    """Test accuracy (top) and ECE (bottom) along each subspace's path, one column per label-noise level, one line
    per method (mean over seeds, band: its standard error); dashed: the standard model's mean; dotted: SWA's."""
    noises = sorted(alpha["noise"].unique())
    fig, axes = plt.subplots(2, len(noises), figsize=(4.2 * len(noises), 6.2), sharex=True, squeeze=False)
    standard = summary[(summary["method"] == "standard") & (summary["point"] == "model")]
    swa = summary[(summary["method"] == "swa") & (summary["point"] == "model")]
    for column, noise in enumerate(noises):
        at_noise = alpha[alpha["noise"] == noise]
        for metric, ax in zip(("accuracy", "ece"), axes[:, column]):
            for method, rows in at_noise.groupby("method"):
                stats = rows.groupby("alpha")[metric].agg(["mean", "sem"])
                line, = ax.plot(stats.index, stats["mean"], lw=1.5, label=method)
                ax.fill_between(stats.index, stats["mean"] - stats["sem"].fillna(0), stats["mean"] + stats["sem"].fillna(0),
                                color=line.get_color(), alpha=0.2, lw=0)
            ax.axhline(standard.loc[standard["noise"] == noise, metric].mean(), color="k", ls="--", lw=1,
                       label="standard training")
            if len(swa):
                ax.axhline(swa.loc[swa["noise"] == noise, metric].mean(), color="k", ls=":", lw=1, label="SWA")
            ax.grid(alpha=0.3)
        axes[0, column].set_title(f"label noise {noise:.0%}")
        axes[1, column].set_xlabel("alpha along the path (simplex: edge 0-1)")
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("expected calibration error (20 bins)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("network subspaces: accuracy and calibration along each subspace")
    fig.tight_layout()
    return save(fig, path)


def gains_over_standard_bars(gains, path: Path) -> Path:
    """Per label-noise level, one bar per method: its midpoint's accuracy gain and ECE change over standard training,
    and its ends' ensemble's accuracy gain over a standard ensemble of as many members (error bars: standard
    errors over seeds)."""
    panels = [("accuracy_gain", "midpoint accuracy - standard"), ("ece_change", "midpoint ECE - standard (lower: better)"),
              ("ensemble_gain", "ends' ensemble - standard ensemble")]
    methods, noises = sorted(gains["method"].unique()), sorted(gains["noise"].unique())
    width = 0.8 / len(methods)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (column, title) in zip(axes, panels):
        for i, method in enumerate(methods):
            rows = gains[gains["method"] == method].set_index("noise").reindex(noises)
            ax.bar(np.arange(len(noises)) + (i - (len(methods) - 1) / 2) * width, rows[column],
                   yerr=rows[f"{column}_sem"].fillna(0), width=width, capsize=2, label=method)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xticks=np.arange(len(noises)), xticklabels=[f"{n:.0%}" for n in noises], xlabel="label noise", title=title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.suptitle("network subspaces against standard training (paired by seed)")
    fig.tight_layout()
    return save(fig, path)
