"""Task of the `cscore` flow: one shard of holdout models, all of one subset ratio."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.store import RunStore
from tasks.common import train_models_shard


def shard_name(shard: int) -> str:
    """File of shard `shard` inside the run folder."""
    return f"shards/runs-{shard:05d}.parquet"


@task(cache_policy=NO_CACHE, task_run_name="holdout-shard-{shard}-ratio-{ratio}")
def holdout_shard(store: RunStore, shard: int, model_ids: list[int], runs: list[int], ratio: float, subset_size: int) -> str:
    """Train `model_ids` (runs `runs` at `ratio`) on seeded subsets of `subset_size` examples each."""
    columns = {"ratio": [ratio] * len(model_ids), "run": runs}
    return train_models_shard(store, shard_name(shard), model_ids, [subset_size] * len(model_ids), columns)
