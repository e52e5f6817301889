"""Task of the `train` flow: one shard of models trained together and written as one Parquet file."""
from __future__ import annotations

import time

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.ensemble import resolve_device
from core.experiment import model_seed, outcome_table, subset_mask, train_on_subsets
from core.store import RunStore
from tasks.common import shared_dataset


def shard_name(shard: int) -> str:
    """File of shard `shard` inside the run folder."""
    return f"shards/models-{shard:05d}.parquet"


@task(cache_policy=NO_CACHE, task_run_name="train-shard-{shard}")
def train_shard(store: RunStore, shard: int, model_ids: list[int]) -> str:
    """Train models `model_ids` of the run together; skip when the shard's file is already complete."""
    logger, name = get_run_logger(), shard_name(shard)
    if store.is_complete(name):
        logger.info("shard %d: %s already written, skipped", shard, name)
        return name
    config, start = store.config, time.perf_counter()
    dataset = shared_dataset(config.dataset, store.cache_dir)
    size = int(config.subset_ratio * dataset.n_train)
    seeds = [model_seed(config.seed, i) for i in model_ids]
    subsets = torch.stack([subset_mask(dataset.n_train, size, s) for s in seeds])
    outcome = train_on_subsets(dataset, config.model, seeds, subsets, config.train, resolve_device(config.runtime.device))
    store.write_table(name, outcome_table(model_ids, seeds, subsets, outcome), {"shard": str(shard)})
    logger.info("shard %d: %d models on %d examples each, mean test accuracy %.4f, %.1f s",
                shard, len(model_ids), size, float(outcome.test.accuracy().mean()), time.perf_counter() - start)
    return name
