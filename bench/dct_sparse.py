"""DCT+Sparse layers: K sparse models trained together against a plain per-model loop, alpha D folded into each
model's weight against one shared transform (behind core.models.dct_sparse.FOLD_MIN_ROWS and FOLD_FFT_RATIO), and
the DCT by FFT against the dense D matmul (behind FFT_WORK_RATIO).

Run: .venv/bin/python -m bench.dct_sparse [--quick] [--threads N]   (from the repository root)
Prints a table, then one JSON object on its last line. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform

import torch

from bench.plain import masking_hook, train_plain
from bench.trainer import interleaved_seconds, matmul_gflops
from core.models import dct_sparse
from core.models.dct_sparse import DCTPlusSparseLinear, dct, folds, uses_fft
from core.models.sparse_masks import layer_densities, random_masks
from core.models.networks import init_model, prunable_parameters
from core.runtime import reuse_freed_memory
from core.training.config import TrainConfig
from core.training.ensemble import Ensemble
from core.training.trainer import train

# ---- knobs ---------------------------------------------------------------------------------
MODEL, INPUT_SHAPE, CLASSES = "dct_mlp_w256_d2", (1, 40), 10  # MNIST-1D-shaped inputs (random: speed only)
DENSE_MODEL = "mlp_w256_d2"  # the same network without D or masks, trained stacked: what D and the masks cost
N_TRAIN = 4000  # training examples (MNIST-1D's 4,000: 31 steps of 128 an epoch)
K = 64  # models trained together (--quick: 16)
DENSITY, HEURISTIC = 0.1, "erk"  # of S over all prunable weights
EPOCHS = 1  # epochs per timed run
REPEATS = 5  # timed runs of each side, interleaved, after one warm-up run each; medians reported (--quick: 1)
SIZES = [40, 64, 128, 256, 512, 784, 1024, 2048, 4096]  # n of the square D timed both ways (--quick: up to 2048)
LAYERS = [(40, 256), (256, 10), (300, 100), (512, 128), (784, 300), (1024, 300)]  # (in, out): rectangular Ds
ROWS = 64 * 128  # activations per DCT: K * B rows, in the stacked layout [K, in, B] (--quick: 16 * 128)
OFFSET_BATCHES = [8, 32, 128]  # rows per model of the fold-against-shared layer timings (K models at once)
THREADS = len(os.sched_getaffinity(0))  # torch intra-op threads for everything timed (the usable cores)
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4)
# ---------------------------------------------------------------------------------------------


def sparse_masks(k: int) -> dict[str, torch.Tensor]:
    """Masks of S for K models of MODEL: per-layer densities by HEURISTIC, model k's positions from seed k."""
    template = init_model(MODEL, INPUT_SHAPE, CLASSES, 0)
    shapes = {n: tuple(template.get_parameter(n).shape) for n in prunable_parameters(template)}
    return random_masks(shapes, layer_densities(shapes, DENSITY, HEURISTIC), list(range(k)))


def vectorized(x, y, subsets, masks, seeds, offset: str = "auto") -> None:
    """All K models at once: Ensemble.init plus train(..., masks), every linear layer's alpha D added as `offset`."""
    ensemble = Ensemble.init(MODEL, INPUT_SHAPE, CLASSES, seeds)
    for layer in ensemble.template.modules():
        if isinstance(layer, DCTPlusSparseLinear):
            layer.offset = offset
    train(ensemble, x, y, subsets, seeds, TRAIN, masks=masks)


def dense_vectorized(x, y, subsets, seeds) -> None:
    """The plain dense network, all K at once, no masks: the stacked trainer's rate without D."""
    train(Ensemble.init(DENSE_MODEL, INPUT_SHAPE, CLASSES, seeds), x, y, subsets, seeds, TRAIN)


def plain_loop(x, y, subsets, masks, seeds) -> None:
    """One model after another: init_model of the dct_ name, masked S zeroed, a hook masking its gradients."""
    for k, seed in enumerate(seeds):
        model = init_model(MODEL, INPUT_SHAPE, CLASSES, seed)
        with torch.no_grad():
            for name, mask in masks.items():
                model.get_parameter(name).mul_(mask[k])
        for name, mask in masks.items():
            model.get_parameter(name).register_post_accumulate_grad_hook(masking_hook(mask[k]))
        train_plain(model, x, y, subsets[k].nonzero().squeeze(1), seed, TRAIN)


def measure_training(k: int, repeats: int) -> dict:
    """Ours against the loop (and the dense network stacked) for K models of MODEL: model-epochs/s."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N_TRAIN, *INPUT_SHAPE, generator=g), torch.randint(0, CLASSES, (N_TRAIN,), generator=g)
    seeds, subsets, masks = list(range(k)), torch.ones(k, N_TRAIN, dtype=torch.bool), sparse_masks(k)
    seconds = interleaved_seconds({
        "ours": lambda: vectorized(x, y, subsets, masks, seeds),
        "ours_fold": lambda: vectorized(x, y, subsets, masks, seeds, "fold"),
        "ours_shared": lambda: vectorized(x, y, subsets, masks, seeds, "shared"),
        "loop": lambda: plain_loop(x, y, subsets, masks, seeds),
        "dense_ours": lambda: dense_vectorized(x, y, subsets, seeds),
    }, repeats)
    return {"model": MODEL, "K": k, "density": DENSITY, "heuristic": HEURISTIC,
            **{f"{side}_s": round(s, 3) for side, s in seconds.items()},
            **{f"{side}_model_epochs_per_s": round(k * EPOCHS / s, 2) for side, s in seconds.items()},
            "speedup_vs_loop": round(seconds["loop"] / seconds["ours"], 2),
            "ours_vs_dense_ours": round(seconds["ours"] / seconds["dense_ours"], 2),
            "fold_vs_shared": round(seconds["ours_fold"] / seconds["ours_shared"], 2)}


def offset_run(layer: DCTPlusSparseLinear, params: dict, x: torch.Tensor, k: int):
    """One stacked forward and backward of `layer` (K models) on `x` `[K, in, B]`."""
    def run() -> None:
        out = layer.forward_stacked(x, params, k)
        out.backward(torch.ones_like(out))
    return run


def measure_offsets(shapes: list[tuple[int, int]], k: int, repeats: int) -> list[dict]:
    """Per (in, out) and rows per model: a linear DCT+Sparse layer's stacked forward + backward with alpha D folded
    into each weight against the shared transform (auto's FFT or matrix), and whether "auto" folds where faster."""
    results = []
    for in_features, out_features in shapes:
        params = {"weight": torch.randn(k, out_features, in_features, requires_grad=True),
                  "bias": torch.randn(k, out_features, requires_grad=True), "alpha": torch.ones(k, requires_grad=True)}
        for batch in OFFSET_BATCHES:
            x = torch.randn(k, in_features, batch)
            sides = {o: DCTPlusSparseLinear(in_features, out_features, offset=o) for o in ("fold", "shared")}
            seconds = interleaved_seconds({o: offset_run(sides[o], params, x, k) for o in sides}, repeats)
            auto = "fold" if folds(in_features, out_features, batch, "auto") else "shared"
            results.append({"in": in_features, "out": out_features, "rows": batch, "K": k,
                            "shared_by": "fft" if uses_fft(in_features, out_features, "auto") else "matrix",
                            "fold_ms": round(seconds["fold"] * 1e3, 2), "shared_ms": round(seconds["shared"] * 1e3, 2),
                            "fold_over_shared": round(seconds["fold"] / seconds["shared"], 2), "auto": auto,
                            "auto_is_faster": seconds[auto] <= min(seconds.values())})
            print(" ".join(f"{key}={value}" for key, value in results[-1].items()), flush=True)
    return results


def transform_run(x: torch.Tensor, out_features: int, transform: str, backward: bool):
    """One DCT of the `[K, in, B]` activation `x` to `out_features` (and its backward, when asked)."""
    def run() -> None:
        if not backward:
            with torch.no_grad():
                dct(x, out_features, 1, transform)
            return
        grad = torch.ones(x.shape[0], out_features, x.shape[2])  # a real (not broadcast) gradient, as training's
        dct(x, out_features, 1, transform).backward(grad)
    return run


def break_even_ratio(in_features: int, out_features: int, fft_s: float, matrix_s: float) -> float:
    """The FFT_WORK_RATIO at which "auto" would be indifferent here: (in x out) / (n log2 n) x fft / matrix time."""
    n = max(in_features, out_features)
    return in_features * out_features / (n * math.log2(n)) * fft_s / matrix_s


def measure_transforms(shapes: list[tuple[int, int]], rows: int, repeats: int) -> list[dict]:
    """FFT against the dense matmul for each (in, out), forward and forward + backward: medians, the matrix's
    GFLOP/s, the break-even FFT_WORK_RATIO, and whether "auto" picks the faster side."""
    results = []
    for in_features, out_features in shapes:
        x = torch.randn(rows // 128, in_features, 128, requires_grad=True)
        for backward in (False, True):
            seconds = interleaved_seconds({t: transform_run(x, out_features, t, backward) for t in ("fft", "matrix")},
                                          repeats)
            flops = 2 * in_features * out_features * rows * (2 if backward else 1)  # backward: one more, by D^T
            auto = "fft" if uses_fft(in_features, out_features, "auto") else "matrix"
            results.append({"in": in_features, "out": out_features, "pass": "forward+backward" if backward else "forward",
                            "fft_ms": round(seconds["fft"] * 1e3, 2), "matrix_ms": round(seconds["matrix"] * 1e3, 2),
                            "matrix_over_fft": round(seconds["matrix"] / seconds["fft"], 2),
                            "matrix_gflops": round(flops / seconds["matrix"] / 1e9, 1),
                            "break_even_ratio": round(break_even_ratio(in_features, out_features, seconds["fft"],
                                                                       seconds["matrix"]), 1),
                            "auto": auto, "auto_is_faster": seconds[auto] <= min(seconds.values())})
            print(" ".join(f"{key}={value}" for key, value in results[-1].items()), flush=True)
            x.grad = None
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="K=16, one repeat, smaller DCTs (smoke run)")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_reuse = reuse_freed_memory()  # as a run on the CPU does (configure_runtime), for both sides
    k, repeats = (16, 1) if args.quick else (K, REPEATS)
    sizes, rows = ([n for n in SIZES if n <= 2048], 16 * 128) if args.quick else (SIZES, ROWS)
    shapes = [(n, n) for n in sizes] + LAYERS
    probes = [matmul_gflops()]
    training = measure_training(k, repeats)
    print(" ".join(f"{key}={value}" for key, value in training.items()), flush=True)
    probes.append(matmul_gflops())
    offsets = measure_offsets([(n, n) for n in sizes if n <= 1024] + LAYERS, k, repeats)
    probes.append(matmul_gflops())
    transforms = measure_transforms(shapes, rows, repeats)
    probes.append(matmul_gflops())
    peak = max(probes)
    print(f"matmul {peak:.1f} GFLOP/s (best of {len(probes)} probes), {torch.get_num_threads()} threads")
    print(f"{MODEL} K={k}: ours {training['ours_s']:.2f} s, loop {training['loop_s']:.2f} s "
          f"({training['speedup_vs_loop']:.2f}x); dense {DENSE_MODEL} stacked {training['dense_ours_s']:.2f} s; "
          f"alpha D folded {training['ours_fold_s']:.2f} s, shared {training['ours_shared_s']:.2f} s")
    print(f"{'in':>5s} {'out':>5s} {'rows':>5s} {'fold ms':>9s} {'shared ms':>10s} {'fold/shared':>11s} {'auto':>7s}")
    for row in offsets:
        print(f"{row['in']:5d} {row['out']:5d} {row['rows']:5d} {row['fold_ms']:9.2f} {row['shared_ms']:10.2f} "
              f"{row['fold_over_shared']:11.2f} {row['auto'] + ('' if row['auto_is_faster'] else ' (slower)'):>7s}")
    print(f"{'in':>5s} {'out':>5s} {'pass':17s} {'fft ms':>9s} {'matrix ms':>10s} {'matrix/fft':>10s} "
          f"{'matrix/matmul':>13s} {'break-even':>10s} {'auto':>7s}")
    for row in transforms:
        print(f"{row['in']:5d} {row['out']:5d} {row['pass']:17s} {row['fft_ms']:9.2f} {row['matrix_ms']:10.2f} "
              f"{row['matrix_over_fft']:10.2f} {row['matrix_gflops'] / peak:13.3f} {row['break_even_ratio']:10.1f} "
              f"{row['auto'] + ('' if row['auto_is_faster'] else ' (slower)'):>7s}")
    print(json.dumps({
        "bench": "dct_sparse", "n_train": N_TRAIN, "input_shape": list(INPUT_SHAPE), "batch_size": TRAIN.batch_size,
        "epochs": EPOCHS, "repeats": repeats, "rows": rows, "fft_work_ratio": dct_sparse.FFT_WORK_RATIO,
        "fold_min_rows": dct_sparse.FOLD_MIN_ROWS, "fold_fft_ratio": dct_sparse.FOLD_FFT_RATIO, "offsets": offsets,
        "matmul_gflops": round(peak, 1), "matmul_gflops_probes": [round(p, 1) for p in probes],
        "threads": torch.get_num_threads(), "malloc_reuse": malloc_reuse, "torch": torch.__version__,
        "machine": platform.machine(), "training": training, "transforms": transforms,
    }))


if __name__ == "__main__":
    main()
