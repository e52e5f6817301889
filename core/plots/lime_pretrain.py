"""Figures of the lime_pretrain flow: transfer curves and sample efficiency per arm."""
from __future__ import annotations

from pathlib import Path

from core.plots.style import mean_band, plt, save


def lime_transfer_curves(pretrain, finetune, path: Path) -> Path:
    """Left: teacher-forced token accuracy on held-out pretraining examples against the pretraining step, one line
    per arm (exact match there can stay at 0 while the tokens improve); then one panel per downstream training-set
    size: test exact match against the fine-tuning step, one line per arm (means over seeds, bands: standard error)."""
    sizes = sorted(finetune["train_examples"].unique())
    fig, axes = plt.subplots(1, 1 + len(sizes), figsize=(3.6 * (1 + len(sizes)), 3.4), sharey=True)
    for arm, rows in pretrain.groupby("arm", sort=False):
        mean_band(axes[0], rows, "step", "token_accuracy", arm)
    axes[0].set(xlabel="pretraining step", ylabel="token accuracy | exact match",
                title="pretraining task (held out): token accuracy")
    for ax, size in zip(axes[1:], sizes):
        for arm, rows in finetune[finetune["train_examples"] == size].groupby("arm", sort=False):
            mean_band(ax, rows, "step", "exact_match", arm)
        ax.set(xlabel="fine-tuning step", title=f"rewriting, {size} examples: exact match")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.suptitle("LIME pretraining, then one-step rewriting")
    fig.tight_layout()
    return save(fig, path)


def lime_sample_efficiency(finetune, path: Path) -> Path:
    """Test exact match at the last fine-tuning step against the downstream training-set size (log), one line per
    arm (mean over seeds, band: standard error), each seed's value as a dot."""
    last = finetune[finetune["step"] == finetune["step"].max()]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for arm, rows in last.groupby("arm", sort=False):
        mean_band(ax, rows, "train_examples", "exact_match", arm)
        ax.scatter(rows["train_examples"], rows["exact_match"], s=8, color=ax.lines[-1].get_color(), alpha=0.6)
    ax.set(xlabel="downstream training examples", ylabel="test exact match", xscale="log",
           title="sample efficiency on one-step rewriting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def lime_learning_curves(curves, path: Path) -> Path:
    """Held-out exact match (top) and token accuracy (bottom) of each pretraining setting (`name`), against the step
    (left) and against training seconds (right): the learning curves of bench/lime_learning.py."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharey="row")
    for name, rows in curves.groupby("name", sort=False):
        for row, figure in enumerate(("exact_match", "token_accuracy")):
            for column, x in enumerate(("step", "seconds")):
                mean_band(axes[row, column], rows, x, figure, name)
    for (row, column), ax in zip([(r, c) for r in range(2) for c in range(2)], axes.flat):
        ax.set(xlabel=("pretraining step", "training seconds (evaluation left out)")[column],
               ylabel=("held-out exact match", "held-out token accuracy")[row] if column == 0 else None)
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=7)
    fig.suptitle("LIME pretraining: learning curves (greedy decoding on held-out examples)")
    fig.tight_layout()
    return save(fig, path)
