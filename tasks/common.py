"""What every task needs: the run's dataset, loaded once per process, and shard bookkeeping."""
from __future__ import annotations

import functools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.data import Dataset, DatasetConfig, load_dataset
from core.store import RunStore


@functools.lru_cache(maxsize=4)
def _load(config_json: str, cache_dir: str) -> Dataset:
    """Load a dataset once per process; shards of one run share it (read-only)."""
    return load_dataset(DatasetConfig.model_validate_json(config_json), Path(cache_dir))


def shared_dataset(config: DatasetConfig, cache_dir: Path) -> Dataset:
    """The dataset of `config`, cached in memory across the shards run by this process."""
    return _load(config.model_dump_json(), str(cache_dir))


@task(cache_policy=NO_CACHE, task_run_name="combine-{output}")
def combine_shards(store: RunStore, shards: list[str], output: str, sort_by: str) -> str:
    """Concatenate shard tables into `output`, sorted by `sort_by`; skipped when already complete."""
    if store.is_complete(output):
        return output
    table = pa.concat_tables([pq.read_table(store.path(name)) for name in shards])
    table = table.sort_by(sort_by).replace_schema_metadata(None)  # fresh provenance is added on write
    store.write_table(output, table, {"shards": str(len(shards)), "rows": str(table.num_rows)})
    get_run_logger().info("%s: %d rows from %d shards", output, table.num_rows, len(shards))
    return output
