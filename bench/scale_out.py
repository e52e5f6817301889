"""The `cscore` flow on the local runner against the same run on Dask, on the same cores.

Run: .venv/bin/python -m bench.scale_out [--config flows/configs/cscore.yaml] [--shard-size 16] [--set KEY=VALUE]
Three sides, each a fresh run (new data root) of one config against the project-local Prefect server,
at default runtime settings except the runner:
  local      runtime.task_runner=local (one shard at a time, all cores to torch)
  cluster    runtime.task_runner=dask: a local cluster of runtime.dask_workers processes, started by the flow
             (its start-up is timed: a user pays it)
  scheduler  runtime.dask_address of a `dask scheduler` with `dask worker --nworkers W --nthreads 1` on this
             machine, started before timing (an existing cluster), as a new user would start them
Reports each side's wall time, throughput relative to local (local time / side time: >= 0.8 is the goal),
the torch threads its tasks used (from the shard tables' provenance) and whether its tables equal local's.
Prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from core.config import available_cores
from flows import server

# ---- knobs ---------------------------------------------------------------------------------
CONFIG = "flows/configs/cscore.yaml"  # the README's main job
SHARD_SIZE = 16  # models per task: 18 tasks of 9 ratios x 32 runs, so the runner matters
WORKERS = 2  # Dask worker processes (one thread each) on both Dask sides
REPEATS = 2  # rounds of the three sides, interleaved; the fastest of each is reported (the scheduler's workers
# import torch, prefect and the tasks once, in the first round: its second round is a warm cluster's figure)
TABLES = ("runs", "cscores", "cscore_by_ratio", "test_cscores", "summary")
# ---------------------------------------------------------------------------------------------


def start_cluster(folder: Path, workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and `workers` one-thread worker processes, as `dask scheduler` / `dask worker` start them."""
    dask, scheduler_file = Path(sys.executable).with_name("dask"), folder / "scheduler.json"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": os.environ.copy()}
    processes = [subprocess.Popen([str(dask), "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
                                   "--dashboard-address", ":0"], **quiet)]
    deadline = time.monotonic() + 120
    while not scheduler_file.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("dask scheduler did not start in 120 s")
        time.sleep(0.2)
    processes.append(subprocess.Popen([str(dask), "worker", "--scheduler-file", str(scheduler_file), "--nworkers",
                                       str(workers), "--nthreads", "1", "--dashboard-address", ":0"], **quiet))
    address = json.loads(scheduler_file.read_text())["address"]
    from distributed import Client

    with Client(address) as client:
        client.wait_for_workers(workers, timeout=120)
    return address, processes


def time_run(config, root: Path) -> tuple[float, Path]:
    """Seconds of one fresh `cscore` run under `root`, and its run folder."""
    from flows.cscore import cscore_flow

    start = time.perf_counter()
    folder = Path(cscore_flow(config, data_root=str(root)))
    return time.perf_counter() - start, folder


def shard_threads(folder: Path) -> list[int]:
    """The torch threads each shard's task used, as its table recorded them."""
    from core.runs.files import read_provenance

    return sorted({read_provenance(p)["hardware"]["torch_threads"] for p in folder.glob("shards/*.parquet")})


def same_tables(a: Path, b: Path) -> bool:
    """Whether two runs' result tables are equal."""
    return all(pd.read_parquet(a / f"{t}.parquet").equals(pd.read_parquet(b / f"{t}.parquet")) for t in TABLES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = parser.parse_args()
    server.use_local_server()  # before prefect is imported; workers inherit PREFECT_API_URL
    from flows.config_files import load_config
    from flows.cscore import CScoreFlowConfig

    base = load_config(CScoreFlowConfig, args.config, [f"shard_size={args.shard_size}", *args.set])
    with tempfile.TemporaryDirectory() as tmp:
        address, processes = start_cluster(Path(tmp), args.workers)
        try:
            sides = {"local": {"task_runner": "local"},
                     "cluster": {"task_runner": "dask", "dask_workers": args.workers},
                     "scheduler": {"task_runner": "dask", "dask_address": address}}
            times: dict[str, list[float]] = {side: [] for side in sides}
            folders: dict[str, Path] = {}
            for repeat in range(args.repeats):
                for side, runtime in sides.items():
                    config = base.model_copy(update={"runtime": base.runtime.model_copy(update=runtime)})
                    seconds, folders[side] = time_run(config, Path(tmp) / f"{side}-{repeat}")
                    times[side].append(seconds)
                    print(f"{side:10s} {seconds:7.1f} s  torch threads per task {shard_threads(folders[side])}", flush=True)
            best = {side: min(t) for side, t in times.items()}
            result = {"bench": "scale_out", "config": args.config, "overrides": args.set, "models": len(base.ratios) *
                      base.runs_per_ratio, "shard_size": args.shard_size, "workers": args.workers,
                      "cores": available_cores(), "seconds": {s: round(t, 1) for s, t in best.items()},
                      "seconds_all": {s: [round(x, 1) for x in t] for s, t in times.items()},
                      "throughput_vs_local": {s: round(best["local"] / t, 3) for s, t in best.items()},
                      "torch_threads": {s: shard_threads(f) for s, f in folders.items()},
                      "tables_equal_local": {s: same_tables(folders["local"], f) for s, f in folders.items()},
                      "python": platform.python_version(), "machine": platform.machine()}
        finally:
            for process in processes[::-1]:
                process.terminate()
                process.wait(60)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
