"""The data card: one row per training example with every score the `cscore` and `proxies` runs gave it, in cleanlab's
convention (`<name>_score`, low = likely an issue; `is_<name>_issue` where the score comes with a rule), and the
dataset-cartography coordinates of Swayamdipta et al. (2020) from the proxies' full-data training records."""
from __future__ import annotations

import numpy as np
import pandas as pd

# card score name: (table, column); every one oriented so that low marks a likely issue
CSCORE_SCORES = {"cscore": "cscore", "cscore_soft": "cscore_soft", "cscore_margin": "cscore_margin"}
HOLDOUT_SCORES = {"cleanlab_holdout": "cleanlab_holdout_label_quality"}
PROXY_SCORES = {"cum_label_prob": "cum_label_prob", "cum_accuracy": "cum_accuracy", "forgetting": "neg_forgetting",
                "aum": "aum", "el2n": "neg_el2n", "final_loss": "neg_final_loss", "input_density": "input_density",
                "input_label_contrast": "input_label_contrast", "input_lof": "input_lof",
                "hidden_density": "hidden_density", "hidden_label_contrast": "hidden_label_contrast",
                "cleanlab": "cleanlab_label_quality"}
ISSUE_RULES = {"cleanlab": "cleanlab_issue", "cleanlab_holdout": "is_cleanlab_holdout_issue"}  # cleanlab's own flags
KNOWN = ["is_noisy", "is_foreign"]  # what the dataset config put there: ground truth, not a score


def cartography(label_prob: np.ndarray, correct: np.ndarray, seen: np.ndarray) -> dict[str, np.ndarray]:
    """Per example, from `[K, E, N]` training records (`seen` marks the recorded ones): each model's mean (confidence)
    and population standard deviation (variability) over epochs of the given label's probability, and its fraction of
    epochs correct (correctness), each averaged over the models that recorded it (NaN where none did)."""
    seen = np.asarray(seen, bool)
    counts = seen.sum(1)  # [K, N]
    mean = _per_model_mean(label_prob, seen, counts)
    spread = np.sqrt(_per_model_mean((label_prob - np.nan_to_num(mean)[:, None]) ** 2, seen, counts))
    hits = _per_model_mean(np.asarray(correct, float), seen, counts)
    return {"confidence": _mean_over_models(mean), "variability": _mean_over_models(spread),
            "correctness": _mean_over_models(hits)}


def _per_model_mean(values: np.ndarray, seen: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`[K, N]` mean over the recorded epochs of `values` `[K, E, N]`; NaN where a model recorded none."""
    total = np.where(seen, values, 0.0).sum(1)
    return np.divide(total, counts, out=np.full(total.shape, np.nan), where=counts > 0)


def _mean_over_models(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the finite entries; NaN where none (no warning)."""
    finite = np.isfinite(values)
    n = finite.sum(0)
    return np.divide(np.where(finite, values, 0.0).sum(0), n, out=np.full(n.shape, np.nan), where=n > 0)


def data_card(cscores: pd.DataFrame, heldout: pd.DataFrame | None = None, proxies: pd.DataFrame | None = None,
              coordinates: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Join a cscore run's `cscores.parquet` and `heldout_probabilities.parquet` and a proxies run's
    `proxies.parquet` (its rows in the order of `coordinates`) into one row per training example: `example_id`,
    `source`, `given_label`, `predicted_label` (of the averaged held-out probabilities; -1 without them),
    `true_label` and the known marks, every score, the issue flags and the cartography coordinates. Raises when the
    tables hold different examples."""
    card = cscores[["example_id", "source", "label", "true_label", *[k for k in KNOWN if k in cscores]]].rename(
        columns={"label": "given_label"})
    card = card.assign(**{k: False for k in KNOWN if k not in card})  # tables of runs from before dataset.foreign
    card.insert(3, "predicted_label", -1)
    card = card.assign(**_scores(cscores, CSCORE_SCORES))
    for name, table, scores in (("heldout_probabilities.parquet", heldout, HOLDOUT_SCORES),
                                ("proxies.parquet", proxies, PROXY_SCORES)):
        if table is None:
            continue
        _check_same_examples(card, table, name)
        aligned = card[["example_id"]].merge(table, on="example_id", how="left", validate="one_to_one")
        card = card.assign(**_scores(aligned, scores), **{f"is_{n}_issue": aligned[c].to_numpy(bool)
                                                         for n, c in ISSUE_RULES.items() if c in aligned})
        if "predicted_label" in aligned:
            card["predicted_label"] = aligned["predicted_label"].to_numpy(np.int64)
        if table is proxies and coordinates is not None:
            order = pd.Series(np.arange(len(table)), index=table["example_id"].to_numpy())
            card = card.assign(**{k: v[order[card["example_id"]].to_numpy()] for k, v in coordinates.items()})
    return card.reset_index(drop=True)


def _scores(table: pd.DataFrame, scores: dict[str, str]) -> dict[str, np.ndarray]:
    """`<name>_score` columns of the `scores` that `table` has."""
    return {f"{name}_score": table[column].to_numpy(float) for name, column in scores.items() if column in table}


def _check_same_examples(card: pd.DataFrame, table: pd.DataFrame, name: str) -> None:
    """ValueError unless `table` scores exactly the card's examples, each once."""
    ours, theirs = set(card["example_id"]), set(table["example_id"])
    if ours != theirs or table["example_id"].duplicated().any():
        raise ValueError(f"{name} scores {len(theirs)} examples ({len(theirs - ours)} not in the C-score run), the "
                         f"C-score run {len(ours)} ({len(ours - theirs)} missing there): the runs must be on the same "
                         "dataset settings (name, n_train, label_noise, foreign, seed)")
