"""What every figure shares: matplotlib without a display, `save`, and the mean-over-seeds band."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: flows run headless
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: Path) -> Path:
    """Write `fig` as PNG to `path` (parents created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def mean_band(ax, rows, x: str, y: str, label: str, color: str | None = None, linestyle: str = "-") -> None:
    """A line of the mean of `y` over seeds against `x`, with a band of its standard error."""
    stats = rows.groupby(x)[y].agg(["mean", "sem"])
    line, = ax.plot(stats.index, stats["mean"], lw=1.5, label=label, color=color, linestyle=linestyle)
    sem = stats["sem"].fillna(0)
    ax.fill_between(stats.index, stats["mean"] - sem, stats["mean"] + sem, color=line.get_color(), alpha=0.2, lw=0)
