"""Task of the `lime_data` flow: one shard of LIME examples written to Parquet a generator chunk at a time, with its
per-task length figures."""
from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.runs.store import RunStore
from core.sequence.lime_data import FIGURES, write_examples
from tasks.common import compute_once

EXAMPLES, SHARD_FIGURES = "examples/", "shards/lengths/"
SHARD_COLUMNS = ["shard", "first_index", "task", *FIGURES]  # one row per (shard, task)


def shard_names(shard: int) -> list[str]:
    """The tables of one shard: its examples, its per-task figures."""
    return [f"{folder}part-{shard:05d}.parquet" for folder in (EXAMPLES, SHARD_FIGURES)]


def shard_range(store: RunStore, shard: int) -> tuple[int, int]:
    """(first example index, examples) of `shard`: shard_size of them, fewer in the last shard."""
    first = shard * store.config.shard_size
    return first, min(store.config.shard_size, store.config.examples - first)


@task(cache_policy=NO_CACHE, task_run_name="lime-shard{shard}")
def write_shard(store: RunStore, shard: int) -> list[str]:
    """Generate and write shard `shard` of the run's examples; skipped when its tables exist."""
    names = shard_names(shard)
    compute_once(store, names, lambda: _generate_and_write(store, shard, names))
    return names


def _generate_and_write(store: RunStore, shard: int, names: list[str]) -> None:
    """The body of `write_shard`."""
    config, start = store.config, time.perf_counter()
    first, count = shard_range(store, shard)
    figures = write_examples(store, names[0], config.task, config.seed, first, count, config.lime.to_core())
    seconds = time.perf_counter() - start
    store.write_table(names[1], figures.assign(shard=shard, first_index=first)[SHARD_COLUMNS],
                      {"seconds": f"{seconds:.2f}"}, built_from=[names[0]])
    get_run_logger().info("%s: %d examples (%d..%d) in %.1f s, %.0f examples/s", names[0], count, first,
                          first + count - 1, seconds, count / seconds)
