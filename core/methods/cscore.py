"""C-scores by holdout resampling (Jiang, Zhang, Talwar, Mozer, ICML 2021) and the Feldman-Zhang
memorization estimate, computed from dense per-model results.

Inputs are the per-model tables every holdout run produces: which training examples were in the
model's subset (`in_subset`, bool `[R, N]`), which examples it got right (`correct`, bool `[R, N]`),
and the subset ratio of each model (`ratios`, `[R]`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score

from core.findings import MIN_SEEDS, Z, Claim, beyond, findings_table, mean_and_se, not_testable, row
from core.runs.rows import unpack_bool_rows
from core.training.experiment import subset_size


@dataclass
class HoldoutScores:
    """Per-example scores of one set of holdout runs."""

    ratios: np.ndarray  # [S] distinct subset ratios, ascending
    by_ratio: np.ndarray  # [S, N] held-out accuracy at each ratio; NaN where never held out
    heldout_counts: np.ndarray  # [S, N] held-out models at each ratio
    cscore: np.ndarray  # [N] mean over ratios with data
    cscore_se: np.ndarray  # [N] standard error of that mean (binomial, per ratio, smoothed)
    n_heldout: np.ndarray  # [N] held-out models over all ratios


def holdout_scores(in_subset: np.ndarray, correct: np.ndarray, ratios: np.ndarray) -> HoldoutScores:
    """Score each example by how often models that did not train on it still get it right.

    Per ratio s: score_s = (# held-out models correct) / (# held-out models), NaN when no model
    at s held the example out. The C-score is the mean of score_s over the ratios that have one;
    its standard error is sqrt(sum_s p~_s (1 - p~_s) / n_s) / S', the binomial error of each per-ratio
    mean propagated through the average, at p~ = (h + 1/2) / (n + 1) for h of n held-out models right.
    """
    in_subset, correct, ratios = np.asarray(in_subset, bool), np.asarray(correct, bool), np.asarray(ratios, float)
    if in_subset.shape != correct.shape or len(ratios) != len(in_subset):
        raise ValueError(f"in_subset {in_subset.shape}, correct {correct.shape} and ratios ({len(ratios)}) must "
                         "describe the same models and examples")
    levels = np.unique(ratios)
    heldout = ~in_subset
    counts = np.stack([heldout[ratios == s].sum(0) for s in levels]).reshape(len(levels), -1)
    hits = np.stack([(heldout & correct)[ratios == s].sum(0) for s in levels]).reshape(len(levels), -1)
    valid = counts > 0
    by_ratio = _divide(hits, counts, valid)
    n_valid = valid.sum(0)
    # p(1 - p)/n at p = (h + 1/2)/(n + 1): never 0 when a few held-out models agree (two right are not a precise
    # 1.0, and a precision target would stop on them). On simulated outcomes its 90th percentile tracks the true
    # error within 2% from 4 held-out models per ratio on, where the plain p(1 - p)/n runs 22% low and the Beta(1, 1)
    # posterior's 37% (tests/test_cscore.py checks 5%)
    smoothed = (hits + 0.5) / (counts + 1)
    variance = np.where(valid, smoothed * (1 - smoothed) / np.maximum(counts, 1), 0.0).sum(0)
    cscore = _divide(np.where(valid, by_ratio, 0.0).sum(0), n_valid, n_valid > 0)
    cscore_se = _divide(np.sqrt(variance), n_valid, n_valid > 0)
    return HoldoutScores(levels, by_ratio, counts, cscore, cscore_se, counts.sum(0))


SE_QUANTILE = 0.9  # `target_se` bounds this quantile of the per-example standard errors


def se_quantile(cscore_se: np.ndarray, quantile: float = SE_QUANTILE) -> float:
    """The `quantile` of per-example standard errors; an example without a score counts as infinitely uncertain."""
    return float(np.quantile(np.nan_to_num(np.asarray(cscore_se, float), nan=np.inf), quantile, method="higher"))


@dataclass
class Precision:
    """Where adaptive holdout rounds stopped."""

    rounds: int  # rounds trained
    se: float  # the SE_QUANTILE of per-example C-score standard errors after them (NaN when there was no target)
    met: bool  # se <= the target (True when there was none)


Outcomes = tuple[np.ndarray, np.ndarray, np.ndarray]  # (in_subset, correct, ratios) of some models


def rounds_until_precise(run_round: Callable[[int], Callable[[], Outcomes]], max_rounds: int, target_se: float | None,
                         report: Callable[[int, float], None] = lambda rounds, se: None) -> Precision:
    """Call `run_round(0)`, `run_round(1)`, ... until the C-scores are as precise as `target_se` asks, or
    `max_rounds` ran. Each call trains its round and returns a function that reads that round's outcomes:
    each round is read once, and only when there is a target to check. `report(rounds done, SE)` follows each."""
    if target_se is None:
        run_round(0)
        return Precision(1, float("nan"), True)
    outcomes: list[Outcomes] = []
    for done in range(1, max_rounds + 1):
        outcomes.append(run_round(done - 1)())
        se = se_quantile(holdout_scores(*(np.concatenate(column) for column in zip(*outcomes))).cscore_se)
        report(done, se)
        if se <= target_se:
            return Precision(done, se, True)
    return Precision(max_rounds, se, False)


def examples_missing_ratio(design: str, n: int, sizes: np.ndarray, runs: int) -> np.ndarray:
    """Per subset size, the examples of `n` that none of `runs` models holds out: exact for the balanced design,
    expected for the independent one.

    balanced: runs 0..R-1 hold out the first R*h entries of a chain of permutations (h = n - size each), and
    the first n entries are one permutation, so exactly max(0, n - R*h) examples miss. independent: an example
    is in all R subsets, drawn independently, with probability (size / n)^R.
    """
    sizes = np.asarray(sizes, np.int64)
    if design == "balanced":
        return np.maximum(0, n - runs * (n - sizes)).astype(float)
    return n * (sizes / n) ** runs


def runs_to_cover(design: str, n: int, sizes: np.ndarray) -> int:
    """The fewest models per ratio that leave no example missing a ratio: every one held out at every size
    (balanced: max over sizes of ceil(n / (n - size))), or fewer than one expected to miss any (independent)."""
    sizes = np.asarray(sizes, np.int64)
    if design == "balanced":
        return int(np.max(-(-n // (n - sizes))))
    # each size alone needs n (size/n)^R < 1, i.e. R > ln n / ln(n / size): start below that, the sum may need more
    runs = max(1, int(np.max(np.log(n) / np.log(n / np.maximum(sizes, 1)))))
    while examples_missing_ratio(design, n, sizes, runs).sum() >= 1:
        runs += 1
    return runs


def coverage_warning(design: str, n: int, ratios: list[float], runs_per_ratio: int, target_se: float | None,
                     max_runs_per_ratio: int) -> str | None:
    """Two lines saying which ratios `runs_per_ratio` models leave some of the `n` examples out of, the fewest runs
    that cover every example, and whether `target_se`'s rounds would get there; None when every example is covered.

    An example no model holds out at a ratio has no score there: its C-score is the mean of its other ratios,
    biased towards them, and only `n_missing_ratios` records it.
    """
    sizes = np.array([subset_size(ratio, n) for ratio in ratios])
    needed = runs_to_cover(design, n, sizes)
    if runs_per_ratio >= needed:
        return None
    missing = examples_missing_ratio(design, n, sizes, runs_per_ratio)
    # ratios draw their subsets with seeds of their own: an example misses each independently
    missing_some = n * (1 - np.prod(1 - missing / n))
    counts = [f"{m:.0f}" if design == "balanced" else f"about {m:.{0 if m >= 10 else 1}f}" for m in missing]
    shown = min(0.05, missing.max())  # the ratios that matter, the worst one at least
    listed = ", ".join(f"{count} at ratio {r:g}" for r, m, count in zip(ratios, missing, counts) if m >= shown)
    if design == "balanced":
        rule = (f"{needed} runs per ratio hold every example out at every ratio (balanced design: "
                f"ceil(N / (N - floor(sN))) at ratio {ratios[int(np.argmin(n - sizes))]:g})")
    else:
        rule = (f"{needed} runs per ratio leave fewer than one example expected to miss a ratio (independent design: "
                f"sum over ratios of N (floor(sN) / N)^R < 1; holdout_design=balanced needs "
                f"{runs_to_cover('balanced', n, sizes)})")
    if target_se is None:
        then = f"target_se is not set: raise runs_per_ratio to {needed}"
    elif max_runs_per_ratio < needed:
        then = (f"target_se={target_se} cannot get there: max_runs_per_ratio={max_runs_per_ratio} ends the rounds "
                f"first; raise runs_per_ratio to {needed}")
    else:
        rounds = -(-needed // runs_per_ratio)
        then = (f"target_se={target_se} gets there only if still unmet after round {rounds - 1} "
                f"({(rounds - 1) * runs_per_ratio} models per ratio): a met target stops the rounds whatever ratios "
                f"examples miss; raise runs_per_ratio to {needed} to be sure")
    return (f"runs_per_ratio={runs_per_ratio} leaves examples that no model holds out ({listed}, of {n}): about "
            f"{missing_some:.0f} will miss a ratio, their C-scores averaging the other ratios only.\n{rule}; {then}.")


def _divide(numerator: np.ndarray, denominator: np.ndarray, where: np.ndarray) -> np.ndarray:
    """numerator / denominator where `where`, NaN elsewhere (no warnings)."""
    out = np.full(np.shape(numerator), np.nan)
    return np.divide(numerator, denominator, out=out, where=where)


def memorization(in_subset: np.ndarray, correct: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """Feldman-Zhang estimate P(correct | trained on it) - P(correct | held out), NaN if undefined.

    Taken within each subset ratio and averaged over the ratios where both sides have a model:
    pooled over ratios, larger subsets (more accurate, and more likely to hold the example) would
    make even a model that memorises nothing look like it does.
    """
    in_subset, correct, ratios = np.asarray(in_subset, bool), np.asarray(correct, bool), np.asarray(ratios, float)
    differences = []
    for s in np.unique(ratios):
        trained, hits = in_subset[ratios == s], correct[ratios == s]
        n_in, n_out = trained.sum(0), (~trained).sum(0)
        p_in = _divide((trained & hits).sum(0), n_in, n_in > 0)
        p_out = _divide((~trained & hits).sum(0), n_out, n_out > 0)
        differences.append(p_in - p_out)
    differences = np.stack(differences).reshape(-1, in_subset.shape[1])
    n_valid = np.isfinite(differences).sum(0)
    return _divide(np.nansum(differences, 0), n_valid, n_valid > 0)


def spearman_of_finite(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation over the entries finite in both (NaN with fewer than 3, or constant ones)."""
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:  # undefined for constant inputs
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def half_cscores(in_subset: np.ndarray, correct: np.ndarray, ratios: np.ndarray,
                 half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C-scores from two disjoint halves of the runs: those with `half` (bool `[R]`) True, and the rest."""
    return tuple(holdout_scores(in_subset[h], correct[h], ratios[h]).cscore for h in (half, ~half))


def split_half_reliability(in_subset: np.ndarray, correct: np.ndarray, ratios: np.ndarray,
                           half: np.ndarray) -> float:
    """Spearman correlation between C-scores from two disjoint halves of the runs (`half` bool `[R]`)."""
    return spearman_of_finite(*half_cscores(in_subset, correct, ratios, half))


def scores_of_unseen(correct: np.ndarray, ratios: np.ndarray) -> HoldoutScores:
    """Scores of test examples: held out from every run, so every model counts."""
    correct = np.asarray(correct, bool)
    return holdout_scores(np.zeros_like(correct), correct, ratios)


def by_ratio_table(example_ids: np.ndarray, scores: HoldoutScores, sources: np.ndarray) -> pd.DataFrame:
    """Long table: one row per (example, ratio) with its score and held-out count."""
    n_levels, n = scores.by_ratio.shape
    return pd.DataFrame({
        "example_id": np.tile(np.asarray(example_ids), n_levels),
        "source": np.tile(np.asarray(sources, dtype=object), n_levels),
        "ratio": np.repeat(scores.ratios, n),
        "score": scores.by_ratio.ravel(),
        "n_heldout": scores.heldout_counts.ravel().astype(np.int64),
    })


def _class_rows(frame: pd.DataFrame, class_names: list[str], test: pd.DataFrame, half_scores: tuple) -> pd.DataFrame:
    """Summary statistics per class and for all examples ('all' row, class -1)."""
    first, second = half_scores
    rows = []
    for c, name in [(-1, "all"), *enumerate(class_names)]:
        chosen = np.ones(len(frame), bool) if c < 0 else (frame["label"] == c).to_numpy()
        rows.append({
            "class": c, "class_name": name, "n_examples": int(chosen.sum()),
            "n_noisy": int(frame["is_noisy"][chosen].sum()),
            "mean_cscore": frame["cscore"][chosen].mean(), "median_cscore": frame["cscore"][chosen].median(),
            "mean_memorization": frame["memorization"][chosen].mean(),
            "mean_test_cscore": (test["cscore"] if c < 0 else test["cscore"][test["label"] == c]).mean(),
            "n_never_heldout": int(frame["n_heldout"][chosen].eq(0).sum()),
            "n_missing_some_ratio": int(frame["n_missing_ratios"][chosen].gt(0).sum()),
            "cscore_se_p90": se_quantile(frame["cscore_se"][chosen]),
            "split_half_spearman": spearman_of_finite(first[chosen], second[chosen]),
        })
    return pd.DataFrame(rows)


def cscore_tables(in_subset: np.ndarray, train_correct: np.ndarray, test_correct: np.ndarray, ratios: np.ndarray,
                  runs: np.ndarray, examples: pd.DataFrame, class_names: list[str]) -> dict[str, pd.DataFrame]:
    """All tables of a holdout run from its dense per-model results (rows = models, columns = examples).

    `examples` is the run's examples table (split, position, example_id, source, label, true_label, is_noisy and,
    written since dataset.foreign exists, is_foreign);
    runs with even and odd `runs` index form the two halves of the reliability estimate.
    """
    train = examples[examples["split"] == "train"].sort_values("position").reset_index(drop=True)
    test = examples[examples["split"] == "test"].sort_values("position").reset_index(drop=True)
    scores = holdout_scores(in_subset, train_correct, ratios)
    marks = ["is_noisy", "is_foreign"] if "is_foreign" in train else ["is_noisy"]  # is_foreign: dataset.foreign
    cscores = train[["example_id", "source", "label", "true_label", *marks]].assign(
        cscore=scores.cscore, cscore_se=scores.cscore_se, n_heldout=scores.n_heldout.astype(np.int64),
        memorization=memorization(in_subset, train_correct, ratios),
        n_missing_ratios=(scores.heldout_counts == 0).sum(0).astype(np.int64),
    )
    unseen = scores_of_unseen(test_correct, ratios)
    test_table = test[["example_id", "source", "label"]].assign(cscore=unseen.cscore, cscore_se=unseen.cscore_se,
                                                      n_heldout=unseen.n_heldout.astype(np.int64))
    halves = half_cscores(in_subset, train_correct, ratios, np.asarray(runs) % 2 == 0)
    return {
        "cscores.parquet": cscores,
        "cscore_by_ratio.parquet": by_ratio_table(train["example_id"].to_numpy(), scores, train["source"].to_numpy()),
        "test_cscores.parquet": test_table,
        "summary.parquet": _class_rows(cscores, class_names, test_table, halves).assign(
            models=len(ratios), runs_per_ratio=len(ratios) // len(scores.ratios)),
    }


PAPER = ("Jiang, Zhang, Talwar, Mozer, Characterizing Structural Regularities of Labeled Data in Overparameterized "
         "Models (ICML 2021)")
MISLABELED_AT_LOW_END = Claim(
    PAPER, "The score identifies out-of-distribution and mislabeled examples at one end of the continuum and strongly "
    "regular examples at the other end.",
    "AUROC of a low C-score for finding the training examples whose labels were flipped (dataset.label_noise; 0.5 is "
    "chance), the C-scores of each group of runs computed on their own; the mislabeled end")
OOD_AT_LOW_END = Claim(
    PAPER, MISLABELED_AT_LOW_END.claim,
    "AUROC of a low C-score for finding the foreign training examples (dataset.foreign: another dataset's images or "
    "noise, each with a uniformly random label; 0.5 is chance), the C-scores of each group of runs computed on their "
    "own; the out-of-distribution end")
NO_LABEL_NOISE = "no label is known to be wrong; set dataset.label_noise (e.g. 0.1) to flip some"
NO_FOREIGN = "no foreign examples; set dataset.foreign (e.g. noise) and dataset.foreign_fraction (e.g. 0.05)"
REPLICATE_GROUPS = 4  # disjoint groups of runs whose own C-scores are a finding's replicates (a run has one seed)


def run_groups(runs: np.ndarray) -> np.ndarray:
    """Replicate group of each model: its run index mod G, G = min(REPLICATE_GROUPS, runs per ratio // 2), so every
    group holds at least 2 runs of every ratio."""
    runs = np.asarray(runs)
    return runs % max(1, min(REPLICATE_GROUPS, len(np.unique(runs)) // 2))


def mislabeled_auroc(cscore: np.ndarray, is_noisy: np.ndarray) -> float:
    """AUROC of a low `cscore` for the `is_noisy` (or any marked) examples, over the finite scores (NaN without both
    kinds)."""
    finite = np.isfinite(cscore)
    labels = np.asarray(is_noisy, bool)[finite]
    return float(roc_auc_score(labels, -cscore[finite])) if 0 < labels.sum() < len(labels) else float("nan")


def _marks(cscores, column: str) -> np.ndarray:
    """The bool column `column` of a cscores table (DataFrame or pyarrow Table); all False where it has none."""
    names = cscores.column_names if hasattr(cscores, "column_names") else list(cscores.columns)
    return np.asarray(cscores[column], bool) if column in names else np.zeros(len(cscores), bool)


def cscore_findings(runs: pd.DataFrame, cscores: pd.DataFrame, scope: str) -> pd.DataFrame:
    """The paper's claims checked on a holdout run: `runs` (runs.parquet: run, ratio, in_subset, train_correct) and
    `cscores` (cscores.parquet, rows in example order like the columns of `in_subset`): a low C-score for the
    mislabeled examples, and for the foreign ones (dataset.foreign), each against all the other examples."""
    return findings_table([low_end_row(MISLABELED_AT_LOW_END, runs, _marks(cscores, "is_noisy"), NO_LABEL_NOISE, scope),
                           low_end_row(OOD_AT_LOW_END, runs, _marks(cscores, "is_foreign"), NO_FOREIGN, scope)])


def low_end_row(claim: Claim, runs: pd.DataFrame, marked: np.ndarray, none_marked: str, scope: str) -> dict:
    """`claim`'s row: the mean over disjoint groups of runs of the AUROC of a low C-score for the `marked` examples;
    not testable (`none_marked`) without any, or with fewer than MIN_SEEDS groups."""
    run = np.asarray(runs["run"])
    groups = run_groups(run)
    n_groups = len(np.unique(groups))
    if not marked.any():
        return not_testable(claim, none_marked, scope)
    if n_groups < MIN_SEEDS:
        why = (f"{len(np.unique(run))} runs per ratio make {n_groups} group(s) of 2 or more runs, fewer than "
               f"{MIN_SEEDS}; set runs_per_ratio to {2 * MIN_SEEDS} or more")
        return not_testable(claim, why, scope, n_groups)
    in_subset, correct = unpack_bool_rows(runs["in_subset"]), unpack_bool_rows(runs["train_correct"])
    ratios = np.asarray(runs["ratio"], float)
    aurocs = [mislabeled_auroc(holdout_scores(in_subset[groups == g], correct[groups == g], ratios[groups == g]).cscore,
                               marked) for g in range(n_groups)]
    estimate, se, n = mean_and_se(aurocs)
    rule = (f"replicate: each of {n_groups} disjoint groups of runs (run index mod {n_groups}); mean AUROC over them "
            f"> 0.5 (chance: the paper states no number) by more than {Z:g} SE: supported; < 0.5 by more than {Z:g} "
            f"SE: not supported; else inconclusive (and with < {MIN_SEEDS} groups)")
    return row(claim, estimate, se, n, beyond(estimate, se, n, 0.5), rule, scope)
