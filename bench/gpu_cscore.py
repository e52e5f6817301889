"""The C-score protocol at the paper's scale on one GPU: 1,800 MLPs 784-512-256 on Fashion-MNIST, 9 ratios.

Run: .venv/bin/python -m bench.gpu_cscore [--runs-per-ratio 200] [--precision fp32|tf32|bf16]   (repository root)
Needs an NVIDIA GPU and Fashion-MNIST's IDX files (`make` installs them); refuses on a machine without CUDA.
`--cpu-smoke` runs the same script at a toy size on the CPU against a temporary Prefect API (PREFECT_API_URL's
when set), to check the script itself before a GPU's time is spent on it (its figures mean nothing).
The `cscore` flow end to end (the project-local Prefect server, Parquet tables, figures) on all 60,000
training images: 9 ratios x RUNS_PER_RATIO models of `mlp_h512-256`, one ratio per task. Reports
  model_epochs_per_s    models x epochs trained, over the shards' training seconds (their provenance)
  achieved_tflops       training FLOPs (6 x multiply-adds per example, forward and backward) over those seconds
  fraction_of_matmul    achieved_tflops over the best same-precision 8192^2 matmul rate measured in this process
  peak_memory_gib       torch.cuda.max_memory_allocated over the whole flow
  wall_s                the whole flow: training, evaluation, tables, scores, figures
Sized to finish within 10 minutes on one modern GPU (an estimate is printed first). Prints one JSON object last.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

# ---- knobs ---------------------------------------------------------------------------------
MODEL = "mlp_h512-256"  # 784-512-256-10, the C-score paper's MNIST MLP
RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
RUNS_PER_RATIO = 200  # 9 x 200 = 1,800 models
EPOCHS = 10  # passes over each model's subset
BATCH_SIZE = 128  # examples per step and model
LR = 0.05  # peak learning rate, linear decay
MATMUL_SIZE = 8192  # n of the n x n matmul that defines the device's reachable rate
SMOKE = {"runs_per_ratio": 2, "epochs": 1, "n_train": 2000, "n_test": 500, "matmul_size": 512}  # --cpu-smoke
# ---------------------------------------------------------------------------------------------


def refuse_without_gpu() -> None:
    """Exit with a clear message unless CUDA is usable."""
    if not torch.cuda.is_available():
        print("bench.gpu_cscore needs an NVIDIA GPU: torch.cuda.is_available() is False on this machine "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}). It trains 1,800 MLPs "
              "784-512-256 on all 60,000 Fashion-MNIST images; on a CPU use bench.cscore instead.", file=sys.stderr)
        sys.exit(2)


def matmul_tflops(precision: str, device: str, n: int = MATMUL_SIZE, repeats: int = 20) -> float:
    """Best TFLOP/s of an n x n matmul at `precision` on `device`."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.backends.cuda.matmul.fp32_precision = "tf32" if precision == "tf32" else "ieee"
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device == "cpu":
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n**3 / best / 1e12


def main(argv: list[str] | None = None) -> None:
    """Parse `argv` (default: the command line), run the flow, print the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-per-ratio", type=int, default=RUNS_PER_RATIO)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    parser.add_argument("--data-root", default=None, help="where the run goes (default: a fresh temporary folder)")
    parser.add_argument("--cpu-smoke", action="store_true", help="a toy size on the CPU: checks the script, not a GPU")
    args = parser.parse_args(argv)
    size = {"runs_per_ratio": args.runs_per_ratio, "epochs": args.epochs, "n_train": 60000, "n_test": 10000,
            "matmul_size": MATMUL_SIZE} | (SMOKE if args.cpu_smoke else {})
    device = "cpu" if args.cpu_smoke else "cuda"
    if not args.cpu_smoke:
        refuse_without_gpu()
    import os
    import tempfile

    from bench.trainer import training_flops_per_example
    from core.data.config import DatasetConfig
    from core.runs.files import read_provenance
    from core.training.config import TrainConfig
    from core.training.experiment import subset_size
    from flows import server

    if args.cpu_smoke and not os.environ.get("PREFECT_API_URL"):
        os.environ.update(server.ephemeral_settings())  # a temporary API: the smoke run leaves no trace
    else:
        server.use_local_server()  # before prefect is imported; its start-up is not timed
    from flows.cscore import CScoreFlowConfig, cscore_flow

    runs, epochs, n_train = size["runs_per_ratio"], size["epochs"], size["n_train"]
    config = CScoreFlowConfig(
        dataset=DatasetConfig(name="fashion_mnist", n_train=n_train, n_test=size["n_test"]), model=MODEL,
        ratios=RATIOS, train=TrainConfig(epochs=epochs, batch_size=BATCH_SIZE, lr=LR), runs_per_ratio=runs,
        shard_size=runs, runtime={"device": device, "precision": args.precision})
    per_example = training_flops_per_example(MODEL, (1, 28, 28), 10)
    examples = sum(runs * epochs * (subset_size(r, n_train) // BATCH_SIZE) * BATCH_SIZE for r in RATIOS)
    peak = matmul_tflops(args.precision, device, size["matmul_size"])
    name = "CPU (smoke run)" if args.cpu_smoke else torch.cuda.get_device_name()
    print(f"{name}: {args.precision} matmul {peak:.2f} TFLOP/s; training is {per_example * examples / 1e12:.1f} "
          f"TFLOP, about {per_example * examples / 1e12 / (0.3 * peak):.0f} s at 30 % of that rate", flush=True)
    if not args.cpu_smoke:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = Path(cscore_flow(config, data_root=args.data_root or tmp))
        wall = time.perf_counter() - start
        shards = sorted(folder.glob("shards/runs-*.parquet"))
        train_s = sum(float(read_provenance(p)["train_seconds"]) for p in shards)
    models = len(RATIOS) * runs
    achieved = per_example * examples / train_s / 1e12
    memory = None if args.cpu_smoke else round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps({"bench": "gpu_cscore", "device": name, "precision": args.precision, "smoke": args.cpu_smoke,
                      "models": models, "epochs": epochs, "model": MODEL, "train_examples": n_train,
                      "model_epochs_per_s": round(models * epochs / train_s, 1),
                      "achieved_tflops": round(achieved, 3), "matmul_tflops": round(peak, 3),
                      "fraction_of_matmul": round(achieved / peak, 3), "peak_memory_gib": memory,
                      "train_s": round(train_s, 1), "wall_s": round(wall, 1), "torch": torch.__version__,
                      "cuda": torch.version.cuda, "machine": platform.machine()}))


if __name__ == "__main__":
    main()
