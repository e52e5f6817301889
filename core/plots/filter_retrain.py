"""Figures of the filter_retrain flow: test accuracy against the fraction removed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots.style import plt, save


def filtering_curve(summary, baseline: tuple[float, float] | None, score: str, path: Path) -> Path:
    """Mean test accuracy (± standard error) against the fraction removed, one line per arm."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arm, rows in summary[summary["arm"] != "none"].groupby("arm"):
        x, y, e = rows["fraction_removed"].to_numpy(), rows["mean_test_accuracy"].to_numpy(), rows["se_test_accuracy"].to_numpy()
        if baseline is not None:
            x, y, e = np.r_[0.0, x], np.r_[baseline[0], y], np.r_[baseline[1], e]
        ax.errorbar(x, y, yerr=np.nan_to_num(e), marker="o", capsize=3, label=f"remove {arm}")
    ax.set(xlabel="fraction of training set removed", ylabel="test accuracy", title=f"filtering by {score}")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)
