"""The convolutional DEQ (core.models.deq_conv): K stacked models (one grouped conv and one solve for all K, as the
deq flow trains them) against a plain per-model loop (init_model and torch.optim.SGD), seconds per training epoch on
a Fashion-MNIST subset, sides interleaved, medians. The joint solve evaluates the cell only on the smallest block of
models and examples that holds the rows still iterating (core.models.fixed_point.BlockMap), as the loop's solve of
one model does on its examples; Anderson's per-row work on states of C*H*W = 3,136 numbers is then what remains of
the stacked side's overhead.

Run: .venv/bin/python -m bench.deq_conv [--quick] [--threads N]   (from the repository root)
Prints a line, then one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

from core.runtime import set_wait_policy

set_wait_policy()  # before torch loads libgomp, as the `regularity` CLI does: spinning threads on shared cores

import torch  # noqa: E402

from bench.plain import train_plain  # noqa: E402
from bench.trainer import interleaved_seconds, matmul_gflops  # noqa: E402
from core.data.config import DatasetConfig  # noqa: E402
from core.data.datasets import load_dataset  # noqa: E402
from core.methods.deq import deq_layers  # noqa: E402
from core.models.networks import init_model  # noqa: E402
from core.runtime import reuse_freed_memory  # noqa: E402
from core.training.config import TrainConfig  # noqa: E402
from core.training.ensemble import Ensemble  # noqa: E402
from core.training.trainer import train  # noqa: E402

# ---- knobs ---------------------------------------------------------------------------------
MODEL = "deq_conv_c16"  # flows/configs/deq-fashion-conv.yaml's model: 14x14 states of 16 channels
DATASET = DatasetConfig(name="fashion_mnist", n_train=512, n_test=256)  # 4 steps of 128 (--quick: 256, 2 steps)
K = 3  # models trained together (one deq-flow task of 3 seeds)
TOL, MAX_ITER = 1e-3, 30  # the deq flow's solver defaults, forward and backward
REPEATS = 3  # timed runs of each side, interleaved, after one warm-up run each; medians reported (--quick: 1)
THREADS = len(os.sched_getaffinity(0))  # torch intra-op threads for everything timed (the usable cores)
TRAIN = TrainConfig(epochs=1, batch_size=128, lr=0.1)  # the deq flow's defaults
# ---------------------------------------------------------------------------------------------


def with_flow_solver(model):
    """`model` (a network or an ensemble's template) with the deq flow's solver settings."""
    for block in deq_layers(model):
        block.tol, block.max_iter, block.backward_tol, block.backward_max_iter = TOL, MAX_ITER, TOL, MAX_ITER
    return model


def train_stacked(data, seeds: list[int]) -> None:
    """All K models at once, as the deq flow trains them."""
    ensemble = Ensemble.init(MODEL, data.input_shape, data.num_classes, seeds)
    with_flow_solver(ensemble.template)
    train(ensemble, data.x_train, data.y_train, torch.ones(len(seeds), data.n_train, dtype=torch.bool), seeds, TRAIN)


def plain_loop(data, seeds: list[int]) -> None:
    """One model after another."""
    for seed in seeds:
        model = with_flow_solver(init_model(MODEL, data.input_shape, data.num_classes, seed))
        train_plain(model, data.x_train, data.y_train, torch.arange(data.n_train), seed, TRAIN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 training examples, one repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_reuse = reuse_freed_memory()  # as a run on the CPU does (configure_runtime), for both sides
    dataset, repeats = (DATASET.model_copy(update={"n_train": 256}), 1) if args.quick else (DATASET, REPEATS)
    data, seeds = load_dataset(dataset), list(range(K))
    load_average, probes = [os.getloadavg()[0]], [matmul_gflops()]
    seconds = interleaved_seconds({"ours": lambda: train_stacked(data, seeds), "loop": lambda: plain_loop(data, seeds)},
                                  repeats)
    probes.append(matmul_gflops())
    load_average.append(os.getloadavg()[0])
    speedup = seconds["loop"] / seconds["ours"]
    print(f"{MODEL}, K={K}, {data.n_train} examples: stacked {seconds['ours']:.2f} s/epoch, loop "
          f"{seconds['loop']:.2f} s/epoch, {speedup:.2f}x; matmul {max(probes):.1f} GFLOP/s, {torch.get_num_threads()} "
          f"threads, 1-minute load average {load_average[0]:.2f} before and {load_average[1]:.2f} after")
    print(json.dumps({
        "bench": "deq_conv", "model": MODEL, "dataset": dataset.name, "n_train": data.n_train,
        "batch_size": TRAIN.batch_size, "K": K, "repeats": repeats, "tol": TOL, "max_iter": MAX_ITER,
        "ours_s": round(seconds["ours"], 3), "loop_s": round(seconds["loop"], 3), "speedup_vs_loop": round(speedup, 2),
        "matmul_gflops": round(max(probes), 1), "matmul_gflops_probes": [round(p, 1) for p in probes],
        "threads": torch.get_num_threads(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "malloc_reuse": malloc_reuse, "torch": torch.__version__,
        "machine": platform.machine(), "load_average_1min": [round(a, 2) for a in load_average],
    }))


if __name__ == "__main__":
    main()
