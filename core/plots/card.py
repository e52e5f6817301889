"""Figures of the data card: the data map of dataset cartography, and per-class score histograms."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.plots.cscore import per_class_histograms
from core.plots.style import plt, save

MARKED = {"is_noisy": ("wrong label", "x", "black"), "is_foreign": ("foreign", "+", "tab:red")}


def data_map(card: pd.DataFrame, path: Path) -> Path:
    """Variability (x) against confidence (y) of every example, coloured by correctness (Swayamdipta et al. 2020),
    with the known wrong-label and foreign examples drawn over them."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    points = ax.scatter(card["variability"], card["confidence"], c=card["correctness"], cmap="viridis", vmin=0, vmax=1,
                        s=4, alpha=0.6, lw=0)
    fig.colorbar(points, ax=ax, label="correctness (fraction of epochs right)")
    for column, (label, marker, colour) in MARKED.items():
        chosen = card[column].to_numpy(bool) if column in card else np.zeros(len(card), bool)
        if chosen.any():
            ax.scatter(card["variability"][chosen], card["confidence"][chosen], marker=marker, s=14, c=colour, lw=0.6,
                       alpha=0.7, label=f"{label} ({chosen.sum()})")
    ax.set(xlabel="variability (std over epochs of the given label's probability)",
           ylabel="confidence (mean over epochs)", xlim=(0, None), ylim=(0, 1),
           title=f"data map of {len(card)} training examples")
    ax.text(0.98, 0.03, "top left: easy to learn\nbottom left: hard to learn (wrong labels)\nright: ambiguous",
            transform=ax.transAxes, ha="right", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    return save(fig, path)


def score_histograms(card: pd.DataFrame, scores: list[str], class_names: list[str], folder: Path) -> list[Path]:
    """One figure per score column of `card`: its histogram in each class of the given label."""
    labels = card["given_label"].to_numpy()
    return [per_class_histograms(card[score].to_numpy(float), labels, class_names, score,
                                 folder / f"{score.removesuffix('_score')}_histograms.png") for score in scores]
