"""Figures of the proxies flow: each proxy against the C-score, learning dynamics by C-score bin."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots.style import plt, save


def proxy_scatter(proxies: dict[str, np.ndarray], cscore: np.ndarray, spearman: dict[str, float], path: Path) -> Path:
    """Each proxy against the C-score, with its Spearman correlation in the title."""
    n = len(proxies)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, values) in zip(axes.flat, proxies.items()):
        ax.scatter(cscore, values, s=3, alpha=0.3, rasterized=True)
        ax.set_title(f"{name}\nSpearman {spearman.get(name, np.nan):.3f}", fontsize=8)
        ax.set_xlabel("C-score", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return save(fig, path)


def dynamics_curves(table, path: Path) -> Path:
    """Training accuracy per epoch, one line per C-score quantile bin."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    colors = plt.cm.viridis(np.linspace(0, 1, table["bin"].nunique()))
    for color, (_, rows) in zip(colors, table.groupby("bin")):
        label = f"C-score {rows['cscore_low'].iloc[0]:.2f}-{rows['cscore_high'].iloc[0]:.2f}"
        ax.plot(rows["epoch"], rows["train_accuracy"], marker="o", ms=3, color=color, label=label)
    ax.set(xlabel="epoch", ylabel="training accuracy (on the minibatch, before the update)",
           title="learning dynamics by C-score bin")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
