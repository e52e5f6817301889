"""Outlier filtering: drop a fraction of training examples by score, then retrain on the rest."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from core.config import derive_seed
from core.findings import MIN_SEEDS, Claim, findings_table, not_testable, paired_difference
from core.methods.cscore import NO_LABEL_NOISE, PAPER
from core.training.experiment import SUBSET_STREAM

ARMS = ("lowest", "random", "highest")  # which examples are removed; "random" and "highest" are controls


def kept_examples(scores: np.ndarray, fraction: float, arm: str, seed: int) -> torch.Tensor:
    """Bool `[N]`: all but round(fraction * N) examples, removing the lowest- or highest-scoring or random ones.

    Examples with a NaN score are never removed by the score arms (nothing is known about them);
    ties are broken by position.
    """
    scores = np.asarray(scores, float)
    n, k = len(scores), round(fraction * len(scores))
    if arm == "random":
        removed = np.random.default_rng(derive_seed(seed, SUBSET_STREAM)).choice(n, size=k, replace=False)
    elif arm in ("lowest", "highest"):
        finite = np.flatnonzero(np.isfinite(scores))
        if k > len(finite):
            raise ValueError(f"cannot remove {k} examples by score: only {len(finite)} of {n} have a finite score")
        ranked = finite[np.argsort(scores[finite] if arm == "lowest" else -scores[finite], kind="stable")]
        removed = ranked[:k]
    else:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    kept = torch.ones(n, dtype=torch.bool)
    kept[torch.as_tensor(removed, dtype=torch.long)] = False
    return kept


def filtering_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard error and count of test accuracy per arm and fraction removed."""
    grouped = table.groupby(["arm", "fraction_removed"])["test_accuracy"]
    summary = grouped.agg(["mean", "sem", "count"]).reset_index()
    return summary.rename(columns={"mean": "mean_test_accuracy", "sem": "se_test_accuracy", "count": "n_models"})


FILTERING_HELPS = Claim(
    PAPER, "Filtering out the outliers, the examples with the lowest C-scores, helps a model trained on the rest "
    "(paraphrased).",
    "test accuracy after removing the lowest-scoring fraction of the training set and retraining from scratch, minus "
    "after removing as many at random, paired by seed")
LOWEST_ARE_MISLABELED = Claim(
    PAPER, "The score identifies out-of-distribution and mislabeled examples at one end of the continuum and strongly "
    "regular examples at the other end.",
    "examples with flipped labels (dataset.label_noise) among those removed: lowest-scoring arm minus random arm, "
    "paired by seed; only the mislabeled end is checked here")


def paired_arms(filtering: pd.DataFrame, column: str) -> pd.DataFrame:
    """`column` of the lowest-scoring arm minus the random arm, per fraction removed (rows) and seed (columns), over
    the seeds both arms have."""
    wide = filtering.pivot_table(index=["fraction_removed", "seed"], columns="arm", values=column)
    return (wide["lowest"] - wide["random"]).dropna().unstack("seed")


def untestable_grid(filtering: pd.DataFrame) -> str | None:
    """Why filtering.parquet's grid cannot test the claims (and the setting that would), or None."""
    seeds = filtering["seed"].nunique()
    if not set(filtering["fraction_removed"]) - {0.0}:
        return "nothing is removed: add a fraction above 0 to fractions"
    if not {"lowest", "random"} <= set(filtering["arm"]):
        return "it needs the lowest and random arms: set arms to include both"
    if seeds < MIN_SEEDS:
        return f"seeds_per_arm={seeds} gives fewer than {MIN_SEEDS} seeds: set seeds_per_arm to {MIN_SEEDS} or more"
    return None


def filter_retrain_findings(filtering: pd.DataFrame, n_noisy: int, scope: str) -> pd.DataFrame:
    """The paper's claims on filtering, one row per claim and fraction removed, from filtering.parquet (score, arm,
    fraction_removed, seed, n_noisy_removed, test_accuracy) and the number of flipped labels in the training set."""
    seeds = filtering["seed"].nunique()
    why = untestable_grid(filtering)
    if why:
        return findings_table([not_testable(c, why, scope, seeds) for c in (FILTERING_HELPS, LOWEST_ARE_MISLABELED)])
    removed = f"removed by {', '.join(sorted(set(filtering['score'])))}"
    rows = [paired_difference(FILTERING_HELPS, differences.to_numpy(), f"{scope}; {fraction:g} {removed}")
            for fraction, differences in paired_arms(filtering, "test_accuracy").iterrows()]
    if not n_noisy:
        return findings_table([*rows, not_testable(LOWEST_ARE_MISLABELED, NO_LABEL_NOISE, scope, seeds)])
    rows += [paired_difference(LOWEST_ARE_MISLABELED, differences.to_numpy(), f"{scope}; {fraction:g} {removed}")
             for fraction, differences in paired_arms(filtering, "n_noisy_removed").iterrows()]
    return findings_table(rows)
