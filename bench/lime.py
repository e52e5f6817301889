"""LIME data at scale: examples per second of generating and writing Parquet shards, in one process against one
process per core (each writing its own shards with the function the `lime_data` task uses), and where the time goes
(generation alone, then Arrow record batches, then Parquet files).

Run: .venv/bin/python -m bench.lime [--quick] [--processes N]   (from the repository root)
Prints a table, then one JSON object on its last line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import torch

from bench.trainer import interleaved_seconds, matmul_gflops
from core.runs.store import RunStore
from core.sequence import lime
from core.sequence.lime_data import example_batches, write_examples
from flows.lime_data import FLOW, LimeDataFlowConfig

# ---- knobs ---------------------------------------------------------------------------------
TASK = "mixed"  # the lime_data flow's default dataset
SHARD_SIZE = 20_000  # examples per shard (the flow's default is 50,000; a shard's speed does not depend on it)
SHARDS_PER_PROCESS = 1  # shards each process of the pool writes per timed run; one process writes them all in turn
REPEATS = 3  # timed runs of each side, interleaved, after one warm-up run each; medians reported (--quick: 1)
PROCESSES = len(os.sched_getaffinity(0))  # the pool's processes: one per usable core
SEED = 0
# ---------------------------------------------------------------------------------------------


def generation_only(first: int, count: int) -> None:
    """The generator's examples, chunk by chunk, as `example_batches` draws them, and nothing else."""
    for start in range(first, first + count, lime.CHUNK):
        lime.generate(TASK, SEED, start, min(lime.CHUNK, first + count - start))


def generation_and_arrow(first: int, count: int) -> None:
    """The examples as Arrow record batches, one per chunk, not written."""
    for _ in example_batches(TASK, SEED, first, count, lime.LimeConfig()):
        pass


def write_shard(store: RunStore, shard: int) -> int:
    """Shard `shard` generated and written to Parquet by `write_examples`, as the task does; returns its bytes."""
    name, size = f"examples/part-{shard:05d}.parquet", store.config.shard_size
    write_examples(store, name, TASK, SEED, shard * size, size, lime.LimeConfig())
    return store.path(name).stat().st_size


def measure(store: RunStore, pool: ProcessPoolExecutor, processes: int, repeats: int) -> dict:
    """Examples/s of each side on processes x SHARDS_PER_PROCESS shards of the store's shard_size."""
    shards, size = list(range(processes * SHARDS_PER_PROCESS)), store.config.shard_size
    examples, sizes = len(shards) * size, {}
    runs = {
        "generate": lambda: [generation_only(s * size, size) for s in shards],
        "generate_arrow": lambda: [generation_and_arrow(s * size, size) for s in shards],
        "parquet_one_process": lambda: sizes.update(zip(shards, [write_shard(store, s) for s in shards])),
        "parquet_all_processes": lambda: sizes.update(zip(shards, pool.map(write_shard, [store] * len(shards),
                                                                           shards))),
    }
    seconds = interleaved_seconds(runs, repeats)
    rates = {f"{side}_examples_per_s": round(examples / s) for side, s in seconds.items()}
    return {"examples": examples, **rates, **{f"{side}_s": round(s, 3) for side, s in seconds.items()},
            "speedup_all_processes": round(seconds["parquet_one_process"] / seconds["parquet_all_processes"], 2),
            # what each stage adds, in one process: differences of medians (noise can make one slightly negative)
            "generate_ms_per_1000": round(1e6 * seconds["generate"] / examples, 1),
            "arrow_ms_per_1000": round(1e6 * (seconds["generate_arrow"] - seconds["generate"]) / examples, 1),
            "parquet_ms_per_1000": round(1e6 * (seconds["parquet_one_process"] - seconds["generate_arrow"]) / examples,
                                         1),
            "bytes_per_example": round(sum(sizes.values()) / examples, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shards of 4,096 examples, one repeat (smoke run)")
    parser.add_argument("--processes", type=int, default=PROCESSES, help=f"pool processes (default {PROCESSES})")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the probe's thread: generation is single-threaded numpy and Python
    shard_size, repeats = (lime.CHUNK, 1) if args.quick else (SHARD_SIZE, REPEATS)
    probes = [matmul_gflops()]
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(args.processes) as pool:
        config = LimeDataFlowConfig(task=TASK, examples=shard_size * args.processes * SHARDS_PER_PROCESS,
                                    shard_size=shard_size, seed=SEED)
        store = RunStore.open(FLOW, config, Path(root))
        row = measure(store, pool, args.processes, repeats)
    probes.append(matmul_gflops())
    print(" ".join(f"{key}={value}" for key, value in row.items()), flush=True)
    print(f"matmul {max(probes):.1f} GFLOP/s on 1 thread (best of {len(probes)} probes); {args.processes} processes, "
          f"{shard_size:,} examples per shard, {row['examples']:,} examples per run")
    for side in ("generate", "generate_arrow", "parquet_one_process", "parquet_all_processes"):
        print(f"{side:22s} {row[side + '_examples_per_s']:>9,d} examples/s  ({row[side + '_s']:.2f} s)")
    print(f"all processes {row['speedup_all_processes']:.2f}x one; per 1,000 examples in one process: generation "
          f"{row['generate_ms_per_1000']} ms, Arrow batches +{row['arrow_ms_per_1000']} ms, Parquet "
          f"+{row['parquet_ms_per_1000']} ms; {row['bytes_per_example']:.0f} bytes per example on disk")
    print(json.dumps({
        "bench": "lime", "task": TASK, "shard_size": shard_size, "shards_per_process": SHARDS_PER_PROCESS,
        "processes": args.processes, "chunk": lime.CHUNK, "repeats": repeats, "pyarrow": pa.__version__,
        "matmul_gflops_1_thread": round(max(probes), 1), "matmul_gflops_probes": [round(p, 1) for p in probes],
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "row": row,
    }))


if __name__ == "__main__":
    main()
