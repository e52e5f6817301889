"""The stacked SGD step: torch's fused SGD against the three foreach passes, alone and in the README's C-score job.

Run: .venv/bin/python -m bench.optimizer_step   (from the repository root)
  step  microseconds of one `StackedSGD.step` for K stacked models of each shape in SHAPES, both ways
        (the gradient copies that feed every step are timed apart and subtracted)
  job   seconds to train the 9 shards of flows/configs/cscore.yaml through `train_on_subsets`, with
        `core.training.trainer.FUSED_SGD_DEVICES` as shipped and emptied (the foreach step), interleaved REPEATS times
Prints one JSON object last.
"""
from __future__ import annotations

import json
import statistics
import time

import torch

from core.runtime import reuse_freed_memory
from core.training.ensemble import Ensemble
import core.training.trainer as training
from core.training.config import TrainConfig
from core.training.trainer import StackedSGD

# ---- knobs ---------------------------------------------------------------------------------
SHAPES = [("mlp_w128_d2", 32, (1, 64)), ("mlp_w64_d2", 64, (1, 40)), ("mlp_w256_d2", 64, (1, 40))]  # model, K, input
STEPS = 100  # timed steps per shape and way
REPEATS = 3  # interleaved job timings per way; medians reported
# ---------------------------------------------------------------------------------------------


def microseconds(fn, n: int = STEPS) -> float:
    """Mean microseconds of `fn()` after a warm-up."""
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def step_times(name: str, k: int, input_shape) -> dict:
    """One step of K stacked models of `name`: fused and foreach, in microseconds."""
    ensemble = Ensemble.init(name, input_shape, 10, list(range(k)))
    optimizer, lr = StackedSGD(ensemble.params, TrainConfig()), torch.full((k,), 0.05)
    grads = {n: torch.randn_like(p) * 1e-3 for n, p in ensemble.params.items()}

    def feed() -> None:
        for n, p in ensemble.params.items():
            p.grad = grads[n].clone()

    copies = microseconds(feed)
    fused = microseconds(lambda: (feed(), optimizer.step(lr, shared_lr=lr[0]))) - copies
    foreach = microseconds(lambda: (feed(), optimizer.step(lr))) - copies
    megabytes = sum(p.numel() for p in ensemble.params.values()) * 4 / 1e6
    return {"model": name, "K": k, "params_mb": round(megabytes, 1), "fused_us": round(fused), "foreach_us": round(foreach)}


def job_seconds() -> dict[str, list[float]]:
    """Training seconds of the README's C-score job with the fused and the foreach step, interleaved."""
    from core.data.datasets import load_dataset
    from core.training.experiment import holdout_subsets, model_seed, train_on_subsets
    from flows.config_files import load_config
    from flows.cscore import CScoreFlowConfig, plan_shards

    config = load_config(CScoreFlowConfig, "flows/configs/cscore.yaml", [])
    data, shipped = load_dataset(config.dataset), training.FUSED_SGD_DEVICES
    times: dict[str, list[float]] = {"fused": [], "foreach": []}
    for _ in range(REPEATS):
        for way in times:
            training.FUSED_SGD_DEVICES = shipped if way == "fused" else ()
            start = time.perf_counter()
            for p in plan_shards(config, data.n_train):
                seeds = [model_seed(config.seed, i) for i in p["model_ids"]]
                subsets = holdout_subsets(p["design"], data.n_train, p["subset_size"], p["runs"], seeds, p["design_seed"])
                train_on_subsets(data, config.model, seeds, subsets, config.train)
            times[way].append(time.perf_counter() - start)
    training.FUSED_SGD_DEVICES = shipped
    return times


def main() -> None:
    reuse_freed_memory()
    steps = [step_times(*shape) for shape in SHAPES]
    for row in steps:
        print(f"{row['model']:12s} K={row['K']:<3d} {row['params_mb']:5.1f} MB  fused {row['fused_us']:6d} us  "
              f"foreach {row['foreach_us']:6d} us", flush=True)
    job = job_seconds()
    medians = {way: statistics.median(t) for way, t in job.items()}
    print(f"README C-score job: fused {medians['fused']:.2f} s, foreach {medians['foreach']:.2f} s", flush=True)
    print(json.dumps({"bench": "optimizer_step", "threads": torch.get_num_threads(), "steps": steps,
                      "job_seconds": {w: [round(x, 2) for x in t] for w, t in job.items()},
                      "job_speedup": round(medians["foreach"] / medians["fused"], 3), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
