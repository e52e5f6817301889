"""Task of the `train` flow: one shard of models trained together and written as one Parquet file."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.runs.store import RunStore
from core.training.experiment import random_subsets
from tasks.common import train_models_shard


def shard_name(shard: int) -> str:
    """File of shard `shard` inside the run folder."""
    return f"shards/models-{shard:05d}.parquet"


@task(cache_policy=NO_CACHE, task_run_name="train-shard-{shard}")
def train_shard(store: RunStore, shard: int, model_ids: list[int], subset_size: int) -> str:
    """Train models `model_ids` of the run together, each on `subset_size` seeded examples."""
    return train_models_shard(store, shard_name(shard), model_ids,
                              lambda data, seeds: random_subsets(data.n_train, subset_size, seeds))
