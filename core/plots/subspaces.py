"""Figures of the subspaces flow: accuracy and ECE along each path, gains over standard training, accuracy by epoch."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.methods.subspace_epochs import best_epochs
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


def accuracy_by_epoch(epochs, path: Path) -> Path:
    """Test accuracy (solid) and validation accuracy (dashed, noisy labels) against the epoch, one panel per label-noise
    level, one colour per arm: standard training, SWA (its average, from swa_start on) and each method's midpoint;
    mean over seeds with a band of +/- 1 standard error; o: each seed's best validation epoch, the first on a tie (at
    the mean of those epochs and the mean test accuracy there: the early-stopped figure the findings compare).
    `epochs` holds subspace_epochs.parquet's columns."""
    noises, best = sorted(epochs["noise"].unique()), best_epochs(epochs)
    arms = ["standard", "swa", *sorted(set(epochs["method"]) - {"standard", "swa"})]
    fig, axes = plt.subplots(1, len(noises), figsize=(4.6 * len(noises), 3.8), sharey=True, squeeze=False)
    for ax, noise in zip(axes[0], noises):
        for arm in [a for a in arms if a in set(epochs["method"])]:
            rows = epochs[(epochs["noise"] == noise) & (epochs["method"] == arm)]
            label = arm if arm in ("standard", "swa") else f"{arm} midpoint"
            colour = None
            for column, style in (("accuracy", "-"), ("validation_accuracy", "--")):
                stats = rows.groupby("epoch")[column].agg(["mean", "sem"])
                line, = ax.plot(stats.index, stats["mean"], style, lw=1.3, color=colour,
                                label=label if style == "-" else None)
                colour, sem = line.get_color(), stats["sem"].fillna(0)
                ax.fill_between(stats.index, stats["mean"] - sem, stats["mean"] + sem, color=colour, alpha=0.15, lw=0)
            stopped = best[(best["noise"] == noise) & (best["method"] == arm)]
            ax.plot(stopped["epoch"].mean(), stopped["accuracy"].mean(), "o", color=colour, ms=6, mec="k", mew=0.6)
        ax.set(title=f"label noise {noise:.0%}", xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy: test (solid), validation (dashed)")
    axes[0, -1].legend(fontsize=7, title="o: best validation epoch", title_fontsize=7, loc="center left",
                       bbox_to_anchor=(1.02, 0.5))  # beside the panels: the curves fill them
    fig.suptitle("network subspaces: accuracy by epoch (mean over seeds, band: +/- 1 SE)")
    fig.tight_layout()
    return save(fig, path)
