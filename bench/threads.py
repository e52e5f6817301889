"""Torch threads and OpenMP's wait policy on a busy machine: what a competing CPU-bound process costs each choice.

Run: .venv/bin/python -m bench.threads [--quick] [--rounds N] [--loads 0 1 2] [--policies default passive ...]
Prints a table, then one JSON object on its last line. See bench/README.md.

Each (wait policy, threads) runs in a fresh child process, since libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT
once, when torch loads it. The child trains a small-kernel shard (the demo's: 64 mlp_w128_d2 on digits, batch 32)
and a larger-kernel one, and reports median seconds and CPU seconds per run. The parent runs every child with 0, 1
and 2 competing `while True: pass` processes, in rounds that alternate the order of loads and of children.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from core.runtime import others_busy_cores  # never loads torch (the children must load it first)

# ---- knobs ---------------------------------------------------------------------------------
POLICIES = {  # name -> the environment a child starts with (None: left unset, libgomp's default)
    "default": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None},
    "active": {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None},
    "spin10k": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"},  # default's 300,000 spins cut to 10,000
    "spin1k": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000"},  # ... to 1,000
}
THREADS = [1, 2]  # torch intra-op threads
LOADS = [0, 1, 2]  # competing CPU-bound processes
ROUNDS = 3  # rounds over every (load, policy, threads); medians over rounds are reported
REPEATS = 3  # timed runs of each workload inside a child, after one warm-up; the child reports their median
WORKLOADS = {  # name -> (model, models trained together, batch size, epochs, fraction of the training set)
    "small": ("mlp_w128_d2", 64, 32, 2, 0.5),  # a demo shard: [64, 32, 128] x [64, 128, 128] matmuls
    "large": ("mlp_w512_d2", 16, 256, 2, 1.0),  # [16, 256, 512] x [16, 512, 512] matmuls
}
SETTLE_S = 0.5  # seconds between starting the competing processes and the first child
# ---------------------------------------------------------------------------------------------


def child(threads: int, repeats: int) -> dict:
    """In a fresh process: median wall and CPU seconds of each workload with `threads` torch threads."""
    import torch

    from core.data.config import DatasetConfig
    from core.data.datasets import load_dataset
    from core.training.config import TrainConfig
    from core.training.experiment import random_subsets, train_on_subsets

    torch.set_num_threads(threads)
    data = load_dataset(DatasetConfig(name="digits"))
    results = {}
    for name, (model, k, batch_size, epochs, fraction) in WORKLOADS.items():
        seeds, config = list(range(k)), TrainConfig(epochs=epochs, batch_size=batch_size)
        subsets = random_subsets(data.n_train, int(fraction * data.n_train), seeds)
        train_on_subsets(data, model, seeds, subsets, config)  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), cpu_seconds()
            train_on_subsets(data, model, seeds, subsets, config)
            wall.append(time.perf_counter() - start)
            cpu.append(cpu_seconds() - start_cpu)
        results[name] = {"wall_s": statistics.median(wall), "cpu_s": statistics.median(cpu)}
    return results


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(policy: str, threads: int, repeats: int) -> dict:
    """One child process with `policy`'s environment; its JSON result."""
    env = {k: v for k, v in os.environ.items() if k not in POLICIES[policy] and k != "OMP_NUM_THREADS"}
    env.update({k: v for k, v in POLICIES[policy].items() if v is not None})
    out = subprocess.run([sys.executable, "-m", "bench.threads", "--child", str(threads), "--repeats", str(repeats)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def competing(n: int) -> list[subprocess.Popen]:
    """`n` CPU-bound processes, stopped by the caller."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round, one timed run per child (smoke run)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds over every choice (default {ROUNDS})")
    parser.add_argument("--loads", type=int, nargs="+", default=LOADS,
                        help=f"competing processes (default {LOADS}; 0 is always run)")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES),
                        help="wait policies to compare (default all)")
    parser.add_argument("--child", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=REPEATS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats)))
        return
    rounds, repeats = (1, 1) if args.quick else (args.rounds, REPEATS)
    choices, loads = [(p, t) for p in args.policies for t in THREADS], sorted({0, *args.loads})  # 0: the reference
    runs: dict[tuple, list[dict]] = {}
    background = []
    for r in range(rounds):
        background.append(others_busy_cores(seconds=1.0))  # before our own processes start: other people's load
        for load in (loads if r % 2 == 0 else loads[::-1]):
            hogs = competing(load)
            try:
                time.sleep(SETTLE_S)
                for policy, threads in (choices if (r + load) % 2 == 0 else choices[::-1]):
                    runs.setdefault((load, policy, threads), []).append(run_child(policy, threads, repeats))
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
        print(f"round {r + 1}/{rounds} done; others kept {background[-1]} cores busy before it", flush=True)
    rows = summarise(runs)
    for row in rows:
        print(" ".join(f"{key}={value}" for key, value in row.items()))
    print(json.dumps({
        "bench": "threads", "rounds": rounds, "repeats_per_child": repeats, "workloads": WORKLOADS,
        "cores": len(os.sched_getaffinity(0)), "background_busy_cores": background,
        "shared": any(b is None or b > 0.2 for b in background), "torch": torch_version(), "machine": platform.machine(), "results": rows,
    }))


def summarise(runs: dict[tuple, list[dict]]) -> list[dict]:
    """One row per (workload, load, policy, threads): median seconds over rounds, and the slow-down against the
    same choice with no competing process (`x_vs_unloaded`) and against the best choice at no load (`x_vs_best`)."""
    rows = []
    for workload in WORKLOADS:
        median = {key: statistics.median(run[workload]["wall_s"] for run in rs) for key, rs in runs.items()}
        cpu = {key: statistics.median(run[workload]["cpu_s"] for run in rs) for key, rs in runs.items()}
        best_unloaded = min(s for (load, _, _), s in median.items() if load == 0)
        for (load, policy, threads), seconds in sorted(median.items()):
            rows.append({"workload": workload, "load": load, "policy": policy, "threads": threads,
                         "wall_s": round(seconds, 3), "cpu_s": round(cpu[load, policy, threads], 3),
                         "x_vs_unloaded": round(seconds / median[0, policy, threads], 2),
                         "x_vs_best": round(seconds / best_unloaded, 2)})
    return rows


def torch_version() -> str:
    """torch's version, read without loading libgomp into this process."""
    from importlib.metadata import version

    return version("torch")


if __name__ == "__main__":
    main()
