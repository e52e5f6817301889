"""Network subspaces: K lines of networks trained together against a plain per-model loop, and against K standard
networks trained together (what a subspace's endpoints and draws cost).

Run: .venv/bin/python -m bench.subspaces [--quick] [--threads N]   (from the repository root)
Prints a table, then one JSON object on its last line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import torch
import torch.nn.functional as F

from bench.plain import train_plain
from bench.trainer import interleaved_seconds, matmul_gflops
from core.methods.subspaces import SubspaceTraining
from core.models.networks import init_model
from core.models.subspaces import fix_coefficients, line_coefficients, subspace_layers
from core.runtime import reuse_freed_memory
from core.training.averaging import StackedWeightAveraging
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train

# ---- knobs ---------------------------------------------------------------------------------
MODELS = ["mlp_w128_d2", "mlp_w256_d2", "cnn1d_bn_w32_d2"]  # plain networks; each line is subspace2_<model>
# (mlp_w128_d2: the subspaces flow's default)
INPUT_SHAPE, CLASSES = (1, 40), 10  # MNIST-1D-shaped inputs (random: speed only)
N_TRAIN = 4000  # training examples (MNIST-1D's 4,000: 31 steps of 128 an epoch)
ENSEMBLE_SIZES = [5, 32]  # lines trained together (5: one subspaces-flow task of 5 seeds; --quick: 5)
BETA = 1.0  # weight of the cos^2 regulariser
EPOCHS = 1  # epochs per timed run
REPEATS = 5  # timed runs of each side, interleaved, after one warm-up run each; medians reported (--quick: 1)
THREADS = len(os.sched_getaffinity(0))  # torch intra-op threads for everything timed (the usable cores)
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4)
# ---------------------------------------------------------------------------------------------


def stacked_lines(model: str, x, y, subsets, seeds) -> None:
    """All K lines at once: Ensemble.init of the subspace2_ name, SubspaceTraining's hooks passed to train()."""
    ensemble = Ensemble.init(f"subspace2_{model}", INPUT_SHAPE, CLASSES, seeds)
    lines = SubspaceTraining(ensemble, "line", seeds, beta=BETA)
    train(ensemble, x, y, subsets, seeds, TRAIN, hooks=lines.hooks())


def stacked_standard(model: str, x, y, subsets, seeds) -> None:
    """The plain network, all K at once: standard training's rate in the same trainer."""
    train(Ensemble.init(model, INPUT_SHAPE, CLASSES, seeds), x, y, subsets, seeds, TRAIN)


def stacked_swa(model: str, x, y, subsets, seeds) -> None:
    """The subspaces flow's SWA arm's training, all K at once: the lr held at swa_lr, the weights averaged every
    epoch (one here). Its BatchNorm pass at the average is left out: the flow makes one for standard training too."""
    config = TRAIN.model_copy(update={"swa_start": 0, "swa_lr": TRAIN.lr / 2})
    ensemble = Ensemble.init(model, INPUT_SHAPE, CLASSES, seeds)
    train(ensemble, x, y, subsets, seeds, config, hooks=StackedWeightAveraging(ensemble, config).hooks())


def line_step(seed: int):
    """One line's per-step draw, written plainly: alpha ~ U(0, 1) for the whole network, and beta cos^2 of its two
    endpoints' flattened weights (biases and BatchNorm left out)."""
    generator = torch.Generator().manual_seed(seed)

    def before_step(model: torch.nn.Module) -> torch.Tensor:
        fix_coefficients(model, line_coefficients(torch.rand((), generator=generator)))
        weights = [layer.weight for layer in subspace_layers(model) if layer.weight.dim() > 2]
        first, second = (torch.cat([w[e].flatten() for w in weights]) for e in (0, 1))
        return BETA * F.cosine_similarity(first, second, dim=0).square()

    return before_step


def plain_loop(model: str, x, y, subsets, seeds) -> None:
    """One line after another: init_model of the subspace2_ name, torch.optim.SGD, a draw before every step."""
    for k, seed in enumerate(seeds):
        line = init_model(f"subspace2_{model}", INPUT_SHAPE, CLASSES, seed)
        train_plain(line, x, y, subsets[k].nonzero().squeeze(1), seed, TRAIN, before_step=line_step(seed))


def measure(model: str, k: int, repeats: int) -> dict:
    """Ours against the loop (and standard training stacked) for K lines of `model`: model-epochs/s."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N_TRAIN, *INPUT_SHAPE, generator=g), torch.randint(0, CLASSES, (N_TRAIN,), generator=g)
    seeds, subsets = list(range(k)), torch.ones(k, N_TRAIN, dtype=torch.bool)
    seconds = interleaved_seconds({
        "ours": lambda: stacked_lines(model, x, y, subsets, seeds),
        "loop": lambda: plain_loop(model, x, y, subsets, seeds),
        "standard_ours": lambda: stacked_standard(model, x, y, subsets, seeds),
        "swa_ours": lambda: stacked_swa(model, x, y, subsets, seeds),
    }, repeats)
    return {"model": f"subspace2_{model}", "K": k, **{f"{side}_s": round(s, 3) for side, s in seconds.items()},
            **{f"{side}_model_epochs_per_s": round(k * EPOCHS / s, 2) for side, s in seconds.items()},
            "speedup_vs_loop": round(seconds["loop"] / seconds["ours"], 2),
            "ours_vs_standard_ours": round(seconds["ours"] / seconds["standard_ours"], 2),
            "swa_vs_standard_ours": round(seconds["swa_ours"] / seconds["standard_ours"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="K=5 only, one repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_reuse = reuse_freed_memory()  # as a run on the CPU does (configure_runtime), for both sides
    sizes, repeats = ([5], 1) if args.quick else (ENSEMBLE_SIZES, REPEATS)
    probes, rows = [matmul_gflops()], []
    for model in MODELS:
        for k in sizes:
            rows.append(measure(model, k, repeats))
            print(" ".join(f"{key}={value}" for key, value in rows[-1].items()), flush=True)
        probes.append(matmul_gflops())
    print(f"matmul {max(probes):.1f} GFLOP/s (best of {len(probes)} probes), {torch.get_num_threads()} threads")
    print(f"{'model':26s} {'K':>3s} {'ours s':>8s} {'loop s':>8s} {'standard s':>10s} {'vs loop':>8s} {'vs standard':>11s}")
    for row in rows:
        print(f"{row['model']:26s} {row['K']:3d} {row['ours_s']:8.2f} {row['loop_s']:8.2f} {row['standard_ours_s']:10.2f} "
              f"{row['speedup_vs_loop']:7.2f}x {row['ours_vs_standard_ours']:10.2f}x")
    print(json.dumps({
        "bench": "subspaces", "n_train": N_TRAIN, "input_shape": list(INPUT_SHAPE), "batch_size": TRAIN.batch_size,
        "epochs": EPOCHS, "repeats": repeats, "beta": BETA, "matmul_gflops": round(max(probes), 1),
        "matmul_gflops_probes": [round(p, 1) for p in probes], "threads": torch.get_num_threads(),
        "malloc_reuse": malloc_reuse, "torch": torch.__version__, "machine": platform.machine(), "rows": rows,
    }))


if __name__ == "__main__":
    main()
