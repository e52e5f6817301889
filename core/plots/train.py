"""Figures of the train flow: learning curves and the spread of test accuracies."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots.style import plt, save


def training_summary(epoch_loss: np.ndarray, test_accuracy: np.ndarray, title: str, path: Path) -> Path:
    """Left: each model's training loss per epoch; right: the spread of test accuracies."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = np.arange(1, epoch_loss.shape[1] + 1)
    left.plot(epochs, epoch_loss.T, color="tab:blue", alpha=max(0.05, 1 / len(epoch_loss) ** 0.5), lw=1)
    left.plot(epochs, epoch_loss.mean(0), color="black", lw=2, label="mean over models")
    left.set(xlabel="epoch", ylabel="training loss", yscale="log", title="learning curves")
    left.legend()
    right.hist(test_accuracy, bins=min(30, max(5, len(test_accuracy) // 2)), color="tab:green")
    right.axvline(test_accuracy.mean(), color="black", ls="--", label=f"mean {test_accuracy.mean():.3f}")
    right.set(xlabel="test accuracy", ylabel="models", title=f"{len(test_accuracy)} models")
    right.legend()
    fig.suptitle(title)
    return save(fig, path)
