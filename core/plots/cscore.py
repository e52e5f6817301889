"""Figures of the C-score flow: scores per class, the extreme examples, held-out accuracy by ratio, and
mislabel detection (which the proxies flow draws too, for its proxies beside the C-score)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.plots.style import plt, save


def per_class_histograms(scores: np.ndarray, labels: np.ndarray, class_names: list[str], xlabel: str, path: Path) -> Path:
    """One histogram of `scores` per class, on shared axes."""
    n = len(class_names)
    cols = min(5, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), sharex=True, sharey=True, squeeze=False)
    bins = np.linspace(np.nanmin(scores), np.nanmax(scores), 21) if np.isfinite(scores).any() else 20
    for c, ax in enumerate(axes.flat):
        if c >= n:
            ax.axis("off")
            continue
        values = scores[(labels == c) & np.isfinite(scores)]
        ax.hist(values, bins=bins, color="tab:blue", log=True)  # log counts: the rare low scores matter
        ax.set_title(f"{class_names[c]} (n={len(values)}, mean {values.mean() if len(values) else np.nan:.2f})", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    fig.tight_layout()
    return save(fig, path)


def _scaled(example: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] (constant examples become 0)."""
    return (example - example.min()) / (np.ptp(example) or 1.0)


def _chosen_per_class(scores: np.ndarray, labels: np.ndarray, classes: int, per_side: int) -> list[list[int]]:
    """Per class: indices of its `per_side` lowest, then `per_side` highest finite scores."""
    rows = []
    for c in range(classes):
        members = np.flatnonzero((labels == c) & np.isfinite(scores))
        ranked = members[np.argsort(scores[members], kind="stable")]
        rows.append(list(ranked[:per_side]) + list(ranked[-per_side:] if len(ranked) >= per_side else []))
    return rows


LABEL_BAND = 0.4  # height of the text under each example of `extreme_examples`, in example heights
SOURCE_CHARS = 20  # a longer source shows its end (the file name), after an ellipsis


def _short(source: str) -> str:
    """`source` cut to its last SOURCE_CHARS characters, so that it fits under its example."""
    return source if len(source) <= SOURCE_CHARS else "…" + source[-(SOURCE_CHARS - 1):]


def extreme_examples(x: np.ndarray, scores: np.ndarray, labels: np.ndarray, class_names: list[str],
                     path: Path, per_side: int = 5, title: str = "", *, ids: np.ndarray, sources: np.ndarray) -> Path:
    """Per class (row): the `per_side` lowest-scoring examples, then the `per_side` highest, each labelled with its
    score, `example_id` and source (where the user's files hold it), so that any one can be looked up.

    Drawn on one axes (a mosaic of images, or offset line plots for sequences): a grid of 100
    small axes takes seconds to render.
    """
    rows, cols = len(class_names), 2 * per_side
    chosen = _chosen_per_class(scores, labels, rows, per_side)
    if x.ndim == 4:  # [N, C, H, W] images: one mosaic, 1-pixel gaps, a white band under each row for the labels
        _, channels, h, w = x.shape
        band = max(1, round(LABEL_BAND * h))
        pitch = (h + band) / h  # a row's height, in example heights
        mosaic = np.ones((rows * (h + band), cols * (w + 1), channels))
        for r, row in enumerate(chosen):
            for c, i in enumerate(row):
                mosaic[r * (h + band) : r * (h + band) + h, c * (w + 1) : c * (w + 1) + w] = \
                    np.moveaxis(_scaled(x[i]), 0, -1)
    else:
        pitch = 1 + LABEL_BAND
    fig, ax = plt.subplots(figsize=(1.1 * cols + 1, 1.1 * rows * pitch + 0.6))
    if x.ndim == 4:
        ax.imshow(mosaic.squeeze(-1) if channels == 1 else mosaic, cmap="gray", extent=(0, cols, rows * pitch, 0))
    else:  # sequences: each cell's channels as lines, scaled into the cell
        for r, row in enumerate(chosen):
            for c, i in enumerate(row):
                for channel in np.atleast_2d(x[i]):
                    ax.plot(c + 0.05 + 0.9 * np.linspace(0, 1, len(channel)), r * pitch + 0.9 - 0.8 * _scaled(channel),
                            lw=0.8, color="tab:blue")
        ax.set(xlim=(0, cols), ylim=(rows * pitch, 0))
    for r, row in enumerate(chosen):
        for c, i in enumerate(row):
            ax.text(c + 0.5, r * pitch + 1.02, f"{scores[i]:.2f}  id {ids[i]}\n{_short(str(sources[i]))}", ha="center",
                    va="top", fontsize=4.5, color="tab:red" if c < per_side else "tab:green")
    ax.set_yticks(np.arange(rows) * pitch + 0.5, class_names, fontsize=8)
    ax.set_xticks([])
    ax.axvline(per_side, color="k", lw=1)
    ax.set_title(title or f"lowest {per_side} (red) and highest {per_side} (green) per class: score, example_id, "
                 "source")
    return save(fig, path)


def heldout_accuracy_by_ratio(ratios: np.ndarray, train_heldout: np.ndarray, test: np.ndarray, path: Path) -> Path:
    """Mean held-out accuracy of training examples, and test accuracy, against the subset ratio."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ratios, train_heldout, "o-", label="training examples, held out")
    ax.plot(ratios, test, "s--", label="test examples")
    ax.set(xlabel="subset ratio (fraction of training set per model)", ylabel="mean accuracy",
           title="held-out accuracy vs subset size")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def detection_curves(scores: dict[str, np.ndarray], is_noisy: np.ndarray, path: Path,
                     what: str = "mislabeled examples") -> Path:
    """ROC and precision-recall curves of "a low score finds the marked examples" (`what` they are), one line per
    score."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4))
    for name, score in scores.items():
        keep = np.isfinite(score)
        fpr, tpr, _ = roc_curve(is_noisy[keep], -score[keep])
        precision, recall, _ = precision_recall_curve(is_noisy[keep], -score[keep])
        roc.plot(fpr, tpr, label=name)
        pr.plot(recall, precision, label=name)
    roc.plot([0, 1], [0, 1], "k:", lw=1)
    pr.axhline(is_noisy.mean(), color="k", ls=":", lw=1, label="chance")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"finding {what}: ROC")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall")
    roc.legend(fontsize=8)
    pr.legend(fontsize=8)
    return save(fig, path)
