"""Vectorized many-model training vs a plain per-model PyTorch loop, and vs the machine's matmul rate.

Run: .venv/bin/python bench/trainer.py [--quick]
Prints a table, then one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from core.data import DatasetConfig, load_dataset
from core.ensemble import Ensemble
from core.models import init_model
from core.training import TrainConfig, lr_at, train

# ---- knobs ---------------------------------------------------------------------------------
MODELS = ["mlp_w64_d2", "mlp_w256_d2", "cnn1d_w32_d3"]
ENSEMBLE_SIZES = [1, 16, 64]  # K: models trained together
EPOCHS = 1  # epochs per timed run (MNIST-1D: 4,000 training examples, 31 steps of 128)
REPEATS = 3  # timed runs per measurement; the median is reported
MATMUL_SIZE = 2048  # n of the n x n fp32 matmul that defines the machine's reachable rate
MATMUL_REPEATS = 7  # the best of these is reported (noise only ever slows a run down)
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4)
# ---------------------------------------------------------------------------------------------


def matmul_gflops(n: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> float:
    """Best achieved GFLOP/s of an n x n fp32 matmul."""
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
    steps_per_epoch = int(subsets[0].sum()) // TRAIN.batch_size
    for k, seed in enumerate(seeds):
        model = init_model(name, data.input_shape, data.num_classes, seed)
        opt = torch.optim.SGD(model.parameters(), lr=TRAIN.lr, momentum=TRAIN.momentum, weight_decay=TRAIN.weight_decay)
        members, gen, step = subsets[k].nonzero().squeeze(1), torch.Generator().manual_seed(seed), 0
        for _ in range(TRAIN.epochs):
            order = members[torch.randperm(len(members), generator=gen)]
            for s in range(steps_per_epoch):
                idx = order[s * TRAIN.batch_size : (s + 1) * TRAIN.batch_size]
                for group in opt.param_groups:
                    group["lr"] = lr_at(TRAIN, step, steps_per_epoch)
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1


def vectorized(name, data, subsets, seeds) -> None:
    """The same training, all models together."""
    ensemble = Ensemble.init(name, data.input_shape, data.num_classes, seeds)
    train(ensemble, data.x_train, data.y_train, subsets, seeds, TRAIN)


def median_seconds(fn, repeats: int = REPEATS) -> float:
    """Median wall time of `fn()` over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="K in {1, 16} and one repeat (smoke run)")
    args = parser.parse_args()
    sizes, repeats = ([1, 16], 1) if args.quick else (ENSEMBLE_SIZES, REPEATS)
    data = load_dataset(DatasetConfig(name="mnist1d"))
    peak = matmul_gflops()
    rows = []
    for name in MODELS:
        flops = training_flops_per_example(name, data.input_shape, data.num_classes)
        for k in sizes:
            seeds = list(range(k))
            subsets = torch.ones(k, data.n_train, dtype=torch.bool)
            ours = median_seconds(lambda: vectorized(name, data, subsets, seeds), repeats)
            loop = median_seconds(lambda: plain_loop(name, data, subsets, seeds), repeats)
            examples = k * EPOCHS * (data.n_train // TRAIN.batch_size) * TRAIN.batch_size
            row = {
                "model": name, "K": k,
                "ours_model_epochs_per_s": round(k * EPOCHS / ours, 2),
                "loop_model_epochs_per_s": round(k * EPOCHS / loop, 2),
                "speedup_vs_loop": round(loop / ours, 2),
                "ours_gflops": round(examples * flops / ours / 1e9, 2),
                "ours_fraction_of_matmul": round(examples * flops / ours / 1e9 / peak, 3),
                "loop_fraction_of_matmul": round(examples * flops / loop / 1e9 / peak, 3),
            }
            rows.append(row)
            print(" ".join(f"{key}={value}" for key, value in row.items()), flush=True)
    print(json.dumps({
        "bench": "trainer", "dataset": "mnist1d", "n_train": data.n_train, "batch_size": TRAIN.batch_size,
        "epochs": EPOCHS, "repeats": repeats, "matmul_gflops": round(peak, 1), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), "results": rows,
    }))


if __name__ == "__main__":
    main()
