"""Figures of the deq flow: training curves per gamma, inference with a capped solver."""
from __future__ import annotations

from pathlib import Path

from core.plots.style import mean_band, plt, save


def deq_training_curves(epochs, path: Path) -> Path:
    """Per epoch, one line per gamma (mean over seeds, band: standard error): training forward and backward solver
    steps, ||J_f||_F^2 / D, the spectral radius of J_f(z*), and probe accuracy."""
    panels = [("train_forward_steps", "forward solver steps (training)"),
              ("train_backward_steps", "backward solver steps (training)"),
              ("jacobian_frobenius", "||J_f(z*)||_F^2 / d"), ("spectral_radius", "spectral radius of J_f(z*)"),
              ("accuracy", "test accuracy")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4))
    for ax, (column, title) in zip(axes, panels):
        for gamma, rows in epochs.groupby("gamma"):
            mean_band(ax, rows, "epoch", column, f"gamma {gamma:g}")
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("DEQ training with and without Jacobian regularisation")
    fig.tight_layout()
    return save(fig, path)


def capped_inference_curves(inference, path: Path) -> Path:
    """At the last epoch, accuracy (left) and relative residual (right, log) against the solver's iteration cap,
    one line per gamma (mean over seeds, band: standard error)."""
    last = inference[inference["epoch"] == inference["epoch"].max()]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for gamma, rows in last.groupby("gamma"):
        for ax, column in zip(axes, ("accuracy", "residual")):
            mean_band(ax, rows, "cap", column, f"gamma {gamma:g}")
    axes[0].set(xlabel="solver iterations (cap)", ylabel="test accuracy", xscale="log")
    axes[1].set(xlabel="solver iterations (cap)", ylabel="relative residual ||f(z) - z|| / ||f(z)||", xscale="log",
                yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"DEQ inference with a capped solver, after epoch {int(last['epoch'].max())}")
    fig.tight_layout()
    return save(fig, path)
