"""Tasks of the `cscore` flow: shards of holdout models (one subset ratio each), then scoring."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.methods.cscore import Outcomes, cscore_tables
from core.runs.rows import unpack_bool_rows
from core.runs.store import RunStore
from core.training.experiment import holdout_subsets
from tasks.common import train_models_shard


def shard_name(shard: int) -> str:
    """File of shard `shard` inside the run folder."""
    return f"shards/runs-{shard:05d}.parquet"


@task(cache_policy=NO_CACHE, task_run_name="holdout-shard-{shard}-ratio-{ratio}")
def holdout_shard(store: RunStore, shard: int, model_ids: list[int], runs: list[int], ratio: float, subset_size: int,
                  round_index: int, design: str, design_seed: int) -> str:
    """Train `model_ids` (runs `runs` at `ratio`, in round `round_index`) on subsets of `subset_size` examples each
    (`holdout_subsets`)."""
    columns = {"ratio": [ratio] * len(model_ids), "run": runs}
    return train_models_shard(store, shard_name(shard), model_ids, lambda data, seeds: holdout_subsets(
        design, data.n_train, subset_size, runs, seeds, design_seed), columns)


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
    for name, table in tables.items():
        store.write_table(name, table, {"models": str(runs.num_rows)}, SCORED_FROM)
    overall = tables["summary.parquet"].iloc[0]
    # a C-score averages the ratios an example was held out at: missing one biases it, missing all leaves none
    get_run_logger().info("C-scores of %d examples from %d models; split-half Spearman %.3f; %d missed at least one "
                          "ratio (%d never held out)", overall["n_examples"], runs.num_rows,
                          overall["split_half_spearman"], overall["n_missing_some_ratio"], overall["n_never_heldout"])
    return list(SCORE_TABLES)
