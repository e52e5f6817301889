"""Figures of the weight_correlation flow: R_p against p, accuracy by method at equal budget."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots.style import plt, save


def correlation_vs_fraction(correlations, path: Path) -> Path:
    """R_p against p, one line per learning rate (mean over seeds, bars: their spread); dashed: R_p = p, no
    correlation between initial and trained weights."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    rates = sorted(correlations["lr"].unique())
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(rates)))
    for color, lr in zip(colors, rates):
        stats = correlations[correlations["lr"] == lr].groupby("p")["r_p"].agg(["mean", "std"])
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), fmt="o-", ms=3, capsize=2, color=color,
                    label=f"lr {lr:g}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="R_p = p (uncorrelated)")
    ax.set(xlabel="p (top fraction of weights by magnitude)", ylabel="R_p (overlap of init and trained top p)",
           xlim=(0, 1.02 * correlations["p"].max()), ylim=(0, 1.02), title="initial-trained weight correlation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def accuracy_by_method(results, path: Path) -> Path:
    """Test accuracy against density, one panel per learning rate, one line per method (mean over seeds, bars:
    their spread); dotted: the dense network at that rate."""
    rates = sorted(results["lr"].unique())
    cols = min(3, len(rates))
    rows = -(-len(rates) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), sharey=True, squeeze=False)
    for ax, lr in zip(axes.flat, rates):
        at_rate = results[results["lr"] == lr]
        for method, rows_of in at_rate[at_rate["method"] != "dense"].groupby("method"):
            stats = rows_of.groupby("density")["test_accuracy"].agg(["mean", "std"])
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), fmt="o-", ms=2.5, capsize=2, label=method)
        ax.axhline(at_rate.loc[at_rate["method"] == "dense", "test_accuracy"].mean(), color="k", ls=":", label="dense")
        ax.set(xscale="log", title=f"lr {lr:g}", xlabel="density")
        ax.invert_xaxis()  # sparser to the right, as pruning proceeds
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(rates):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("equal budget of updates: lottery ticket, rewinding, fine-tuning, random re-initialisation")
    fig.tight_layout()
    return save(fig, path)
