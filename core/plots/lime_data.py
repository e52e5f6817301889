"""Figures of the lime_data flow: sequence lengths by task."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots.style import plt, save


def lime_length_histograms(sample, path: Path) -> Path:
    """Histograms of source (left) and target (right) lengths in tokens, one outline per task, from a sample of
    examples (columns task, source_length, target_length)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, column in zip(axes, ("source_length", "target_length")):
        lengths = sample[column].to_numpy()
        bins = np.arange(lengths.min(), lengths.max() + 2) - 0.5 if len(lengths) else 10  # one bin per length
        for task, rows in sample.groupby("task", observed=True):
            ax.hist(rows[column], bins=bins, histtype="step", lw=1.2, label=f"{task} (n={len(rows)})")
        ax.set(xlabel=f"{column.split('_')[0]} length (tokens)", ylabel="examples")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"LIME sequence lengths by task, {len(sample):,} examples")
    fig.tight_layout()
    return save(fig, path)
