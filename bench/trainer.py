"""Vectorized many-model training vs a plain per-model PyTorch loop, and vs the machine's matmul rate.

Run: .venv/bin/python -m bench.trainer [--quick] [--threads N]   (from the repository root)
Prints a table, then one JSON object on its last line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from bench.plain import train_plain
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.models.networks import init_model
from core.runtime import reuse_freed_memory
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train

# ---- knobs ---------------------------------------------------------------------------------
MODELS = ["mlp_w64_d2", "mlp_w256_d2", "cnn1d_w32_d3"]
ENSEMBLE_SIZES = [1, 16, 64]  # K: models trained together
EPOCHS = 1  # epochs per timed run (MNIST-1D: 4,000 training examples, 31 steps of 128)
REPEATS = 5  # timed runs of each side (ours, loop), interleaved, after one warm-up run each; medians reported
THREADS = len(os.sched_getaffinity(0))  # torch intra-op threads for everything timed (the usable cores)
MATMUL_SIZE = 2048  # n of the n x n fp32 matmul that defines the machine's reachable rate (GFLOP/s)
MATMUL_REPEATS = 10  # matmuls per probe; probes run first, before each model and last; the best is the rate
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4)
# ---------------------------------------------------------------------------------------------


def matmul_gflops(n: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> float:
    """Best achieved GFLOP/s of an n x n fp32 matmul (load on a shared machine only ever slows it)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def training_flops_per_example(name: str, input_shape, num_classes: int) -> float:
    """Multiply-adds of linear/conv layers x 2 (FLOPs) x 3 (forward + backward), per example."""
    model, macs = init_model(name, input_shape, num_classes, 0), []

    def count(module, inputs, output):
        weight = module.weight
        per_output = weight[0].numel()  # in_features, or in_channels * kernel volume
        macs.append(per_output * output[0].numel())

    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            m.register_forward_hook(count)
    model(torch.zeros(1, *input_shape))
    return 6.0 * sum(macs)


def plain_loop(name, data, subsets, seeds) -> None:
    """The same training, one model after another with torch.optim.SGD."""
    for k, seed in enumerate(seeds):
        model = init_model(name, data.input_shape, data.num_classes, seed)
        train_plain(model, data.x_train, data.y_train, subsets[k].nonzero().squeeze(1), seed, TRAIN)


def vectorized(name, data, subsets, seeds) -> None:
    """The same training, all models together."""
    ensemble = Ensemble.init(name, data.input_shape, data.num_classes, seeds)
    train(ensemble, data.x_train, data.y_train, subsets, seeds, TRAIN)


def interleaved_seconds(runs: dict, repeats: int, warm_up: bool = True) -> dict[str, float]:
    """Median wall time of each `runs[name]()`: one warm-up each (unless the caller warmed up more
    cheaply), then rounds alternating their order.

    Interleaving spreads a neighbour's load over both sides instead of letting it land on one.
    """
    for fn in runs.values() if warm_up else ():
        fn()
    times = {name: [] for name in runs}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(name: str, k: int, data, flops: float, repeats: int) -> dict:
    """Ours vs the plain loop for K models of `name`: rates and achieved GFLOP/s."""
    seeds, subsets = list(range(k)), torch.ones(k, data.n_train, dtype=torch.bool)
    seconds = interleaved_seconds({
        "ours": lambda: vectorized(name, data, subsets, seeds),
        "loop": lambda: plain_loop(name, data, subsets, seeds),
    }, repeats)
    ours, loop = seconds["ours"], seconds["loop"]
    examples = k * EPOCHS * (data.n_train // TRAIN.batch_size) * TRAIN.batch_size
    return {
        "model": name, "K": k,
        "ours_model_epochs_per_s": round(k * EPOCHS / ours, 2),
        "loop_model_epochs_per_s": round(k * EPOCHS / loop, 2),
        "speedup_vs_loop": round(loop / ours, 2),
        "ours_gflops": round(examples * flops / ours / 1e9, 2),
        "loop_gflops": round(examples * flops / loop / 1e9, 2),
    }


def with_fractions(row: dict, peak: float) -> dict:
    """The row plus both sides' GFLOP/s as fractions of the matmul rate `peak`."""
    return {
        **row,
        "ours_fraction_of_matmul": round(row["ours_gflops"] / peak, 3),
        "loop_fraction_of_matmul": round(row["loop_gflops"] / peak, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="K in {1, 16} and one repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_reuse = reuse_freed_memory()  # as a run on the CPU does (configure_runtime), for both sides
    sizes, repeats = ([1, 16], 1) if args.quick else (ENSEMBLE_SIZES, REPEATS)
    data = load_dataset(DatasetConfig(name="mnist1d"))
    probes, measured = [matmul_gflops()], []
    for name in MODELS:
        probes.append(matmul_gflops())  # probing between models catches a quiet moment if there is one
        flops = training_flops_per_example(name, data.input_shape, data.num_classes)
        for k in sizes:
            measured.append(measure(name, k, data, flops, repeats))
            print(" ".join(f"{key}={value}" for key, value in measured[-1].items()), flush=True)
    probes.append(matmul_gflops())
    peak = max(probes)
    rows = [with_fractions(row, peak) for row in measured]
    print(f"matmul {peak:.1f} GFLOP/s (best of {len(probes)} probes), {torch.get_num_threads()} threads")
    for row in rows:
        print(f"{row['model']:13s} K={row['K']:<3d} speedup {row['speedup_vs_loop']:5.2f}x  "
              f"ours {row['ours_fraction_of_matmul']:.3f} / loop {row['loop_fraction_of_matmul']:.3f} of matmul")
    print(json.dumps({
        "bench": "trainer", "dataset": "mnist1d", "n_train": data.n_train, "batch_size": TRAIN.batch_size,
        "epochs": EPOCHS, "repeats": repeats, "matmul_gflops": round(peak, 1),
        "matmul_gflops_probes": [round(p, 1) for p in probes], "threads": torch.get_num_threads(),
        "malloc_reuse": malloc_reuse, "torch": torch.__version__, "machine": platform.machine(), "results": rows,
    }))


if __name__ == "__main__":
    main()
