"""The DEQ's explicit baselines (core.models.unrolled): K stacked networks against a plain per-model loop, then the
DEQ against the unrolled (tied) and explicit (untied) networks as the depth L grows, in seconds per training epoch,
inference seconds over the test set and memory of one training step (core.methods.deq_costs: CUDA's allocator
peak, or on the CPU the bytes autograd keeps for the backward).

Run: .venv/bin/python -m bench.unrolled [--quick] [--threads N]   (from the repository root)
Prints a table, then one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

import torch

from bench.plain import train_plain
from bench.trainer import interleaved_seconds, matmul_gflops
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.methods.deq import deq_layers
from core.methods.deq_costs import model_costs
from core.models.networks import init_model
from core.runtime import reuse_freed_memory
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train

# ---- knobs ---------------------------------------------------------------------------------
WIDTH = 64  # the deq flow's default network: deq_w64
DATASET = DatasetConfig(name="mnist1d")  # MNIST-1D, generated locally: 4,000 training examples, 31 steps of 128
K = 3  # networks trained together (one deq-flow task of 3 seeds)
LOOP_DEPTHS = [4, 16]  # depths of the stacked-against-loop case (--quick: 4)
DEPTHS = [2, 4, 8, 16]  # the deq flow's default baselines (--quick: 2, 16)
TOL, MAX_ITER = 1e-3, 30  # the DEQ's forward and backward solver tolerance and cap (the flow's defaults)
EPOCHS = 1  # epochs per timed run
REPEATS = 3  # timed runs of each side, interleaved, after one warm-up run each; medians reported (--quick: 1)
THREADS = len(os.sched_getaffinity(0))  # torch intra-op threads for everything timed (the usable cores)
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=128, lr=0.1)  # the deq flow's defaults
# ---------------------------------------------------------------------------------------------


def ensemble_of(name: str, data, seeds: list[int]) -> Ensemble:
    """K networks `name`, a DEQ with the flow's solver settings."""
    ensemble = Ensemble.init(name, data.input_shape, data.num_classes, seeds)
    for block in deq_layers(ensemble.template):
        block.tol, block.max_iter, block.backward_tol, block.backward_max_iter = TOL, MAX_ITER, TOL, MAX_ITER
    return ensemble


def train_stacked(ensemble: Ensemble, data, seeds: list[int]) -> None:
    """All K networks at once, as the deq flow trains them."""
    everything = torch.ones(len(seeds), data.n_train, dtype=torch.bool)
    train(ensemble, data.x_train, data.y_train, everything, seeds, TRAIN)


def plain_loop(name: str, data, seeds: list[int]) -> None:
    """One network after another: init_model and torch.optim.SGD."""
    for seed in seeds:
        train_plain(init_model(name, data.input_shape, data.num_classes, seed), data.x_train, data.y_train,
                    torch.arange(data.n_train), seed, TRAIN)


def against_loop(data, network: str, depth: int, repeats: int) -> dict:
    """Seconds per epoch of K stacked networks and of the plain loop, and the speedup."""
    name, seeds = f"{network}{depth}_w{WIDTH}", list(range(K))
    seconds = interleaved_seconds({"ours": lambda: train_stacked(ensemble_of(name, data, seeds), data, seeds),
                                   "loop": lambda: plain_loop(name, data, seeds)}, repeats)
    return {"network": network, "depth": depth, "ours_s": round(seconds["ours"], 3),
            "loop_s": round(seconds["loop"], 3), "speedup_vs_loop": round(seconds["loop"] / seconds["ours"], 2)}


def costs_by_depth(data, networks: list[tuple[str, int]], repeats: int) -> list[dict]:
    """Per network: seconds per epoch of K stacked (interleaved medians), then per model, alone, after that training:
    the median inference seconds over the test set and the memory of one training step."""
    seeds, trained = list(range(K)), {}
    names = {(n, d): f"{n}{d}_w{WIDTH}" if n != "deq" else f"deq_w{WIDTH}" for n, d in networks}

    def run(arm: tuple[str, int]) -> None:
        trained[arm] = ensemble_of(names[arm], data, seeds)
        train_stacked(trained[arm], data, seeds)

    seconds = interleaved_seconds({arm: lambda arm=arm: run(arm) for arm in networks}, repeats)
    rows = []
    for arm in networks:
        batch = (data.x_train[: TRAIN.batch_size], data.y_train[: TRAIN.batch_size])
        costs = model_costs(trained[arm], *batch, data.x_test, TRAIN.batch_size)
        rows.append({"network": arm[0], "depth": arm[1], "parameters": costs["parameters"][0],
                     "epoch_s": round(seconds[arm], 3),
                     "inference_s": round(statistics.median(costs["inference_seconds"]), 4),
                     "step_memory_bytes": int(statistics.median(costs["step_memory_bytes"])),
                     "memory_method": costs["memory_method"][0]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer depths, one repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_reuse = reuse_freed_memory()  # as a run on the CPU does (configure_runtime), for both sides
    loop_depths, depths, repeats = ([4], [2, 16], 1) if args.quick else (LOOP_DEPTHS, DEPTHS, REPEATS)
    data = load_dataset(DATASET)
    load_average, probes = [os.getloadavg()[0]], [matmul_gflops()]
    loop_rows = [against_loop(data, network, depth, repeats) for network in ("unrolled", "explicit")
                 for depth in loop_depths]
    probes.append(matmul_gflops())
    rows = costs_by_depth(data, [("deq", 0), *((n, d) for n in ("unrolled", "explicit") for d in depths)], repeats)
    probes.append(matmul_gflops())
    load_average.append(os.getloadavg()[0])
    print(f"matmul {max(probes):.1f} GFLOP/s (best of {len(probes)} probes), {torch.get_num_threads()} threads, "
          f"1-minute load average {load_average[0]:.2f} before and {load_average[1]:.2f} after")
    print(f"{'network':>9s} {'L':>3s} {'ours s/epoch':>13s} {'loop s/epoch':>13s} {'vs loop':>8s}")
    for row in loop_rows:
        print(f"{row['network']:>9s} {row['depth']:3d} {row['ours_s']:13.2f} {row['loop_s']:13.2f} "
              f"{row['speedup_vs_loop']:7.2f}x")
    print(f"{'network':>9s} {'L':>3s} {'params':>7s} {'s/epoch (K=' + str(K) + ')':>16s} {'inference s':>12s} "
          f"{'step memory':>12s}  method")
    for row in rows:
        print(f"{row['network']:>9s} {row['depth']:3d} {row['parameters']:7d} {row['epoch_s']:16.3f} "
              f"{row['inference_s']:12.4f} {row['step_memory_bytes']:12d}  {row['memory_method']}")
    print(json.dumps({
        "bench": "unrolled", "width": WIDTH, "dataset": DATASET.name, "n_train": data.n_train,
        "n_test": len(data.x_test), "batch_size": TRAIN.batch_size, "K": K, "epochs": EPOCHS, "repeats": repeats,
        "tol": TOL, "max_iter": MAX_ITER,
        "matmul_gflops": round(max(probes), 1), "matmul_gflops_probes": [round(p, 1) for p in probes],
        "threads": torch.get_num_threads(), "malloc_reuse": malloc_reuse, "torch": torch.__version__,
        "machine": platform.machine(), "load_average_1min": [round(a, 2) for a in load_average],
        "loop_rows": loop_rows, "rows": rows,
    }))


if __name__ == "__main__":
    main()
