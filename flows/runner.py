"""Running a flow's shards on a bounded task runner, with a progress bar and Prefect logs."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import ExternalSignal, MissingContextError
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

from core.config import RuntimeConfig
from core.runtime import check_precision, measure_load, resolve_device, reuse_freed_memory, start_up_load, use_precision
from core.stopping import clear_stop, request_stop

PROGRESS_EVERY_S = 2.0  # least seconds between updates of the UI's progress artifact


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow or task run's logger (its lines reach the UI); outside a run (a flow called as `flow.fn(...)` in
    tests and scripts), the module's own."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def configure_runtime(runtime: RuntimeConfig) -> None:
    """Torch CPU threads and float32 mode of the flow's own process (tasks set theirs, wherever they run): the threads
    by `core.runtime`'s rule (from the cores, the concurrent tasks, and where threads spin, the load other processes
    put on our cores now), logged once; a precision this device cannot run is refused here, before any work; on the
    CPU, glibc keeps freed memory for reuse (`reuse_freed_memory`)."""
    busy = None if runtime.threads else measure_load()
    choice = runtime.thread_choice(busy)
    torch.set_num_threads(choice.threads)
    run_logger().info(choice.describe())
    device = resolve_device(runtime.device)
    check_precision(runtime.precision, device)
    use_precision(runtime.precision)
    if device.type == "cpu":
        reuse_freed_memory()


def task_runner(runtime: RuntimeConfig):
    """Local threads, or Dask: an existing scheduler by address, else a local cluster of worker processes."""
    if runtime.task_runner == "local":
        return ThreadPoolTaskRunner(max_workers=runtime.max_workers)
    from prefect_dask import DaskTaskRunner  # optional: pip install 'regularity[dask]'

    if runtime.dask_address:
        return DaskTaskRunner(address=runtime.dask_address)
    # each worker process runs one task at a time with its share of the cores (Dask's nanny would give it 1)
    threads = runtime.dask_worker_threads(start_up_load())
    return DaskTaskRunner(cluster_kwargs={"n_workers": runtime.dask_workers, "threads_per_worker": 1,
                                         "processes": True, "dashboard_address": None,
                                         "env": {"OMP_NUM_THREADS": str(threads)}})


def run_shards(task: Callable, parameters: list[dict[str, Any]], runtime: RuntimeConfig, what: str) -> list[Any]:
    """Submit one task run per parameter set, at most `runtime.max_workers` at once; results in input order."""
    logger = get_run_logger()
    logger.info("%s: %d shards on the %s task runner", what, len(parameters), runtime.task_runner)
    results: list[Any] = [None] * len(parameters)
    progress = create_progress_artifact(0.0, description=f"{what}: shards done (%)")
    last_update = [time.monotonic()]

    def done(i: int, result: Any, bar: tqdm) -> None:
        """Keep a finished shard's result; move the CLI bar, and the UI's progress artifact at most every
        PROGRESS_EVERY_S (each update is an API call: thousands of small shards would pay one each)."""
        results[i] = result
        bar.update(1)
        if bar.n == len(parameters) or time.monotonic() - last_update[0] >= PROGRESS_EVERY_S:
            update_progress_artifact(progress, 100.0 * bar.n / len(parameters))
            last_update[0] = time.monotonic()

    with tqdm(total=len(parameters), desc=what, unit="shard") as bar:
        if runtime.task_runner == "local" and runtime.max_workers == 1:  # torch trains slower in worker threads
            for i, p in enumerate(parameters):
                done(i, task(**p), bar)
            return results
        on_worker_threads(task, parameters, runtime, lambda i, result: done(i, result, bar))
    return results


def on_worker_threads(task: Callable, parameters: list[dict[str, Any]], runtime: RuntimeConfig,
                      done: Callable[[int, Any], None]) -> None:
    """Run the shards on the task runner, `done(i, result)` as each ends. An interrupt reaches this (the main) thread
    only: it asks the shards' step loops to stop at their next step (core.stopping), not at their end, and the request
    is withdrawn once the runner has waited for them, so later training in this process runs in full."""
    try:
        with task_runner(runtime) as runner:
            futures = [runner.submit(task, parameters=p) for p in parameters]
            index = {f.task_run_id: i for i, f in enumerate(futures)}
            try:
                for future in as_completed(futures):
                    done(index[future.task_run_id], future.result())
            except (KeyboardInterrupt, SystemExit, ExternalSignal):  # Ctrl-C; SIGTERM, as Prefect raises it
                request_stop()
                raise
    finally:
        clear_stop()
