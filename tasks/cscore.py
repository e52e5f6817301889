"""Tasks of the `cscore` flow: shards of holdout models (one subset ratio each), then scoring."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.methods.cscore import Outcomes, cscore_tables
from core.methods.label_quality import cleanlab_installed
from core.methods.soft_cscore import SOFT_SCORES, cleanlab_from_holdout, mean_heldout_probabilities, soft_holdout_scores
from core.runs.rows import unpack_bool_rows, unpack_float_rows
from core.runs.store import RunStore
from core.training.experiment import holdout_subsets
from tasks.common import train_models_shard


def shard_name(shard: int) -> str:
    """File of shard `shard` inside the run folder."""
    return f"shards/runs-{shard:05d}.parquet"


def probabilities_name(shard_file: str) -> str:
    """The held-out probability sums written beside shard file `shard_file` (`heldout_probability_table`)."""
    return shard_file.replace("/runs-", "/heldout-probabilities-")


@task(cache_policy=NO_CACHE, task_run_name="holdout-shard-{shard}-ratio-{ratio}")
def holdout_shard(store: RunStore, shard: int, model_ids: list[int], runs: list[int], ratio: float, subset_size: int,
                  round_index: int, design: str, design_seed: int) -> str:
    """Train `model_ids` (runs `runs` at `ratio`, in round `round_index`) on subsets of `subset_size` examples each
    (`holdout_subsets`)."""
    columns = {"ratio": [ratio] * len(model_ids), "run": runs}
    return train_models_shard(store, shard_name(shard), model_ids, lambda data, seeds: holdout_subsets(
        design, data.n_train, subset_size, runs, seeds, design_seed), columns,
        probabilities=probabilities_name(shard_name(shard)))


def holdout_outcomes(store: RunStore, shards: list[str]) -> Outcomes:
    """(in_subset, train_correct, ratios) of every model in `shards`, rows in shard order."""
    table = pa.concat_tables([pq.read_table(store.path(name), columns=["in_subset", "train_correct", "ratio"])
                              for name in shards])
    return unpack_bool_rows(table["in_subset"]), unpack_bool_rows(table["train_correct"]), table["ratio"].to_numpy()


SCORE_TABLES = ("cscores.parquet", "cscore_by_ratio.parquet", "test_cscores.parquet", "summary.parquet")
SCORED_FROM = ["runs.parquet", "examples.parquet"]


@task(cache_policy=NO_CACHE, task_run_name="score-holdout-runs")
def score_runs(store: RunStore, class_names: list[str]) -> list[str]:
    """C-scores, memorization, per-ratio scores and the summary from `runs.parquet`."""
    store.remove_corrupt(*SCORE_TABLES)
    if all(store.is_complete(name, SCORED_FROM) for name in SCORE_TABLES):
        return list(SCORE_TABLES)
    runs = pq.read_table(store.path("runs.parquet"))
    tables = cscore_tables(
        unpack_bool_rows(runs["in_subset"]), unpack_bool_rows(runs["train_correct"]),
        unpack_bool_rows(runs["test_correct"]), runs["ratio"].to_numpy(), runs["run"].to_numpy(),
        store.read_table("examples.parquet"), class_names,
    )
    tables["cscores.parquet"] = tables["cscores.parquet"].assign(**soft_columns(runs))
    for name, table in tables.items():
        store.write_table(name, table, {"models": str(runs.num_rows)}, SCORED_FROM)
    overall = tables["summary.parquet"].iloc[0]
    # a C-score averages the ratios an example was held out at: missing one biases it, missing all leaves none
    get_run_logger().info("C-scores of %d examples from %d models; split-half Spearman %.3f; %d missed at least one "
                          "ratio (%d never held out)", overall["n_examples"], runs.num_rows,
                          overall["split_half_spearman"], overall["n_missing_some_ratio"], overall["n_never_heldout"])
    return list(SCORE_TABLES)


def soft_columns(runs: pa.Table) -> dict[str, np.ndarray]:
    """`cscore_soft` and `cscore_margin` with their standard errors, from the per-model columns of `runs`; none when
    some shards were written before those columns existed (the log says how to get them)."""
    names = runs.column_names
    if not all(column in names and runs[column].null_count == 0 for column in SOFT_SCORES.values()):
        get_run_logger().warning("runs.parquet has shards written before the soft C-scores existed: cscore_soft and "
                                 "cscore_margin are left out; run again with --recompute outdated to train them anew")
        return {}
    in_subset, ratios = unpack_bool_rows(runs["in_subset"]), runs["ratio"].to_numpy()
    columns = {}
    for score, column in SOFT_SCORES.items():
        columns[score], columns[f"{score}_se"] = soft_holdout_scores(in_subset, unpack_float_rows(runs[column]), ratios)
    return columns


HELDOUT_PROBABILITIES = "heldout_probabilities.parquet"


@task(cache_policy=NO_CACHE, task_run_name="average-heldout-probabilities")
def average_heldout_probabilities(store: RunStore, shards: list[str]) -> str | None:
    """`heldout_probabilities.parquet`: every training example's softmax averaged over the models that held it out
    (per ratio, then over ratios), and cleanlab's scores with them as its pred_probs (when cleanlab is installed);
    None when a shard has no held-out sums (written by older code)."""
    sums = [probabilities_name(name) for name in shards]
    store.remove_corrupt(HELDOUT_PROBABILITIES)
    if store.is_complete(HELDOUT_PROBABILITIES, sums + ["examples.parquet"]):
        return HELDOUT_PROBABILITIES
    if not all(store.path(name).exists() for name in sums):
        get_run_logger().warning("some shards have no held-out probabilities (written before they existed): %s is "
                                 "left out; run again with --recompute outdated to train them anew", HELDOUT_PROBABILITIES)
        return None
    tables = [pq.read_table(store.path(name)) for name in sums]
    ratios = [pq.read_table(store.path(name), columns=["ratio"])["ratio"][0].as_py() for name in shards]
    probabilities = mean_heldout_probabilities(np.array(ratios), np.stack([t["n_heldout"].to_numpy() for t in tables]),
                                               np.stack([unpack_float_rows(t["probability_sum"]) for t in tables]))
    examples = store.read_table("examples.parquet")
    train = examples[examples["split"] == "train"].sort_values("position")
    table = train[["example_id", "label"]].reset_index(drop=True).assign(
        predicted_label=np.where(np.isfinite(probabilities).all(1), np.nan_to_num(probabilities).argmax(1), -1))
    if cleanlab_installed():
        table = table.assign(**cleanlab_from_holdout(table["label"].to_numpy(), probabilities))
    table = pa.Table.from_pandas(table, preserve_index=False).append_column(
        "probabilities", pa.FixedSizeListArray.from_arrays(pa.array(probabilities.astype(np.float32).ravel()),
                                                           probabilities.shape[1]))
    store.write_table(HELDOUT_PROBABILITIES, table, {"shards": str(len(tables))}, sums + ["examples.parquet"])
    return HELDOUT_PROBABILITIES
