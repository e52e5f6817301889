"""Deep equilibrium models: K DEQs trained together against a plain per-model loop, without and with the Jacobian
regulariser, and what the regulariser costs per epoch (its forward and backward solves change too); then the
regulariser's cost per training step of K stacked DEQs, on every step and on the flow's default share of steps.

Run: .venv/bin/python -m bench.deq [--quick] [--penalty-only] [--threads N]   (from the repository root)
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
from bench.trainer import interleaved_seconds, matmul_gflops
from core.data.config import DatasetConfig
from core.data.datasets import load_dataset
from core.methods.deq import JacobianRegularization, deq_layers
from core.models.deq import jacobian_frobenius
from core.models.fixed_point import SolverLog
from core.models.networks import init_model
from core.runtime import reuse_freed_memory
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train

# ---- knobs ---------------------------------------------------------------------------------
MODEL = "deq_w64"  # the deq flow's default network
DATASET = DatasetConfig(name="mnist1d")  # MNIST-1D, generated locally: 4,000 training examples, 31 steps of 128
ENSEMBLE_SIZES = [3, 16]  # DEQs trained together (3: one deq-flow task of 3 seeds; --quick: 3)
GAMMAS = [0.0, 2.0]  # without, and with the regulariser at the flow's default strength
FRACTION = 0.5  # share of steps that carry the penalty (the flow's default)
PENALTY_K = 16  # DEQs stacked in the penalty-cost case (--quick: 3)
PENALTY_FRACTIONS = [1.0, FRACTION]  # the penalty on every step, and on the flow's default share of steps
TOL, MAX_ITER = 1e-3, 30  # forward and backward solver tolerance and cap (the flow's defaults)
EPOCHS = 1  # epochs per timed run
REPEATS = 3  # timed runs of each side, interleaved, after one warm-up run each; medians reported (--quick: 1)
THREADS = len(os.sched_getaffinity(0))  # torch intra-op threads for everything timed (the usable cores)
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4)
# ---------------------------------------------------------------------------------------------


def with_solver(block) -> None:
    """The flow's solver settings on a DEQ block."""
    block.tol, block.max_iter, block.backward_tol, block.backward_max_iter = TOL, MAX_ITER, TOL, MAX_ITER


def stacked(data, seeds: list[int], gamma: float, fraction: float = FRACTION) -> dict[str, float]:
    """All K DEQs at once with JacobianRegularization's hooks; returns the mean solver steps per example."""
    ensemble = Ensemble.init(MODEL, data.input_shape, data.num_classes, seeds)
    (block,) = deq_layers(ensemble.template)
    with_solver(block)
    block.log = SolverLog()
    penalty = JacobianRegularization(ensemble, gamma, seeds, fraction)
    subsets = torch.ones(len(seeds), data.n_train, dtype=torch.bool)
    train(ensemble, data.x_train, data.y_train, subsets, seeds, TRAIN, hooks=penalty.hooks())
    return {name: float(value.mean()) for name, value in block.log.means().items() if name.endswith("steps")}


def penalty_step(seed: int, gamma: float):
    """One DEQ's regulariser, plainly: a draw per step, then gamma ||eps^T J||^2 / D at its fixed points."""
    generator = torch.Generator().manual_seed(seed)

    def before_step(model: torch.nn.Module):
        if gamma == 0 or not torch.rand((), generator=generator) < FRACTION:
            return 0.0
        return lambda: gamma * jacobian_frobenius(*model[1].stats.at_fixed_point(), generator=generator)[0]

    return before_step


def plain_loop(data, seeds: list[int], gamma: float) -> None:
    """One DEQ after another: init_model, torch.optim.SGD, the penalty through before_step."""
    for seed in seeds:
        model = init_model(MODEL, data.input_shape, data.num_classes, seed)
        with_solver(model[1])
        train_plain(model, data.x_train, data.y_train, torch.arange(data.n_train), seed, TRAIN,
                    before_step=penalty_step(seed, gamma))


def measure(data, k: int, repeats: int) -> dict:
    """Ours against the loop at each gamma for K DEQs: seconds per epoch and the ratios."""
    seeds, steps = list(range(k)), {}
    runs = {}
    for gamma in GAMMAS:
        runs[f"ours_gamma{gamma:g}"] = lambda gamma=gamma: steps.update({gamma: stacked(data, seeds, gamma)})
        runs[f"loop_gamma{gamma:g}"] = lambda gamma=gamma: plain_loop(data, seeds, gamma)
    seconds = interleaved_seconds(runs, repeats)
    row = {"K": k, **{f"{side}_s": round(s, 3) for side, s in seconds.items()}}
    for gamma in GAMMAS:
        ours, loop = seconds[f"ours_gamma{gamma:g}"], seconds[f"loop_gamma{gamma:g}"]
        row[f"speedup_vs_loop_gamma{gamma:g}"] = round(loop / ours, 2)
        row.update({f"{name}_gamma{gamma:g}": round(value, 2) for name, value in steps[gamma].items()})
    first, last = GAMMAS[0], GAMMAS[-1]
    row["regulariser_cost"] = round(seconds[f"ours_gamma{last:g}"] / seconds[f"ours_gamma{first:g}"], 2)
    return row


def penalty_cost(data, k: int, repeats: int) -> dict:
    """Seconds per training step of K stacked DEQs without the penalty (gamma 0, the flow's unregularised arm) and
    with it at the flow's gamma on each share of PENALTY_FRACTIONS, timed side by side; the ratios to no penalty.
    Wall-clock medians as the other cases, and the process's CPU-time medians beside them: with one thread, CPU time
    leaves out the waits for a core that a shared machine adds to the wall clock."""
    seeds, solver_steps, cpu, gamma = list(range(k)), {}, {}, GAMMAS[-1]
    sides = {"none": (0.0, FRACTION), **{f"fraction{f:g}": (gamma, f) for f in PENALTY_FRACTIONS}}

    def run(side: str, gamma: float, fraction: float) -> None:
        start = time.process_time()
        solver_steps[side] = stacked(data, seeds, gamma, fraction)
        cpu.setdefault(side, []).append(time.process_time() - start)

    seconds = interleaved_seconds({side: lambda side=side, g=g, f=f: run(side, g, f)
                                   for side, (g, f) in sides.items()}, repeats)
    cpu_seconds = {side: statistics.median(times[1:]) for side, times in cpu.items()}  # the warm-up left out
    steps = EPOCHS * (data.n_train // TRAIN.batch_size)  # train() drops the partial batch
    row = {"K": k, "gamma": gamma, "steps": steps}
    for side in sides:
        row[f"{side}_s_per_step"] = round(seconds[side] / steps, 4)
        row[f"{side}_cpu_s_per_step"] = round(cpu_seconds[side] / steps, 4)
        row.update({f"{name}_{side}": round(value, 2) for name, value in solver_steps[side].items()})
    for fraction in PENALTY_FRACTIONS:
        side = f"fraction{fraction:g}"
        row[f"penalty_cost_{side}"] = round(seconds[side] / seconds["none"], 2)
        row[f"penalty_cpu_cost_{side}"] = round(cpu_seconds[side] / cpu_seconds["none"], 2)
    return row


def print_penalty_rows(rows: list[dict]) -> None:
    """The penalty-cost case as a table: milliseconds per step (wall, CPU) and the ratios to no penalty."""
    sides = ["none", *(f"fraction{f:g}" for f in PENALTY_FRACTIONS)]
    print(f"{'K':>3s} " + " ".join(f"{'ms/step ' + s + ' (wall, cpu)':>36s}" for s in sides)
          + " " + " ".join(f"{'cost ' + s[len('fraction'):] + ' (wall, cpu)':>22s}" for s in sides[1:]))
    for row in rows:
        times = (f"{1000 * row[s + '_s_per_step']:28.1f}, {1000 * row[s + '_cpu_s_per_step']:6.1f}" for s in sides)
        costs = (f"{row['penalty_cost_' + s]:14.2f}x, {row['penalty_cpu_cost_' + s]:5.2f}x" for s in sides[1:])
        print(f"{row['K']:3d} " + " ".join(times) + " " + " ".join(costs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="K=3 only, one repeat (smoke run)")
    parser.add_argument("--penalty-only", action="store_true", help="only the penalty-cost case (K stacked DEQs)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_reuse = reuse_freed_memory()  # as a run on the CPU does (configure_runtime), for both sides
    sizes, repeats, penalty_k = ([3], 1, 3) if args.quick else (ENSEMBLE_SIZES, REPEATS, PENALTY_K)
    sizes = [] if args.penalty_only else sizes
    data = load_dataset(DATASET)
    load_average, probes, rows = [os.getloadavg()[0]], [matmul_gflops()], []
    for k in sizes:
        rows.append(measure(data, k, repeats))
        print(" ".join(f"{key}={value}" for key, value in rows[-1].items()), flush=True)
        probes.append(matmul_gflops())
    penalty_rows = [penalty_cost(data, penalty_k, repeats)]
    print(" ".join(f"{key}={value}" for key, value in penalty_rows[-1].items()), flush=True)
    probes.append(matmul_gflops())
    load_average.append(os.getloadavg()[0])
    print(f"matmul {max(probes):.1f} GFLOP/s (best of {len(probes)} probes), {torch.get_num_threads()} threads, "
          f"1-minute load average {load_average[0]:.2f} before and {load_average[1]:.2f} after")
    first, last = (f"gamma{g:g}" for g in (GAMMAS[0], GAMMAS[-1]))
    if rows:
        print(f"{'K':>3s} {'ours ' + first:>12s} {'ours ' + last:>12s} {'loop ' + first:>12s} {'loop ' + last:>12s} "
              f"{'vs loop':>8s} {'vs loop':>8s} {'reg. cost':>9s}")
    for row in rows:
        print(f"{row['K']:3d} {row['ours_' + first + '_s']:12.2f} {row['ours_' + last + '_s']:12.2f} "
              f"{row['loop_' + first + '_s']:12.2f} {row['loop_' + last + '_s']:12.2f} "
              f"{row['speedup_vs_loop_' + first]:7.2f}x {row['speedup_vs_loop_' + last]:7.2f}x "
              f"{row['regulariser_cost']:8.2f}x")
    print_penalty_rows(penalty_rows)
    print(json.dumps({
        "bench": "deq", "model": MODEL, "dataset": DATASET.name, "n_train": data.n_train,
        "batch_size": TRAIN.batch_size,
        "epochs": EPOCHS, "repeats": repeats, "gammas": GAMMAS, "fraction": FRACTION, "tol": TOL, "max_iter": MAX_ITER,
        "matmul_gflops": round(max(probes), 1), "matmul_gflops_probes": [round(p, 1) for p in probes],
        "threads": torch.get_num_threads(), "malloc_reuse": malloc_reuse, "torch": torch.__version__,
        "machine": platform.machine(), "load_average_1min": [round(a, 2) for a in load_average], "rows": rows,
        "penalty_fractions": PENALTY_FRACTIONS, "penalty_rows": penalty_rows,
    }))


if __name__ == "__main__":
    main()
