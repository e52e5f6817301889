"""Out-of-sample predicted probabilities from K-fold models trained together, and cleanlab's scores on them.

cleanlab (Northcutt et al.) needs each training example's class probabilities from a model that did
not train on it. Here the K fold models are one ensemble: model k trains on every fold but k, and
example i takes its probabilities from the model of its own fold. cleanlab itself is optional
(`pip install -e '.[cleanlab]'`) and imported only when its scores are asked for.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import Tensor

from core.config import derive_seed
from core.training.experiment import SUBSET_STREAM


def fold_assignment(n: int, folds: int, seed: int) -> np.ndarray:
    """`[n]` fold of each example: a seeded permutation dealt round-robin, so fold sizes differ by at most one."""
    if not 2 <= folds <= n:
        raise ValueError(f"folds must lie between 2 and the {n} examples; got {folds}")
    fold_of = np.empty(n, np.int64)
    fold_of[np.random.default_rng(derive_seed(seed, SUBSET_STREAM)).permutation(n)] = np.arange(n) % folds
    return fold_of


def fold_subsets(fold_of: np.ndarray, folds: int) -> Tensor:
    """Bool `[folds, n]`: model k trains on every example outside fold k."""
    return torch.from_numpy(fold_of[None, :] != np.arange(folds)[:, None])


def out_of_sample_probabilities(probabilities: Tensor, fold_of: np.ndarray) -> np.ndarray:
    """`[n, C]`: each example's row from the model of its own fold (`probabilities` is `[folds, n, C]`)."""
    return probabilities[torch.from_numpy(fold_of), torch.arange(len(fold_of))].numpy()


def cleanlab_installed() -> bool:
    """Whether the optional cleanlab package can be imported."""
    return importlib.util.find_spec("cleanlab") is not None


def cleanlab_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """cleanlab's label-quality score (self-confidence; higher = more likely right) and `find_label_issues`
    (True = flagged), on out-of-sample probabilities `[n, C]`."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as err:
        raise ImportError("cleanlab scores need the optional extra: pip install -e '.[cleanlab]'") from err
    labels = np.asarray(labels, np.int64)
    return {"cleanlab_label_quality": get_label_quality_scores(labels, probabilities),
            # n_jobs=1: cleanlab would fork workers, and a fork of a threaded process (torch, Prefect) can hang
            "cleanlab_issue": find_label_issues(labels, probabilities, n_jobs=1)}
