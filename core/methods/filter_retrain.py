"""Outlier filtering: drop a fraction of training examples by score, then retrain on the rest."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from core.config import derive_seed
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
