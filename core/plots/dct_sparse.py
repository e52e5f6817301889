"""Figures of the dct_sparse flow: test accuracy against trainable parameters."""
from __future__ import annotations

from pathlib import Path

from core.plots.style import plt, save


def accuracy_vs_trainable_params(results, chance: float, path: Path) -> Path:
    """Test accuracy against trainable parameters (log), one line per layer type (mean over seeds, bars: their
    spread), each point labelled with its density; chance level dotted."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for layer_type, rows in results.groupby("layer_type"):
        stats = rows.groupby("density").agg(params=("trainable_params", "mean"), mean=("test_accuracy", "mean"),
                                            std=("test_accuracy", "std"))
        ax.errorbar(stats["params"], stats["mean"], yerr=stats["std"].fillna(0), fmt="o-", ms=4, capsize=2,
                    label=layer_type)
        if layer_type == "dct_sparse":
            for density, row in stats.iterrows():
                ax.annotate(f"{density:.2%}", (row["params"], row["mean"]), fontsize=6, textcoords="offset points",
                            xytext=(3, -9))
    ax.axhline(chance, color="gray", ls=":", label="chance")
    ax.set(xscale="log", xlabel="trainable parameters (weights kept + biases + alpha)", ylabel="test accuracy",
           title="sparse from initialisation: dense, sparse, DCT+Sparse")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, path)
