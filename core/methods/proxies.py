"""Cheap proxies of the C-score, each oriented so that higher means more regular.

Learning-speed proxies come from what the trainer records on each minibatch (no extra pass):
arrays `[K, E, N]` over models, epochs and training examples, with `seen` marking the entries
that were recorded. Density proxies work on any feature matrix (inputs or hidden activations).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.neighbors import LocalOutlierFactor

from core.findings import MIN_SEEDS, Z, Claim, beyond, findings_table, mean_and_se, not_testable, paired_difference, row
from core.methods.cscore import PAPER, spearman_of_finite


def _mean_seen(values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Mean over models and epochs of the recorded entries, per example (NaN if never recorded)."""
    total = np.where(seen, values, 0.0).sum((0, 1))
    count = seen.sum((0, 1))
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def cumulative_label_probability(label_prob: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Mean probability of the given label over training (learning speed; Jiang et al. Sec. 5)."""
    return _mean_seen(label_prob, seen)


def cumulative_accuracy(correct: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Fraction of recorded epochs in which the example was classified correctly."""
    return _mean_seen(correct.astype(float), seen)


def area_under_margin(margin: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """AUM (Pleiss et al. 2020): mean over epochs of the given-label logit minus the largest other."""
    return _mean_seen(margin, seen)


def forgetting_events(correct: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Mean over the models that saw the example of its correct -> incorrect transitions between
    consecutive recorded epochs (Toneva et al. 2019); NaN if no model saw it. A model that saw it
    but never classified it correctly counts E events, more than any learned example can have."""
    k, epochs, n = correct.shape
    previous = np.zeros((k, n), bool)
    has_previous = np.zeros((k, n), bool)
    events = np.zeros((k, n))
    for e in range(epochs):
        now, recorded = correct[:, e], seen[:, e]
        events += recorded & has_previous & previous & ~now
        previous = np.where(recorded, now, previous)
        has_previous |= recorded
    never_learned = ~(correct & seen).any(1)
    per_model = np.where(never_learned, float(epochs), events)
    models = seen.any(1)  # a model that never drew the example has nothing to say about it
    total, count = np.where(models, per_model, 0.0).sum(0), models.sum(0)
    return np.divide(total, count, out=np.full(n, np.nan), where=count > 0)


def median_bandwidth(features: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance over a seeded sample of examples (the median heuristic)."""
    x = torch.as_tensor(features, dtype=torch.float32).flatten(1)
    if len(x) > sample:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:sample]]
    distances = torch.pdist(x)
    return float(distances.median()) if len(distances) else 1.0


def kernel_density_proxies(features: np.ndarray, labels: np.ndarray, bandwidth: float,
                           chunk: int = 1024, device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """RBF kernel densities k(x, x') = exp(-|x - x'|^2 / (2 h^2)), leaving each example out.

    Returns `density` (all other examples), `same_label_density` (other examples of its label)
    and `label_contrast` (same-label minus other-label density). Rows are processed `chunk` at a
    time on `device` (O(N^2 F) work), so memory stays at chunk x N kernel values.
    """
    x = torch.as_tensor(features, dtype=torch.float32).flatten(1).to(device)
    y = torch.as_tensor(labels, dtype=torch.long)
    n, classes = len(x), int(y.max()) + 1
    onehot = torch.nn.functional.one_hot(y, classes).float().to(device)
    per_class = onehot.sum(0)
    sums = torch.empty(n, classes, dtype=torch.float64)
    for start in range(0, n, chunk):
        kernel = torch.exp(-torch.cdist(x[start : start + chunk], x).square() / (2 * bandwidth**2))
        sums[start : start + chunk] = (kernel @ onehot).double().cpu()
    own = sums.gather(1, y.unsqueeze(1)).squeeze(1) - 1.0  # drop k(x, x) = 1
    same_count, other_count = per_class[y].double() - 1, float(n) - per_class[y].double()
    same = torch.where(same_count > 0, own / same_count.clamp(min=1), torch.nan)
    other = torch.where(other_count > 0, (sums.sum(1) - 1.0 - own) / other_count.clamp(min=1), torch.nan)
    return {
        "density": ((sums.sum(1) - 1.0) / max(n - 1, 1)).numpy(),
        "same_label_density": same.numpy(),
        "label_contrast": (same - other).numpy(),
    }


def local_outlier_factor(features: np.ndarray, n_neighbors: int = 20) -> np.ndarray:
    """scikit-learn's negative local outlier factor: near -1 for inliers, lower for outliers."""
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    lof = LocalOutlierFactor(n_neighbors=min(n_neighbors, len(x) - 1))
    lof.fit(x)
    return lof.negative_outlier_factor_


def detection_metrics(score: np.ndarray, is_noisy: np.ndarray) -> dict[str, float]:
    """How well "low score means mislabeled" finds the noisy examples: AUROC, AP, precision at k = #noisy."""
    score, is_noisy = np.asarray(score, float), np.asarray(is_noisy, bool)
    keep = np.isfinite(score)
    score, is_noisy = score[keep], is_noisy[keep]
    k = int(is_noisy.sum())
    if k == 0 or k == len(score):
        return {"auroc": np.nan, "average_precision": np.nan, "precision_at_k": np.nan, "k": k}
    lowest = np.argsort(score, kind="stable")[:k]
    return {
        "auroc": float(roc_auc_score(is_noisy, -score)),
        "average_precision": float(average_precision_score(is_noisy, -score)),
        "precision_at_k": float(is_noisy[lowest].mean()),
        "k": k,
    }


def rank_correlations(proxy: np.ndarray, target: np.ndarray, n_bootstrap: int = 200, seed: int = 0,
                      level: float = 0.95) -> dict[str, float]:
    """Spearman and Kendall correlation over finite pairs, with percentile bootstrap intervals."""
    keep = np.isfinite(proxy) & np.isfinite(target)
    a, b = np.asarray(proxy)[keep], np.asarray(target)[keep]
    out = {"n": int(keep.sum()), "spearman": float(stats.spearmanr(a, b).statistic),
           "kendall": float(stats.kendalltau(a, b).statistic)}
    rng = np.random.default_rng(seed)
    draws = {"spearman": [], "kendall": []}
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(a), len(a))
        draws["spearman"].append(stats.spearmanr(a[pick], b[pick]).statistic)
        draws["kendall"].append(stats.kendalltau(a[pick], b[pick]).statistic)
    tail = (1 - level) / 2 * 100
    for name, values in draws.items():
        low, high = np.nanpercentile(values, [tail, 100 - tail]) if values else (np.nan, np.nan)
        out[f"{name}_low"], out[f"{name}_high"] = float(low), float(high)
    return out


def learning_dynamics(correct: np.ndarray, seen: np.ndarray, cscore: np.ndarray, bins: int = 5) -> pd.DataFrame:
    """Training accuracy per epoch of the examples in each C-score quantile bin (bin 0 = lowest scores).

    The paper's finding to check: high-score examples are learned first.
    """
    finite = np.isfinite(cscore)
    # quantile edges collapse when many scores tie (e.g. at 1.0): rank-based bins keep them equal-sized
    ranks = np.argsort(np.argsort(cscore[finite], kind="stable"), kind="stable")
    member = np.full(len(cscore), -1)
    member[finite] = ranks * bins // max(finite.sum(), 1)
    rows = []
    for b in range(bins):
        chosen = member == b
        hits = (correct[:, :, chosen] & seen[:, :, chosen]).sum((0, 2))
        counts = seen[:, :, chosen].sum((0, 2))
        values = cscore[chosen]
        low, high = (float(values.min()), float(values.max())) if len(values) else (np.nan, np.nan)  # fewer examples than bins
        for epoch in range(correct.shape[1]):
            rows.append({"epoch": epoch + 1, "bin": b, "cscore_low": low, "cscore_high": high,
                         "n_examples": int(chosen.sum()),
                         "train_accuracy": hits[epoch] / counts[epoch] if counts[epoch] else np.nan})
    return pd.DataFrame(rows)


def training_proxies(label_prob: np.ndarray, correct: np.ndarray, margin: np.ndarray, el2n: np.ndarray,
                     seen: np.ndarray, final_loss: np.ndarray, el2n_epoch: int) -> dict[str, np.ndarray]:
    """The learning-speed family from `[K, E, N]` records and `[K, N]` final losses, higher = more regular."""
    at_epoch = (slice(None), slice(el2n_epoch - 1, el2n_epoch))
    return {
        "cum_label_prob": cumulative_label_probability(label_prob, seen),
        "cum_accuracy": cumulative_accuracy(correct, seen),
        "neg_forgetting": -forgetting_events(correct, seen),
        "aum": area_under_margin(margin, seen),
        "neg_el2n": -_mean_seen(el2n[at_epoch], seen[at_epoch]),
        "neg_final_loss": -np.asarray(final_loss).mean(0),
    }


def density_proxies(features: np.ndarray, labels: np.ndarray, bandwidth: float | None, prefix: str,
                    lof_neighbors: int | None = None, chunk: int = 1024,
                    device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """RBF densities (bandwidth by the median heuristic when None) and optionally LOF, names prefixed."""
    h = bandwidth or median_bandwidth(features)
    densities = kernel_density_proxies(features, labels, h, chunk, device)
    out = {f"{prefix}_{name}": values for name, values in densities.items()}
    if lof_neighbors:
        out[f"{prefix}_lof"] = local_outlier_factor(features, lof_neighbors)
    return out


SPEED_TRACKS_CSCORE = Claim(
    PAPER, "We identify computationally inexpensive proxies to the consistency score using statistics collected "
    "during training.",
    "Spearman rho between one model's cumulative label probability (a learning-speed proxy, Sec. 5; here recorded on "
    "the minibatches as they train, not in a separate pass) and the C-score of cscore_run, per model (seed)")
SPEED_BEATS_INPUT_DENSITY = Claim(
    PAPER, "The learning-speed based proxies correlate with the C-score better than the pairwise-distance based ones "
    "(paraphrased).",
    "rho(one model's cumulative label probability, C-score) minus rho(input-space label-contrast kernel density, "
    "C-score), per model (seed)")
HIDDEN_BEATS_INPUT_DENSITY = Claim(
    PAPER, "The pairwise-distance proxy correlates with the C-score better when computed in a learned hidden "
    "representation than in the input space (paraphrased).",
    "rho(label-contrast kernel density in one model's penultimate layer, C-score) minus rho(the same density in input "
    "space, C-score), per model (seed)")
REGULAR_LEARNED_FIRST = Claim(
    PAPER, "Examples with high C-scores are learned faster during training than examples with low C-scores "
    "(paraphrased).",
    "training accuracy of the highest C-score bin minus the lowest (dynamics_bins rank bins), averaged over epochs, "
    "per model (seed)")
PROXY_CLAIMS = (SPEED_TRACKS_CSCORE, SPEED_BEATS_INPUT_DENSITY, HIDDEN_BEATS_INPUT_DENSITY, REGULAR_LEARNED_FIRST)
STRONG_CORRELATION = 0.5  # a proxy's rho must clear this: the usual cut-off of a strong correlation


def top_minus_bottom_learning(correct: np.ndarray, seen: np.ndarray, cscore: np.ndarray, bins: int) -> float:
    """Training accuracy of the highest C-score bin minus the lowest, mean over the epochs that have both."""
    curves = learning_dynamics(correct, seen, cscore, bins).pivot(index="epoch", columns="bin", values="train_accuracy")
    return float(np.nanmean(curves[bins - 1] - curves[0]))


def proxies_findings(proxies: pd.DataFrame, records: dict[str, np.ndarray], hidden_label_contrast: np.ndarray,
                     cscore: np.ndarray | None, bins: int, scope: str) -> pd.DataFrame:
    """The paper's claims on proxies, one model (seed) per replicate: `records` holds the `[K, E, N]` training records
    (seen, correct, label_prob), `hidden_label_contrast` `[K, N]`, `cscore` the C-score of each row of `proxies`."""
    models = len(records["seen"])
    if cscore is None:
        why = "no C-score to compare with; set cscore_run to the id of a cscore run on the same data"
        return findings_table([not_testable(claim, why, scope, models) for claim in PROXY_CLAIMS])
    if models < MIN_SEEDS:
        why = f"n_models={models} gives fewer than {MIN_SEEDS} seeds; set n_models to {MIN_SEEDS} or more"
        return findings_table([not_testable(claim, why, scope, models) for claim in PROXY_CLAIMS])
    seen, correct, label_prob = records["seen"], records["correct"], records["label_prob"]
    each = range(models)
    speed = [spearman_of_finite(cumulative_label_probability(label_prob[[k]], seen[[k]]), cscore) for k in each]
    hidden = [spearman_of_finite(np.asarray(hidden_label_contrast[k], float), cscore) for k in each]
    input_space = spearman_of_finite(proxies["input_label_contrast"].to_numpy(float), cscore)
    estimate, se, n = mean_and_se(speed)
    rule = (f"mean rho over seeds > {STRONG_CORRELATION:g} (the usual cut-off of a strong correlation; the paper gives "
            f"no number) by more than {Z:g} SE: supported; < {STRONG_CORRELATION:g} by more than {Z:g} SE: not "
            f"supported; else inconclusive (and with < {MIN_SEEDS} seeds)")
    return findings_table([
        row(SPEED_TRACKS_CSCORE, estimate, se, n, beyond(estimate, se, n, STRONG_CORRELATION), rule, scope),
        paired_difference(SPEED_BEATS_INPUT_DENSITY, np.subtract(speed, input_space), scope),
        paired_difference(HIDDEN_BEATS_INPUT_DENSITY, np.subtract(hidden, input_space), scope),
        paired_difference(REGULAR_LEARNED_FIRST, [top_minus_bottom_learning(correct[[k]], seen[[k]], cscore, bins)
                                                  for k in each], scope),
    ])
