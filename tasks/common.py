"""What every task needs: the run's dataset, loaded once per process, and the shared shard bodies."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.config import RuntimeConfig, available_cores
from core.data.config import DatasetConfig
from core.data.datasets import Dataset, DatasetError, load_dataset
from core.runs.files import code_revision, short_revision
from core.runs.store import RunStore
from core.runtime import resolve_device, reuse_freed_memory, start_up_load, use_precision
from core.training.experiment import heldout_probability_table, model_seed, outcome_table, train_on_subsets


_DATASETS: dict[tuple[str, str], Dataset] = {}  # loaded once per process; shards of one run share them (read-only)
_DATASETS_LOCK = threading.Lock()
KEPT_DATASETS = 4


def shared_dataset(config: DatasetConfig, cache_dir: Path) -> Dataset:
    """The dataset of `config`, cached in memory across the shards run by this process, and loaded
    again when its files have changed since."""
    key = (config.model_dump_json(), str(cache_dir))
    with _DATASETS_LOCK:
        dataset = _DATASETS.get(key)
        if dataset is None or dataset.files_changed(Path(cache_dir)):
            dataset = _DATASETS[key] = load_dataset(config, Path(cache_dir))
            while len(_DATASETS) > KEPT_DATASETS:
                _DATASETS.pop(next(iter(_DATASETS)))  # the oldest load
        return dataset


def task_threads(runtime: RuntimeConfig) -> int:
    """Torch threads for a task: `runtime.threads` if set; in a Dask worker, what that worker has (the
    OMP_NUM_THREADS its nanny sets, else its cores shared by its threads), never the client's view of cores and
    workers (2 worker processes each given the client's 2 threads on 2 cores ran 20x slower); else the
    local runner's share of the cores as `configure_runtime` chose it when the flow started."""
    if runtime.threads:
        return runtime.threads
    worker = dask_worker()
    if worker is None:
        return runtime.torch_threads(start_up_load())
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return max(1, available_cores() // worker.state.nthreads)


def dask_worker():
    """The Dask worker running this task, or None (without importing distributed when nothing did)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def task_dataset(store: RunStore, config: DatasetConfig | None = None) -> Dataset:
    """Set this process's torch threads (`task_threads`), float32 mode and, on the CPU, allocator for the task, and
    return the run's dataset (or that of `config`, a variant of it on the same files, e.g. another label noise),
    refusing files whose contents are not the ones the run's id was made from."""
    torch.set_num_threads(task_threads(store.config.runtime))
    use_precision(store.config.runtime.precision)
    if resolve_device(store.config.runtime.device).type == "cpu":
        reuse_freed_memory()
    dataset = shared_dataset(config or store.config.dataset, store.cache_dir)
    if dataset.fingerprint != store.inputs.get("dataset"):
        raise DatasetError(f"the files of dataset {store.config.dataset.name!r} changed after run {store.run_id} "
                           f"began (contents {store.inputs.get('dataset')} then, {dataset.fingerprint} now); "
                           "start the run again, and it will run as a new run on the new contents")
    return dataset


SubsetMaker = Callable[[Dataset, list[int]], torch.Tensor]


def waiting(name: str) -> Callable[[dict], None]:
    """What to log when another process holds the claim on `name`."""
    logger = get_run_logger()
    return lambda holder: logger.info("%s is being computed by process %s on %s; waiting for it", name,
                                      holder.get("pid"), holder.get("host"))


def compute_once(store: RunStore, names: list[str], compute: Callable[[], Any], built_from: list[str] | None = None) -> None:
    """Run `compute()`, which writes `names`, unless they are all complete (and built from `built_from`, when
    given). It runs under the claim on `names[0]`, so a second process running the same config waits for the
    first instead of computing again."""
    with store.claim(names[0], on_wait=waiting(names[0])):
        store.remove_corrupt(*names)
        if all(store.is_complete(name, built_from) for name in names):
            get_run_logger().info("%s already written, skipped", ", ".join(names))
            return
        compute()


def train_models_shard(store: RunStore, name: str, model_ids: list[int], make_subsets: SubsetMaker,
                       columns: dict[str, list[Any]] | None = None, seeds: list[int] | None = None,
                       built_from: list[str] | None = None, probabilities: str | None = None) -> str:
    """Train `model_ids` together, each on its row of `make_subsets(dataset, seeds)`; write their rows to `name`.

    `store.config` supplies dataset, model, train, seed and runtime; seeds default to one per
    model id; `columns` are added as they are (e.g. each model's ratio); `built_from` names the run's tables
    the subsets come from; `probabilities`, when given, names a table of each training example's softmax summed
    over the models that held it out (`heldout_probability_table`), written first. A complete shard is skipped.
    """
    compute_once(store, [name], lambda: _train_and_write(store, name, model_ids, make_subsets, columns, seeds, built_from,
                                                         probabilities), built_from)
    return name


def _train_and_write(store: RunStore, name: str, model_ids: list[int], make_subsets: SubsetMaker,
                     columns: dict[str, list[Any]] | None, seeds: list[int] | None, built_from: list[str] | None,
                     probabilities: str | None = None) -> None:
    """The body of `train_models_shard`."""
    logger = get_run_logger()
    config, start, dataset = store.config, time.perf_counter(), task_dataset(store)
    seeds = seeds if seeds is not None else [model_seed(config.seed, i) for i in model_ids]
    subsets = make_subsets(dataset, seeds)
    before = time.perf_counter()
    outcome = train_on_subsets(dataset, config.model, seeds, subsets, config.train, resolve_device(config.runtime.device),
                               precision=config.runtime.precision)
    seconds = time.perf_counter() - before
    table = outcome_table(model_ids, seeds, subsets, outcome)
    for column, values in (columns or {}).items():
        table = table.append_column(column, pa.array(values))
    if probabilities:  # before the shard: a complete shard is what marks both written
        store.write_table(probabilities, heldout_probability_table(subsets, outcome), {"models": str(len(model_ids))},
                          built_from)
    store.write_table(name, table, {"models": str(len(model_ids)), "train_seconds": f"{seconds:.2f}"}, built_from)
    sizes = "/".join(map(str, sorted(set(subsets.sum(1).tolist()))))
    logger.info("%s: %d models on %s examples, mean test accuracy %.4f, %.1f s", name, len(model_ids), sizes,
                float(outcome.test.accuracy().mean()), time.perf_counter() - start)


def warn_mixed_revisions(store: RunStore, names: list[str], output: str) -> None:
    """A warning in the run's log when the files `output` is built from were written by different code revisions."""
    revisions = store.revisions(names)
    if len(revisions) > 1:
        counts = ", ".join(f"{short_revision(rev)} ({len(files)} file{'s' * (len(files) != 1)}, e.g. {files[0]})"
                           for rev, files in sorted(revisions.items(), key=lambda kv: -len(kv[1])))
        get_run_logger().warning("%s combines files written by %d code revisions: %s. The code is now at %s; to compute "
                                 "them all again with it, run again with --recompute outdated (runtime.recompute)",
                                 output, len(revisions), counts, short_revision(code_revision()))


@task(cache_policy=NO_CACHE, task_run_name="combine-{output}")
def combine_shards(store: RunStore, shards: list[str], output: str, sort_by: str | list[tuple[str, str]]) -> str:
    """Concatenate shard tables into `output`, sorted by `sort_by`; skipped when already built from these shards
    as they are. Says so first when the shards come from different code revisions."""
    store.remove_corrupt(output)
    if store.is_complete(output, built_from=shards):
        return output
    warn_mixed_revisions(store, shards, output)
    # shards of older code may lack newer columns (a resumed run): those rows hold nulls there
    table = pa.concat_tables([pq.read_table(store.path(name)) for name in shards], promote_options="default")
    table = table.sort_by(sort_by).replace_schema_metadata(None)  # fresh provenance is added on write
    store.write_table(output, table, {"shards": str(len(shards)), "rows": str(table.num_rows)}, built_from=shards)
    get_run_logger().info("%s: %d rows from %d shards", output, table.num_rows, len(shards))
    return output
