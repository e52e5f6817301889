"""Running a flow's shards on a bounded task runner, with a progress bar and Prefect logs."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
from prefect import get_run_logger
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

from core.config import RuntimeConfig


def configure_threads(runtime: RuntimeConfig) -> None:
    """Torch CPU threads per task: the setting, or all cores shared by the concurrent shards."""
    threads = runtime.threads or max(1, (os.cpu_count() or 1) // runtime.max_workers)
    torch.set_num_threads(threads)


def run_shards(task: Callable, parameters: list[dict[str, Any]], runtime: RuntimeConfig, what: str) -> list[Any]:
    """Submit one task run per parameter set, at most `runtime.max_workers` at once; results in input order."""
    logger = get_run_logger()
    logger.info("%s: %d shards, %d at a time", what, len(parameters), runtime.max_workers)
    results: list[Any] = [None] * len(parameters)
    with tqdm(total=len(parameters), desc=what, unit="shard") as bar:
        if runtime.max_workers == 1:  # in this thread: torch trains markedly slower in worker threads
            for i, p in enumerate(parameters):
                results[i] = task(**p)
                bar.update(1)
            return results
        with ThreadPoolTaskRunner(max_workers=runtime.max_workers) as runner:
            futures = [runner.submit(task, parameters=p) for p in parameters]
            index = {f.task_run_id: i for i, f in enumerate(futures)}
            for future in as_completed(futures):
                results[index[future.task_run_id]] = future.result()
                bar.update(1)
    return results
