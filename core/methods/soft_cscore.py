"""Soft C-scores and cleanlab from the holdout runs.

The C-score averages each held-out model's 0/1 correctness: over the models of a ratio that did not train on the
example, then over ratios. Its soft forms average, the same way, each held-out model's probability of the given
label (`cscore_soft`) or its margin, the logit of the given label minus the largest other (`cscore_margin`): the
many examples that every held-out model gets wrong tie at a C-score of 0, and these order them.
The same average of the held-out models' whole probability vectors is an out-of-sample prediction for every
example, which is what cleanlab takes as `pred_probs`: its labels issues then cost no training of their own.
"""
from __future__ import annotations

import numpy as np

from core.methods.label_quality import cleanlab_scores

SOFT_SCORES = {"cscore_soft": "train_label_prob", "cscore_margin": "train_margin"}  # score: its per-model column


def soft_holdout_scores(in_subset: np.ndarray, values: np.ndarray, ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per example (columns of `values` `[R, N]`), the mean over ratios of the mean of `values` over the models of that
    ratio that held it out (not `in_subset`), and its standard error sqrt(sum_s var_s / n_s) / S', var_s the sample
    variance of those n_s values; NaN where no ratio held the example out."""
    in_subset, values, ratios = np.asarray(in_subset, bool), np.asarray(values, np.float64), np.asarray(ratios, float)
    if in_subset.shape != values.shape or len(ratios) != len(in_subset):
        raise ValueError(f"in_subset {in_subset.shape}, values {values.shape} and ratios ({len(ratios)}) must describe "
                         "the same models and examples")
    means, errors = [], []
    for s in np.unique(ratios):
        held, value = ~in_subset[ratios == s], values[ratios == s]
        n = held.sum(0)
        mean = _divide(np.where(held, value, 0.0).sum(0), n)
        squares = np.where(held, (value - np.nan_to_num(mean)) ** 2, 0.0).sum(0)
        spread = _divide(squares, n - 1)
        # one held-out model has no spread of its own: the ratio's mean spread over examples stands in for it
        pooled = float(np.nanmean(spread)) if np.isfinite(spread).any() else 0.0
        means.append(mean)
        errors.append(_divide(np.where(n >= 2, spread, pooled), n))
    means, errors = np.stack(means), np.stack(errors)
    valid = np.isfinite(means)
    n_valid = valid.sum(0)
    score = _divide(np.where(valid, means, 0.0).sum(0), n_valid)
    return score, _divide(np.sqrt(np.where(valid, errors, 0.0).sum(0)), n_valid)


def mean_heldout_probabilities(ratios: np.ndarray, counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """`[N, C]` held-out probabilities: per ratio, the summed softmax of the models that held each example out
    (`sums` `[shards, N, C]`, `counts` `[shards, N]` such models, `ratios` `[shards]`) over their count, then the mean
    over the ratios that held it out; NaN rows for an example no model held out."""
    ratios, counts, sums = np.asarray(ratios, float), np.asarray(counts, np.int64), np.asarray(sums, np.float64)
    per_ratio = [_divide(sums[ratios == s].sum(0), counts[ratios == s].sum(0)[:, None])
                 for s in np.unique(ratios)]  # each [N, C]
    per_ratio = np.stack(per_ratio)
    valid = np.isfinite(per_ratio[..., 0])
    return _divide(np.where(valid[..., None], per_ratio, 0.0).sum(0), valid.sum(0)[:, None])


def cleanlab_from_holdout(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """cleanlab's label quality and issue flag (`cleanlab_scores`) with the averaged held-out `probabilities` as its
    `pred_probs`; examples without any (never held out) get NaN and False, and take no part."""
    scored = np.isfinite(probabilities).all(1)
    quality, issue = np.full(len(labels), np.nan), np.zeros(len(labels), bool)
    if scored.any():
        found = cleanlab_scores(np.asarray(labels)[scored], probabilities[scored])
        quality[scored], issue[scored] = found["cleanlab_label_quality"], found["cleanlab_issue"]
    return {"cleanlab_holdout_label_quality": quality, "is_cleanlab_holdout_issue": issue}


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator where the denominator is positive, NaN elsewhere (no warnings)."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, np.float64), np.asarray(denominator, np.float64))
    out = np.full(numerator.shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)
