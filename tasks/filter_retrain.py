"""Task of the `filter_retrain` flow: models trained on what remains after removing examples by score."""
from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from core.methods.filter_retrain import kept_examples
from core.runs.store import RunStore
from tasks.common import train_models_shard


def shard_name(shard: int) -> str:
    """File of shard `shard` inside the run folder."""
    return f"shards/models-{shard:05d}.parquet"


@task(cache_policy=NO_CACHE, task_run_name="filter-shard-{shard}-remove-{fraction}")
def filter_shard(store: RunStore, shard: int, model_ids: list[int], fraction: float, arms: list[str],
                 seed_indices: list[int], seeds: list[int]) -> str:
    """Train model k on the examples kept when `arms[k]` removes `fraction` of them (scores.parquet)."""
    scores = store.read_table("scores.parquet")["score"].to_numpy()

    def make_subsets(dataset, model_seeds):
        rule = lambda arm: "lowest" if arm == "none" else arm  # noqa: E731  (fraction 0: nothing removed)
        return torch.stack([kept_examples(scores, fraction, rule(a), s) for a, s in zip(arms, model_seeds)])

    columns = {"arm": arms, "fraction_removed": [fraction] * len(model_ids), "seed_index": seed_indices}
    return train_models_shard(store, shard_name(shard), model_ids, make_subsets, columns, seeds=seeds,
                              built_from=["scores.parquet"])
