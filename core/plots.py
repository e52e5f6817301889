"""Figures saved beside the tables (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: flows run headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: Path) -> Path:
    """Write `fig` as PNG to `path` (parents created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


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


def detection_curves(scores: dict[str, np.ndarray], is_noisy: np.ndarray, path: Path) -> Path:
    """ROC and precision-recall curves of "low score means mislabeled", one line per score."""
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
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="finding mislabeled examples: ROC")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall")
    roc.legend(fontsize=8)
    pr.legend(fontsize=8)
    return save(fig, path)


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


def error_vs_density(errors, path: Path, predicted=None) -> Path:
    """Test error against density (log-log), one line per network and data fraction (mean over seeds);
    dashed lines: `predicted` (same columns plus `predicted_error`), e.g. a scaling-law fit."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups = errors.groupby(["network", "data_fraction"])
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, groups.ngroups)))
    for color, ((network, fraction), rows) in zip(colors, groups):
        mean = rows.groupby("level")[["density", "test_error"]].mean()
        label = network if errors["data_fraction"].nunique() == 1 else f"{network}, data {fraction:g}"
        ax.plot(mean["density"], mean["test_error"], "o-", ms=3, color=color, label=label)
        if predicted is not None:
            fit = predicted[(predicted["network"] == network) & (predicted["data_fraction"] == fraction)]
            fit = fit.groupby("level")[["density", "predicted_error"]].mean()
            ax.plot(fit["density"], fit["predicted_error"], "--", color=color, lw=1)
    ax.set(xscale="log", yscale="log", xlabel="density (fraction of prunable weights kept)", ylabel="test error",
           title="error vs density" + (" (dashed: fit)" if predicted is not None else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return save(fig, path)


def collapse_on_invariant(predictions, params: dict[str, float], path: Path) -> Path:
    """Every network's error / eps_np against m* = l^phi w^psi d: one curve if the joint law holds."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    m = predictions["depth"] ** params["phi"] * predictions["width"] ** params["psi"] * predictions["density"]
    for curve, rows in predictions.assign(m=m).groupby("curve"):
        ax.plot(rows["m"], rows["test_error"] / rows["eps_np"], "o", ms=3, alpha=0.6, label=curve)
    ax.set(xscale="log", yscale="log", xlabel=f"m* = l^{params['phi']:.2f} w^{params['psi']:.2f} d",
           ylabel="test error / unpruned error", title="all networks on the joint invariant")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)
    return save(fig, path)


def predicted_vs_actual(predictions, path: Path) -> Path:
    """Joint-fit prediction against measured error (and the extrapolated ones, when present)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot(predictions["test_error"], predictions["predicted_error"], "o", ms=3, alpha=0.5, label="joint fit")
    if "predicted_error_extrapolation" in predictions:
        held = predictions[predictions["heldout"]]
        ax.plot(held["test_error"], held["predicted_error_extrapolation"], "x", ms=4, label="extrapolated (held out)")
    lims = [predictions["test_error"].min() * 0.8, predictions["test_error"].max() * 1.2]
    ax.plot(lims, lims, "k:", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="measured test error", ylabel="predicted test error", title="prediction")
    ax.legend(fontsize=8)
    return save(fig, path)


def seed_scatter(per_seed, predictions, spread: float, path: Path) -> Path:
    """One panel per curve: each seed's error / joint-fit prediction − 1 against density, the seed mean's over it
    (dip rows ringed), and a band of ± the seed-to-seed spread, where the seeds fall if the fit is exact."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    keys = ["network", "data_fraction", "level"]
    seeds = per_seed.merge(predictions[keys + ["curve", "predicted_error"]], on=keys)
    curves = list(predictions.groupby("curve"))
    cols = min(6, len(curves))
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.0 * rows + 0.5), sharex=True, sharey=True, squeeze=False)
    for ax, (curve, mean) in zip(axes.flat, curves):
        if np.isfinite(spread):
            ax.axhspan(-spread, spread, color="0.85", lw=0)
        ax.axhline(0, color="black", lw=0.6)
        own = seeds[seeds["curve"] == curve]
        ax.plot(own["density"], own["test_error"] / own["predicted_error"] - 1, ".", ms=2.5, color="tab:blue", alpha=0.6)
        mean = mean.sort_values("density")
        deviation = mean["test_error"] / mean["predicted_error"] - 1
        ax.plot(mean["density"], deviation, "-", color="black", lw=1)
        ax.plot(mean["density"][mean["dip"]], deviation[mean["dip"]], "o", mfc="none", mec="tab:red", ms=4)
        ax.set_xscale("log")
        ax.set_title(curve, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    handles = [Line2D([], [], ls="", marker=".", color="tab:blue", label="one seed"),
               Line2D([], [], color="black", label="seed mean"),
               Line2D([], [], ls="", marker="o", mfc="none", mec="tab:red", label="dip (mean below dense error)"),
               Patch(color="0.85", label=f"± seed spread ({spread:.3g})")]
    fig.legend(handles=handles, loc="upper center", ncol=4, fontsize=7, frameon=False)
    fig.supxlabel("density (fraction of prunable weights kept)", fontsize=8)
    fig.supylabel("test error / joint fit − 1", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return save(fig, path)


def correlation_vs_fraction(correlations, path: Path) -> Path:
    """R_p against p, one line per learning rate (mean over seeds, bars: their spread); dashed: R_p = p, no
    correlation between initial and trained weights."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    rates = sorted(correlations["lr"].unique())
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(rates)))
    for color, lr in zip(colors, rates):
        stats = correlations[correlations["lr"] == lr].groupby("p")["r_p"].agg(["mean", "std"])
        ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), fmt="o-", ms=3, capsize=2, color=color,
                    label=f"lr {lr:g}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="R_p = p (uncorrelated)")
    ax.set(xlabel="p (top fraction of weights by magnitude)", ylabel="R_p (overlap of init and trained top p)",
           xlim=(0, 1.02 * correlations["p"].max()), ylim=(0, 1.02), title="initial-trained weight correlation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def accuracy_by_method(results, path: Path) -> Path:
    """Test accuracy against density, one panel per learning rate, one line per method (mean over seeds, bars:
    their spread); dotted: the dense network at that rate."""
    rates = sorted(results["lr"].unique())
    cols = min(3, len(rates))
    rows = -(-len(rates) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), sharey=True, squeeze=False)
    for ax, lr in zip(axes.flat, rates):
        at_rate = results[results["lr"] == lr]
        for method, rows_of in at_rate[at_rate["method"] != "dense"].groupby("method"):
            stats = rows_of.groupby("density")["test_accuracy"].agg(["mean", "std"])
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), fmt="o-", ms=2.5, capsize=2, label=method)
        ax.axhline(at_rate.loc[at_rate["method"] == "dense", "test_accuracy"].mean(), color="k", ls=":", label="dense")
        ax.set(xscale="log", title=f"lr {lr:g}", xlabel="density")
        ax.invert_xaxis()  # sparser to the right, as pruning proceeds
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(rates):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("equal budget of updates: lottery ticket, rewinding, fine-tuning, random re-initialisation")
    fig.tight_layout()
    return save(fig, path)


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


def subspace_paths(alpha, summary, path: Path) -> Path:
    """Test accuracy (top) and ECE (bottom) along each subspace's path, one column per label-noise level, one line
    per method (mean over seeds, band: its standard error); dashed: the standard model's mean."""
    noises = sorted(alpha["noise"].unique())
    fig, axes = plt.subplots(2, len(noises), figsize=(4.2 * len(noises), 6.2), sharex=True, squeeze=False)
    standard = summary[(summary["method"] == "standard") & (summary["point"] == "model")]
    for column, noise in enumerate(noises):
        at_noise = alpha[alpha["noise"] == noise]
        for metric, ax in zip(("accuracy", "ece"), axes[:, column]):
            for method, rows in at_noise.groupby("method"):
                stats = rows.groupby("alpha")[metric].agg(["mean", "sem"])
                line, = ax.plot(stats.index, stats["mean"], lw=1.5, label=method)
                ax.fill_between(stats.index, stats["mean"] - stats["sem"].fillna(0), stats["mean"] + stats["sem"].fillna(0),
                                color=line.get_color(), alpha=0.2, lw=0)
            ax.axhline(standard.loc[standard["noise"] == noise, metric].mean(), color="k", ls="--", lw=1,
                       label="standard training")
            ax.grid(alpha=0.3)
        axes[0, column].set_title(f"label noise {noise:.0%}")
        axes[1, column].set_xlabel("alpha along the path (simplex: edge 0-1)")
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("expected calibration error (20 bins)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("network subspaces: accuracy and calibration along each subspace")
    fig.tight_layout()
    return save(fig, path)


def gains_over_standard_bars(gains, path: Path) -> Path:
    """Per label-noise level, one bar per method: its midpoint's accuracy gain and ECE change over standard training,
    and its ends' ensemble's accuracy gain over a standard ensemble of as many members (error bars: standard
    errors over seeds)."""
    panels = [("accuracy_gain", "midpoint accuracy - standard"), ("ece_change", "midpoint ECE - standard (lower: better)"),
              ("ensemble_gain", "ends' ensemble - standard ensemble")]
    methods, noises = sorted(gains["method"].unique()), sorted(gains["noise"].unique())
    width = 0.8 / len(methods)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (column, title) in zip(axes, panels):
        for i, method in enumerate(methods):
            rows = gains[gains["method"] == method].set_index("noise").reindex(noises)
            ax.bar(np.arange(len(noises)) + (i - (len(methods) - 1) / 2) * width, rows[column],
                   yerr=rows[f"{column}_sem"].fillna(0), width=width, capsize=2, label=method)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xticks=np.arange(len(noises)), xticklabels=[f"{n:.0%}" for n in noises], xlabel="label noise", title=title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.suptitle("network subspaces against standard training (paired by seed)")
    fig.tight_layout()
    return save(fig, path)


def _mean_band(ax, rows, x: str, y: str, label: str) -> None:
    """A line of the mean of `y` over seeds against `x`, with a band of its standard error."""
    stats = rows.groupby(x)[y].agg(["mean", "sem"])
    line, = ax.plot(stats.index, stats["mean"], lw=1.5, label=label)
    sem = stats["sem"].fillna(0)
    ax.fill_between(stats.index, stats["mean"] - sem, stats["mean"] + sem, color=line.get_color(), alpha=0.2, lw=0)


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
            _mean_band(ax, rows, "epoch", column, f"gamma {gamma:g}")
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
            _mean_band(ax, rows, "cap", column, f"gamma {gamma:g}")
    axes[0].set(xlabel="solver iterations (cap)", ylabel="test accuracy", xscale="log")
    axes[1].set(xlabel="solver iterations (cap)", ylabel="relative residual ||f(z) - z|| / ||f(z)||", xscale="log",
                yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"DEQ inference with a capped solver, after epoch {int(last['epoch'].max())}")
    fig.tight_layout()
    return save(fig, path)


def lime_length_histograms(sample, path: Path) -> Path:
    """Histograms of source (left) and target (right) lengths in tokens, one outline per task, from a sample of
    examples (columns task, source_length, target_length)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, column in zip(axes, ("source_length", "target_length")):
        lengths = sample[column].to_numpy()
        bins = np.arange(lengths.min(), lengths.max() + 2) - 0.5 if len(lengths) else 10  # one bin per length
        for task, rows in sample.groupby("task", observed=True):
            ax.hist(rows[column], bins=bins, histtype="step", lw=1.2, label=f"{task} (n={len(rows)})")
        ax.set(xlabel=f"{column.split('_')[0]} length (tokens)", ylabel="examples")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"LIME sequence lengths by task, {len(sample):,} examples")
    fig.tight_layout()
    return save(fig, path)


def lime_transfer_curves(pretrain, finetune, path: Path) -> Path:
    """Left: teacher-forced token accuracy on held-out pretraining examples against the pretraining step, one line
    per arm (exact match there can stay at 0 while the tokens improve); then one panel per downstream training-set
    size: test exact match against the fine-tuning step, one line per arm (means over seeds, bands: standard error)."""
    sizes = sorted(finetune["train_examples"].unique())
    fig, axes = plt.subplots(1, 1 + len(sizes), figsize=(3.6 * (1 + len(sizes)), 3.4), sharey=True)
    for arm, rows in pretrain.groupby("arm", sort=False):
        _mean_band(axes[0], rows, "step", "token_accuracy", arm)
    axes[0].set(xlabel="pretraining step", ylabel="token accuracy | exact match",
                title="pretraining task (held out): token accuracy")
    for ax, size in zip(axes[1:], sizes):
        for arm, rows in finetune[finetune["train_examples"] == size].groupby("arm", sort=False):
            _mean_band(ax, rows, "step", "exact_match", arm)
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
        _mean_band(ax, rows, "train_examples", "exact_match", arm)
        ax.scatter(rows["train_examples"], rows["exact_match"], s=8, color=ax.lines[-1].get_color(), alpha=0.6)
    ax.set(xlabel="downstream training examples", ylabel="test exact match", xscale="log",
           title="sample efficiency on one-step rewriting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)
