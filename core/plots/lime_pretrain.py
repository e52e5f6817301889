"""Figures of the lime_pretrain flow: transfer curves and sample efficiency per arm."""
from __future__ import annotations

from pathlib import Path

from core.plots.style import mean_band, plt, save
from core.sequence.config import DOWNSTREAM_TASKS


def lime_transfer_curves(pretrain, finetune, path: Path) -> Path:
    """Left: held-out exact match (solid) and teacher-forced token accuracy (dotted) on the pretraining task against
    the pretraining step, one colour per arm; then a row per downstream task, a panel per training-set size: test
    exact match against the fine-tuning step, one line per arm (means over seeds, bands: standard error)."""
    sizes, tasks = sorted(finetune["train_examples"].unique()), list(dict.fromkeys(finetune["task"]))
    fig, axes = plt.subplots(len(tasks), 1 + len(sizes), figsize=(3.6 * (1 + len(sizes)), 3.4 * len(tasks)),
                             sharey=True, squeeze=False)
    colours = {arm: f"C{i}" for i, arm in enumerate(dict.fromkeys([*pretrain["arm"], *finetune["arm"]]))}
    for arm, rows in pretrain.groupby("arm", sort=False):
        mean_band(axes[0, 0], rows, "step", "exact_match", arm, colours[arm])
        mean_band(axes[0, 0], rows, "step", "token_accuracy", f"{arm} (tokens)", colours[arm], ":")
    axes[0, 0].set(xlabel="pretraining step", ylabel="exact match | token accuracy (dotted)",
                   title="pretraining task (held out)")
    if pretrain.empty:
        axes[0, 0].text(0.5, 0.5, "no pretrained arm", ha="center", va="center", transform=axes[0, 0].transAxes)
    for row, task in zip(axes, tasks):
        for ax, size in zip(row[1:], sizes):
            runs = finetune[(finetune["task"] == task) & (finetune["train_examples"] == size)]
            for arm, rows in runs.groupby("arm", sort=False):
                mean_band(ax, rows, "step", "exact_match", arm, colours[arm])
            ax.set(xlabel="fine-tuning step", title=f"{size} training examples")
        row[1].set_ylabel(f"{DOWNSTREAM_TASKS[task]}:\ntest exact match")
        row[1].tick_params(labelleft=True)  # sharey hides them beside the first column
    for ax in axes[1:, 0]:
        ax.axis("off")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    fig.suptitle("LIME pretraining, then term rewriting: test exact match")
    fig.tight_layout()
    return save(fig, path)


def lime_sample_efficiency(finetune, path: Path) -> Path:
    """Per downstream task, test exact match at the last fine-tuning step against the downstream training-set size
    (log), one line per arm (mean over seeds, band: standard error), each seed's value as a dot."""
    last = finetune[finetune["step"] == finetune["step"].max()]
    tasks = list(dict.fromkeys(last["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for arm, rows in last[last["task"] == task].groupby("arm", sort=False):
            mean_band(ax, rows, "train_examples", "exact_match", arm)
            ax.scatter(rows["train_examples"], rows["exact_match"], s=8, color=ax.lines[-1].get_color(), alpha=0.6)
        ax.set(xlabel="downstream training examples", xscale="log",
               title=f"sample efficiency: {DOWNSTREAM_TASKS[task]}")
        sizes = sorted(last["train_examples"].unique())
        ax.set_xticks(sizes, [f"{size:,}" for size in sizes], minor=False)
        ax.minorticks_off()  # the log axis's own labels crowd a range of one decade
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test exact match")
    axes[0, -1].legend(fontsize=7)
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
