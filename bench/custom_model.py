"""Your own model (README: Your own model): the example package's small CNN, K copies trained on the stacked path
(`tiny_cnn`, an nn.Sequential of layers the path knows) against the same network through the vmap fallback
(`tiny_cnn_module`, a plain nn.Module: same layers, same initial weights) and against a plain per-model loop
(torch.optim.SGD), seconds per training epoch on a Fashion-MNIST subset, sides interleaved, medians.

The factories are imported from examples/regularity-example-model and seeded as `init_model` seeds an installed
entry point's, so the package need not be installed to run this.

Run: .venv/bin/python -m bench.custom_model [--quick] [--threads N]   (from the repository root)
Prints a line per side, then one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from core.runtime import set_wait_policy

set_wait_policy()  # before torch loads libgomp, as the `regularity` CLI does: spinning threads on shared cores

import torch  # noqa: E402

from bench.plain import train_plain  # noqa: E402
from bench.trainer import interleaved_seconds, matmul_gflops  # noqa: E402
from core.data.config import DatasetConfig  # noqa: E402
from core.data.datasets import load_dataset  # noqa: E402
from core.models.networks import seeded_init  # noqa: E402
from core.runtime import reuse_freed_memory  # noqa: E402
from core.training.config import TrainConfig  # noqa: E402
from core.training.ensemble import Ensemble, training_path  # noqa: E402
from core.training.trainer import train  # noqa: E402

# ---- knobs ---------------------------------------------------------------------------------
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "regularity-example-model"
DATASET = DatasetConfig(name="fashion_mnist", n_train=1024, n_test=256)  # 8 steps of 128 (--quick: 512, 4 steps)
K = 16  # models trained together (a cscore shard of 16)
REPEATS = 3  # timed runs of each side, interleaved, after one warm-up run each; medians reported (--quick: 1)
THREADS = len(os.sched_getaffinity(0))  # torch intra-op threads for everything timed (the usable cores)
TRAIN = TrainConfig(epochs=1, batch_size=128, lr=0.05)
# ---------------------------------------------------------------------------------------------


def example_factories() -> dict:
    """The example package's two factories: "stacked" (tiny_cnn) and "vmap" (tiny_cnn_module)."""
    sys.path.insert(0, str(EXAMPLE))
    import regularity_example_model as example

    return {"stacked": example.tiny_cnn, "vmap": example.tiny_cnn_module}


def models(factory, data, seeds: list[int]) -> list[torch.nn.Module]:
    """One network per seed, each initialised from its seed as `init_model` does for an entry point."""
    built = []
    for seed in seeds:
        with seeded_init(seed):
            built.append(factory(tuple(data.input_shape), data.num_classes))
    return built


def together(factory, data, seeds: list[int], path: str) -> None:
    """All K models in one Ensemble: on `path`, which the template's layers decide."""
    ensemble = Ensemble.from_models(models(factory, data, seeds))
    assert training_path(ensemble.template) == path
    train(ensemble, data.x_train, data.y_train, torch.ones(len(seeds), data.n_train, dtype=torch.bool), seeds, TRAIN)


def plain_loop(factory, data, seeds: list[int]) -> None:
    """One model after another."""
    for model, seed in zip(models(factory, data, seeds), seeds):
        train_plain(model, data.x_train, data.y_train, torch.arange(data.n_train), seed, TRAIN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="512 training examples, one repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_reuse = reuse_freed_memory()  # as a run on the CPU does (configure_runtime), for every side
    dataset, repeats = (DATASET.model_copy(update={"n_train": 512}), 1) if args.quick else (DATASET, REPEATS)
    data, seeds, factories = load_dataset(dataset), list(range(K)), example_factories()
    load_average, probes = [os.getloadavg()[0]], [matmul_gflops()]
    seconds = interleaved_seconds({
        "stacked": lambda: together(factories["stacked"], data, seeds, "stacked"),
        "vmap": lambda: together(factories["vmap"], data, seeds, "vmap"),
        "loop": lambda: plain_loop(factories["stacked"], data, seeds),
    }, repeats)
    probes.append(matmul_gflops())
    load_average.append(os.getloadavg()[0])
    ratios = {"stacked_vs_loop": seconds["loop"] / seconds["stacked"],
              "vmap_vs_loop": seconds["loop"] / seconds["vmap"],
              "stacked_vs_vmap": seconds["vmap"] / seconds["stacked"]}
    for side, value in seconds.items():
        print(f"{side:8s} {value:6.2f} s/epoch  {K * TRAIN.epochs / value:6.2f} model-epochs/s")
    print(f"tiny_cnn, K={K}, {data.n_train} examples: stacked {ratios['stacked_vs_loop']:.2f}x the loop, vmap "
          f"{ratios['vmap_vs_loop']:.2f}x the loop, stacked {ratios['stacked_vs_vmap']:.2f}x vmap; matmul "
          f"{max(probes):.1f} GFLOP/s, {torch.get_num_threads()} threads, 1-minute load average {load_average[0]:.2f} "
          f"before and {load_average[1]:.2f} after")
    print(json.dumps({
        "bench": "custom_model", "model": "tiny_cnn", "dataset": dataset.name, "n_train": data.n_train,
        "batch_size": TRAIN.batch_size, "K": K, "repeats": repeats,
        **{f"{side}_s": round(value, 3) for side, value in seconds.items()},
        **{key: round(value, 2) for key, value in ratios.items()},
        "matmul_gflops": round(max(probes), 1), "matmul_gflops_probes": [round(p, 1) for p in probes],
        "threads": torch.get_num_threads(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "malloc_reuse": malloc_reuse, "torch": torch.__version__,
        "machine": platform.machine(), "load_average_1min": [round(a, 2) for a in load_average],
    }))


if __name__ == "__main__":
    main()
