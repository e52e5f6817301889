"""Figures of the dct_sparse flow: test accuracy against trainable parameters."""
from __future__ import annotations

from pathlib import Path

from core.plots.style import plt, save

LINE_STYLES = {"dct_sparse": "-", "sparse": "--", "dense": ":"}


def accuracy_vs_trainable_params(results, chance: float, path: Path) -> Path:
    """Test accuracy against trainable parameters (log), one line per layer type and mask rule (mean over seeds,
    bars: their spread; colour: the rule, solid DCT+Sparse, dashed plain sparse, the dense network a star), each
    DCT+Sparse point on random masks labelled with its density; chance level dotted."""
    if "mask_rule" not in results:  # a table written before mask rules: every mask was random
        results = results.assign(mask_rule=(results["layer_type"] != "dense").map({True: "random", False: "none"}))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colours = {rule: f"C{i}" for i, rule in enumerate(sorted(set(results["mask_rule"]) - {"none"}))}
    for (layer_type, rule), rows in results.groupby(["layer_type", "mask_rule"]):
        stats = rows.groupby("density").agg(params=("trainable_params", "mean"), mean=("test_accuracy", "mean"),
                                            std=("test_accuracy", "std"))
        label = layer_type if rule == "none" else f"{layer_type} ({rule})"
        ax.errorbar(stats["params"], stats["mean"], yerr=stats["std"].fillna(0), fmt="*" if rule == "none" else "o",
                    ls=LINE_STYLES.get(layer_type, "-"), ms=9 if rule == "none" else 4, capsize=2,
                    color=colours.get(rule, "black"), label=label)
        if layer_type == "dct_sparse" and rule == "random":
            for density, row in stats.iterrows():
                ax.annotate(f"{density:.2%}", (row["params"], row["mean"]), fontsize=6, textcoords="offset points",
                            xytext=(3, -9))
    ax.axhline(chance, color="gray", ls=":", label="chance")
    ax.set(xscale="log", xlabel="trainable parameters (weights kept + biases + alpha)", ylabel="test accuracy",
           title="sparse from initialisation: DCT+Sparse (solid) and plain sparse (dashed) by mask rule")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return save(fig, path)
